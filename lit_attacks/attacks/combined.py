"""Spatial attack then PGD(k) (official ``create_transferable_stAdvPGD_samples.py``), and PGD trajectories."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from lit_attacks.attacks.cost import attack_cost
from torch import Tensor

from lit_attacks.attacks.base import AttackModule, AttackResult, spatial_attack
from lit_attacks.attacks.pgd import pgd
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.metrics import BoundDistance


def pgd_snapshots(bound: BoundDistance, prey: Tensor, s_other: Tensor, ks: Sequence[int],
                  start: Optional[Tensor] = None, eps: float = 0.03, alpha: float = 0.001,
                  nonfinite: Optional[Tensor] = None, centre: Optional[Tensor] = None) -> Dict[int, Tensor]:
    """Images after exactly k fixed PGD steps for each k in ``ks``, from ``start`` (default prey), projected
    around ``centre`` (default prey). One trajectory: PGD(20) passes through PGD(5), PGD(10) and PGD(15)."""
    out, x, done = {}, prey if start is None else start, 0
    ball = prey if centre is None else centre
    for k in sorted(set(ks)):
        if k > done:
            x, _, _ = pgd(bound, ball, s_other, eps, alpha, k - done, early_stop=False, start=x, nonfinite=nonfinite)
            done = k
        out[k] = x
    return out


def run_spatial(kind: str, bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str],
                params: Dict[str, Any]):
    """(adv, iterations, queries, status) of the registered spatial attack ``kind`` (e.g. "stadv", "flowadv")."""
    return spatial_attack(kind).spatial(bound, prey, s_other, keys, **params)


@ATTACKS.register("spatial_pgd")
class SpatialPGD(AttackModule):
    """A spatial attack, then exactly ``k`` PGD steps from its output, projected around the original prey.

    Args:
        metric: victim metric name.
        spatial: a registered spatial attack ("stadv" or "flowadv").
        k: PGD steps (5, 10, 15, 20 in the paper).
        eps, alpha: PGD budget and step (0.03, 0.001).
        spatial_params: keyword arguments of the spatial attack (e.g. ``{"width": 16}`` for FlowAdv).
    """

    name = "spatial_pgd"
    example_params = {"spatial": "stadv", "k": 3, "spatial_params": {"iterations": 3}}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """The spatial attack's, then ``k`` gradients and a re-scoring."""
        return attack_cost(p["spatial"], p["spatial_params"] or {}) + 3 * int(p["k"]) + 1

    @classmethod
    def max_cost(cls, p: Dict[str, Any]) -> float:
        return attack_cost(p["spatial"], p["spatial_params"] or {}, most=True) + 3 * int(p["k"]) + 1

    def __init__(self, metric: str = "lpips_alex", spatial: str = "stadv", k: int = 20, eps: float = 0.03,
                 alpha: float = 0.001, spatial_params: Optional[Dict[str, Any]] = None, **options: Any) -> None:
        try:
            spatial_attack(spatial)
        except ValueError as e:
            raise ValueError(f"spatial_pgd: spatial: {e}") from None
        if k < 1 or eps <= 0 or alpha <= 0:
            raise ValueError(f"spatial_pgd: need k >= 1, eps > 0, alpha > 0; got k={k}, eps={eps}, alpha={alpha}")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.name = f"{spatial}_pgd{k}"
        self.spatial_kind, self.k, self.eps, self.alpha = spatial, k, eps, alpha
        self.spatial_params = dict(spatial_params or {})

    @property
    def linf_budget(self) -> float:
        return self.eps

    def attack(self, bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str]) -> AttackResult:
        adv0, iters, queries, status = run_spatial(self.spatial_kind, bound, prey, s_other, keys, self.spatial_params)
        nonfinite = torch.zeros(prey.shape[0], dtype=torch.bool, device=prey.device)
        adv = pgd_snapshots(bound, prey, s_other, [self.k], adv0, self.eps, self.alpha, nonfinite)[self.k]
        eps = torch.full_like(s_other, self.eps, dtype=torch.float64)
        return AttackResult(adv, iters + self.k, queries + self.k, eps, status=status, nonfinite=nonfinite)
