"""E-LPIPS (Kettunen, Härkönen & Lehtinen 2019): LPIPS made robust by averaging over random input transformations,
with its own network and weights: the authors' E-LPIPS-VGG (``elpips.elpips_vgg`` of mkettune/elpips, BSD-2).

Written from the paper and the authors' TensorFlow code (``elpips.py``, ``pnetlin.py``, ``networks.py``):

* Network (``vgg16_full_avg``): torchvision's VGG16 convolutions with average pooling, and every layer compared:
  the (shifted, scaled) input itself, then the 13 ReLU outputs: 14 layers, each unit-normalised over channels,
  squared differences averaged over pixels and weighted by the authors' retrained linear weights
  (``vgg_full_avg.npy``: 3, 64, 64, 128, 128, 256 x 3, 512 x 6). Before every convolution a dropout mask (keep
  0.99, scaled by 1 / 0.99) is drawn and shared by the two images.
* Transformations, drawn per evaluation and applied to both images in [0, 1] before they go to [-1, 1]: a box
  downscale by ``s`` in 1..8 with P(s) ~ 1 / s^2 (reflect-padded to a multiple of ``s`` at a random offset),
  a reflect-padded random offset of 0..7 px (the image grows by 7 px), one of four flips (x, y, both, none),
  a transpose with probability 1/2, one of the six colour permutations and a colour factor 0.2 + 0.8 U(0, 1)
  per channel.

Sampling: the authors draw one transformation per image of their batch (stratified across the batch); we draw
one per evaluation shared by every sample of the batch, and one dropout mask per image size broadcast over the
batch, so a sample's distance never depends on its batch. ``deterministic=True`` (default) fixes ``n``
evaluations from ``seed`` (common random numbers: a fixed, deterministic function, d(x, x) = 0); with
``deterministic=False`` every call draws fresh ones (the authors' metric with ``n = 1``: attack it with EOT).
The linear weights are a pickled NumPy object array; they are read with an unpickler that admits only NumPy's
array reconstruction (no other code).
"""
from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attacks.metrics.base import Distance, to01
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.weights import backbone_features, load_exactly

# The authors' linear weights (elpips/vgg_full_avg.npy at mkettune/elpips 9192007, BSD-2: shipped with its licence,
# data/ELPIPS_LICENSE, as lpips ships its heads), checked by sha256 before it is read.
LIN_PATH = Path(__file__).parent / "data" / "elpips_vgg_full_avg.npy"
LIN_SHA256 = "2f9171c0fb542223efc240fed40c0e56ad3014d5a9153e4a3fdc00cf7b1bb16e"
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16().features: conv indices, with an average pool before each block after the first
BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
CHANNELS = (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
KEEP = 0.99
OFFSET_MAX, SCALE_LEVELS = 7, 8
PERMUTATIONS = tuple(itertools.permutations(range(3)))


class _NumpyOnly(pickle.Unpickler):
    """Unpickles NumPy arrays (and dicts of them), refusing every other global."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "encode":
            return codecs.encode
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # NumPy's own _reconstruct, wherever it lives
        return getattr(np, name)


def read_object_npy(path: Path) -> dict:
    """The dict stored in a NumPy ``.npy`` object array (``np.save`` of a dict), without ``allow_pickle``'s
    arbitrary code: only NumPy arrays may be rebuilt."""
    data = Path(path).read_bytes()
    try:
        f = io.BytesIO(data)
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"expected a 0-d object array, found shape {shape} dtype {dtype}")
        obj = _NumpyOnly(f, encoding="latin1").load()
        obj = obj.item() if isinstance(obj, np.ndarray) else obj
        if not isinstance(obj, dict):
            raise ValueError(f"holds {type(obj).__name__}, not a dict")
    except Exception as e:
        raise RuntimeError(f"could not read {str(path)!r}: {type(e).__name__}: {e}") from e
    return obj


def linear_weights(path: Path) -> List[Tensor]:
    """The 14 linear weight vectors of ``vgg_full_avg.npy`` (sha256 checked), in layer order."""
    got = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if got != LIN_SHA256:
        raise RuntimeError(f"elpips_vgg: {path} has sha256 {got[:16]}..., expected {LIN_SHA256[:16]}... (the authors' "
                           "vgg_full_avg.npy); reinstall the package")
    lin = read_object_npy(path)
    w = [torch.from_numpy(np.asarray(lin[f"lin{i}.model.1.weight"], dtype=np.float32)).flatten() for i in range(14)]
    assert [len(v) for v in w] == list(CHANNELS)
    return w


class ELPIPSNet(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> the 14 layers E-LPIPS compares (input and 13 ReLU outputs), with optional
    dropout masks (one per convolution, broadcast over the batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({str(i): nn.Conv2d(cin, cout, 3, padding=1) for i, cin, cout in zip(
            [i for b in BLOCKS for i in b], CHANNELS[:-1], CHANNELS[1:])})
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor, masks: Optional[List[Tensor]] = None) -> List[Tensor]:
        h = (x - self.shift) / self.scale
        outs, k = [h], 0
        for b, block in enumerate(BLOCKS):
            if b:
                h = F.avg_pool2d(h, 2)
            for i in block:
                if masks is not None:
                    h = h * masks[k]
                h = F.relu(self.convs[str(i)](h))
                outs.append(h)
                k += 1
        return outs

    def mask_shapes(self, H: int, W: int) -> List[Tuple[int, int, int]]:
        """(channels, h, w) of each convolution's input for an (H, W) image."""
        shapes = []
        for b, block in enumerate(BLOCKS):
            if b:
                H, W = H // 2, W // 2
            shapes += [(self.convs[str(i)].in_channels, H, W) for i in block]
        return shapes


def _unit(f: Tensor) -> Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # the authors' normalize_tensor


class Transform:
    """One E-LPIPS input transformation (the parameters of the authors' ``sample_ensemble`` for one image)."""

    def __init__(self, g: torch.Generator, levels: int = SCALE_LEVELS) -> None:
        p = torch.tensor([1.0 / k ** 2 for k in range(1, levels + 1)], dtype=torch.float64)
        self.scale = int(torch.multinomial(p, 1, generator=g)) + 1
        self.scale_offset = torch.randint(0, self.scale, (2,), generator=g).tolist()
        self.offset = torch.randint(0, OFFSET_MAX + 1, (2,), generator=g).tolist()
        self.flip = int(torch.randint(0, 4, (1,), generator=g))
        self.swap = bool(torch.randint(0, 2, (1,), generator=g))
        self.perm = list(PERMUTATIONS[int(torch.randint(0, 6, (1,), generator=g))])
        self.color = (0.2 + 0.8 * torch.rand(3, generator=g, dtype=torch.float64)).tolist()

    @classmethod
    def of(cls, scale: int, scale_offset, offset, flip: int, swap: bool, perm, color) -> "Transform":
        """A transformation with the given parameters (scale_offset and offset as (y, x))."""
        t = cls.__new__(cls)
        t.scale, t.scale_offset, t.offset, t.flip, t.swap = scale, list(scale_offset), list(offset), flip, bool(swap)
        t.perm, t.color = list(perm), [float(c) for c in color]
        return t

    def __call__(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> transformed, as the authors' ``apply_ensemble`` (their padding, not cropping)."""
        s = self.scale
        if s > 1:
            H, W = x.shape[-2:]
            oy, ox = self.scale_offset
            Hf, Wf = (2 * (s - 1) + H) // s * s, (2 * (s - 1) + W) // s * s
            x = F.avg_pool2d(_reflect(x, oy, Hf - H - oy, ox, Wf - W - ox), s)
        oy, ox = self.offset
        x = _reflect(x, OFFSET_MAX - oy, oy, OFFSET_MAX - ox, ox)
        dims = {0: [3], 1: [2], 2: [2, 3], 3: []}[self.flip]
        if dims:
            x = x.flip(dims)
        if self.swap:
            x = x.transpose(2, 3)
        x = x[:, self.perm]
        return x * torch.tensor(self.color, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)


def _reflect(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Reflect padding (TensorFlow's 'REFLECT'), applied in steps when a pad exceeds what one reflection allows."""
    while top or bottom or left or right:
        H, W = x.shape[-2:]
        t, b, lf, r = min(top, H - 1), min(bottom, H - 1), min(left, W - 1), min(right, W - 1)
        x = F.pad(x, [lf, r, t, b], mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lf, right - r
    return x


class ELPIPSDistance(Distance):
    """E-LPIPS-VGG: the mean over ``n`` random transformations (and dropout masks) of the E-LPIPS network distance.

    Args:
        n: evaluations averaged per call.
        deterministic: True fixes the ``n`` draws from ``seed`` (a deterministic distance); False draws fresh
            ones every call (``stochastic``; the authors' metric at ``n = 1``).
        seed: seed of the draws.
        dropout: the authors' feature dropout (keep 0.99); False leaves it out.
        scale_levels: downscale levels (the authors' 8); 1 disables downscaling.
        pretrained: False keeps a random VGG (labelled), with the authors' linear weights.
        weights_dir: folder searched first for the VGG16 and the linear weights.
    """

    def __init__(self, n: int = 8, deterministic: bool = True, seed: int = 0, dropout: bool = True,
                 scale_levels: int = SCALE_LEVELS, pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        if n < 1 or scale_levels < 1:
            raise ValueError(f"elpips_vgg: need n >= 1 and scale_levels >= 1, got n={n}, scale_levels={scale_levels}")
        self.n, self.deterministic, self.stochastic = n, deterministic, not deterministic
        self.seed, self.dropout, self.scale_levels, self.pretrained = seed, dropout, scale_levels, pretrained
        self.net = ELPIPSNet()
        if pretrained:
            feats = backbone_features("elpips_vgg", "vgg16", weights_dir)
            load_exactly(self.net.convs, feats, "elpips_vgg: the VGG16 features do not match its convolutions")
        self.lins = nn.ParameterList([nn.Parameter(v) for v in linear_weights(LIN_PATH)])
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed = [Transform(self.generator, scale_levels) for _ in range(n)] if deterministic else None
        self._masks: Dict[Tuple[int, int, int], List[Tensor]] = {}

    def draws(self) -> List[Transform]:
        if self.deterministic:
            return self.fixed
        return [Transform(self.generator, self.scale_levels) for _ in range(self.n)]

    def masks(self, k: int, H: int, W: int, like: Tensor) -> Optional[List[Tensor]]:
        """Dropout masks of evaluation ``k`` for an (H, W) network input: fixed per (k, H, W) when deterministic."""
        if not self.dropout:
            return None
        if self.deterministic:
            key = (k, H, W)
            if key not in self._masks:
                g = torch.Generator().manual_seed(((self.seed * 1_000_003 + k) * 100_003 + H) * 100_003 + W)
                self._masks[key] = self._draw_masks(g, H, W)
            return [m.to(like) / KEEP for m in self._masks[key]]
        return [m.to(like) / KEEP for m in self._draw_masks(self.generator, H, W)]

    def _draw_masks(self, g: torch.Generator, H: int, W: int) -> List[Tensor]:
        """Keep-masks (bool) of every convolution's input, one per image size, broadcast over the batch."""
        return [torch.rand(1, c, h, w, generator=g) < KEEP for c, h, w in self.net.mask_shapes(H, W)]

    def network_distance(self, ref: Tensor, x: Tensor, masks: Optional[List[Tensor]] = None) -> Tensor:
        """(B,) the E-LPIPS network distance of images in [-1, 1] (no transformation)."""
        d = 0
        for w, a, b in zip(self.lins, self.net(ref, masks), self.net(x, masks)):
            d = d + ((_unit(a) - _unit(b)) ** 2).mean((2, 3)) @ w.to(a)
        return d

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        r01, x01 = to01(ref), to01(x)
        total = 0
        for k, t in enumerate(self.draws()):
            tr, tx = t(r01) * 2 - 1, t(x01) * 2 - 1
            total = total + self.network_distance(tr, tx, self.masks(k, *tr.shape[-2:], tr))
        return total / self.n


@METRICS.register(
    "elpips_vgg",
    what="E-LPIPS-VGG (Kettunen et al. 2019): the authors' VGG16 network with average pooling and retrained weights "
         "on 14 layers, averaged over 8 fixed draws of their random transformations and feature dropout "
         "(deterministic; ``deterministic=False`` draws fresh ones every call)",
    distance="as is",
    weights="VGG16 ImageNet (torchvision) and the authors' vgg_full_avg.npy (mkettune/elpips, BSD-2), read without "
            "arbitrary unpickling",
    calibrated="the authors' TensorFlow code (run under TF 2.15's v1 compatibility) with the same transformation "
               "parameters and no dropout: distances within 1e-5 relative (tests/data/elpips)")
def elpips_vgg(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    return ELPIPSDistance(pretrained=pretrained, weights_dir=weights_dir, **kw)


@METRICS.register(
    "elpips_vgg_random",
    what="E-LPIPS-VGG with fresh transformations and dropout every call (the authors' stochastic metric, one draw "
         "per call; attack it with EOT)",
    distance="as is",
    weights="VGG16 ImageNet (torchvision) and the authors' vgg_full_avg.npy (mkettune/elpips, BSD-2), read without "
            "arbitrary unpickling",
    calibrated="as elpips_vgg (same network and transformations) (tests/data/elpips)")
def elpips_vgg_random(pretrained: bool = True, weights_dir: Optional[str] = None, **kw) -> Distance:
    kw.setdefault("n", 1)
    return ELPIPSDistance(deterministic=False, pretrained=pretrained, weights_dir=weights_dir, **kw)


