"""Results entries: one JSON file per (dataset, protocol, metric), validated against the schema that ships here.

An entry says what was evaluated (the metric, its weights' sha256 and options), on what (the dataset's name,
split, sample counts and content fingerprint), how (the protocol: every attack with its parameters, the radii,
the certification settings, the seed; fingerprinted), what came out (clean, robust and certified 2AFC accuracy,
each a rate ``k / n`` with its two-sided 95% Clopper-Pearson interval, minimum-epsilon AUC, the per-sample CSVs)
and the sanity flags a reviewer checks before believing a robust number. ``schema_version`` inside; the schema is
``lit_attacks/leaderboard/schema.json`` (JSON Schema 2020-12).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from scipy.stats import beta

from lit_attacks.datamodules.shards import sha256
from lit_attacks.safe_files import InputError

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


def validate(entry: Dict[str, Any], where: str = "entry") -> None:
    """Raise :class:`EntryError` (one line: the file, the field, what is wrong) if ``entry`` breaks the schema."""
    errors = sorted(_validator().iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EntryError(f"{where}: {field}: {e.message[:300]}{more}")


def read_entry(path: Path) -> Dict[str, Any]:
    """A validated entry from ``path``."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise EntryError(f"{path}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise EntryError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(entry, dict):
        raise EntryError(f"{path}: expected a JSON object, got {type(entry).__name__}")
    if entry.get("schema_version") != SCHEMA_VERSION:
        raise EntryError(f"{path}: schema_version {entry.get('schema_version')!r}; this lit-attacks reads version "
                         f"{SCHEMA_VERSION}")
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
