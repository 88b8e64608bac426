"""Read a TensorFlow 2 checkpoint (``<prefix>.index`` + ``<prefix>.data-0000k-of-0000n``) without TensorFlow.

The format is TensorFlow's tensor bundle: the index is a LevelDB-style sorted table whose values are
``BundleEntryProto`` messages (dtype, shape, shard, offset, size, masked CRC32-C); the data files hold the raw
little-endian tensor bytes. Only numeric tensors are returned (the object graph, a string tensor, is skipped), as
numpy arrays keyed by the checkpoint's names
(``frontend/cnns/0/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``).
Every tensor's CRC32-C is checked, so a truncated or corrupted file is an error naming it, never a silently different
network. Nothing is unpickled or executed: the reader parses bytes.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np

_MAGIC = 0xDB4775248B80FB57
# tensorflow/core/framework/types.proto -> numpy (little-endian)
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2", 19: "<f2",
           22: "<u4", 23: "<u8"}
_DT_STRING = 7


class CheckpointFormatError(RuntimeError):
    """A file is not a readable TensorFlow checkpoint."""


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(msg: bytes) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: ints for varint / fixed, bytes for length-delimited."""
    pos = 0
    while pos < len(msg):
        tag, pos = _varint(msg, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(msg, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", msg, pos)[0], pos + 8
        elif wire == 2:
            n, pos = _varint(msg, pos)
            value, pos = msg[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = struct.unpack_from("<I", msg, pos)[0], pos + 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _block(table: bytes, offset: int, size: int, path: Path) -> List[Tuple[bytes, bytes]]:
    """The (key, value) entries of one table block (prefix-compressed keys, restart array at the end)."""
    if offset + size + 5 > len(table):
        raise CheckpointFormatError(f"{path}: block at {offset} runs past the end of the file")
    if table[offset + size] != 0:
        raise CheckpointFormatError(f"{path}: compressed index blocks (type {table[offset + size]}) are not supported")
    block = table[offset:offset + size]
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 * (restarts + 1)
    pos, key, out = 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        nvalue, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + nvalue]))
        pos += nvalue
    return out


def _handle(buf: bytes, pos: int = 0) -> Tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


_CRC_TABLE: List[int] = []


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TensorFlow computes it."""
    if not _CRC_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    table, crc = _CRC_TABLE, 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def read_tf_checkpoint(prefix: str | Path, verify: bool = True) -> Dict[str, np.ndarray]:
    """Every numeric tensor of the checkpoint ``prefix`` (the path without ``.index``), by name.

    Args:
        prefix: e.g. ``.../pim-1/weights`` for ``weights.index`` and ``weights.data-00000-of-00001``.
        verify: check each tensor's CRC32-C (pure Python, about 1 s per 5 MB).
    """
    prefix = Path(prefix)
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        raise FileNotFoundError(f"TensorFlow checkpoint index {str(index)!r} not found")
    table = index.read_bytes()
    if len(table) < 48 or struct.unpack_from("<Q", table, len(table) - 8)[0] != _MAGIC:
        raise CheckpointFormatError(f"{index}: not a TensorFlow checkpoint index (no table footer)")
    footer = table[-48:]
    _, _, pos = _handle(footer)  # metaindex block (unused)
    ioff, isize, _ = _handle(footer, pos)
    entries: List[Tuple[bytes, bytes]] = []
    for _, value in _block(table, ioff, isize, index):
        off, size, _ = _handle(value)
        entries.extend(_block(table, off, size, index))
    header = dict((f, v) for f, _, v in _fields(entries[0][1])) if entries and entries[0][0] == b"" else None
    if header is None:
        raise CheckpointFormatError(f"{index}: no bundle header")
    shards, endian = header.get(1, 1), header.get(2, 0)
    if endian != 0:
        raise CheckpointFormatError(f"{index}: big-endian checkpoints are not supported")
    data: Dict[int, bytes] = {}
    out: Dict[str, np.ndarray] = {}
    for key, value in entries[1:]:
        name = key.decode()
        f = {1: 0, 3: 0, 4: 0, 5: 0}
        shape: List[int] = []
        crc = None
        for field, _, v in _fields(value):
            if field == 2:
                for sf, _, dim in _fields(v):
                    if sf == 2:
                        shape.append(dict((a, b) for a, _, b in _fields(dim)).get(1, 0))
            elif field == 6:
                crc = v
            elif field == 7:
                raise CheckpointFormatError(f"{index}: tensor {name!r} is saved in slices (not supported)")
            else:
                f[field] = v
        dtype, shard, offset, size = f[1], f[3], f[4], f[5]
        if dtype == _DT_STRING:
            continue
        if dtype not in _DTYPES:
            raise CheckpointFormatError(f"{index}: tensor {name!r} has unsupported dtype code {dtype}")
        if shard not in data:
            path = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{shards:05d}")
            if not path.is_file():
                raise FileNotFoundError(f"TensorFlow checkpoint data {str(path)!r} not found (next to {index.name})")
            data[shard] = path.read_bytes()
        raw = data[shard][offset:offset + size]
        dt = np.dtype(_DTYPES[dtype])
        if len(raw) != size or size != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise CheckpointFormatError(f"{index}: tensor {name!r} of shape {shape} has {len(raw)} bytes at "
                                        f"{offset}, expected {int(np.prod(shape)) * dt.itemsize} (truncated file?)")
        if verify and crc is not None and crc32c(raw) != _unmask(crc):
            raise CheckpointFormatError(f"{index}: tensor {name!r} fails its CRC32-C check (corrupted data file)")
        out[name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    return out
