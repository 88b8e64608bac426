"""Gradient check of a metric at the clean point: the sanity check a reviewer runs before believing a robust number.

A gradient attack that sees a zero or non-finite gradient cannot move, so the metric looks robust there without
being robust (gradient masking, as AutoAttack's authors warn for classifiers). For each sample this computes the
gradient of ``d(ref, prey)`` with respect to the prey (the distorted image the metric finds closer, the image the
attacks perturb) and reports its l_2 norm and a status: ``ok``, ``zero`` (every entry exactly 0) or ``nonfinite``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from torch import Tensor

from lit_attacks.attacks.output import ScoreOutput, as_list
from lit_attacks.metrics.base import naming_samples
from lit_attacks.registry import TASKS
from lit_attacks.scoring import MetricTask


@dataclass(kw_only=True)
class GradientOutput(ScoreOutput):
    """``grad_l2``: (B,) l_2 norm of the prey's gradient (nan where not finite); ``grad_status``: ok, zero or
    nonfinite."""

    grad_l2: Tensor
    grad_status: List[str]

    def columns(self) -> Dict[str, List[Any]]:
        cols = super().columns()
        cols.update({"grad_l2": as_list(self.grad_l2), "grad_status": list(self.grad_status)})
        return cols


def gradient_status(grad: Tensor) -> List[str]:
    """Per sample of a (B, ...) gradient: "nonfinite", "zero" or "ok"."""
    flat = grad.flatten(1)
    finite = torch.isfinite(flat).all(1)
    zero = (flat == 0).all(1)
    return ["nonfinite" if not f else "zero" if z else "ok" for f, z in zip(finite.tolist(), zero.tolist())]


@TASKS.register("gradient_check", what="the prey's gradient norm and status at the clean point (GradientOutput rows)")
class GradientCheck(MetricTask):
    """Per sample: ``s0``, ``s1`` and the gradient of ``d(ref, prey)`` with respect to the prey.

    Args:
        metric: registry name of the metric.
        pretrained, weights_dir, batch_invariant: as for :class:`lit_attacks.scoring.ScoreModule`.
    """

    def predict_step(self, batch: Dict, batch_idx: int = 0) -> GradientOutput:
        ref, p0, p1 = self.images(batch)
        with naming_samples(batch["key"]):  # a metric that misbehaves: one line naming the sample
            with torch.no_grad():
                s0, s1 = self.metric(ref, p0), self.metric(ref, p1)
            prey = torch.where((s0 <= s1).view(-1, 1, 1, 1), p0, p1).detach()
            if not self.metric.differentiable:  # a distance computed outside torch: nothing to differentiate
                grad, status = torch.full_like(prey, float("nan")), ["no gradient"] * len(prey)
            else:
                with torch.enable_grad():  # Lightning's predict loop runs under no_grad
                    prey.requires_grad_(True)
                    grad, = torch.autograd.grad(self.metric(ref, prey, check=False).sum(), prey, allow_unused=True)
                grad = torch.zeros_like(prey) if grad is None else grad  # no path from the prey to the distance
                status = gradient_status(grad)
        norm = grad.flatten(1).double().norm(dim=1)
        norm = torch.where(torch.isfinite(norm), norm, torch.full_like(norm, float("nan")))
        return GradientOutput(key=list(batch["key"]), category=list(batch["category"]), judge=batch["judge"], s0=s0,
                              s1=s1, grad_l2=norm, grad_status=status)
