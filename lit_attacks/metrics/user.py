"""Your own metric as a victim: any ``torch.nn.Module`` or callable ``d(ref, x) -> Tensor[B]`` on [-1, 1] images.

Two ways in, both wrapped once into a frozen :class:`UserDistance` (eval mode, no parameter gradients, output
checked on a probe batch) exactly like a registered metric:

- ``py:package.module:factory`` (``bench.py --metrics``, configs): ``package.module`` is imported from your
  environment and ``factory`` called with no arguments, or ``py:package.module:factory:key=value:key=value``
  with keyword arguments (values parsed as YAML; ``--param py:package.module:factory.key=value`` adds one).
  Every process of a multi-GPU run imports it itself.
- an object in this process: :func:`register_object` (what :func:`lit_attacks.evaluate` does) names it
  ``user:<name>``; such a metric lives only in this process (no DDP).

``factory`` may also be the metric itself (a module object, or a function ``d(ref, x)``). A factory may return a
:class:`~lit_attacks.metrics.base.Distance` (used as is), a module or a callable. ``similarity=True`` (a
``similarity`` attribute on the object, or the key) converts ``s`` to the distance ``1 - s``; a
``stochastic = True`` attribute marks a metric that draws randomness per call (as E-LPIPS): flips are decided on
the mean of ``eot_eval`` draws, and attacks average ``eot`` gradient draws.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from lit_attacks.metrics.base import Distance, MetricCallError, NonFiniteDistance
from lit_attacks.configuration import load_yaml_text
from lit_attacks.metrics.registry import METRICS
from lit_attacks.safe_files import InputError, first_line

USER: Dict[str, Dict[str, Any]] = {}  # name -> {"object": the wrapped metric, "fingerprint"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UserMetricError(InputError):
    """A user metric that cannot be imported, built or called as a distance; the message names it."""


class UserDistance(Distance):
    """A frozen distance around a user's module or callable ``fn(ref, x) -> (B,)`` (or (B, 1, ...)).

    Every call goes through :func:`call_user`: ``fn`` gets its own copies of the images (an in-place edit stays in
    its code), and whatever it does wrong (raises, even ``SystemExit``; returns something that is not one finite real
    distance per pair) is a one-line :class:`~lit_attacks.metrics.base.MetricCallError` naming the metric and, once the
    caller maps it, the sample. A bound distance remembers which sample of the batch each reference row is, so a bad
    value in an attack's call (compacted, or with many candidates per sample) names its sample.

    Args:
        fn: the metric. A module is registered as a submodule: frozen and kept in eval mode with this one.
        similarity: ``fn`` is a similarity (larger = more similar): the distance is ``1 - fn``.
        description: one line for tables and results entries.

    Attributes:
        differentiable: the distance carries gradients to ``x`` (found by :func:`probe`; False: computed in NumPy or
            detached, and attacks that need gradients refuse it).
    """

    differentiable: bool = True

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], similarity: bool = False, description: str = "") -> None:
        super().__init__()
        self.fn = fn
        self.similarity, self.description = bool(similarity), description
        self.signed = self.similarity  # 1 - s can be negative
        self.stochastic = bool(getattr(fn, "stochastic", False))

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        d = call_user(self.name, self.fn, ref, x)
        return 1 - d if self.similarity else d

    def _prepare(self, ref: Tensor):
        return ref, torch.arange(ref.shape[0], device=ref.device)  # the references and which sample each row is

    def _select(self, ctx, idx: Tensor):
        return ctx[0][idx], ctx[1][idx]

    def _distance_prepared(self, ctx, x: Tensor) -> Tensor:
        ref, rows = ctx
        try:
            return self._distance(ref, x)
        except MetricCallError as e:
            if e.index is None or e.sample is not None:
                raise
            raise MetricCallError(e.metric, e.what, e.index, e.size, int(rows[e.index])) from None


class CheckedDistance(Distance):
    """Mixed into a user's own :class:`Distance` subclass by :func:`wrap`: its ``_distance`` and
    ``_distance_prepared`` (its reference caching is kept) run through :func:`call_user`."""

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return call_user(self.name, super()._distance, ref, x)

    def _distance_prepared(self, ctx, x: Tensor) -> Tensor:
        return call_user(self.name, super()._distance_prepared, ctx, x)


def call_user(name: str, fn: Callable[[Tensor, Tensor], Any], ref: Tensor, x: Tensor) -> Tensor:
    """``fn(ref, x)`` as a (B,) real tensor on ``x``'s device and dtype, or a :class:`MetricCallError` naming what went
    wrong: an exception of any kind (``SystemExit`` and ``MemoryError`` included; Ctrl-C stays an interrupt), a result
    that is not a tensor or a NumPy array of B real numbers (complex, bool, strings, another shape), or NaN / inf.
    ``fn`` receives copies of the images: what it does to them in place changes nothing outside it. A result that is
    not attached to ``x`` while ``x`` needs a gradient is refused too (a distance computed in NumPy or detached cannot
    guide a gradient attack: the metric's :attr:`UserDistance.differentiable` is False from its probe)."""
    B = x.shape[0]
    try:
        d = fn(ref.clone() if torch.is_tensor(ref) else ref, x.clone())  # (B,); clones are differentiable
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the user's code: SystemExit, MemoryError, RuntimeError (out of memory), any error
        raise MetricCallError(name, f"raised {type(e).__name__}: {first_line(e, 200, '')}".rstrip(": "),
                              size=B) from None
    if isinstance(d, np.ndarray) or (isinstance(d, (list, tuple)) and not torch.is_tensor(d)):
        arr = np.asarray(d)
        if arr.dtype.kind not in "fiu":
            raise MetricCallError(name, f"returned an array of {arr.dtype}, expected real numbers", size=B)
        d = torch.as_tensor(arr, device=x.device)
    if not torch.is_tensor(d):
        raise MetricCallError(name, f"returned a {type(d).__name__}, expected a Tensor of shape ({B},)", size=B)
    if d.is_complex() or d.dtype == torch.bool:
        raise MetricCallError(name, f"returned a {d.dtype} tensor, expected real distances", size=B)
    if d.dim() != 1 and d.numel() == B:
        d = d.reshape(B)  # (B, 1, 1, 1) as lpips returns
    if tuple(d.shape) != (B,):
        raise MetricCallError(name, f"returned shape {tuple(d.shape)}, expected ({B},): one distance per image pair",
                              size=B)
    d = d.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    bad = ~torch.isfinite(d)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise NonFiniteDistance(name, f"returned non-finite values ({d[i].item()}; a distance is a finite number)",
                                index=i, size=B)
    if x.requires_grad and torch.is_grad_enabled() and not d.requires_grad:
        raise MetricCallError(name, "returned a distance without a gradient to x (computed outside torch, or "
                                    "detached); attacks that need gradients cannot run on it", size=B)
    return d


def _definition(obj: Any) -> Any:
    """The function or class that defines ``obj`` (an instance: its class)."""
    return obj if inspect.isroutine(obj) or inspect.isclass(obj) else type(obj)


def _description(obj: Any) -> str:
    doc = inspect.getdoc(_definition(obj)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else type(obj).__name__


def wrap(obj: Any, name: str, similarity: Optional[bool] = None) -> Distance:
    """``obj`` as a checked, frozen :class:`Distance` called ``name``."""
    if similarity is None:
        similarity = bool(getattr(obj, "similarity", False))
    if isinstance(obj, Distance) and not similarity:
        metric = obj
        metric.requires_grad_(False)
        metric.train(False)
        if not isinstance(metric, CheckedDistance):  # its calls go through call_user, its own bind kept
            metric.__class__ = type(f"Checked{type(metric).__name__}", (CheckedDistance, type(metric)), {})
    elif callable(obj):
        metric = UserDistance(obj, similarity, _description(obj))
    else:
        raise UserMetricError(f"metric {name}: got a {type(obj).__name__}, expected a torch.nn.Module or a callable "
                              "d(ref, x) -> Tensor[B]")
    metric.name = name
    metric.behaviour = probe(metric)
    return metric


def probe_batch(dev, dtype) -> Tuple[Tensor, Tensor]:
    """Two fixed 64 x 64 image pairs in [-1, 1] (the same in every process and run)."""
    g = torch.Generator().manual_seed(0)
    ref = (torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float64) * 2 - 1)
    x = (ref + 0.1 * torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return ref.to(dev, dtype), x.to(dev, dtype)


def probe(metric: Distance) -> str:
    """Call the metric on two 64 x 64 pairs (on its parameters' device), with a gradient to ``x``: one line naming the
    metric if it fails or returns anything but two finite distances; records whether it has gradients
    (``differentiable``); returns its behaviour fingerprint (:func:`behaviour_fingerprint`)."""
    p = next(iter(metric.parameters()), None)
    dev, dtype = (p.device, p.dtype) if p is not None and p.is_floating_point() else ("cpu", torch.float32)
    ref, x = probe_batch(dev, dtype)
    x.requires_grad_(True)
    with _seeded(), torch.enable_grad():
        try:
            d = metric(ref, x, check=False)
        except MetricCallError as e:
            if "without a gradient" not in e.what:
                raise UserMetricError(f"metric {metric.name}: {e.what} (on a (2, 3, 64, 64) probe batch in [-1, 1])") \
                    from None
            metric.differentiable = False
            with torch.no_grad():
                d = metric(ref, x.detach(), check=False)
        grad = torch.autograd.grad(d.sum(), x, allow_unused=True)[0] if d.requires_grad else None
    return behaviour_fingerprint(d, grad)


class _seeded:
    """torch's, NumPy's and Python's global random state seeded for the block and restored after it (a metric that
    draws from them gives the same probe values every time)."""

    def __enter__(self):
        import random

        self._states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        torch.manual_seed(0), np.random.seed(0), random.seed(0)

    def __exit__(self, *exc):
        import random

        torch.set_rng_state(self._states[0]), np.random.set_state(self._states[1]), random.setstate(self._states[2])


def behaviour_fingerprint(d: Tensor, grad: Optional[Tensor]) -> str:
    """sha256 (first 20 hex) of what a metric computes on the probe batch: its two distances and its gradient with
    respect to ``x`` (or "no gradient"), each value to 6 significant digits (a change of code, weights, constructor
    arguments or closed-over values that changes any of them changes the fingerprint; float noise below that does
    not)."""
    h = hashlib.sha256()
    for t in (d, grad):
        if t is None:
            h.update(b"no gradient")
            continue
        arr = t.detach().double().cpu().numpy().ravel()
        h.update(" ".join(np.char.mod("%.6g", arr)).encode())
    return h.hexdigest()[:20]


def register_object(obj: Any, name: Optional[str] = None, similarity: Optional[bool] = None) -> str:
    """Make ``obj`` the metric ``user:<name>`` in this process (default name: its class or function name); returns
    the registry name. The fingerprint of its parameters and source keys the cells of a run, so editing the
    metric recomputes them."""
    if isinstance(obj, str):
        raise TypeError("register_object takes a module or callable; a registered name is used as it is")
    name = name or getattr(obj, "__name__", None) or type(obj).__name__
    if not NAME_RE.match(name):
        raise UserMetricError(f"metric name {name!r}: use letters, digits, '_', '.' and '-' only")
    try:
        own = copy.deepcopy(obj) if isinstance(obj, nn.Module) else obj
    except Exception as e:  # a module holding a lock, a file, a process: it cannot be frozen without touching yours
        raise UserMetricError(f"metric user:{name}: the module cannot be copied ({type(e).__name__}: "
                              f"{first_line(e, 120, '')}); keep files, locks and processes out of its attributes") \
            from None
    metric = wrap(own, f"user:{name}", similarity)  # yours
    # stays as it was (trainable, in its mode): the copy is frozen
    USER[name] = {"object": metric, "fingerprint": object_fingerprint(obj, metric.behaviour)}
    return f"user:{name}"


def object_fingerprint(obj: Any, behaviour: str = "") -> str:
    """sha256 (first 20 hex) of what an object computes (``behaviour``: :func:`behaviour_fingerprint` on the probe
    batch), its source (when it has one; with the source of the other modules of its package) and its parameters and
    buffers."""
    h = hashlib.sha256(behaviour.encode())
    try:
        h.update(inspect.getsource(_definition(obj)).encode())
    except (OSError, TypeError):
        h.update(repr(type(obj)).encode())
    module = getattr(_definition(obj), "__module__", None)
    if module:
        h.update(source_fingerprint(module).encode())
    if isinstance(obj, nn.Module):
        for k, v in obj.state_dict().items():
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


MAX_SOURCE_FILES = 2000  # a package larger than this is fingerprinted by its behaviour and first files only


def source_fingerprint(module: str) -> str:
    """sha256 (first 20 hex) of the source files of ``module``'s top-level package (every ``*.py`` under it: a helper
    module edited between runs changes it), or of the module's file alone when it is a single-file module; "" when
    it has no file (a module made in memory: its behaviour fingerprint speaks for it)."""
    top = sys.modules.get(module.split(".")[0])
    origin = getattr(top, "__file__", None)
    if origin is None:
        return ""
    path = Path(origin)
    files = sorted(path.parent.rglob("*.py"))[:MAX_SOURCE_FILES] if path.name == "__init__.py" else [path]
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(str(f.relative_to(path.parent)).encode() + f.read_bytes())
        except OSError:
            h.update(f"{f}:unreadable".encode())
    return h.hexdigest()[:20]


@METRICS.register_prefix("user", what="a metric object registered in this process (lit_attacks.evaluate)",
                         distance="yours", weights="yours", argument="name",
                         calibrated="yours: evaluate checks it runs and returns (B,) finite values")
def user(name: str) -> Distance:
    if name not in USER:
        raise UserMetricError(f"metric user:{name} is not registered in this process (lit_attacks.evaluate registers "
                              "objects; from the command line use py:package.module:factory)")
    return copy.deepcopy(USER[name]["object"])  # each task its own copy (batch_invariant makes it float64)


def parse_spec(spec: str) -> Tuple[str, str, Dict[str, Any]]:
    """``package.module:factory[:key=value...]`` -> (module, factory, keyword arguments)."""
    parts = spec.split(":")
    if len(parts) < 2 or not MODULE_RE.match(parts[0]) or not parts[1].isidentifier():
        raise UserMetricError(f"metric py:{spec}: expected py:package.module:factory (optionally :key=value:...), "
                              "e.g. py:mymetrics:build")
    kwargs: Dict[str, Any] = {}
    for item in parts[2:]:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise UserMetricError(f"metric py:{spec}: {item!r} is not key=value")
        try:
            kwargs[key] = load_yaml_text(value)
        except yaml.YAMLError:
            raise UserMetricError(f"metric py:{spec}: the value of {key} is not plain YAML") from None
    return parts[0], parts[1], kwargs


def standard_library(module: str) -> bool:
    """``module`` (a dotted name) belongs to Python itself: the standard library or the builtins."""
    top = module.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "builtins"


def import_factory(spec: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
    """The callable a ``py:`` spec names and its keyword arguments. Never a callable of Python itself (``os:system``,
    ``builtins:exec``, a module's re-export of one, a builtin function): a metric is code of a package of yours."""
    module, factory, kwargs = parse_spec(spec)
    if module.split(".")[0] == "__main__":
        raise UserMetricError(f"metric py:{spec}: __main__ is the running program (bench.py, train.py), not a package "
                              "of yours")
    if standard_library(module):
        raise UserMetricError(f"metric py:{spec}: {module} is part of Python's standard library; a py: metric names "
                              "a module of your own (py:package.module:factory)")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserMetricError(f"metric py:{spec}: cannot import {module} ({e}); it must be importable from this "
                              "Python environment (pip install -e your package, or add its folder to PYTHONPATH)") \
            from None
    fn = getattr(mod, factory, None)
    if fn is None or not callable(fn):
        raise UserMetricError(f"metric py:{spec}: {module} has no callable {factory!r}")
    origin = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", "") or ""
    if inspect.isbuiltin(fn) or standard_library(origin):
        raise UserMetricError(f"metric py:{spec}: {module}.{factory} is {origin or 'a builtin'}'s "
                              f"{getattr(fn, '__name__', factory)}, a callable of Python itself, not a metric")
    return fn, kwargs


def is_metric_itself(fn: Any) -> bool:
    """A module object, or a function of exactly two required positional arguments ``(ref, x)``: the metric, not a
    factory of one."""
    if isinstance(fn, nn.Module):
        return True
    if not inspect.isfunction(fn):
        return False
    required = [p for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) == 2


SPEC_FINGERPRINTS: Dict[str, str] = {}  # py: spec -> fingerprint, set when the metric is built in this process


def spec_fingerprint(spec: str) -> Optional[str]:
    """sha256 (first 20 hex) of what a ``py:`` metric computes (its outputs and input-gradients on the probe batch), the
    source of its package (helper modules included) and its arguments: a cell is reused only for a metric that
    computes the same. Built here if this process has not built it yet."""
    if spec not in SPEC_FINGERPRINTS:
        py(spec)
    return SPEC_FINGERPRINTS[spec]


@METRICS.register_prefix("py", what="your metric: py:package.module:factory[:key=value...], imported from your "
                                    "environment", distance="yours (similarity=true: 1 - s)", weights="yours",
                         argument="module:factory", calibrated="yours: checked to run and return (B,) finite values")
def py(spec: str) -> Distance:
    fn, kwargs = import_factory(spec)
    similarity = kwargs.pop("similarity", None)
    if is_metric_itself(fn) and not kwargs:
        metric = wrap(fn, f"py:{spec}", similarity)
    else:
        try:
            obj = fn(**kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # the user's factory: any failure, SystemExit included, is one line
            raise UserMetricError(f"metric py:{spec}: {getattr(fn, '__name__', fn)}({', '.join(kwargs)}) failed: "
                                  f"{type(e).__name__}: {first_line(e, 200, '')}") from None
        metric = wrap(obj, f"py:{spec}", similarity)
    module, factory, args = parse_spec(spec)
    SPEC_FINGERPRINTS[spec] = hashlib.sha256(f"{metric.behaviour}|{source_fingerprint(module)}|{factory}|"
                                             f"{sorted(args.items())}".encode()).hexdigest()[:20]
    return metric
