"""The table contract (lit_attacks.tables.base.Table), run over every registered table: a new table gets these
tests without writing any.

Each table runs through bench.py with its declared ``example`` config on a tiny built-in set (random backbones),
then the same command runs again. Checked, per table:
- the example turns the table on (its plan has cells) and the run writes every file the table declares;
- every file of every cell record exists with the recorded hash, and the results folder's manifest lists them;
- its rows (aggregated in memory by torchmetrics during the run) equal a plain recomputation from the per-sample
  CSVs it saved (:data:`REFERENCES`, numpy and Python over the CSV text; a new table adds its own there);
- the rerun loads every cell (no cell record is rewritten) and gives the same rows;
- the table's CSV holds exactly its rows of summary.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

import bench
from lit_attacks.bench.folder import MANIFEST
from lit_attacks.datamodules.shards import sha256
from lit_attacks.report import read_csv
from lit_attacks.tables import TABLES

from conftest import shared_file
from helpers import fake_official, official_looking_tree

BASE = {"data": None, "builtin_n": 2, "seed": 0, "pretrained": False, "wandb": "disabled", "batch_size": 8,
        "examples": 2, "sweep": None}
SLOW = {"table3", "robust", "reproduce"}  # FlowAdv / stAdv generation, the attack ensemble, two official runs


def _b(v: str) -> bool:
    return v == "True"


def _two_afc(out: Path, cfg) -> list:
    rows = []
    for metric in cfg["metrics"]:
        recs = read_csv(out / "scores" / f"{metric}.csv")
        for cat in sorted({r["category"] for r in recs}) + ["all"]:
            rs = [r for r in recs if cat in ("all", r["category"])]
            s0, s1, p = (np.array([float(r[k]) for r in rs]) for k in ("s0", "s1", "judge"))
            score = (s0 < s1) * (1 - p) + (s1 < s0) * p + 0.5 * (s0 == s1)
            unan = (p == 0) | (p == 1)
            rows.append({"category": cat, "samples": len(rs), "unanimous": int(unan.sum()), "two_afc": score.mean(),
                         "accuracy": score[unan].mean()})
    return rows


def _flips(recs: list) -> dict:
    flipped = [r for r in recs if _b(r["flipped"])]
    return {"total": len(recs), "flipped": len(flipped), "flip_rate": len(flipped) / len(recs) if recs else math.nan,
            "flipped_uint8": sum(_b(r["flipped_uint8"]) for r in recs),
            "failed": sum(r["status"] != "ok" for r in recs),
            "rmse_mean": float(np.mean([float(r["rmse"]) for r in flipped])) if flipped else math.nan}


def _attack_table(folder: str, key: str):
    def reference(out: Path, cfg) -> list:
        rows = []
        for metric in cfg["metrics"]:
            for attack in cfg[key]:
                recs = read_csv(out / folder / f"{attack}-{metric}.csv")
                groups = {"agreed": [r for r in recs if _b(r["agreed"])],
                          "disagreed": [r for r in recs if not _b(r["agreed"]) and not _b(r["tied"])],
                          "tied": [r for r in recs if _b(r["tied"])], "all": recs}
                rows += [{"attack": attack, "group": g, **_flips(rs)} for g, rs in groups.items()]
        return rows
    return reference


def _sweep(out: Path, cfg) -> list:
    return [{"eps": eps, **{k: v for k, v in _flips(read_csv(out / "samples" / "sweep" /
                                                             f"pgd-eps{eps:.4f}-{metric}.csv")).items()
                             if k != "failed"}}
            for metric in cfg["metrics"] for eps in cfg["sweep"]["eps"]]


def _robust(out: Path, cfg) -> list:
    rows = []
    for metric in cfg["metrics"]:
        row = {}
        for r in cfg["robust"]["linf"]:
            recs = read_csv(out / "samples" / "robust" / f"linf-{r:g}-{metric}.csv")
            row["samples"] = len(recs)
            row["clean"] = sum(_b(x["agreed"]) for x in recs) / len(recs)
            row[f"linf {r:g}/255"] = sum(_b(x["agreed"]) and x["status"] == "ok" and not _b(x["flipped"])
                                         for x in recs) / len(recs)
        for norm in ("linf", "l2"):
            recs = read_csv(out / "samples" / "robust" / f"min_eps-{norm}-{metric}.csv")
            scale = 255 / 2 if norm == "linf" else 0.5
            eps = [float(x["eps"]) * scale if x["status"] == "ok" else -math.inf for x in recs]
            flipped = [e for x, e in zip(recs, eps) if _b(x["agreed"]) and math.isfinite(e)]
            row[f"median min eps {norm}"] = float(np.median(flipped)) if flipped else math.nan
        recs = read_csv(out / "samples" / "robust" / f"certify-{metric}.csv")
        for rad in [0.0] + cfg["robust"]["certify"]["radii"]:
            name = "certified clean" if rad == 0 else f"certified l2 {rad:g}"
            row[name] = sum(_b(x["correct"]) and float(x["radius"]) / 2 >= rad for x in recs) / len(recs)
        rows.append(row)
    return rows


def _leaderboard(out: Path, cfg) -> list:
    """The entry of each metric and its sanity flags, recounted from the robust and gradient-check CSVs."""
    rows = []
    for metric in cfg["metrics"]:
        worst = [x for norm in ("linf", "l2") for r in cfg["robust"][norm]
                 for x in read_csv(out / "samples" / "robust" / f"{norm}-{r:g}-{metric}.csv")]
        grads = read_csv(out / "samples" / "leaderboard" / f"gradients-{metric}.csv")
        flags = {"black_box_beat_white_box": any(x["flipped_by"] == "square" for x in worst),
                 "zero_or_nonfinite_gradients": any(x["grad_status"] != "ok" for x in grads),
                 "stochastic_without_eot": False,  # the example's metrics are deterministic
                 "flip_lost_in_uint8": any(_b(x["flipped"]) and not _b(x["flipped_uint8"]) for x in worst)}
        entry = f"leaderboard/builtin-{cfg['builtin']}/{cfg['leaderboard']['protocol']}/{metric}.json"
        assert (out / entry).is_file(), entry
        rows.append({"entry": entry, "flags": ", ".join(k for k, v in flags.items() if v) or "none"})
    return rows


def _table3(out: Path, cfg) -> list:
    from lit_attacks.tables.table3 import table3_rows  # its counting is checked by a plain count in test_official

    rows = []
    for src in cfg["source"]:
        variants = None
        for target in cfg["metrics"]:
            recs = read_csv(out / "transfer" / f"{src}-to-{target}.csv")
            typed = [{k: (_b(v) if v in ("True", "False") else float(v) if _number(v) else v) for k, v in r.items()}
                     for r in recs]
            variants = [c[:-len(":pass")] for c in recs[0] if c.endswith(":pass")]
            rows += [{k: v for k, v in r.items() if k != "target"}
                     for r in table3_rows(src, target, typed, variants, cfg["transfer_counting"])]
    return rows


def _number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _reproduce(out: Path, cfg) -> list:
    recs = read_csv(out / "reproduce" / "pgd-lpips_alex.csv")
    return [{"check": "PGD on lpips_alex", "matched": len(recs)}] + [
        {"matched": len(read_csv(out / "reproduce" / f"transfer-{name}.csv"))} for name in ("l2", "ssim", "stlpipsAlex")]


# table name -> its rows recomputed from the per-sample CSVs (only the columns given are compared, in row order)
REFERENCES = {"table1": _two_afc, "table2": _attack_table("samples", "attacks"),
              "reverse": _attack_table("samples/reverse", "reverse"), "sweep": _sweep, "robust": _robust,
              "table3": _table3, "reproduce": _reproduce, "leaderboard": _leaderboard}


def _close(a, b) -> bool:
    a, b = (math.nan if v is None else v for v in (a, b))  # summary.json writes nan as null
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _config(tmp_path: Path, name: str, extra=None) -> Path:
    cfg = {**BASE, "name": f"contract_{name}", **TABLES.get(name).example, **(extra or {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, out: Path, extra=()) -> dict:
    assert bench.main(["--config", str(config), "--out", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _records(out: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))}


def _prepare(name: str, tmp_path: Path, config: Path, out: Path) -> list:
    """Inputs a table needs besides its example config: reproduce compares the run with results in the official
    format, here written from a first run of the same config on data at official keys."""
    if name != "reproduce":
        return []
    official_looking_tree(tmp_path / "tree", shared_file("bapps/bapps_clearWinner_subset.npy"))
    _run(config, out, ["--data", str(tmp_path / "tree")])
    fake_official(out, tmp_path / "official")
    return ["--data", str(tmp_path / "tree"), "--official-pgd", str(tmp_path / "official" / "lpipsAlex_pgd.csv"),
            "--official-transfer", str(tmp_path / "official")]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in TABLES.names()])
def test_every_table_keeps_the_contract(name, tmp_path):
    table = TABLES.get(name)
    config, out = _config(tmp_path, name), tmp_path / "run"
    extra = _prepare(name, tmp_path, config, out)
    cfg = bench.resolve_config(bench.parse_args(["--config", str(config), *extra]))
    assert table.plan(cfg).cells > 0, f"{name}: its example config does not turn it on"

    first = _run(config, out, extra)
    rows = first[name]
    assert rows, f"{name}: no rows"
    assert name in REFERENCES, f"{name}: add a recomputation of its rows from its per-sample CSVs to REFERENCES"
    expected = REFERENCES[name](out, first["config"])
    assert len(expected) == len(rows), f"{name}: {len(rows)} rows, the per-sample CSVs give {len(expected)}"
    for got, want in zip(rows, expected):
        bad = {k: (got.get(k), v) for k, v in want.items() if not _close(got.get(k), v)}
        assert not bad, f"{name}: row {got} differs from the per-sample CSVs in {bad}"
    for rel in table.files:
        assert (out / rel).is_file(), f"{name} declares {rel} but did not write it"
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    records = _records(out)
    for record in records.values():
        for rel, digest in record["files"].items():
            assert sha256(out / rel) == digest and rel in manifest, rel
    if f"{name}.csv" in table.files:
        csv_rows, key = read_csv(out / f"{name}.csv"), next(iter(rows[0]))
        assert [r[key] for r in csv_rows] == [str(r[key]) for r in rows], f"{name}.csv and summary.json differ"

    second = _run(config, out, extra)
    assert _records(out) == records, f"{name}: the rerun recomputed a cell instead of loading it"
    assert _same(second[name], rows), f"{name}: rows recomputed from the saved records differ from the first run's"
    assert all(second[k] == first[k] for k in ("metrics", "data"))
