"""The official results of *Attacking Perceptual Similarity Metrics* and how ours compare with them.

Pure functions over rows (dicts): reading the official CSVs of ``abhijay9/attacking_perceptual_similarity_metrics``
(``results/whitebox_attack/lpipsAlex_pgd.csv``, ``results/transferableAdv_benchmark/*_transferableAdv.csv``),
mapping their sample names to our keys, and comparing per sample. Used by the ``reproduce`` table.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lit_attacks.configuration import ConfigError
from lit_attacks.datamodules.tree import key_from_judge_path
from lit_attacks.transfer import official_transfer_counts

# The transfer CSVs' metric -> our registry name computing the same statistic.
TRANSFER_METRICS = {"l2": "l2", "ssim": "ssim_official", "stlpipsAlex": "stlpips_alex"}
# The notebook's columns: variant label -> CSV column.
NOTEBOOK_COLUMNS = {"PGD10": "dPGD10", "PGD20": "dPGD20", "stAdv": "dstAdv", "stAdv+PGD10": "dstAdvPGD10",
                    "stAdv+PGD20": "dstAdvPGD20"}
# The stored output of results/study_results_transferableAdv_attack.ipynb (accurate, then flipped per column).
PUBLISHED_COUNTS = {"l2": (2099, (101, 174, 77, 189, 257)), "ssim": (2093, (237, 442, 78, 339, 540)),
                    "stlpipsAlex": (2470, (104, 198, 96, 205, 310))}
PGD_COLUMNS = ("path", "new_h", "orig_h", "i", "rmse", "d0", "d1", "di")


key_of_judge_path = key_from_judge_path  # ``val/cnn/judge/000123.npy`` -> ``val/cnn/000123``


def key_of_sample(sample: str, split: str = "val") -> str:
    """The transfer CSVs' ``<category>_<id>`` -> ``val/<category>/<id>``."""
    category, sep, stem = sample.rpartition("_")
    if not sep or not category or not stem:
        raise ConfigError(f"not a transfer sample name <category>_<id>: {sample!r}")
    return f"{split}/{category}/{stem}"


def read_key_list(path: str | Path, split: str = "val") -> List[str]:
    """A fixed sample list (e.g. the official Table 3 FlowAdv list), one sample per line in any of our key
    ``val/<category>/<id>``, the transfer CSVs' ``<category>_<id>`` or a judge path ``val/<category>/judge/<id>.npy``;
    blank lines and ``#`` comments are skipped. A line in none of these forms, or no sample at all, is a one-line
    error naming the file and line."""
    from lit_attacks.safe_files import read_text

    keys: List[str] = []
    text = read_text(Path(path).expanduser(), "transfer_keys", 64 << 20, ConfigError)
    for n, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        parts = item.split("/")
        try:
            if item.endswith(".npy"):
                keys.append(key_of_judge_path(item))
            elif len(parts) == 3 and all(parts):
                keys.append(item)
            else:
                keys.append(key_of_sample(item, split))
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"transfer_keys {path}, line {n}: {item!r} is not a sample key, sample name or judge "
                              f"path ({e})") from None
    if not keys:
        raise ConfigError(f"transfer_keys {path}: no sample listed")
    return keys


def read_rows(path: str | Path, required: Sequence[str]) -> List[Dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise ConfigError(f"{p}: not an official results CSV (missing columns {missing or list(required)})")
    return rows


def read_official_pgd(path: str | Path) -> Dict[str, Dict[str, float]]:
    """key -> {new_h, orig_h, i, rmse, d0, d1, di} of ``lpipsAlex_pgd.csv``."""
    return {key_of_judge_path(r["path"]): {c: float(r[c]) for c in PGD_COLUMNS[1:]}
            for r in read_rows(path, PGD_COLUMNS)}


def read_official_transfer(folder: str | Path) -> Dict[str, Dict[str, Dict[str, float]]]:
    """official metric name -> key -> {d0, d1, dPGD10, ...} of ``<metric>_transferableAdv.csv``."""
    out = {}
    for name in TRANSFER_METRICS:
        rows = read_rows(Path(folder) / f"{name}_transferableAdv.csv", ("sample", "d0", "d1"))
        out[name] = {key_of_sample(r["sample"]): {c: float(v) for c, v in r.items() if c != "sample"} for r in rows}
    return out


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Median, 95th percentile and maximum of absolute differences (nan when empty)."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    if a.size == 0:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def compare_pgd(ours: Sequence[Dict[str, Any]], official: Dict[str, Dict[str, float]], decimals: int = 3
                ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Per-sample agreement of our PGD (official counting) with the official CSV, and a summary.

    ``ours``: rows of ``samples/pgd-lpips_alex.csv`` (key, s0, s1, prey, flipped_official,
    iterations_official, rmse_official). Distances and RMSE are compared after rounding ours to the
    official CSV's ``decimals``; the raw differences are reported too.
    """
    mine = {r["key"]: r for r in ours}
    rows = []
    for key in sorted(set(mine) & set(official)):
        a, o = mine[key], official[key]
        flip_o = o["new_h"] != o["orig_h"]
        row = {"key": key, "prey": a["prey"], "prey_official": int(o["orig_h"]),
               "flipped": bool(a["flipped_official"]), "flipped_official": flip_o,
               "iterations": a["iterations_official"], "iterations_official": int(o["i"]),
               "d0": a["s0"], "d0_official": o["d0"], "d1": a["s1"], "d1_official": o["d1"],
               "rmse": a["rmse_official"], "rmse_official": o["rmse"]}
        row["agree"] = (row["prey"] == row["prey_official"] and row["flipped"] == flip_o
                        and row["iterations"] == row["iterations_official"])
        rows.append(row)
    n = len(rows)
    share = lambda hits: sum(hits) / n if n else float("nan")  # noqa: E731
    summary = {"official_samples": len(official), "our_samples": len(mine), "matched": n,
               "missing": len(set(official) - set(mine)),
               "prey_agreement": share(r["prey"] == r["prey_official"] for r in rows),
               "flip_agreement": share(r["flipped"] == r["flipped_official"] for r in rows),
               "iteration_agreement": share(r["iterations"] == r["iterations_official"] for r in rows),
               "all_agree": share(r["agree"] for r in rows),
               "flipped": sum(r["flipped"] for r in rows), "flipped_official": sum(r["flipped_official"] for r in rows),
               "d0": spread([r["d0"] - r["d0_official"] for r in rows]),
               "d1": spread([r["d1"] - r["d1_official"] for r in rows]),
               "d_rounded_equal": share(round(r["d0"], decimals) == r["d0_official"]
                                        and round(r["d1"], decimals) == r["d1_official"] for r in rows),
               "rmse": spread([r["rmse"] - r["rmse_official"] for r in rows]),
               "disagreeing": [r["key"] for r in rows if not r["agree"]]}
    return rows, summary


def compare_scores(ours: Sequence[Dict[str, Any]], official: Dict[str, Dict[str, float]]
                   ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Per-sample clean distances (our ``scores/<metric>.csv`` rows) against an official transfer CSV."""
    mine = {r["key"]: r for r in ours}
    rows = [{"key": k, "judge": mine[k]["judge"], "d0": mine[k]["s0"], "d0_official": official[k]["d0"],
             "d1": mine[k]["s1"], "d1_official": official[k]["d1"],
             "rank_agrees": (mine[k]["s0"] > mine[k]["s1"]) == (official[k]["d0"] > official[k]["d1"])}
            for k in sorted(set(mine) & set(official))]
    n = len(rows)
    summary = {"official_samples": len(official), "matched": n, "missing": len(set(official) - set(mine)),
               "d0": spread([r["d0"] - r["d0_official"] for r in rows]),
               "d1": spread([r["d1"] - r["d1_official"] for r in rows]),
               "rank_agreement": sum(r["rank_agrees"] for r in rows) / n if n else float("nan"),
               "disagreeing": [r["key"] for r in rows if not r["rank_agrees"]]}
    return rows, summary


def notebook_counts(official: Dict[str, Dict[str, float]], judges: Dict[str, float],
                    ours: Optional[Dict[str, Tuple[float, float]]] = None) -> Optional[Dict[str, Any]]:
    """The notebook's accurate / flipped counts over the samples of an official transfer CSV that have a judge;
    with ``ours`` (key -> our d0, d1) the clean distances are ours and the adversarial ones the official.
    None when a sample of the CSV has no judge (the counts would not be the notebook's)."""
    keys = sorted(official)
    if any(k not in judges for k in keys):
        return None
    d0 = [ours[k][0] if ours else official[k]["d0"] for k in keys]
    d1 = [ours[k][1] if ours else official[k]["d1"] for k in keys]
    return official_transfer_counts(d0, d1, [judges[k] for k in keys],
                                    {v: [official[k][c] for k in keys] for v, c in NOTEBOOK_COLUMNS.items()})
