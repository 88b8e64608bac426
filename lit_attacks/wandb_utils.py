"""Weights & Biases helpers shared by bench runs and training: the run mode and table conversion.

W&B itself is imported only when a table is built, so importing this module stays cheap.
"""
from __future__ import annotations

import math
import netrc
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

MODES = ("auto", "online", "offline", "disabled")
ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what W&B itself accepts in $WANDB_MODE


def check_env_mode() -> None:
    """``$WANDB_MODE``, when set, is a mode W&B accepts (W&B itself would fail deep inside ``wandb.init``)."""
    env = os.environ.get("WANDB_MODE")
    if env is not None and env not in ENV_MODES:
        from lit_attacks.configuration import ConfigError

        raise ConfigError(f"WANDB_MODE={env!r}: W&B accepts {', '.join(ENV_MODES)}; fix or unset it (or pass "
                          "--wandb disabled)")


# W&B's own folders (run files, artifact cache, staging copies of logged tables, settings): by default under the home
# folder (~/.cache/wandb, ~/.local/share/wandb, ~/.config/wandb); a run of this project keeps them in its own folder.
WANDB_STATE = {"WANDB_DIR": "", "WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data", "WANDB_CONFIG_DIR": "config"}


@contextmanager
def third_party_state(run_dir: str | os.PathLike, cache: str | os.PathLike) -> Iterator[None]:
    """For the block: W&B's folders under ``run_dir`` (``<run_dir>/wandb/{cache,data,config}``; W&B puts its run in
    ``<run_dir>/wandb`` too) and matplotlib's (font cache, config) under ``<cache>/matplotlib``, where the user has not
    chosen them (a variable already set is kept): a run writes nothing under the home folder. The environment is
    restored after the block (the Python API leaves the caller's process as it was); matplotlib reads its variable
    once, at import, so a process that imported it before keeps its own folder."""
    wanted = {k: str(Path(run_dir) / "wandb" / sub) if sub else str(Path(run_dir)) for k, sub in WANDB_STATE.items()}
    if "matplotlib" not in sys.modules:  # else lit_attacks/__init__.py has set it, or the user's process chose
        wanted["MPLCONFIGDIR"] = str(Path(cache) / "matplotlib")
    saved = {k: os.environ.get(k) for k in wanted}
    for k, v in wanted.items():
        if not os.environ.get(k):
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str) -> str:
    """``auto``: $WANDB_MODE if set, else online with an API key and offline without one."""
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_api_key() else "offline"


def finite(v: Any) -> bool:
    """A real number W&B can plot (not bool, nan or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def wandb_table(rows: Sequence[Dict[str, Any]]):
    """A ``wandb.Table`` of dict rows (columns in first-seen order; non-finite floats as null)."""
    import wandb

    cols = list(dict.fromkeys(k for r in rows for k in r))
    return wandb.Table(columns=cols, data=[[_cell(r.get(c)) for c in cols] for r in rows])


def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, dict)):
        return str(v)
    return v
