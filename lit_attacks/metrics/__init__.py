"""Victim metrics: every one a frozen :class:`Distance` created by name from :data:`METRICS`."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from lit_attacks.metrics.base import BoundDistance, Distance, MetricInputError, check_images, expected_distances, to01
from lit_attacks.metrics.registry import METRICS
from lit_attacks.metrics.weights import WeightsNotFoundError, recording
from lit_attacks.metrics.trained import CheckpointError

CLI_MODULES = ("catalog",)  # command-line tools of this package: they import it, so they are not imported here
# Every other module is imported, and each metric family registers its factories where they are defined
# (``@METRICS.register("lpips_alex")``), as attacks and tables do: adding a metric is adding one module.
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in CLI_MODULES:
        importlib.import_module(f"{__name__}.{_m.name}")


_POOL: Optional[Dict[Tuple[Any, ...], Distance]] = None  # while a metric_pool() is open: the metrics built in it


@contextmanager
def metric_pool() -> Iterator[Dict[Tuple[Any, ...], Distance]]:
    """Within the block, :func:`create_metric` builds each metric once (per name, options and dtype) and hands the
    same frozen instance to every caller: a bench run's cells share their metrics, so each metric's weights are read
    once per run and process. A metric is a frozen module in eval mode whose only state is its weights, so sharing it
    changes no number; a caller needing another dtype asks for it (``dtype=torch.float64``) instead of converting the
    shared instance. Nested pools share the outer one."""
    global _POOL
    if _POOL is not None:
        yield _POOL
        return
    _POOL = {}
    try:
        yield _POOL
    finally:
        _POOL = None


def create_metric(name: str, pretrained: bool = True, weights_dir: Optional[str] = None, init_seed: int = 0,
                  dtype: Optional[torch.dtype] = None, **kwargs: Any) -> Distance:
    """Build the metric registered as ``name``.

    ``pretrained`` and ``weights_dir`` reach the metrics that have learned weights and are ignored
    by the others (whose ``pretrained`` is always True). An unknown name raises ``KeyError`` with
    close matches. Construction runs under a fixed seed (``init_seed``) without touching the global
    RNG, so a random backbone is the same network in every process and every run. ``dtype``: the metric's
    parameters in that type (``torch.float64`` for batch-invariant scoring). Inside :func:`metric_pool` a metric
    already built with the same arguments is returned instead of a new one.
    """
    factory = METRICS.get(name)
    params = inspect.signature(factory).parameters
    args = dict(kwargs)  # the factory's arguments: pretrained and weights_dir only where it takes them
    if "pretrained" in params:
        args["pretrained"] = pretrained
    if "weights_dir" in params:
        args["weights_dir"] = weights_dir
    if _POOL is None:
        return _build(name, factory, args, init_seed, dtype)
    key = (name, init_seed, str(dtype), repr(sorted(args.items())))  # options it ignores make no other instance
    if key not in _POOL:
        _POOL[key] = _build(name, factory, args, init_seed, dtype)
    WEIGHTS_USED[name] = _POOL[key].weights_file
    return _POOL[key]


def _build(name: str, factory, args: Dict[str, Any], init_seed: int, dtype: Optional[torch.dtype]) -> Distance:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        with recording() as files:
            metric = factory(**args)
    metric.name = name
    metric.weights_file = files.get(name)  # the weights file or folder it was built from (None: none, or random)
    WEIGHTS_USED[name] = metric.weights_file
    if dtype is not None:
        metric.to(dtype)
    return metric


# name -> the weights file or folder the metric was last built from in this process (None: none, or random): what a
# cell's fingerprint hashes, so replacing a weights file recomputes the cells of its metric
WEIGHTS_USED: Dict[str, Optional[str]] = {}


def list_metrics(pattern: str = "*") -> List[str]:
    return METRICS.names(pattern)


__all__ = ["BoundDistance", "CheckpointError", "Distance", "METRICS", "MetricInputError", "WeightsNotFoundError",
           "check_images", "create_metric", "expected_distances", "list_metrics", "metric_pool", "to01"]
