"""FGSM with the smallest flipping epsilon on a grid (paper Algorithm 3), scanned vectorised."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from lit_attacks.attacks.base import AttackModule, AttackResult
from lit_attacks.attacks.chunks import forward_chunk
from lit_attacks.attacks.objectives import rank_loss
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.threat import Threat
from lit_attacks.limits import check_count, check_memory
from lit_attacks.metrics import BoundDistance


MAX_GRID = 1_000_000  # epsilons per scan (the paper's grid has 500; each one is a metric evaluation per sample)


def eps_grid(step: float = 1e-4, max_eps: float = 0.05) -> Tensor:
    """float64 grid ``step, 2 step, ..., max_eps`` computed as ``k * step`` (no accumulated round-off); at most
    :data:`MAX_GRID` points (checked before anything is allocated)."""
    n = max_eps / step
    check_count(n, MAX_GRID, f"fgsm: the epsilon grid of step={step:g} up to max_eps={max_eps:g}",
                f"choose step >= {max_eps / MAX_GRID:.3g} (the paper's grid: step 1e-4 to 0.05, 500 epsilons)")
    return torch.arange(1, int(round(n)) + 1, dtype=torch.float64) * step


def as_threat(bound: Union[BoundDistance, Threat], prey: Optional[Tensor], s_other: Optional[Tensor]) -> Threat:
    """``bound`` if it is a :class:`Threat`, else the paper's threat on ``prey``."""
    return bound if isinstance(bound, Threat) else Threat.on_prey(bound, prey, s_other)


def fgsm_direction(bound: Union[BoundDistance, Threat], prey: Optional[Tensor] = None, s_other: Optional[Tensor] = None
                   ) -> Tuple[Tensor, Tensor]:
    """(B, C, H, W) sign of the rank-loss gradient at the clean point (0 where the gradient is not finite), and
    (B,) True for samples whose gradient had non-finite entries. ``bound`` is a bound metric (with ``prey`` and
    ``s_other``) or a :class:`Threat`."""
    t = as_threat(bound, prey, s_other)
    x = t.centre.detach().clone().requires_grad_(True)
    s_adv, s_oth = t(x)
    grad, = torch.autograd.grad(rank_loss(s_oth, s_adv).sum(), x)
    nonfinite = ~torch.isfinite(grad).flatten(1).all(1)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0).sign(), nonfinite


def fgsm_scan(bound: Union[BoundDistance, Threat], prey: Optional[Tensor], s_other: Optional[Tensor], direction: Tensor,
              grid: Tensor, eps_chunk: int = 8, max_images: int = 0) -> Tuple[Tensor, Tensor]:
    """Index of the first grid epsilon whose ``clamp(prey + eps * direction)`` flips, or -1; and queries.

    The grid is scanned in chunks of ``eps_chunk`` epsilons; the chunk's candidates of all active
    samples are scored together (``active * eps_chunk`` images, in metric calls of at most ``max_images``; 0: the
    metric's fastest call size, measured once per metric, device and image size), and a sample leaves once its
    first flip is found. The answer is the sequential scan's; ``queries`` (candidates evaluated) depends only on
    the sample and ``eps_chunk``, never on its batch or the call size: ``eps_chunk`` is part of the statistic.
    """
    t = as_threat(bound, prey, s_other)
    prey = t.centre
    B, n = prey.shape[0], grid.numel()
    per = 1 if t.target == "prey" else 2  # images per candidate in a metric call
    max_images = max_images or forward_chunk(t.metric, prey[:, :3], B * min(eps_chunk, n) * per)
    first = torch.full((B,), -1, dtype=torch.long, device=prey.device)
    queries = torch.zeros(B, dtype=torch.long, device=prey.device)
    active, start = torch.arange(B, device=prey.device), 0
    grid = grid.to(prey.device, prey.dtype)
    check_memory(B * min(eps_chunk, n) * prey[0].numel() * prey.element_size(),
                 f"fgsm: a scan step ({B} samples x eps_chunk={min(eps_chunk, n)} candidate images)",
                 "lower eps_chunk or --batch-size", prey.device)
    while active.numel() and start < n:
        k = min(n - start, eps_chunk)
        eps = grid[start:start + k].view(1, k, 1, 1, 1)
        cand = (prey[active, None] + eps * direction[active, None]).clamp(-1, 1)  # (A, k, C, H, W)
        group = max(1, max_images // (k * per))  # samples per metric call
        with torch.no_grad():
            s, so = map(torch.cat, zip(*(t.select(active[i:i + group]).repeat_interleave(k)(
                cand[i:i + group].flatten(0, 1)) for i in range(0, len(active), group))))
        hit = s.view(-1, k) > so.view(-1, k)
        found = hit.any(1)
        queries[active] += k
        first[active[found]] = start + hit.float().argmax(1)[found]
        active, start = active[~found], start + k
    return first, queries


@ATTACKS.register("fgsm")
class FGSM(AttackModule):
    """One signed gradient at the prey; the smallest epsilon on ``step, 2 step, ..., max_eps`` that flips.

    Args:
        metric: victim metric name.
        step: grid step (1e-4) and first epsilon.
        max_eps: last epsilon tried (0.05).
        eps_chunk: epsilons per sample scored in one scan step (the queries count whole steps).
        max_images: most images per metric call (memory); 0 (the default): the metric's fastest call size,
            measured once per metric, device and image size (:mod:`lit_attacks.attacks.chunks`).
        target: the image perturbed: "prey" (the paper), "ref" or "both" distorted images; see
            :mod:`lit_attacks.attacks.threat`.
    """

    name = "fgsm"
    targets = ("prey", "ref", "both")
    example_params = {"step": 0.002, "max_eps": 0.03}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Scoring and re-scoring (4), one gradient (3), then the scan's grid (a flip ends it earlier)."""
        return 7 + math.ceil(float(p["max_eps"]) / float(p["step"]) - 1e-9)

    def __init__(self, metric: str = "lpips_alex", step: float = 1e-4, max_eps: float = 0.05,
                 eps_chunk: int = 8, target: str = "prey", max_images: int = 0, **options: Any) -> None:
        if step <= 0 or max_eps <= 0:
            raise ValueError(f"fgsm: step and max_eps must be > 0, got step={step}, max_eps={max_eps}")
        if eps_chunk < 1 or max_images < 0:
            raise ValueError(f"fgsm: eps_chunk must be >= 1 and max_images >= 0 (0: measured), got eps_chunk="
                             f"{eps_chunk}, max_images={max_images}")
        if max_eps < step:
            raise ValueError(f"fgsm: max_eps ({max_eps}) is below the first epsilon ({step})")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.set_target(target)
        self.grid, self.eps_chunk, self.max_images = eps_grid(step, max_eps), eps_chunk, max_images

    @property
    def linf_budget(self) -> float:
        return float(self.grid[-1])

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        prey = threat.centre
        direction, nonfinite = fgsm_direction(threat)
        first, queries = fgsm_scan(threat, None, None, direction, self.grid, self.eps_chunk, self.max_images)
        grid = self.grid.to(prey.device)
        eps = torch.where(first >= 0, grid[first.clamp(min=0)], torch.full_like(grid[:1], math.nan).expand_as(first))
        use = torch.where(first >= 0, grid[first.clamp(min=0)], grid[-1]).to(prey.dtype)  # unflipped: max_eps image
        adv = (prey + use.view(-1, 1, 1, 1) * direction).clamp(-1, 1)
        return AttackResult(adv, torch.full_like(first, -1), queries + 1, eps,  # eps: float64 grid values
                            nonfinite=nonfinite)
