"""Transferable adversarial examples (Table 3): generate on a source metric, score on target metrics.

A generator pass makes, per sample, every variant of the paper's transfer study from the same prey:
PGD(10) and PGD(20) (fixed steps), stAdv and FlowAdv, and each spatial attack followed by PGD(k) for
k in 5, 10, 15, 20 (snapshots of one fixed-step trajectory). A variant *passes* when its 8-bit image
flips the source metric, its RMSE (0-255) is within ``rmse_max`` (the imperceptibility filter; the
paper also inspected by hand, we do not) and its spatial stage did not fail.

For a target metric, a variant of a sample is *eligible* when it passed, the source metric ranked
like the humans (the prey is the image people preferred) and the target also ranks the prey closer
than the other image; it *transfers* when the target now finds the adversarial prey farther.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from lit_attacks.attacks.base import AttackModule
from lit_attacks.attacks.combined import pgd_snapshots, run_spatial
from lit_attacks.attacks.objectives import agrees_with_humans, perturbation_stats, quantize, to_uint8
from lit_attacks.metrics import check_images, create_metric


def variant_names(spatial: Sequence[str] = ("flowadv", "stadv"), ks: Sequence[int] = (5, 10, 15, 20),
                  pgd_steps: Sequence[int] = (10, 20)) -> List[str]:
    return list(spatial) + [f"pgd{k}" for k in pgd_steps] + [f"{s}_pgd{k}" for s in spatial for k in ks]


class TransferGenerator(AttackModule):
    """All transfer variants for each sample on the source ``metric``; records carry per-variant columns
    ``<variant>:s_adv``, ``:flipped`` (8-bit image), ``:rmse``, ``:pass``, and ``_images`` for the shards.

    Args:
        metric: the source metric.
        spatial: spatial attacks to run ("flowadv", "stadv").
        ks: PGD steps after each spatial attack.
        pgd_steps: PGD-alone variants (fixed steps from the prey).
        eps, alpha: PGD budget and step.
        rmse_max: imperceptibility bound on the RMSE (0-255) between prey and adversarial image.
        stadv_params, flowadv_params: keyword arguments of the spatial attacks.
    """

    name = "transfer"

    def __init__(self, metric: str = "lpips_alex", spatial: Sequence[str] = ("flowadv", "stadv"),
                 ks: Sequence[int] = (5, 10, 15, 20), pgd_steps: Sequence[int] = (10, 20), eps: float = 0.03,
                 alpha: float = 0.001, rmse_max: float = 8.0, stadv_params: Optional[Dict[str, Any]] = None,
                 flowadv_params: Optional[Dict[str, Any]] = None, pretrained: bool = True,
                 weights_dir: Optional[str] = None, keep_images: bool = True, batch_invariant: bool = False) -> None:
        for s in spatial:
            if s not in ("flowadv", "stadv"):
                raise ValueError(f"transfer: unknown spatial attack {s!r}; choose flowadv, stadv")
        if rmse_max <= 0:
            raise ValueError(f"transfer: rmse_max must be > 0, got {rmse_max}")
        super().__init__(metric, pretrained, weights_dir, keep_images, batch_invariant)
        self.save_hyperparameters()
        self.spatial, self.ks, self.pgd_steps = list(spatial), list(ks), list(pgd_steps)
        self.eps, self.alpha, self.rmse_max = eps, alpha, rmse_max
        self.params = {"stadv": dict(stadv_params or {}), "flowadv": dict(flowadv_params or {})}
        self.variants = variant_names(self.spatial, self.ks, self.pgd_steps)

    def _predict(self, batch: Dict[str, Any]) -> List[Dict[str, Any]]:
        keys, ref, prey, other, s0, s1, s_other, bound = self._score_batch(batch)
        advs: Dict[str, Tensor] = {}
        status: Dict[str, List[str]] = {}
        with torch.enable_grad():
            for k, x in pgd_snapshots(bound, prey, s_other, self.pgd_steps, None, self.eps, self.alpha).items():
                advs[f"pgd{k}"], status[f"pgd{k}"] = x, ["ok"] * len(keys)
            for s in self.spatial:
                a0, _, _, st = run_spatial(s, bound, prey, s_other, keys, self.params[s])
                advs[s], status[s] = a0.detach(), st
                for k, x in pgd_snapshots(bound, prey, s_other, self.ks, a0.detach(), self.eps, self.alpha).items():
                    advs[f"{s}_pgd{k}"], status[f"{s}_pgd{k}"] = x, st
        prey_idx = (s0 > s1).long()
        records = [{"key": k, "category": batch["category"][i], "judge": float(batch["judge"][i]),
                    "s0": float(s0[i]), "s1": float(s1[i]), "prey": int(prey_idx[i]), "s_other": float(s_other[i]),
                    "agreed": agrees_with_humans(float(batch["judge"][i]), int(prey_idx[i]))}
                   for i, k in enumerate(keys)]
        images = {"ref": to_uint8(ref.cpu()).numpy(), "other": to_uint8(other.cpu()).numpy(),
                  "prey": to_uint8(prey.cpu()).numpy()}
        for v in self.variants:
            adv = advs[v].detach().clamp(-1, 1)
            adv8 = quantize(adv)  # the saved 8-bit image
            with torch.no_grad():
                s8 = self.metric(ref, adv8, check=False)
            self._finite(f"s_adv of {v}", s8, keys)
            rmse = perturbation_stats(prey, adv8)["rmse"]
            images[v] = to_uint8(adv.cpu()).numpy()
            for i, r in enumerate(records):
                flipped = bool(s8[i] > s_other[i]) and status[v][i] == "ok"
                r.update({f"{v}:s_adv": float(s8[i]), f"{v}:flipped": flipped, f"{v}:rmse": float(rmse[i]),
                          f"{v}:pass": flipped and float(rmse[i]) <= self.rmse_max, f"{v}:status": status[v][i]})
        if self.keep_images:
            for i, r in enumerate(records):
                r["_images"] = {n: a[i] for n, a in images.items()}
        return records


class TransferScorer(pl.LightningModule):
    """Scores adversarial shards with a target metric: s(ref, other), s(ref, prey), s(ref, variant)."""

    def __init__(self, metric: str = "l2", pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.metric = create_metric(metric, pretrained=pretrained, weights_dir=weights_dir)

    @torch.no_grad()
    def predict_step(self, batch: Dict[str, Any], batch_idx: int = 0) -> List[Dict[str, Any]]:
        ref, other, prey = batch["ref"], batch["other"], batch["prey"]
        check_images(ref, other, f"transfer target {self.metric.name}", batch["key"][0])
        s_other, s_prey = self.metric(ref, other, check=False), self.metric(ref, prey, check=False)
        s_adv = {v: self.metric(ref, x, check=False) for v, x in batch["adv"].items()}
        out = []
        for i, key in enumerate(batch["key"]):
            src = json.loads(batch["record"][i])
            r = {"key": key, "judge": float(batch["judge"][i]), "source_agreed": bool(src["agreed"]),
                 "s_other": float(s_other[i]), "s_prey": float(s_prey[i]),
                 "target_agrees": bool(s_prey[i] < s_other[i])}
            for v, s in s_adv.items():
                r[f"{v}:pass"] = bool(src.get(f"{v}:pass", False))
                r[f"{v}:s_adv"] = float(s[i])
                r[f"{v}:transfers"] = bool(s[i] > s_other[i])
            out.append(r)
        return out


def table3_rows(source: str, target: str, records: Sequence[Dict[str, Any]], variants: Sequence[str]) -> List[Dict]:
    """One row per variant: eligible samples (passed, source agreed with humans, target ranks like humans) and
    how many of them the adversarial image flips on the target."""
    rows = []
    for v in variants:
        elig = [r for r in records if r.get(f"{v}:pass") and r["source_agreed"] and r["target_agrees"]]
        flipped = sum(r[f"{v}:transfers"] for r in elig)
        rows.append({"source": source, "target": target, "attack": v, "eligible": len(elig), "flipped": flipped,
                     "flip_rate": flipped / len(elig) if elig else float("nan")})
    return rows


def table3_markdown(rows: Sequence[Dict[str, Any]], variants: Sequence[str]) -> str:
    """Rows = (source, target), columns = attacks, cells = flipped / eligible (%)."""
    by = {}
    for r in rows:
        cell = f"{r['flipped']}/{r['eligible']} ({100 * r['flip_rate']:.0f}%)" if r["eligible"] else "0/0"
        by.setdefault((r["source"], r["target"]), {})[r["attack"]] = cell
    lines = ["| source | target | " + " | ".join(variants) + " |", "|" + "---|" * (len(variants) + 2)]
    for (s, t), cells in by.items():
        lines.append(f"| {s} | {t} | " + " | ".join(cells.get(v, "-") for v in variants) + " |")
    return "\n".join(lines) + "\n"
