"""A cell's typed per-sample record: every per-sample table it saved, column by column, in ``cells/<id>.pt``.

A column whose values are all ``bool``, all ``int`` or all ``float`` is stored as a tensor (bool, int64, float64:
each holds those Python values exactly); any other column (text, missing values, a mix) as its list of values.
The file is written once, when the cell completes, and read back with ``torch.load(weights_only=True)`` (tensors
and plain containers only) when a later run loads the cell; the per-sample CSVs are for people and are never read
back. Rows come back with the values and Python types they had when computed, so a loaded cell and a computed one
give a table exactly the same rows.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

FORMAT = 1  # the layout of the file; another layout is not read (the cell is recomputed)
TENSOR_TYPES = {bool: torch.bool, int: torch.int64, float: torch.float64}


class RecordError(ValueError):
    """A record file that is not one this code wrote (the cell is recomputed)."""


def to_columns(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Dict[str, Any]:
    """Column name -> a tensor (one Python type throughout: bool, int or float) or the list of values."""
    out: Dict[str, Any] = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        kinds = {type(v) for v in values}
        dtype = TENSOR_TYPES.get(next(iter(kinds))) if len(kinds) == 1 else None
        try:
            out[c] = torch.tensor(values, dtype=dtype) if dtype is not None and values else list(values)
        except (OverflowError, RuntimeError):  # an int beyond int64
            out[c] = list(values)
    return out


def to_rows(data: Dict[str, Any], columns: Sequence[str]) -> List[Dict[str, Any]]:
    """The rows of :func:`to_columns`' output (``tolist`` gives back Python bools, ints and floats exactly)."""
    lists = {c: data[c].tolist() if torch.is_tensor(data[c]) else list(data[c]) for c in columns}
    n = len(lists[columns[0]]) if columns else 0
    if any(len(v) != n for v in lists.values()):
        raise RecordError("its columns have different lengths")
    return [{c: lists[c][i] for c in columns} for i in range(n)]


def typed_rows(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> List[Dict[str, Any]]:
    """The rows as a record keeps them: only ``columns``, in that order (what a loaded cell gives back)."""
    return to_rows(to_columns(rows, columns), columns)


def encode(cell_id: str, tables: Dict[str, tuple]) -> bytes:
    """The record file of a cell: ``tables`` maps each per-sample CSV (relative path) to (rows, columns)."""
    body = {rel: {"columns": list(cols), "data": to_columns(rows, cols)} for rel, (rows, cols) in tables.items()}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "cell": cell_id, "tables": body}, buf)
    return buf.getvalue()


def decode(path: Path, cell_id: str) -> Dict[str, List[Dict[str, Any]]]:
    """CSV (relative path) -> its rows, from a record file of cell ``cell_id``; :class:`RecordError` otherwise."""
    from lit_attacks.metrics.weights import read_torch

    obj = read_torch(path, "cell record", "cell record", RecordError)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("cell") != cell_id \
            or not isinstance(obj.get("tables"), dict):
        raise RecordError(f"cell record {str(path)!r} is not a format-{FORMAT} record of cell {cell_id!r}")
    out = {}
    for rel, t in obj["tables"].items():
        if not isinstance(t, dict) or not isinstance(t.get("columns"), list) or not isinstance(t.get("data"), dict) \
                or set(t["columns"]) - set(t["data"]):
            raise RecordError(f"cell record {str(path)!r}: table {rel!r} is malformed")
        out[rel] = to_rows(t["data"], t["columns"])
    return out
