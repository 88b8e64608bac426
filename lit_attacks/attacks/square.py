"""Square attack (Andriushchenko et al. 2020), l_inf and l_2: a black-box random search on the 2AFC rank flip.

It follows AutoAttack's ``SquareAttack`` (``fra31/auto-attack``, read, not copied): l_inf starts from
vertical stripes of +-eps and proposes, at each query, a square window of side ``sqrt(p h w)`` set to +-2 eps per
channel (then projected); l_2 starts from a grid of ``eta`` patterns and moves the perturbation mass of one
window into another. ``p`` follows AutoAttack's schedule (``p_init`` halved at 10, 50, 200, 500, 1000, 2000,
4000, 6000, 8000 of 10,000, rescaled to the query budget). A proposal is kept when it raises the loss or
flips the rank. Differences: every sample draws its windows and signs from its own counter-based stream
(:mod:`lit_attacks.attacks.streams`: one tensor call per query for the whole batch; AutoAttack shares one window
position across the batch), so a sample's search does not depend on its batch; the search stops per sample at
its first flip.

Budgets as AutoAttack counts them: ``queries`` counts every metric evaluation, the start point included, so
AutoAttack's ``n_queries = q`` (q proposals after the start point's evaluation) is our ``queries = q + 1``, and ``p``
follows the schedule over the same q proposals. The l_2 proposal is AutoAttack's to the last detail, including its
window budget ``sqrt(max(eps^2 - ||delta||^2, 0) / c + ||delta * mask||^2)`` with both norms over all channels
(its ``lp_norm``); ``tests/test_protocol_sources.py`` checks it against a restatement.

No gradient is ever taken: the metric is only called under ``torch.no_grad()``.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lit_attacks.attacks.apgd import check_lp
from lit_attacks.attacks.base import AttackModule, AttackResult
from lit_attacks.attacks.objectives import attack_loss
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.streams import Streams
from lit_attacks.attacks.threat import Threat, eps_column, l2_column, lp_norm, normalize, project


def p_schedule(i: int, queries: int, p_init: float) -> float:
    """AutoAttack's fraction of pixels changed at query ``i`` of ``queries`` (schedule rescaled to 10,000)."""
    it = int(i / queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


@functools.lru_cache(maxsize=64)
def _eta(s: int) -> Tensor:
    """(s, s) float64 l_2 pattern of the l_2 Square attack: two opposite-signed stacks of nested rectangles,
    unit norm (its transpose is the other orientation)."""
    def rectangles(x: int, y: int) -> Tensor:
        d = torch.zeros(x, y, dtype=torch.float64)
        cx, cy = x // 2, y // 2
        for k in range(max(x // 2 + 1, y // 2 + 1)):
            rows, cols = slice(max(cx - k, 0), min(cx + k + 1, x)), slice(max(cy - k, 0), min(cy + k + 1, y))
            d[rows, cols] += 1.0 / (k + 1) ** 2
        return d / d.pow(2).sum().sqrt()
    d = torch.cat([rectangles(s // 2, s), -rectangles(s - s // 2, s)])
    return d / d.pow(2).sum().sqrt()


def _signs(u: Tensor) -> Tensor:
    """+-1 from uniforms (each sign with probability 1/2)."""
    return torch.where(u > 0.5, 1.0, -1.0).to(torch.float64)


def _window(x: Tensor, rows: Tensor, cols: Tensor, s: int) -> Tuple[Tensor, ...]:
    """Index tensors selecting each sample's (C, s, s) window at (rows[a], cols[a]) of (A, C, H, W)."""
    A, C = x.shape[:2]
    r = rows.view(A, 1) + torch.arange(s, device=x.device)
    c = cols.view(A, 1) + torch.arange(s, device=x.device)
    return (torch.arange(A, device=x.device).view(A, 1, 1, 1), torch.arange(C, device=x.device).view(1, C, 1, 1),
            r.view(A, 1, s, 1), c.view(A, 1, 1, s))


def _positions(u: Tensor, spans: Sequence[int]) -> Tensor:
    """(A, k) integer positions in [0, span) from (A, k) uniforms."""
    return (u * torch.tensor(spans, dtype=u.dtype, device=u.device)).floor().long()


def _patterns(s: int, transpose: Tensor, device: torch.device) -> Tensor:
    """(A, s, s): ``eta`` or its transpose per sample."""
    eta = _eta(s).to(device)
    return torch.where(transpose.view(-1, 1, 1), eta.t(), eta)


def linf_init(centre: Tensor, eps: float, streams: Streams) -> Tensor:
    """Vertical stripes: +-eps per (channel, column), per sample."""
    A, C, H, W = centre.shape
    stripes = _signs(streams.uniform((C, 1, W))).to(centre)
    return (centre + eps * stripes).clamp(-1, 1)


def linf_propose(x_best: Tensor, centre: Tensor, eps: float, p: float, streams: Streams, rows: Tensor) -> Tensor:
    """Each sample's window of side ``round(sqrt(p H W))`` set to +-2 eps per channel, projected (the samples
    ``rows`` of ``streams`` draw: two positions and C signs each, in one call)."""
    A, C, H, W = centre.shape
    s = min(max(int(round(math.sqrt(p * H * W))), 1), H - 1, W - 1)
    u = streams.uniform((2 + C,), rows)
    pos = _positions(u[:, :2], (H - s, W - s))
    signs = _signs(u[:, 2:]).to(centre).view(A, C, 1, 1)
    new = x_best.clone()
    idx = _window(new, pos[:, 0], pos[:, 1], s)
    new[idx] = new[idx] + 2 * eps * signs
    return project(new, centre, eps, "linf")


def l2_init(centre: Tensor, eps: float, streams: Streams) -> Tensor:
    """A grid of (H // 5)-sized ``eta`` patterns with random orientation and signs per (sample, channel, tile),
    scaled to norm eps."""
    A, C, H, W = centre.shape
    s = max(H // 5, 1)
    start = (H - s * 5) // 2
    tiles = [(vh, vw) for vh in range(start, start + s * (H // s), s) for vw in range(start, start + s * (W // s), s)
             if vh + s <= H and vw + s <= W]
    u = streams.uniform((len(tiles), 1 + C))  # per tile: orientation, then C signs
    delta = torch.zeros(A, C, H, W, dtype=torch.float64, device=centre.device)
    for j, (vh, vw) in enumerate(tiles):
        eta = _patterns(s, u[:, j, 0] > 0.5, centre.device)
        delta[:, :, vh:vh + s, vw:vw + s] += eta.unsqueeze(1) * _signs(u[:, j, 1:]).view(A, C, 1, 1)
    return (centre + normalize(delta.to(centre), "l2") * eps).clamp(-1, 1)


def l2_propose(x_best: Tensor, centre: Tensor, eps: float, p: float, streams: Streams, rows: Tensor) -> Tensor:
    """Move the perturbation of a second random window into a first one, refilled with a random ``eta`` pattern
    (the samples ``rows`` of ``streams`` draw: four positions, an orientation and C signs each, in one call)."""
    A, C, H, W = centre.shape
    s = min(max(int(round(math.sqrt(p * H * W))), 3), H - 1, W - 1)
    s += 1 if s % 2 == 0 and s + 1 < min(H, W) else 0
    u = streams.uniform((5 + C,), rows)
    pos = _positions(u[:, :4], (H - s, W - s, H - s, W - s))
    eta = _patterns(s, u[:, 4] > 0.5, centre.device).to(centre).view(A, 1, s, s)
    signs = _signs(u[:, 5:]).to(centre).view(A, C, 1, 1)
    delta = x_best - centre
    w1, w2 = _window(delta, pos[:, 0], pos[:, 1], s), _window(delta, pos[:, 2], pos[:, 3], s)
    norm_w1 = delta[w1].pow(2).sum((-2, -1), keepdim=True).sqrt()  # (A, C, 1, 1)
    norm_img = lp_norm(delta, "l2").view(A, 1, 1, 1)
    mask = torch.zeros_like(delta)
    mask[w1], mask[w2] = 1.0, 1.0
    norm_windows = lp_norm(delta * mask, "l2").view(A, 1, 1, 1)
    new = eta * signs + delta[w1] / (1e-12 + norm_w1)
    budget = (torch.clamp(eps ** 2 - norm_img ** 2, min=0) / C + norm_windows ** 2).sqrt()
    new = new / (1e-12 + new.pow(2).sum((-2, -1), keepdim=True).sqrt()) * budget
    delta[w2] = 0.0
    delta[w1] = new
    return (centre + normalize(delta, "l2") * eps).clamp(-1, 1)


@torch.no_grad()
def square(threat: Threat, keys: Sequence[str], eps: float, norm: str = "linf", queries: int = 1000,
           p_init: float = 0.8, loss: str = "margin", seed: int = 0, restart: int = 0
           ) -> Tuple[Tensor, Tensor, Tensor]:
    """Square attack with a budget of ``queries`` metric evaluations per sample (the start point included).

    Returns:
        adv (B, C, H, W): the first flipping point, else the best; flipped (B,); queries (B,): evaluations spent
        (the index of the flipping query, or ``queries``).
    """
    centre = threat.centre
    B = len(threat)
    streams = Streams.for_samples(seed, keys, restart, centre.device)
    init, propose = (linf_init, linf_propose) if norm == "linf" else (l2_init, l2_propose)
    x_best = init(centre, eps, streams)
    s_adv, s_oth = threat(x_best)
    best = attack_loss(loss, s_adv, s_oth)
    done = s_adv > s_oth
    used = torch.ones(B, dtype=torch.long, device=centre.device)
    for i in range(1, queries):
        act = (~done).nonzero().flatten()
        if not len(act):
            break
        t = threat.select(act)
        x_new = propose(x_best[act], centre[act], eps, p_schedule(i - 1, queries - 1, p_init), streams, act)
        s_adv, s_oth = t(x_new)
        lval = attack_loss(loss, s_adv, s_oth)
        hit = s_adv > s_oth
        keep = (lval > best[act]) | hit
        x_best[act[keep]] = x_new[keep]
        best[act[keep]] = lval[keep]
        done[act[hit]] = True
        used[act] += 1
    return x_best, done, used


@ATTACKS.register("square")
class Square(AttackModule):
    """Square attack (black box, l_inf or l_2) on the 2AFC rank flip; ``queries`` counts every metric evaluation.

    Args:
        metric: victim metric name.
        eps: budget on [-1, 1] images (twice the [0, 1] value).
        norm: "linf" or "l2".
        queries: metric evaluations per sample and restart (AutoAttack: 5000).
        p_init: initial fraction of pixels changed per proposal (0.8).
        loss: "margin", "ce" or "rank" (see :func:`lit_attacks.attacks.objectives.attack_loss`).
        restarts: independent searches for the samples not flipped yet.
        target: "prey" or "ref".
        seed: combined with each sample's key (and the restart) into its random stream.
        pretrained, weights_dir, keep_images, batch_invariant, uint8: see :class:`AttackModule`.
    """

    name = "square"
    black_box = True
    targets = ("prey", "ref")
    example_params = {"queries": 20, "eps": 0.03}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Scoring, the initial stripes and re-scoring (4), then one forward pass per query and restart."""
        return 4 + int(p["queries"]) * int(p["restarts"])

    def __init__(self, metric: str = "lpips_alex", eps: float = 16 / 255, norm: str = "linf", queries: int = 1000,
                 p_init: float = 0.8, loss: str = "margin", restarts: int = 1, target: str = "prey", seed: int = 0,
                 **options: Any) -> None:
        check_lp(self.name, eps, norm, loss)
        if queries < 1 or restarts < 1:
            raise ValueError(f"{self.name}: queries and restarts must be >= 1, got queries={queries}, "
                             f"restarts={restarts}")
        if not 0 < p_init <= 1:
            raise ValueError(f"{self.name}: p_init must be in (0, 1], got {p_init}")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.set_target(target)
        self.eps, self.norm, self.queries, self.p_init, self.loss = eps, norm, queries, p_init, loss
        self.restarts, self.seed = restarts, seed

    @property
    def linf_budget(self) -> Optional[float]:
        return self.eps if self.norm == "linf" else None

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        B, dev = len(threat), threat.centre.device
        adv, done = threat.centre.clone(), torch.zeros(B, dtype=torch.bool, device=dev)
        used = torch.zeros(B, dtype=torch.long, device=dev)
        for r in range(self.restarts):
            todo = (~done).nonzero().flatten()
            if not len(todo):
                break
            x, hit, q = square(threat.select(todo), [keys[int(i)] for i in todo], self.eps, self.norm, self.queries,
                               self.p_init, self.loss, self.seed, r)
            adv[todo], done[todo] = x, hit
            used[todo] += q
        return AttackResult(adv, torch.full_like(used, -1), used, eps_column(self.eps, B, dev),
                            extra={"l2": l2_column(threat, adv)})
