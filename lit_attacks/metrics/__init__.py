"""Victim metrics: every one a frozen :class:`Distance` created by name from :data:`METRICS`."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch
from typing import Any, Dict, List, Optional

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


def create_metric(name: str, pretrained: bool = True, weights_dir: Optional[str] = None, init_seed: int = 0,
                  **kwargs: Any) -> Distance:
    """Build the metric registered as ``name``.

    ``pretrained`` and ``weights_dir`` reach the metrics that have learned weights and are ignored
    by the others (whose ``pretrained`` is always True). An unknown name raises ``KeyError`` with
    close matches. Construction runs under a fixed seed (``init_seed``) without touching the global
    RNG, so a random backbone is the same network in every process and every run.
    """
    factory = METRICS.get(name)
    params = inspect.signature(factory).parameters
    if "pretrained" in params:
        kwargs["pretrained"] = pretrained
    if "weights_dir" in params:
        kwargs["weights_dir"] = weights_dir
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        with recording() as files:
            metric = factory(**kwargs)
    metric.name = name
    metric.weights_file = files.get(name)  # the weights file or folder it was built from (None: none, or random)
    WEIGHTS_USED[name] = metric.weights_file
    return metric


# name -> the weights file or folder the metric was last built from in this process (None: none, or random): what a
# cell's fingerprint hashes, so replacing a weights file recomputes the cells of its metric
WEIGHTS_USED: Dict[str, Optional[str]] = {}


def list_metrics(pattern: str = "*") -> List[str]:
    return METRICS.names(pattern)


__all__ = ["BoundDistance", "CheckpointError", "Distance", "METRICS", "MetricInputError", "WeightsNotFoundError",
           "check_images", "create_metric", "expected_distances", "list_metrics", "to01"]
