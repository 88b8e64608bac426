"""Structural / feature-similarity metrics from piq, as distances.

Input conversion: our images are in [-1, 1]; piq expects [0, 1] with ``data_range=1``, so every
wrapper feeds ``(x + 1) / 2`` (:func:`~lit_attacks.metrics.base.to01`).

Similarity -> distance: SSIM and MS-SSIM become ``(1 - s) / 2`` as in the paper and official code;
FSIMc and HaarPSI (similarities in [0, 1]) become ``1 - s``; GMSD is already a deviation (0 for
identical images) and is used as is. All conversions are monotone, so rankings are unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import piq
import torch
from torch import Tensor

from lit_attacks.metrics.base import Distance, to01
from lit_attacks.metrics.registry import METRICS

# Wang et al. 2003 scale weights; MS-SSIM at 64x64 uses the first ``scales`` of them, renormalised.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


COLOURS = ("rgb", "luma")
RGB2GRAY = (0.2989, 0.5870, 0.1140)  # MATLAB's rgb2gray


def luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) MATLAB ``rgb2gray`` of (B, 3, H, W) images in [0, 1] (SSIM's reference convention:
    ``ssim.m`` works on grey images)."""
    w = x.new_tensor(RGB2GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class SSIMDistance(Distance):
    """(1 - SSIM) / 2 with piq's SSIM (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03).

    ``colour="rgb"`` (default, the 64 px benchmark convention): SSIM per RGB channel, averaged; ``"luma"``
    (the reference ``ssim.m`` convention): SSIM of the MATLAB ``rgb2gray`` images.

    ``downsample=True`` as MATLAB's ``ssim.m``: images are average-pooled by
    ``max(1, round(min(H, W) / 256))`` first, which is a no-op at 64x64 and halves 512x512 images
    (that is how piq's MATLAB baseline 0.8202 on goldhill is obtained). Colour images: SSIM per
    channel, averaged.
    """

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5, downsample: bool = True,
                 colour: str = "rgb") -> None:
        super().__init__()
        if colour not in COLOURS:
            raise ValueError(f"ssim: colour must be one of {', '.join(COLOURS)}, got {colour!r}")
        self.kernel_size, self.kernel_sigma, self.downsample = kernel_size, kernel_sigma, downsample
        self.colour = colour

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        conv = luma if self.colour == "luma" else (lambda t: t)
        s = piq.ssim(conv(to01(x)), conv(to01(ref)), kernel_size=self.kernel_size, kernel_sigma=self.kernel_sigma,
                     data_range=1.0, reduction="none", downsample=self.downsample)
        return (1 - s) / 2


def official_ssim_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """The 2-D Gaussian window of pytorch_ssim (Po-Hsun-Su/pytorch-ssim), built in float32 as it does."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2)).float()
    g = g / g.sum()
    return (g[:, None] @ g[None, :])[None, None]  # (1, 1, size, size)


class OfficialSSIMDistance(Distance):
    """(1 - SSIM) / 2 as the paper's official code computes it: ``pytorch_ssim.SSIM()`` on the [-1, 1] images.

    Gaussian window 11x11, sigma 1.5, zero-padded "same" convolution (padding 5, so border windows
    include zeros), C1 = 0.01^2 and C2 = 0.03^2 (constants for data range 1 applied to [-1, 1] inputs),
    the SSIM map averaged over the RGB channels and all pixels. This is a different statistic from
    :class:`SSIMDistance` (piq: valid convolution on [0, 1], per-channel mean): use ``ssim_official``
    to reproduce the paper's numbers, ``ssim`` for the standard SSIM.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", official_ssim_window())

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        c = ref.shape[1]
        w = self.window.to(ref.dtype).expand(c, 1, -1, -1)
        pad = w.shape[-1] // 2
        conv = lambda t: torch.nn.functional.conv2d(t, w, padding=pad, groups=c)  # noqa: E731
        mu1, mu2 = conv(ref), conv(x)
        mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
        s1, s2, s12 = conv(ref * ref) - mu1_sq, conv(x * x) - mu2_sq, conv(ref * x) - mu12
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
        return (1 - ssim_map.mean(dim=(1, 2, 3))) / 2


class MSSSIMDistance(Distance):
    """(1 - MS-SSIM) / 2 with piq's MS-SSIM, adapted to small images.

    piq's defaults (window 11, 5 scales) need at least 161x161 pixels. At 64x64 we keep the
    standard window (11, sigma 1.5) and use 3 scales (64, 32, 16 px; needs >= 41 px) with the first
    three of Wang et al.'s weights renormalised to sum to 1. ``scales`` is configurable.
    """

    def __init__(self, kernel_size: int = 11, kernel_sigma: float = 1.5, scales: int = 3,
                 scale_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        w = torch.tensor(scale_weights if scale_weights is not None else MS_SSIM_WEIGHTS[:scales])
        if len(w) != scales:
            raise ValueError(f"ms_ssim: {scales} scales but {len(w)} scale_weights")
        self.register_buffer("scale_weights", w / w.sum())
        self.kernel_size, self.kernel_sigma, self.scales = kernel_size, kernel_sigma, scales

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        need = (self.kernel_size - 1) * 2 ** (self.scales - 1) + 1
        if min(x.shape[-2:]) < need:
            raise ValueError(f"ms_ssim: images of {tuple(x.shape[-2:])} are too small for kernel "
                             f"{self.kernel_size} and {self.scales} scales (need >= {need} px)")
        s = piq.multi_scale_ssim(to01(x), to01(ref), kernel_size=self.kernel_size, kernel_sigma=self.kernel_sigma,
                                 data_range=1.0, reduction="none", scale_weights=self.scale_weights)
        return (1 - s) / 2


class FSIMcDistance(Distance):
    """1 - FSIMc (piq.fsim with ``chromatic=True``); piq's default of no pre-downsampling below 256 px."""

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return 1 - piq.fsim(to01(x), to01(ref), data_range=1.0, reduction="none", chromatic=True)


class GMSDDistance(Distance):
    """GMSD (piq.gmsd), a deviation already: 0 for identical images."""

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return piq.gmsd(to01(x), to01(ref), data_range=1.0, reduction="none")


class HaarPSIDistance(Distance):
    """1 - HaarPSI (piq.haarpsi with its defaults: subsample, 3 scales).

    HaarPSI weighs its similarity maps by the Haar coefficients of the two images; where both images have
    none at all (constant images, e.g. an all-black triplet) the weights sum to zero and piq returns
    +-inf. HaarPSI cannot see any difference there, so the distance is defined as 0 for those samples.
    """

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        d = 1 - piq.haarpsi(to01(x), to01(ref), data_range=1.0, reduction="none")
        return torch.where(torch.isfinite(d), d, torch.zeros_like(d))


class PiqSimilarityDistance(Distance):
    """``1 - s`` for a piq similarity in [0, 1] (1 for identical images), or a piq deviation as is.

    ``per_sample``: call piq one sample at a time, for measures whose piq implementation normalises over the
    whole batch (SR-SIM's spectral-residual saliency map), so that a sample's distance does not depend on its
    batch. Non-finite values (degenerate, e.g. constant, images) become 0: the measure sees no difference."""

    def __init__(self, fn, similarity: bool = True, per_sample: bool = False) -> None:
        super().__init__()
        self.fn, self.similarity, self.per_sample = fn, similarity, per_sample

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        a, b = to01(x), to01(ref)
        if self.per_sample:
            v = torch.cat([self.fn(a[i:i + 1], b[i:i + 1], data_range=1.0, reduction="none") for i in range(len(a))])
        else:
            v = self.fn(a, b, data_range=1.0, reduction="none")
        d = 1 - v if self.similarity else v
        return torch.where(torch.isfinite(d), d, torch.zeros_like(d))


@METRICS.register(
    "ssim",
    what="piq SSIM (window 11, sigma 1.5, valid convolution on [0, 1], MATLAB-style automatic downsampling: none at "
         '64 px); per RGB channel, or ``colour="luma"`` for ssim.m\'s grey convention',
    distance="(1 - SSIM) / 2",
    weights="none",
    calibrated="piq's MATLAB baselines, goldhill_jpeg vs goldhill 0.8202 (grey, within 5e-4) and i01_01_5 vs I01 "
               '0.7842 (RGB per channel: ours 0.7820, within piq\'s 0.01; colour="luma" gives 0.8800, no published '
               "value)")
def ssim(**kw) -> Distance:
    return SSIMDistance(**kw)


@METRICS.register(
    "ssim_official",
    what="the official code's SSIM: pytorch_ssim on [-1, 1] (zero-padded same-size 11x11 Gaussian, C1 0.01^2, C2 "
         "0.03^2, mean over the RGB map)",
    distance="(1 - SSIM) / 2",
    weights="none",
    calibrated="the official code's pytorch_ssim restated with scipy (within 1e-5), and the official transfer CSV's "
               "ssim distances where the BAPPS images are given (LIT_ATTACKS_BAPPS)")
def ssim_official() -> Distance:
    return OfficialSSIMDistance()


@METRICS.register(
    "ms_ssim",
    what="piq MS-SSIM with window 11 and 3 scales (piq's 5 need 161 px), Wang et al.'s first three weights "
         "renormalised",
    distance="(1 - MS-SSIM) / 2",
    weights="none",
    calibrated="TensorFlow's tf.image.ssim_multiscale (2.15, the reference of piq's tests) on the full-size piq "
               "images, goldhill 0.901158 (5 scales) / 0.857440 (3) and I01 0.879965 / 0.823347 (ours within 2e-5)")
def ms_ssim(**kw) -> Distance:
    """The official attack code's MS-SSIM (IQA_pytorch's MS_SSIM on [-1, 1]) cannot run at 64 px (an 11x11 window on
    its 8x8 fourth scale), so the paper's MS-SSIM row cannot come from it at 64 px.
    """
    return MSSSIMDistance(**kw)


@METRICS.register(
    "fsimc",
    what="piq FSIM, chromatic",
    distance="1 - FSIMc",
    weights="none",
    calibrated="piq's MATLAB baselines (FSIM authors' code), goldhill 0.89691 (grey, where FSIMc is FSIM) and I01 "
               "0.92587 chromatic (ours 0.92590; within 1e-4)")
def fsimc(**kw) -> Distance:
    return FSIMcDistance(**kw)


@METRICS.register(
    "gmsd",
    what="piq GMSD",
    distance="as is (a deviation)",
    weights="none",
    calibrated="piq's MATLAB baselines (GMSD authors' code), goldhill 0.138013 and I01 0.094125 (within 1e-5)")
def gmsd(**kw) -> Distance:
    return GMSDDistance(**kw)


@METRICS.register(
    "haarpsi",
    what="piq HaarPSI (0 for images without any Haar structure, where piq returns -inf)",
    distance="1 - HaarPSI",
    weights="none",
    calibrated="piq's MATLAB baseline (HaarPSI authors' code), I01 0.71707 (ours 0.71704; within 1e-4)")
def haarpsi(**kw) -> Distance:
    return HaarPSIDistance(**kw)


@METRICS.register(
    "vif_p",
    what="piq VIF-p (pixel-domain visual information fidelity, Sheikh & Bovik 2006), on the luminance",
    distance="1 - VIF-p (VIF-p can exceed 1 for contrast-enhanced images: the distance is then negative)",
    weights="none",
    calibrated="piq's MATLAB baselines (vifvec), goldhill 0.2665 and I01 0.3147 (within 1e-4)")
def vif_p() -> Distance:
    return PiqSimilarityDistance(piq.vif_p)


@METRICS.register(
    "vsi",
    what="piq VSI (visual saliency-induced index, Zhang et al. 2014)",
    distance="1 - VSI",
    weights="none",
    calibrated="piq's MATLAB baseline (VSI authors' code), I01 0.96405 (within 1e-5)")
def vsi() -> Distance:
    return PiqSimilarityDistance(piq.vsi)


@METRICS.register(
    "mdsi",
    what="piq MDSI (mean deviation similarity index, Nafchi et al. 2016), a deviation: 0 for identical images",
    distance="as is",
    weights="none",
    calibrated="piq's MATLAB baselines (MDSI authors' code, 'sum' combination; MDSI is not symmetric: ref is the "
               "reference), goldhill 0.395911 and I01 0.338973 (within 1e-5)")
def mdsi() -> Distance:
    return PiqSimilarityDistance(piq.mdsi, similarity=False)


@METRICS.register(
    "srsim",
    what="piq SR-SIM (spectral residual similarity, Zhang & Li 2012), one sample per call (piq normalises its "
         "saliency over the batch)",
    distance="1 - SR-SIM",
    weights="none",
    calibrated="piq's MATLAB baselines (SR-SIM authors' code, piq's even Gaussian), goldhill 0.946527 and I01 "
               "0.965973 (within 1e-5)")
def srsim() -> Distance:
    return PiqSimilarityDistance(piq.srsim, per_sample=True)


@METRICS.register(
    "dss",
    what="piq DSS (DCT subband similarity, Balanis et al. 2015)",
    distance="1 - DSS",
    weights="none",
    calibrated="piq's MATLAB baselines (DSS authors' code), goldhill 0.45217 (ours 0.45287; within piq's 1e-3) and "
               "I01 0.77177 (MATLAB grey rounded to uint8; ours on RGB 0.77168, within 2e-4)")
def dss() -> Distance:
    return PiqSimilarityDistance(piq.dss)


@METRICS.register(
    "ms_gmsd",
    what="piq MS-GMSD, chromatic (multi-scale gradient magnitude similarity deviation, Zhang et al. 2017), a "
         "deviation",
    distance="as is",
    weights="none",
    calibrated="not yet: no published value (piq tests none)")
def ms_gmsd() -> Distance:
    return PiqSimilarityDistance(lambda a, b, **kw: piq.multi_scale_gmsd(a, b, chromatic=True, **kw), similarity=False)
