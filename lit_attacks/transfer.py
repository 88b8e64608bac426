"""Transferable adversarial examples (Table 3): generate on a source metric, score on target metrics.

A generator pass makes, per sample, every variant of the paper's transfer study from the same prey:
PGD(10) and PGD(20) (fixed steps), each registered spatial attack (stAdv, FlowAdv) and each spatial
attack followed by PGD(k) for k in 5, 10, 15, 20 (snapshots of one fixed-step trajectory). A variant
*passes* when its 8-bit image flips the source metric, its RMSE (0-255, between the 8-bit prey and the 8-bit
adversarial image, both made with ``uint8``: an unchanged image has RMSE 0) is within ``rmse_max`` (the
imperceptibility filter; the paper also inspected by hand, we do not), its spatial stage did not fail and, for FlowAdv
run with ``counting: paper``, Algorithm 2 accepted it (flipped with ``L_perturb < pert_bound``).

Two ways to count (Table 3's ``transfer_counting``):

- ``strict`` (ours, the default): per variant, a sample is *eligible* when that variant passed, the
  source metric ranked like the humans (the prey is the image people preferred) and the target also
  ranks the prey closer than the other image; it *transfers* when the target now finds the
  adversarial prey farther. Each column has its own denominator.
- ``official`` (the official notebook ``study_results_transferableAdv_attack.ipynb``): one fixed sample
  list (the samples whose stAdv variant passed on the source) and, per target, one denominator: the
  samples the target ranks like the humans (``int(d0 > d1) == judge``). A variant flips the target
  when the target's distance to the adversarial image exceeds its distance to the image it ranks
  farther. Neither a flip of the source by that variant nor the source's agreement with humans is
  required. See :func:`official_transfer_counts`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from lit_attacks.attacks.base import AttackModule, spatial_attack, spatial_attack_names
from lit_attacks.attacks.combined import pgd_snapshots, run_spatial
from lit_attacks.attacks.objectives import agrees_with_humans, choose_prey, perturbation_stats, quantize, to_uint8
from lit_attacks.attacks.output import Rows, ScoreOutput, as_list
from lit_attacks.metrics import check_images, create_metric
from lit_attacks.registry import TASKS


def official_transfer_counts(d0: Sequence[float], d1: Sequence[float], judge: Sequence[float],
                             d_adv: Dict[str, Sequence[float]]) -> Dict[str, Any]:
    """The official notebook's counts for one target metric over a fixed sample list.

    Args:
        d0, d1: the target's distances to p0 and p1 (N,).
        judge: the human judge (N,), 0 or 1 on the unanimous samples.
        d_adv: variant -> the target's distance to that variant's adversarial image (N,).

    Returns:
        {"samples": N, "accurate": samples with ``int(d0 > d1) == judge``, "flipped": variant -> accurate
        samples whose ``d_adv`` exceeds the distance of the image the target ranks farther}.
    """
    d0, d1, judge = (np.asarray(a, dtype=np.float64) for a in (d0, d1, judge))
    rank = (d0 > d1).astype(np.int64)
    accurate = rank == judge
    s_other = np.where(rank == 1, d0, d1)
    return {"samples": int(d0.size), "accurate": int(accurate.sum()),
            "flipped": {v: int((np.asarray(d, dtype=np.float64)[accurate] > s_other[accurate]).sum())
                        for v, d in d_adv.items()}}


def variant_names(spatial: Optional[Sequence[str]] = None, ks: Sequence[int] = (5, 10, 15, 20),
                  pgd_steps: Sequence[int] = (10, 20)) -> List[str]:
    """Variant names: the spatial attacks (default: every registered one), ``pgd<k>``, ``<spatial>_pgd<k>``."""
    spatial = spatial_attack_names() if spatial is None else list(spatial)
    return list(spatial) + [f"pgd{k}" for k in pgd_steps] + [f"{s}_pgd{k}" for s in spatial for k in ks]


PGD_STARTS = ("float", "saved")
PGD_CENTRES = ("prey", "start")  # the ball of spatial + PGD(k): around the clean prey, or around the spatial image


@dataclass(kw_only=True)
class TransferOutput(ScoreOutput):
    """The generator's batch output: the prey choice and, per variant, (B,) columns ``<variant>:<field>``
    (s_adv of the 8-bit image, flipped, rmse, pass, status) in ``variants``; uint8 images for the shards."""

    prey: Tensor
    s_other: Tensor
    agreed: Tensor
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    images: Optional[Dict[str, Tensor]] = None

    def columns(self) -> Dict[str, List[Any]]:
        cols = super().columns()
        cols.update(prey=as_list(self.prey), s_other=as_list(self.s_other), agreed=as_list(self.agreed))
        for v, fields in self.variants.items():
            cols.update({f"{v}:{k}": as_list(x) for k, x in fields.items()})
        return cols


@dataclass
class ScoredTransfer(Rows):
    """The target scorer's batch output: per sample the source's verdicts and the target's distances."""

    key: List[str]
    judge: Tensor
    prey: List[int]
    source_agreed: List[bool]
    s_other: Tensor
    s_prey: Tensor
    passed: Dict[str, List[bool]]
    s_adv: Dict[str, Tensor]

    def columns(self) -> Dict[str, List[Any]]:
        cols = {"key": list(self.key), "judge": as_list(self.judge), "prey": list(self.prey),
                "source_agreed": list(self.source_agreed),
                "s_other": as_list(self.s_other), "s_prey": as_list(self.s_prey),
                "target_agrees": as_list(self.s_prey < self.s_other)}
        for v, s in self.s_adv.items():
            cols.update({f"{v}:pass": list(self.passed[v]), f"{v}:s_adv": as_list(s),
                         f"{v}:transfers": as_list(s > self.s_other)})
        return cols


@TASKS.register("transfer_generate", what="adversarial variants on a source metric, with their images (Table 3)")
class TransferGenerator(AttackModule):
    """All transfer variants for each sample on the source ``metric``, as a :class:`TransferOutput`.

    Args:
        metric: the source metric.
        spatial: registered spatial attacks to run (default: all, i.e. flowadv and stadv).
        ks: PGD steps after each spatial attack.
        pgd_steps: PGD-alone variants (fixed steps from the prey).
        eps, alpha: PGD budget and step.
        rmse_max: imperceptibility bound on the RMSE (0-255) between prey and adversarial image.
        spatial_params: keyword arguments per spatial attack, e.g. ``{"flowadv": {"width": 32}}``.
        pgd_start: where spatial + PGD(k) starts: "float" (ours: the spatial attack's output as computed) or
            "saved" (the official create_transferable_stAdvPGD_samples.py: the spatial image as its saved 8-bit
            PNG, quantised with ``uint8``).
        pgd_centre: the l_inf ball (``eps``) of spatial + PGD(k): around the clean prey ("prey", the official
            script's ``x_orig``) or around the spatial image it starts from ("start", what the ICLR text's RMSE of
            FlowAdv + PGD(20) implies: docs/reproducing.md).
    """

    name = "transfer"

    def __init__(self, metric: str = "lpips_alex", spatial: Optional[Sequence[str]] = None,
                 ks: Sequence[int] = (5, 10, 15, 20), pgd_steps: Sequence[int] = (10, 20), eps: float = 0.03,
                 alpha: float = 0.001, rmse_max: float = 8.0,
                 spatial_params: Optional[Dict[str, Dict[str, Any]]] = None, pgd_start: str = "float",
                 pgd_centre: str = "prey", **options: Any) -> None:
        if pgd_centre not in PGD_CENTRES:
            raise ValueError(f"transfer: pgd_centre must be one of {', '.join(PGD_CENTRES)}, got {pgd_centre!r}")
        for name, params in (spatial_params or {}).items():
            if (params or {}).get("counting", "final") not in ("final", "paper") or \
                    (name != "flowadv" and "counting" in (params or {})):
                raise ValueError(f"transfer: spatial_params.{name}.counting: only flowadv counts by Algorithm 2 "
                                 f"('final' or 'paper'), got {params.get('counting')!r}")
        if pgd_start not in PGD_STARTS:
            raise ValueError(f"transfer: pgd_start must be one of {', '.join(PGD_STARTS)}, got {pgd_start!r}")
        spatial = spatial_attack_names() if spatial is None else list(spatial)
        for s in spatial:
            try:
                spatial_attack(s)
            except ValueError as e:
                raise ValueError(f"transfer: {e}") from None
        if rmse_max <= 0:
            raise ValueError(f"transfer: rmse_max must be > 0, got {rmse_max}")
        super().__init__(metric, **{"keep_images": True, **options})  # its shards need the images
        self.save_hyperparameters()
        self.spatial, self.ks, self.pgd_steps = spatial, list(ks), list(pgd_steps)
        self.eps, self.alpha, self.rmse_max, self.pgd_start = eps, alpha, rmse_max, pgd_start
        self.pgd_centre = pgd_centre
        self.params = {s: dict((spatial_params or {}).get(s, {})) for s in spatial}
        self.variants = variant_names(self.spatial, self.ks, self.pgd_steps)

    def _adversarial(self, bound, prey: Tensor, s_other: Tensor, keys: Sequence[str]):
        """Every variant's image, per-sample status and, where the attack decides it (FlowAdv by Algorithm 2), which
        samples it accepted."""
        advs: Dict[str, Tensor] = {}
        status: Dict[str, List[str]] = {}
        accepted: Dict[str, Tensor] = {}
        with torch.enable_grad():
            for k, x in pgd_snapshots(bound, prey, s_other, self.pgd_steps, None, self.eps, self.alpha).items():
                advs[f"pgd{k}"], status[f"pgd{k}"] = x, ["ok"] * len(keys)
            for s in self.spatial:
                params = dict(self.params[s])
                if params.pop("counting", "final") == "paper":  # Algorithm 2: only what it accepted passes
                    accepted[s] = params["success_out"] = torch.zeros(len(keys), dtype=torch.bool,
                                                                      device=prey.device)
                a0, _, _, st = run_spatial(s, bound, prey, s_other, keys, params)
                advs[s], status[s] = a0.detach(), st
                start = quantize(a0.detach().clamp(-1, 1), self.uint8) if self.pgd_start == "saved" else a0.detach()
                centre = start if self.pgd_centre == "start" else None
                for k, x in pgd_snapshots(bound, prey, s_other, self.ks, start, self.eps, self.alpha,
                                          centre=centre).items():
                    advs[f"{s}_pgd{k}"], status[f"{s}_pgd{k}"] = x, st
        return advs, status, accepted

    def _predict(self, batch: Dict[str, Any]) -> TransferOutput:
        keys, ref, prey, other, s0, s1, s_other, bound = self._score_batch(batch)
        advs, status, accepted = self._adversarial(bound, prey, s_other, keys)
        prey_idx = choose_prey(s0, s1)
        u8 = self.uint8
        # the clean images reach the target as read: rounding gives back the 8-bit values of the source PNGs
        # exactly (truncation, the official tensor2im, would move 63 of the 256 levels down by one); only the
        # adversarial images are quantised with ``uint8``
        images = {"ref": to_uint8(ref.cpu(), "round"), "other": to_uint8(other.cpu(), "round"),
                  "prey": to_uint8(prey.cpu(), "round")}
        variants = {}
        for v in self.variants:
            adv = advs[v].detach().clamp(-1, 1)
            with torch.no_grad():
                s8 = self.metric(ref, quantize(adv, u8), check=False)  # the saved 8-bit image
            self._finite(f"s_adv of {v}", s8, keys)
            rmse = perturbation_stats(quantize(prey, u8), quantize(adv, u8))["rmse"]  # 8-bit against 8-bit
            ok = torch.tensor([st == "ok" for st in status[v]], dtype=torch.bool, device=s8.device)
            if v in accepted:
                ok = ok & accepted[v].to(ok.device)
            flipped = (s8 > s_other) & ok
            variants[v] = {"s_adv": s8, "flipped": flipped, "rmse": rmse, "pass": flipped & (rmse <= self.rmse_max),
                           "status": status[v]}
            images[v] = to_uint8(adv.cpu(), u8)
        return TransferOutput(key=keys, category=list(batch["category"]), judge=batch["judge"], s0=s0, s1=s1,
                              prey=prey_idx, s_other=s_other,
                              agreed=agrees_with_humans(batch["judge"], prey_idx, s0 == s1),
                              variants=variants, images=images if self.keep_images else None)


@TASKS.register("transfer_score", what="a target metric's scores of stored adversarial variants (Table 3)")
class TransferScorer(pl.LightningModule):
    """Scores adversarial shards with a target metric: s(ref, other), s(ref, prey), s(ref, variant).

    Args:
        metric: the target metric.
        variants: the variants to score, in column order (the generator's ``variants``).
        pretrained, weights_dir: see :class:`lit_attacks.attacks.AttackModule`.
    """

    def __init__(self, metric: str = "l2", variants: Sequence[str] = (), pretrained: bool = True,
                 weights_dir: Optional[str] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.metric = create_metric(metric, pretrained=pretrained, weights_dir=weights_dir)
        self.variants = list(variants)

    @torch.no_grad()
    def predict_step(self, batch: Dict[str, Any], batch_idx: int = 0) -> ScoredTransfer:
        ref, other, prey = batch["ref"], batch["other"], batch["prey"]
        check_images(ref, other, f"transfer target {self.metric.name}", batch["key"][0])
        variants = self.variants or list(batch["adv"])
        missing = [v for v in variants if v not in batch["adv"]]
        if missing:
            raise KeyError(f"transfer target {self.metric.name}: the shards hold no images of {missing}")
        records = [json.loads(r) for r in batch["record"]]
        return ScoredTransfer(key=list(batch["key"]), judge=batch["judge"], prey=[int(r["prey"]) for r in records],
                              source_agreed=[bool(r["agreed"]) for r in records],
                              s_other=self.metric(ref, other, check=False), s_prey=self.metric(ref, prey, check=False),
                              passed={v: [bool(r.get(f"{v}:pass", False)) for r in records] for v in variants},
                              s_adv={v: self.metric(ref, batch["adv"][v], check=False) for v in variants})
