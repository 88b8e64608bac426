"""WaDIQaM-FR (Bosse, Maniry, Müller, Wiegand & Samek 2018, "Deep neural networks for no-reference and
full-reference image quality assessment"; paper Table 3), with the authors' released models.

The network, from the paper and the authors' reference implementation (dmaniry/deepIQA, ``fr_model.py``, MIT):
ten 3x3 convolutions (32, 32, 64, 64, 128, 128, 256, 256, 512, 512 channels, ReLU, a 2x2 max pool after each
pair) map a 32x32 RGB patch (pixel values 0..255, no normalisation) to 512 features; the features of the distorted
patch, ``f_x``, and of the reference patch, ``f_r``, are joined as ``(f_x - f_r, f_x, f_r)``; two fully connected
layers regress the patch quality ``y`` and, for the weighted model ("WaDIQaM"), two more the patch weight
``a = relu(.) + 1e-6``. The image score is ``sum(y a) / sum(a)`` over non-overlapping 32x32 patches (the authors'
``evaluate.py``; the paper samples overlapping patches at random).

The released models (Chainer HDF5; read with h5py, the ``[wadiqam]`` extra) were trained on LIVE, which scores
DMOS (higher is worse), or on TID2013, which scores MOS (higher is better). Distance: the predicted quality loss
against the reference itself, ``q(ref, ref) - q(ref, x)`` for MOS models and ``q(ref, x) - q(ref, ref)`` for DMOS
models, so ``d(x, x) = 0`` and rankings are the model's. A quality regressor is not a metric: ``d`` can be negative
when the model rates ``x`` above the reference (``signed``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attacks.metrics.base import Distance
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.stlpips import MissingExtraError
from lit_attacks.metrics.weights import released_file

PATCH = 32
CHANNELS = (32, 32, 64, 64, 128, 128, 256, 256, 512, 512)
URL = "https://github.com/dmaniry/deepIQA/raw/master/models/"
DATASETS = {"live": "DMOS", "tid": "MOS"}
TOPS = ("weighted", "patchwise")
EXTRA = 'pip install -e ".[wadiqam]" (h5py, to read the authors\' Chainer HDF5 models)'


def read_chainer_hdf5(path: Path, metric: str) -> Dict[str, Tensor]:
    """``{"conv1/W": tensor, ...}``: every dataset of a Chainer ``save_hdf5`` file (links are groups, parameters
    ``W`` and ``b`` datasets; a ``predictor/`` level, as Chainer's Classifier writes, is dropped)."""
    if importlib.util.find_spec("h5py") is None:
        raise MissingExtraError(f"{metric} needs h5py: {EXTRA}")
    import h5py

    out: Dict[str, Tensor] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, torch.from_numpy(obj[()]).float())
                         if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise RuntimeError(f"{metric}: {str(path)!r} is not a readable HDF5 model ({e})") from None
    return {k[len("predictor/"):] if k.startswith("predictor/") else k: v for k, v in out.items()}


class WaDIQaMFR(nn.Module):
    """The FR network of the authors' ``fr_model.py`` (Chainer) in torch; parameter names follow theirs."""

    def __init__(self, top: str = "weighted") -> None:
        super().__init__()
        ins = (3,) + CHANNELS[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(ins, CHANNELS))
        self.fc1, self.fc2 = nn.Linear(512 * 3, 512), nn.Linear(512, 1)
        self.top = top
        if top == "weighted":
            self.fc1_a, self.fc2_a = nn.Linear(512 * 3, 512), nn.Linear(512, 1)
        for m in self.modules():  # He initialisation (Chainer's default), so a random network has a usable scale
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def features(self, patches: Tensor) -> Tensor:
        h = patches
        for i, conv in enumerate(self.convs):
            h = F.relu(conv(h))
            if i % 2 == 1:
                h = F.max_pool2d(h, 2)
        return h.flatten(1)  # (P, 512)

    def patch_scores(self, f_x: Tensor, f_r: Tensor):
        h = torch.cat([f_x - f_r, f_x, f_r], dim=1)
        y = self.fc2(F.relu(self.fc1(h))).squeeze(1)
        if self.top == "weighted":
            a = F.relu(self.fc2_a(F.relu(self.fc1_a(h)))).squeeze(1) + 1e-6
        else:
            a = torch.ones_like(y)
        return y, a

    def load_chainer(self, params: Dict[str, Tensor], metric: str) -> None:
        names = {f"convs.{i}": f"conv{i + 1}" for i in range(len(CHANNELS))}
        names.update({n: n for n in ("fc1", "fc2", "fc1_a", "fc2_a")})
        with torch.no_grad():
            for torch_name, p in self.named_parameters():
                mod, kind = torch_name.rsplit(".", 1)
                key = f"{names[mod]}/{'W' if kind == 'weight' else 'b'}"
                if key not in params:
                    raise RuntimeError(f"{metric}: the model file lacks {key!r} (a WaDIQaM-FR {self.top} model?)")
                if params[key].shape != p.shape:
                    raise RuntimeError(f"{metric}: {key} has shape {tuple(params[key].shape)}, expected "
                                       f"{tuple(p.shape)}")
                p.copy_(params[key])


def patches_of(x: Tensor) -> Tensor:
    """(N * P, 3, 32, 32) non-overlapping patches of (N, 3, H, W), row by row, as the authors' extract_patches
    (a remainder at the right or bottom edge is left out)."""
    n, c, h, w = x.shape
    if h < PATCH or w < PATCH:
        raise ValueError(f"wadiqam_fr: images of {h}x{w} are smaller than one {PATCH}x{PATCH} patch")
    x = x[:, :, : h // PATCH * PATCH, : w // PATCH * PATCH]
    p = x.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (N, C, Ph, Pw, 32, 32)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, PATCH, PATCH)


class WaDIQaMFRDistance(Distance):
    """WaDIQaM-FR with the authors' model trained on ``dataset`` ("live" or "tid"), ``top`` "weighted" (WaDIQaM)
    or "patchwise" (DIQaM). ``pretrained=False``: random network (tests and timing only)."""

    signed = True

    def __init__(self, dataset: str = "live", top: str = "weighted", pretrained: bool = True,
                 weights_dir: Optional[str] = None) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"wadiqam_fr: dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        if top not in TOPS:
            raise ValueError(f"wadiqam_fr: top must be one of {', '.join(TOPS)}, got {top!r}")
        self.dataset, self.top, self.pretrained = dataset, top, pretrained
        self.net = WaDIQaMFR(top)
        if pretrained:
            metric = f"wadiqam_fr_{dataset}"
            fname = f"fr_{dataset}_{top}.model"
            path = released_file(metric, f"wadiqam_{fname}", URL + fname, weights_dir, aliases=(fname,))
            self.net.load_chainer(read_chainer_hdf5(path, metric), metric)
        self.sign = -1.0 if DATASETS[dataset] == "MOS" else 1.0

    def quality(self, ref: Tensor, x: Tensor) -> Tensor:
        """(N,) the model's quality score of ``x`` against ``ref`` (the dataset's MOS or DMOS scale)."""
        n = x.shape[0]
        to255 = lambda t: (t + 1) * 127.5  # noqa: E731
        f = self.net.features(torch.cat([patches_of(to255(x)), patches_of(to255(ref))]))
        f_x, f_r = f.chunk(2)
        y, a = self.net.patch_scores(f_x, f_r)
        y, a = y.view(n, -1), a.view(n, -1)
        return (y * a).sum(1) / a.sum(1)

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return self.sign * (self.quality(ref, x) - self.quality(ref, ref))


def _info(dataset: str) -> Dict[str, str]:
    scale = DATASETS[dataset]
    return dict(what=f"WaDIQaM-FR (Bosse et al. 2018; paper Table 3), the authors' model trained on {dataset.upper()} "
                     f"({scale}), weighted patch pooling over non-overlapping 32x32 patches (``top=\"patchwise\"``: "
                     "DIQaM-FR)",
                distance=f"the predicted {scale} loss against the reference itself (0 at x = ref; negative when x is "
                         "rated above the reference)",
                weights=f"fr_{dataset}_weighted.model from dmaniry/deepIQA (MIT; Chainer HDF5, extra [wadiqam])",
                calibrated="not yet: no published value checked (the network and patch pooling are checked against a "
                           "per-patch restatement on generated HDF5 files)")


@METRICS.register("wadiqam_fr_live", **_info("live"))
def wadiqam_fr_live(pretrained: bool = True, weights_dir: Optional[str] = None, top: str = "weighted") -> Distance:
    return WaDIQaMFRDistance("live", top, pretrained, weights_dir)


@METRICS.register("wadiqam_fr_tid", **_info("tid"))
def wadiqam_fr_tid(pretrained: bool = True, weights_dir: Optional[str] = None, top: str = "weighted") -> Distance:
    return WaDIQaMFRDistance("tid", top, pretrained, weights_dir)

