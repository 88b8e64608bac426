"""Certified 2AFC by randomized smoothing (Cohen, Rosenfeld & Kolter 2019), for any metric.

The base classifier of a 2AFC sample says whether the metric finds the image the humans preferred closer to the
reference than the other one: ``h = 1[d(r, a) < d(r, b)]`` (a: preferred, b: other). Gaussian noise goes on
the images the adversary may perturb:

- ``target="both"`` (used for the prey threat): independent noise on both distorted images, input ``(a, b)``.
  A certificate of radius R covers every perturbation ``(da, db)`` with ``||(da, db)||_2 < R``, so in particular
  perturbing the preferred image (the prey of every sample the metric ranks like the humans) alone by less than
  R. Noise on the preferred image only would not do: noise makes any image farther from the reference (for l2
  by ``sigma^2`` on average), so the smoothed decision would be biased against the noised image.
- ``target="ref"``: noise on the reference, ``h(r) = 1[d(r, a) < d(r, b)]``; both distances see the same noise.

Noised images are clipped to [-1, 1] (part of the base classifier, which leaves the guarantee intact). The
smoothed classifier ``g(x) = argmax_c P(h(x + N(0, sigma^2 I)) = c)`` is certified with Cohen et al.'s CERTIFY:

1. ``n0`` noisy draws choose the class ``c`` that ``g`` most likely predicts;
2. ``n`` fresh draws count ``k`` votes for ``c``; ``p = `` the one-sided Clopper-Pearson lower bound of
   ``k / n`` at level ``1 - alpha`` (``beta.ppf(alpha, k, n - k + 1)``);
3. if ``p > 1/2``, ``g`` predicts ``c`` at ``x`` and at every ``x'`` with ``||x' - x||_2 < sigma * Phi^-1(p)``; else
   it abstains.

Guarantee (Cohen et al., Theorem 1 and Proposition 2): for each sample, with probability at least
``1 - alpha`` over the noise draws, if CERTIFY returns class ``c`` with radius ``R`` then ``g`` returns ``c`` on the
whole l_2 ball of radius ``R`` (on [-1, 1] images; radius on [0, 1] images = R / 2). With ``n`` draws the largest
certifiable radius is ``sigma * Phi^-1(alpha ** (1 / n))`` (all votes for c). A sample is *certified correct at
radius r* when ``c`` is "the preferred image is closer" and ``R >= r``; abstentions count as wrong. Certified
accuracy is over the unanimous samples. Draws come from per-sample counter-based streams (seed, key;
:mod:`lit_attacks.attacks.streams`, drawn on the batch's device), so a sample's certificate does not depend on its
batch, process or device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from scipy.stats import beta, norm
from torch import Tensor

from lit_attacks.attacks.chunks import forward_chunk
from lit_attacks.attacks.output import ScoreOutput, as_list
from lit_attacks.attacks.streams import Streams
from lit_attacks.limits import check_count, check_memory
from lit_attacks.metrics import create_metric, expected_distances
from lit_attacks.registry import TASKS

TARGETS = ("both", "ref")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` Clopper-Pearson lower confidence bound of a binomial proportion with k of n."""
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """Cohen et al.'s l_2 radius ``sigma * Phi^-1(p_lower)`` (negative: abstain)."""
    return float(sigma * norm.ppf(p_lower)) if p_lower > 0 else float("-inf")


def certified_accuracy(radius: Sequence[float], correct: Sequence[bool], r: float) -> float:
    """Fraction of samples certified correct at radius ``r`` (``correct`` and ``radius >= r``)."""
    hits = [c and rad >= r for rad, c in zip(radius, correct)]
    return sum(hits) / len(hits) if hits else float("nan")


@torch.no_grad()
def vote(metric, ref: Tensor, preferred: Tensor, other: Tensor, target: str, sigma: float, draws: int,
         streams: Streams, chunk: int = 64, max_images: int = 0, rows: Optional[Tensor] = None) -> Tensor:
    """(B,) number of ``draws`` Gaussian draws under which the base classifier says "preferred is closer".

    Each sample's draws come from its own stream (the rows ``rows`` of ``streams``, default all), ``chunk`` at a
    time for every sample in one tensor call on the batch's device; the samples are scored in groups small enough
    that one metric call sees at most ``max_images`` images (memory is bounded whatever the batch; 0: the metric's
    fastest call size, measured once per metric, device and image size), and since the draws are per sample the
    grouping does not change the votes."""
    rows = torch.arange(ref.shape[0], device=streams.device) if rows is None else rows
    max_images = max_images or forward_chunk(metric, ref, 2 * ref.shape[0] * min(chunk, draws))
    group = max(1, max_images // (2 * min(chunk, draws)))  # both distances of k draws are scored in one call
    if ref.shape[0] > group:
        return torch.cat([vote(metric, ref[i:i + group], preferred[i:i + group], other[i:i + group], target, sigma,
                               draws, streams, chunk, max_images, rows[i:i + group])
                          for i in range(0, ref.shape[0], group)])
    B = ref.shape[0]
    votes = torch.zeros(B, dtype=torch.long, device=ref.device)
    parts = 2 if target == "both" else 1
    check_memory(4 * B * min(chunk, draws) * parts * ref[0].numel() * ref.element_size(),  # noise, noisy images, calls
                 f"certify: {B} samples x chunk={min(chunk, draws)} noise draws at once", "lower chunk", ref.device)
    bound = metric.bind(ref) if target == "both" else None  # the reference's features, computed once
    done = 0
    while done < draws:
        k = min(chunk, draws - done)
        noise = streams.normal((k, parts) + tuple(ref.shape[1:]), rows, torch.float32)  # float32 in any mode
        noise = noise.to(ref).flatten(0, 1)  # (B * k, parts, 3, H, W)
        rep = lambda t: t.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(B * k, *t.shape[1:])  # noqa: E731
        if target == "both":
            a = (rep(preferred) + sigma * noise[:, 0]).clamp(-1, 1)
            b = (rep(other) + sigma * noise[:, 1]).clamp(-1, 1)
            d = bound.repeat_interleave(k).tile(2)(torch.cat([a, b]))  # one call: one draw of a stochastic metric
            d_pref, d_oth = d[:B * k], d[B * k:]
        else:
            r = (rep(ref) + sigma * noise[:, 0]).clamp(-1, 1)
            d = metric(torch.cat([r, r]), torch.cat([rep(preferred), rep(other)]), check=False)
            d_pref, d_oth = d[:B * k], d[B * k:]
        votes += (d_pref < d_oth).view(B, k).sum(1)
        done += k
    return votes


@dataclass(kw_only=True)
class CertifyOutput(ScoreOutput):
    """Per-sample certificates. ``preferred``: (B,) 1 if people preferred p1; ``votes``: (B,) draws (of ``n``) for the
    chosen class; ``predicted``: 1 if the smoothed classifier says "preferred is closer", 0 "other is closer",
    -1 abstains; ``p_lower`` and ``radius`` (on [-1, 1] images; -inf when abstaining); ``correct``: predicted 1."""

    preferred: Tensor
    votes: Tensor
    predicted: Tensor
    p_lower: List[float]
    radius: List[float]
    correct: Tensor

    def columns(self) -> Dict[str, List[Any]]:
        cols = super().columns()
        cols.update({"preferred": as_list(self.preferred), "votes": as_list(self.votes),
                     "predicted": as_list(self.predicted), "p_lower": list(self.p_lower),
                     "radius": list(self.radius), "correct": as_list(self.correct)})
        return cols


@TASKS.register("certify", what="randomized-smoothing certification of the 2AFC ranking (CertifyOutput rows)")
class CertifyModule(pl.LightningModule):
    """CERTIFY of the smoothed 2AFC decision of one metric, as a predict step (see the module docstring).

    Args:
        metric: registry name of the metric.
        sigma: noise standard deviation on [-1, 1] images (0.5 here is 0.25 on [0, 1]).
        n0: draws that choose the class.
        n: draws that estimate its probability.
        alpha: the certificate fails with probability at most ``alpha`` per sample.
        target: the noised images: "both" distorted images (covers perturbing the prey) or "ref".
        seed: combined with each sample's key into its random stream.
        chunk: noise draws per sample scored in one metric call.
        max_images: most images in one metric call (bounds memory: DISTS on 64 x 64 needs ~2 MB per image); 0 (the
            default): the metric's fastest call size, measured once per metric, device and image size
            (:mod:`lit_attacks.attacks.chunks`; a run that must repeat bit for bit fixes it).
        pretrained, weights_dir: as for attacks.
        batch_invariant: compute in float64.
    """

    def __init__(self, metric: str = "lpips_alex", sigma: float = 0.5, n0: int = 100, n: int = 1000,
                 alpha: float = 0.001, target: str = "both", seed: int = 0, chunk: int = 64, max_images: int = 0,
                 pretrained: bool = True,
                 weights_dir: Optional[str] = None, batch_invariant: bool = False) -> None:
        super().__init__()
        check_certify(sigma, n0, n, alpha, target, chunk, max_images)
        self.save_hyperparameters()
        self.metric = create_metric(metric, pretrained=pretrained, weights_dir=weights_dir,
                                    dtype=torch.float64 if batch_invariant else None)  # shared: never converted

    def predict_step(self, batch: Dict[str, Any], batch_idx: int = 0) -> CertifyOutput:
        h = self.hparams
        ref, p0, p1, judge = batch["ref"], batch["p0"], batch["p1"], batch["judge"]
        if h.batch_invariant:
            ref, p0, p1 = ref.double(), p0.double(), p1.double()
        keys = list(batch["key"])
        with torch.no_grad():
            s0, s1 = expected_distances(self.metric, ref, [p0, p1], 32)
        pref = (judge > 0.5).to(ref.device)
        m = pref.view(-1, 1, 1, 1)
        preferred, other = torch.where(m, p1, p0), torch.where(m, p0, p1)
        g_sel = Streams.for_samples(h.seed, keys, 0, ref.device)
        g_est = Streams.for_samples(h.seed, keys, 1, ref.device)
        sel = vote(self.metric, ref, preferred, other, h.target, h.sigma, h.n0, g_sel, h.chunk, h.max_images)
        est = vote(self.metric, ref, preferred, other, h.target, h.sigma, h.n, g_est, h.chunk, h.max_images)
        choose_pref = sel * 2 > h.n0  # a tie in the selection picks "other": the conservative side
        votes = torch.where(choose_pref, est, h.n - est)
        p_lower = [clopper_pearson_lower(int(k), h.n, h.alpha) for k in votes.tolist()]
        radius = [certified_radius(p, h.sigma) if p > 0.5 else float("-inf") for p in p_lower]
        certified = torch.tensor([p > 0.5 for p in p_lower], device=ref.device)
        predicted = torch.where(certified, choose_pref.long(), torch.full_like(votes, -1))
        return CertifyOutput(key=keys, category=list(batch["category"]), judge=judge, s0=s0, s1=s1,
                             preferred=pref.long(), votes=votes, predicted=predicted, p_lower=p_lower, radius=radius,
                             correct=predicted == 1)


MAX_DRAWS = 100_000_000  # noise draws per sample (Cohen et al.: 100,000); each is a metric evaluation


def check_certify(sigma: float, n0: int, n: int, alpha: float, target: str, chunk: int = 64,
                  max_images: int = 0) -> None:
    """One-line errors for certification settings."""
    if not sigma > 0:
        raise ValueError(f"certify: sigma must be > 0, got {sigma}")
    if n0 < 1 or n < 1 or chunk < 1 or max_images < 0:
        raise ValueError(f"certify: n0, n and chunk must be >= 1 and max_images >= 0 (0: measured), got n0={n0}, "
                         f"n={n}, chunk={chunk}, max_images={max_images}")
    if not 0 < alpha < 1:
        raise ValueError(f"certify: alpha must be in (0, 1), got {alpha}")
    check_count(n0 + n, MAX_DRAWS, f"certify: n0 + n (noise draws per sample, n0={n0}, n={n})",
                "lower n (Cohen et al. use n = 100,000)")
    check_count(max(chunk, max_images), MAX_DRAWS, "certify: images per metric call (chunk, max_images)",
                "lower chunk or max_images (0: measured)")
    if target not in TARGETS:
        raise ValueError(f"certify: target must be one of {', '.join(TARGETS)}, got {target!r}")


def max_radius(n: int, alpha: float, sigma: float) -> Tuple[float, float]:
    """(largest p_lower, largest radius) that ``n`` draws can certify: all n votes for the class."""
    p = clopper_pearson_lower(n, n, alpha)
    return p, certified_radius(p, sigma)
