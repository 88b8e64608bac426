"""Pure functions for Table 1: the 2AFC score and agreement with humans."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Sequence

import numpy as np


def two_afc(s0: np.ndarray, s1: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """Per-sample 2AFC score (paper appendix A.1): (s0<s1)(1-p) + (s1<s0)p + 0.5 (s0==s1).

    ``p`` (judge) is the fraction of people who preferred p1; s0, s1 are distances (smaller = closer).
    """
    s0, s1, p = (np.asarray(a, dtype=np.float64) for a in (s0, s1, judge))
    return (s0 < s1) * (1 - p) + (s1 < s0) * p + 0.5 * (s0 == s1)


def table1_rows(metric: str, records: Sequence[Dict], categories_order: Iterable[str] = ()) -> List[Dict]:
    """Rows (metric, category, samples, unanimous, two_afc, accuracy) per category plus ``all``.

    ``two_afc`` averages over all samples; ``accuracy`` is the same per-sample score over the
    unanimous samples (judge 0 or 1), i.e. the fraction the metric ranks like the humans (ties 1/2).
    """
    by_cat: Dict[str, List[Dict]] = OrderedDict((c, []) for c in categories_order)
    for r in records:
        by_cat.setdefault(r["category"], []).append(r)
    rows = []
    groups = [(c, rs) for c, rs in by_cat.items() if rs] + [("all", list(records))]
    for cat, rs in groups:
        s0 = np.array([r["s0"] for r in rs])
        s1 = np.array([r["s1"] for r in rs])
        p = np.array([r["judge"] for r in rs])
        score = two_afc(s0, s1, p)
        unan = (p == 0) | (p == 1)
        rows.append({"metric": metric, "category": cat, "samples": len(rs), "unanimous": int(unan.sum()),
                     "two_afc": float(score.mean()) if len(rs) else float("nan"),
                     "accuracy": float(score[unan].mean()) if unan.any() else float("nan")})
    return rows


TABLE2_COLUMNS = ["metric", "attack", "group", "total", "flipped", "flip_rate", "flipped_uint8", "eps_mean",
                  "rmse_mean", "rmse_std", "psnr_mean", "queries_mean", "iterations_mean",
                  "frac>0.001", "frac>0.005", "frac>0.01", "frac>0.02", "frac>0.03", "frac>0.05", "frac>0.1"]


def table2_rows(metric: str, attack: str, results: Dict[str, Dict[str, float]]) -> List[Dict]:
    """Table 2 rows (agreed, disagreed, all) from :class:`callbacks.attack_metrics.AttackMetrics` results."""
    return [{"metric": metric, "attack": attack, "group": g, **results[g]} for g in ("agreed", "disagreed", "all")]
