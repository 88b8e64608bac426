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
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # a category folder or file stem: what a shard key can hold
MIN_SIDE = 8  # pixels; smaller images are refused (a 1x1 "triplet" is no image pair to compare)
MAX_PIXELS = 4096 * 4096  # decoded size cap: a 12000x12000 PNG of a few hundred KB would take 3 GB


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
        if not NAME_RE.match(c):
            raise BappsDataError(f"category folder {base / c}: names may hold only letters, digits, '_' and '-' "
                                 f"(they become shard keys <split>/<category>/<stem>); rename it")
        judges = sorted((base / c / "judge").glob("*.npy"))
        stems = {j.stem for j in judges}
        for name in IMAGES:
            for img in sorted((base / c / name).glob("*.png")):
                if img.stem not in stems:
                    raise BappsDataError(f"image {img} has no judge file ({base / c / 'judge' / (img.stem + '.npy')} "
                                         "is missing)")
        for j in judges:
            if not NAME_RE.match(j.stem):
                raise BappsDataError(f"judge file {j}: file names may hold only letters, digits, '_' and '-' "
                                     f"(they become shard keys <split>/<category>/<stem>); rename it")
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
    """A PIL RGB image from PNG bytes. Unreadable data, images smaller than ``MIN_SIDE`` or larger than
    ``MAX_PIXELS`` (checked from the header, before decoding) raise naming ``where``. 16-bit greyscale is
    scaled to 8 bits (PIL's own conversion would clip it to white)."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise BappsDataError(f"{where}: image is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the "
                             f"{MAX_PIXELS / 1e6:.1f} Mpx this reader decodes; downscale it first")
    if min(w, h) < MIN_SIDE:
        raise BappsDataError(f"{where}: image is {w}x{h}; images must be at least {MIN_SIDE}x{MIN_SIDE}")
    try:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img, dtype=np.float64)
            scale = 257.0 if img.mode.startswith("I;16") or arr.max() > 255 else 1.0
            img = Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB")
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e


def check_triplet_sizes(images: Iterable[Tuple[str, Image.Image]], where: str) -> None:
    sizes = {name: img.size for name, img in images}
    if len(set(sizes.values())) > 1:
        raise BappsDataError(f"{where}: triplet images differ in size: {sizes}")
