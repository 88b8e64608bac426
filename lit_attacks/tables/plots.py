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


def wrap(label: str, width: int = 18) -> str:
    """A tick label broken into lines of at most ``width`` characters (long names such as rlpips:<run>/<file>)."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False, break_long_words=True)) or label


def _save(fig, path: Path) -> Path:
    from lit_attacks.report import atomic_file

    try:
        with atomic_file(path) as tmp:  # through the results folder's guard
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
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
    ax.set_xticks(x, [wrap(m) for m in metrics], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("rank flips (% of unanimous samples)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("Rank flips per metric and attack")
    return _save(fig, path)


def rmse_histograms(cells: Dict[str, List[Dict[str, Any]]], path: Path) -> Optional[Path]:
    """One histogram per (attack, metric) cell of the RMSE (0-255) of its flipped samples, on one shared x range
    and shared bins, so the cells compare at a glance."""
    data = {name: [float(r["rmse"]) for r in recs if r.get("flipped") in (True, "True")]
            for name, recs in cells.items()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    hi = max(max(v) for v in data.values())
    bins = np.linspace(0, hi * 1.05 if hi > 0 else 1, 21)
    n = len(data)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows), squeeze=False, sharex=True)
    for ax, (name, vals) in zip(axes.flat, data.items()):
        ax.hist(vals, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_title(f"{wrap(name, 28)} (n={len(vals)})", fontsize=8)
        ax.set_xlabel("RMSE (0-255)", fontsize=8)
        ax.set_ylabel("flipped samples", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
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


def min_eps_curves(rows: Sequence[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Robust accuracy against the budget from the minimum-epsilon search, one panel per norm, one line per metric
    (rows: metric, norm, eps, robust_accuracy; eps on [0, 1] images, l_inf in 1/255)."""
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    if not norms:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(norms), figsize=(5.0 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        sub = [r for r in rows if r["norm"] == norm]
        for metric in dict.fromkeys(r["metric"] for r in sub):
            pts = sorted((r["eps"], 100 * r["robust_accuracy"]) for r in sub if r["metric"] == metric)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=metric)
        ax.set_xlabel("l_inf budget (1/255, images in [0, 1])" if norm == "linf" else "l_2 budget (images in [0, 1])")
        ax.set_ylabel("robust 2AFC accuracy (%)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Minimum-epsilon curves ({norm})")
    return _save(fig, path)


def example_grid(examples: Sequence[Dict[str, Any]], title: str, path: Path) -> Optional[Path]:
    """Rows of (ref, other, prey, adversarial prey, |adv - prey|) uint8 images; the captions give each image's
    distance to the reference, d(ref, .), with enough digits to tell a flip, and each one's category. The
    difference is the largest over the colour channels, drawn dark purple (0) to yellow (its largest value, stated
    in the caption in [-1, 1] units) on a framed panel, so a uniform l_inf perturbation does not vanish into the
    page."""
    if not examples:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(examples), 5, figsize=(8.2, 1.8 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        im = ex["images"]
        diff = np.abs(im["adv"].astype(np.float64) - im["prey"].astype(np.float64)).max(axis=2)
        top = diff.max()
        captions = [f"ref {ex['key'].split('/', 1)[-1]}", f"other {ex['s_other']:.6g}", f"prey {ex['s_prey']:.6g}",
                    f"adv {ex['s_adv']:.6g}" + (" flipped" if ex["flipped"] else ""),
                    f"|adv - prey|: 0 to {2 * top / 255:.3g}"]  # the key names the category
        shown = [im["ref"], im["other"], im["prey"], im["adv"], diff]
        for j, (ax, picture, cap) in enumerate(zip(row, shown, captions)):
            if j < 4:
                ax.imshow(picture, interpolation="nearest")
                ax.axis("off")
            else:  # dark = unchanged; a frame, so the panel reads as one even when it is uniform
                ax.imshow(picture, cmap="viridis", vmin=0, vmax=max(top, 1e-12), interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor("#444")
            ax.set_title(cap, fontsize=7)
    fig.suptitle(f"{title}: distances to the reference d(ref, .)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def transfer_heatmap(rows: Sequence[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Table 3 as a picture: per source, a grid target x attack of transfer rates (flipped / eligible)."""
    rows = [r for r in rows if r["eligible"]]
    if not rows:
        return None
    plt = _plt()
    sources = list(dict.fromkeys(r["source"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    fig, axes = plt.subplots(len(sources), 1, figsize=(1 + 0.62 * len(attacks), 1.2 + 0.45 * len(
        {r["target"] for r in rows}) * len(sources)), squeeze=False)
    for ax, src in zip(axes[:, 0], sources):
        sub = [r for r in rows if r["source"] == src]
        targets = list(dict.fromkeys(r["target"] for r in sub))
        grid = np.full((len(targets), len(attacks)), np.nan)
        for r in sub:
            grid[targets.index(r["target"]), attacks.index(r["attack"])] = 100 * r["flip_rate"]
        img = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w" if v < 60 else "k")
        ax.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(targets)), [wrap(t) for t in targets], fontsize=7)
        ax.set_title(f"transfer from {src} (% of eligible samples flipped)", fontsize=9)
        fig.colorbar(img, ax=ax, fraction=0.03)
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
