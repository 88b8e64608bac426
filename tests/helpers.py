"""Builders of small hand-made BAPPS trees for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def flat(value: int, size: int = 8) -> np.ndarray:
    """A (size, size, 3) uint8 image of one grey value."""
    return np.full((size, size, 3), value, dtype=np.uint8)


def add_sample(root: Path, split: str, cat: str, stem: str, ref, p0, p1, judge, judge_dtype=np.float32) -> None:
    d = Path(root) / "2afc" / split / cat
    for sub, img in (("ref", ref), ("p0", p0), ("p1", p1)):
        (d / sub).mkdir(parents=True, exist_ok=True)
        if img is not None:
            Image.fromarray(img).save(d / sub / f"{stem}.png")
    (d / "judge").mkdir(parents=True, exist_ok=True)
    np.save(d / "judge" / f"{stem}.npy", np.array([judge], dtype=judge_dtype))


def random_tree(root: Path, n: int = 20, split: str = "val", cats=("cnn", "traditional"), seed: int = 0) -> dict:
    """A tree of random 8x8 triplets with judges drawn from {0, 0.4, 0.6, 1}; returns key -> judge."""
    rng = np.random.default_rng(seed)
    judges = {}
    for c in cats:
        for i in range(n):
            imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
            j = float(rng.choice([0.0, 0.4, 0.6, 1.0]))
            add_sample(root, split, c, f"{i:06d}", *imgs, j)
            judges[f"{split}/{c}/{i:06d}"] = j
    return judges
