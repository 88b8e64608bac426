"""FlowAdv (ICLR text, section 3.1, Algorithm 2): a per-sample CNN predicts the flow that warps the prey.

All per-sample CNNs of a batch are one module: parameters stacked along a leading sample dimension
and run as grouped convolutions (groups = active samples). Gradients come from
``torch.autograd.grad`` of the sum of per-sample losses, so each sample's parameters get only their
own gradient; :class:`BatchAdam` is Adam with per-sample state and step counts, batch-local (no DDP
gradient averaging is involved). Finished samples leave the active set (compaction).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_attacks.attacks.base import AttackResult, SpatialAttack
from lit_attacks.attacks.flow import backward_warp, charbonnier, flow_charbonnier
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.streams import Streams
from lit_attacks.metrics import BoundDistance


def layer_shapes(width: int = 256, depth: int = 5, head: int = 64) -> List[Tuple[int, int, int]]:
    """(in, out, kernel) per layer: ``depth`` 3x3 convs of ``width`` (ReLU), then 1x1 ``width->head->2``."""
    if depth < 1 or width < 1 or head < 1:
        raise ValueError(f"flowadv: the flow CNN needs depth >= 1, width >= 1, head >= 1; got depth={depth}, "
                         f"width={width}, head={head}")
    convs = [(3 if i == 0 else width, width, 3) for i in range(depth)]
    return convs + [(width, head, 1), (head, 2, 1)]


def flops_per_sample(h: int, w: int, width: int = 256, depth: int = 5, head: int = 64, iterations: int = 1) -> float:
    """Multiply-adds x 2 of one forward pass of the flow CNN, times 3 for forward + backward, per iteration."""
    macs = sum(cin * cout * k * k * h * w for cin, cout, k in layer_shapes(width, depth, head))
    return 2 * macs * 3 * iterations


def init_params(shapes, keys: Sequence[str], seed: int, restart: int, device, dtype, out_scale: float) -> List[Tensor]:
    """Stacked (B, ...) weights and biases; each sample's from its own stream (Kaiming-uniform like nn.Conv2d),
    drawn for the whole batch at once on ``device``."""
    streams = Streams.for_samples(seed, keys, restart, device)
    params: List[Tensor] = []
    for li, (cin, cout, k) in enumerate(shapes):
        bound = 1 / math.sqrt(cin * k * k)
        scale = out_scale if li == len(shapes) - 1 else 1.0
        for shape in ((cout, cin, k, k), (cout,)):
            params.append(((streams.uniform(shape) * 2 - 1) * (bound * scale)).to(dtype))
    return params


def flow_cnn(params: Sequence[Tensor], x: Tensor) -> Tensor:
    """Per-sample CNNs on ``x`` (A, 3, H, W) with stacked params (A, ...): grouped convolutions. -> (A, 2, H, W)."""
    A, _, H, W = x.shape
    h = x.reshape(1, -1, H, W)
    n = len(params) // 2
    for li in range(n):
        w, b = params[2 * li], params[2 * li + 1]
        k = w.shape[-1]
        h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=k // 2, groups=A)
        if li < n - 1:
            h = F.relu(h)
    return h.view(A, 2, H, W)


class BatchAdam:
    """Adam over stacked per-sample parameters; state and step count per sample, updates on a row subset."""

    def __init__(self, params: Sequence[Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros(self.params[0].shape[0], device=self.params[0].device)

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], idx: Tensor) -> None:
        b1, b2 = self.betas
        self.t[idx] += 1
        t = self.t[idx]
        for p, m, v, g in zip(self.params, self.m, self.v, grads):
            shape = (-1,) + (1,) * (p.ndim - 1)
            m[idx] = b1 * m[idx] + (1 - b1) * g
            v[idx] = b2 * v[idx] + (1 - b2) * g * g
            mhat = m[idx] / (1 - b1 ** t).view(shape)
            vhat = v[idx] / (1 - b2 ** t).view(shape)
            p[idx] -= self.lr * mhat / (vhat.sqrt() + self.eps)


PERTURBATIONS = ("flow", "paper")


def perturbation_loss(prey: Tensor, adv: Tensor, flow: Tensor, l1_weight: float, smooth_weight: float,
                      form: str = "flow") -> Tensor:
    """(B,) the perturbation loss of Algorithm 2.

    ``"paper"`` (ICLR Eq. 7-9): ``alpha * ||prey - adv||_1 + beta * rho(prey - adv)``: the l_1 *norm* (sum over
    values) of the image difference on [-1, 1] and the Charbonnier penalty ``rho(x) = sqrt(x^2 + 1e-6)`` of the
    *image difference*, averaged over values (the paper does not say how rho is reduced; summed, beta * rho would
    be at least 0.5 * 12,288 * 1e-3 at 64 px, and no image could ever meet the 0.05 bound).
    ``"flow"`` (ours, the default): ``alpha * mean |prey - adv| + beta * (Charbonnier of the flow's finite
    differences)``: a smoothness prior on the flow, as in stAdv, with a per-value L1 term.
    """
    diff = (prey - adv).flatten(1)
    if form == "paper":
        return l1_weight * diff.abs().sum(1) + smooth_weight * charbonnier(diff, 1e-6).mean(1)
    return l1_weight * diff.abs().mean(1) + smooth_weight * flow_charbonnier(flow)


def _step_forward(params, local, gidx, prey, bound, s_other, l1_weight, smooth_weight, form="flow"):
    """One forward pass of the active samples' CNNs: (param slices, loss, s_adv, perturbation loss, adv, flow)."""
    ps = [p[local].detach().requires_grad_(True) for p in params]
    flow = flow_cnn(ps, prey[gidx])
    adv = backward_warp(prey[gidx], flow)
    s = bound.select(gidx)(adv)
    so = s_other[gidx]
    pert = perturbation_loss(prey[gidx], adv, flow, l1_weight, smooth_weight, form)
    loss = (so / (so + s)) ** 2 + pert  # L_rank + L_perturb, per sample
    return ps, loss, s.detach(), pert.detach(), adv, flow


def flowadv(bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str], width: int = 256, depth: int = 5,
            head: int = 64, iterations: int = 50, restarts: int = 2, lr: float = 1e-3, l1_weight: float = 1e-4,
            smooth_weight: float = 0.5, pert_bound: float = 0.05, out_scale: float = 0.01, seed: int = 0,
            perturbation: str = "flow", success_out: Optional[Tensor] = None):
    """Algorithm 2, batched. Returns (adv, iterations, queries, status) per sample.

    Per sample and restart: a fresh CNN (seeded by ``seed``, the sample key and the restart), up to
    ``iterations`` Adam steps on ``L_rank + L_perturb`` with ``L_rank = (s_other / (s_other + s_adv))^2`` and
    ``L_perturb`` of :func:`perturbation_loss` (``perturbation``: "flow", ours, or "paper", Eq. 7-9). Success: the
    rank flips and ``L_perturb < pert_bound``; the successful adv is kept and the sample stops (an unsuccessful one
    keeps its last iterate). A sample with a non-finite flow or loss is marked failed and stops. ``success_out``, a
    (B,) bool tensor, receives which samples succeeded.
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"flowadv: perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")
    shapes = layer_shapes(width, depth, head)
    B = prey.shape[0]
    dev, dt = prey.device, prey.dtype
    adv_out = prey.detach().clone()
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    queries = torch.zeros(B, dtype=torch.long, device=dev)
    success = torch.zeros(B, dtype=torch.bool, device=dev)
    status = ["ok"] * B
    failed = torch.zeros(B, dtype=torch.bool, device=dev)
    for restart in range(restarts):
        todo = (~success & ~failed).nonzero().flatten()
        if todo.numel() == 0:
            break
        params = init_params(shapes, [keys[int(i)] for i in todo], seed, restart, dev, dt, out_scale)
        opt = BatchAdam(params, lr)
        local = torch.arange(todo.numel(), device=dev)  # rows of params still optimised
        for it in range(iterations):
            if local.numel() == 0:
                break
            gidx = todo[local]
            ps, loss, s, pert, adv, flow = _step_forward(params, local, gidx, prey, bound, s_other, l1_weight,
                                                         smooth_weight, perturbation)
            so = s_other[gidx]
            queries[gidx] += 1
            iters[gidx] += 1
            finite = torch.isfinite(loss) & torch.isfinite(flow).flatten(1).all(1)
            ok = (s > so) & (pert < pert_bound) & finite
            adv_out[gidx] = torch.where(finite.view(-1, 1, 1, 1), adv.detach(), adv_out[gidx])
            success[gidx[ok]] = True
            for i in gidx[~finite].tolist():
                failed[i] = True
                status[i] = f"non-finite flow or loss at restart {restart}, iteration {it}"
                adv_out[i] = prey[i]
            keep = ~ok & finite
            if not keep.any():
                local = local[keep]
                continue
            if not finite.all():  # NaN in the graph poisons every gradient (0 * NaN): redo without those samples
                ps, loss, *_ = _step_forward(params, local[finite], gidx[finite], prey, bound, s_other, l1_weight,
                                             smooth_weight, perturbation)
                keep = keep[finite]
                local = local[finite]
            grads = torch.autograd.grad(loss.sum(), ps)
            opt.step([g[keep] for g in grads], local[keep])
            local = local[keep]
    if success_out is not None:
        success_out.copy_(success)
    return adv_out, iters, queries, status


@ATTACKS.register("flowadv")
class FlowAdv(SpatialAttack):
    """FlowAdv: a freshly initialised flow CNN per sample, optimised with Adam (ICLR text, Algorithm 2).

    Args:
        metric: victim metric name.
        width, depth: the 3x3 conv layers (256 channels x 5 in the paper; tests use narrow CNNs).
        head: channels of the 1x1 layer before the 2-channel flow output.
        iterations, restarts: Adam steps per restart (50) and restarts (2).
        lr: Adam learning rate.
        l1_weight, smooth_weight: alpha (1e-4) and beta (0.5) of the paper's loss.
        pert_bound: success needs the perturbation loss below this (0.05).
        out_scale: initial scale of the output layer (a small initial flow).
        seed: combined with each sample's key into per-sample initialisations.
        perturbation: the perturbation loss: "flow" (ours: Charbonnier of the flow's finite differences, mean L1)
            or "paper" (ICLR Eq. 7-9: l_1 norm and Charbonnier of the image difference); see
            :func:`perturbation_loss`.
        counting: "final" (ours): a flip is the re-scored final image ranked the other way, whatever its
            perturbation loss; "paper" (Algorithm 2): only a sample the algorithm accepted (flipped with
            ``L_perturb < pert_bound``) counts.
    """

    name = "flowadv"
    example_params = {"width": 8, "head": 4, "iterations": 5, "restarts": 1}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Scoring and re-scoring (4), then one gradient per iteration and restart."""
        return 4 + 3 * int(p["iterations"]) * int(p["restarts"])

    def __init__(self, metric: str = "lpips_alex", width: int = 256, depth: int = 5, head: int = 64,
                 iterations: int = 50, restarts: int = 2, lr: float = 1e-3, l1_weight: float = 1e-4,
                 smooth_weight: float = 0.5, pert_bound: float = 0.05, out_scale: float = 0.01, seed: int = 0,
                 perturbation: str = "flow", counting: str = "final", **options: Any) -> None:
        layer_shapes(width, depth, head)  # validates
        if iterations < 1 or restarts < 1:
            raise ValueError(f"flowadv: iterations and restarts must be >= 1, got {iterations}, {restarts}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"flowadv: perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")
        if counting not in ("final", "paper"):
            raise ValueError(f"flowadv: counting must be 'final' or 'paper', got {counting!r}")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.counting = counting
        self.kw = dict(width=width, depth=depth, head=head, iterations=iterations, restarts=restarts, lr=lr,
                       l1_weight=l1_weight, smooth_weight=smooth_weight, pert_bound=pert_bound, out_scale=out_scale,
                       seed=seed, perturbation=perturbation)

    @staticmethod
    def spatial(bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str], **params):
        return flowadv(bound, prey, s_other, keys, **params)

    def attack(self, bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str]) -> AttackResult:
        success = torch.zeros(len(keys), dtype=torch.bool, device=prey.device)
        adv, iters, queries, status = flowadv(bound, prey, s_other, keys, **self.kw, success_out=success)
        return AttackResult(adv, iters, queries, torch.full((len(keys),), float("nan"), dtype=torch.float64),
                            status=status, verdict=success if self.counting == "paper" else None)
