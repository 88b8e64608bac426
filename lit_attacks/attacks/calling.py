"""Calling an attack on tensors, and checking a batch before any work.

``create_attack("pgd", "lpips_alex")(ref, p0, p1)`` attacks B triplets given as (B, 3, H, W) tensors in [-1, 1]
(the judge is optional, keys are generated); ``predict_step(batch)`` takes the DataModules' dicts. Either way the
inputs are checked first, in one line naming what is missing or misshapen, so no attack runs on bad input; a batch
entirely in [0, 1] (the likeliest newcomer mistake) gets a warning, once per attack.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

IMAGES = ("ref", "p0", "p1")
LAYOUT = ("a batch holds ref, p0, p1: (B, 3, H, W) float tensors in [-1, 1]; judge: (B,) fraction of people who "
          "preferred p1; key and category: B strings. Or call the attack on tensors: attack(ref, p0, p1)")


def metric_name(metric: Any) -> str:
    """A metric name as it is; a module or callable registered in this process as ``user:<name>`` (its ``name``
    when it is a built metric, else its class or function name)."""
    if isinstance(metric, str):
        return metric
    from lit_attacks.metrics.user import register_object

    name = getattr(metric, "name", None)
    name = name if isinstance(name, str) and name not in ("", "distance") else None
    return register_object(metric, name.replace(":", "_") if name else None)


def as_batch(ref: Tensor, p0: Tensor, p1: Tensor, judge: Optional[Any] = None, keys: Optional[Sequence[str]] = None,
             categories: Optional[Sequence[str]] = None, where: str = "attack") -> Dict[str, Any]:
    """The batch dict of B triplets given as tensors; no judge: nan (``agreed`` is then False); keys
    ``input/000000``...; category ``input``."""
    for name, t in zip(IMAGES, (ref, p0, p1)):
        if not torch.is_tensor(t):
            raise TypeError(f"{where}: {name} must be a (B, 3, H, W) tensor in [-1, 1], got a {type(t).__name__}")
    B = ref.shape[0] if ref.dim() == 4 else 1
    if judge is None:
        judge = torch.full((B,), float("nan"), device=ref.device)
    judge = torch.as_tensor(judge, dtype=torch.float32, device=ref.device).reshape(-1)
    keys = list(keys) if keys is not None else [f"input/{i:06d}" for i in range(B)]
    categories = list(categories) if categories is not None else ["input"] * B
    return {"ref": ref, "p0": p0, "p1": p1, "judge": judge, "key": keys, "category": categories}


def check_batch(batch: Any, where: str) -> Optional[str]:
    """Raise ``ValueError`` (one line) if ``batch`` lacks a field or a field has the wrong type or shape; returns a
    warning text when every image is in [0, 1] (else None)."""
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: the batch is a {type(batch).__name__}, not a dict; {LAYOUT}")
    missing = [k for k in IMAGES + ("judge", "key", "category") if k not in batch]
    if missing:
        raise ValueError(f"{where}: the batch is missing {', '.join(map(repr, missing))}; {LAYOUT}")
    shapes = {}
    for name in IMAGES:
        t = batch[name]
        if not torch.is_tensor(t) or t.dim() != 4 or t.shape[1] != 3 or not t.is_floating_point():
            what = f"shape {tuple(t.shape)} {t.dtype}" if torch.is_tensor(t) else f"a {type(t).__name__}"
            raise ValueError(f"{where}: {name} must be a (B, 3, H, W) float tensor in [-1, 1], got {what}")
        shapes[name] = tuple(t.shape)
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{where}: ref, p0 and p1 must have the same shape, got {shapes}")
    B = shapes["ref"][0]
    judge = batch["judge"]
    if not torch.is_tensor(judge) or judge.shape != (B,):
        what = f"shape {tuple(judge.shape)}" if torch.is_tensor(judge) else f"a {type(judge).__name__}"
        raise ValueError(f"{where}: judge must be a ({B},) tensor (fraction preferring p1), got {what}")
    for name in ("key", "category"):
        v = batch[name]
        if isinstance(v, str) or not isinstance(v, Sequence) or len(v) != B or not all(isinstance(s, str) for s in v):
            raise ValueError(f"{where}: {name} must be {B} strings (one per sample), got {str(v)[:80]}")
    if all(float(batch[n].min()) >= 0 for n in IMAGES):
        return (f"{where}: every image of this batch is in [0, 1]; attacks and metrics expect [-1, 1] images "
                "(x * 2 - 1). Attacking them as they are.")
    return None


def warn_once(owner: Any, text: Optional[str]) -> None:
    if text and not getattr(owner, "_warned_range", False):
        owner._warned_range = True
        warnings.warn(text, UserWarning, stacklevel=3)
