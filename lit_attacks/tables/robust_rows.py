"""What the robust table and the leaderboard share: the ``robust`` settings, radius units, the worst-case and
minimum-epsilon parameters, and typed per-metric records of the robust cells (keyed by norm and radius, not by display
labels). Not a table: ``robust.py`` and ``leaderboard.py`` register the tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from lit_attacks.attacks.ensemble import STANDARD
from lit_attacks.attacks.registry import ATTACKS

DEFAULTS: Dict[str, Any] = {
    "linf": [2, 4, 8], "l2": [0.5, 1.0, 2.0], "target": "prey", "ensemble": None, "samples": "unanimous",
    "min_eps": {"attack": "apgd", "params": {}, "linf_max": 16, "l2_max": 4.0, "bisections": 8},
    "certify": {"sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "radii": [0.125, 0.25, 0.5]},
    "lipschitz": None,  # LipSim's certificate: {radii_255: [36, 72, 108]} (l_2 on [0, 1] images, in 1/255)
}
MIN_EPS_KEYS = ("attack", "params", "linf_max", "l2_max", "bisections")
CERTIFY_KEYS = ("sigma", "n0", "n", "alpha", "radii", "chunk", "max_images")
LIPSCHITZ_KEYS = ("radii_255",)
CURVE_POINTS = 41
SAMPLES = ("unanimous", "all")  # the samples evaluated: the unanimous ones, or all (majority label, judge > 0.5)


def settings(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The ``robust`` mapping with defaults filled in (None: the table is off)."""
    r = cfg.get("robust")
    if r is None:
        return {}
    out = {**DEFAULTS, **r}
    for key in ("min_eps", "certify", "lipschitz"):
        if key in r and r[key] is not None and isinstance(r[key], dict):
            out[key] = {**(DEFAULTS[key] or {}), **r[key]}
    return out


def radius_label(norm: str, r: float) -> str:
    return f"linf {r:g}/255" if norm == "linf" else f"l2 {r:g}"


def to_attacked(norm: str, r: float) -> float:
    """A radius on [0, 1] images (l_inf in 1/255) -> the budget on the [-1, 1] images the attacks see."""
    return 2 * r / 255 if norm == "linf" else 2 * r


def curve(agreed: Sequence[bool], eps: Sequence[float], grid: Sequence[float]) -> List[float]:
    """Robust accuracy at each budget of ``grid``: agreed and the minimum flipping eps larger (nan: never flipped)."""
    n = len(agreed)
    return [sum(a and not (e <= g) for a, e in zip(agreed, eps)) / n if n else math.nan for g in grid]


def min_eps_summary(agreed: Sequence[bool], eps: Sequence[float], ok: Sequence[bool], norm: str,
                    eps_max: float) -> Dict[str, Any]:
    """From each sample's minimum flipping eps (on the attacked [-1, 1] images; nan: never flipped): the robust
    accuracy curve on ``CURVE_POINTS`` budgets in [0, eps_max] (table units), its area divided by ``eps_max`` and
    the median eps of the agreed samples that flipped. A failed sample (not ok) is never robust."""
    scale = 255 / 2 if norm == "linf" else 0.5  # back to the radius units of the table
    eps = [e * scale if o else -math.inf for e, o in zip(eps, ok)]
    grid = np.linspace(0, eps_max, CURVE_POINTS).tolist()
    acc = curve(agreed, eps, grid)
    flipped = [e for a, e in zip(agreed, eps) if a and math.isfinite(e)]
    return {"grid": grid, "curve": acc, "auc": float(np.trapezoid(acc, grid) / eps_max),
            "median": float(np.median(flipped)) if flipped else math.nan}


def worst_case_params(s: Dict[str, Any], norm: str, r: float) -> Dict[str, Any]:
    """The worst_case parameters at radius ``r``. The default ensemble keeps the attacks that can perturb the
    target (Square perturbs one image: with target "both" the default is APGD-CE and APGD-margin)."""
    ens = s["ensemble"] if s["ensemble"] is not None else \
        [dict(e) for e in STANDARD if s["target"] in ATTACKS.get(e["attack"]).targets]
    return {"eps": to_attacked(norm, r), "norm": norm, "attacks": ens, "target": s["target"]}

def min_eps_params(s: Dict[str, Any], norm: str) -> Dict[str, Any]:
    m = s["min_eps"]
    return {"attack": m["attack"], "params": dict(m["params"] or {}), "norm": norm, "target": s["target"],
            "eps_max": to_attacked(norm, m[f"{norm}_max"]), "bisections": m["bisections"]}


EXAMPLE = {"metrics": ["l2"], "attacks": {}, "robust": {
    "linf": [8], "l2": [], "ensemble": [{"attack": "apgd", "params": {"steps": 3}}],
    "min_eps": {"attack": "apgd", "params": {"steps": 3}, "linf_max": 16, "l2_max": 4.0, "bisections": 2},
    "certify": {"sigma": 0.25, "n0": 4, "n": 16, "alpha": 0.01, "radii": [0.05]}}}  # a small config of the table


@dataclass
class RobustRecord:
    """What the robust cells of one metric found, by typed keys: robust accuracy per (norm, radius in the table's
    units), area under the curve and median minimum epsilon per norm, certified accuracy per l_2 radius (0: clean)."""

    label: str
    samples: int = 0
    clean: float = math.nan
    failed: int = 0
    attacked: bool = False  # an attack cell of the metric finished (samples and clean are known)
    robust: Dict[Tuple[str, float], float] = field(default_factory=dict)
    auc: Dict[str, float] = field(default_factory=dict)
    median_min_eps: Dict[str, float] = field(default_factory=dict)
    curves: Dict[str, Tuple[List[float], List[float]]] = field(default_factory=dict)
    certified: Dict[float, float] = field(default_factory=dict)  # l_2 radius ([0, 1] units; 0: clean) -> accuracy
    lipschitz_clean: float = math.nan  # LipSim's accuracy (its argmax: a tie predicts p0)
    lipschitz: Dict[float, Tuple[float, float]] = field(default_factory=dict)  # radius in 1/255 -> (LipSim's, sound)


def robust_records(done: Iterable[Tuple[Any, Dict[str, Any]]]) -> Dict[str, RobustRecord]:
    """metric -> its :class:`RobustRecord`, from the robust cells' (cell, payload): the flip statistics of each
    attack cell (robust = agreed and neither flipped nor failed), the gathered minimum epsilons and certified radii."""
    out: Dict[str, RobustRecord] = {}
    for cell, payload in done:
        info = cell.info
        rec = out.setdefault(info["metric"], RobustRecord(payload["label"]))
        if info["kind"] == "certify":
            rec.certified.update({float(c["radius"]): c["accuracy"] for c in payload["certified"]})
            continue
        if info["kind"] == "lipschitz":
            lip = payload["lipschitz"]
            rec.lipschitz_clean = lip["clean"]
            rec.lipschitz.update({float(c["radius_255"]): (c["lipsim"], c["sound"]) for c in lip["certified"]})
            if not rec.attacked:
                rec.samples = lip["samples"]
            continue
        res = payload["results"]
        n, agreed = res["all"]["total"], res["agreed"]["total"]
        rec.samples, rec.clean, rec.attacked = n, (agreed / n if n else math.nan), True
        rec.failed = max(rec.failed, res["all"]["failed"])
        if info["kind"] == "worst_case":
            robust = agreed - res["agreed"]["flipped"] - res["agreed"]["failed"]  # a flip is never a failure
            rec.robust[info["norm"], float(info["radius"])] = robust / n if n else math.nan
        else:
            m = payload["min_eps"]
            rec.auc[info["norm"]], rec.median_min_eps[info["norm"]] = m["auc"], m["median"]
            rec.curves[info["norm"]] = (m["grid"], m["curve"])
    return out


def display_row(rec: RobustRecord) -> Dict[str, Any]:
    """The robust table's row of a record, with its display labels (``linf 2/255``, ``certified l2 0.25``)."""
    row: Dict[str, Any] = {"metric": rec.label, "failed": rec.failed}
    if rec.attacked or rec.lipschitz:
        row["samples"] = rec.samples
    if rec.attacked:
        row["clean"] = rec.clean
    row.update({radius_label(norm, r): v for (norm, r), v in rec.robust.items()})
    for norm in rec.auc:
        row[f"auc {norm}"], row[f"median min eps {norm}"] = rec.auc[norm], rec.median_min_eps[norm]
    if rec.certified:
        row["certified clean"] = rec.certified[0.0]
        row.update({f"certified l2 {r:g}": v for r, v in rec.certified.items() if r != 0.0})
    if rec.lipschitz:
        row["lipsim clean"] = rec.lipschitz_clean
        for r, (lipsim, sound) in rec.lipschitz.items():
            row[f"lipsim certified l2 {r:g}/255"], row[f"sound certified l2 {r:g}/255"] = lipsim, sound
    return row
