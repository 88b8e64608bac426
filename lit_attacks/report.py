"""Writing result tables: CSV, Markdown and JSON, atomically."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lit_attacks.folders import atomic_file, atomic_write, write_file  # noqa: F401 (the writers, re-exported here)


def csv_text(rows: Sequence[Dict[str, Any]], columns: Optional[List[str]] = None) -> str:
    columns = columns or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt_csv(r.get(k)) for k in columns})
    return buf.getvalue()


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    return v


def write_csv(path: str | Path, rows: Sequence[Dict[str, Any]], columns: Optional[List[str]] = None) -> None:
    atomic_write(path, csv_text(rows, columns))


def read_csv(path: str | Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(v: Any, digits: int) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[Dict[str, Any]], columns: List[str], digits: int = 4,
                   headers: Optional[Dict[str, str]] = None) -> str:
    headers = headers or {}
    head = [headers.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, ""), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats (nan, inf) as None, so the file is standard JSON (``JSON.parse`` reads it)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Standard JSON: non-finite numbers are written as null."""
    atomic_write(path, json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (what a cell computes, or its result)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


# Marks a page with the number of images that failed to load (data-broken-images) and whether it is wider than the
# window (data-overflow: a horizontal scroll bar), for browser checks.
BROKEN_IMAGES_SCRIPT = """window.addEventListener('load',function(){var n=0;for(var i of document.images){
if(!i.complete||i.naturalWidth===0){n++;}}document.body.setAttribute('data-broken-images',String(n));
document.body.setAttribute('data-overflow',String(document.documentElement.scrollWidth>window.innerWidth));});"""
