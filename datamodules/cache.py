"""The cache (built-in sets, converted shards, remembered hashes and rates), shared by any number of runs at once.

Every cache entry is created under a lock and published whole (:func:`publish`): the builder takes an exclusive
``flock`` on ``.<name>.lock`` beside the entry, builds it in a private temporary folder and renames that folder into
place, so a reader sees either no entry or a complete one and never waits for a reader; a second builder waits for
the first and then finds the entry made. A builder killed midway leaves only its temporary folder, removed by the
next builder. The small JSON files (:func:`read_cache_json`, :func:`update_cache_json`) are read with the bounded
regular-file reader (a FIFO or a device there is ignored, never waited on or read forever) and updated by a locked
read-merge-rename, so concurrent runs add to them instead of overwriting each other.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

ENV_CACHE = "LIT_ATTACKS_CACHE"
MAX_CACHE_JSON_BYTES = 64 << 20
WAIT_NOTE_S = 2.0  # say once that we wait for another process after this long


def cache_root() -> Path:
    """``$LIT_ATTACKS_CACHE``, else ``$XDG_CACHE_HOME/lit_attacks``, else ``~/.cache/lit_attacks``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lit_attacks"


@contextmanager
def cache_lock(entry: Path, what: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<entry's folder>/.<entry name>.lock`` for the block, waited for (after
    :data:`WAIT_NOTE_S` seconds a line says which process's work it waits for). The lock file stays: removing it would
    let two processes hold locks on two different files."""
    lock = entry.parent / f".{entry.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        t0 = time.monotonic()
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said and time.monotonic() - t0 > WAIT_NOTE_S:
                    print(f"waiting for another process that is building {what} in the cache ({entry})",
                          file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def publish(entry: Path, build: Callable[[Path], None], what: str, complete: Callable[[Path], bool],
            refresh: bool = False) -> Path:
    """``entry`` (a folder of the cache), built by ``build(tmp)`` into a private temporary folder under the lock and
    renamed into place when ``complete(entry)`` is false (or ``refresh``); returns ``entry``. A failed or interrupted
    build leaves nothing in its place."""
    if complete(entry) and not refresh:
        return entry  # published whole: no lock needed to read it
    with cache_lock(entry, what):
        if complete(entry) and not refresh:
            return entry  # another process built it while we waited
        for stale in entry.parent.glob(f".{entry.name}.tmp-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = entry.parent / f".{entry.name}.tmp-{tag}"
        try:
            tmp.mkdir(parents=True)
            build(tmp)
            if os.path.lexists(entry):  # refresh, or an incomplete entry of an earlier version: swap it out
                old = entry.parent / f".{entry.name}.tmp-old-{tag}"
                os.rename(entry, old)
                os.rename(tmp, entry)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def read_cache_json(path: Path) -> Optional[Any]:
    """A cache JSON file, or None when it is missing, not a regular file (a FIFO, ``/dev/zero``), too large or not
    JSON: the cache then recomputes what it remembered, and the next update replaces the file."""
    from lit_attacks.safe_files import InputError, read_json

    try:
        return read_json(path, "cache file", MAX_CACHE_JSON_BYTES)
    except (InputError, OSError):
        return None


def update_cache_json(path: Path, merge: Callable[[Dict[str, Any]], Dict[str, Any]]) -> None:
    """Replace the cache JSON object at ``path`` by ``merge(current)`` under the entry's lock (read, merge, atomic
    rename): concurrent runs each add what they learned. An unwritable cache is ignored (it only costs recomputing)."""
    from lit_attacks.report import write_file

    import json

    try:
        with cache_lock(path, path.name):
            current = read_cache_json(path)
            merged = merge(current if isinstance(current, dict) else {})
            write_file(path, json.dumps(merged, sort_keys=True).encode(), guarded=False)
    except OSError:
        pass
