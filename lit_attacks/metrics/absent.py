"""Metrics of the paper and of the field that are not registered, each with the reason (``create_metric`` raises it,
the metric table lists it). Checked 2026-12-01 against GitHub, PyPI and the authors' pages reachable from here."""
from lit_attacks.metrics.registry import METRICS

ABSENT = {
    "gti_cnn": ("GTI-CNN (Ma et al. 2018, geometric-transformation-invariant IQA CNN; paper Table 3)",
                "no public implementation or weights found (GitHub, PyPI and the web pages searchable from here): the "
                "paper's row cannot be reproduced without them"),
    "mad": ("MAD (Larson & Chandler 2010, most apparent distortion)",
            "ported (lit_attacks.metrics.classical.MADDistance: IQA_pytorch's MAD within 1e-4 relative on the DISTS "
            "example, 169.21 against its 169.22, published 168) but not registered: with its viewing convention (a "
            "CSF of 32 cycles per image width) the detection stage masks 20 of 50 distorted images of the built-in "
            "set at 64 px entirely (MAD = 0, no gradient), so 2AFC ties and attacks have nothing to climb; it needs "
            "a 64 px convention first"),
}

for _name, (_what, _why) in ABSENT.items():
    METRICS.absent(_name, _what, _why)
