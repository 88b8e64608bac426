"""Aggregate attack statistics as torchmetrics, reduced correctly across DDP ranks."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor

from lit_attacks.attacks.objectives import PIXEL_THRESHOLDS

GROUPS = ("all", "agreed", "disagreed")
FRACTIONS = [f"frac>{t}" for t in PIXEL_THRESHOLDS]


class FlipStats(torchmetrics.Metric):
    """Flip counts and the perturbation statistics of flipped samples (sums, so DDP reduction is exact).

    ``compute`` returns: total, flipped, flip_rate, flipped_uint8, flip_rate_uint8, and over flipped
    samples rmse_mean, rmse_std (population), psnr_mean, eps_mean (samples with an epsilon),
    queries_mean, iterations_mean and the mean fraction of perturbed values per threshold.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("total", "flipped", "flipped_uint8", "rmse_sum", "rmse_sq", "psnr_sum", "eps_sum", "eps_n",
                     "queries_sum", "iters_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frac_sum", default=torch.zeros(len(PIXEL_THRESHOLDS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, flipped: Tensor, flipped_uint8: Tensor, rmse: Tensor, psnr: Tensor, eps: Tensor,
               fractions: Tensor, queries: Tensor, iterations: Tensor) -> None:
        """All (B,) except ``fractions`` (B, len(PIXEL_THRESHOLDS)); eps may be nan (not applicable)."""
        f = flipped.bool()
        d = lambda t: t.double()  # noqa: E731
        self.total += f.numel()
        self.flipped += f.sum()
        self.flipped_uint8 += flipped_uint8.bool().sum()
        self.rmse_sum += d(rmse[f]).sum()
        self.rmse_sq += (d(rmse[f]) ** 2).sum()
        self.psnr_sum += d(psnr[f]).sum()
        e = eps[f]
        self.eps_sum += d(e[~torch.isnan(e)]).sum()
        self.eps_n += (~torch.isnan(e)).sum()
        self.queries_sum += d(queries[f]).sum()
        self.iters_sum += d(iterations[f]).sum()
        self.frac_sum += d(fractions[f]).sum(0)

    def compute(self) -> Dict[str, float]:
        n, k = self.total.item(), self.flipped.item()
        mean = lambda s, c: s / c if c else math.nan  # noqa: E731
        rmse_mean = mean(self.rmse_sum.item(), k)
        out = {"total": int(n), "flipped": int(k), "flip_rate": mean(k, n),
               "flipped_uint8": int(self.flipped_uint8.item()), "flip_rate_uint8": mean(self.flipped_uint8.item(), n),
               "rmse_mean": rmse_mean,
               "rmse_std": math.sqrt(max(0.0, mean(self.rmse_sq.item(), k) - rmse_mean ** 2)) if k else math.nan,
               "psnr_mean": mean(self.psnr_sum.item(), k), "eps_mean": mean(self.eps_sum.item(), self.eps_n.item()),
               "queries_mean": mean(self.queries_sum.item(), k), "iterations_mean": mean(self.iters_sum.item(), k)}
        out.update({name: mean(v, k) for name, v in zip(FRACTIONS, self.frac_sum.tolist())})
        return out


def records_to_tensors(records: Sequence[Dict[str, Any]], device=None) -> Dict[str, Tensor]:
    t = lambda key, dtype=torch.float32: torch.tensor([float(r[key]) for r in records], dtype=dtype, device=device)  # noqa: E731
    return {"flipped": t("flipped", torch.bool), "flipped_uint8": t("flipped_uint8", torch.bool), "rmse": t("rmse"),
            "psnr": t("psnr"), "eps": t("eps"), "queries": t("queries"), "iterations": t("iterations"),
            "fractions": torch.stack([t(f) for f in FRACTIONS], 1) if records else torch.zeros(0, len(FRACTIONS)),
            "agreed": t("agreed", torch.bool)}


class AttackMetrics(pl.Callback):
    """Owns one :class:`FlipStats` per group (all samples, metric agreed with humans, disagreed).

    After ``trainer.predict``, :attr:`results` maps group -> statistics on every rank (``compute``
    all-gathers); rank 0 logs them as ``predict/<attack>/<metric>/<group>/<quantity>``.
    """

    def __init__(self, attack: str = "attack", metric: str = "metric") -> None:
        self.attack, self.metric = attack, metric
        self.stats = {g: FlipStats() for g in GROUPS}
        self.results: Dict[str, Dict[str, float]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Optional[str] = None) -> None:
        for m in self.stats.values():
            m.to(pl_module.device)

    def on_predict_start(self, trainer, pl_module) -> None:
        for m in self.stats.values():
            m.reset()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        t = records_to_tensors(outputs, device=pl_module.device)
        agreed = t.pop("agreed")
        for group, mask in (("all", torch.ones_like(agreed)), ("agreed", agreed), ("disagreed", ~agreed)):
            self.stats[group].update(**{k: v[mask] for k, v in t.items()})

    def on_predict_end(self, trainer, pl_module) -> None:
        self.results = {g: m.compute() for g, m in self.stats.items()}
        if trainer.is_global_zero and trainer.logger is not None:
            flat = {f"predict/{self.attack}/{self.metric}/{g}/{k}": v for g, res in self.results.items()
                    for k, v in res.items() if isinstance(v, (int, float)) and not math.isnan(v)}
            trainer.logger.log_metrics(flat)
