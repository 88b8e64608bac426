"""The streaming stages of a shard pipeline (webdataset's ``DataPipeline``): each shard opened as a local file and
read by the bounded tar reader, its samples checked against the index, validated, filtered, dealt to (rank, worker)
slots and decoded."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from lit_attacks.datamodules.shards import INDEX, MEMBERS, tar_problem
from lit_attacks.datamodules.tar_reader import group_samples, iter_members, open_shard
from lit_attacks.datamodules.tree import BappsDataError, check_key, check_triplet_sizes, decode_png, parse_judge_text

log = logging.getLogger(__name__)


class SkipLog:
    """Counts and names what ``skip_bad`` skipped (in this process)."""

    def __init__(self) -> None:
        self.skipped: List[str] = []

    def add(self, what: str) -> None:
        self.skipped.append(what)
        log.warning("skipping bad input: %s", what)


def check_shards(src: Iterable[dict], skip: Optional[SkipLog], compression: Optional[Dict[str, str]] = None
                 ) -> Iterator[dict]:
    """Refuse truncated plain tars before streaming them (see :func:`tar_problem`)."""
    for item in src:
        problem = None if (compression or {}).get(item["url"]) else tar_problem(item["url"])
        if problem is None:
            yield item
            continue
        msg = f"corrupt or truncated shard {item['url']}: {problem}"
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
    judge = parse_judge_text(s["judge.txt"], where)
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


def read_local_shards(src: Iterable[dict], expected: Dict[str, List[str]], skip: Optional[SkipLog],
                      compression: Optional[Dict[str, str]] = None) -> Iterator[dict]:
    """Open each shard as a local regular file (never through webdataset's URL opener, which would run
    ``pipe:`` names as shell commands) and yield its grouped samples through the bounded tar reader
    (:mod:`lit_attacks.datamodules.tar_reader`), checking them against the index: the keys it lists, in
    order, and their count (a tar cut cleanly after a sample is caught here)."""
    seen: Dict[str, str] = {}  # key -> shard, over the shards this stream reads
    for item in src:
        url = item["url"]
        keys = expected.get(url)
        try:
            with open_shard(url, BappsDataError, (compression or {}).get(url)) as f:
                n = 0
                members = iter_members(f, f"corrupt or truncated shard {url}", BappsDataError)
                for sample in group_samples(members, url, f"shard {url}", BappsDataError):
                    key = sample["__key__"]
                    if keys is not None and (n >= len(keys) or key != keys[n]):
                        listed = repr(keys[n]) if n < len(keys) else "no further sample"
                        raise BappsDataError(f"shard {url}: sample {n} is {key!r} but {INDEX} lists {listed}")
                    if key in seen:
                        raise BappsDataError(f"sample {key} is in two shards, {seen[key]} and {url}")
                    seen[key] = url
                    n += 1
                    yield sample
                if keys is not None and n != len(keys):
                    raise BappsDataError(f"shard {url}: holds {n} samples, {INDEX} lists {len(keys)}: the shard is "
                                         "truncated or was rewritten; rebuild the shards")
        except BappsDataError as e:
            if skip is None:
                raise
            skip.add(str(e))
        except OSError as e:
            msg = f"shard {url}: cannot be read ({e.strerror or e})"
            if skip is None:
                raise BappsDataError(msg) from e
            skip.add(msg)


def stream(urls: Sequence[str], keep: Callable[[dict], bool], size: int, slot: int, slots: int, by_shard: bool,
           skip: Optional[SkipLog], validate: Callable = None, decode: Callable = None,
           expected: Optional[Dict[str, List[str]]] = None,
           compression: Optional[Dict[str, str]] = None) -> wds.DataPipeline:
    """The webdataset pipeline for one (rank, worker) slot of ``slots``.

    ``by_shard``: shards are dealt round-robin to slots. Otherwise every slot reads every shard and
    keeps kept-sample number ``j`` when ``j % slots == slot``. Either way each kept sample reaches
    exactly one slot. ``expected``: shard path -> the keys its index lists (checked while streaming).
    """
    def deal(src):
        for j, item in enumerate(src):
            if j % slots == slot:
                yield item

    stages = [wds.SimpleShardList(list(urls))]
    if by_shard:
        stages.append(deal)
    stages.append(lambda src: check_shards(src, skip, compression))
    validate, decode = validate or validate_samples, decode or decode_samples
    stages += [lambda src: read_local_shards(src, expected or {}, skip, compression),
               lambda src: validate(src, skip),
               lambda src: (s for s in src if keep(s))]
    if not by_shard:
        stages.append(deal)
    stages.append(lambda src: decode(src, size, skip))
    return wds.DataPipeline(*stages)
