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
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import yaml
from torch import Tensor, nn

from lit_attacks.metrics.base import Distance, MetricInputError
from lit_attacks.metrics.registry import METRICS
from lit_attacks.safe_files import InputError

USER: Dict[str, Dict[str, Any]] = {}  # name -> {"object": the wrapped metric, "fingerprint"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UserMetricError(InputError):
    """A user metric that cannot be imported, built or called as a distance; the message names it."""


class UserDistance(Distance):
    """A frozen distance around a user's module or callable ``fn(ref, x) -> (B,)`` (or (B, 1, ...)).

    Args:
        fn: the metric. A module is registered as a submodule: frozen and kept in eval mode with this one.
        similarity: ``fn`` is a similarity (larger = more similar): the distance is ``1 - fn``.
        description: one line for tables and results entries.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], similarity: bool = False, description: str = "") -> None:
        super().__init__()
        self.fn = fn
        self.similarity, self.description = bool(similarity), description
        self.signed = self.similarity  # 1 - s can be negative
        self.stochastic = bool(getattr(fn, "stochastic", False))

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        d = self.fn(ref, x)
        if not torch.is_tensor(d):
            raise MetricInputError(f"{self.name}: returned a {type(d).__name__}, expected a Tensor of shape (B,)")
        if d.dim() > 1 and d.numel() == x.shape[0]:
            d = d.reshape(x.shape[0])  # (B, 1, 1, 1) as lpips returns
        return 1 - d if self.similarity else d


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
    elif callable(obj):
        metric = UserDistance(obj, similarity, _description(obj))
    else:
        raise UserMetricError(f"metric {name}: got a {type(obj).__name__}, expected a torch.nn.Module or a callable "
                              "d(ref, x) -> Tensor[B]")
    metric.name = name
    probe(metric)
    return metric


def probe(metric: Distance) -> None:
    """Call the metric once on two 64 x 64 pairs (on its parameters' device): one line naming the metric if it fails,
    returns the wrong shape or a non-finite value."""
    p = next(iter(metric.parameters()), None)
    dev, dtype = (p.device, p.dtype) if p is not None and p.is_floating_point() else ("cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    ref = (torch.rand(2, 3, 64, 64, generator=g) * 2 - 1).to(dev, dtype)
    x = (ref + 0.1 * torch.randn(2, 3, 64, 64, generator=g).to(dev, dtype)).clamp(-1, 1)
    try:
        with torch.no_grad():
            d = metric(ref, x, check=False)
    except Exception as e:  # any failure of the user's code: one line naming the metric
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserMetricError(f"metric {metric.name}: failed on a (2, 3, 64, 64) batch in [-1, 1]: {why}") from None
    if tuple(d.shape) != (2,):
        raise UserMetricError(f"metric {metric.name}: returned shape {tuple(d.shape)}, expected (2,): one distance "
                              "per image pair")
    if not torch.isfinite(d).all():
        raise UserMetricError(f"metric {metric.name}: returned non-finite values {d.tolist()} on a probe batch")


def register_object(obj: Any, name: Optional[str] = None, similarity: Optional[bool] = None) -> str:
    """Make ``obj`` the metric ``user:<name>`` in this process (default name: its class or function name); returns
    the registry name. The fingerprint of its parameters and source keys the cells of a run, so editing the
    metric recomputes them."""
    if isinstance(obj, str):
        raise TypeError("register_object takes a module or callable; a registered name is used as it is")
    name = name or getattr(obj, "__name__", None) or type(obj).__name__
    if not NAME_RE.match(name):
        raise UserMetricError(f"metric name {name!r}: use letters, digits, '_', '.' and '-' only")
    metric = wrap(copy.deepcopy(obj) if isinstance(obj, nn.Module) else obj, f"user:{name}", similarity)  # yours
    # stays as it was (trainable, in its mode): the copy is frozen
    USER[name] = {"object": metric, "fingerprint": object_fingerprint(obj)}
    return f"user:{name}"


def object_fingerprint(obj: Any) -> str:
    """sha256 (first 20 hex) of an object's source (when it has one) and of its parameters and buffers."""
    h = hashlib.sha256()
    try:
        h.update(inspect.getsource(_definition(obj)).encode())
    except (OSError, TypeError):
        h.update(repr(type(obj)).encode())
    if isinstance(obj, nn.Module):
        for k, v in obj.state_dict().items():
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
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
            kwargs[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserMetricError(f"metric py:{spec}: the value of {key} is not plain YAML") from None
    return parts[0], parts[1], kwargs


def import_factory(spec: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
    module, factory, kwargs = parse_spec(spec)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserMetricError(f"metric py:{spec}: cannot import {module} ({e}); it must be importable from this "
                              "Python environment (pip install -e your package, or add its folder to PYTHONPATH)") \
            from None
    fn = getattr(mod, factory, None)
    if fn is None or not callable(fn):
        raise UserMetricError(f"metric py:{spec}: {module} has no callable {factory!r}")
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


def spec_fingerprint(spec: str) -> Optional[str]:
    """sha256 (first 20 hex) of the source file of a ``py:`` metric's module and its arguments (None: no file)."""
    module, factory, kwargs = parse_spec(spec)
    found = importlib.util.find_spec(module)
    if found is None or not found.origin or not Path(found.origin).is_file():
        return None
    h = hashlib.sha256(Path(found.origin).read_bytes() + f"{factory}{sorted(kwargs.items())}".encode())
    return h.hexdigest()[:20]


@METRICS.register_prefix("py", what="your metric: py:package.module:factory[:key=value...], imported from your "
                                    "environment", distance="yours (similarity=true: 1 - s)", weights="yours",
                         argument="module:factory", calibrated="yours: checked to run and return (B,) finite values")
def py(spec: str) -> Distance:
    fn, kwargs = import_factory(spec)
    similarity = kwargs.pop("similarity", None)
    if is_metric_itself(fn) and not kwargs:
        return wrap(fn, f"py:{spec}", similarity)
    try:
        obj = fn(**kwargs)
    except TypeError as e:
        raise UserMetricError(f"metric py:{spec}: {getattr(fn, '__name__', fn)}({', '.join(kwargs)}) failed: {e}") \
            from None
    return wrap(obj, f"py:{spec}", similarity)
