"""Results entries: one JSON file per (dataset, protocol, metric), validated against the schema that ships here.

An entry says what was evaluated (the metric, its weights' sha256 and options), on what (the dataset's name,
split, sample counts and content fingerprint), how (the protocol: every attack with its parameters, the radii,
the certification settings, the seed; fingerprinted), what came out (clean, robust and certified 2AFC accuracy,
each a rate ``k / n`` with its two-sided 95% Clopper-Pearson interval, minimum-epsilon AUC, the per-sample CSVs)
and the sanity flags a reviewer checks before believing a robust number. ``schema_version`` inside; the schema is
``lit_attacks/leaderboard/schema.json`` (JSON Schema 2020-12).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from scipy.stats import beta

from lit_attacks.datamodules.shards import sha256
from lit_attacks.safe_files import InputError, read_json

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("schema.json")
UNITS = "linf in 1/255 of [0, 1] images; l2 on [0, 1] images (the attacked [-1, 1] images: x 2)"


class EntryError(InputError):
    """An entry that does not validate, or entries that cannot be merged; the message names the file."""


def clopper_pearson(k: int, n: int, level: float = 0.95) -> List[Optional[float]]:
    """Two-sided exact (Clopper-Pearson) confidence interval of a binomial proportion ``k / n``."""
    if n <= 0:
        return [None, None]
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def rate(value: Optional[float], n: int) -> Dict[str, Any]:
    """A rate of ``n`` samples from its value (a fraction of n): ``{value, k, n, ci95}``."""
    if value is None or n <= 0 or (isinstance(value, float) and math.isnan(value)):
        return {"value": None, "k": 0, "n": max(n, 0), "ci95": [None, None]}
    k = int(round(value * n))
    return {"value": k / n, "k": k, "n": n, "ci95": clopper_pearson(k, n)}


def flag(samples: int, detail: str) -> Dict[str, Any]:
    return {"raised": samples > 0, "samples": int(samples), "detail": detail}


def fingerprint(obj: Any) -> str:
    """sha256 (first 16 hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


MAX_ENTRY_BYTES = 4 << 20  # an entry is a few kB; a larger file is refused before it is read
MAX_STRING = 20000  # characters of one string value (a command line, a description)
TOLERANCE = 1e-9  # value = k / n and ci95 containing it, checked to this


def validate(entry: Dict[str, Any], where: str = "entry") -> None:
    """Raise :class:`EntryError` (one line: the file, the field, what is wrong) if ``entry`` breaks the schema, holds a
    non-finite or oversized number or string, or its numbers disagree (a rate whose value is not k / n, k above n, an
    interval that does not contain its value, a date without a time zone that cannot be read)."""
    _finite(entry, where, "")
    errors = sorted(_validator().iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EntryError(f"{where}: {field}: {e.message[:300]}{more}")
    results = entry["results"]
    rates = [("results/clean", results["clean"])]
    rates += [(f"results/robust/{i}/accuracy", r["accuracy"]) for i, r in enumerate(results["robust"])]
    rates += [(f"results/certified/{i}/accuracy", c["accuracy"]) for i, c in enumerate(results["certified"])]
    rates += [(f"results/certified_lipschitz/{i}/{k}", c[k])
              for i, c in enumerate(results.get("certified_lipschitz", [])) for k in ("accuracy", "accuracy_sound")]
    for field, r in rates:
        _consistent_rate(r, f"{where}: {field}")
    entry_date(entry, where)


def _finite(obj: Any, where: str, field: str) -> None:
    """Every number finite and every integer of at most 2^53 (what JSON readers hold exactly); strings bounded."""
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, float) and not math.isfinite(obj):
        raise EntryError(f"{where}: {field or '(top level)'}: {obj} is not a finite number")
    if isinstance(obj, int) and abs(obj) > 2 ** 53:
        raise EntryError(f"{where}: {field or '(top level)'}: integer of {len(str(abs(obj)))} digits is out of range")
    if isinstance(obj, str) and len(obj) > MAX_STRING:
        raise EntryError(f"{where}: {field or '(top level)'}: a string of {len(obj)} characters (at most {MAX_STRING})")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite(v, where, f"{field}/{k}".lstrip("/"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite(v, where, f"{field}/{i}".lstrip("/"))


def _consistent_rate(r: Dict[str, Any], where: str) -> None:
    k, n, value, (lo, hi) = r["k"], r["n"], r["value"], r["ci95"]
    if k > n:
        raise EntryError(f"{where}: k = {k} exceeds n = {n}")
    if value is None:
        if k != 0 or lo is not None or hi is not None:
            raise EntryError(f"{where}: value is null but k = {k}, ci95 = {[lo, hi]} (a rate without a value has "
                             "k = 0 and no interval)")
        return
    if n == 0 or abs(value - k / n) > TOLERANCE:
        raise EntryError(f"{where}: value {value} is not k / n = {k} / {n}")
    if lo is None or hi is None or not lo - TOLERANCE <= value <= hi + TOLERANCE:
        raise EntryError(f"{where}: ci95 {[lo, hi]} does not contain the value {value}")


def entry_date(entry: Dict[str, Any], where: str = "entry") -> datetime.datetime:
    """The entry's date as an aware datetime (ISO 8601; no time zone: UTC), so dates of different offsets compare."""
    try:
        d = datetime.datetime.fromisoformat(entry["date"].replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise EntryError(f"{where}: date: {str(entry.get('date'))[:40]!r} is not an ISO 8601 date and time") from None
    return d if d.tzinfo is not None else d.replace(tzinfo=datetime.timezone.utc)


def read_entry(path: Path) -> Dict[str, Any]:
    """A validated entry from ``path``: a regular file of at most :data:`MAX_ENTRY_BYTES` of standard JSON (no NaN or
    Infinity, no repeated key, nesting bounded), checked by :func:`validate`."""
    entry = read_json(path, "leaderboard entry", MAX_ENTRY_BYTES, EntryError)
    if not isinstance(entry, dict):
        raise EntryError(f"{path}: expected a JSON object, got {type(entry).__name__}")
    if entry.get("schema_version") != SCHEMA_VERSION:
        raise EntryError(f"{path}: schema_version {str(entry.get('schema_version'))[:20]!r}; this lit-attacks reads "
                         f"version {SCHEMA_VERSION}")
    validate(entry, str(path))
    return entry


def sha256_files(path: Optional[str], digest: Callable[[Path], str] = sha256) -> List[Dict[str, str]]:
    """``[{file, sha256}]`` of a weights file, or of every file in a weights folder (None: no weights). ``digest``:
    a file's sha256 (a run passes its stat-keyed cache, so unchanged weights are not read again)."""
    if not path:
        return []
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.is_file() else []
    return [{"file": f.name if p.is_file() else str(f.relative_to(p)), "sha256": digest(f)} for f in files]


def sanity_flags(worst_rows: Sequence[Sequence[Dict[str, Any]]], black_box: Sequence[str],
                 grad_rows: Sequence[Dict[str, Any]], stochastic: bool, eot: int) -> Dict[str, Dict[str, Any]]:
    """The four flags from the per-sample rows of the worst-case cells (one list per radius), the labels of the
    ensemble's black-box attacks and the gradient check's rows."""
    bb = {r["key"] for rows in worst_rows for r in rows if r.get("flipped_by") in black_box}
    lost = {r["key"] for rows in worst_rows for r in rows
            if r.get("flipped") is True and r.get("flipped_uint8") is False}
    grads = {r["key"] for r in grad_rows if r.get("grad_status") != "ok"}
    kinds = sorted({r["grad_status"] for r in grad_rows if r.get("grad_status") != "ok"})
    return {
        "black_box_beat_white_box": flag(len(bb), f"samples a black-box attack ({', '.join(black_box) or 'none'}) "
                                                  "flipped after every gradient attack before it failed, at some "
                                                  "radius: a sign of gradient masking"),
        "zero_or_nonfinite_gradients": flag(len(grads), "samples whose gradient at the clean point is "
                                                        f"{' or '.join(kinds) or 'zero or non-finite'}"),
        "stochastic_without_eot": flag(len(grad_rows) if stochastic and eot <= 1 else 0,
                                       f"the metric is {'stochastic' if stochastic else 'deterministic'}; attacks "
                                       f"averaged {eot} gradient draw(s) per step (EOT)"),
        "flip_lost_in_uint8": flag(len(lost), "samples flipped as float images whose flip does not survive 8-bit "
                                              "quantisation of the adversarial image"),
    }
