"""Resumable bench cells and the overall progress line.

A *cell* is one unit of bench work (Table 1 scores of a metric, one attack on one metric, one sweep
point, one transfer stage). When a cell completes, rank 0 writes its output files and then, last,
``cells/<id>.json`` holding the cell's payload and a fingerprint of everything its result depends on.
A rerun loads a cell whose JSON exists with the same fingerprint instead of recomputing it; a cell
killed midway has no JSON (writes are atomic renames), so it is recomputed from scratch.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

from lit_attacks.report import atomic_write


def fingerprint(obj: Any) -> str:
    """Stable hash of a JSON-able description of what a cell computes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CellStore:
    """Completed-cell payloads under ``<out>/cells/``.

    Args:
        out: the run's results folder.
        fresh: ignore completed cells (recompute everything); their files are overwritten.
    """

    def __init__(self, out: str | Path, fresh: bool = False) -> None:
        self.dir = Path(out) / "cells"
        self.fresh = fresh

    def path(self, cell_id: str) -> Path:
        return self.dir / f"{cell_id}.json"

    def load(self, cell_id: str, fp: str) -> Optional[Dict[str, Any]]:
        """The payload of a completed cell with fingerprint ``fp``, else None (stale or unreadable: recompute)."""
        p = self.path(cell_id)
        if self.fresh or not p.is_file():
            return None
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        if state.get("fingerprint") != fp or state.get("complete") is not True:
            return None
        return state["payload"]

    def save(self, cell_id: str, fp: str, payload: Dict[str, Any]) -> None:
        """Mark the cell complete; call after its other output files are written."""
        state = {"cell": cell_id, "fingerprint": fp, "complete": True, "payload": payload}
        atomic_write(self.path(cell_id), json.dumps(state, default=_jsonable) + "\n")


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
    """``[cell i/n] what | elapsed | ETA`` lines; the ETA is the mean time of the cells computed so far
    (loaded cells cost nothing) times the cells left."""

    def __init__(self, total: int, quiet: bool = False, is_zero: bool = True) -> None:
        self.total, self.quiet, self.is_zero = total, quiet, is_zero
        self.index, self.computed, self.spent = 0, 0, 0.0
        self.t0 = time.time()
        self._start: Optional[float] = None

    def start(self, what: str, resumed: bool = False) -> None:
        self.index += 1
        self._start = None if resumed else time.time()
        left = self.total - self.index + 1
        eta = self.spent / self.computed * left if self.computed else math.nan
        status = "done earlier, loaded" if resumed else f"ETA {clock(eta)}"
        self.say(f"[cell {self.index}/{self.total}] {what} | elapsed {clock(time.time() - self.t0)} | {status}")

    def finish(self) -> float:
        """Seconds the current cell took (0 for a loaded one)."""
        if self._start is None:
            return 0.0
        dt = time.time() - self._start
        self.computed += 1
        self.spent += dt
        self._start = None
        return dt

    def say(self, line: str) -> None:
        if not self.quiet and self.is_zero:
            print(line, flush=True)
