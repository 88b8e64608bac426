"""A bounded reader for shard tars: every member header is checked before its data is read.

Python's ``tarfile`` (and webdataset's expander on top of it) reads a member whole, decompresses whatever
compression it detects and follows GNU sparse maps: a 3 MB gzip file named ``.tar`` with a 3 GB member, or
a sparse member declaring 2 GB, costs gigabytes of memory before any check. This reader

- accepts plain tars (or gzip only where the shard index says so, see :func:`open_shard`),
- reads regular-file members only (folders are skipped; links, devices, FIFOs, sparse files, GNU volume
  headers and global pax headers are refused), long names from pax ``path`` records or GNU ``L`` headers,
- checks each member's declared size against the cap for its kind (:func:`member_cap`: a PNG of at most
  :data:`MAX_PNG_BYTES`, a judge of 64 bytes, ...) before reading it, and verifies each header's checksum.
"""
from __future__ import annotations

import gzip
import os
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple, Type

from lit_attacks.safe_files import open_regular

BLOCK = 512
MAX_PNG_BYTES = 64 << 20  # a PNG of the largest image decode_png accepts (16.8 Mpx), stored uncompressed
MAX_META = 64 << 10       # a pax header or GNU long name
CAPS = {".png": MAX_PNG_BYTES, "judge.txt": 64, ".json": 1 << 20}
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
              b"\x04\x22\x4d\x18": "lz4"}
TYPES = {b"1": "a hard link", b"2": "a symlink", b"3": "a character device", b"4": "a block device",
         b"6": "a FIFO", b"7": "a contiguous file", b"S": "a GNU sparse file", b"V": "a GNU volume header",
         b"M": "a GNU multi-volume part", b"g": "a global pax header", b"K": "a GNU long link name"}


def member_cap(name: str) -> int:
    """The largest size a member of this name can have in a shard (1 MiB for an unknown kind)."""
    for suffix, cap in CAPS.items():
        if name.endswith(suffix):
            return cap
    return 1 << 20


def compression_of(head: bytes) -> Optional[str]:
    """The compression whose magic number ``head`` starts with, or None."""
    return next((kind for magic, kind in COMPRESSED.items() if head.startswith(magic)), None)


def open_shard(path: str, error: Type[Exception], compression: Optional[str] = None) -> BinaryIO:
    """The shard's tar stream: a regular file, uncompressed unless ``compression`` ("gzip", from the index)
    says so; a compressed file the index does not declare is refused before anything is decompressed."""
    where = f"shard {path}"
    f = open_regular(path, "shard", error=error)
    head = f.read(8)
    f.seek(0)
    found = compression_of(head)
    if compression is None and found is not None:
        f.close()
        raise error(f"{where}: is a {found}-compressed file, not a plain tar; shards are plain tars (decompress "
                    f"it, or declare \"compression\": \"gzip\" for it in index.json)")
    if compression is not None:
        if compression != "gzip" or found != "gzip":
            f.close()
            raise error(f"{where}: index.json declares compression {compression!r}, the file is "
                        f"{found or 'uncompressed'}; only gzip is supported")
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


def _octal(field: bytes, where: str, error: Type[Exception]) -> int:
    if field and field[0] & 0x80:  # base-256: only for sizes of 8 GB and more
        raise error(f"{where}: a member declares a size of 8 GB or more (base-256 field)")
    text = field.replace(b"\0", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise error(f"{where}: corrupt tar header (numeric field {field!r})") from None


def _read_exact(f: BinaryIO, n: int, where: str, error: Type[Exception]) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise error(f"{where}: truncated tar (a member is cut after {len(data)} of {n} bytes)")
    return data


def _skip(f: BinaryIO, n: int, where: str, error: Type[Exception], seekable: bool) -> None:
    if seekable:
        f.seek(n, os.SEEK_CUR)
        return
    while n > 0:
        got = len(f.read(min(n, 1 << 20)))
        if got == 0:
            raise error(f"{where}: truncated tar")
        n -= got


def _pax_path(data: bytes, where: str, error: Type[Exception]) -> Optional[str]:
    """The ``path`` record of a pax header; a ``size`` record (which would override the checked header) or
    an unparsable record is refused."""
    path, pos = None, 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise error(f"{where}: corrupt pax header") from None
        record = data[sp + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"size" or key.startswith(b"GNU.sparse"):
            raise error(f"{where}: a pax header overrides a member's size or declares a sparse file; refused")
        if key == b"path":
            path = value.decode("utf-8", "replace")
        if length <= 0:
            raise error(f"{where}: corrupt pax header")
        pos += length
    return path


def iter_members(f: BinaryIO, where: str, error: Type[Exception], read_data: Callable[[str], bool] = lambda n: True,
                 seekable: bool = False) -> Iterator[Tuple[str, int, Optional[bytes]]]:
    """``(name, size, data)`` of each regular-file member, in order; ``data`` is None where ``read_data(name)``
    says not to read it (it is skipped, by seeking when ``seekable``). Sizes are checked against
    :func:`member_cap` before anything is read; the archive must end with its end-of-archive block."""
    long_name: Optional[str] = None
    while True:
        hdr = f.read(BLOCK)
        if len(hdr) < BLOCK:
            raise error(f"{where}: truncated tar (no end-of-archive marker)")
        if hdr == bytes(BLOCK):
            return
        stored = _octal(hdr[148:156], where, error)
        if stored != sum(hdr[:148]) + 8 * 32 + sum(hdr[156:]):
            raise error(f"{where}: corrupt tar header (checksum mismatch)")
        name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if hdr[257:262] == b"ustar" and hdr[345:500].strip(b"\0"):
            name = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        size, kind = _octal(hdr[124:136], where, error), hdr[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"L"):
            if size > MAX_META:
                raise error(f"{where}: a {'pax' if kind == b'x' else 'long-name'} header of {size} bytes; refused")
            data = _read_exact(f, padded, where, error)[:size]
            if kind == b"x":
                long_name = _pax_path(data, where, error)
            else:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if kind == b"5":
            _skip(f, padded, where, error, seekable)
            continue
        if kind not in (b"0", b"\0"):
            raise error(f"{where}: member {name!r} is {TYPES.get(kind, f'of tar type {kind!r}')}; shards hold "
                        "regular files only")
        cap = member_cap(name)
        if size > cap:
            raise error(f"{where}: member {name!r} declares {size} bytes, above the {cap} bytes such a member can "
                        "hold; refused before reading it")
        if read_data(name):
            data = _read_exact(f, padded, where, error)[:size]
            yield name, size, data
        else:
            _skip(f, padded, where, error, seekable)
            yield name, size, None


def split_name(name: str) -> Tuple[str, str]:
    """``val/cnn/000001.ref.png`` -> (``val/cnn/000001``, ``ref.png``): the key ends at the first dot of the
    base name (webdataset's convention)."""
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{head}/{stem}" if head else stem), suffix


def group_samples(members: Iterator[Tuple[str, int, Optional[bytes]]], url: str, where: str,
                  error: Type[Exception]) -> Iterator[dict]:
    """Consecutive members with one key as one sample dict (``__key__``, ``__url__``, suffix -> bytes); a
    member repeated within a sample is an error."""
    current: Optional[dict] = None
    for name, _, data in members:
        key, suffix = split_name(name)
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key, "__url__": url}
        if suffix in current:
            raise error(f"{where}: member {name!r} appears twice")
        current[suffix] = data
    if current is not None:
        yield current


def scan_shard(path: str, where: str, error: Type[Exception], compression: Optional[str] = None,
               read: Callable[[str], bool] = lambda n: False) -> List[dict]:
    """The samples of a shard from its headers (data read only for members ``read`` selects), with every
    check of :func:`iter_members`: cheap (it seeks past image data), bounded, and it always ends."""
    with open_shard(path, error, compression) as f:
        seekable = compression is None
        return list(group_samples(iter_members(f, where, error, read, seekable), path, where, error))

