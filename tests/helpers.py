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


def read_wandb_offline(run_dir) -> dict:
    """Config, summary and history of an offline W&B run, parsed from its ``run-*.wandb`` file.

    The file is a W&B header (7 bytes) followed by a LevelDB-style log: 32 KiB blocks of records, each
    with a 7-byte header (crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) holding serialized
    ``wandb_internal_pb2.Record`` messages.
    """
    import json
    import struct
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, buf = 7, 32768, b""
    out = {"config": {}, "summary": {}, "history": []}

    def value(items):
        d = {}
        for it in items:
            keys = list(it.nested_key) or [it.key]
            cur = d
            for k in keys[:-1]:
                cur = cur.setdefault(k, {})
            cur[keys[-1]] = json.loads(it.value_json)
        return d

    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            kind_name = rec.WhichOneof("record_type")
            if kind_name == "run":
                out["config"].update(value(rec.run.config.update))
            elif kind_name == "config":
                out["config"].update(value(rec.config.update))
            elif kind_name == "summary":
                out["summary"].update(value(rec.summary.update))
            elif kind_name == "history":
                out["history"].append(value(rec.history.item))
    return out


SCORE_FIELDS = ("s_adv", "s_adv_uint8", "s0", "s1", "s_other")


def run_one_and_two_processes(cmd, tmp_path, env, two=("--accelerator", "cpu", "--devices", "2")):
    """Run ``cmd`` (a bench.py command line) into ``tmp_path/one`` and, with ``two``, as 2-process DDP into
    ``tmp_path/two``; both must succeed. Returns the two results folders."""
    import subprocess

    outs = []
    for name, extra in (("one", []), ("two", list(two))):
        out = tmp_path / name
        r = subprocess.run(list(cmd) + ["--out", str(out)] + extra, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out)
    return outs


def assert_same_rows(one, two, where, rel=1e-6):
    """Same keys in the same order; scores (:data:`SCORE_FIELDS`) equal to ``rel``, every other field identical."""
    import pytest

    assert [r.get("key") for r in one] == [r.get("key") for r in two], where
    for a, b in zip(one, two):
        for k in a:
            if k in SCORE_FIELDS:
                assert float(a[k]) == pytest.approx(float(b[k]), rel=rel), (where, a.get("key"), k)
            else:
                assert a[k] == b[k], (where, a.get("key"), k)
