"""The results folder a bench run owns: one run at a time (a lock), and a manifest of what bench wrote.

Rules (each checked before any file is written or removed):

- bench writes only into a folder it made, an empty folder, or a folder holding its manifest
  (:data:`MANIFEST`, written atomically); any other folder is refused, even one holding a
  ``summary.json``;
- bench removes only files the manifest lists, with the sha256 recorded there (a file changed since bench
  wrote it is left alone), never through a symlink: a symlinked subfolder or file anywhere bench writes is
  refused when the run starts, and every removal re-checks the path component by component;
- one run per folder (:class:`RunLock`): ``.bench.lock`` is held with ``flock`` by the run's first process;
  the kernel releases it when that process dies, so a lock left by a dead process is taken over (and said).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from lit_attacks.datamodules.shards import sha256
from lit_attacks.report import atomic_write
from lit_attacks.safe_files import InputError, kind_of, no_symlink_between, read_text

MANIFEST = ".bench-manifest.json"
LOCK_NAME = ".bench.lock"
FORMAT = 1
OWN = (MANIFEST, LOCK_NAME)
# where bench writes: the managed subfolders, the cell records and W&B's folder
SUBFOLDERS = ("cells", "samples", "scores", "plots", "transfer", "adv", "wandb")


class FolderError(InputError):
    """A results folder bench cannot use; the message names it."""


class RunLock:
    """An exclusive ``flock`` on ``<out>/.bench.lock`` held while a run lives.

    Args:
        out: the results folder (made if missing, with its parents; removed again by :meth:`release` if the
            run leaves nothing in it).
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.file = None
        self.created: List[Path] = []
        self.replaced: Optional[str] = None  # pid of a dead run whose lock file was taken over

    def acquire(self) -> None:
        self.created = [p for p in [self.out, *self.out.parents] if not p.exists()]
        for _ in range(20):  # another run may remove a folder it made between our mkdir and open: retry
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                f = open(self.out / LOCK_NAME, "a+")
            except FileNotFoundError:
                continue
            except OSError as e:
                raise FolderError(f"results folder {self.out} is not writable: {e.strerror or e}") from None
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise FolderError(f"results folder {self.out} is in use by another bench run (pid {holder}); wait "
                                  "for it to finish or choose another --out") from None
            try:  # the file we locked must still be the one at the path (a releasing run may have unlinked it)
                same = os.fstat(f.fileno()).st_ino == os.stat(self.out / LOCK_NAME).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                continue
            f.seek(0)
            previous = f.read().strip()
            if previous.isdigit() and int(previous) != os.getpid() and not _alive(int(previous)):
                self.replaced = previous
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            self.file = f
            return
        raise FolderError(f"results folder {self.out}: could not take its lock (it kept being removed)")

    def release(self, leave_nothing: bool) -> None:
        """Unlock and remove the lock file; with ``leave_nothing`` (the run wrote nothing) also an empty
        manifest and the folders made for the run."""
        f, self.file = self.file, None
        if f is None:
            return
        try:
            (self.out / LOCK_NAME).unlink()
            if leave_nothing and self.created:
                (self.out / MANIFEST).unlink(missing_ok=True)
                for p in self.created:
                    p.rmdir()  # fails (and stops) where another run put something meanwhile
        except OSError:
            pass
        finally:
            f.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsFolder:
    """The manifest of files bench wrote in ``out`` (relative path -> sha256).

    Args:
        out: the results folder (call :meth:`claim` before writing into it).
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.files: Dict[str, str] = {}

    @property
    def path(self) -> Path:
        return self.out / MANIFEST

    def claim(self) -> None:
        """Take the folder for this run: load its manifest, or start one in an empty folder; refuse a folder
        with other files and no manifest, and any symlink where bench writes."""
        if not self.out.is_dir():
            raise FolderError(f"--out {self.out} is not a folder")
        others = sorted(p.name for p in self.out.iterdir() if p.name not in OWN)
        if self.path.is_symlink():
            raise FolderError(f"results folder {self.out}: {self.path} is a symlink; choose another --out")
        if os.path.lexists(self.path):
            self.files = self._load()
        elif others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise FolderError(f"results folder {self.out} holds other files and no bench run (no {MANIFEST}: "
                              f"{shown}); bench writes only into a new or empty folder, or one it made: choose "
                              "another --out")
        else:
            self.save()
        self._refuse_links()

    def _load(self) -> Dict[str, str]:
        try:
            data = json.loads(read_text(self.path, "bench manifest", 64 << 20, FolderError))
        except ValueError as e:
            if isinstance(e, FolderError):
                raise
            raise FolderError(f"{self.path}: corrupt bench manifest ({e}); choose another --out") from None
        files = data.get("files") if isinstance(data, dict) else None
        if data.get("format") != FORMAT or not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and _relative(k) for k, v in files.items()):
            raise FolderError(f"{self.path}: not a bench manifest of format {FORMAT}; choose another --out")
        return dict(files)

    def _refuse_links(self) -> None:
        """A symlink (or a non-folder) where bench writes or removes would reach outside the folder."""
        for name in SUBFOLDERS:
            p = self.out / name
            if p.is_symlink():
                raise FolderError(f"results folder {self.out}: {p} is a symlink; bench never writes or removes "
                                  "through a link: make it a plain folder or choose another --out")
            if name == "wandb" or not p.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(p):  # never follows links
                for n in dirnames + filenames:
                    q = Path(dirpath) / n
                    mode = os.lstat(q).st_mode
                    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                        raise FolderError(f"results folder {self.out}: {q} is {kind_of(mode)}; bench never writes "
                                          "or removes through one: remove it or choose another --out")
        for rel in self.files:
            p = self.out / rel
            if p.is_symlink():
                raise FolderError(f"results folder {self.out}: {p} is a symlink where bench wrote a file; remove "
                                  "it or choose another --out")

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"format": FORMAT, "tool": "lit_attacks bench", "files":
                                            dict(sorted(self.files.items()))}, indent=0) + "\n")

    def record(self, hashes: Dict[str, str]) -> None:
        """These files (relative path -> sha256) were written by bench."""
        self.files.update({k: v for k, v in hashes.items() if v != "missing"})
        self.save()

    def record_files(self, rels: Iterable[str]) -> None:
        self.record({rel: sha256(self.out / rel) for rel in rels if (self.out / rel).is_file()})

    def remove(self, rel: str) -> bool:
        """Remove ``rel`` if the manifest lists it, it is unchanged since and no symlink is on its way;
        True when removed. A file that changed is left alone (and no longer listed)."""
        if rel not in self.files:
            return False
        p = self.out / rel
        ok = no_symlink_between(self.out, p) and stat.S_ISREG(os.lstat(p).st_mode) and sha256(p) == self.files[rel]
        del self.files[rel]
        if ok:
            p.unlink()
        return ok

    def remove_all(self, rels: Iterable[str]) -> List[str]:
        """:meth:`remove` each, then the folders they leave empty (never through a link); the removed ones."""
        removed = [rel for rel in sorted(set(rels)) if self.remove(rel)]
        for d in sorted({Path(rel).parent for rel in removed}, key=lambda q: -len(q.parts)):
            for parent in [d, *d.parents][:-1]:  # up to, not including, out
                q = self.out / parent
                try:
                    if no_symlink_between(self.out, q) and not any(q.iterdir()):
                        q.rmdir()
                except OSError:
                    break
        self.save()
        return removed

    def under(self, prefix: str) -> List[str]:
        """Listed files at or below ``prefix`` (a file or a folder, relative)."""
        return [rel for rel in self.files if rel == prefix or rel.startswith(prefix.rstrip("/") + "/")]

    def check_writable(self, subfolders: Iterable[str]) -> None:
        """Each of ``out`` and the ``subfolders`` that exist accepts a new file (before any work)."""
        for d in [self.out] + [self.out / s for s in subfolders if os.path.lexists(self.out / s)]:
            try:
                if not d.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder")
                probe = d / f".write-test-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise FolderError(f"results folder {d} is not writable: {e.strerror or e}") from None


def _relative(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts
