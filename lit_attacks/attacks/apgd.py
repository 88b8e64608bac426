"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"), l_inf and l_2, on the 2AFC rank flip, batched with per-sample early stop.

The algorithm follows AutoAttack's ``APGDAttack.attack_single_run`` (``fra31/auto-attack``, read, not
copied): step size ``2 eps``; a momentum step ``x + 0.75 (z - x) + 0.25 (x - x_prev)`` (plain step at
the first iteration) with ``z`` the projected gradient step (sign for l_inf, l_2-normalised gradient for
l_2); checkpoints after ``0.22 n`` iterations, then shorter by ``0.03 n`` down to ``0.06 n``; at a
checkpoint a sample's step size halves and it restarts from its best point when the loss increased in at
most ``rho = 0.75`` of the steps since the last checkpoint, or when the step size was not reduced at the
last checkpoint and the best loss has not improved since. Restarts start from a random point of the ball
and attack only the samples not yet flipped. Differences: a sample stops as soon as it flips (AutoAttack
runs the whole batch for ``n`` iterations and keeps its last flipping point); the loss history of the first
checkpoint includes the starting point's loss (AutoAttack reads an unset row there, 0: ``first_check="autoattack"``
reproduces it); random starts come
from per-sample counter-based streams (:mod:`lit_attacks.attacks.streams`), so a sample's attack does not
depend on its batch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from lit_attacks.attacks.active import ActiveSet
from lit_attacks.attacks.base import AttackModule, AttackResult
from lit_attacks.attacks.objectives import LOSSES, attack_loss
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.streams import Streams
from lit_attacks.attacks.threat import (NORMS, Threat, eps_column, l2_column, normalize, per_sample, project,
                                        random_start)


Loss = Union[str, Callable[[Tensor, Tensor, Tensor], Tensor]]


def loss_and_grad(threat: Threat, x: Tensor, loss: Loss, eot: int = 1, idx: Optional[Tensor] = None
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss (B,), s_adv (B,), s_other (B,), grad of the loss wrt ``x``), each averaged over ``eot`` calls (EOT:
    on a stochastic metric each call is a fresh random draw; 1 for a deterministic one).

    ``loss``: a name of :data:`LOSSES`, or a callable ``loss(s_adv, s_other, idx) -> (B,)`` with ``idx`` the
    positions of the rows in the batch the attack started with (rows leave as they flip), e.g. a training loss
    that needs each sample's human judgement."""
    x = x.detach().requires_grad_(True)
    if idx is None:
        idx = torch.arange(len(x), device=x.device)
    total_l = total_a = total_o = total_g = 0
    for _ in range(eot):
        s_adv, s_other = threat(x)
        l = attack_loss(loss, s_adv, s_other) if isinstance(loss, str) else loss(s_adv, s_other, idx)
        g, = torch.autograd.grad(l.sum(), x)  # samples are independent: each row gets its own gradient
        total_l, total_a = total_l + l.detach(), total_a + s_adv.detach()
        total_o, total_g = total_o + s_other.detach(), total_g + g
    return total_l / eot, total_a / eot, total_o / eot, total_g / eot


def checkpoints(steps: int) -> List[int]:
    """The iterations (0-based, after which the check runs) of APGD's step-size checkpoints for ``steps``."""
    k, size_decr, k_min = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, i = [], k - 1
    while i < steps:
        out.append(i)
        k = max(k - size_decr, k_min)
        i += k
    return out


def apgd_run(threat: Threat, x0: Tensor, eps: Union[float, Tensor], norm: str = "linf", steps: int = 100,
             loss: Loss = "margin", rho: float = 0.75, eot: int = 1, nonfinite: Optional[Tensor] = None,
             stop_at_flip: bool = True, first_check: str = "start") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One APGD run from ``x0``; a sample stops at its first flip (``s_adv > s_other``). ``eps`` is one budget or
    (B,) budgets, one per sample. ``loss``: see :func:`loss_and_grad`. ``first_check``: what the first step's loss
    is compared with at the first step-size checkpoint (:data:`FIRST_CHECKS`).

    With ``stop_at_flip=False`` every sample runs all ``steps`` and the point of highest loss is returned
    (adversarial training maximises its loss; no sample counts as flipped).

    Returns:
        adv (B, C, H, W): the first flipping point, else the point of highest loss; flipped (B,) bool;
        iterations (B,): gradient steps taken; queries (B,): metric calls (``eot`` per evaluation).
    """
    B, dev = len(threat), x0.device
    centre, parts = threat.centre, threat.parts
    eps = per_sample(eps, B, x0)
    out = x0.detach().clone()
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    iters = torch.full((B,), steps, dtype=torch.long, device=dev)
    queries = torch.full((B,), eot, dtype=torch.long, device=dev)
    lval, s_a, s_o, grad = loss_and_grad(threat, x0, loss, eot)
    grad = _finite(grad, nonfinite, torch.arange(B, device=dev))
    hit = (s_a > s_o) & stop_at_flip
    done |= hit
    iters[hit] = 0
    run = ActiveSet((~hit).nonzero().flatten())  # the samples still running, and their state
    x = x0[run.idx].detach()
    run.t, run.c, run.e = threat.select(run.idx), centre[run.idx], eps[run.idx]
    run.x, run.x_old, run.grad = x, x.clone(), grad[run.idx]
    run.x_best, run.g_best, run.l_best = x.clone(), run.grad.clone(), lval[run.idx].clone()
    start = lval[run.idx] if first_check == "start" else torch.zeros_like(lval[run.idx])  # AutoAttack: an unset row
    run.history = [start]  # losses since the last checkpoint, the starting point's (or 0) first
    run.l_best_check, run.reduced_check = run.l_best.clone(), torch.ones_like(run.l_best, dtype=torch.bool)
    run.step = 2 * run.e
    checks = set(checkpoints(steps))
    shape = (-1,) + (1,) * (x0.ndim - 1)
    for i in range(steps):
        if not len(run):
            break
        a = 0.75 if i > 0 else 1.0
        direction = run.grad.sign() if norm == "linf" else normalize(run.grad, "l2", parts)
        z = project(run.x + run.step.view(shape) * direction, run.c, run.e, norm, parts)
        x_new = project(run.x + a * (z - run.x) + (1 - a) * (run.x - run.x_old), run.c, run.e, norm, parts)
        run.x_old, run.x = run.x, x_new
        lval, s_a, s_o, grad = loss_and_grad(run.t, run.x, loss, eot, run.idx)
        run.grad = _finite(grad, nonfinite, run.idx)
        queries[run.idx] += eot
        run.history.append(lval)
        better = lval > run.l_best
        run.x_best = torch.where(better.view(shape), run.x, run.x_best)
        run.g_best = torch.where(better.view(shape), run.grad, run.g_best)
        run.l_best = torch.where(better, lval, run.l_best)
        hit = (s_a > s_o) & stop_at_flip
        if hit.any():  # flipped samples keep the point that flipped and leave
            x_hit = run.x[hit]
            gone = run.leave(hit)
            out[gone], done[gone], iters[gone] = x_hit, True, i + 1
        if i in checks:  # AutoAttack's step-size checkpoint
            h = torch.stack(run.history)  # (k + 1, A): losses since the last checkpoint
            oscillates = (h[1:] > h[:-1]).sum(0) <= (len(h) - 1) * rho
            stalled = ~run.reduced_check & (run.l_best_check >= run.l_best)
            reduce = oscillates | stalled
            run.reduced_check, run.l_best_check = reduce, run.l_best.clone()
            run.step = torch.where(reduce, run.step / 2, run.step)
            run.x = torch.where(reduce.view(shape), run.x_best, run.x)
            run.grad = torch.where(reduce.view(shape), run.g_best, run.grad)
            run.history = [h[-1]]
    if len(run):
        out[run.idx] = run.x_best
    return out, done, iters, queries


FIRST_CHECKS = ("start", "autoattack")  # the starting point's loss; AutoAttack's (and R-CLIP's) unset row, 0


def _finite(grad: Tensor, nonfinite: Optional[Tensor], idx: Tensor) -> Tensor:
    """``grad`` with non-finite entries zeroed; marks those samples (``idx`` into the batch) in ``nonfinite``."""
    if nonfinite is not None:
        nonfinite[idx] |= ~torch.isfinite(grad).flatten(1).all(1)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def apgd(threat: Threat, keys: Sequence[str], eps: Union[float, Tensor], norm: str = "linf", steps: int = 100,
         restarts: int = 1, loss: str = "margin", rho: float = 0.75, seed: int = 0, random_init: bool = True,
         eot: int = 1, nonfinite: Optional[Tensor] = None, first_check: str = "start"
         ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """APGD with restarts: each restart attacks only the samples not flipped yet, from a random point of the
    ball drawn from the sample's own stream (``seed``, its key, the restart); with ``random_init=False`` the
    first run starts at the clean point.

    Returns:
        adv (B, C, H, W), flipped (B,), iterations (B,): gradient steps over all runs, queries (B,).
    """
    B, dev = len(threat), threat.centre.device
    eps = per_sample(eps, B, threat.centre)
    adv = threat.centre.detach().clone()
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    queries = torch.zeros(B, dtype=torch.long, device=dev)
    for r in range(restarts):
        todo = (~done).nonzero().flatten()
        if not len(todo):
            break
        t = threat.select(todo)
        if random_init or r > 0:
            streams = Streams.for_samples(seed, [keys[i] for i in todo.tolist()], r, dev)
            x0 = random_start(t.centre, eps[todo], norm, t.parts, streams)
        else:
            x0 = t.centre
        sub_nf = None if nonfinite is None else torch.zeros(len(todo), dtype=torch.bool, device=dev)
        x, hit, it, q = apgd_run(t, x0, eps[todo], norm, steps, loss, rho, eot, sub_nf, first_check=first_check)
        if sub_nf is not None:
            nonfinite[todo] |= sub_nf
        adv[todo], done[todo] = x, hit
        iters[todo] += it
        queries[todo] += q
    return adv, done, iters, queries


@ATTACKS.register("apgd")
class APGD(AttackModule):
    """APGD (AutoAttack's l_inf / l_2 attack) on the 2AFC rank flip.

    Args:
        metric: victim metric name.
        eps: budget on [-1, 1] images (twice the [0, 1] value: l_inf 8/255 on [0, 1] is 16/255 here; l_2 scales
            the same way), per perturbed image.
        norm: "linf" or "l2".
        steps: iterations per run (AutoAttack: 100).
        restarts: runs; each later run starts at a random point and attacks only unflipped samples.
        loss: "margin" (``s_adv - s_other``), "ce" (robust-CLIP's loss) or "rank" (the paper's); see
            :func:`lit_attacks.attacks.objectives.attack_loss`.
        rho: oscillation threshold of the step-size checkpoints (0.75).
        random_init: start the first run at a random point of the ball (AutoAttack) instead of the clean point.
        target: the image perturbed: "prey" (the paper), "ref" (robust CLIP metrics) or "both" distorted images
            (R-LPIPS' ``x_0_x_1``, each in its own ball).
        eot: gradient samples averaged per step (Expectation over Transformation) on a stochastic metric.
        eot_eval: draws averaged to decide prey and flips on a stochastic metric.
        seed: combined with each sample's key into per-sample random starts.
        first_check: at the first step-size checkpoint, the first step's loss is compared with the starting point's
            ("start", ours) or, as AutoAttack's and R-CLIP's APGD read an unset row of their loss history, with 0
            ("autoattack"; with a positive loss such as "ce" that step always counts as an increase).
        pretrained, weights_dir, keep_images, batch_invariant, uint8: see :class:`AttackModule`.
    """

    name = "apgd"
    targets = ("prey", "ref", "both")
    example_params = {"steps": 5, "eps": 0.03}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Scoring and re-scoring (4), then ``steps + 1`` gradients per restart and EOT draw."""
        return 4 + 3 * (int(p["steps"]) + 1) * int(p["restarts"]) * max(1, int(p["eot"]))

    def __init__(self, metric: str = "lpips_alex", eps: float = 16 / 255, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, loss: str = "margin", rho: float = 0.75, random_init: bool = True,
                 target: str = "prey", eot: int = 1, eot_eval: int = 32, seed: int = 0, first_check: str = "start",
                 **options: Any) -> None:
        check_lp(self.name, eps, norm, loss)
        if first_check not in FIRST_CHECKS:
            raise ValueError(f"{self.name}: first_check must be one of {', '.join(FIRST_CHECKS)}, got {first_check!r}")
        if steps < 1 or restarts < 1 or eot < 1 or eot_eval < 1:
            raise ValueError(f"{self.name}: steps, restarts, eot and eot_eval must be >= 1; got steps={steps}, "
                             f"restarts={restarts}, eot={eot}, eot_eval={eot_eval}")
        if not 0 < rho <= 1:
            raise ValueError(f"{self.name}: rho must be in (0, 1], got {rho}")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.set_target(target)
        self.eps, self.norm, self.steps, self.restarts, self.loss, self.rho = eps, norm, steps, restarts, loss, rho
        self.random_init, self.eot, self.eot_eval, self.seed = random_init, eot, eot_eval, seed
        self.first_check = first_check

    @property
    def linf_budget(self) -> Optional[float]:
        return self.eps if self.norm == "linf" else None

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        return self.attack_at(threat, keys, self.eps)

    def attack_at(self, threat: Threat, keys: Sequence[str], eps: Union[float, Tensor]) -> AttackResult:
        """The attack with budget ``eps`` (a number or (B,) per sample), e.g. for a minimum-epsilon search."""
        nonfinite = torch.zeros(len(threat), dtype=torch.bool, device=threat.centre.device)
        eps_col = eps_column(eps, len(threat), threat.centre.device)
        eps = per_sample(eps, len(threat), threat.centre)
        adv, _, iters, queries = apgd(threat, keys, eps, self.norm, self.steps, self.restarts, self.loss, self.rho,
                                      self.seed, self.random_init, self.eot, nonfinite, self.first_check)
        return AttackResult(adv, iters, queries, eps_col, nonfinite=nonfinite, extra={"l2": l2_column(threat, adv)})


def check_lp(attack: str, eps: float, norm: str, loss: Optional[str] = None) -> None:
    """One-line errors for the arguments every l_p attack shares."""
    if eps <= 0:
        raise ValueError(f"{attack}: eps must be > 0, got {eps}")
    if norm not in NORMS:
        raise ValueError(f"{attack}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if loss is not None and loss not in LOSSES:
        raise ValueError(f"{attack}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
