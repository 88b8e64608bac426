"""The results folder a bench run owns: the folder guard of :mod:`lit_attacks.folders` with bench's names.

Rules (each checked before any file is written or removed; :class:`lit_attacks.folders.OwnedFolder`):

- bench writes only into a folder it made, an empty folder, or a folder holding its manifest
  (:data:`MANIFEST`, written atomically); any other folder is refused, even one holding a ``summary.json``;
- bench removes only files the manifest lists, with the sha256 recorded there (a file changed since bench
  wrote it is left alone), never through a symlink: a symlink, FIFO, device or socket anywhere in the folder (W&B's
  ``wandb/`` contents aside) is refused when the run starts, and every write and removal re-checks the path
  component by component;
- the manifest says whether the run that last used the folder finished (``finished``): set false when a run starts
  and true once its last file is written, so the leaderboard builder never publishes the entries of a run that
  stopped midway;
- one run per folder (:class:`RunLock`): ``.bench.lock`` is held with ``flock`` by the run's first process;
  the kernel releases it when that process dies, so a lock left by a dead process is taken over (and said).
"""
from __future__ import annotations

from pathlib import Path

from lit_attacks.folders import BENCH_MANIFEST, FolderError, OwnedFolder, RunLock as _RunLock, run_finished

MANIFEST = BENCH_MANIFEST
LOCK_NAME = ".bench.lock"
TOOL = "bench"
OWN = (MANIFEST, LOCK_NAME)
# where bench writes: the managed subfolders (checked writable before any work), the cell records and W&B's folder
SUBFOLDERS = ("cells", "samples", "scores", "plots", "transfer", "adv", "leaderboard", "wandb")

__all__ = ["FolderError", "LOCK_NAME", "MANIFEST", "OWN", "ResultsFolder", "RunLock", "SUBFOLDERS", "finished"]


class RunLock(_RunLock):
    """``<out>/.bench.lock`` (:class:`lit_attacks.folders.RunLock`)."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, LOCK_NAME, "bench run", what="results folder")


class ResultsFolder(OwnedFolder):
    """bench's results folder (:class:`lit_attacks.folders.OwnedFolder` with :data:`MANIFEST`).

    Args:
        out: the results folder (call :meth:`claim` before writing into it).
    """

    def __init__(self, out: Path) -> None:
        super().__init__(out, MANIFEST, TOOL, arg="--out", exempt=("wandb",), own=(LOCK_NAME,), what="results folder",
                         kind="bench run")


def finished(out: Path) -> bool:
    """Whether the bench run that last used ``out`` finished (:func:`lit_attacks.folders.run_finished`)."""
    return run_finished(out, MANIFEST, TOOL)
