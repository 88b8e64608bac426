"""Reading user files and naming output files, safely: one mechanism for every part of the project.

- :func:`component` checks that a value the user gives (a split, a run name, a category) is one file-name
  component before any path is built from it; :func:`file_stem` maps any identifier (a metric spec such as
  ``rlpips:runs/a b/last.ckpt``) to a file-safe name that is unique for distinct values.
- :func:`open_regular` / :func:`read_regular` open a user's file only when it is a regular file (a FIFO, a
  device, a socket or a folder where a file is expected is an error, never a wait or an endless read) and
  bound what is read.
- :func:`walk_files` lists a tree's regular files, following symlinked folders but never round a loop.
- :func:`no_symlink_between` proves that a path under a root reaches no file outside it through a symlink.

Only the standard library: every layer may use it. Errors are :class:`InputError` (or the class passed as
``error``), one line naming the file or the argument.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Set, Tuple, Type

SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_NAME = 128  # characters of one path component made from user input
READ_BLOCK = 1 << 20  # bytes per read of a bounded reader
MAX_JSON_DEPTH = 64  # nesting of objects and arrays in a JSON file this project reads


class InputError(ValueError):
    """Bad input (an argument, a file); the message is one line naming it."""


def first_line(e: BaseException, limit: Optional[int] = None, default: Optional[str] = None) -> str:
    """The first line of an exception's message (``default``, else its type's name, when it has none), cut
    to ``limit`` characters: what a one-line error quotes of a library's exception."""
    return (str(e).strip().splitlines() or [type(e).__name__ if default is None else default])[0][:limit]


def component(value: object, arg: str, error: Type[Exception] = InputError) -> str:
    """``value`` if it is one safe path component (letters, digits, ``_ . -``; not starting with ``.`` or
    ``-``; at most :data:`MAX_NAME` characters), else ``error`` naming ``arg``. No ``/``, no ``..``."""
    if not isinstance(value, str) or not SAFE_NAME.match(value) or len(value) > MAX_NAME:
        raise error(f"{arg} {value!r}: must be a single name of letters, digits, '_', '.' and '-' (not starting "
                    f"with '.' or '-', at most {MAX_NAME} characters): it becomes a folder or file name")
    return value


def file_stem(value: str) -> str:
    """A file-safe name for any identifier, unique for distinct values: ``value`` itself when it is a safe
    component of at most 100 characters, else its characters outside ``[A-Za-z0-9_.-]`` as ``_`` (shortened)
    and a hash of the whole value (``rlpips:a b`` and ``rlpips:a_b`` get different names)."""
    if SAFE_NAME.match(value) and len(value) <= 100:
        return value
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_.-")[:80] or "x"
    return f"{readable}-{hashlib.sha256(value.encode()).hexdigest()[:10]}"


def kind_of(mode: int) -> str:
    """What a file-system object is, in words (for messages)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str, max_bytes: Optional[int] = None,
                 error: Type[Exception] = InputError) -> BinaryIO:
    """``path`` opened for binary reading, when it is a regular file (symlinks to one are followed) of at most
    ``max_bytes``. The open never blocks (``O_NONBLOCK``: a FIFO without a writer is refused at once)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{what} {path}: cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} {path} is {st.st_size} bytes, above the {max_bytes} bytes such a file can hold")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, what: str, max_bytes: int, error: Type[Exception] = InputError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (also when it grows while being read). Read in blocks of
    at most 1 MiB: the memory taken is the file's size, never the cap (a 2 kB file costs 2 kB under any cap)."""
    blocks, total = [], 0
    with open_regular(path, what, max_bytes, error) as f:
        while total <= max_bytes:
            block = f.read(min(READ_BLOCK, max_bytes + 1 - total))
            if not block:
                break
            blocks.append(block)
            total += len(block)
    if total > max_bytes:
        raise error(f"{what} {path} grew past {max_bytes} bytes while being read")
    return b"".join(blocks)


def read_text(path: str | os.PathLike, what: str, max_bytes: int, error: Type[Exception] = InputError) -> str:
    data = read_regular(path, what, max_bytes, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (only finite numbers are)")


def _unique_pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in JSON ``text`` (strings skipped), without parsing it."""
    bare = JSON_STRING.sub("", text)
    depth = deepest = 0
    for m in re.finditer(r"[\[{\]}]", bare):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def strict_json(text: str, where: str, error: Type[Exception] = InputError, max_depth: int = MAX_JSON_DEPTH):
    """Standard JSON only, as another program would read it: ``NaN``/``Infinity`` and a key repeated in one object
    are errors (Python's ``json`` accepts both, the last key winning), and so is nesting deeper than ``max_depth``
    (checked before parsing: a deep file cannot exhaust the recursion limit). One line naming ``where``."""
    deepest = json_depth(text)
    if deepest > max_depth:
        raise error(f"{where}: JSON nested {deepest} levels deep; at most {max_depth} are read")
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise error(f"{where}: not standard JSON ({first_line(e, 200)})") from None


def read_json(path: str | os.PathLike, what: str, max_bytes: int, error: Type[Exception] = InputError):
    """A regular file of at most ``max_bytes`` of UTF-8 standard JSON (:func:`strict_json`), parsed."""
    return strict_json(read_text(path, what, max_bytes, error), f"{what} {path}", error)


def walk_files(root: str | os.PathLike, what: str, error: Type[Exception] = InputError,
               max_depth: int = 32) -> Iterator[Path]:
    """Every regular file under ``root`` in sorted order, following symlinked folders; a folder that is its
    own ancestor (a symlink loop), a dangling link, a FIFO, device or socket, or nesting deeper than
    ``max_depth`` is an error naming the path: the walk always ends."""
    def visit(d: Path, ancestors: Set[Tuple[int, int]], depth: int) -> Iterator[Path]:
        st = os.stat(d)
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            raise error(f"{what}: {d} leads back to a folder above it (a symlink loop); remove the link")
        if depth > max_depth:
            raise error(f"{what}: {d} is nested more than {max_depth} folders deep")
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise error(f"{what}: folder {d} cannot be listed ({e.strerror or e})") from None
        for entry in entries:
            p = Path(entry.path)
            try:
                mode = os.stat(p).st_mode
            except OSError:
                raise error(f"{what}: {p} is a dangling symlink or cannot be read") from None
            if stat.S_ISDIR(mode):
                yield from visit(p, ancestors | {key}, depth + 1)
            elif stat.S_ISREG(mode):
                yield p
            else:
                raise error(f"{what}: {p} is {kind_of(mode)}, not a regular file or folder")

    yield from visit(Path(root), set(), 0)


def no_symlink_between(root: Path, path: Path) -> bool:
    """True when every component of ``path`` below ``root`` exists and is no symlink (the folders real
    folders), so removing or writing ``path`` touches nothing outside ``root``."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return False
    if ".." in rel.parts or rel.is_absolute():
        return False
    p = Path(root)
    for part in rel.parts:
        p = p / part
        try:
            if stat.S_ISLNK(os.lstat(p).st_mode):
                return False
        except OSError:
            return False
    return True
