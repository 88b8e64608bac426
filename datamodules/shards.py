"""2AFC webdataset shards: a deterministic writer with an index, and validated streaming stages.

A shard is a tar whose members are ``<key>.ref.png``, ``<key>.p0.png``, ``<key>.p1.png`` and
``<key>.judge.txt`` (the judge as a decimal float), with ``key = <split>/<category>/<stem>``.
``index.json`` beside the shards holds the split, the sample count, and for every shard its keys
and sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from lit_attacks.datamodules.tree import BappsDataError, TreeSample, check_judge, check_key, check_triplet_sizes, decode_png, read_judge

log = logging.getLogger(__name__)
INDEX = "index.json"
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
        tmp = out / (name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for s in chunk:
                blobs = {m: getattr(s, m).read_bytes() for m in ("ref", "p0", "p1")}
                imgs = [(m, decode_png(b, f"{getattr(s, m)}")) for m, b in blobs.items()]
                check_triplet_sizes(imgs, f"sample {s.key}")
                judge = read_judge(s.judge, f"{s.judge}")
                for m in ("ref", "p0", "p1"):
                    _add(tar, f"{s.key}.{m}.png", blobs[m])
                _add(tar, f"{s.key}.judge.txt", repr(judge).encode())
                categories[s.category] = categories.get(s.category, 0) + 1
                bar.update()
        os.replace(tmp, out / name)
        shards.append({"name": name, "count": len(chunk), "keys": [s.key for s in chunk], "sha256": sha256(out / name)})
    bar.close()
    index = {"format": 1, "split": split, "count": len(samples), "categories": categories, "shards": shards}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_index(folder: str | Path) -> dict:
    p = Path(folder) / INDEX
    if not p.is_file():
        tars = sorted(Path(folder).glob("*.tar"))
        if not tars:
            raise BappsDataError(f"no shards in {folder}: neither {INDEX} nor *.tar files")
        return {"format": 1, "split": None, "count": None, "shards": [{"name": t.name} for t in tars]}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise BappsDataError(f"{p}: corrupt index ({e})") from e


# ---------------------------------------------------------------- streaming stages (webdataset pipeline)
class SkipLog:
    """Counts and names what ``skip_bad`` skipped (in this process)."""

    def __init__(self) -> None:
        self.skipped: List[str] = []

    def add(self, what: str) -> None:
        self.skipped.append(what)
        log.warning("skipping bad input: %s", what)


def tar_error_handler(skip: Optional[SkipLog]) -> Callable[[Exception], bool]:
    """webdataset handler: a corrupt or truncated shard raises naming the shard (or is skipped and counted)."""

    def handler(exn: Exception) -> bool:
        urls = [a for a in exn.args if isinstance(a, str) and a.endswith(".tar")]
        shard = urls[-1] if urls else "?"
        msg = f"corrupt or truncated shard {shard}: {type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        if skip is None:
            raise BappsDataError(msg) from exn
        skip.add(msg)
        return True

    return handler


def check_shards(src: Iterable[dict], skip: Optional[SkipLog]) -> Iterator[dict]:
    """Refuse truncated tars before streaming them: a complete tar is whole 512-byte blocks ending
    in two zero blocks (Python's tarfile can stop silently at a cut that falls on a header)."""
    for item in src:
        url = item["url"]
        try:
            size = os.path.getsize(url)
            with open(url, "rb") as f:
                f.seek(max(0, size - 1024))
                tail = f.read(1024)
            problem = None
            if size == 0 or size % 512:
                problem = f"size {size} is not a whole number of 512-byte tar blocks"
            elif tail.count(0) != len(tail) or len(tail) < 1024:
                problem = "no end-of-archive marker"
        except OSError as e:
            problem = str(e)
        if problem is None:
            yield item
            continue
        msg = f"corrupt or truncated shard {url}: {problem}"
        if skip is None:
            raise BappsDataError(msg)
        skip.add(msg)


def validate_samples(src: Iterable[dict], skip: Optional[SkipLog]) -> Iterator[dict]:
    """Check keys and members of grouped tar samples; parse the judge. Yields dicts with raw PNG bytes."""
    for s in src:
        shard, key = s.get("__url__", "?"), s.get("__key__", "?")
        try:
            yield _validate(s, shard, key)
        except BappsDataError as e:
            if skip is None:
                raise
            skip.add(str(e))


def _validate(s: dict, shard: str, key: str) -> dict:
    where = f"shard {shard}, key {key}"
    check_key(key, where)
    fields = {k for k in s if not k.startswith("__")}
    extra = sorted(fields - set(MEMBERS))
    if extra:
        raise BappsDataError(f"{where}: unexpected members {extra}")
    missing = [m for m in MEMBERS if m not in fields]
    if missing:
        raise BappsDataError(f"{where}: missing members {missing}")
    try:
        judge = check_judge(float(s["judge.txt"].decode()), where)
    except ValueError as e:
        if isinstance(e, BappsDataError):
            raise
        raise BappsDataError(f"{where}: judge is not a number ({e})") from e
    split, category, _ = key.split("/")
    return {"key": key, "category": category, "judge": judge, "shard": shard,
            "png": {m: s[f"{m}.png"] for m in ("ref", "p0", "p1")}}


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL RGB -> (3, size, size) in [-1, 1]; bilinear resize (PIL, antialiased) like torchvision's Resize."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1


def decode_samples(src: Iterable[dict], size: int, skip: Optional[SkipLog]) -> Iterator[dict]:
    """Decode the PNGs of validated samples to (3, size, size) tensors in [-1, 1]."""
    for s in src:
        where = f"shard {s['shard']}, key {s['key']}"
        try:
            imgs = [(m, decode_png(s["png"][m], f"{where}, {m}.png")) for m in ("ref", "p0", "p1")]
            check_triplet_sizes(imgs, where)
        except BappsDataError as e:
            if skip is None:
                raise
            skip.add(str(e))
            continue
        out = {"key": s["key"], "category": s["category"], "judge": torch.tensor(s["judge"], dtype=torch.float32)}
        out.update({m: to_tensor(img, size) for m, img in imgs})
        yield out


def stream(urls: Sequence[str], keep: Callable[[dict], bool], size: int, slot: int, slots: int, by_shard: bool,
           skip: Optional[SkipLog], validate: Callable = None, decode: Callable = None) -> wds.DataPipeline:
    """The webdataset pipeline for one (rank, worker) slot of ``slots``.

    ``by_shard``: shards are dealt round-robin to slots. Otherwise every slot reads every shard and
    keeps kept-sample number ``j`` when ``j % slots == slot``. Either way each kept sample reaches
    exactly one slot.
    """
    def deal(src):
        for j, item in enumerate(src):
            if j % slots == slot:
                yield item

    stages = [wds.SimpleShardList(list(urls))]
    if by_shard:
        stages.append(deal)
    stages.append(lambda src: check_shards(src, skip))
    validate, decode = validate or validate_samples, decode or decode_samples
    stages += [wds.tarfile_to_samples(handler=tar_error_handler(skip)),
               lambda src: validate(src, skip),
               lambda src: (s for s in src if keep(s))]
    if not by_shard:
        stages.append(deal)
    stages.append(lambda src: decode(src, size, skip))
    return wds.DataPipeline(*stages)
