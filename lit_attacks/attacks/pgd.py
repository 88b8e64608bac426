"""PGD (l_inf, no random start) as in the official ``whitebox_attack_pgd.py``, batched with compaction."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from lit_attacks.attacks.active import ActiveSet
from lit_attacks.attacks.base import AttackModule, AttackResult
from lit_attacks.attacks.objectives import flipped, project_linf, rank_loss
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.threat import Threat, eps_column, per_sample
from lit_attacks.metrics import BoundDistance


def pgd(bound: BoundDistance, prey: Tensor, s_other: Tensor, eps: float = 0.03, alpha: float = 0.001,
        steps: int = 30, early_stop: bool = True, start: Optional[Tensor] = None,
        nonfinite: Optional[Tensor] = None, reverse: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Ascend ``rank_loss`` with signed gradients, projected to the l_inf ball of ``eps`` around ``prey`` and [-1, 1].

    With ``early_stop`` each sample's current image is scored before every step and the sample stops
    as soon as it flips (``s_adv > s_other``); stopped samples leave the active batch, so later
    steps cost less. Without it, exactly ``steps`` steps are taken (the paper's PGD(k)).

    Args:
        bound: the metric bound to the references, ``x -> (B,)`` distances.
        prey: (B, 3, H, W) in [-1, 1], the centre of the eps ball.
        s_other: (B,) distance of the other image.
        start: optional starting images (e.g. a spatial attack's output); default ``prey``.
        nonfinite: optional (B,) bool, set True for samples whose gradient was non-finite at some step (a
            metric with an undefined gradient, e.g. FSIMc on flat regions); such entries count as zero (no
            step there), which the caller reports.
        reverse: the reverse attack (paper appendix F): ``prey`` is the farther image, the loss
            ``MSE(s_other / (s_other + s_adv), 0)`` pulls it closer, and a flip is ``s_adv < s_other``.

    Returns:
        adv (B, 3, H, W); iterations (B,): steps applied before the flip was seen (``steps`` if never
        seen); queries (B,): forward passes spent.
    """
    return pgd_threat(Threat.on_prey(bound, prey, s_other), eps, alpha, steps, early_stop, start, nonfinite, reverse)


def pgd_threat(threat: Threat, eps: Union[float, Tensor] = 0.03, alpha: float = 0.001, steps: int = 30,
               early_stop: bool = True, start: Optional[Tensor] = None, nonfinite: Optional[Tensor] = None,
               reverse: bool = False
               ) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`pgd` on any :class:`Threat` (the prey, the reference or both distorted images), around ``threat.centre``;
    ``eps`` is one budget or (B,) budgets, one per sample."""
    centre = threat.centre
    B = centre.shape[0]
    eps = per_sample(eps, B, centre)
    adv = (centre if start is None else start).detach().clone()
    iters = torch.full((B,), steps, dtype=torch.long, device=centre.device)
    queries = torch.zeros(B, dtype=torch.long, device=centre.device)
    # the running samples' images and gradient flags live in the active set; the batch tensors are written when
    # samples leave and at the end, so a step where nobody leaves gathers and scatters nothing
    run = ActiveSet(torch.arange(B, device=centre.device), t=threat, eps=eps.view(-1, *[1] * (centre.ndim - 1)),
                    x=adv.clone(), nf=torch.zeros(B, dtype=torch.bool, device=centre.device))

    def leave(gone: Tensor, i: int, images: Tensor) -> None:
        """Samples ``gone`` (a mask over the running ones) stop after step ``i`` with ``images``."""
        idx = run.idx[gone]
        adv[idx], queries[idx], iters[idx] = images[gone], i + 1, i
        if nonfinite is not None:
            nonfinite[idx] |= run.nf[gone]
        run.leave(gone)

    for i in range(steps):
        x = run.x.requires_grad_(True)
        s, so = run.t(x)  # (A,), (A,)
        keep = ~flipped(s.detach(), so.detach(), reverse) if early_stop else torch.ones_like(s, dtype=torch.bool)
        every = bool(keep.all())
        if every:  # samples are independent: each row gets its own gradient
            loss = rank_loss(so, s, 0.0 if reverse else 1.0).sum()
        else:
            loss = rank_loss(so[keep], s[keep], 0.0 if reverse else 1.0).sum()
        if not keep.any():
            leave(~keep, i, x.detach())
            break
        grad, = torch.autograd.grad(loss, x)
        if nonfinite is not None:
            run.nf = run.nf | ~torch.isfinite(grad).flatten(1).all(1)
        run.x, run.grad = x.detach(), torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if not every:
            leave(~keep, i, run.x)
        run.x = project_linf(run.x + alpha * run.grad.sign(), run.t.centre, run.eps)
    else:
        adv[run.idx], queries[run.idx] = run.x, steps
        if nonfinite is not None:
            nonfinite[run.idx] |= run.nf
    return adv, iters, queries


@ATTACKS.register("pgd")
class PGD(AttackModule):
    """l_inf PGD on the rank loss (official defaults eps 0.03, alpha 0.001, 30 steps, early stop).

    Args:
        metric: victim metric name.
        eps: l_inf budget on [-1, 1].
        alpha: step size.
        steps: maximum number of steps (40 in the ICLR text's setting).
        fixed_steps: run exactly ``steps`` steps without early stop (PGD(k) for transfer).
        counting: "final" (default): the final image is re-scored and counts when it flips, and
            ``iterations`` is the steps applied; "official" (``whitebox_attack_pgd.py``): a flip counts only
            when it is seen before a step, so the image after the last step is never checked, and an
            unflipped sample reports ``steps - 1`` iterations. Both are recorded per sample
            (``flipped_official``, ``iterations_official``); ``counting`` picks which ``flipped`` and
            ``iterations`` hold.
        target: the image perturbed: "prey" (the paper), "ref" or "both" distorted images (each in its own
            ball); see :mod:`lit_attacks.attacks.threat`.
        pretrained, weights_dir, keep_images, batch_invariant, uint8: see :class:`AttackModule`.
    """

    name = "pgd"
    targets = ("prey", "ref", "both")
    example_params = {"steps": 5}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Scoring and re-scoring (4), then one gradient per step."""
        return 4 + 3 * int(p["steps"])

    def __init__(self, metric: str = "lpips_alex", eps: float = 0.03, alpha: float = 0.001, steps: int = 30,
                 fixed_steps: bool = False, counting: str = "final", target: str = "prey", **options: Any) -> None:
        if eps <= 0:
            raise ValueError(f"pgd: eps must be > 0, got {eps}")
        if alpha <= 0:
            raise ValueError(f"pgd: alpha must be > 0, got {alpha}")
        if steps < 1:
            raise ValueError(f"pgd: steps must be >= 1, got {steps}")
        if counting not in ("final", "official"):
            raise ValueError(f"{self.name}: counting must be 'final' or 'official', got {counting!r}")
        if counting == "official" and fixed_steps:
            raise ValueError(f"{self.name}: counting='official' counts flips seen before a step (early stop); "
                             "it does not apply to fixed_steps")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.set_target(target)
        self.eps, self.alpha, self.steps, self.fixed_steps, self.counting = eps, alpha, steps, fixed_steps, counting

    @property
    def linf_budget(self) -> float:
        return self.eps

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        return self.attack_at(threat, keys, self.eps)

    def attack_at(self, threat: Threat, keys: Sequence[str], eps: Union[float, Tensor]) -> AttackResult:
        """The attack with budget ``eps`` (a number or (B,) per sample), e.g. for a minimum-epsilon search."""
        s_other = threat.s_other_clean
        nonfinite = torch.zeros(len(threat), dtype=torch.bool, device=s_other.device)
        eps_col = eps_column(eps, len(threat), threat.centre.device)
        eps = per_sample(eps, len(threat), threat.centre)
        adv, iters, queries = pgd_threat(threat, eps, self.alpha, self.steps, not self.fixed_steps,
                                         nonfinite=nonfinite, reverse=self.reverse)
        seen = iters < self.steps if not self.fixed_steps else torch.zeros_like(nonfinite)  # flip seen before a step
        official_iters = torch.where(seen, iters, torch.full_like(iters, self.steps - 1))
        official = self.counting == "official"
        return AttackResult(adv, official_iters if official else iters, queries, eps_col, nonfinite=nonfinite,
                            verdict=seen if official else None,
                            extra={"flipped_official": seen.tolist(), "iterations_official": official_iters.tolist()})


@ATTACKS.register("pgd_reverse")
class PGDReverse(PGD):
    """The reverse attack (paper appendix F, ``whitebox_toMakeMoreSimilar_attack_pgd.py``): l_inf PGD on the image
    the metric finds *farther*, ascending ``MSE(s_other / (s_other + s_adv), 0)`` until it becomes the closer
    one (``s_adv < s_other``). Official settings: eps 0.1, alpha 0.001, 50 steps. Arguments as :class:`PGD`.
    """

    name = "pgd_reverse"
    targets = ("prey",)
    reverse = True
    example_params = {"steps": 5}

    def __init__(self, metric: str = "lpips_alex", eps: float = 0.1, alpha: float = 0.001, steps: int = 50,
                 fixed_steps: bool = False, counting: str = "final", **options: Any) -> None:
        super().__init__(metric, eps, alpha, steps, fixed_steps, counting, "prey", **options)
