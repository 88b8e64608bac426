"""Resumable bench cells: the completed-cell store, the files a cell writes, and the overall progress line.

A *cell* (:class:`lit_attacks.tables.Cell`) is one unit of bench work. While it runs, its files go
through a :class:`CellFiles` (per-sample rows as CSV for people, written by rank 0; other files registered).
When it completes, rank 0 writes its typed per-sample record ``cells/<id>.pt`` (:mod:`lit_attacks.bench.records`)
and then, last, ``cells/<id>.json``: the cell's payload (labels, aggregates), the sha256 of every file it wrote
(the record included) and a fingerprint of everything its result depends on. A rerun loads a cell whose JSON
exists with the same fingerprint and whose files are all present and unchanged, its rows from the record (never
from the CSVs); otherwise the cell is recomputed. A cell killed midway has no JSON (writes are atomic renames), so it
is recomputed from scratch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lit_attacks.datamodules.cache import read_cache_json, update_cache_json
from lit_attacks.datamodules.shards import sha256
from lit_attacks.bench.records import RecordError, decode, encode, typed_rows
from lit_attacks.folders import write_file
from lit_attacks.report import atomic_write, write_csv
from lit_attacks.safe_files import first_line

class CellFiles:
    """The files of the cell being computed (the ``ctx`` of ``Cell.compute``).

    Args:
        out: the run's results folder; paths are relative to it.
        is_zero: this process writes files (rank 0).
    """

    def __init__(self, out: Path, is_zero: bool) -> None:
        self.out, self.is_zero = Path(out), is_zero
        self.files: List[str] = []
        self.rows: Dict[str, List[Dict[str, Any]]] = {}  # CSV -> its rows, as the record keeps them
        self.columns: Dict[str, List[str]] = {}

    def save_rows(self, rel: str, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Path:
        """Per-sample rows: a CSV for people (rank 0) and a table of the cell's typed record."""
        if self.is_zero:
            write_csv(self.out / rel, rows, list(columns))
        self.rows[rel], self.columns[rel] = typed_rows(rows, columns), list(columns)
        return self.track(rel)

    def record(self, cell_id: str) -> bytes:
        """The cell's typed record file (:func:`lit_attacks.bench.records.encode`)."""
        return encode(cell_id, {rel: (rows, self.columns[rel]) for rel, rows in self.rows.items()})

    def track(self, rel: str) -> Path:
        if rel not in self.files:
            self.files.append(rel)
        return self.out / rel

    @property
    def samples(self) -> int:
        """Rows of the cell's first CSV (its per-sample result)."""
        return len(next(iter(self.rows.values()), []))

    def hashes(self) -> Dict[str, str]:
        """sha256 of every file written (a folder: of each file in it)."""
        return file_hashes(self.out, self.files)


def file_hashes(out: Path, rels: Sequence[str]) -> Dict[str, str]:
    hashes = {}
    for rel in rels:
        p = out / rel
        for f in sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]:
            hashes[str(f.relative_to(out))] = sha256(f) if f.is_file() else "missing"
    return hashes


class CellStore:
    """Completed-cell records under ``<out>/cells/``.

    Args:
        out: the run's results folder.
        fresh: ignore completed cells (recompute everything); their files are overwritten.
    """

    def __init__(self, out: str | Path, fresh: bool = False) -> None:
        self.out = Path(out)
        self.dir = self.out / "cells"
        self.fresh = fresh

    def path(self, cell_id: str) -> Path:
        return self.dir / f"{cell_id}.json"

    def record_path(self, cell_id: str) -> Path:
        """The cell's typed per-sample record (:mod:`lit_attacks.bench.records`)."""
        return self.dir / f"{cell_id}.pt"

    def load(self, cell_id: str, fp: str,
             parts: Optional[Dict[str, str]] = None) -> Tuple[Optional[Dict[str, Any]], str]:
        """(the record of a completed cell with fingerprint ``fp`` whose files are unchanged, its per-sample rows under
        ``"rows"`` (CSV -> rows), or None; why it is reused or recomputed, in words). ``parts``: the fingerprint of
        each value the cell depends on, so the reason names what changed."""
        p = self.path(cell_id)
        if self.fresh:
            return None, "recomputed (--fresh)"
        if not p.is_file():
            return None, ""
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            return None, "recomputed: its record was unreadable"
        if not isinstance(state, dict) or state.get("complete") is not True:
            return None, "recomputed: its record was incomplete"
        if state.get("fingerprint") != fp:
            old = state.get("parts") if isinstance(state.get("parts"), dict) else {}
            changed = [k for k in sorted(set(old) | set(parts or {})) if old.get(k) != (parts or {}).get(k)]
            what = ", ".join(CHANGE_WORDS.get(k, k) for k in changed) if old and changed else "what it depends on"
            return None, f"recomputed: {what} changed since it was computed"
        files = state.get("files", {})
        if not isinstance(files, dict) or f"cells/{cell_id}.pt" not in files:
            return None, "recomputed: its record predates typed per-sample records"
        if file_hashes(self.out, list(files)) != files:
            return None, "recomputed: a file it wrote is missing or was changed"  # a file of the cell: recompute it
        try:
            state["rows"] = decode(self.record_path(cell_id), cell_id)
        except RecordError as e:
            return None, f"recomputed: {first_line(e)}"
        return state, "same data, code, parameters and metric"

    def save(self, cell_id: str, fp: str, payload: Dict[str, Any], files: Dict[str, str], record: bytes,
             parts: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Write the cell's typed record, then mark the cell complete (call after its other files are written);
        returns every file's sha256 (``files`` and the record)."""
        write_file(self.record_path(cell_id), record)
        files = {**files, f"cells/{cell_id}.pt": sha256(self.record_path(cell_id))}
        state = {"cell": cell_id, "fingerprint": fp, "complete": True, "payload": payload, "files": files,
                 "parts": parts or {}}
        atomic_write(self.path(cell_id), json.dumps(state, default=_jsonable) + "\n")
        return files


# what a changed part of a cell's fingerprint is, in words (other parts are named by their key)
CHANGE_WORDS = {"metric_file": "the metric (what it computes on the probe batch, its code, weights or arguments)",
                "code": "lit_attacks' code", "version": "lit_attacks' version", "data": "the data",
                "data_source": "the data folder", "weights_dir": "the weights folder", "pretrained": "--pretrained",
                "seed": "the seed", "split": "the split", "categories": "the categories"}


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """``[cell i/n] what | elapsed | ETA`` lines. A computed cell's time is fitted as a fixed cost per cell (Trainer,
    loaders) plus its work (:attr:`lit_attacks.tables.base.Cell.work`, metric evaluations per sample) over a rate,
    by least squares over the cells computed so far; the ETA applies the fit to the cells and work left (loaded
    cells cost nothing), so cheap Table 1 cells first do not promise a short run of expensive attacks. Until two
    cells of different work have run the fit is undetermined and the ETA says ``?``."""

    def __init__(self, total: int, quiet: bool = False, is_zero: bool = True, work: Optional[float] = None) -> None:
        self.total, self.quiet, self.is_zero = total, quiet, is_zero
        self.work = float(work) if work is not None else 100.0 * total
        self.index, self.computed, self.spent, self.done_work = 0, 0, 0.0, 0.0
        self.fits: List[tuple] = []  # (work, seconds) of each computed cell
        self.t0 = time.time()
        self._start: Optional[float] = None
        self._current = 0.0

    def eta(self) -> float:
        """Seconds left: (cells left) x fixed + (work left) x seconds per unit of work; nan while undetermined."""
        if len({w for w, _ in self.fits}) < 2:
            return math.nan
        n = len(self.fits)
        mw, mt = sum(w for w, _ in self.fits) / n, sum(t for _, t in self.fits) / n
        sww = sum((w - mw) ** 2 for w, _ in self.fits)
        per = max(sum((w - mw) * (t - mt) for w, t in self.fits) / sww, 0.0)
        fixed = mt - per * mw
        if fixed < 0:  # no fixed cost: time proportional to work
            fixed, per = 0.0, sum(t for _, t in self.fits) / sum(w for w, _ in self.fits)
        return (self.total - self.index + 1) * fixed + max(self.work - self.done_work, 0.0) * per

    def start(self, what: str, resumed: bool = False, work: float = 100.0, why: str = "") -> None:
        """Say that a cell starts (``resumed``: loaded from an earlier run); ``why`` it is loaded or recomputed."""
        self.index += 1
        self._start, self._current = (None if resumed else time.time()), float(work)
        status = "done earlier, loaded" if resumed else f"ETA {clock(self.eta())}"
        why = f" ({why})" if resumed and why else f" | {why}" if why else ""
        self.say(f"[cell {self.index}/{self.total}] {what} | elapsed {clock(time.time() - self.t0)} | {status}{why}")

    def finish(self) -> float:
        """Seconds the current cell took (0 for a loaded one)."""
        self.done_work += self._current
        if self._start is None:
            return 0.0
        dt = time.time() - self._start
        self.computed += 1
        self.spent += dt
        self.fits.append((self._current, dt))
        self._start = None
        return dt

    def say(self, line: str) -> None:
        if not self.quiet and self.is_zero:
            print(line, flush=True)


class MachineRates:
    """The fastest time per sample each cell has taken on this machine (``machine_rates.json`` in the cache, keyed
    by cell id, device and image size), so a run much slower than this machine managed before says so: the ETA
    uses the rate of this run, which a busy machine makes long. Unreadable or unwritable: no comparison, no error."""

    SLOW = 0.5  # say so below half the best rate

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best: Dict[str, float] = _rates(read_cache_json(path))

    def observe(self, key: str, seconds_per_sample: float) -> Optional[float]:
        """Record a measurement; the ratio best / this one when it is below :attr:`SLOW`, else None."""
        if not (seconds_per_sample > 0 and math.isfinite(seconds_per_sample)):
            return None
        best = self.best.get(key)
        self.best[key] = min(best, seconds_per_sample) if best else seconds_per_sample
        return best / seconds_per_sample if best and best / seconds_per_sample < self.SLOW else None

    def save(self) -> None:
        """Merge this run's bests into the cache file (a locked read-merge-rename: concurrent runs keep both)."""
        def merge(current: Dict[str, Any]) -> Dict[str, Any]:
            best = _rates(current)
            for k, v in self.best.items():
                best[k] = min(best.get(k, v), v)
            return best

        update_cache_json(self.path, merge)


def _rates(data: Any) -> Dict[str, float]:
    """The valid entries (a positive finite seconds-per-sample) of a rates file's contents."""
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v) and v > 0}
