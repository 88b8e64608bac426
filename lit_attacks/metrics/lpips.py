"""LPIPS (Zhang et al. 2018) distances from the ``lpips`` package.

The linear heads v0.1 ship inside the ``lpips`` package and are always loaded (``weights_only``).
The torchvision backbone comes from :mod:`lit_attacks.metrics.weights` (weights folder, hub cache or
download); ``pretrained=False`` keeps lpips' random backbone (tests and timing only).
Inputs in [-1, 1], which is what LPIPS expects; no conversion.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import lpips as lpips_pkg
import torch
from torch import Tensor

from lit_attacks.metrics.base import BoundDistance, Distance
from lit_attacks.metrics.local import LocalConvScorer, conv_chain
from lit_attacks.quiet import third_party_warnings_silenced
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.weights import backbone_features, load_sliced_features, released_weights, used

ARCH = {"alex": "alexnet", "squeeze": "squeezenet1_1", "vgg": "vgg16"}


def lpips_head_file(net: str, version: str = "0.1") -> Path:
    return Path(lpips_pkg.__file__).parent / "weights" / f"v{version}" / f"{net}.pth"


def build_lpips(net: str, pretrained: bool, weights_dir: Optional[str | os.PathLike], metric: str,
                heads: bool = True) -> lpips_pkg.LPIPS:
    """An ``lpips.LPIPS`` with v0.1 heads (when ``heads``) and, when ``pretrained``, the ImageNet backbone."""
    if net not in ARCH:
        raise ValueError(f"{metric}: unknown LPIPS net {net!r}; choose from {sorted(ARCH)}")
    with third_party_warnings_silenced():  # torchvision's `pretrained` deprecation, from inside lpips
        model = lpips_pkg.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    if heads:
        sd = torch.load(lpips_head_file(net), map_location="cpu", weights_only=True)
        model.load_state_dict(sd, strict=False)
        missing = [k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.") and k not in sd]
        if missing:
            raise RuntimeError(f"{metric}: LPIPS head file {lpips_head_file(net)} lacks {missing}")
    if pretrained:
        load_sliced_features(model.net, backbone_features(metric, ARCH[net], weights_dir), metric)
    return model


class LinearHeadsDistance(Distance):
    """A distance of LPIPS' form on ``self.model`` (an ``lpips``-style network with ``lins``): the sum over
    layers of a linear head on squared differences of unit-normalised features, spatially averaged. A
    subclass gives :meth:`features`; a bound reference's features are computed once and reused."""

    def features(self, x: Tensor) -> List[Tensor]:
        raise NotImplementedError

    def from_features(self, f_ref: List[Tensor], f_x: List[Tensor]) -> Tensor:
        """(B,) distance from two feature lists (same arithmetic as ``lpips.LPIPS.forward``)."""
        d = 0
        for lin, a, b in zip(self.model.lins, f_ref, f_x):
            d = d + lin((a - b) ** 2).mean(dim=(2, 3), keepdim=True)
        return d.flatten()

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return self.model(ref, x).flatten()

    def _prepare(self, ref: Tensor) -> List[Tensor]:
        return self.features(ref)

    def _select(self, ctx: List[Tensor], idx: Tensor) -> List[Tensor]:
        return [f[idx] for f in ctx]

    def _distance_prepared(self, ctx: List[Tensor], x: Tensor) -> Tensor:
        return self.from_features(ctx, self.features(x))


class LPIPSDistance(LinearHeadsDistance):
    """LPIPS v0.1 with an AlexNet, SqueezeNet or VGG16 backbone.

    Args:
        net: "alex", "squeeze" or "vgg".
        pretrained: load the ImageNet backbone; False = random backbone (labelled as such).
        weights_dir: folder searched first for the backbone (else ``$LIT_ATTACKS_WEIGHTS_DIR``).
    """

    def __init__(self, net: str = "alex", pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        self.net, self.pretrained = net, pretrained
        self.model = build_lpips(net, pretrained, weights_dir, metric=f"lpips_{net}")

    def features(self, x: Tensor) -> List[Tensor]:
        """Unit-normalised backbone features of ``x`` (B, 3, H, W) in [-1, 1]; cacheable for a fixed ref."""
        outs = self.model.net(self.model.scaling_layer(x))
        return [lpips_pkg.normalize_tensor(o) for o in outs]

    def pixel_scorer(self, bound: BoundDistance, prey: Tensor, local: bool = True, chunk: int = 128):
        """Local evaluation of one-pixel candidates on AlexNet and VGG16 backbones (convolutions, ReLUs and
        max pools only); SqueezeNet's Fire modules fall back to whole images."""
        net = self.model.net
        ops = [conv_chain(list(getattr(net, f"slice{i}"))) for i in range(1, net.N_slices + 1)]
        if local and all(o is not None for o in ops):
            return LocalConvScorer(self.model.scaling_layer, ops, self.model.lins, lpips_pkg.normalize_tensor,
                                   bound.ctx, prey, chunk=4 * chunk)
        return super().pixel_scorer(bound, prey, local, chunk)


@METRICS.register(
    "lpips_alex",
    what="LPIPS v0.1 (heads shipped in the lpips package) on the torchvision AlexNet",
    distance="as is",
    weights="AlexNet ImageNet (torchvision, BSD-3)",
    calibrated="the LPIPS repository's example triplet, 0.722 / 0.138 (published; ours 0.7219 / 0.1376, within "
               "1e-3)")
def lpips_alex(pretrained: bool = True, weights_dir: Optional[str] = None) -> Distance:
    return LPIPSDistance("alex", pretrained, weights_dir)


@METRICS.register(
    "lpips_squeeze",
    what="LPIPS v0.1 on the torchvision SqueezeNet 1.1",
    distance="as is",
    weights="SqueezeNet 1.1 ImageNet (torchvision, BSD-3)",
    calibrated="the lpips package on the example triplet, 0.711048 / 0.147902 (within 1e-4; no published value)")
def lpips_squeeze(pretrained: bool = True, weights_dir: Optional[str] = None) -> Distance:
    return LPIPSDistance("squeeze", pretrained, weights_dir)


@METRICS.register(
    "lpips_vgg",
    what="LPIPS v0.1 on the torchvision VGG16",
    distance="as is",
    weights="VGG16 ImageNet (torchvision, BSD-3)",
    calibrated="the lpips package on the example triplet, 0.5686 / 0.4217 (within 1e-4; no published value)")
def lpips_vgg(pretrained: bool = True, weights_dir: Optional[str] = None) -> Distance:
    return LPIPSDistance("vgg", pretrained, weights_dir)


# R-LPIPS (Ghazanfari et al. 2023): LPIPS-Alex whose linear heads (and, for "tune", the AlexNet) were trained
# adversarially on BAPPS; the authors' checkpoints are whole lpips.LPIPS state dicts in their repository.
RLPIPS_URL = "https://github.com/SaraGhazanfari/R-LPIPS/raw/main/checkpoints/"
RLPIPS_RELEASES = {
    # registry name -> (the authors' file, what was perturbed during adversarial training)
    "rlpips_linf_x0": ("latest_net_linf_x0.pth", "l_inf PGD on x0"),
    "rlpips_linf_x1": ("latest_net_linf_x1.pth", "l_inf PGD on x1"),
    "rlpips_linf_x0_x1": ("latest_net_linf_x0_x1.pth", "l_inf PGD on x0 or x1"),
    "rlpips_linf_ref": ("latest_net_linf_ref.pth", "l_inf PGD on the reference"),
    "rlpips_linf_x0_tune": ("latest_net_linf_x0_tune.pth", "l_inf PGD on x0, AlexNet fine-tuned too"),
    "rlpips_ssa_x0": ("latest_net_SSA_x0.pth", "the semantic similarity attack on x0"),
}


def load_released_rlpips(name: str, pretrained: bool, weights_dir: Optional[str]) -> lpips_pkg.LPIPS:
    """An ``lpips.LPIPS`` (alex) with the released R-LPIPS heads, and its AlexNet from the file when the file holds one
    (the authors save the whole network), else the torchvision ImageNet AlexNet. ``pretrained=False``: random
    backbone with the lpips package's heads (tests and timing only; nothing is read)."""
    if not pretrained:
        return build_lpips("alex", False, weights_dir, metric=name)
    fname, _ = RLPIPS_RELEASES[name]
    sd = released_weights(name, f"rlpips_{fname}", RLPIPS_URL + fname, weights_dir, aliases=(fname,))
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    heads = {k: v for k, v in sd.items() if k.startswith("lin") and not k.startswith("lins.")}
    backbone = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
    model = build_lpips("alex", False, weights_dir, metric=name, heads=False)
    want = [k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")]
    missing = [k for k in want if k not in heads]
    if missing:
        raise RuntimeError(f"{name}: {used(name, fname)} is not an R-LPIPS (LPIPS-Alex) checkpoint: it lacks {missing}")
    model.load_state_dict(heads, strict=False)
    if backbone:
        load_sliced_features(model.net, {k.split(".", 1)[1]: v for k, v in backbone.items()}, name)
    else:
        load_sliced_features(model.net, backbone_features(name, "alexnet", weights_dir), name)
    return model


class ReleasedRLPIPSDistance(LPIPSDistance):
    """An R-LPIPS checkpoint of the authors (see :data:`RLPIPS_RELEASES`); everything else is LPIPS-Alex."""

    def __init__(self, name: str, pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        Distance.__init__(self)
        self.net, self.pretrained = "alex", pretrained
        self.model = load_released_rlpips(name, pretrained, weights_dir)


def _register_rlpips(name: str, fname: str, what: str) -> None:
    def factory(pretrained: bool = True, weights_dir: Optional[str] = None) -> Distance:
        return ReleasedRLPIPSDistance(name, pretrained, weights_dir)

    factory.__name__ = name
    METRICS.register(
        name, what=f"R-LPIPS (Ghazanfari et al. 2023), the authors' checkpoint {fname}: LPIPS-Alex adversarially "
                   f"trained on BAPPS ({what})",
        distance="as is", weights="downloaded from SaraGhazanfari/R-LPIPS (BSD-2; no checksum published), the AlexNet "
                                  "from the checkpoint, else torchvision's",
        calibrated="the file's network is lpips.LPIPS with the file's state dict (tests: generated checkpoints of the "
                   "same layout, within 1e-6); no published value checked")(factory)


for _name, (_fname, _what) in RLPIPS_RELEASES.items():
    _register_rlpips(_name, _fname, _what)
