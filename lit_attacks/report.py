"""Writing result tables: CSV, Markdown and JSON, atomically."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence


def write_file(path: str | Path, data: bytes, guarded: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a half-written file. Inside an
    :meth:`lit_attacks.folders.OwnedFolder.writing` block a path in that folder goes through its guard (checked,
    listed in its manifest before it appears); ``guarded=False`` only for the manifest itself."""
    with atomic_file(path, guarded=guarded, digest=hashlib.sha256(data).hexdigest()) as tmp:
        tmp.write_bytes(data)


def atomic_write(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, through the folder guard where one is active (:func:`write_file`)."""
    write_file(path, text.encode())


@contextmanager
def atomic_file(path: str | Path, guarded: bool = True, digest: Optional[str] = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write (``fig.savefig(tmp)``, ``torch.save(obj, tmp)``); renamed to ``path``
    when the block ends without error, removed otherwise. In a guarded folder the path is checked first and listed in
    the manifest (with the file's sha256, ``digest`` when known) before the rename."""
    from lit_attacks.folders import guard_of, file_sha256

    path = Path(path)
    owner = guard_of(path) if guarded else None
    if owner is not None:
        path, rel = owner[0].target(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if owner is not None:
            owner[0].will_hold(rel, digest or file_sha256(tmp))
            owner[1].append(rel)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written temporary file is left either
        tmp.unlink(missing_ok=True)
        raise


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
