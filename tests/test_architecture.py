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


# ---------------------------------------------------------------------------------------------- typed records
def test_a_record_gives_back_each_value_with_its_python_type():
    from lit_attacks.bench import records

    rows = [{"key": "b/1", "flip": True, "n": 3, "d": 0.1 + 0.2, "nan": float("nan"), "mixed": 1, "note": None},
            {"key": "a/0", "flip": False, "n": -2 ** 62, "d": 1e-300, "nan": 2.5, "mixed": 0.5, "note": "x"}]
    columns = ["key", "flip", "n", "d", "nan", "mixed", "note"]
    data = records.to_columns(rows, columns)
    assert data["flip"].dtype == torch.bool and data["n"].dtype == torch.int64 and data["d"].dtype == torch.float64
    assert isinstance(data["mixed"], list) and isinstance(data["note"], list)  # a mix or a missing value: as is
    back = records.to_rows(data, columns)
    for got, want in zip(back, rows):
        assert [type(got[c]) for c in columns] == [type(want[c]) for c in columns]
        assert {c: v for c, v in got.items() if c != "nan"} == {c: v for c, v in want.items() if c != "nan"}
    assert back[0]["nan"] != back[0]["nan"] and back[1]["nan"] == 2.5
    assert records.typed_rows([{"a": 1, "extra": 2}], ["a"]) == [{"a": 1}]  # only the saved columns


def _without_timing(csv_bytes: bytes) -> list:
    import csv
    import io

    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(io.StringIO(
        csv_bytes.decode()))]


def _bench_run(out):
    from lit_attacks.bench.cli import execute

    return execute(["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--builtin-n", "3",
                    "--out", str(out), "--quiet", "--wandb", "disabled"])


def test_a_loaded_cell_gives_tables_the_rows_it_computed_without_reading_a_csv(tmp_path, monkeypatch):
    import csv

    out = tmp_path / "r"
    first = _bench_run(out)
    assert first.code == 0 and (out / "cells" / "pgd-l2.pt").is_file()
    computed = dict(first.bench._rows)
    table = (out / "table2.csv").read_bytes()
    assert computed and all(rows for rows in computed.values())

    def no_csv(*a, **k):
        raise AssertionError("a per-sample CSV was read back")

    monkeypatch.setattr(csv, "DictReader", no_csv)
    monkeypatch.setattr(csv, "reader", no_csv)
    second = _bench_run(out)
    assert second.code == 0 and second.bench.loaded == set(second.bench.cells)  # every cell loaded
    assert second.bench._rows == computed  # the same values with the same types
    monkeypatch.undo()
    assert _without_timing((out / "table2.csv").read_bytes()) == _without_timing(table)


def test_a_record_changed_or_foreign_is_recomputed_and_says_why(tmp_path, capsys):
    import json

    from lit_attacks.bench.cli import execute

    out = tmp_path / "r"
    argv = ["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--builtin-n", "3", "--out", str(out),
            "--wandb", "disabled"]
    assert execute(argv).code == 0
    record = out / "cells" / "pgd-l2.pt"
    record.write_bytes(record.read_bytes()[:-10])  # truncated: its sha256 no longer matches
    capsys.readouterr()
    again = execute(argv)
    assert again.code == 0 and "pgd-l2" not in again.bench.loaded and "table1-l2" in again.bench.loaded
    assert "recomputed: a file it wrote is missing or was changed" in capsys.readouterr().out
    # a record whose hash the cell JSON agrees with, but which is not a record of this cell
    state_path = out / "cells" / "pgd-l2.json"
    torch.save({"format": 1, "cell": "table1-l2", "tables": {}}, record)
    from lit_attacks.datamodules.shards import sha256

    state = json.loads(state_path.read_text())
    state["files"]["cells/pgd-l2.pt"] = sha256(record)
    state_path.write_text(json.dumps(state))
    capsys.readouterr()
    run = execute(argv)
    said = capsys.readouterr().out
    assert run.code == 0 and "pgd-l2" not in run.bench.loaded
    assert "recomputed: cell record" in said and "is not a format-1 record of cell 'pgd-l2'" in said


# ---------------------------------------------------------------------------------------------- active set
def test_an_active_set_drops_the_same_rows_from_all_its_state():
    from lit_attacks.attacks.active import ActiveSet

    class Selectable:
        def __init__(self, rows):
            self.rows = rows

        def select(self, idx):
            return Selectable([self.rows[i] for i in idx.tolist()])

    run = ActiveSet(torch.tensor([3, 5, 8, 9]), x=torch.arange(8.0).view(4, 2), history=[torch.tensor([1, 2, 3, 4])],
                    t=Selectable(["a", "b", "c", "d"]))
    run.best = torch.tensor([0.1, 0.2, 0.3, 0.4])
    gone = run.leave(torch.tensor([False, True, False, True]))
    assert gone.tolist() == [5, 9] and run.idx.tolist() == [3, 8] and len(run) == 2
    assert run.x.tolist() == [[0.0, 1.0], [4.0, 5.0]] and run.history[0].tolist() == [1, 3]
    assert run.t.rows == ["a", "c"] and run.best.tolist() == pytest.approx([0.1, 0.3])
    assert run.leave(torch.zeros(2, dtype=torch.bool)).tolist() == [] and run.idx.tolist() == [3, 8]
    with pytest.raises(ValueError, match=r"ActiveSet.y: a state tensor needs one row per running sample \(2\)"):
        run.y = torch.zeros(3)
    with pytest.raises(TypeError, match="ActiveSet.step: state must be per-sample tensors"):
        run.step = 0.5  # a scalar the compaction would skip: refused
    with pytest.raises(ValueError, match="leave: expected a bool mask of shape"):
        run.leave(torch.tensor([0, 1]))
