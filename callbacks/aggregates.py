"""The aggregates of the result tables as torchmetrics, updated from the typed batch outputs, exact under DDP.

- :class:`TwoAFC`: the 2AFC score over all samples and the accuracy over the unanimous ones (Table 1); float64
  sums of per-sample scores whose float64 sums are exact, so the result does not depend on how DDP split the data.
- :class:`Gathered`: per-sample values (eps, radius, correct, ...) gathered from every rank, for the aggregates that
  need all of them and not their order (minimum-epsilon curves and their medians, certified accuracy per radius).

:class:`TwoAFCScores` and :class:`GatherColumns` are the callbacks that feed them during ``trainer.predict``; after it
every rank holds the same results (``compute`` all-reduces). The per-sample CSVs are only written, and read back
only to resume a cell.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torchmetrics
from torch import Tensor

from lit_attacks.evaluation import two_afc


class TwoAFC(torchmetrics.Metric):
    """Mean 2AFC score (paper appendix A.1) of the samples seen, and the same mean over the unanimous ones (judge 0
    or 1: the fraction the metric ranks like the humans, ties 1/2).

    Each per-sample score is ``(s0<s1)(1-p) + (s1<s0)p + (s0==s1)/2`` in float64 from float32 inputs, a number of at
    most 24 significant bits, so the float64 sums are exact for any realistic sample count: the means do not depend
    on the order of summation (the batches, the ranks).
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("score", "samples", "unanimous_score", "unanimous"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, s0: Tensor, s1: Tensor, judge: Tensor) -> None:
        score = two_afc(s0, s1, judge).to(self.score.device)
        p = judge.detach().to(self.score.device, torch.float64)
        unanimous = (p == 0) | (p == 1)
        self.score += score.sum()
        self.samples += float(score.numel())
        self.unanimous_score += score[unanimous].sum()
        self.unanimous += unanimous.double().sum()

    def compute(self) -> Dict[str, Any]:
        n, u = int(self.samples.item()), int(self.unanimous.item())
        return {"samples": n, "unanimous": u,
                "two_afc": self.score.item() / n if n else math.nan,
                "accuracy": self.unanimous_score.item() / u if u else math.nan}


class TwoAFCScores(pl.Callback):
    """One :class:`TwoAFC` per category and one over all samples, from each batch's ``ScoreOutput``. After
    ``trainer.predict`` :attr:`results` maps category (sorted, then ``"all"``) -> :meth:`TwoAFC.compute`, on every
    rank; the categories are the union over the ranks (a rank may see none of a category)."""

    def __init__(self) -> None:
        self.metrics: Dict[str, TwoAFC] = {}
        self.results: Dict[str, Dict[str, Any]] = {}
        self._device: Optional[torch.device] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Optional[str] = None) -> None:
        self._device = pl_module.device

    def _metric(self, category: str) -> TwoAFC:
        if category not in self.metrics:
            self.metrics[category] = TwoAFC().to(self._device or "cpu")
        return self.metrics[category]

    def on_predict_start(self, trainer, pl_module) -> None:
        self.metrics, self.results = {}, {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        cats = list(outputs.category)
        self._metric("all").update(outputs.s0, outputs.s1, outputs.judge)
        for c in dict.fromkeys(cats):
            mask = torch.tensor([x == c for x in cats], dtype=torch.bool, device=outputs.s0.device)
            self._metric(c).update(outputs.s0[mask], outputs.s1[mask], outputs.judge[mask])

    def on_predict_end(self, trainer, pl_module) -> None:
        names = set(self.metrics) - {"all"}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, sorted(names))
            names = {c for part in parts for c in part}
        self.results = {c: self._metric(c).compute() for c in sorted(names) + ["all"]}  # same order on every rank


class Gathered(torchmetrics.Metric):
    """Per-sample values of named columns from every rank (``cat`` states), for aggregates that need them all and
    do not depend on their order: a minimum-epsilon curve and its median, certified accuracy at each radius."""

    full_state_update = False

    def __init__(self, columns: Sequence[str]) -> None:
        super().__init__()
        self.columns = list(columns)
        for c in self.columns:
            self.add_state(c, default=[], dist_reduce_fx="cat")

    def update(self, **values: Tensor) -> None:
        for c in self.columns:
            getattr(self, c).append(values[c].detach().to(self.device, torch.float64).reshape(-1))

    def compute(self) -> Dict[str, Tensor]:
        return {c: torch.cat(v) if isinstance(v, list) else v for c, v in ((c, getattr(self, c)) for c in self.columns)}


class GatherColumns(pl.Callback):
    """Feeds a :class:`Gathered` from each batch's typed output (``read(output) -> {column: (B,) tensor}``). After
    ``trainer.predict`` :attr:`values` maps column -> the float values of all samples of all ranks, on every rank."""

    def __init__(self, columns: Sequence[str], read: Callable[[Any], Dict[str, Tensor]]) -> None:
        self.read = read
        self.metric = Gathered(columns)
        self.values: Dict[str, List[float]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Optional[str] = None) -> None:
        self.metric = self.metric.to(pl_module.device)

    def on_predict_start(self, trainer, pl_module) -> None:
        self.metric.reset()
        self.values = {}
        self.metric.update(**{c: torch.zeros(0) for c in self.metric.columns})  # no empty state on a rank

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.metric.update(**self.read(outputs))

    def on_predict_end(self, trainer, pl_module) -> None:
        self.values = {c: t.tolist() for c, t in self.metric.compute().items()}
