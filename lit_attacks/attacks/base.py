"""AttackModule: the shared predict step of every attack (prey choice, attack, fresh re-scoring, typed output)."""
from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

from lit_attacks.attacks.calling import as_batch, check_batch, metric_name, warn_once
from lit_attacks.attacks.objectives import (UINT8_MODES, agrees_with_humans, choose_prey, flipped, perturbation_stats,
                                            quantize, split_prey, to_uint8)
from lit_attacks.attacks.output import AttackOutput
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.threat import TARGETS, Threat
from lit_attacks.metrics import BoundDistance, check_images, create_metric, expected_distances
from lit_attacks.metrics.base import MetricInputError, NonFiniteDistance, naming_samples


@dataclass
class AttackResult:
    """What :meth:`AttackModule.attack` returns for a batch of B samples.

    Attributes:
        adv: (B, 3, H, W) adversarial prey in [-1, 1].
        iterations: (B,) gradient steps / generations taken (-1: not applicable).
        queries: (B,) metric evaluations spent on the sample.
        eps: (B,) epsilon found (FGSM) or the l_inf budget; nan when not applicable.
        extra: per-sample columns of this attack (column -> list of B values).
        status: per-sample "ok" or the reason the sample failed (the run goes on).
        nonfinite: (B,) True where the metric's gradient was not finite at some step (gradient attacks); a
            sample that then does not flip gets the status "non-finite gradient" (it was not really attacked).
        verdict: (B,) the attack's own flip decision, used instead of re-scoring the final image when the
            attack counts as the official code does (PGD ``counting="official"``).
    """

    adv: Tensor
    iterations: Tensor
    queries: Tensor
    eps: Tensor
    extra: Dict[str, List[Any]] = field(default_factory=dict)
    status: Optional[List[str]] = None
    nonfinite: Optional[Tensor] = None
    verdict: Optional[Tensor] = None


class AttackModule(pl.LightningModule):
    """Base of all attacks; subclasses implement :meth:`attack` and register with ``@ATTACKS.register(name)``.

    ``predict_step`` scores s0, s1, picks prey/other, runs the attack with gradients enabled (the
    Trainer must be built with ``inference_mode=False``), re-scores the final adversarial image with a
    fresh forward pass (and its 8-bit quantisation), and returns an :class:`AttackOutput`.

    Init arguments are checked against their type annotations before the subclass sees them, so a
    wrong type (``steps="abc"``) or a non-finite number raises ``ValueError`` naming the attack.

    Args:
        metric: registry name of the victim metric.
        pretrained: real weights (False: random backbone, labelled).
        weights_dir: folder searched first for weights.
        keep_images: add uint8 ref/other/prey/adv images to the output (shards, example grids).
        batch_invariant: compute in float64. Batched convolution kernels (oneDNN, native CPU, cuDNN)
            give results that depend on the batch composition at the 1e-8 level in float32, and
            ``sign()`` in PGD/FGSM can turn that into a different (equally valid) adversarial image.
            In float64 that noise is ~1e-15, so every sample gets the result it gets alone (the tests
            check adv images to 1e-5; a pixel changed by exactly a fraction threshold, e.g. one PGD step
            of 0.001, may still fall on either side of it). Off (default): float32, faster, same algorithm.
        uint8: how an adversarial image becomes the 8-bit PNG it is saved as and re-scored as
            (``s_adv_uint8``, ``flipped_uint8``, shards): "round" to the nearest level (default) or
            "trunc" as the official code's ``util.tensor2im`` (for reproducing its numbers).

    Class attributes:
        name: the registry name.
        example_params: small settings that run in seconds on a CPU (quick runs, the contract tests).
        reverse: the attack perturbs the image the metric finds *farther* until it becomes the closer
            one (paper appendix F); a flip is then ``s_adv < s_other``.
        clamp_output: adversarial images are clipped to [-1, 1] (off only for an attack whose paper
            encoding leaves the valid range; its 8-bit image is what a real image could hold).
        targets: the images this attack can perturb (see :mod:`lit_attacks.attacks.threat`); attacks that
            offer more than the prey take a ``target`` argument and implement :meth:`attack_threat`.
        target: the image perturbed ("prey", "ref" or "both").
        eot_eval: on a stochastic metric (``metric.stochastic``), the random draws averaged to estimate each
            expected distance that decides the prey and a flip (common draws for the images compared).
    """

    name: str = "attack"
    example_params: ClassVar[Dict[str, Any]] = {}
    reverse: ClassVar[bool] = False
    black_box: ClassVar[bool] = False  # uses only the metric's outputs, no gradient (Square, One-pixel)
    clamp_output: bool = True
    targets: ClassVar[Tuple[str, ...]] = ("prey",)
    target: str = "prey"
    eot_eval: int = 32

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        @functools.wraps(init)
        def checked(self, *args: Any, **kw: Any) -> None:
            if args and not isinstance(args[0], str):  # a metric object where a name goes: user:<name>
                args = (metric_name(args[0]),) + args[1:]
            elif "metric" in kw and not isinstance(kw["metric"], str):
                kw["metric"] = metric_name(kw["metric"])
            check_arguments(type(self).name, init, (self,) + args, kw)
            init(self, *args, **kw)

        cls.__init__ = checked

    def __init__(self, metric: str = "lpips_alex", *, pretrained: bool = True, weights_dir: Optional[str] = None,
                 keep_images: bool = False, batch_invariant: bool = False, uint8: str = "round") -> None:
        """The options every attack takes, declared here only: a subclass takes its own parameters and passes the
        rest on (``def __init__(self, metric="lpips_alex", eps=0.03, **options)`` ... ``super().__init__(metric,
        **options)``); the options reaching it are checked against this signature (unknown names, types)."""
        if uint8 not in UINT8_MODES:
            raise ValueError(f"{type(self).name}: uint8 must be one of {', '.join(UINT8_MODES)}, got {uint8!r}")
        super().__init__()
        self.metric = create_metric(metric, pretrained=pretrained, weights_dir=weights_dir,
                                    dtype=torch.float64 if batch_invariant else None)  # shared: never converted
        if not self.black_box and not self.metric.differentiable:
            raise MetricInputError(f"{type(self).name}: metric {self.metric.name} gives no gradient (its distance is "
                                   f"computed outside torch or detached), and {type(self).name} needs one; black-box "
                                   f"attacks run on it: {', '.join(black_box_attacks())}")
        self.keep_images, self.batch_invariant, self.uint8 = keep_images, batch_invariant, uint8

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Metric evaluations per sample this attack makes with parameters ``p`` (its defaults filled in: see
        :func:`lit_attacks.attacks.cost.attack_cost`) when no sample stops early, scoring the two images and
        re-scoring included: a forward pass counts 1, a forward and backward pass 3. What bench's ETA counts;
        the attack contract test checks it against counted metric calls. Every attack declares its own."""
        raise NotImplementedError(f"attack {cls.name} declares no cost(params): metric evaluations per sample as a "
                                  "function of its parameters (see AttackModule.cost)")

    @classmethod
    def max_cost(cls, p: Dict[str, Any]) -> float:
        """The most evaluations per sample it can make with ``p`` (adaptive searches: every trial taken); by default
        :meth:`cost`."""
        return cls.cost(p)

    @property
    def metric_name(self) -> str:
        return self.metric.name

    @property
    def linf_budget(self) -> Optional[float]:
        """The l_inf radius (on [-1, 1]) around the prey that every adversarial image stays in; None if unbounded."""
        return None

    def attack(self, bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str]) -> AttackResult:
        raise NotImplementedError

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        """The attack on any :class:`Threat`; ``res.adv`` is the perturbed variable (``threat.centre``'s shape).
        By default, the prey-only :meth:`attack`."""
        return self.attack(threat.bound, threat.prey, threat.s_other_clean, keys)

    def set_target(self, target: str) -> None:
        """Check and set :attr:`target` (called by the ``__init__`` of attacks that take one)."""
        if target not in TARGETS:
            raise ValueError(f"{self.name}: target must be one of {', '.join(TARGETS)}, got {target!r}")
        if target not in self.targets:
            raise ValueError(f"{self.name}: target {target!r} is not supported; it perturbs {', '.join(self.targets)}")
        if target != "prey" and self.reverse:
            raise ValueError(f"{self.name}: the reverse attack perturbs the prey only")
        self.target = target

    def _finite(self, what: str, values: Tensor, keys: Sequence[str]) -> None:
        bad = ~torch.isfinite(values)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise NonFiniteDistance(self.metric_name, f"{self.name} on {self.metric_name}: returned {values[i].item()} "
                                                      f"as {what} (not a finite distance)", key=keys[i])

    def forward(self, ref: Tensor, p0: Tensor, p1: Tensor, judge: Optional[Any] = None,
                keys: Optional[Sequence[str]] = None, categories: Optional[Sequence[str]] = None) -> AttackOutput:
        """Attack B triplets given as (B, 3, H, W) tensors in [-1, 1]: ``attack(ref, p0, p1)``. ``judge`` (B,) is the
        fraction of people who preferred p1 (optional: without it ``agreed`` is False); ``keys`` name the samples
        (they seed each sample's random stream; default ``input/000000``...)."""
        return self.predict_step(as_batch(ref, p0, p1, judge, keys, categories, self.name))

    def predict_step(self, batch: Dict[str, Any], batch_idx: int = 0) -> AttackOutput:
        warn_once(self, check_batch(batch, f"{self.name} on {self.metric_name}"))  # before any work
        if self.batch_invariant:  # the metric was built in float64
            batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        with naming_samples(batch["key"]):  # a metric that misbehaves: one line naming the sample
            return self._predict(batch)

    def _score_batch(self, batch: Dict[str, Any]):
        """Validate the triplets, score s0, s1 and split prey/other: (keys, ref, prey, other, s0, s1, s_other,
        bound)."""
        keys = list(batch["key"])
        ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]  # (B, 3, H, W) in [-1, 1]
        check_images(ref, p0, f"{self.name} on {self.metric_name}", keys[0])
        check_images(ref, p1, f"{self.name} on {self.metric_name}", keys[0])
        with torch.no_grad():
            s0, s1 = expected_distances(self.metric, ref, [p0, p1], self.eot_eval)  # (B,), smaller = closer
            self._finite("s0", s0, keys), self._finite("s1", s1, keys)
            prey, other, _, s_other = split_prey(p0, p1, s0, s1, farther=self.reverse)
            bound = self.metric.bind(ref)
        return keys, ref, prey, other, s0, s1, s_other, bound

    def _predict(self, batch: Dict[str, Any]) -> AttackOutput:
        keys, ref, prey, other, s0, s1, s_other, bound = self._score_batch(batch)
        threat = Threat(self.target, self.metric, ref, prey, other, s_other,
                        bound=None if self.target == "ref" else bound)
        with torch.enable_grad():
            res = self.attack_threat(threat, keys)
        adv = res.adv.detach().clamp(-1, 1) if self.clamp_output else res.adv.detach()
        with torch.no_grad():  # fresh forward passes on the final images (and their 8-bit versions)
            s_adv, s_oth = self._rescore(threat, adv, s_other, lambda t: t)
            s_adv8, s_oth8 = self._rescore(threat, adv, s_other, lambda t: quantize(t, self.uint8))
            self._finite("s_adv", s_adv, keys)
        status = list(res.status or ["ok"] * len(keys))
        ok = torch.tensor([s == "ok" for s in status], dtype=torch.bool, device=s_adv.device)
        verdict = flipped(s_adv, s_oth, self.reverse) if res.verdict is None else res.verdict.to(ok.device)
        if res.nonfinite is not None:  # a gradient attack that got no gradient and did not flip: failed, not robust
            weakened = (res.nonfinite.to(ok.device) & ok & ~verdict).tolist()
            status = ["non-finite gradient" if w else st for w, st in zip(weakened, status)]
            ok = ok & ~torch.tensor(weakened, dtype=torch.bool, device=ok.device)
        closer = choose_prey(s0, s1)
        prey_idx = closer ^ int(self.reverse)  # the attacked image
        tied = s0 == s1
        stats = perturbation_stats(threat.centre, adv, self.uint8)
        extra = dict(res.extra)
        if self.metric.stochastic:
            extra["flip_rate_fresh"] = self._fresh_flip_rate(threat, adv).tolist()
        adv_img = adv[:, :3]
        images = None
        if self.keep_images:
            images = {n: to_uint8(t.detach().cpu(), self.uint8) for n, t in (("ref", ref), ("other", other),
                                                                              ("prey", prey), ("adv", adv_img))}
            if self.target == "both":
                images["adv_other"] = to_uint8(adv[:, 3:].detach().cpu(), self.uint8)
        return AttackOutput(key=keys, category=list(batch["category"]), judge=batch["judge"], s0=s0, s1=s1,
                            prey=prey_idx, agreed=agrees_with_humans(batch["judge"], closer, tied), tied=tied,
                            s_other=s_oth, s_adv=s_adv, flipped=ok & verdict, s_adv_uint8=s_adv8,
                            flipped_uint8=ok & flipped(s_adv8, s_oth8, self.reverse), iterations=res.iterations,
                            queries=res.queries, eps=res.eps, status=status, extra=extra, adv=adv_img, images=images,
                            **stats)

    def _rescore(self, threat: Threat, adv: Tensor, s_other: Tensor, convert) -> Tuple[Tensor, Tensor]:
        """(s_adv, s_other) of the perturbed images after ``convert`` (identity or 8-bit), by fresh forward passes;
        the expectation over ``eot_eval`` draws on a stochastic metric."""
        ref, prey, other = threat.images(convert(adv))
        if self.target == "prey" and not self.metric.stochastic:
            return self.metric(ref, prey, check=False), s_other
        s_adv, s_oth = expected_distances(self.metric, ref, [prey, other], self.eot_eval)  # common draws
        return s_adv, s_oth

    def _fresh_flip_rate(self, threat: Threat, adv: Tensor) -> Tensor:
        """(B,) fraction of ``eot_eval`` single fresh draws of the stochastic metric under which the rank is flipped
        (each draw scores both images of a sample with the same randomness; the prey's "other" distance is the
        draw's, not the expectation)."""
        ref, prey, other = threat.images(adv)
        hits = torch.zeros(len(adv), dtype=torch.float64, device=adv.device)
        for _ in range(self.eot_eval):
            s_adv, s_oth = expected_distances(self.metric, ref, [prey, other], 1)
            hits += flipped(s_adv, s_oth, self.reverse).double()
        return hits / self.eot_eval


class SpatialAttack(AttackModule):
    """An attack that warps the prey by a per-pixel flow; :meth:`spatial` is its batched pure form, which
    combinations (spatial + PGD(k), transfer) look up through the registry by name."""

    @staticmethod
    def spatial(bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str], **params: Any):
        """(adv (B, 3, H, W), iterations (B,), queries (B,), status (B strings)) of the spatial attack."""
        raise NotImplementedError


def black_box_attacks() -> List[str]:
    """Names of the registered attacks that use only the metric's outputs (no gradient)."""
    return [n for n in ATTACKS.names() if getattr(ATTACKS.get(n), "black_box", False)]


def spatial_attack(name: str) -> type:
    """The registered :class:`SpatialAttack` called ``name``; anything else raises ``ValueError``."""
    known = spatial_attack_names()
    if name not in known:
        raise ValueError(f"{name!r} is not a spatial attack; choose one of {', '.join(known)}")
    return ATTACKS.get(name)


def spatial_attack_names() -> List[str]:
    """Names of the registered spatial attacks, sorted."""
    return [n for n in ATTACKS.names()
            if isinstance(ATTACKS.get(n), type) and issubclass(ATTACKS.get(n), SpatialAttack)]


# ------------------------------------------------------------------------------ init argument checks
def check_arguments(attack: str, fn, args: tuple, kwargs: Dict[str, Any]) -> None:
    """Raise ``ValueError("<attack>: <param> must be <type>, got <value>")`` for an argument of the wrong type, and
    ``TypeError`` naming the attack for an unknown one. Keyword arguments that ``fn`` passes on (``**options``) are
    checked against :meth:`AttackModule.__init__`, which declares the options of every attack."""
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{attack}: {e}") from None
    hints = typing.get_type_hints(fn)
    passed_on: Dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:  # skip self
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            passed_on = value
        elif name in hints and not _matches(value, hints[name]):
            raise ValueError(f"{attack}: {name} must be {_describe(hints[name])}, got {_short(value)}")
    if passed_on:
        options = attack_options()
        for name in passed_on:
            if name not in options:
                raise TypeError(f"{attack}: got an unexpected keyword argument {name!r}")
        hints = typing.get_type_hints(AttackModule.__init__)
        for name, value in passed_on.items():
            if not _matches(value, hints[name]):
                raise ValueError(f"{attack}: {name} must be {_describe(hints[name])}, got {_short(value)}")


def _short(value: Any) -> str:
    """``repr(value)`` on one line of at most 80 characters (a module's repr runs to dozens of lines)."""
    text = repr(value).splitlines()[0] if repr(value) else ""
    return text if len(text) <= 80 and "\n" not in repr(value) else text[:77] + "..."


def attack_options() -> List[str]:
    """The options every attack takes (keyword-only arguments of :meth:`AttackModule.__init__`)."""
    return [k for k, p in inspect.signature(AttackModule.__init__).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]


def attack_parameters(cls: type) -> List[str]:
    """The parameters an attack class declares itself (its ``__init__`` without ``metric`` and the options)."""
    skip = {"metric", *attack_options()}
    return [k for k, p in inspect.signature(cls).parameters.items()
            if k not in skip and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args and args[0] is not Ellipsis else Any
        return all(_matches(v, inner) for v in value)
    if origin in (dict, Dict) or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))
