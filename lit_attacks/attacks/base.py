"""AttackModule: the shared predict step of every attack (prey choice, attack, fresh re-scoring, records)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from lit_attacks.attacks.objectives import (PIXEL_THRESHOLDS, agrees_with_humans, perturbation_stats, quantize,
                                            split_prey, to_uint8)
from lit_attacks.metrics import BoundDistance, check_images, create_metric

RECORD_COLUMNS = ["key", "category", "judge", "s0", "s1", "prey", "agreed", "s_other", "s_adv", "flipped",
                  "s_adv_uint8", "flipped_uint8", "iterations", "queries", "eps", "rmse", "psnr", "linf"] + \
                 [f"frac>{t}" for t in PIXEL_THRESHOLDS] + ["status"]


@dataclass
class AttackResult:
    """What an attack returns for a batch of B samples.

    Attributes:
        adv: (B, 3, H, W) adversarial prey in [-1, 1].
        iterations: (B,) gradient steps / generations taken (-1: not applicable).
        queries: (B,) metric evaluations spent on the sample.
        eps: (B,) epsilon found (FGSM) or the l_inf budget; nan when not applicable.
        extra: per-sample record fields of this attack (column -> list of B values).
        status: per-sample "ok" or the reason the sample failed (the run goes on).
    """

    adv: Tensor
    iterations: Tensor
    queries: Tensor
    eps: Tensor
    extra: Dict[str, List[Any]] = field(default_factory=dict)
    status: Optional[List[str]] = None


class AttackModule(pl.LightningModule):
    """Base of all attacks; subclasses implement :meth:`attack`.

    ``predict_step`` scores s0, s1, picks prey/other, runs the attack with gradients enabled (the
    Trainer must be built with ``inference_mode=False``), re-scores the final adversarial image with a
    fresh forward pass (and its 8-bit quantisation), and returns one record dict per sample.

    Args:
        metric: registry name of the victim metric.
        pretrained: real weights (False: random backbone, labelled).
        weights_dir: folder searched first for weights.
        keep_images: add ``_images`` (uint8 ref/other/prey/adv) to each record, for adversarial shards.
        batch_invariant: compute in float64. Batched convolution kernels (oneDNN, native CPU, cuDNN)
            give results that depend on the batch composition at the 1e-8 level in float32, and
            ``sign()`` in PGD/FGSM can turn that into a different (equally valid) adversarial image.
            In float64 that noise is ~1e-19, so every sample gets the result it gets alone (the tests
            check adv images to 1e-5). Off (default): float32, faster, same algorithm.
    """

    name = "attack"

    def __init__(self, metric: str = "lpips_alex", pretrained: bool = True, weights_dir: Optional[str] = None,
                 keep_images: bool = False, batch_invariant: bool = False) -> None:
        super().__init__()
        self.metric = create_metric(metric, pretrained=pretrained, weights_dir=weights_dir)
        self.keep_images, self.batch_invariant = keep_images, batch_invariant

    @property
    def metric_name(self) -> str:
        return self.metric.name

    def attack(self, bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str]) -> AttackResult:
        raise NotImplementedError

    def _finite(self, what: str, values: Tensor, keys: Sequence[str]) -> None:
        bad = ~torch.isfinite(values)
        if bad.any():
            key = keys[int(bad.nonzero()[0])]
            raise FloatingPointError(f"{self.name} on {self.metric_name}: metric returned non-finite {what} "
                                     f"for sample {key}")

    def predict_step(self, batch: Dict[str, Any], batch_idx: int = 0) -> List[Dict[str, Any]]:
        if self.batch_invariant:
            self.metric.double()
            batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        return self._predict(batch)

    def _score_batch(self, batch: Dict[str, Any]):
        """Validate the triplets, score s0, s1 and split prey/other: (keys, ref, prey, other, s0, s1, s_other, bound)."""
        keys = list(batch["key"])
        ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]  # (B, 3, H, W) in [-1, 1]
        check_images(ref, p0, f"{self.name} on {self.metric_name}", keys[0])
        check_images(ref, p1, f"{self.name} on {self.metric_name}", keys[0])
        with torch.no_grad():
            s0, s1 = self.metric(ref, p0, check=False), self.metric(ref, p1, check=False)  # (B,), smaller = closer
            self._finite("s0", s0, keys), self._finite("s1", s1, keys)
            prey, other, _, s_other = split_prey(p0, p1, s0, s1)
            bound = self.metric.bind(ref)
        return keys, ref, prey, other, s0, s1, s_other, bound

    def _predict(self, batch: Dict[str, Any]) -> List[Dict[str, Any]]:
        keys, ref, prey, other, s0, s1, s_other, bound = self._score_batch(batch)
        with torch.enable_grad():
            res = self.attack(bound, prey, s_other, keys)
        adv = res.adv.detach().clamp(-1, 1)
        with torch.no_grad():
            s_adv = self.metric(ref, adv, check=False)  # fresh forward pass on the final image
            s_adv8 = self.metric(ref, quantize(adv), check=False)
            self._finite("s_adv", s_adv, keys)
        stats = perturbation_stats(prey, adv)
        return self._records(batch, keys, s0, s1, s_other, s_adv, s_adv8, res, stats, ref, other, prey, adv)

    def _records(self, batch, keys, s0, s1, s_other, s_adv, s_adv8, res, stats, ref, other, prey, adv):
        prey_idx = (s0 > s1).long()
        status = res.status or ["ok"] * len(keys)
        cols = {"s0": s0, "s1": s1, "s_other": s_other, "s_adv": s_adv, "s_adv_uint8": s_adv8,
                "iterations": res.iterations, "queries": res.queries, "eps": res.eps, **stats}
        cols = {k: v.detach().cpu().tolist() for k, v in cols.items()}
        images = None
        if self.keep_images:
            images = {n: to_uint8(t.detach().cpu()).numpy() for n, t in
                      (("ref", ref), ("other", other), ("prey", prey), ("adv", adv))}
        records = []
        for i, key in enumerate(keys):
            judge = float(batch["judge"][i])
            r = {"key": key, "category": batch["category"][i], "judge": judge, "prey": int(prey_idx[i]),
                 "agreed": agrees_with_humans(judge, int(prey_idx[i])), "status": status[i]}
            r.update({k: v[i] for k, v in cols.items()})
            ok = status[i] == "ok"
            r["flipped"] = bool(ok and r["s_adv"] > r["s_other"])
            r["flipped_uint8"] = bool(ok and r["s_adv_uint8"] > r["s_other"])
            r.update({k: v[i] for k, v in res.extra.items()})
            if images is not None:
                r["_images"] = {n: a[i] for n, a in images.items()}
            records.append(r)
        return records
