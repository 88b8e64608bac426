"""Deep feature metrics beyond plain LPIPS: DISTS (piq) and E-LPIPS (random-transformation ensemble)."""
from __future__ import annotations

import itertools
import math
from typing import List, Optional

import piq
import torch
import torch.nn.functional as F
import torchvision
from piq.perceptual import VGG16_LAYERS, ContentLoss
from torch import Tensor, nn

from lit_attacks.metrics.base import Distance, to01
from lit_attacks.metrics.lpips import build_lpips
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.weights import backbone_features, dists_alpha_beta

DISTS_CHANNELS = [3, 64, 128, 256, 512, 512]
DISTS_LAYERS = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]


class _PiqDISTS(piq.DISTS):
    """piq's DISTS, built from weights we resolved instead of downloading in ``__init__``."""

    def __init__(self, vgg_features: nn.Module, alpha: Tensor, beta: Tensor) -> None:
        weights = list(torch.split(alpha, DISTS_CHANNELS, dim=1)) + list(torch.split(beta, DISTS_CHANNELS, dim=1))
        ContentLoss.__init__(self, vgg_features, layers=[VGG16_LAYERS[n] for n in DISTS_LAYERS], weights=weights,
                             replace_pooling=True, reduction="none", normalize_features=False,
                             allow_layers_weights_mismatch=True)


class DISTSDistance(Distance):
    """DISTS (Ding et al. 2020) via ``piq.DISTS``, already a distance (1 - similarity).

    Inputs converted to [0, 1]; piq then applies ImageNet normalisation, as the DISTS reference code.
    ``pretrained=False``: random VGG16 and DISTS' own random alpha/beta initialisation
    (normal(0.1, 0.01), normalised to sum to 1).
    """

    def __init__(self, pretrained: bool = True, weights_dir: Optional[str] = None, resize: bool = False) -> None:
        super().__init__()
        self.pretrained, self.resize = pretrained, resize
        vgg = torchvision.models.vgg16(weights=None).features
        if pretrained:
            vgg.load_state_dict(backbone_features("dists", "vgg16", weights_dir))
            ab = dists_alpha_beta("dists", weights_dir)
            alpha, beta = ab["alpha"].float(), ab["beta"].float()
        else:
            g = torch.Generator().manual_seed(0)
            alpha = 0.1 + 0.01 * torch.randn(1, sum(DISTS_CHANNELS), 1, 1, generator=g)
            beta = 0.1 + 0.01 * torch.randn(1, sum(DISTS_CHANNELS), 1, 1, generator=g)
            total = alpha.sum() + beta.sum()
            alpha, beta = alpha / total, beta / total
        self.model = _PiqDISTS(vgg, alpha, beta)

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        x, ref = to01(x), to01(ref)
        if self.resize:
            x, ref = resize_shorter(x), resize_shorter(ref)
        return self.model(x, ref)


def resize_shorter(x: Tensor, size: int = 256) -> Tensor:
    """The official DISTS ``prepare_image(resize=True)``: the shorter side resized to ``size`` (the longer in
    proportion, truncated as torchvision does), bilinear with antialiasing (torchvision's PIL resize)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    out = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    return torch.nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=True)


class ELPIPSDistance(Distance):
    """E-LPIPS-style distance: LPIPS averaged over an ensemble of random input transformations, following
    E-LPIPS (Kettunen et al. 2019) but **not** E-LPIPS itself: it uses the LPIPS v0.1 linear heads, not
    E-LPIPS' retrained weights (``mkettune/elpips``, TensorFlow), and has neither its swap transform nor
    its feature dropout. Registered as ``elpips_style`` / ``elpips_style_alex`` (the names ``elpips`` and
    ``elpips_alex`` are retired; E-LPIPS itself is ``elpips_vgg``, :mod:`lit_attacks.metrics.elpips`).

    Each ensemble member applies the same transformation to ``ref`` and ``x`` (on [0, 1] images):
    a box-filter downscale by a random level k with P(k) ~ 1/k^2 (levels up to min(H, W) // 64, so
    none at 64x64), a reflect-padded random offset of up to ``offset_max`` pixels, one of four
    flips, one of six colour-channel permutations and a per-channel colour scale in [0.2, 1].
    Max pooling in the backbone is replaced by average pooling, as E-LPIPS does. Feature dropout of
    the original (keep 0.99) is not used.

    Args:
        net: LPIPS backbone ("vgg" as in the paper, "alex", "squeeze").
        n_transforms: ensemble size averaged per call.
        seed: seed of the transformation sampler.
        deterministic: True draws the ensemble once at construction (a fixed, deterministic
            distance: what attacks and tests need); False draws a fresh ensemble every call from a
            generator seeded with ``seed`` (the stochastic metric of the paper).
        pretrained, weights_dir: as :class:`~lit_attacks.metrics.lpips.LPIPSDistance`.
    """

    def __init__(self, net: str = "vgg", n_transforms: int = 8, seed: int = 0, deterministic: bool = True,
                 offset_max: int = 7, pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        if n_transforms < 1:
            raise ValueError(f"elpips: n_transforms must be >= 1, got {n_transforms}")
        self.pretrained, self.n_transforms, self.offset_max = pretrained, n_transforms, offset_max
        self.deterministic, self.stochastic = deterministic, not deterministic
        self.model = build_lpips(net, pretrained, weights_dir, metric=f"elpips[{net}]")
        _avg_pooling(self.model.net)
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed = self.sample(n_transforms) if deterministic else None

    def sample(self, n: int) -> dict:
        """Draw ``n`` transformations (CPU tensors) from the metric's generator."""
        g = self.generator
        perms = torch.tensor(list(itertools.permutations(range(3))))
        return {
            "offset": torch.randint(0, self.offset_max + 1, (n, 2), generator=g),
            "flip": torch.randint(0, 4, (n,), generator=g),
            "perm": perms[torch.randint(0, 6, (n,), generator=g)],
            "color": 0.2 + 0.8 * torch.rand(n, 3, generator=g),
            "scale_u": torch.rand(n, generator=g),
            "scale_offset": torch.rand(n, 2, generator=g),
        }

    def _transform(self, x: Tensor, t: dict, i: int, level: int) -> Tensor:
        """Member ``i`` of ensemble ``t`` applied to (B, 3, H, W) in [0, 1]."""
        if level > 1:
            H, W = x.shape[-2:]
            oy, ox = (t["scale_offset"][i] * level).long().tolist()
            Hp, Wp = math.ceil((H + oy) / level) * level, math.ceil((W + ox) / level) * level
            x = F.pad(x, [ox, Wp - W - ox, oy, Hp - H - oy], mode="reflect")
            x = F.avg_pool2d(x, level)
        oy, ox = t["offset"][i].tolist()
        x = F.pad(x, [ox, self.offset_max - ox, oy, self.offset_max - oy], mode="reflect")
        flip = int(t["flip"][i])
        dims = {0: [3], 1: [2], 2: [2, 3], 3: []}[flip]
        if dims:
            x = x.flip(dims)
        x = x[:, t["perm"][i].to(x.device)]
        return x * t["color"][i].to(x).view(1, 3, 1, 1)

    def _levels(self, t: dict, size: int) -> List[int]:
        num = max(1, size // 64)
        p = torch.tensor([1.0 / k ** 2 for k in range(1, num + 1)])
        cdf = (p / p.sum()).cumsum(0)
        return [int(torch.searchsorted(cdf, u.clamp(max=cdf[-1].item() - 1e-7)).item()) + 1 for u in t["scale_u"]]

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        t = self.fixed if self.deterministic else self.sample(self.n_transforms)
        B = x.shape[0]
        r01, x01 = to01(ref), to01(x)
        levels = self._levels(t, min(x.shape[-2:]))
        total = x.new_zeros(B)
        for level in sorted(set(levels)):
            idx = [i for i, lv in enumerate(levels) if lv == level]
            tr = torch.cat([self._transform(r01, t, i, level) for i in idx])  # (len(idx) * B, 3, h, w)
            tx = torch.cat([self._transform(x01, t, i, level) for i in idx])
            d = self.model(tr * 2 - 1, tx * 2 - 1).flatten().view(len(idx), B)
            total = total + d.sum(0)
        return total / len(levels)


def _avg_pooling(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.MaxPool2d):
            pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode)
            setattr(module, name, pool)
        else:
            _avg_pooling(child)


@METRICS.register(
    "dists",
    what="piq DISTS (VGG16 with L2 pooling, alpha/beta of DISTS) at the input size; ``resize=True`` first resizes "
         "the shorter side to 256 as the official code's prepare_image",
    distance="as is (1 - similarity)",
    weights="VGG16 ImageNet + DISTS alpha/beta (MIT)",
    calibrated="the DISTS authors' values, r1 vs r0 0.3347 (within 1e-4), goldhill_jpeg vs goldhill 0.19509 and "
               "i01_01_5 vs I01 0.17321 (within 1e-3, piq's tolerance)")
def dists(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    return DISTSDistance(pretrained, weights_dir, **kw)


@METRICS.register(
    "elpips_style",
    what="E-LPIPS-style (not E-LPIPS): LPIPS v0.1 heads on VGG16 with average pooling, averaged over a "
         "random-transform ensemble",
    distance="as is",
    weights="VGG16 ImageNet")
def elpips_style(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    return ELPIPSDistance(net="vgg", pretrained=pretrained, weights_dir=weights_dir, **kw)


@METRICS.register(
    "elpips_style_alex",
    what="E-LPIPS-style (not E-LPIPS) on AlexNet",
    distance="as is",
    weights="AlexNet ImageNet")
def elpips_style_alex(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    return ELPIPSDistance(net="alex", pretrained=pretrained, weights_dir=weights_dir, **kw)


@METRICS.register(
    "elpips_style_random",
    what="E-LPIPS-style on VGG16 with a fresh random-transform ensemble every call (the stochastic metric; attack "
         "it with EOT)",
    distance="as is",
    weights="VGG16 ImageNet")
def elpips_style_random(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    return ELPIPSDistance(net="vgg", deterministic=False, pretrained=pretrained, weights_dir=weights_dir, **kw)


@METRICS.register(
    "elpips_style_alex_random",
    what="E-LPIPS-style on AlexNet with a fresh random-transform ensemble every call (attack it with EOT)",
    distance="as is",
    weights="AlexNet ImageNet")
def elpips_style_alex_random(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    return ELPIPSDistance(net="alex", deterministic=False, pretrained=pretrained, weights_dir=weights_dir, **kw)


_NOT_ELPIPS = ("it is E-LPIPS-style (LPIPS v0.1 heads with average pooling over a random-transform ensemble), not "
               "E-LPIPS (Kettunen et al. 2019) with its retrained weights, swap transform and dropout")
METRICS.retire("elpips", f"use 'elpips_vgg' (E-LPIPS itself: the authors' network, weights and transformations) or "
                         f"'elpips_style' (the earlier name's metric: {_NOT_ELPIPS})")
METRICS.retire("elpips_alex", f"use 'elpips_style_alex' (the earlier name's metric: {_NOT_ELPIPS}); E-LPIPS has no "
                              f"AlexNet version, its VGG one is 'elpips_vgg'")
