"""PIM (Bhardwaj, Fischer, Ballé & Chinen, NeurIPS 2020, "An Unsupervised Information-Theoretic Perceptual Quality
Metric"; paper Table 3), a torch port of the authors' TensorFlow implementation (google-research/perceptual-quality,
Apache-2.0) that reads their released checkpoints.

The model, as in the authors' ``models.py`` / ``networks.py`` / ``distribution_utils.py``:

* Frontend: a steerable pyramid (Simoncelli's ``sp1`` filters from pyrtools, ``nscales`` 3, two orientations; zero
  "same" padding, the low-pass decimated by 2 after each scale) splits the sRGB image in [0, 1] into 8 bands,
  coarsest first; each band has its own CNN (5x5 convolutions, ``num_filters`` [64, 64, 64, 3], ReLU between).
* Marginal encoder per band: per pixel, dense layers map the band's 3 features to a mixture of ``nmix`` unit-variance
  Gaussians over a 10-d latent: means from ``num_distribution_encoder_layers`` ReLU layers, mixture logits from a
  parallel stack. PIM-1 has one component, PIM-5 five.
* Distance between x and y: the symmetrised KL divergence of their encodings, averaged over pixels and bands. For
  one component it is, up to the factor of the latent size, the mean squared difference of the means, which the
  authors compute exactly (we do too: ``pim_1`` is deterministic and equals theirs).
* For five components the authors estimate the KL by sampling (``kld_samples=1``: one fresh draw per call). Ours
  uses ``samples`` draws (default 8) of common random numbers: a fixed noise (seed ``seed``) shared by every image,
  so ``pim_5`` is a deterministic, smooth function of the images, ``d(x, x) = 0`` exactly, and a sample's score does
  not depend on its batch; the estimate is unbiased for the same KL. ``fresh=True`` draws new noise on every call
  (the authors' behaviour with ``samples=1``; the metric is then ``stochastic`` and attacks use EOT).

Weights: the authors' ``pim-1.zip`` / ``pim-5.zip`` (``config.json`` + a TensorFlow checkpoint), downloaded from
their storage with the sha512 their loader checks, read without TensorFlow (:mod:`lit_attacks.metrics.tfcheckpoint`).
The authors note that these are reimplementations of the paper's models (slightly worse on BAPPS-2AFC than the
paper's numbers, better on JND).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attacks.metrics.base import Distance, to01
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.tfcheckpoint import read_tf_checkpoint
from lit_attacks.metrics.weights import released_archive

URL = "https://storage.googleapis.com/tensorflow_compression/pim/{}.zip"
SHA512 = {  # the authors' loader.py
    "pim-1": "436b4a95e667d8a4b6ee639f1d5d303585059b3f33075dbabbc9b1d0fb5008fa"
             "1509c046b80e2565c69e77f3ac396288eeb260cad8e316ea5c7e207b57ae68cb",
    "pim-5": "7939f9f9ed07650e9e290cac4e2cf559424795c26bb41f0641b7b77e93c96426"
             "8e5f4a8d6f0ba9a37d4407aef9973c04ee1dd88f1563643f0bc600a1a456aab3",
}
DEFAULTS = dict(num_channels=3, multiscale="Steerable", nscales=3, steerable_filter_type=1, cnn="Conv",
                num_filters=[64, 64, 64, 3], padding="same", num_distribution_encoder_layers=2,
                num_marginal_encoder_mixtures=5, z_dim=10)  # the authors' config.get_params()
_VAR = "/.ATTRIBUTES/VARIABLE_VALUE"
_LOG2PI = math.log(2 * math.pi)
# Encoded image: per band, component means (B, H, W, K, Z) and mixture log-weights (B, H, W, K).
Encoding = List[Tuple[Tensor, Tensor]]


def steerable_filters(kind: int) -> Dict[str, np.ndarray]:
    """Simoncelli's steerable pyramid filters ``sp<kind>`` as pyrtools publishes them (MIT)."""
    from pyrtools.pyramids.filters import steerable_filters as sf

    return sf(f"sp{kind}_filters")


class SteerableFrontend(nn.Module):
    """The authors' ``Steerable`` layer: bands of an (N, C, H, W) image, coarsest (the low-pass residual) first."""

    def __init__(self, nscales: int = 3, filter_type: int = 1, padding: str = "same", channels: int = 3) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"pim: padding must be 'same' or 'valid', got {padding!r}")
        f = steerable_filters(filter_type)
        self.nscales, self.same, self.channels = nscales, padding == "same", channels
        t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float32)  # noqa: E731
        self.register_buffer("lo0", t(f["lo0filt"]))
        self.register_buffer("hi0", t(f["hi0filt"]))
        self.register_buffer("lo", t(f["lofilt"]))
        bf = np.asarray(f["bfilts"])
        size = int(round(bf.shape[0] ** 0.5))
        bands = []
        for b in range(bf.shape[1]):
            filt = bf[:, b].reshape(size, size).T
            if (size // 2) % 2:
                filt = np.pad(filt, 1)
            bands.append(t(filt))
        self.register_buffer("bands", torch.stack(bands))
        self.nlevels = nscales * len(bands) + 2

    def _conv(self, x: Tensor, k: Tensor, stride: int = 1) -> Tensor:
        w = k.to(x.dtype)[None, None].expand(self.channels, 1, *k.shape)
        pad = k.shape[-1] // 2 if self.same else 0
        return F.conv2d(x, w, stride=stride, padding=pad, groups=self.channels)

    def forward(self, x: Tensor) -> List[Tensor]:
        out = [self._conv(x, self.hi0)]
        lo = self._conv(x, self.lo0)
        for _ in range(self.nscales):
            out.extend(self._conv(lo, b) for b in self.bands)
            lo = self._conv(lo, self.lo, stride=2)
        out.append(lo)
        return out[::-1]


def _cnn(channels: int, num_filters: List[int], same: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i, n in enumerate(num_filters):
        layers.append(nn.Conv2d(channels, n, 5, padding=2 if same else 0))
        if i < len(num_filters) - 1:
            layers.append(nn.ReLU())
        channels = n
    return nn.Sequential(*layers)


class MarginalEncoder(nn.Module):
    """The authors' ``EncoderDist`` (marginal): per pixel, a mixture of unit-variance Gaussians."""

    def __init__(self, features: int, nlayers: int, nz: int, nmix: int) -> None:
        super().__init__()
        self.nz, self.nmix = nz, max(1, nmix)
        width = nz * self.nmix
        self.base = nn.ModuleList(nn.Linear(features if i == 0 else width, width) for i in range(nlayers))
        last = width if nlayers else features
        self.mus_layer = nn.Linear(last, width) if last != width else None  # the authors skip it when widths match
        if self.nmix > 1:
            self.mix = nn.ModuleList(nn.Linear(features if i == 0 else self.nmix, self.nmix) for i in range(nlayers))
            self.logit_layer = nn.Linear(self.nmix if nlayers else features, self.nmix)

    def forward(self, f: Tensor) -> Tuple[Tensor, Tensor]:
        """``f`` (B, H, W, C) -> means (B, H, W, K, Z), mixture log-weights (B, H, W, K)."""
        net = f
        for layer in self.base:
            net = torch.relu(layer(net))
        mus = self.mus_layer(net) if self.mus_layer is not None else net
        mus = mus.unflatten(-1, (self.nmix, self.nz))
        if self.nmix == 1:
            return mus, torch.zeros(mus.shape[:-1], dtype=mus.dtype, device=mus.device)
        mix = f
        for layer in self.mix:
            mix = torch.relu(layer(mix))
        return mus, torch.log_softmax(self.logit_layer(mix), dim=-1)


class PIMNet(nn.Module):
    """Frontend and marginal encoders of the authors' ``PIM`` model, built from their ``config.json`` parameters."""

    def __init__(self, params: Dict) -> None:
        super().__init__()
        p = {**DEFAULTS, **params}
        if p["multiscale"] not in ("Steerable", None):
            raise ValueError(f"pim: multiscale={p['multiscale']!r} is not ported (Steerable or None)")
        if p["cnn"] != "Conv":
            raise ValueError(f"pim: cnn={p['cnn']!r} is not ported (Conv)")
        same = str(p["padding"]).lower() == "same"
        self.multiscale = p["multiscale"] is not None
        self.frontend = (SteerableFrontend(p["nscales"], p["steerable_filter_type"], str(p["padding"]).lower(),
                                           p["num_channels"]) if self.multiscale else None)
        nlevels = self.frontend.nlevels if self.multiscale else 1
        filters = list(p["num_filters"])
        self.cnns = nn.ModuleList(_cnn(p["num_channels"], filters, same) for _ in range(nlevels))
        self.encoders = nn.ModuleList(MarginalEncoder(filters[-1], p["num_distribution_encoder_layers"], p["z_dim"],
                                                      p["num_marginal_encoder_mixtures"]) for _ in range(nlevels))
        self.nmix, self.nz = max(1, p["num_marginal_encoder_mixtures"]), p["z_dim"]

    def he_init(self) -> "PIMNet":
        """He-normal weights and zero biases (the random network of ``pretrained=False``): torch's default
        initialisation shrinks the signal through the 5x5 stacks until every pixel encodes alike."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return self

    def encode(self, x01: Tensor) -> Encoding:
        bands = self.frontend(x01) if self.multiscale else [x01]
        return [enc(cnn(b).permute(0, 2, 3, 1)) for b, cnn, enc in zip(bands, self.cnns, self.encoders)]

    def load_tf(self, weights: Dict[str, np.ndarray], metric: str) -> None:
        """Copy the authors' checkpoint tensors (Keras kernels (kh, kw, in, out) and (in, out)) into the modules."""
        own: Dict[str, Tuple[Tensor, str]] = {}
        for level, cnn in enumerate(self.cnns):
            prefix = f"frontend/cnns/{level}" if self.multiscale else "frontend/cnn"
            for j, conv in enumerate(m for m in cnn if isinstance(m, nn.Conv2d)):
                own[f"{prefix}/layer_with_weights-{j}/kernel"] = (conv.weight, "conv")
                own[f"{prefix}/layer_with_weights-{j}/bias"] = (conv.bias, "")
        for level, enc in enumerate(self.encoders):
            prefix = f"marginal_encoder/encoders/{level}"
            dense = [(f"base/{i}", m) for i, m in enumerate(enc.base)]
            if enc.mus_layer is not None:
                dense.append(("mus_layer", enc.mus_layer))
            if enc.nmix > 1:
                dense += [(f"mix/{i}", m) for i, m in enumerate(enc.mix)] + [("logit_layer", enc.logit_layer)]
            for name, m in dense:
                own[f"{prefix}/{name}/kernel"] = (m.weight, "dense")
                own[f"{prefix}/{name}/bias"] = (m.bias, "")
        missing = [k for k in own if k + _VAR not in weights]
        if missing:
            raise RuntimeError(f"{metric}: checkpoint lacks {len(missing)} of the model's tensors, e.g. {missing[:3]} "
                               "(is it a PIM checkpoint with this config.json?)")
        with torch.no_grad():
            for k, (p, kind) in own.items():
                v = torch.from_numpy(np.ascontiguousarray(weights[k + _VAR])).float()
                v = v.permute(3, 2, 0, 1) if kind == "conv" else v.T if kind == "dense" else v
                if v.shape != p.shape:
                    raise RuntimeError(f"{metric}: checkpoint tensor {k} has shape {tuple(v.shape)} after conversion, "
                                       f"expected {tuple(p.shape)}")
                p.copy_(v)


def mixture_log_prob(enc: Encoding, values: List[Tensor]) -> Tensor:
    """The authors' ``Independent.log_prob``: per band, the mixture density of ``values`` (..., B, H, W, Z) averaged
    over pixels, then over bands -> (..., B)."""
    out = 0
    for (mus, logw), v in zip(enc, values):
        sq = (v.unsqueeze(-2) - mus).square().sum(-1)  # (..., B, H, W, K)
        nz = mus.shape[-1]
        lp = torch.logsumexp(logw - 0.5 * sq, dim=-1) - 0.5 * nz * _LOG2PI
        out = out + lp.mean(dim=(-2, -1))
    return out / len(enc)


def mixture_mean(enc: Encoding) -> List[Tensor]:
    """Per band, the mean (B, H, W, Z) of each pixel's mixture."""
    return [(logw.exp().unsqueeze(-1) * mus).sum(-2) for mus, logw in enc]


def load_pim(model: str, pretrained: bool, weights_dir: Optional[str], metric: str) -> PIMNet:
    if not pretrained:
        nmix = 1 if model == "pim-1" else 5
        return PIMNet({"num_marginal_encoder_mixtures": nmix}).he_init()
    folder = released_archive(metric, model, URL.format(model), "config.json", weights_dir, sha512=SHA512[model])
    return pim_from_folder(folder, metric)


def pim_from_folder(folder: str | Path, metric: str = "pim") -> PIMNet:
    """A :class:`PIMNet` from a folder laid out like the authors' archives (``config.json``, ``weights.index``,
    ``weights.data-*``)."""
    folder = Path(folder)
    try:
        params = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{metric}: could not read {folder / 'config.json'}: {e}") from e
    net = PIMNet(params)
    net.load_tf(read_tf_checkpoint(folder / "weights"), metric)
    return net


class PIMDistance(Distance):
    """PIM distance of ``x`` to ``ref``: the symmetrised KL of their encodings (exact for one mixture component,
    estimated with common random numbers for more).

    Args:
        model: "pim-1" or "pim-5" (the authors' archive names).
        samples: draws per KL estimate (mixtures only).
        seed: seed of the common random numbers.
        fresh: draw new noise on every call (the authors' behaviour; the metric becomes ``stochastic``).
        net: a ready :class:`PIMNet` (e.g. :func:`pim_from_folder`), instead of loading ``model``.
    """

    def __init__(self, model: str = "pim-1", pretrained: bool = True, weights_dir: Optional[str] = None,
                 samples: int = 8, seed: int = 0, fresh: bool = False, net: Optional[PIMNet] = None) -> None:
        super().__init__()
        if model not in SHA512:
            raise ValueError(f"pim: model must be one of {', '.join(SHA512)}, got {model!r}")
        if samples < 1:
            raise ValueError(f"pim: samples must be >= 1, got {samples}")
        self.net = net if net is not None else load_pim(model, pretrained, weights_dir, f"pim_{model[-1]}")
        self.pretrained, self.samples, self.seed, self.fresh = pretrained, samples, seed, fresh
        self.stochastic = fresh and self.net.nmix > 1
        self._noise: Dict[Tuple, Tuple[Tensor, Tensor]] = {}

    def encode(self, x: Tensor) -> Encoding:
        """The authors' ``model(x)`` for ``x`` in [-1, 1] (converted to their [0, 1])."""
        return self.net.encode(to01(x))

    def noise(self, level: int, h: int, w: int, like: Tensor) -> Tuple[Tensor, Tensor]:
        """(Gumbel (S, H, W, K), Gaussian (S, H, W, Z)) for one band, the same for every image of a batch."""
        key = (level, h, w, like.device, like.dtype)
        if self.fresh or key not in self._noise:
            g = None
            if not self.fresh:
                g = torch.Generator().manual_seed(self.seed * 1000003 + level)
            u = torch.rand(self.samples, h, w, self.net.nmix, generator=g, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))
            eps = torch.randn(self.samples, h, w, self.net.nz, generator=g, dtype=torch.float64)
            pair = (gumbel.to(like.device, like.dtype), eps.to(like.device, like.dtype))
            if self.fresh:
                return pair
            self._noise[key] = pair
        return self._noise[key]

    def sample(self, enc: Encoding, start: int = 0, stop: Optional[int] = None) -> List[Tensor]:
        """Per band, draws ``start:stop`` of the ``samples`` (S, B, H, W, Z) from each pixel's mixture (Gumbel-max
        component choice, then mean + unit Gaussian), from the common noise."""
        out = []
        for level, (mus, logw) in enumerate(enc):
            gumbel, eps = self.noise(level, mus.shape[1], mus.shape[2], mus)
            gumbel, eps = gumbel[start:stop], eps[start:stop]
            k = (logw.unsqueeze(0) + gumbel.unsqueeze(1)).argmax(-1)  # (S, B, H, W)
            idx = k[..., None, None].expand(*k.shape, 1, mus.shape[-1])
            chosen = torch.gather(mus.unsqueeze(0).expand(k.shape[0], *mus.shape), -2, idx).squeeze(-2)
            out.append(chosen + eps.unsqueeze(1))
        return out

    def from_encodings(self, a: Encoding, b: Encoding) -> Tensor:
        if self.net.nmix == 1:  # the authors' closed form
            return sum((ma - mb).square().mean(dim=(1, 2, 3, 4)) for (ma, _), (mb, _) in zip(a, b)) / len(a)
        # Draws in chunks of about 2**24 (sample, pixel, component, latent) entries per band, bounding memory.
        per_draw = a[0][0].shape[0] * max(m.shape[1] * m.shape[2] for m, _ in a) * self.net.nmix * self.net.nz
        step = max(1, (1 << 24) // per_draw)
        total = 0
        for s in range(0, self.samples, step):
            sa, sb = self.sample(a, s, s + step), self.sample(b, s, s + step)
            kl_ab = mixture_log_prob(a, sa) - mixture_log_prob(b, sa)
            kl_ba = mixture_log_prob(b, sb) - mixture_log_prob(a, sb)
            total = total + (kl_ab + kl_ba).sum(0)
        return total / self.samples

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return self.from_encodings(self.encode(ref), self.encode(x))

    def _prepare(self, ref: Tensor) -> Encoding:
        return self.encode(ref)

    def _select(self, ctx: Encoding, idx: Tensor) -> Encoding:
        return [(m[idx], w[idx]) for m, w in ctx]

    def _distance_prepared(self, ctx: Encoding, x: Tensor) -> Tensor:
        return self.from_encodings(ctx, self.encode(x))


@METRICS.register(
    "pim_1",
    what="PIM-1 (Bhardwaj et al. 2020): steerable pyramid, a CNN per band and a Gaussian encoder per pixel, trained "
         "without labels (multi-scale InfoNCE on video frames); distance = mean squared difference of the encoder "
         "means (the authors' exact symmetrised KL for one component)",
    distance="as is",
    weights="the authors' pim-1.zip (google-research/perceptual-quality, Apache-2.0; TensorFlow checkpoint read "
            "without TensorFlow, sha512 checked)",
    calibrated="the authors' TensorFlow code (2.15) on generated checkpoints of the same architecture at reduced "
               "width: distances, densities and KL within 1e-5 relative (tests/data/pim)")
def pim_1(pretrained: bool = True, weights_dir: Optional[str] = None) -> Distance:
    """The released weights could not be fetched here (no published values to compare)."""
    return PIMDistance("pim-1", pretrained, weights_dir)


@METRICS.register(
    "pim_5",
    what="PIM-5 (Bhardwaj et al. 2020): as PIM-1 with a five-component Gaussian mixture per pixel; distance = "
         "symmetrised KL estimated with 8 common-random-number draws (deterministic; the authors draw one fresh "
         "sample per call, ``fresh=True, samples=1``)",
    distance="as is",
    weights="the authors' pim-5.zip (google-research/perceptual-quality, Apache-2.0; TensorFlow checkpoint read "
            "without TensorFlow, sha512 checked)",
    calibrated="the authors' TensorFlow code (2.15) on generated checkpoints: mixture densities within 1e-5 "
               "relative, the KL estimate within 4 standard errors of theirs at 4000 samples (tests/data/pim)")
def pim_5(pretrained: bool = True, weights_dir: Optional[str] = None, samples: int = 8, seed: int = 0,
          fresh: bool = False) -> Distance:
    """The released weights could not be fetched here."""
    return PIMDistance("pim-5", pretrained, weights_dir, samples=samples, seed=seed, fresh=fresh)
