"""The one interface every victim metric implements: a frozen, differentiable distance."""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from lit_attacks.metrics.local import FullScorer
from lit_attacks.safe_files import InputError

RANGE_TOL = 1e-4


class MetricInputError(InputError):
    """Inputs of a metric have the wrong shape, range or values (a ``ValueError``; one line naming the metric)."""


class MetricCallError(MetricInputError):
    """A metric misbehaved on a call (raised, returned something that is not one finite real distance per pair); the
    message names the metric and, once the caller has said which samples the call was on (:meth:`at`), the sample.

    Args:
        metric: the metric's name.
        what: what it did ("returned nan", "raised SystemExit: 3").
        index: the image pair of the call it concerns (None: the whole call).
        size: the pairs in the call.
        sample: the sample of the batch the metric was bound to (a bound call knows it), when known.
        key: the sample's key, when known.
    """

    def __init__(self, metric: str, what: str, index: Optional[int] = None, size: Optional[int] = None,
                 sample: Optional[int] = None, key: Optional[str] = None) -> None:
        self.metric, self.what, self.index, self.size, self.sample, self.key = metric, what, index, size, sample, key
        where = f", sample {key}" if key else f", image pair {index} of a call on {size}" if index is not None else ""
        super().__init__(f"metric {metric}{where}: {what}")

    def at(self, keys) -> "MetricCallError":
        """This error naming the sample among ``keys`` (the batch the call was made for): the bound sample, else the
        pair's position in a call on the batch (or on copies of it laid end to end, as scoring p0 and p1 at once)."""
        if self.key is not None or not keys:
            return self
        keys = list(keys)
        B = len(keys)
        i = self.sample if self.sample is not None else \
            self.index % B if self.index is not None and self.size and self.size % B == 0 else None
        if i is not None and i < B:
            return type(self)(self.metric, self.what, self.index, self.size, self.sample, keys[i])
        err = type(self)(self.metric, self.what, self.index, self.size, self.sample, keys[0] if B == 1 else None)
        if B > 1:  # the whole call failed: the batch it was for
            err.args = (f"metric {self.metric}, the batch of samples {keys[0]} ... {keys[-1]} ({B}): {self.what}",)
            err.key = keys[0]
        return err


class Distance(nn.Module):
    """A perceptual distance ``d(ref, x) -> (B,)``; smaller means more similar.

    Inputs are images in [-1, 1] of shape (B, 3, H, W). Subclasses implement :meth:`_distance`
    and convert similarities to distances there (never in attack code). After construction all
    parameters are frozen (``requires_grad=False``) and the module stays in eval mode even when a
    parent calls ``.train()``, so dropout or batch-norm never changes a score.

    Attributes:
        name: registry name, set by :func:`lit_attacks.metrics.create_metric`.
        pretrained: False when the metric runs on a random backbone (tests and timing only).
        stochastic: every call draws fresh randomness shared by the batch (so ``d(ref, x)`` is a random
            variable); attacks then score by the expectation (:func:`expected_distances`) and ascend it (EOT).
        signed: distances may be negative (learned quality regressors such as WaDIQaM-FR, offset to 0 at x = ref).
        differentiable: gradients of the distance reach ``x``; False for a user's metric computed outside torch (its
            probe finds it), on which attacks that need gradients refuse to run.
    """

    name: str = "distance"
    pretrained: bool = True
    stochastic: bool = False  # a fresh random draw every call (E-LPIPS' random transformations): attacks use EOT
    # a quality regressor's loss against the reference: 0 at x = ref, negative when x is rated above it
    signed: bool = False
    differentiable: bool = True  # gradients reach x (a user's metric computed in NumPy: False; gradient attacks refuse)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        @functools.wraps(init)
        def wrapped(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:  # only once, after the most derived __init__
                self.requires_grad_(False)
                nn.Module.train(self, False)

        cls.__init__ = wrapped

    def train(self, mode: bool = True) -> "Distance":
        """Metrics never leave eval mode."""
        return super().train(False)

    @property
    def label(self) -> str:
        """Name for tables and logs; random-backbone metrics say so."""
        return self.name if self.pretrained else f"{self.name} [random backbone]"

    def forward(self, ref: Tensor, x: Tensor, check: bool = True) -> Tensor:
        """Distance of each ``x`` to its ``ref``.

        Args:
            ref: (B, 3, H, W) in [-1, 1].
            x: (B, 3, H, W) in [-1, 1]; gradients flow to it.
            check: validate inputs and output (leave on at boundaries, off in attack loops that
                keep images clipped).

        Returns:
            (B,) distances, smaller = closer.
        """
        if check:
            check_images(ref, x, self.name)
        d = self._distance(ref, x)
        if check and d.shape != (x.shape[0],):
            raise RuntimeError(f"{self.name}: returned shape {tuple(d.shape)}, expected ({x.shape[0]},)")
        return d

    distance = forward

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind(self, ref: Tensor) -> "BoundDistance":
        """``x -> d(ref, x)`` for a fixed ``ref``, with whatever depends on ``ref`` alone computed once.

        Attack loops call the bound distance many times with the same references; LPIPS-like metrics
        override :meth:`_prepare` / :meth:`_distance_prepared` to cache the reference features.
        Inputs are not validated (validate once with :func:`check_images` first).
        """
        with torch.no_grad():
            ctx = self._prepare(ref)
        return BoundDistance(self, ref, ctx)

    def _prepare(self, ref: Tensor):
        return ref

    def pixel_scorer(self, bound: "BoundDistance", prey: Tensor, local: bool = True, chunk: int = 128):
        """A scorer of one-pixel changes of ``prey`` (S, 3, H, W) against ``bound``'s S references:
        ``scorer(rows, ys, xs, values) -> (N,)`` distances (:mod:`lit_attacks.metrics.local`). Metrics whose
        network allows it score only what the pixel reaches (``local``); the default scores whole images."""
        return FullScorer(bound, prey, chunk)

    def _select(self, ctx, idx: Tensor):
        return ctx[idx]

    def _distance_prepared(self, ctx, x: Tensor) -> Tensor:
        return self._distance(ctx, x)


class EmbeddingDistance(Distance):
    """``1 - cos`` of image embeddings (DreamSim, CLIP, LipSim): subclasses implement :meth:`embed`; a bound
    distance embeds the references once."""

    cosine_eps: float = 1e-8  # torch's default; LipSim's authors use 1e-6

    def embed(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """(B, D) embedding of images in [-1, 1]."""
        raise NotImplementedError

    def cosine_distance(self, a: Tensor, b: Tensor) -> Tensor:
        return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=self.cosine_eps)

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return self.cosine_distance(self.embed(ref), self.embed(x))

    def _prepare(self, ref: Tensor) -> Tensor:
        return self.embed(ref)

    def _distance_prepared(self, ctx: Tensor, x: Tensor) -> Tensor:
        return self.cosine_distance(ctx, self.embed(x))


def register_learned(name: str, build, **info: str) -> None:
    """Register ``name`` as a factory ``(pretrained=True, weights_dir=None) -> build(pretrained, weights_dir)`` with
    ``info`` (``what``, ``distance``, ``weights``, ``calibrated``: what the metric table shows): one call per member
    of a family of released checkpoints."""
    from lit_attacks.metrics.registry import METRICS

    def factory(pretrained: bool = True, weights_dir: Optional[str] = None) -> Distance:
        return build(pretrained, weights_dir)

    factory.__name__ = name
    METRICS.register(name, **info)(factory)


def expected_distances(metric: Distance, ref: Tensor, xs, draws: int) -> list:
    """[(B,) mean over ``draws`` calls of ``d(ref, x)`` for each x in ``xs``]. All images of one call share the
    metric's random draw (common random numbers), so differences between the xs are estimated with less
    variance than independent means; a deterministic metric is called once."""
    n = draws if metric.stochastic else 1
    B, k = ref.shape[0], len(xs)
    refs, imgs = torch.cat([ref] * k), torch.cat(list(xs))
    total = sum(metric(refs, imgs, check=False) for _ in range(n)) / n
    return list(total.view(k, B))


class BoundDistance:
    """A metric bound to a batch of references; :meth:`select` keeps a subset (for compaction)."""

    def __init__(self, metric: Distance, ref: Tensor, ctx) -> None:
        self.metric, self.ref, self.ctx = metric, ref, ctx

    def __call__(self, x: Tensor) -> Tensor:
        """(B,) distances of ``x`` (B, 3, H, W) to the bound references."""
        return self.metric._distance_prepared(self.ctx, x)

    def select(self, idx: Tensor) -> "BoundDistance":
        return BoundDistance(self.metric, self.ref[idx], self.metric._select(self.ctx, idx))

    def repeat_interleave(self, k: int) -> "BoundDistance":
        """Each reference repeated ``k`` times in a row (to score k candidates per sample at once)."""
        idx = torch.arange(self.ref.shape[0], device=self.ref.device).repeat_interleave(k)
        return self.select(idx)

    def tile(self, k: int) -> "BoundDistance":
        """The references repeated ``k`` times as blocks (to score k images of every sample in one call)."""
        idx = torch.arange(self.ref.shape[0], device=self.ref.device).repeat(k)
        return self.select(idx)

    def __len__(self) -> int:
        return self.ref.shape[0]


class NonFiniteDistance(MetricCallError, FloatingPointError):
    """A metric returned NaN or an infinite distance (also a ``FloatingPointError``)."""


@contextmanager
def naming_samples(keys: Sequence[str]) -> Iterator[None]:
    """A :class:`MetricCallError` raised in the block names its sample among ``keys`` (the batch's)."""
    try:
        yield
    except MetricCallError as e:
        raise e.at(keys) from None


def check_images(ref: Tensor, x: Tensor, name: str = "metric", key: Optional[str] = None) -> None:
    """Raise :class:`MetricInputError` unless ``ref`` and ``x`` are matching (B, 3, H, W) images in [-1, 1]."""
    where = f"{name}" + (f" (sample {key})" if key else "")
    for arg, t in (("ref", ref), ("x", x)):
        if not isinstance(t, Tensor):
            raise MetricInputError(f"{where}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4 or t.shape[1] != 3:
            raise MetricInputError(f"{where}: {arg} must have shape (B, 3, H, W), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise MetricInputError(f"{where}: {arg} must be a float tensor in [-1, 1], got {t.dtype}")
    if ref.shape != x.shape:
        raise MetricInputError(f"{where}: ref and x shapes differ: {tuple(ref.shape)} vs {tuple(x.shape)}")
    if ref.device != x.device:
        raise MetricInputError(f"{where}: ref on {ref.device} but x on {x.device}")
    for arg, t in (("ref", ref), ("x", x)):
        if not torch.isfinite(t).all():
            raise MetricInputError(f"{where}: {arg} contains NaN or Inf")
        lo, hi = t.min().item(), t.max().item()
        if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
            raise MetricInputError(
                f"{where}: {arg} must lie in [-1, 1], got [{lo:.4g}, {hi:.4g}] "
                "(scale uint8 images with x / 127.5 - 1)"
            )


def to01(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], the range piq expects (clamped against float round-off)."""
    return ((x + 1) / 2).clamp(0, 1)
