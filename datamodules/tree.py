"""Reading the official BAPPS 2AFC layout: ``2afc/<split>/<category>/{ref,p0,p1,judge}/NNNNNN.*``."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SPLIT_CATEGORIES = {
    "val": ["traditional", "cnn", "superres", "deblur", "color", "frameinterp"],
    "train": ["traditional", "cnn", "mix"],
}
IMAGES = ("ref", "p0", "p1")
KEY_RE = re.compile(r"^(train|val|test)/[A-Za-z0-9_.-]+/[A-Za-z0-9_-]+$")


class BappsDataError(ValueError):
    """A BAPPS file, sample or shard is malformed; the message names it."""


@dataclass(frozen=True)
class TreeSample:
    """One 2AFC triplet on disk. ``key`` is ``<split>/<category>/<stem>``."""

    key: str
    category: str
    ref: Path
    p0: Path
    p1: Path
    judge: Path


def check_key(key: str, where: str) -> None:
    """A shard sample key must be ``<split>/<category>/<id>``: no absolute path, no ``..``."""
    if not KEY_RE.match(key) or ".." in key.split("/"):
        raise BappsDataError(f"{where}: member path outside a sample (expected <split>/<category>/<id>)")


def scan_tree(root: str | Path, split: str = "val", categories: Optional[Sequence[str]] = None) -> List[TreeSample]:
    """All triplets of ``root/2afc/<split>``, sorted by key.

    ``categories`` None takes every category folder present. A judge file whose ref/p0/p1 PNG is
    missing raises :class:`BappsDataError` naming both files.
    """
    base = Path(root) / "2afc" / split
    if not base.is_dir():
        raise BappsDataError(f"no BAPPS tree at {root}: {base} does not exist (ROOT must hold 2afc/{split}/...)")
    present = sorted(p.name for p in base.iterdir() if p.is_dir())
    cats = list(categories) if categories else present
    for c in cats:
        if c not in present:
            raise BappsDataError(f"category {c!r} not found in {base}; present: {present}")
    samples = []
    for c in cats:
        judges = sorted((base / c / "judge").glob("*.npy"))
        for j in judges:
            paths = {name: base / c / name / f"{j.stem}.png" for name in IMAGES}
            for name, p in paths.items():
                if not p.is_file():
                    raise BappsDataError(f"judge file {j} has no {name} image: {p} is missing")
            samples.append(TreeSample(f"{split}/{c}/{j.stem}", c, paths["ref"], paths["p0"], paths["p1"], j))
    return samples


def read_judge(data: bytes | Path, where: str) -> float:
    """The human judge (fraction preferring p1) from ``.npy`` bytes or file; must be one value in [0, 1]."""
    try:
        arr = np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False)
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable judge file ({e})") from e
    return check_judge(arr, where)


def check_judge(arr, where: str) -> float:
    arr = np.asarray(arr, dtype=np.float64).ravel()
    if arr.size != 1:
        raise BappsDataError(f"{where}: judge must hold one value, got {arr.size}")
    v = float(arr[0])
    if not np.isfinite(v) or v < 0 or v > 1:
        raise BappsDataError(f"{where}: judge {v} is outside [0, 1]")
    return v


def decode_png(data: bytes, where: str) -> Image.Image:
    """A PIL RGB image from PNG bytes; unreadable data raises naming ``where``."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e


def check_triplet_sizes(images: Iterable[Tuple[str, Image.Image]], where: str) -> None:
    sizes = {name: img.size for name, img in images}
    if len(set(sizes.values())) > 1:
        raise BappsDataError(f"{where}: triplet images differ in size: {sizes}")
