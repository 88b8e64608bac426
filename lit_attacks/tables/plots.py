"""Matplotlib figures of a bench run: flip-rate bars, RMSE histograms, robustness curves, example grids.

Each function writes one PNG and returns its path (None when there is nothing to draw).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)
    return path


def flip_rate_bars(rows2: Sequence[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Grouped bars: x = metric, one bar per attack, height = flip rate over all unanimous samples."""
    rows = [r for r in rows2 if r["group"] == "all"]
    if not rows:
        return None
    plt = _plt()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    rate = {(r["metric"], r["attack"]): 100 * r["flip_rate"] for r in rows}
    width = 0.8 / len(attacks)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(metrics) * max(1, len(attacks)) / 2), 3.6))
    x = np.arange(len(metrics))
    for i, a in enumerate(attacks):
        h = [rate.get((m, a), np.nan) for m in metrics]
        bars = ax.bar(x + (i - (len(attacks) - 1) / 2) * width, h, width, label=a)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, metrics, rotation=20, ha="right")
    ax.set_ylabel("rank flips (% of unanimous samples)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("Rank flips per metric and attack")
    return _save(fig, path)


def rmse_histograms(cells: Dict[str, List[Dict[str, Any]]], path: Path) -> Optional[Path]:
    """One histogram per (attack, metric) cell of the RMSE (0-255) of its flipped samples."""
    data = {name: [float(r["rmse"]) for r in recs if r.get("flipped") in (True, "True")]
            for name, recs in cells.items()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    plt = _plt()
    n = len(data)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False)
    for ax, (name, vals) in zip(axes.flat, data.items()):
        ax.hist(vals, bins=20, color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} (n={len(vals)})", fontsize=8)
        ax.set_xlabel("RMSE (0-255)", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("RMSE of successful attacks", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def robustness_curves(rows: Sequence[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Flip rate against the PGD budget epsilon, one line per metric (rows: metric, eps, flip_rate)."""
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for metric in dict.fromkeys(r["metric"] for r in rows):
        pts = sorted((r["eps"], 100 * r["flip_rate"]) for r in rows if r["metric"] == metric)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=metric)
    ax.set_xlabel("PGD l_inf budget epsilon (images in [-1, 1])")
    ax.set_ylabel("rank flips (% of unanimous samples)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Robustness curves (PGD, alpha = eps / steps)")
    return _save(fig, path)


def example_grid(examples: Sequence[Dict[str, Any]], title: str, path: Path) -> Optional[Path]:
    """Rows of (ref, other, prey, adversarial prey) uint8 images with their distances to ref."""
    if not examples:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(examples), 4, figsize=(6.4, 1.75 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        im = ex["images"]
        captions = [f"ref {ex['key'][-18:]}", f"other {ex['s_other']:.4f}", f"prey {ex['s_prey']:.4f}",
                    f"adv {ex['s_adv']:.4f}" + (" flipped" if ex["flipped"] else "")]
        for ax, name, cap in zip(row, ("ref", "other", "prey", "adv"), captions):
            ax.imshow(im[name], interpolation="nearest")
            ax.set_title(cap, fontsize=7)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def difference_histograms(diffs: Dict[str, Sequence[float]], path: Path) -> Optional[Path]:
    """One panel per comparison: histogram of |ours - official| on a log scale (exact zeros counted apart)."""
    diffs = {k: np.abs(np.asarray(v, dtype=np.float64)) for k, v in diffs.items() if len(v)}
    if not diffs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(diffs), figsize=(3.6 * len(diffs), 2.8), squeeze=False)
    for ax, (name, d) in zip(axes[0], diffs.items()):
        nz = d[d > 0]
        if nz.size:
            lo, hi = np.log10(nz.min()), np.log10(nz.max())
            ax.hist(nz, bins=np.logspace(lo - 0.1, hi + 0.1, 25), color="tab:blue", alpha=0.85)
            ax.set_xscale("log")
        ax.set_title(f"{name}\n{(d == 0).sum()} of {d.size} exactly equal", fontsize=8)
        ax.set_xlabel("|ours - official|", fontsize=8)
        ax.set_ylabel("values", fontsize=8)
    fig.suptitle("Differences from the official per-sample results", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
