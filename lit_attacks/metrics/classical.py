"""Classical full-reference measures not in piq, written from their papers and checked against the reference
implementation the field uses (IQA_pytorch, MIT, by the DISTS authors; the paper's official code imports it).

NLPD (Laparra, Ballé, Berardino & Simoncelli 2016): a Laplacian pyramid whose every band is divided by a local
amplitude estimate (divisive normalisation with fixed, fitted filters and constants); the distance is the mean over
bands of the root-mean-square difference of the normalised bands.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_attacks.metrics.base import Distance, to01
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.structural import COLOURS, luma

# The 5x5 binomial-like low-pass of the pyramid and, per band, the divisive-normalisation neighbourhood weights
# (3x3, centre 0) and constants fitted by Laparra et al. (the values of their code, as IQA_pytorch carries them).
NLPD_LOWPASS = ((0.0025, 0.0125, 0.0200, 0.0125, 0.0025),
                (0.0125, 0.0625, 0.1000, 0.0625, 0.0125),
                (0.0200, 0.1000, 0.1600, 0.1000, 0.0200),
                (0.0125, 0.0625, 0.1000, 0.0625, 0.0125),
                (0.0025, 0.0125, 0.0200, 0.0125, 0.0025))
NLPD_DN = (((0, 0.1011, 0), (0.1493, 0, 0.1460), (0, 0.1015, 0)),
           ((0, 0.0757, 0), (0.1986, 0, 0.1846), (0, 0.0837, 0)),
           ((0, 0.0477, 0), (0.2138, 0, 0.2243), (0, 0.0467, 0)),
           ((0, 0, 0), (0.2503, 0, 0.2616), (0, 0, 0)),
           ((0, 0, 0), (0.2598, 0, 0.2552), (0, 0, 0)),
           ((0, 0, 0), (0.2215, 0, 0.0717), (0, 0, 0)))
NLPD_SIGMA = (0.0248, 0.0185, 0.0179, 0.0191, 0.0220, 0.2782)
NLPD_SQRT_EPS = 1e-12  # inside each band's square root: finite gradients at x = ref (values move by <= 1e-6)


def nlpd_levels(h: int, w: int, most: int = len(NLPD_SIGMA)) -> int:
    """Bands that fit: every level's input must be at least 3 px for the reflection padding (6 at 256 px, 5 at 64)."""
    return max(1, min(most, int(math.floor(math.log2(min(h, w) / 3))) + 1))


class NLPDDistance(Distance):
    """NLPD on [0, 1] images, per RGB channel (``colour="rgb"``, IQA_pytorch ``NLPD(channels=3)``) or on the luma
    (``"luma"``). ``levels``: bands of the pyramid, None for as many as the image allows up to the paper's 6 (5 at
    64 px, where the sixth would be 2 px)."""

    def __init__(self, colour: str = "rgb", levels: Optional[int] = None) -> None:
        super().__init__()
        if colour not in COLOURS:
            raise ValueError(f"nlpd: colour must be one of {', '.join(COLOURS)}, got {colour!r}")
        if levels is not None and not 1 <= levels <= len(NLPD_SIGMA):
            raise ValueError(f"nlpd: levels must be in 1..{len(NLPD_SIGMA)}, got {levels}")
        self.colour, self.levels = colour, levels
        self.register_buffer("lowpass", torch.tensor(NLPD_LOWPASS)[None, None])
        self.register_buffer("dn", torch.tensor(NLPD_DN)[:, None, None])  # (6, 1, 1, 3, 3)
        self.register_buffer("sigma", torch.tensor(NLPD_SIGMA))

    def bands(self, x: Tensor, levels: int):
        """The normalised Laplacian bands of ``x`` (N, C, H, W), finest first."""
        c = x.shape[1]
        low = self.lowpass.to(x.dtype).expand(c, 1, 5, 5)
        out, j = [], x
        for i in range(levels):
            coarse = F.conv2d(F.pad(j, (2, 2, 2, 2), mode="reflect"), low, stride=2, groups=c)
            up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=True)
            up = F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), low, groups=c)
            if up.shape[-2:] != j.shape[-2:]:  # odd sizes: nearest resampling to the band's size
                up = F.interpolate(up, size=j.shape[-2:], mode="nearest")
            band = j - up
            amp = F.conv2d(F.pad(band.abs(), (1, 1, 1, 1), mode="reflect"), self.dn[i].to(x.dtype).expand(c, 1, 3, 3),
                           groups=c)
            out.append(band / (self.sigma[i].to(x.dtype) + amp))
            j = coarse
        return out

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        a, b = to01(ref), to01(x)
        if self.colour == "luma":
            a, b = luma(a), luma(b)
        levels = self.levels or nlpd_levels(*x.shape[-2:])
        if min(x.shape[-2:]) / 2 ** (levels - 1) < 3:
            raise ValueError(f"nlpd: images of {tuple(x.shape[-2:])} are too small for {levels} levels")
        per_band = [torch.sqrt(((za - zb) ** 2).mean(dim=(1, 2, 3)) + NLPD_SQRT_EPS)
                    for za, zb in zip(self.bands(a, levels), self.bands(b, levels))]
        return torch.stack(per_band, dim=1).mean(dim=1) - math.sqrt(NLPD_SQRT_EPS)


@METRICS.register("nlpd")
def nlpd(**kw) -> Distance:
    """NLPD (Laparra et al. 2016, normalised Laplacian pyramid distance) per RGB channel, ``colour="luma"`` for grey; as many bands as fit up to 6 (5 at 64 px).

    Distance: as is. Weights: none (the authors' fitted filters and constants). Calibrated: IQA_pytorch (MIT; the reference the official code imports) on the DISTS example r1 vs r0 in grey, its published 0.4016 (its code gives 0.40177; ours within 1e-5 of its code), and its code on colour and 64 px images (tests, within 1e-5).
    """
    return NLPDDistance(**kw)
