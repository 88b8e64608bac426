"""The table contract (lit_attacks.tables.base.Table), run over every registered table: a new table gets these
tests without writing any.

Each table runs through bench.py with its declared ``example`` config on a tiny built-in set (random backbones),
then the same command runs again. Checked, per table:
- the example turns the table on (its plan has cells) and the run writes every file the table declares;
- every file of every cell record exists with the recorded hash, and the results folder's manifest lists them;
- the rerun loads every cell (no cell record is rewritten) and its rows, aggregated from the per-sample records
  read back from the CSVs, equal the first run's rows, aggregated from the records in memory;
- the table's CSV holds exactly its rows of summary.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

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
