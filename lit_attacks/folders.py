"""The folders this project writes, behind one guard: bench's ``--out``, a leaderboard SITE and train.py's save_dir.

Rules (:class:`OwnedFolder`, each checked before any file is written or removed):

- a tool writes only into a folder it made, an empty folder, or a folder holding its manifest (a JSON file naming
  the tool and every file it wrote with its sha256); any other folder is refused;
- nothing is written or removed through a symlink: a symlink (or a FIFO, device or socket) anywhere in the folder is
  refused when the tool claims it (the contents of the exempt subfolders, W&B's own, aside), and every write and
  removal re-checks the path component by component; a path that is absolute or climbs out with ``..`` is refused;
- a tool removes only files its manifest lists, with the sha256 recorded there (a file changed since is left alone);
- the manifest lists a file before the file appears (it is recorded before the temporary file is renamed into
  place), so after a crash or a full disk a rerun still knows every file it may clean up;
- one run per folder (:class:`RunLock`, ``flock``; released by the kernel when the process dies).

Writers do not pass the guard around: inside :meth:`OwnedFolder.writing` every :func:`atomic_write` (and
:func:`atomic_file`, :func:`write_file`; :mod:`lit_attacks.report` re-exports them) whose path lies in the folder goes
through it.

Only the standard library and :mod:`lit_attacks.safe_files`: every layer may use it.
"""
from __future__ import annotations

import contextvars
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from lit_attacks.safe_files import InputError, kind_of, no_symlink_between, open_regular, read_json

FORMAT = 1
MAX_MANIFEST_BYTES = 64 << 20
# the manifests of the folders this project writes (each tool's own; one tool never takes another's folder)
BENCH_MANIFEST = ".bench-manifest.json"
SITE_MANIFEST = ".leaderboard-site.json"
TRAIN_MANIFEST = ".train-manifest.json"
DATA_MANIFEST = ".data-manifest.json"
SHA256_HEX = frozenset("0123456789abcdef")
TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(?:-[0-9a-f]{8})?$")  # atomic_file's temporary names
# the folders whose writing() block is open in this context, innermost last, each with the list it records into
_ACTIVE: contextvars.ContextVar[Tuple[Tuple["OwnedFolder", List[str]], ...]] = contextvars.ContextVar(
    "lit_attacks_owned_folders", default=())


class FolderError(InputError):
    """A folder a tool cannot use or a path it must not write; the message names it."""


def file_sha256(path: Path) -> str:
    """sha256 of a regular file (a FIFO or device is refused, never read forever)."""
    h = hashlib.sha256()
    with open_regular(path, "file") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def relative(rel: Any) -> bool:
    """``rel`` is a plain relative path inside a folder: a non-empty string, not absolute, no ``..``, no NUL."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return False
    p = Path(rel)
    return not p.is_absolute() and ".." not in p.parts and p.parts != ()


class RunLock:
    """An exclusive ``flock`` on ``<root>/<name>`` held while a run lives.

    Args:
        root: the folder (made if missing, with its parents; removed again by :meth:`release` if the run leaves
            nothing in it).
        name: the lock file's name.
        tool: what holds it, for the message ("bench run", "leaderboard build", "train.py run").
        arg: the argument that chose the folder ("--out").
        what: the folder in words ("results folder"), for messages.
    """

    def __init__(self, root: Path, name: str = ".lock", tool: str = "run", arg: str = "--out",
                 what: str = "folder") -> None:
        self.out, self.name, self.tool, self.arg, self.what = Path(root), name, tool, arg, what
        self.file = None
        self.created: List[Path] = []
        self.replaced: Optional[str] = None  # pid of a dead run whose lock file was taken over

    def acquire(self) -> None:
        if os.path.islink(self.out):
            raise FolderError(f"{self.arg} {self.out} is a symlink; choose the folder it points to or another "
                              f"{self.arg}")
        self.created = [p for p in [self.out, *self.out.parents] if not p.exists()]
        for _ in range(20):  # another run may remove a folder it made between our mkdir and open: retry
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.out / self.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
                f = os.fdopen(fd, "r+")
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise FolderError(f"{self.out / self.name} is a symlink; remove it") from None
                raise FolderError(f"{self.what} {self.out} is not writable: {e.strerror or e}") from None
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                f.close()
                raise FolderError(f"{self.out / self.name} is not a regular file; remove it")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read(64).strip() or "unknown"
                f.close()
                raise FolderError(f"{self.what} {self.out} is in use by another {self.tool} (pid {holder}); wait for "
                                  f"it to finish or choose another {self.arg}") from None
            try:  # the file we locked must still be the one at the path (a releasing run may have unlinked it)
                same = os.fstat(f.fileno()).st_ino == os.lstat(self.out / self.name).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                continue
            f.seek(0)
            previous = f.read(64).strip()
            if previous.isdigit() and int(previous) != os.getpid() and not _alive(int(previous)):
                self.replaced = previous
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            self.file = f
            return
        raise FolderError(f"{self.what} {self.out}: could not take its lock (it kept being removed)")

    def release(self, leave_nothing: bool, manifest: Optional[str] = None) -> None:
        """Unlock and remove the lock file; with ``leave_nothing`` (the run wrote nothing) also an empty manifest
        named ``manifest`` and the folders made for the run."""
        f, self.file = self.file, None
        if f is None:
            return
        try:
            (self.out / self.name).unlink()
            if leave_nothing and self.created:
                if manifest:
                    (self.out / manifest).unlink(missing_ok=True)
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


class OwnedFolder:
    """A folder a tool writes, with the manifest of what it wrote (relative path -> sha256).

    Args:
        root: the folder (call :meth:`claim` before writing into it).
        manifest: the manifest's file name in ``root`` (``.bench-manifest.json``, ``.leaderboard-site.json``, ...).
        tool: the tool's short name, said in messages and recorded in the manifest ("bench": "lit_attacks bench").
        arg: the argument that names the folder, for messages ("--out", "save_dir").
        exempt: subfolders whose contents another program manages (W&B's ``wandb``): not walked for links and never
            written by the guard; the subfolder itself must still be a real folder.
        own: other names of the tool in ``root`` (its lock file).
        what, kind: the folder and what made it, in words ("results folder", "bench run"), for messages.
    """

    def __init__(self, root: Path, manifest: str, tool: str, arg: str = "--out", exempt: Sequence[str] = ("wandb",),
                 own: Sequence[str] = (), what: str = "folder", kind: str = "run of it") -> None:
        self.out = Path(root)
        self.manifest, self.tool, self.arg, self.what, self.kind = manifest, tool, arg, what, kind
        self.exempt, self.own = tuple(exempt), (manifest, *own)
        self.files: Dict[str, str] = {}
        self.state: Dict[str, Any] = {}  # other fields of the manifest the tool keeps (bench: "finished")
        self.written: List[str] = []  # what the open claimed() block wrote

    @property
    def path(self) -> Path:
        return self.out / self.manifest

    # ------------------------------------------------------------------ claiming
    def claim(self) -> None:
        """Take the folder: load its manifest, or start one in a new or empty folder; refuse a folder with other
        files and no manifest, and any symlink or special file in it."""
        if os.path.islink(self.out) or not self.out.is_dir():
            what = "a symlink" if os.path.islink(self.out) else "not a folder"
            raise FolderError(f"{self.arg} {self.out} is {what}; choose a plain folder")
        if os.path.lexists(self.path):
            self._load()
        else:
            others = sorted(p.name for p in self.out.iterdir() if p.name not in self.own)
            if others:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                raise FolderError(f"{self.what} {self.out} holds other files and no {self.kind} (no {self.manifest}: "
                                  f"{shown}); {self.tool} writes only into a new or empty folder, or one it made: "
                                  f"choose another {self.arg}")
            self.save()
        self.refuse_links()
        self.remove_stale_temporaries()

    def _load(self) -> None:
        if os.path.islink(self.path):
            raise FolderError(f"{self.path} is a symlink; choose another {self.arg}")
        data = read_json(self.path, f"{self.tool} manifest", MAX_MANIFEST_BYTES, FolderError)
        bad = f"{self.path}: not a {self.tool} manifest of format {FORMAT}"
        if not isinstance(data, dict):
            raise FolderError(f"{bad} (it holds a JSON {type(data).__name__}, not an object); choose another "
                              f"{self.arg}")
        files = data.get("files")
        if isinstance(files, list) and "format" not in data:
            files = self._legacy(files, bad)
        elif data.get("format") != FORMAT or not isinstance(files, dict):
            raise FolderError(f"{bad}; choose another {self.arg}")
        for rel, digest in files.items():
            if not relative(rel):
                raise FolderError(f"{bad}: it lists {rel!r}, which is not a path inside the folder; choose another "
                                  f"{self.arg}")
            if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= SHA256_HEX):
                raise FolderError(f"{bad}: {rel!r} has no sha256 ({digest!r}); choose another {self.arg}")
        self.files = dict(files)
        self.state = {k: v for k, v in data.items() if k not in ("format", "tool", "files")}

    def _legacy(self, names: List[Any], bad: str) -> Dict[str, str]:
        """A manifest of the first format (a list of names, no hashes): each listed name that is a regular file
        inside the folder, with its sha256 now."""
        files = {}
        for rel in names:
            if not relative(rel):
                raise FolderError(f"{bad}: it lists {rel!r}, which is not a path inside the folder; choose another "
                                  f"{self.arg}")
            p = self.out / rel
            if no_symlink_between(self.out, p) and stat.S_ISREG(os.lstat(p).st_mode):
                files[rel] = file_sha256(p)
        return files

    def refuse_links(self) -> None:
        """A symlink, FIFO, device or socket anywhere in the folder (outside the exempt subfolders' contents) would
        take a write or a removal outside it, or hang it."""
        for dirpath, dirnames, filenames in os.walk(self.out):  # never follows links
            here = Path(dirpath)
            for n in dirnames + filenames:
                q = here / n
                mode = os.lstat(q).st_mode
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    raise FolderError(f"{self.arg} {self.out}: {q} is {kind_of(mode)}; {self.tool} never writes or "
                                      f"removes through one: remove it or choose another {self.arg}")
            if here == self.out:
                dirnames[:] = [d for d in dirnames if d not in self.exempt]

    def remove_stale_temporaries(self) -> None:
        """Temporary files a writer of this project left when it was killed mid-write (``.<name>.tmp<pid>-<hex>``, the
        pid no longer running): never listed, never a result; removed (outside the exempt subfolders)."""
        for dirpath, dirnames, filenames in os.walk(self.out):
            here = Path(dirpath)
            if here == self.out:
                dirnames[:] = [d for d in dirnames if d not in self.exempt]
            for n in filenames:
                m = TEMPORARY.match(n)
                if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                    (here / n).unlink(missing_ok=True)

    def check_writable(self, subfolders: Iterable[str] = ()) -> None:
        """``root`` and the ``subfolders`` that exist each accept a new file (before any work)."""
        for d in [self.out] + [self.out / s for s in subfolders if os.path.lexists(self.out / s)]:
            try:
                if not d.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder")
                probe = d / f".write-test-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise FolderError(f"{self.what} {d} is not writable: {e.strerror or e}") from None

    # ------------------------------------------------------------------ the manifest
    def save(self) -> None:
        text = json.dumps({"format": FORMAT, "tool": f"lit_attacks {self.tool}", **self.state,
                           "files": dict(sorted(self.files.items()))}, indent=0) + "\n"
        write_file(self.path, text.encode(), guarded=False)  # the manifest itself is written past the guard

    def set_state(self, **fields: Any) -> None:
        """Keep ``fields`` in the manifest (bench's ``finished``), saved at once."""
        self.state.update(fields)
        self.save()

    def record(self, hashes: Dict[str, str]) -> None:
        """These files (relative path -> sha256) were written by the tool."""
        self.files.update({k: v for k, v in hashes.items() if v != "missing"})
        self.save()

    def record_files(self, rels: Iterable[str]) -> None:
        self.record({rel: file_sha256(self.out / rel) for rel in rels if (self.out / rel).is_file()})

    def rel(self, path: Path) -> Optional[str]:
        """``path`` relative to the folder (lexically, from absolute paths), or None when it is not inside it."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.out))
        except ValueError:
            return None
        return str(rel) if rel.parts else None

    # ------------------------------------------------------------------ removing
    def remove(self, rel: str) -> bool:
        """Remove ``rel`` if the manifest lists it, it is unchanged since and no symlink is on its way; True when
        removed. A file that changed is left alone (and no longer listed)."""
        if rel not in self.files:
            return False
        p = self.out / rel
        try:
            ok = (no_symlink_between(self.out, p) and stat.S_ISREG(os.lstat(p).st_mode)
                  and file_sha256(p) == self.files[rel])
        except (OSError, InputError):
            ok = False
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

    # ------------------------------------------------------------------ guarded writing
    def target(self, path: Path) -> Tuple[Path, str]:
        """(path, relative path) of a file about to be written here, checked: inside the folder, outside the exempt
        subfolders, no symlink or non-folder on its way (missing folders are made, one by one, and checked), and
        not itself a symlink or special file."""
        rel = self.rel(path)
        if rel is None or not relative(rel) or Path(rel).parts[0] in self.exempt or rel in self.own:
            raise FolderError(f"{self.tool}: refusing to write {path}: not a file of {self.out} it may write")
        p = self.out
        for part in Path(rel).parts[:-1]:
            p = p / part
            try:
                mode = os.lstat(p).st_mode
            except FileNotFoundError:
                p.mkdir(exist_ok=True)  # another process of the run (a DDP rank) may make it at the same moment
                mode = os.lstat(p).st_mode
            if not stat.S_ISDIR(mode):
                raise FolderError(f"{self.tool}: refusing to write {path}: {p} is {kind_of(mode)}, not a folder "
                                  f"(never written through)")
        full = self.out / rel
        if os.path.lexists(full) and not stat.S_ISREG(os.lstat(full).st_mode):
            raise FolderError(f"{self.tool}: refusing to write {full}: it is {kind_of(os.lstat(full).st_mode)}")
        return full, rel

    def will_hold(self, rel: str, digest: str) -> None:
        """Called by the writer just before ``rel`` appears with content ``digest``: listed first."""
        self.files[rel] = digest
        self.save()

    @contextmanager
    def writing(self, undo: bool = False) -> Iterator[List[str]]:
        """Writes inside the block that land in this folder go through the guard; yields the relative paths written,
        in order. ``undo``: if the block raises, the files it wrote are removed again (when unchanged)."""
        written: List[str] = []
        token = _ACTIVE.set(_ACTIVE.get() + ((self, written),))
        try:
            yield written
        except BaseException:
            if undo:
                try:
                    self.remove_all(list(dict.fromkeys(written)))
                except OSError:
                    pass
            raise
        finally:
            _ACTIVE.reset(token)


@contextmanager
def claimed(root: Path, manifest: str, tool: str, arg: str = "--out", what: str = "folder", kind: str = "run of it",
            exempt: Sequence[str] = ("wandb",)) -> Iterator[OwnedFolder]:
    """``root`` locked (``.<manifest stem>.lock``) and claimed by the guard for the block, its writes guarded (what it
    wrote in ``folder.written``); the lock released after it (and a folder the block left empty removed)."""
    lock_name = f".{manifest.strip('.').split('-')[0].split('.')[0]}.lock"
    lock = RunLock(root, lock_name, f"{tool} run", arg=arg, what=what)
    lock.acquire()
    folder = OwnedFolder(root, manifest, tool, arg, exempt, own=(lock_name,), what=what, kind=kind)
    try:
        folder.claim()
        with folder.writing() as written:
            folder.written = written  # what the block wrote, in order
            yield folder
    finally:
        lock.release(leave_nothing=not folder.files, manifest=manifest)


def guard_of(path: Path) -> Optional[Tuple["OwnedFolder", List[str]]]:
    """The active guarded folder that holds ``path`` (the innermost), with the list its block records into."""
    for folder, written in reversed(_ACTIVE.get()):
        if folder.rel(path) is not None:
            return folder, written
    return None


def run_finished(root: Path, manifest: str = BENCH_MANIFEST, tool: str = "bench") -> bool:
    """Whether the run that last used ``root`` finished: its manifest's ``finished`` (a manifest of an earlier
    version, without the field, counts as finished). No readable manifest: False."""
    folder = OwnedFolder(root, manifest, tool)
    try:
        folder._load()
    except (InputError, OSError):
        return False
    return folder.state.get("finished", True) is True


# ---------------------------------------------------------------------------- writing files (every writer's path)
def write_file(path: str | Path, data: bytes, guarded: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a half-written file. Inside an
    :meth:`lit_attacks.folders.OwnedFolder.writing` block a path in that folder goes through its guard (checked,
    listed in its manifest before it appears); ``guarded=False`` only for the manifest itself."""
    with atomic_file(path, guarded=guarded, digest=hashlib.sha256(data).hexdigest()) as tmp:
        tmp.write_bytes(data)


def atomic_write(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, through the folder guard where one is active
    (:func:`write_file`)."""
    write_file(path, text.encode())


@contextmanager
def atomic_file(path: str | Path, guarded: bool = True, digest: Optional[str] = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write (``fig.savefig(tmp)``, ``torch.save(obj, tmp)``); renamed to ``path``
    when the block ends without error, removed otherwise. In a guarded folder the path is checked first and listed in
    the manifest (with the file's sha256, ``digest`` when known) before the rename."""
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
