"""Where generated data (built-in set, shards of BAPPS trees) is cached."""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "LIT_ATTACKS_CACHE"


def cache_root() -> Path:
    """``$LIT_ATTACKS_CACHE``, else ``$XDG_CACHE_HOME/lit_attacks``, else ``~/.cache/lit_attacks``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lit_attacks"
