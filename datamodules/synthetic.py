"""The built-in 2AFC sets: deterministic, in the BAPPS layout and shard format; their judges are synthetic.

``photos`` (the default): each reference is a 64x64 crop, at a random scale, of one of the CC0 /
public-domain photographs that scikit-image ships inside its wheel (:data:`PHOTOS`; nothing is
downloaded). p0 and p1 are the reference under BAPPS-style traditional distortions (blur, noise, JPEG,
colour, contrast) at one of five levels each, the levels of the families chosen to look alike in
severity (as TID2013's levels); p0's family is the sample's category and p1's is the same family for
half of the samples and another one otherwise. The judge prefers the lower level: 1.0 when p1's level
is lower, 0.0 when p0's is (levels one or two apart); about 1 sample in 10 has equal levels and a split
judge (0.4 or 0.6), like a non-unanimous BAPPS sample. Comparing a blur with a colour shift at
neighbouring levels is where metrics and the (synthetic) judges disagree: l2, SSIM and LPIPS(Alex)
rank 85-92% of the unanimous samples like the judges, in the range they reach on BAPPS.

``procedural`` (version 1, for tests that measured floors on it): 1/f^a coloured-noise textures with
sharp shapes, each distorted within one family at clearly different strengths (metrics agree with
its judges on about 99% of the samples).

Every sample is generated from its own seed (``seed``, split, category, index), so a sample does
not depend on how many others are made.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ("blur", "noise", "jpeg", "color", "contrast")
VERSION = 1  # of the procedural set
PHOTOS_VERSION = 1
KINDS = ("photos", "procedural")
# scikit-image's bundled photographs (skimage/data in its wheel) and their licences, from its docstrings.
PHOTOS = {"astronaut": "public domain (NASA)", "chelsea": "CC0 (Stefan van der Walt)",
          "coffee": "CC0 (Rachel Michetti)", "rocket": "public domain (SpaceX)",
          "immunohistochemistry": "no known copyright restrictions",
          "retina": "CC0 / public domain (Mikael Haggstrom)", "brick": "CC0", "grass": "CC0", "gravel": "CC0",
          "camera": "CC0 (Lav Varshney)", "coins": "no known copyright restrictions"}
# Five levels per family, chosen to look alike in severity across families (level 0 mildest).
LEVELS = {"blur": (0.5, 0.8, 1.2, 1.7, 2.4),         # Gaussian sigma in pixels (at 64 px)
          "noise": (0.02, 0.035, 0.055, 0.08, 0.11),  # Gaussian noise std on [0, 1]
          "jpeg": (60.0, 35.0, 20.0, 12.0, 7.0),      # JPEG quality
          "color": (0.03, 0.06, 0.1, 0.15, 0.21),     # per-channel gain/offset shift
          "contrast": (0.08, 0.16, 0.26, 0.38, 0.5)}  # contrast reduction and brightness shift
# (mild range, strong range) of each family's strength parameter
STRENGTH = {
    "blur": ((0.4, 0.9), (1.6, 3.0)),        # Gaussian sigma in pixels (at 64 px)
    "noise": ((0.015, 0.035), (0.09, 0.16)),  # Gaussian noise std on [0, 1]
    "jpeg": ((70.0, 92.0), (4.0, 12.0)),      # JPEG quality (higher is milder)
    "color": ((0.02, 0.05), (0.14, 0.25)),    # per-channel gain/offset shift
    "contrast": ((0.05, 0.12), (0.35, 0.55)),  # contrast reduction and brightness shift
}


def _rng(seed: int, *parts) -> np.random.Generator:
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def reference_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: 1/f noise texture with sharp shapes."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    alpha = rng.uniform(1.6, 2.6)
    chans = []
    for _ in range(3):
        spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (alpha / 2)  # power ~ 1/f^alpha
        spec[0, 0] = 0
        c = np.fft.irfft2(spec, s=(size, size))
        chans.append((c - c.mean()) / (c.std() + 1e-8))
    mix = rng.normal(size=(3, 3)) * 0.5 + np.eye(3) * rng.uniform(0.2, 0.8)
    img = np.tensordot(np.stack(chans, -1), mix, axes=([2], [1])) * 0.12 + rng.uniform(0.25, 0.75, size=3)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            for k in range(0, w, 4):
                draw.line([x0 + k, y0, x0 + k + h // 3, y0 + h], fill=colour, width=2)
    return np.asarray(pil, dtype=np.float32) / 255.0


def distort(img: np.ndarray, family: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one traditional distortion family at ``strength`` to (H, W, 3) in [0, 1]."""
    size = img.shape[0]
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    if family == "blur":
        out = np.asarray(pil.filter(ImageFilter.GaussianBlur(strength * size / 64)), np.float32) / 255
    elif family == "noise":
        out = img + rng.normal(scale=strength, size=img.shape)
    elif family == "jpeg":
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(round(strength)))
        out = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255
    elif family == "color":
        gain = 1 + rng.choice([-1, 1], size=3) * strength * rng.uniform(0.7, 1.3, size=3)
        out = img * gain + rng.choice([-1, 1], size=3) * strength * 0.5
    elif family == "contrast":
        out = (img - img.mean()) * (1 - strength) + img.mean() + rng.choice([-1, 1]) * strength * 0.3
    else:
        raise ValueError(f"unknown distortion family {family!r}; known: {CATEGORIES}")
    return np.clip(out, 0, 1)


_PHOTO_CACHE: Dict[str, np.ndarray] = {}


def photo(name: str) -> np.ndarray:
    """One of :data:`PHOTOS` as (H, W, 3) uint8, from the scikit-image wheel (greyscale repeated to RGB)."""
    if name not in _PHOTO_CACHE:
        try:
            import skimage.data
        except ImportError as e:
            raise ImportError("the built-in 'photos' set needs scikit-image (pip install scikit-image), or use "
                              "builtin: procedural") from e
        a = np.asarray(getattr(skimage.data, name)())
        _PHOTO_CACHE[name] = np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]
    return _PHOTO_CACHE[name]


def photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: a random photograph, downscaled by a random factor, cropped."""
    names = sorted(PHOTOS)
    a = photo(names[rng.integers(len(names))])
    h, w = a.shape[:2]
    scale = rng.uniform(0.12, 0.45) if min(h, w) > 400 else rng.uniform(0.2, 0.6)
    H, W = max(size, int(h * scale)), max(size, int(w * scale))
    im = np.asarray(Image.fromarray(a).resize((W, H), Image.BILINEAR), np.float32) / 255
    y, x = rng.integers(0, H - size + 1), rng.integers(0, W - size + 1)
    return im[y:y + size, x:x + size]


def make_photo_sample(seed: int, split: str, category: str, idx: int, size: int) -> Dict[str, object]:
    """ref, p0, p1 (uint8) and the judge of one triplet of the ``photos`` set."""
    rng = _rng(seed, "photos", split, category, idx)
    ref = photo_crop(rng, size)
    f0 = category
    f1 = category if rng.random() < 0.5 else CATEGORIES[rng.integers(len(CATEGORIES))]
    split_judge = rng.random() < 0.1
    gap = 0 if split_judge else int(rng.integers(1, 3))
    lo = int(rng.integers(0, len(LEVELS[f0]) - gap))
    a, b = (lo, lo + gap) if rng.random() < 0.5 else (lo + gap, lo)
    p0, p1 = distort(ref, f0, LEVELS[f0][a], rng), distort(ref, f1, LEVELS[f1][b], rng)
    judge = float(rng.choice([0.4, 0.6])) if split_judge else (1.0 if b < a else 0.0)
    to8 = lambda x: (np.clip(x, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return {"ref": to8(ref), "p0": to8(p0), "p1": to8(p1), "judge": judge}


def make_sample(seed: int, split: str, category: str, idx: int, size: int, kind: str = "procedural"
                ) -> Dict[str, object]:
    """ref, p0, p1 as uint8 arrays and the judge for one synthetic triplet of the ``kind`` set."""
    if kind == "photos":
        return make_photo_sample(seed, split, category, idx, size)
    if kind != "procedural":
        raise ValueError(f"unknown built-in set {kind!r}; choose one of {', '.join(KINDS)}")
    rng = _rng(seed, split, category, idx)
    ref = reference_image(rng, size)
    (m_lo, m_hi), (s_lo, s_hi) = STRENGTH[category]
    split_judge = rng.random() < 0.1
    mild = rng.uniform(m_lo, m_hi)
    strong = rng.uniform(m_lo, m_hi) if split_judge else rng.uniform(s_lo, s_hi)
    p1_milder = bool(rng.random() < 0.5)
    a, b = (strong, mild) if p1_milder else (mild, strong)
    p0, p1 = distort(ref, category, a, rng), distort(ref, category, b, rng)
    judge = (0.6 if p1_milder else 0.4) if split_judge else (1.0 if p1_milder else 0.0)
    to8 = lambda x: (np.clip(x, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return {"ref": to8(ref), "p0": to8(p0), "p1": to8(p1), "judge": judge}


def write_tree(root: str | Path, n_per_category: int = 40, seed: int = 0, size: int = 64,
               splits: Sequence[str] = ("val",), categories: Sequence[str] = CATEGORIES, kind: str = "photos") -> Path:
    """Write the ``kind`` built-in set as a BAPPS tree under ``root/2afc/<split>/<category>/`` (refused before
    writing when it would not fit in the free space there)."""
    from lit_attacks.datamodules.tree import BappsDataError
    from lit_attacks.safe_files import component

    root = Path(root)
    for name in list(splits) + list(categories):
        component(name, "split or category", BappsDataError)
    _check_space(root, n_per_category * len(splits), size, len(categories))
    for split in splits:
        for cat in categories:
            d = root / "2afc" / split / cat
            for sub in ("ref", "p0", "p1", "judge"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_category):
                s = make_sample(seed, split, cat, i, size, kind)
                stem = f"{i:06d}"
                for m in ("ref", "p0", "p1"):
                    Image.fromarray(s[m]).save(d / m / f"{stem}.png", compress_level=6)
                np.save(d / "judge" / f"{stem}.npy", np.array([s["judge"]], dtype=np.float32))
    return root


BYTES_PER_SAMPLE_64 = 45_000  # cache bytes per sample at 64 px (tree and shards; measured 43.2 kB, photos)


def _check_space(base: Path, n_per_category: int, size: int, categories: int = len(CATEGORIES)) -> None:
    """Refuse, before writing, a built-in set that would not fit in the free space there (with 10% left)."""
    import shutil

    from lit_attacks.datamodules.tree import BappsDataError

    need = n_per_category * categories * BYTES_PER_SAMPLE_64 * (size / 64) ** 2
    probe = next(p for p in [base, *base.parents] if p.exists())
    free = shutil.disk_usage(probe).free
    if need > 0.9 * free:
        raise BappsDataError(f"--builtin-n {n_per_category}: the built-in set would take about {need / 1e9:.2f} GB "
                             f"in {base.parent}, which has {free / 1e9:.2f} GB free; choose a smaller --builtin-n "
                             "or another $LIT_ATTACKS_CACHE")


def builtin_shards(cache_dir: Optional[str | Path] = None, n_per_category: int = 40, seed: int = 0, size: int = 64,
                   split: str = "val", progress: bool = False, refresh: bool = False, kind: str = "photos") -> Path:
    """Shards of the ``kind`` built-in set for ``split``, generated once into the cache and reused (``refresh``:
    again). Generated under the cache's lock into a private folder and published whole
    (:func:`lit_attacks.datamodules.cache.publish`): runs started together on a fresh cache make one copy, and none
    of them reads a half-written image."""
    from lit_attacks.datamodules.cache import cache_root, publish
    from lit_attacks.datamodules.shards import INDEX, write_shards
    from lit_attacks.datamodules.tree import scan_tree
    from lit_attacks.report import write_file

    if kind not in KINDS:
        raise ValueError(f"unknown built-in set {kind!r}; choose one of {', '.join(KINDS)}")
    name = f"synthetic-v{VERSION}-n{n_per_category}-s{seed}-px{size}" if kind == "procedural" else \
        f"photos-v{PHOTOS_VERSION}-n{n_per_category}-s{seed}-px{size}"
    base = (Path(cache_dir) if cache_dir else cache_root()) / name

    def build(tmp: Path) -> None:
        write_tree(tmp / "tree", n_per_category, seed, size, splits=(split,), kind=kind)
        write_shards(scan_tree(tmp / "tree", split), tmp / "shards", prefix=f"{name.split('-')[0]}-{split}",
                     shard_size=max(1, n_per_category * len(CATEGORIES) // 4), progress=progress)
        shutil.rmtree(tmp / "tree")  # the PNG tree was only the way to the shards
        for f in (tmp / "shards").iterdir():
            f.rename(tmp / f.name)
        (tmp / "shards").rmdir()
        write_file(base / "README.json", json.dumps({
            "what": f"lit_attacks built-in {kind} 2AFC set (synthetic judges)",
            "version": VERSION if kind == "procedural" else PHOTOS_VERSION, "n_per_category": n_per_category,
            "seed": seed, "size": size, "photos": PHOTOS if kind == "photos" else None}).encode(), guarded=False)

    return publish(base / "shards" / split, build, f"the built-in {kind} set ({split})",
                   complete=lambda p: (p / INDEX).is_file(), refresh=refresh)
