"""Typed per-batch outputs of the predict steps, and the one place that turns them into per-sample rows.

A predict step returns one of these for its batch of B samples: tensors of shape (B,) plus the keys,
never a list of dicts. Callbacks read the tensors directly (flip statistics, example grids, shards);
:meth:`ScoreOutput.rows` makes the CSV rows, in the column order of :meth:`ScoreOutput.column_names`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

# Thresholds of |adv - prey| (on [-1, 1]) whose pixel fractions the official CSV reports.
PIXEL_THRESHOLDS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
FRACTION_COLUMNS = [f"frac>{t}" for t in PIXEL_THRESHOLDS]


def as_list(v: Any) -> List[Any]:
    """A (B,) tensor or a sequence as a list of B plain Python values."""
    return v.detach().cpu().tolist() if torch.is_tensor(v) else list(v)


class Rows:
    """A batch output made of per-sample columns; subclasses define :meth:`columns`."""

    key: List[str]

    def __len__(self) -> int:
        return len(self.key)

    def columns(self) -> Dict[str, List[Any]]:  # pragma: no cover - abstract
        """Column name -> B plain Python values, in CSV order."""
        raise NotImplementedError

    def column_names(self) -> List[str]:
        return list(self.columns())

    def rows(self) -> List[Dict[str, Any]]:
        """One dict per sample (what a CSV row and a shard's record hold); images are never in rows."""
        cols = self.columns()
        return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


@dataclass
class ScoreOutput(Rows):
    """Distances of a batch: ``s0 = d(ref, p0)``, ``s1 = d(ref, p1)``, smaller = closer.

    Attributes:
        key, category: B strings.
        judge: (B,) fraction of people who preferred p1.
        s0, s1: (B,) distances.
    """

    key: List[str]
    category: List[str]
    judge: Tensor
    s0: Tensor
    s1: Tensor

    def columns(self) -> Dict[str, List[Any]]:
        return {"key": list(self.key), "category": list(self.category), "judge": as_list(self.judge),
                "s0": as_list(self.s0), "s1": as_list(self.s1)}


@dataclass(kw_only=True)
class AttackOutput(ScoreOutput):
    """What :class:`lit_attacks.attacks.base.AttackModule` returns for a batch.

    Attributes:
        prey: (B,) 1 if the prey (the attacked image: the one the metric finds closer; the farther one for a
            reverse attack) is p1, else 0.
        agreed: (B,) the metric ranked like the humans (the prey is the image people preferred); never for a tie.
        tied: (B,) s0 == s1: the metric ranks neither image closer (the prey is then p0).
        s_other, s_adv, s_adv_uint8: (B,) distances of the other image, the adversarial prey (fresh forward
            pass) and the adversarial prey rounded to 8 bits (what a saved PNG holds).
        flipped, flipped_uint8: (B,) rank flips of the float and the 8-bit adversarial image.
        iterations, queries: (B,) steps / generations taken (-1: not applicable) and metric evaluations.
        eps: (B,) epsilon found or the l_inf budget; nan where not applicable.
        rmse, psnr, linf: (B,) perturbation size (RMSE and PSNR on the 0-255 scale, l_inf on [-1, 1]).
        psnr_uint8: (B,) PSNR of the saved 8-bit adversarial image against the prey's 8-bit values.
        rmse_official: (B,) RMSE as the official script computes it, on uint8-truncated images.
        fractions: (B, len(PIXEL_THRESHOLDS)) fraction of values with ``|adv - prey| > t``.
        status: B strings, "ok" or why the sample failed.
        extra: per-sample columns of one attack (column -> B values), after the common ones.
        adv: (B, 3, H, W) the adversarial prey in [-1, 1].
        images: optional uint8 (B, H, W, 3) ``ref``, ``other``, ``prey``, ``adv`` for shards and image grids.
    """

    prey: Tensor
    agreed: Tensor
    tied: Tensor
    s_other: Tensor
    s_adv: Tensor
    flipped: Tensor
    s_adv_uint8: Tensor
    flipped_uint8: Tensor
    iterations: Tensor
    queries: Tensor
    eps: Tensor
    rmse: Tensor
    rmse_official: Tensor
    psnr: Tensor
    psnr_uint8: Tensor
    linf: Tensor
    fractions: Tensor
    adv: Tensor
    status: List[str] = field(default_factory=list)
    extra: Dict[str, List[Any]] = field(default_factory=dict)
    images: Optional[Dict[str, Tensor]] = None

    def columns(self) -> Dict[str, List[Any]]:
        cols = super().columns()
        for name in ("prey", "agreed", "tied", "s_other", "s_adv", "flipped", "s_adv_uint8", "flipped_uint8",
                     "iterations", "queries", "eps", "rmse", "rmse_official", "psnr", "psnr_uint8", "linf"):
            cols[name] = as_list(getattr(self, name))
        fr = self.fractions.detach().cpu()
        cols.update({name: fr[:, j].tolist() for j, name in enumerate(FRACTION_COLUMNS)})
        cols["status"] = list(self.status)
        cols.update({k: list(v) for k, v in self.extra.items()})
        return cols

