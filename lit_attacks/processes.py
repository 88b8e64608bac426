"""When a DDP process dies: one line naming its rank and how to resume, instead of a silent exit 137.

Lightning's subprocess launcher (rank 0 starts ranks 1..N-1 as child processes) watches the children from a thread;
when one exits with an error or a signal it kills every process, rank 0 included, with SIGKILL, after logging the fact
at the INFO level, which a quiet run does not show. :func:`say_when_a_rank_dies` makes that watcher print, first, one
line on stderr: which rank died, how (its exit status or signal), and the command that resumes the run.
"""
from __future__ import annotations

import os
import signal
import sys


SAY = {"tool": "", "resume": ""}


def describe_exit(returncode: int) -> str:
    """``-9`` -> "was killed by signal 9 (SIGKILL)"; ``1`` -> "exited with status 1"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def say_when_a_rank_dies(tool: str, resume: str) -> None:
    """Make Lightning's child-process watcher print ``<tool>: error: DDP process rank <r> (pid <p>) <how>; ...
    <resume>`` before it stops the run (once per process; a Lightning without that watcher is left as it is)."""
    SAY["tool"], SAY["resume"] = tool, resume  # a later call (once the results folder is known) updates the line
    try:
        from lightning_fabric.strategies.launchers import subprocess_script
    except ImportError:
        return
    observer = getattr(subprocess_script, "_ChildProcessObserver", None)
    if observer is None or getattr(observer, "_lit_attacks_says", False) or not hasattr(observer, "_terminate_all"):
        return
    original = observer._terminate_all

    def _terminate_all(self) -> None:
        node = int(os.environ.get("NODE_RANK", "0") or 0)
        for i, proc in enumerate(getattr(self, "_child_processes", [])):
            if proc.returncode:
                per_node = len(self._child_processes) + 1
                print(f"\n{SAY['tool']}: error: DDP process rank {node * per_node + i + 1} (pid {proc.pid}) "
                      f"{describe_exit(proc.returncode)}; every process of the run is being stopped. {SAY['resume']}",
                      file=sys.stderr, flush=True)
                break
        original(self)

    observer._terminate_all = _terminate_all
    observer._lit_attacks_says = True
