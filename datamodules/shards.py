"""2AFC webdataset shards: a deterministic writer with an index, and the checks of a shard folder against it
(the streaming stages are in :mod:`lit_attacks.datamodules.streaming`).

A shard is a tar whose members are ``<key>.ref.png``, ``<key>.p0.png``, ``<key>.p1.png`` and
``<key>.judge.txt`` (the judge as a decimal float), with ``key = <split>/<category>/<stem>``.
``index.json`` beside the shards holds the split, the sample count, and for every shard its keys
and sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from lit_attacks.datamodules.cache import read_cache_json, update_cache_json
from lit_attacks.folders import file_sha256
from lit_attacks.datamodules.tar_reader import MAX_PNG_BYTES, open_shard, scan_shard
from lit_attacks.datamodules.tree import (BappsDataError, TreeSample, check_judge, check_triplet_sizes, decode_png,
                                          parse_judge_text, read_judge)
from lit_attacks.report import atomic_file, atomic_write
from lit_attacks.safe_files import InputError, open_regular, read_regular, read_text

INDEX = "index.json"
MAX_INDEX_BYTES = 256 << 20  # an index of a few million samples
COMPRESSIONS = ("gzip",)
MEMBERS = ("ref.png", "p0.png", "p1.png", "judge.txt")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Sequence[TreeSample], out: str | Path, shard_size: int = 1000, prefix: Optional[str] = None,
                 progress: bool = True) -> dict:
    """Validate every triplet and write ``ceil(len / shard_size)`` tar shards plus ``index.json`` to ``out``.

    Output is byte-for-byte reproducible (fixed tar metadata, sorted keys). Each shard is written to a
    temporary name and renamed when complete; the index is written last, so a folder with an index
    is complete.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not samples:
        raise BappsDataError(f"no samples to write to {out}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)
    split = samples[0].key.split("/")[0]
    prefix = prefix or f"bapps-{split}"
    samples = sorted(samples, key=lambda s: s.key)
    shards, categories = [], {}
    chunks = [samples[i:i + shard_size] for i in range(0, len(samples), shard_size)]
    bar = tqdm(total=len(samples), desc=f"shards {out}", unit="sample", disable=not progress)
    for n, chunk in enumerate(chunks):
        name = f"{prefix}-{n:06d}.tar"
        judges = []
        with atomic_file(out / name) as tmp:  # a bad file, a full disk, an interrupt: no partial shard is left
            _write_chunk(tmp, chunk, judges, categories, bar)
        shards.append({"name": name, "count": len(chunk), "keys": [s.key for s in chunk], "judges": judges,
                       "sha256": sha256(out / name), "size": (out / name).stat().st_size})
    bar.close()
    index = {"format": 1, "split": split, "count": len(samples), "categories": categories, "shards": shards}
    atomic_write(out / INDEX, json.dumps(index, indent=1))
    return index


def _write_chunk(tmp: Path, chunk: Sequence[TreeSample], judges: List[float], categories: Dict[str, int], bar) -> None:
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in chunk:
            blobs = {m: read_regular(getattr(s, m), "image", MAX_PNG_BYTES, BappsDataError)
                     for m in ("ref", "p0", "p1")}
            imgs = [(m, decode_png(b, f"{getattr(s, m)}")) for m, b in blobs.items()]
            check_triplet_sizes(imgs, f"sample {s.key}")
            judge = s.judge if isinstance(s.judge, float) else read_judge(s.judge, f"{s.judge}")  # NIGHTS: votes
            for m in ("ref", "p0", "p1"):
                _add(tar, f"{s.key}.{m}.png", blobs[m])
            _add(tar, f"{s.key}.judge.txt", repr(judge).encode())
            judges.append(judge)
            categories[s.category] = categories.get(s.category, 0) + 1
            bar.update()


sha256 = file_sha256  # sha256 of a regular file (a FIFO or device is refused, never read forever)


URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def check_shard_name(name: Any, where: str) -> str:
    """A shard of a data folder is a plain local file name in that folder: no path, no ``pipe:``/URL scheme."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise BappsDataError(f"{where}: shard name {name!r} is not a plain file name in the folder")
    if URL_LIKE.match(name):
        raise BappsDataError(f"{where}: shard name {name!r} looks like a URL or a command ('pipe:', 'http:', ...); "
                             "shards of a data folder are local files only: rename it")
    return name


def read_index(folder: str | Path) -> dict:
    """The shard index of ``folder``, checked: an object with a ``shards`` list of plain local file names,
    each key in one shard only, judges real numbers in [0, 1], one per key. Without ``index.json`` the
    folder's ``*.tar`` files, sorted, with no keys."""
    p = Path(folder) / INDEX
    if not p.exists():
        tars = sorted(Path(folder).glob("*.tar"))
        if not tars:
            raise BappsDataError(f"no shards in {folder}: neither {INDEX} nor *.tar files")
        return {"format": 1, "split": None, "count": None,
                "shards": [{"name": check_shard_name(t.name, str(folder))} for t in tars]}
    key = (str(p.resolve()), stat_key(p))
    if key not in _INDEXES:  # read once per process while the file is unchanged
        _INDEXES.clear()  # at most one remembered per process: an index can hold millions of keys
        _INDEXES[key] = _checked_index(p)
    return _INDEXES[key]


_INDEXES: Dict[Tuple[str, str], dict] = {}  # (index.json, its stat) -> the checked index; callers never change it


def _checked_index(p: Path) -> dict:
    try:
        index = json.loads(read_text(p, "shard index", MAX_INDEX_BYTES, BappsDataError))
    except json.JSONDecodeError as e:
        raise BappsDataError(f"{p}: corrupt index ({e})") from e
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise BappsDataError(f"{p}: not a shard index (expected an object with a 'shards' list)")
    owner: Dict[str, str] = {}
    for entry in index["shards"]:
        if not isinstance(entry, dict):
            raise BappsDataError(f"{p}: every entry of 'shards' must be an object with a 'name', got {entry!r}")
        name = check_shard_name(entry.get("name"), str(p))
        _check_entry(p, name, entry)
        for k in entry.get("keys") or []:
            if k in owner:
                raise BappsDataError(f"{p}: sample {k} is in two shards, {owner[k]} and {name}")
            owner[k] = name
    return index


def _check_entry(p: Path, name: str, entry: dict) -> None:
    keys = entry.get("keys")
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        raise BappsDataError(f"{p}: 'keys' of shard {name} must be a list of strings")
    judges = entry.get("judges")
    if judges is not None:
        if not isinstance(judges, list) or len(judges) != len(keys or []):
            raise BappsDataError(f"{p}: 'judges' of shard {name} must be a list with one judge per key")
        for k, j in zip(keys, judges):
            if isinstance(j, bool) or not isinstance(j, (int, float)):
                raise BappsDataError(f"{p}: judge of {k} in shard {name} must be a number, got {j!r}")
            check_judge(j, f"{p}, {k}")
    for field, kind in (("count", int), ("size", int), ("sha256", str)):
        if field in entry and (not isinstance(entry[field], kind) or isinstance(entry[field], bool)):
            raise BappsDataError(f"{p}: {field!r} of shard {name} must be a {kind.__name__}")
    if "count" in entry and keys is not None and entry["count"] != len(keys):
        raise BappsDataError(f"{p}: shard {name} records count {entry['count']} but lists {len(keys)} keys")
    if entry.get("compression") not in (None,) + COMPRESSIONS:
        raise BappsDataError(f"{p}: compression of shard {name} must be one of {', '.join(COMPRESSIONS)}, "
                             f"got {entry['compression']!r}")


def stat_key(path: Path) -> str:
    """Size, mtime, ctime and inode of a file: what says it changed, without reading it."""
    st = path.stat()  # ctime changes on every write, even when mtime is put back (cp -p, rsync -a, tar x)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


class HashCache:
    """sha256 of files, remembered by path and stat (size, mtime, ctime, inode) in ``<cache>/sha256.json``,
    so a shard is hashed once until it changes. ``fresh`` ignores what is remembered. The file is read with the
    bounded regular-file reader and updated by a locked merge (:mod:`lit_attacks.datamodules.cache`): runs sharing the
    cache add to it."""

    def __init__(self, cache_dir: Path, fresh: bool = False) -> None:
        self.path = Path(cache_dir) / "sha256.json"
        self.fresh = fresh
        self.scanned: Dict[str, List[Tuple[str, Optional[float]]]] = {}
        known = None if fresh else read_cache_json(self.path)
        self.known: Dict[str, str] = {k: v for k, v in known.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(known, dict) else {}
        self._new: Dict[str, str] = {}  # learned since the last flush

    def sha256(self, path: Path, save: bool = True) -> str:
        """The file's sha256, remembered; ``save=False`` leaves writing the cache file to :meth:`flush` (a caller
        hashing many files writes it once)."""
        path = Path(path).resolve()
        key = f"{path}|{stat_key(path)}"
        if key not in self.known:
            self.known[key] = sha256(path)
            self._new[key] = self.known[key]
            if save:
                self.flush()
        return self.known[key]

    def flush(self) -> None:
        """Write what was learned since the last flush into the cache file (a locked merge)."""
        if self._new:
            new, self._new = self._new, {}
            update_cache_json(self.path, lambda current: {**current, **new})  # a read-only cache: re-hashing

    def scan(self, path: Path, compression: Optional[str] = None) -> List[Tuple[str, Optional[float]]]:
        """:func:`scan_keys_and_judges` of ``path``, remembered (in this process) while its stat is unchanged."""
        key = f"{Path(path).resolve()}|{compression}|{stat_key(path) if Path(path).exists() else ''}"
        if key not in self.scanned:
            self.scanned[key] = scan_keys_and_judges(Path(path), compression)
        return self.scanned[key]


def verify_shards(folder: Path, index: dict, hashes: HashCache) -> Dict[str, str]:
    """Every shard the index lists exists as a regular file with the size and sha256 it records, and holds
    what it lists: its headers are read (bounded, see :mod:`lit_attacks.datamodules.tar_reader`) for the
    keys, in order, and its judges compared with the index's. A key in two shards is an error naming both,
    also without an index. What the index does not record is not compared. Returns key -> shard path.
    Checked once per process while the index and every shard are unchanged (by stat); a ``fresh`` hash cache checks
    again."""
    try:  # the index object read_index remembers (the same while index.json is unchanged) and every shard's stat
        state = (str(Path(folder).resolve()), id(index), tuple(stat_key(Path(folder) / e["name"])
                                                              for e in index["shards"]))
    except (OSError, TypeError, KeyError):
        state = None  # a missing shard: the check below names it
    if state is not None and state in _VERIFIED and not hashes.fresh:
        return _VERIFIED[state][1]
    owner = _verify(folder, index, hashes)
    if state is not None:
        _VERIFIED.clear()
        _VERIFIED[state] = (index, owner)  # the index is held, so its id is not reused while remembered
    return owner


_VERIFIED: Dict[tuple, Tuple[dict, Dict[str, str]]] = {}  # the last verified folder state -> (index, key -> shard)


def _verify(folder: Path, index: dict, hashes: HashCache) -> Dict[str, str]:
    owner: Dict[str, str] = {}
    for entry in index["shards"]:
        path = Path(folder) / entry["name"]
        if not path.exists() and not path.is_symlink():
            raise BappsDataError(f"{Path(folder) / INDEX} lists shard {entry['name']}, which is missing")
        samples = hashes.scan(path, entry.get("compression"))
        if "size" in entry and path.stat().st_size != entry["size"]:
            raise BappsDataError(f"corrupt or truncated shard {path}: {path.stat().st_size} bytes, {INDEX} records "
                                 f"{entry['size']}; rebuild the shards")
        if "sha256" in entry and hashes.sha256(path, save=False) != entry["sha256"]:
            raise BappsDataError(f"corrupt or changed shard {path}: its sha256 differs from the one {INDEX} records "
                                 "(the file changed after it was written); rebuild the shards")
        keys = [k for k, _ in samples]
        if "keys" in entry and keys != entry["keys"]:
            n = next((i for i, (a, b) in enumerate(zip(keys, entry["keys"])) if a != b),
                     min(len(keys), len(entry["keys"])))
            raise BappsDataError(f"shard {path}: holds {len(keys)} samples, {INDEX} lists {len(entry['keys'])}; "
                                 f"they differ first at sample {n}: the shard is truncated or was rewritten, or the "
                                 "index was edited; rebuild the shards")
        if "judges" in entry:
            for (k, j), listed in zip(samples, entry["judges"]):
                if j != listed:
                    raise BappsDataError(f"shard {path}, key {k}: judge {j!r} in the shard, {listed!r} in {INDEX} "
                                         "(the index was edited?); rebuild the shards")
        for k in keys:
            if k in owner:
                raise BappsDataError(f"sample {k} is in two shards, {owner[k]} and {path}")
            owner[k] = str(path)
    hashes.flush()  # once for all the shards
    return owner


def scan_keys_and_judges(path: Path, compression: Optional[str] = None) -> List[Tuple[str, Optional[float]]]:
    """(key, judge or None) of each sample of a shard, from its headers and judge members only."""
    where = f"corrupt or truncated shard {path}"
    open_shard(str(path), BappsDataError, compression).close()  # a regular file; compressed only if declared
    if compression is None:
        problem = tar_problem(path)
        if problem is not None:
            raise BappsDataError(f"{where}: {problem}")
    out = []
    judges_only = lambda name: name.endswith(".judge.txt")  # noqa: E731
    for s in scan_shard(str(path), f"shard {path}", BappsDataError, compression, read=judges_only):
        raw = s.get("judge.txt")
        judge = None
        if raw is not None:
            try:
                judge = parse_judge_text(raw, f"shard {path}, key {s['__key__']}")
            except BappsDataError:
                judge = None  # reported with the sample's other problems while streaming
        out.append((s["__key__"], judge))
    return out


def content_fingerprint(folder: Path, index: dict, hashes: HashCache) -> str:
    """A hash of what the shards hold: the index when there is one (it records every shard's sha256),
    else every tar's name and sha256."""
    p = Path(folder) / INDEX
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    h = hashlib.sha256()
    for entry in index["shards"]:
        h.update(f"{entry['name']}:{hashes.sha256(Path(folder) / entry['name'])}\n".encode())
    return h.hexdigest()[:16]


def tar_problem(path: str | Path) -> Optional[str]:
    """Why ``path`` is not a complete plain tar, or None: a regular file of whole 512-byte blocks ending in two
    zero blocks (Python's tarfile can stop silently at a cut that falls on a header)."""
    try:
        with open_regular(path, "shard") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 1024))
            tail = f.read(1024)
    except InputError as e:
        return str(e)
    if size == 0 or size % 512:
        return f"size {size} is not a whole number of 512-byte tar blocks"
    if tail.count(0) != len(tail) or len(tail) < 1024:
        return "no end-of-archive marker"
    return None
