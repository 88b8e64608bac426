"""Architecture step 3: work done once per run and process, the Python API in-process, tables independent.

Counted in a real bench run of the quick preset (small built-in set): each metric is built once, each weights file
read once (as many reads as building every metric once on its own), one Trainer, the shard index read and the
shards verified once.
"""
from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

import lit_attacks.metrics as metrics_pkg  # first: the package points matplotlib's state at the cache
import pytorch_lightning as pl
import torch
from lit_attacks.datamodules import shards
from lit_attacks.tables import TABLES

ROOT = Path(__file__).resolve().parents[1]


def _count_calls(monkeypatch, owner, name: str, counts: collections.Counter, key=None):
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[key(*args, **kwargs) if key else name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def _weights_reads_of_one_build_each(names) -> int:
    """torch.load calls of building each metric once, outside any pool: the reference count."""
    reads = 0
    original = torch.load

    def counted(*args, **kwargs):
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    torch.load = counted
    try:
        for n in names:
            metrics_pkg.create_metric(n)
    finally:
        torch.load = original
    return reads


def test_a_quick_run_builds_each_metric_once_with_one_trainer_and_reads_the_index_once(tmp_path, monkeypatch):
    import bench

    monkeypatch.setattr(shards, "_INDEXES", {})  # nothing remembered from earlier tests of this process
    monkeypatch.setattr(shards, "_VERIFIED", {})
    counts: collections.Counter = collections.Counter()
    _count_calls(monkeypatch, metrics_pkg, "_build", counts, key=lambda name, *a, **k: f"build {name}")
    _count_calls(monkeypatch, torch, "load", counts, key=lambda *a, **k: "torch.load")
    _count_calls(monkeypatch, shards, "_checked_index", counts)
    _count_calls(monkeypatch, shards, "_verify", counts)
    original_init = pl.Trainer.__init__

    def init(self, *args, **kwargs):
        counts["Trainer"] += 1
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", init)
    out = tmp_path / "quick"
    assert bench.main(["--config", "quick", "--builtin-n", "3", "--out", str(out), "--quiet", "--wandb",
                       "disabled"]) == 0
    names = ["l2", "ssim", "lpips_alex"]
    assert {k: v for k, v in counts.items() if k.startswith("build")} == {f"build {n}": 1 for n in names}
    assert counts["Trainer"] == 1
    assert counts["_checked_index"] == 1 and counts["_verify"] == 1
    assert counts["torch.load"] == _weights_reads_of_one_build_each(names) > 0
    cells = list((out / "cells").glob("*.json"))
    assert len(cells) == 24  # 3 scores, 6 attack cells, 15 sweep points: all of them ran through that one Trainer


def test_a_metric_in_the_pool_is_shared_and_never_converted_in_place():
    with metrics_pkg.metric_pool():
        a = metrics_pkg.create_metric("lpips_alex")
        b = metrics_pkg.create_metric("lpips_alex")
        c = metrics_pkg.create_metric("lpips_alex", dtype=torch.float64)
        assert a is b and c is not a
        assert {p.dtype for p in a.parameters()} == {torch.float32}
        assert {p.dtype for p in c.parameters()} == {torch.float64}
    assert metrics_pkg.create_metric("lpips_alex") is not a  # outside a pool: a new one each call


def test_batch_invariant_scoring_leaves_the_shared_metric_in_float32():
    from lit_attacks.scoring import ScoreModule

    g = torch.Generator().manual_seed(0)
    batch = {"key": ["val/cnn/0", "val/cnn/1"], "category": ["cnn"] * 2, "judge": torch.tensor([0.0, 1.0]),
             **{k: torch.rand(2, 3, 64, 64, generator=g) * 2 - 1 for k in ("ref", "p0", "p1")}}
    with metrics_pkg.metric_pool():
        plain = ScoreModule("lpips_alex")
        exact = ScoreModule("lpips_alex", batch_invariant=True)
        out = exact.predict_step(batch)
        assert out.s0.dtype == torch.float64
        assert {p.dtype for p in plain.metric.parameters()} == {torch.float32}
        ref = plain.predict_step(batch)
        assert torch.allclose(ref.s0.double(), out.s0, rtol=1e-5, atol=1e-6)


def test_the_python_api_runs_bench_in_process_without_touching_sys_argv():
    tree = ast.parse((ROOT / "lit_attacks" / "api.py").read_text())
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
             and n.value.id == "sys"}
    assert "argv" not in names
    assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(a.name == "sys" for a in n.names)
                   for n in ast.walk(tree))


def _table_modules() -> dict:
    folder = ROOT / "lit_attacks" / "tables"
    return {p.stem: p for p in folder.glob("*.py") if "@TABLES.register(" in p.read_text()}


def test_no_table_module_imports_another_table_module():
    tables = _table_modules()
    assert {"table1", "table2", "robust", "leaderboard", "reverse", "sweep"} <= set(tables)
    registered = {TABLES.get(n).__module__.rsplit(".", 1)[-1] for n in TABLES.names()}
    assert registered <= set(tables)  # every registered table is in a module this test reads
    found = []
    for name, path in tables.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                parts = m.split(".")
                if parts[:2] == ["lit_attacks", "tables"] and len(parts) > 2 and parts[2] in tables and \
                        parts[2] != name:
                    found.append(f"{name} imports {m}")
    assert not found, found


@pytest.mark.parametrize("name", ["l2", "lpips_alex"])
def test_a_pooled_metric_gives_the_numbers_of_a_fresh_one(name):
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(3, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))
    fresh = metrics_pkg.create_metric(name)(x, y)
    with metrics_pkg.metric_pool():
        metrics_pkg.create_metric(name, dtype=torch.float64)
        pooled = metrics_pkg.create_metric(name)(x, y)
    assert torch.equal(fresh, pooled)


def test_no_library_line_is_over_120_characters():
    files = [*(ROOT / "lit_attacks").rglob("*.py"), *(ROOT / "datamodules").rglob("*.py"),
             *(ROOT / "callbacks").rglob("*.py"), ROOT / "bench.py", ROOT / "train.py"]
    long = [f"{p.relative_to(ROOT)}:{i}" for p in files if p.is_file() and not p.is_symlink()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert len(files) > 50 and not long, long
