"""Reading the official BAPPS 2AFC layout: ``2afc/<split>/<category>/{ref,p0,p1,judge}/NNNNNN.*``."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from lit_attacks.safe_files import InputError, kind_of, read_regular

SPLIT_CATEGORIES = {
    "val": ["traditional", "cnn", "superres", "deblur", "color", "frameinterp"],
    "train": ["traditional", "cnn", "mix"],
}
IMAGES = ("ref", "p0", "p1")
KEY_RE = re.compile(r"^(train|val|test)/[A-Za-z0-9_.-]+/[A-Za-z0-9_-]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # a category folder or file stem: what a shard key can hold
MIN_SIDE = 8  # pixels; smaller images are refused (a 1x1 "triplet" is no image pair to compare)
MAX_PIXELS = 4096 * 4096  # decoded size cap: a 12000x12000 PNG of a few hundred KB would take 3 GB
MAX_JUDGE_BYTES = 4096  # a .npy judge file is 132 bytes
JUDGE_TEXT = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")  # as repr(float) writes it
EXIF_ORIENTATION = 0x0112


class BappsDataError(InputError):
    """A BAPPS file, sample or shard is malformed; the message names it."""


@dataclass(frozen=True)
class TreeSample:
    """One 2AFC triplet on disk. ``key`` is ``<split>/<category>/<stem>``; ``judge`` is the judge file, or the
    judge itself (NIGHTS: from its votes)."""

    key: str
    category: str
    ref: Path
    p0: Path
    p1: Path
    judge: Path | float


def check_key(key: str, where: str) -> None:
    """A shard sample key must be ``<split>/<category>/<id>``: no absolute path, no ``..``."""
    if not KEY_RE.match(key) or ".." in key.split("/"):
        raise BappsDataError(f"{where}: member path outside a sample (expected <split>/<category>/<id>)")


def key_from_judge_path(path: str) -> str:
    """``val/cnn/judge/000123.npy`` (the official subset list, the official CSVs' ``path``) -> ``val/cnn/000123``."""
    parts = Path(path).parts
    if len(parts) < 4 or parts[-2] != "judge":
        raise BappsDataError(f"not a BAPPS judge path: {path!r}")
    return f"{parts[-4]}/{parts[-3]}/{Path(parts[-1]).stem}"


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
            for name, p in [("judge", j)] + list(paths.items()):
                if not p.exists():
                    raise BappsDataError(f"judge file {j} has no {name} image: {p} is missing")
                if not p.is_file():
                    raise BappsDataError(f"{name} file {p} is {kind_of(p.stat().st_mode)}, not a regular file")
            samples.append(TreeSample(f"{split}/{c}/{j.stem}", c, paths["ref"], paths["p0"], paths["p1"], j))
    return samples


def read_judge(data: bytes | Path, where: str) -> float:
    """The human judge (fraction preferring p1) from ``.npy`` bytes or file: one floating-point value in
    [0, 1] (a bool, integer, complex, string or object array is no judge)."""
    if not isinstance(data, bytes):
        data = read_regular(data, "judge file", MAX_JUDGE_BYTES, BappsDataError)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable judge file ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        raise BappsDataError(f"{where}: judge has dtype {getattr(arr, 'dtype', type(arr).__name__)}; a judge is a "
                             "floating-point fraction in [0, 1]")
    return check_judge(arr, where)


def parse_judge_text(raw: bytes, where: str) -> float:
    """A shard's ``judge.txt``: a plain decimal number in [0, 1] (no sign, no ``nan``, ``inf`` or ``1_0``)."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        text = None
    if text is None or not JUDGE_TEXT.match(text):
        raise BappsDataError(f"{where}: judge is not a number ({raw[:40]!r})")
    return check_judge(float(text), where)


def check_judge(arr, where: str) -> float:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size != 1 or arr.ndim > 2:
        raise BappsDataError(f"{where}: judge must hold one value, got {arr.size} (shape {arr.shape})")
    v = float(arr.ravel()[0])
    if not np.isfinite(v) or v < 0 or v > 1:
        raise BappsDataError(f"{where}: judge {v} is outside [0, 1]")
    return v


def decode_png(data: bytes, where: str) -> Image.Image:
    """A PIL RGB image from PNG bytes, opened as PNG only (PIL never picks another decoder from the bytes:
    a PostScript, JPEG, GIF, BMP, WEBP or TIFF file named ``.png`` is refused, and no external program
    runs). Images smaller than ``MIN_SIDE`` or larger than ``MAX_PIXELS`` (checked from the header, before
    decoding), animated PNGs and images with an EXIF orientation are refused. The only conversions, each
    exact except the first: 16-bit greyscale is scaled to 8 bits (PIL's own conversion would clip it to
    white); greyscale, 1-bit and palette images are expanded to RGB; an alpha channel is dropped only when
    every pixel is opaque (a transparent pixel is refused: what it shows depends on the background)."""
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG"])
    except UnidentifiedImageError:
        raise BappsDataError(f"{where}: unreadable image (not a PNG file: it starts with {data[:8]!r}; data images "
                             "must be PNG)") from None
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise BappsDataError(f"{where}: image is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the "
                             f"{MAX_PIXELS / 1e6:.1f} Mpx this reader decodes; downscale it first")
    if min(w, h) < MIN_SIDE:
        raise BappsDataError(f"{where}: image is {w}x{h}; images must be at least {MIN_SIDE}x{MIN_SIDE}")
    if getattr(img, "n_frames", 1) > 1:
        raise BappsDataError(f"{where}: an animated PNG ({img.n_frames} frames); data images are single frames")
    try:
        img.load()
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        if orientation not in (0, 1):
            raise BappsDataError(f"{where}: EXIF orientation {orientation} (the pixels are meant to be shown "
                                 "rotated or flipped); this reader does not rotate: save the pixels upright")
        return _to_rgb(img, where)
    except BappsDataError:
        raise
    except Exception as e:
        raise BappsDataError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode.startswith("I;16") or arr.max() > 255 else 1.0
        return Image.fromarray(np.clip(np.round(arr / scale), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise BappsDataError(f"{where}: {int((alpha < 255).sum())} pixels are transparent; data images are "
                                 "opaque RGB (flatten it onto a background first)")
        return img.convert("RGB")
    if img.mode in ("RGB", "L", "1", "P"):
        return img.convert("RGB")
    raise BappsDataError(f"{where}: PNG mode {img.mode} is not supported; data images are RGB or greyscale")


def check_triplet_sizes(images: Iterable[Tuple[str, Image.Image]], where: str) -> None:
    sizes = {name: img.size for name, img in images}
    if len(set(sizes.values())) > 1:
        raise BappsDataError(f"{where}: triplet images differ in size: {sizes}")
