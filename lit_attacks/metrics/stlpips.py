"""ST-LPIPS (shift-tolerant LPIPS; Ghildyal & Liu, ECCV 2022) from the PyPI package ``stlpips-pytorch``.

The package ships both networks (backbone and linear heads, ``weights/vST0.0/{alex,vgg}_shift_tolerant.pth``)
inside its wheel, so nothing is downloaded; we build the network without weights and load that file
with ``torch.load(weights_only=True)``, every key required. Install with ``pip install -e ".[stlpips]"``.

The package imports ``IPython`` and ``torchsummary`` at module level without declaring them, and uses
neither to compute a distance (``IPython.embed`` is a debugging hook, ``torchsummary.summary`` is only
called under ``__main__``). When they are not installed, empty stand-ins are put in ``sys.modules``
for the duration of that one import and removed right after, so nothing else sees them.
Inputs in [-1, 1], as LPIPS.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import List

import torch
from torch import Tensor

from lit_attacks.metrics.base import Distance
from lit_attacks.metrics.lpips import LinearHeadsDistance
from lit_attacks.quiet import third_party_warnings_silenced
from lit_attacks.metrics.registry import METRICS

EXTRA = 'pip install -e ".[stlpips]"  (or: pip install stlpips-pytorch)'


class MissingExtraError(ImportError):
    """A metric needs an optional package; the message names the extra to install."""


def import_stlpips():
    """``stlpips_pytorch.stlpips``, importing it without its undeclared, unused imports."""
    if importlib.util.find_spec("stlpips_pytorch") is None:
        raise MissingExtraError(f"stlpips_alex / stlpips_vgg need the package stlpips-pytorch: {EXTRA}")
    stand_ins = {}
    for name, attr in (("IPython", "embed"), ("torchsummary", "summary")):
        if importlib.util.find_spec(name) is None:
            mod = types.ModuleType(name)
            setattr(mod, attr, lambda *a, **k: None)
            stand_ins[name] = mod
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("stlpips_pytorch.stlpips")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


class STLPIPSDistance(LinearHeadsDistance):
    """ST-LPIPS (variant ``shift_tolerant``) with an AlexNet or VGG backbone, as the official transfer benchmark.

    Args:
        net: "alex" or "vgg".
        pretrained: load the whole network shipped in the package; False loads only its linear heads and
            keeps a random backbone (labelled as such; for tests and timing), as ``lpips_*`` do.
    """

    def __init__(self, net: str = "alex", pretrained: bool = True) -> None:
        super().__init__()
        if net not in ("alex", "vgg"):
            raise ValueError(f"stlpips: net must be 'alex' or 'vgg', got {net!r}")
        st = import_stlpips()
        self.net, self.pretrained = net, pretrained
        with third_party_warnings_silenced():
            self.model = st.LPIPS(pretrained=False, net=net, variant="shift_tolerant", verbose=False)
        path = weight_file(st, net)
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not pretrained:  # as LPIPS: the linear heads always, the backbone stays random
            sd = {k: v for k, v in sd.items() if k.startswith("lin")}
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        # ``lins.<k>`` is a ModuleList holding the same modules as ``lin<k>``: those keys are aliases
        missing = [k for k in missing if not (k.startswith("lins.") and f"lin{k.split('.')[1]}." + ".".join(
            k.split(".")[2:]) in sd) and (pretrained or k.startswith("lin"))]
        if missing or unexpected:
            raise RuntimeError(f"stlpips_{net}: {path} does not match the network "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]})")

    def features(self, x: Tensor) -> List[Tensor]:
        outs = self.model.net.forward(self.model.scaling_layer(x))
        return [o / (o.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for o in outs]  # stlpips utils.normalize_tensor



def weight_file(st, net: str) -> Path:
    path = Path(st.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    if not path.is_file():
        raise FileNotFoundError(f"stlpips_{net}: weight file {path} is missing from the stlpips-pytorch package; "
                                f"reinstall it: {EXTRA}")
    return path


@METRICS.register(
    "stlpips_alex",
    what="ST-LPIPS, shift-tolerant AlexNet (stlpips-pytorch; extra [stlpips])",
    distance="as is",
    weights="shipped in the stlpips-pytorch wheel (BSD-2)",
    calibrated="stlpips-pytorch on the LPIPS example triplet, 0.7778 / 0.1320")
def stlpips_alex(pretrained: bool = True) -> Distance:
    return STLPIPSDistance("alex", pretrained)


@METRICS.register(
    "stlpips_vgg",
    what="ST-LPIPS, shift-tolerant VGG (stlpips-pytorch; extra [stlpips])",
    distance="as is",
    weights="shipped in the stlpips-pytorch wheel (BSD-2)",
    calibrated="stlpips-pytorch on the LPIPS example triplet, 0.6517 / 0.1361")
def stlpips_vgg(pretrained: bool = True) -> Distance:
    return STLPIPSDistance("vgg", pretrained)
