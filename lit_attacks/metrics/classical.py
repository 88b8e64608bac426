"""Classical full-reference measures not in piq (NLPD, CW-SSIM, MAD), written from their papers and checked against the
reference implementation the field uses (IQA_pytorch, MIT, by the DISTS authors; the paper's official code imports it).

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


@METRICS.register(
    "nlpd",
    what='NLPD (Laparra et al. 2016, normalised Laplacian pyramid distance) per RGB channel, ``colour="luma"`` for '
         "grey; as many bands as fit up to 6 (5 at 64 px)",
    distance="as is",
    weights="none (the authors' fitted filters and constants)",
    calibrated="IQA_pytorch (MIT; the reference the official code imports) on the DISTS example r1 vs r0 in grey, "
               "its published 0.4016 (its code gives 0.40177; ours within 1e-5 of its code), and its code on colour "
               "and 64 px images (tests, within 1e-5)")
def nlpd(**kw) -> Distance:
    return NLPDDistance(**kw)


# ------------------------------------------------------------------------------------------------- CW-SSIM
def _polar(rows: int, cols: int):
    """Radius and angle of the half-plane frequency grid of an rfft2 whose rows are shifted to centre the zero
    frequency: columns 0..pi, rows pi..-pi (float32, as the reference builds it)."""
    x = torch.linspace(0, math.pi, cols).view(1, cols).expand(rows, cols)
    y = (torch.linspace(-math.pi, math.pi, rows + 1)[1:] if rows % 2 == 0 else torch.linspace(-math.pi, math.pi, rows))
    y = -y.view(rows, 1).expand(rows, cols)
    return (x ** 2 + y ** 2).sqrt().double(), torch.atan2(y, x).double()


def _lowpass(r: Tensor) -> Tensor:  # L(r): 2 below pi/4, 0 above pi/2, a log-cosine in between
    mid = 2 * torch.cos(math.pi / 2 * torch.log2(4 * r.clamp_min(1e-30) / math.pi))
    outer = torch.where(r >= math.pi / 2, torch.zeros_like(r), mid)
    return torch.where(r <= math.pi / 4, torch.full_like(r, 2.0), outer)


def _highpass(r: Tensor) -> Tensor:  # H(r): 0 below pi/4, 1 above pi/2
    mid = torch.cos(math.pi / 2 * torch.log2(2 * r.clamp_min(1e-30) / math.pi))
    return torch.where(r <= math.pi / 4, torch.zeros_like(r), torch.where(r >= math.pi / 2, torch.ones_like(r), mid))


def _angular(t: Tensor, k: int, K: int) -> Tensor:
    """G: the k-th of K steerable angular windows, a_K cos^(K-1)(t - t0) with t - t0 wrapped into [-pi/2, pi/2]."""
    a_k = 2 ** (K - 1) * math.factorial(K - 1) / math.sqrt(K * math.factorial(2 * (K - 1)))
    d = t - math.pi * k / K
    d = torch.where(d > math.pi / 2, d - math.pi, d)
    for _ in range(2):
        d = torch.where(d < -math.pi / 2, d + math.pi, d)
    return a_k * torch.cos(d) ** (K - 1)


def _hilbert_sign(t: Tensor, k: int, K: int) -> Tensor:
    dt = (t - math.pi * k / K).abs()
    beyond = torch.where(dt == math.pi / 2, torch.zeros_like(dt), -torch.ones_like(dt))
    return torch.where(dt < math.pi / 2, torch.ones_like(dt), beyond)


def _shift(n: int, forward: bool) -> Tensor:
    s = -1 if forward else 1
    return (torch.arange(n) + s * ((n - 1) // 2)) % n


class ComplexSteerablePyramid(torch.nn.Module):
    """The complex steerable pyramid of Portilla & Simoncelli in the frequency domain, with the construction of the
    reference CW-SSIM (IQA_pytorch's SteerPyrComplex, after pyrtools and O. Hénaff): a high-pass residual, ``levels``
    band-pass levels of ``K`` orientations (each a complex band: the real part is the Hilbert partner, the imaginary
    part the band), a low-pass residual. Square images of size ``size``."""

    def __init__(self, size: int, K: int = 8, levels: int = 4) -> None:
        super().__init__()
        self.size, self.K, self.levels = size, K, levels
        shape = [size, size // 2 + 1]
        r, _ = _polar(*shape)
        self.register_buffer("hl0", torch.stack([_highpass(r / 2), _lowpass(r / 2) / 2]).float())
        self.fwd0 = _shift(size, True)
        self.bwd, self.lows, self.bands, self.signs = [_shift(size, False)], [], [], []
        for n in range(levels):
            r, t = _polar(*shape)
            crop = [shape[0] // 2, shape[1] // 2 + 1]
            low = _lowpass(r)[crop[1] - 1: crop[1] - 1 + crop[0], : crop[1]] / 4
            self.register_buffer(f"low{n}", low.float())
            self.register_buffer(f"band{n}", torch.stack([_highpass(r) * _angular(t, k, K) for k in range(K)]).float())
            self.register_buffer(f"sign{n}", torch.stack([_hilbert_sign(t, k, K) for k in range(K)]).float())
            shape = list(low.shape)
            self.bwd.append(_shift(shape[0], False))

    @staticmethod
    def _central(x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        rows, cols = h // 2, w // 2 + 1
        return x[..., cols - 1: cols - 1 + rows, :cols]

    def forward(self, x: Tensor):
        """[high-pass (N, C, 1, H, W), band level 0 .. levels-1 as complex (N, C, K, h, w), low-pass] for (N, C, H, W);
        band level n scaled by 2**n as the reference does."""
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"cw_ssim: the pyramid is built for {self.size}x{self.size} images, got "
                             f"{tuple(x.shape[-2:])}")
        f = torch.fft.rfft2(x)[..., self.fwd0.to(x.device), :].unsqueeze(-3)  # (N, C, 1, H, W//2+1)
        f = f * self.hl0.to(f.real.dtype)
        h0, lf = f[..., :1, :, :], f[..., 1:, :, :]
        out = []
        for n in range(self.levels):
            bf = getattr(self, f"band{n}").to(f.real.dtype) * lf
            lf = getattr(self, f"low{n}").to(f.real.dtype) * self._central(lf)
            hb = getattr(self, f"sign{n}").to(f.real.dtype) * (-1j * bf)
            out.append((bf, hb) if n else (bf, hb, h0))
        spatial = lambda g, idx: torch.fft.irfft2(g[..., self.bwd[idx].to(x.device), :],  # noqa: E731
                                                  s=(g.shape[-2], (g.shape[-1] - 1) * 2))
        pyr = []
        for n, parts in enumerate(out):
            band, hilb = spatial(parts[0], n), spatial(parts[1], n)
            if n == 0:
                pyr.append(spatial(parts[2], 0))
            pyr.append(torch.complex(-hilb, band) * 2 ** n)
        pyr.append(spatial(lf, self.levels) * 2 ** self.levels)
        return pyr


class CWSSIMDistance(Distance):
    """1 - CW-SSIM (Sampat et al. 2009) as the reference implementation computes it: on 0..255 images, the complex
    steerable pyramid with ``orientations`` (8) and ``level`` (4) levels; at the coarsest band-pass level, per
    orientation, the local correlation ``2 |sum z_x conj(z_y)| / sum (|z_x|^2 + |z_y|^2)`` over 7x7 windows, pooled
    with a Gaussian weighting (size of the map, sigma a quarter of the band's size), averaged over orientations and
    channels (``colour="rgb"``) or on the luma. Square images only (the pyramid is built per size, cached)."""

    def __init__(self, colour: str = "rgb", level: int = 4, orientations: int = 8) -> None:
        super().__init__()
        if colour not in COLOURS:
            raise ValueError(f"cw_ssim: colour must be one of {', '.join(COLOURS)}, got {colour!r}")
        self.colour, self.level, self.orientations = colour, level, orientations
        self._pyramids = {}

    def pyramid(self, size: int) -> ComplexSteerablePyramid:
        if size not in self._pyramids:
            self._pyramids[size] = ComplexSteerablePyramid(size, self.orientations, self.level)
        return self._pyramids[size]

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        band_size = h / 2 ** (self.level - 1)
        if h != w or band_size < 7:
            raise ValueError(f"cw_ssim: needs square images with at least {7 * 2 ** (self.level - 1)} px for "
                             f"level {self.level}, got {h}x{w}")
        a, b = to01(ref) * 255, to01(x) * 255
        if self.colour == "luma":
            a, b = luma(a / 255) * 255, luma(b / 255) * 255
        pyr = self.pyramid(h).to(x.device)
        za, zb = pyr(b)[self.level], pyr(a)[self.level]  # (N, C, K, s, s) complex; x first, as the reference
        n_side = int(band_size) - 6
        win = torch.ones(1, 1, 7, 7, dtype=x.dtype, device=x.device) / 49
        pool = lambda t: F.conv2d(t.flatten(0, 2)[:, None], win).view(*t.shape[:3], n_side, n_side)  # noqa: E731
        corr = za * zb.conj()
        corr_w = torch.complex(pool(corr.real), pool(corr.imag))
        var_w = pool(za.real ** 2 + za.imag ** 2 + 1e-12 + zb.real ** 2 + zb.imag ** 2 + 1e-12)
        cs_map = (2 * torch.sqrt(corr_w.real ** 2 + corr_w.imag ** 2 + 1e-12) + 1e-12) / (var_w + 1e-12)
        weight = gaussian_window(band_size - 7 + 1, band_size / 4).to(x.dtype).to(x.device)
        per_band = (cs_map * weight).sum(dim=(-2, -1)).mean(dim=1)  # (N, K): channels averaged
        return 1 - per_band.mean(dim=1)


def gaussian_window(size: float, sigma: float) -> Tensor:
    """MATLAB fspecial('gaussian') as the reference builds it (its grid from -size//2 + 1 to size//2, float sizes
    allowed), normalised to sum 1."""
    ax = torch.arange(-size // 2 + 1, size // 2 + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    g = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


@METRICS.register(
    "cw_ssim",
    what="CW-SSIM (Sampat et al. 2009, complex-wavelet SSIM) on the complex steerable pyramid, 8 orientations, the "
         '4th level (at 64 px a 2x2 map: ``level=3`` sees more), per RGB channel or ``colour="luma"``; square '
         "images",
    distance="1 - CW-SSIM",
    weights="none",
    calibrated="IQA_pytorch's CW_SSIM (MIT; its torch.rfft calls restated with torch.fft) on the DISTS example r1 "
               "vs r0 in grey, its published 0.9561 (its code and ours 0.95634; tests: ours within 1e-5 of its code "
               "at 256 and 64 px, levels 3 and 4)")
def cw_ssim(**kw) -> Distance:
    return CWSSIMDistance(**kw)


# ----------------------------------------------------------------------------------------------------- MAD
MAD_SCALE_WEIGHTS = (0.5 / 13.25, 0.75 / 13.25, 1 / 13.25, 5 / 13.25, 6 / 13.25)  # Larson & Chandler, per scale
MAD_WEIGHTING = ("scale", "orientation")


def _local_moments(x: Tensor, p: int = 16, s: int = 4, higher: bool = False):
    """Mean and standard deviation (sqrt(var + 1e-12)), with ``higher`` also skewness and excess kurtosis, of every
    p x p block at stride s of (N, C, H, W): (N, C, (H - p) // s + 1, (W - p) // s + 1) each."""
    n, c, h, w = x.shape
    oh, ow = (h - p) // s + 1, (w - p) // s + 1
    blocks = F.unfold(x.reshape(n * c, 1, h, w), p, stride=s)  # (N*C, p*p, L)
    mean = blocks.mean(dim=1, keepdim=True)
    diffs = blocks - mean
    std = (diffs.pow(2).mean(dim=1, keepdim=True) + 1e-12).sqrt()
    shape = lambda t: t.view(n, c, oh, ow)  # noqa: E731
    if not higher:
        return shape(mean), shape(std)
    z = diffs / std
    return shape(std), shape(z.pow(3).mean(dim=1, keepdim=True)), shape(z.pow(4).mean(dim=1, keepdim=True) - 3)


def mad_csf(rows: int, cols: int, nfreq: int = 32) -> Tensor:
    """The contrast sensitivity function of MAD's detection stage (Mannos & Sakrison, with the oblique effect),
    centred, laid out as the reference does (its transpose read as rows x cols)."""
    xv = torch.arange(-(cols - 1) / 2, (cols + 1) / 2, dtype=torch.float64)
    yv = torch.arange(-(rows - 1) / 2, (rows + 1) / 2, dtype=torch.float64)
    yy, xx = torch.meshgrid(yv, xv, indexing="ij")
    plane = torch.complex(xx, yy) / cols * 2 * nfreq
    w = 0.7
    rad = plane.abs() / ((1 - w) / 2 * torch.cos(4 * torch.angle(plane)) + (1 + w) / 2)
    csf = 2.6 * (0.0192 + 0.114 * rad) * torch.exp(-(0.114 * rad) ** 1.1)
    csf = torch.where(rad < 7.8909, torch.full_like(csf, 0.9809), csf)
    return csf.T.reshape(rows, cols).float()


def mad_high_quality_index(ref: Tensor, dst: Tensor) -> Tensor:
    """(N, C) MAD's detection-based index ("HI") of 0..255 images: CSF-filtered luminance-nonlinear images, local
    contrast masking, and the masked local MSE."""
    k, G, c_slope, ci_thr, cd_thr = 0.02874, 0.5, 1.0, -5.0, -5.0
    h, w = ref.shape[-2:]
    csf = mad_csf(h, w).to(ref.device, ref.dtype)
    centred = lambda t: torch.fft.fftshift(torch.fft.fft2(t), dim=(-2, -1))  # noqa: E731
    filt = lambda t: torch.fft.ifft2(torch.fft.ifftshift(centred(t) * csf, dim=(-2, -1))).real  # noqa: E731
    r = filt(k * (ref + 1e-12) ** (2.2 / 3))
    d = filt(k * (dst.abs() + 1e-12) ** (2.2 / 3))
    mean_r, std_r = _local_moments(r)
    oh, ow = mean_r.shape[-2:]
    # min over the block and its upper-left neighbours
    std_r = -F.max_pool2d(-std_r, 2, stride=1, padding=1)[..., :oh, :ow] / 2
    _, std_e = _local_moments(d - r)
    eps = 1e-12
    ci_ref = torch.log(((std_r + eps) / (mean_r + eps)).abs())
    ci_dst = torch.log(((std_e + eps) / (mean_r + eps)).abs()).masked_fill(mean_r < G, -1000.0)
    idx1 = (ci_ref > ci_thr) & (ci_dst > c_slope * (ci_ref - ci_thr) + cd_thr)
    idx2 = (ci_ref <= ci_thr) & (ci_dst > cd_thr)
    msk = torch.where(idx1, ci_dst - (c_slope * (ci_ref - ci_thr) + cd_thr),
                      torch.where(idx2, ci_dst - cd_thr, torch.zeros_like(ci_dst)))
    lmse = F.avg_pool2d((ref - dst) ** 2, 16, stride=4)
    mp = msk * lmse
    return mp.flatten(2).norm(dim=2) / math.sqrt(mp.shape[-2] * mp.shape[-1]) * 200


def log_gabor_bank(rows: int, cols: int) -> Tensor:
    """(4 orientations, 5 scales, rows, cols) log-Gabor filters of MAD's appearance stage (wavelengths 3 x 3^s,
    sigmaOnf 0.55, angular sigma pi / 4 / 1.5), laid out for an unshifted FFT, as the reference builds them."""
    x = torch.ones(rows, 1, dtype=torch.float64) * torch.arange(-cols / 2, cols / 2, dtype=torch.float64) / (cols / 2)
    y = (torch.arange(-rows / 2, rows / 2, dtype=torch.float64)[:, None] * torch.ones(1, cols, dtype=torch.float64)
         / (rows / 2))
    radius = (x ** 2 + y ** 2).sqrt()
    radius[int(round(rows / 2 + 1)), int(round(cols / 2 + 1))] = 1  # (sic: the reference's 'centre')
    radius = torch.log(radius + 1e-12)
    theta = torch.atan2(-y, x)
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    theta_sigma = math.pi / 4 / 1.5
    radial = []
    for s in range(5):
        g = torch.exp((radius - math.log(1.0 / (3 * 3 ** s) / 0.5)) ** 2 / (-(2 * math.log(0.55) ** 2)))
        g[int(round(rows / 2)), int(round(cols / 2))] = 0
        radial.append(g)
    bank = []
    for o in range(4):
        a = o * math.pi / 4
        dtheta = torch.atan2(sin_t * math.cos(a) - cos_t * math.sin(a), cos_t * math.cos(a) + sin_t * math.sin(a)).abs()
        spread = torch.exp(-dtheta ** 2 / (2 * theta_sigma ** 2))
        bank.append(torch.stack([torch.fft.fftshift(g * spread) for g in radial]))
    return torch.stack(bank).float()


def mad_low_quality_index(ref: Tensor, dst: Tensor, weighting: str = "scale") -> Tensor:
    """(N, C) MAD's appearance-based index ("LO"): differences of local standard deviation, skewness and kurtosis of
    the log-Gabor responses, weighted per scale (Larson & Chandler; ``weighting="orientation"``: the weights indexed
    by orientation, as IQA_pytorch does)."""
    h, w = ref.shape[-2:]
    bank = log_gabor_bank(h, w).to(ref.device, ref.dtype)
    fr, fd = torch.fft.fft2(ref), torch.fft.fft2(dst)
    mp = 0
    for o in range(4):
        for s in range(5):
            sa = lambda f: _local_moments((torch.fft.ifft2(f * bank[o, s]).abs() ** 2 + 1e-12).sqrt(),  # noqa: E731
                                          higher=True)
            (std_r, skw_r, krt_r), (std_d, skw_d, krt_d) = sa(fr), sa(fd)
            weight = MAD_SCALE_WEIGHTS[s if weighting == "scale" else o]
            mp = mp + weight * ((std_r - std_d).abs() + 2 * (skw_r - skw_d).abs() + (krt_r - krt_d).abs())
    return mp.flatten(2).norm(dim=2) / math.sqrt(mp.shape[-2] * mp.shape[-1])


class MADDistance(Distance):
    """MAD (Larson & Chandler 2010): detection-based (HI) and appearance-based (LO) indices on 0..255 images, blended
    as ``LO^(1 - a) HI^a`` with ``a = 1 / (1 + b1 HI^b2)``; per RGB channel then averaged (``colour="rgb"``) or on the
    luma. 0 for identical images, larger is worse.

    Not registered (see :mod:`lit_attacks.metrics.absent`): with the reference's viewing convention (a CSF of 32
    cycles per image width) the detection stage masks many 64 px distortions entirely (HI = 0, so MAD = 0 with no
    gradient). At full resolution it equals IQA_pytorch's MAD (``weighting="orientation"``) within 1e-4 relative."""

    def __init__(self, colour: str = "rgb", weighting: str = "scale") -> None:
        super().__init__()
        if colour not in COLOURS:
            raise ValueError(f"mad: colour must be one of {', '.join(COLOURS)}, got {colour!r}")
        if weighting not in MAD_WEIGHTING:
            raise ValueError(f"mad: weighting must be one of {', '.join(MAD_WEIGHTING)}, got {weighting!r}")
        self.colour, self.weighting = colour, weighting

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"mad: images of {tuple(x.shape[-2:])} are smaller than its 16x16 blocks")
        a, b = to01(ref), to01(x)
        if self.colour == "luma":
            a, b = luma(a), luma(b)
        a, b = a * 255, b * 255
        hi = mad_high_quality_index(a, b)
        lo = mad_low_quality_index(a, b, self.weighting)
        t1, t2 = 2.55, 3.35
        b1, b2 = math.exp(-t1 / t2), 1 / (math.log(10) * t2)
        sig = 1 / (1 + b1 * hi ** b2)
        return (lo ** (1 - sig) * hi ** sig).mean(dim=1)
