"""Scoring a dataset with a metric as a Lightning predict step (the Table 1 cell)."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

from lit_attacks.attacks.output import ScoreOutput
from lit_attacks.metrics import create_metric
from lit_attacks.metrics.base import NonFiniteDistance, naming_samples
from lit_attacks.registry import TASKS


class MetricTask(pl.LightningModule):
    """A predict step over one metric (scoring, the gradient check, the Lipschitz certificate): builds the metric
    once (from the run's pool; float64 with ``batch_invariant``, never converting the shared instance) and hands
    ``predict_step`` the triplet's images in the metric's precision (:meth:`images`)."""

    def __init__(self, metric: str = "lpips_alex", pretrained: bool = True, weights_dir: Optional[str] = None,
                 batch_invariant: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.metric = create_metric(metric, pretrained=pretrained, weights_dir=weights_dir,
                                    dtype=torch.float64 if batch_invariant else None)  # shared: never converted

    def images(self, batch: Dict) -> Tuple[Tensor, Tensor, Tensor]:
        """(ref, p0, p1) of the batch, (B, 3, H, W) in [-1, 1]; float64 with ``batch_invariant``."""
        ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]
        if self.hparams.batch_invariant:
            ref, p0, p1 = ref.double(), p0.double(), p1.double()
        return ref, p0, p1


@TASKS.register("score", what="the distances s0, s1 of a metric (ScoreOutput rows)")
class ScoreModule(MetricTask):
    """Scores each triplet: ``s0 = d(ref, p0)``, ``s1 = d(ref, p1)``.

    Args:
        metric: registry name of the metric.
        pretrained: real weights (False: random backbone, labelled in outputs).
        weights_dir: folder searched first for weights.
        batch_invariant: score in float64, so a sample's score does not depend on the batch it is in
            (float32 batched kernels differ at the 1e-7 relative level with batch composition).
    """

    @torch.no_grad()
    def predict_step(self, batch: Dict, batch_idx: int = 0) -> ScoreOutput:
        ref, p0, p1 = self.images(batch)
        with naming_samples(batch["key"]):  # a metric that misbehaves: one line naming the sample
            s0 = self.metric(ref, p0)  # (B,), smaller = closer
            s1 = self.metric(ref, p1)
        for name, s in (("s0", s0), ("s1", s1)):
            bad = ~torch.isfinite(s)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise NonFiniteDistance(self.metric.name, f"returned {s[i].item()} as {name} (not a finite distance)",
                                        key=batch["key"][i])
        return ScoreOutput(key=list(batch["key"]), category=list(batch["category"]), judge=batch["judge"], s0=s0, s1=s1)
