"""Trained LPIPS checkpoints (written by ``train.py``) as registry metrics: ``rlpips:<path to .ckpt>``."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict

import lpips as lpips_pkg

from lit_attacks.metrics.base import Distance
from lit_attacks.metrics.lpips import ARCH, LPIPSDistance
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.weights import load_exactly, read_torch
from lit_attacks.quiet import third_party_warnings_silenced
from lit_attacks.safe_files import InputError

CHECKPOINT_KIND = "lit_attacks.trainable_lpips"


class CheckpointError(InputError):
    """A missing, unreadable or foreign checkpoint; the message names the file and the fix."""


class TrainedLPIPSDistance(LPIPSDistance):
    """A frozen :class:`LPIPSDistance` around an already built ``lpips.LPIPS`` (trained heads, any backbone).

    Args:
        model: the network; it is frozen and put in eval mode (pass a copy to keep training the original).
        net: backbone name ("alex", "squeeze", "vgg").
        pretrained: whether the backbone started from ImageNet weights (False: labelled random backbone).
    """

    def __init__(self, model: lpips_pkg.LPIPS, net: str = "alex", pretrained: bool = True) -> None:
        Distance.__init__(self)
        self.net, self.pretrained, self.model = net, pretrained, model

    @property
    def label(self) -> str:
        """``rlpips:<run>/<file>#<hash>`` (``results/train/quick/checkpoints/last.ckpt`` ->
        ``rlpips:quick/last.ckpt#1a2b3c``): short enough for tables and plots, and distinct for distinct
        checkpoints (the hash is of the whole path: ``x/quick/last.ckpt`` and ``y/quick/last.ckpt`` differ);
        the full path is in the run README."""
        prefix, sep, arg = self.name.partition(":")
        short = self.name
        if sep and arg:
            p = Path(arg)
            run = p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name
            short = f"{prefix}:{run}/{p.name}" if run else f"{prefix}:{p.name}"
            short += "#" + hashlib.sha256(self.name.encode()).hexdigest()[:6]
        return short if self.pretrained else f"{short} [random backbone]"


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    """The checkpoint dict of a trainable-metric checkpoint, loaded with ``weights_only=True``."""
    p = Path(path).expanduser()
    hint = "train one with `python train.py fit --config configs/train/rlpips.yaml`"
    if not p.is_file():
        raise CheckpointError(f"rlpips: checkpoint {str(p)!r} not found; {hint}")
    ckpt = read_torch(p, "rlpips:", "checkpoint", CheckpointError, default="no details")
    meta = ckpt.get("lit_attacks") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != CHECKPOINT_KIND or "state_dict" not in ckpt:
        raise CheckpointError(f"rlpips: {str(p)!r} is not a trainable-metric checkpoint of train.py "
                              f"(no '{CHECKPOINT_KIND}' record); {hint}")
    return ckpt


def load_trained_lpips(path: str | Path) -> TrainedLPIPSDistance:
    """Build the metric stored in a ``train.py`` checkpoint (backbone included: no other weights needed)."""
    ckpt = read_checkpoint(path)
    meta = ckpt["lit_attacks"]
    net = meta.get("net")
    if net not in ARCH:
        raise CheckpointError(f"rlpips: {path}: its record names LPIPS net {net!r}; expected one of {sorted(ARCH)}")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"rlpips: {path}: 'state_dict' is a {type(ckpt['state_dict']).__name__}, not a dict")
    with third_party_warnings_silenced():  # torchvision's `pretrained` deprecation, from inside lpips
        model = lpips_pkg.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    prefix = "model."
    sd = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_exactly(model, sd, f"rlpips: {path}: state dict does not match LPIPS-{net}", CheckpointError)
    return TrainedLPIPSDistance(model, net, pretrained=bool(meta.get("pretrained_backbone", True)))


@METRICS.register_prefix("rlpips", what="an LPIPS trained by train.py (clean, or adversarially as R-LPIPS), from its "
                                       "checkpoint", distance="as is",
                         weights="the checkpoint (backbone included; loaded with weights_only=True)")
def rlpips(path: str) -> Distance:
    return load_trained_lpips(path)
