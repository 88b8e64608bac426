"""Aggregate attack statistics as torchmetrics, read straight from the typed batch outputs, exact under DDP."""
from __future__ import annotations

import math
from typing import Dict, Optional

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor, nn

from lit_attacks.attacks.output import FRACTION_COLUMNS, AttackOutput

GROUPS = ("all", "agreed", "disagreed", "tied")


def _square(v: Tensor, part: str) -> Tensor:
    """The square of float32 values, split into two float32 parts (``hi`` + ``lo`` is the exact float64 square of
    the 24-bit values, at most 48 bits), so that their sums, too, are exact in float64."""
    sq = v.float().double() ** 2
    hi = sq.float().double()
    return hi if part == "hi" else sq - hi


# Means over the flipped samples of a group: quantity -> its (B,) values in an AttackOutput. Each value is rounded
# to float32 and summed in float64: sums of float32 values are exact in float64 (for any realistic count), so
# the means do not depend on the order of summation, i.e. on how DDP split the samples across ranks. The squares
# (for the spreads) are summed as two float32 parts each, exactly too.
SPREADS = ("rmse", "rmse_official", "psnr", "psnr_uint8")
# psnr_uint8 is infinite where the saved 8-bit image equals the prey (the perturbation did not survive 8 bits): its
# mean and spread are over the flipped samples whose 8-bit image differs (an infinite value is left out)
QUANTITIES = {"rmse": lambda o: o.rmse, "rmse_official": lambda o: o.rmse_official, "psnr": lambda o: o.psnr,
              "psnr_uint8": lambda o: torch.where(torch.isfinite(o.psnr_uint8), o.psnr_uint8, math.nan)}
MEANS = {**QUANTITIES,
         **{f"{q}_sq_{part}": (lambda o, q=q, part=part: _square(QUANTITIES[q](o), part))
            for q in SPREADS for part in ("hi", "lo")},
         "eps": lambda o: o.eps, "queries": lambda o: o.queries,
         "iterations": lambda o: torch.where(o.iterations >= 0, o.iterations.double(), math.nan),  # -1: n/a
         **{name: (lambda o, j=j: o.fractions[:, j]) for j, name in enumerate(FRACTION_COLUMNS)}}
SKIP_NAN = {"eps", "iterations", "psnr_uint8", "psnr_uint8_sq_hi", "psnr_uint8_sq_lo"}  # means over the values there


def _sum() -> torchmetrics.SumMetric:
    return torchmetrics.SumMetric(nan_strategy="disable").set_dtype(torch.float64)


def _mean(skip_nan: bool = False) -> torchmetrics.MeanMetric:
    return torchmetrics.MeanMetric(nan_strategy="ignore" if skip_nan else "disable").set_dtype(torch.float64)


class FlipStats(nn.Module):
    """The statistics of one group of samples: one SumMetric per count and one MeanMetric per quantity averaged
    over the flipped samples (float64 sums, reduced by summation across DDP ranks).

    ``eps`` is averaged over the flipped samples that have one (nan: not applicable); the means of the squares
    (``<q>_sq_hi`` + ``<q>_sq_lo``) give the spreads of :func:`std`; ``failed`` counts samples whose status is not
    "ok" (the attack could not run on them: a non-finite gradient or flow), which are never counted as flipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts = nn.ModuleDict({k: _sum() for k in ("total", "flipped", "flipped_uint8", "failed")})
        self.means = nn.ModuleDict({k.replace(".", "_"): _mean(skip_nan=k in SKIP_NAN) for k in MEANS})

    def update(self, out: AttackOutput, mask: Tensor) -> None:
        """Add the samples of ``out`` selected by the (B,) boolean ``mask``."""
        f = out.flipped & mask
        self.counts["total"].update(mask.double().sum())
        self.counts["flipped"].update(f.double().sum())
        self.counts["flipped_uint8"].update((out.flipped_uint8 & mask).double().sum())
        failed = torch.tensor([s != "ok" for s in out.status], dtype=torch.bool, device=mask.device)
        self.counts["failed"].update((failed & mask).double().sum())
        for k, read in MEANS.items():
            v = read(out)[f]
            self.means[k.replace(".", "_")].update(v.float().double())

    def to_device(self, device) -> "FlipStats":
        """Move to ``device``; ``Metric.to`` resets the compute dtype, so float64 is set again."""
        for m in list(self.counts.values()) + list(self.means.values()):
            m.to(device).set_dtype(torch.float64)
        return self

    def compute(self) -> Dict[str, Tensor]:
        out = {k: m.compute() for k, m in self.counts.items()}
        out.update({k: self.means[k.replace(".", "_")].compute() for k in MEANS})
        return out

    def reset(self) -> None:
        for m in list(self.counts.values()) + list(self.means.values()):
            m.reset()


def std(v: Dict[str, float], name: str, k: float, ddof: int = 0) -> float:
    """Standard deviation over the k flipped samples from the means of the values and of their squares: ddof 0 (the
    population's, ours) or 1 (the sample's: pandas' ``std()``, the official notebook's); nan when undefined."""
    mean_sq = v[f"{name}_sq_hi"] + v[f"{name}_sq_lo"]
    if k <= ddof or not math.isfinite(v[name]) or not math.isfinite(mean_sq):
        return math.nan
    return math.sqrt(max(0.0, mean_sq - v[name] ** 2) * k / (k - ddof))


def results(stats: Dict[str, Tensor]) -> Dict[str, float]:
    """Table 2 quantities from :meth:`FlipStats.compute`: counts, rates, and means over flipped samples (nan if
    none)."""
    v = {k: t.item() for k, t in stats.items()}
    n, k, k8 = v["total"], v["flipped"], v["flipped_uint8"]
    rate = lambda a, b: a / b if b else math.nan  # noqa: E731
    mean = lambda name: v[name] if k else math.nan  # noqa: E731
    out = {"total": int(n), "flipped": int(k), "flip_rate": rate(k, n), "flipped_uint8": int(k8),
           "flip_rate_uint8": rate(k8, n), "failed": int(v["failed"]), "rmse_mean": mean("rmse"),
           "rmse_std": std(v, "rmse", k), "rmse_official_mean": mean("rmse_official"),
           "rmse_official_std": std(v, "rmse_official", k, ddof=1),
           "psnr_mean": mean("psnr"), "psnr_std": std(v, "psnr", k), "psnr_uint8_mean": mean("psnr_uint8"),
           "psnr_uint8_std": std(v, "psnr_uint8", k), "eps_mean": v["eps"],
           "queries_mean": mean("queries"),
           "iterations_mean": v["iterations"]}
    out.update({name: mean(name) for name in FRACTION_COLUMNS})
    return out


class AttackMetrics(pl.Callback):
    """One :class:`FlipStats` per group (all samples; the metric agreed with humans; disagreed; tied, i.e.
    s0 == s1, which neither agrees nor disagrees), updated from
    each batch's :class:`AttackOutput`. After ``trainer.predict`` :attr:`results` maps group -> quantities
    on every rank (``compute`` all-gathers, so it runs on every rank). Logging is the caller's.
    """

    def __init__(self) -> None:
        self.stats = nn.ModuleDict({g: FlipStats() for g in GROUPS})
        self.results: Dict[str, Dict[str, float]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Optional[str] = None) -> None:
        for s in self.stats.values():
            s.to_device(pl_module.device)

    def on_predict_start(self, trainer, pl_module) -> None:
        for s in self.stats.values():
            s.reset()

    def on_predict_batch_end(self, trainer, pl_module, outputs: AttackOutput, batch, batch_idx,
                             dataloader_idx=0) -> None:
        agreed, tied = outputs.agreed, outputs.tied
        groups = (("all", torch.ones_like(agreed)), ("agreed", agreed), ("disagreed", ~agreed & ~tied), ("tied", tied))
        for group, mask in groups:
            self.stats[group].update(outputs, mask)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.results = {g: results(s.compute()) for g, s in self.stats.items()}
