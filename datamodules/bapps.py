"""BAPPS 2AFC as webdataset shards: data resolution, the streaming dataset and ``BappsDataModule``.

Command line::

    python -m lit_attacks.datamodules.bapps shards --root ROOT --out DIR --split val [--shard-size 1000]
    python -m lit_attacks.datamodules.bapps download --out ROOT [--split val train]
    python -m lit_attacks.datamodules.bapps builtin --out DIR [--n-per-category 40]
    python -m lit_attacks.datamodules.bapps nights --out ROOT              # NIGHTS (DreamSim), ROOT/nights/
    python -m lit_attacks.datamodules.bapps nights-fixture --out ROOT [--n 12]   # a small NIGHTS-layout set
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lit_attacks.datamodules.cache import cache_root, publish
from lit_attacks.datamodules.nights import nights_fingerprint, nights_root, scan_nights
from lit_attacks.datamodules.shards import (INDEX, HashCache, content_fingerprint, read_index, stat_key, verify_shards,
                                            write_shards)
from lit_attacks.datamodules.streaming import SkipLog, stream
from lit_attacks.datamodules.synthetic import builtin_shards
from lit_attacks.datamodules.tree import BappsDataError, key_from_judge_path, scan_tree  # noqa: F401 (re-exported)
from lit_attacks.folders import DATA_MANIFEST, claimed
from lit_attacks.safe_files import component, walk_files


def is_unanimous(judge: float) -> bool:
    """Humans agreed: every rater preferred the same image (judge exactly 0 or 1)."""
    return judge == 0.0 or judge == 1.0


def _tree_fingerprint(root: Path, split: str) -> str:
    """Path, size, mtime, ctime and inode of every file of the split, following symlinked folders. ctime
    changes on every write, so edits that put back the size and mtime (cp -p, rsync -a, tar x) are seen."""
    h = hashlib.sha1(str(root.resolve()).encode())
    for p in walk_files(root / "2afc" / split, f"BAPPS tree {root}", BappsDataError):  # ends: loops are errors
        h.update(f"{p.relative_to(root)}:{stat_key(p)}".encode())
    return h.hexdigest()[:16]


def resolve_shards(data: Optional[str | Path], split: str = "val", cache_dir: Optional[str | Path] = None,
                   builtin_n: int = 40, seed: int = 0, progress: bool = False, refresh: bool = False,
                   builtin: str = "photos") -> Path:
    """The shard folder for ``split`` of ``data``.

    ``data`` is None (the built-in set ``builtin``: "photos" or "procedural"), a folder of shards (``index.json``
    and/or ``*.tar``, directly or in ``<data>/<split>/``, or in ``<data>/shards/<split>/`` as ``python -m
    lit_attacks.datamodules.bapps builtin`` writes it), a BAPPS tree root holding ``2afc/`` or a NIGHTS root
    (``data.csv``, or ``nights/data.csv``; :mod:`lit_attacks.datamodules.nights`), converted once to shards in the
    cache, again when the files change. ``refresh`` rebuilds generated shards.
    """
    component(split, "split", BappsDataError)  # it becomes a folder name in the cache and the data folder
    if data is None:
        return builtin_shards(cache_dir, n_per_category=builtin_n, seed=seed, split=split, progress=progress,
                              refresh=refresh, kind=builtin)
    data = Path(data)
    if not data.is_dir():
        raise BappsDataError(f"data path {data} does not exist or is not a folder")
    cache = Path(cache_dir) if cache_dir else cache_root()
    complete = lambda p: (p / INDEX).is_file()  # noqa: E731 (a published entry holds its index)
    root = nights_root(data)
    if root is not None:  # NIGHTS (DreamSim's layout): converted once per split and content
        samples = scan_nights(root, split)  # read and checked once: for the fingerprint and the conversion
        out = cache / "nights" / nights_fingerprint(root, samples) / split
        return publish(out, lambda tmp: write_shards(samples, tmp, prefix=f"nights-{split}", progress=progress),
                       f"the shards of NIGHTS {root} ({split})", complete, refresh)
    if (data / "2afc").is_dir():
        out = cache / "trees" / _tree_fingerprint(data, split) / split
        return publish(out, lambda tmp: write_shards(scan_tree(data, split), tmp, progress=progress),
                       f"the shards of BAPPS tree {data} ({split})", complete, refresh)
    for cand in (data / split, data / "shards" / split, data):
        if (cand / INDEX).exists() or any(cand.glob("*.tar")):
            return cand
    raise BappsDataError(f"data path {data} holds no shards (*.tar / {INDEX}, directly or in {split}/), no "
                         "BAPPS tree (2afc/) and no NIGHTS root (data.csv or nights/data.csv)")


def partial_tree(root: Path, split: str) -> Optional[str]:
    """A line about a BAPPS tree that ``python -m lit_attacks.datamodules.bapps download`` did not unpack whole (no
    completion marker) and that lacks some of the split's official categories (an interrupted download of an earlier
    version left such trees): converted as it is, and said. None for a whole tree or one that is not BAPPS'."""
    from lit_attacks.datamodules.download import unpacked
    from lit_attacks.datamodules.tree import SPLIT_CATEGORIES

    base = Path(root) / "2afc" / split
    if split not in SPLIT_CATEGORIES or unpacked(base) or not base.is_dir():
        return None
    present = {p.name for p in base.iterdir() if p.is_dir()}
    official = SPLIT_CATEGORIES[split]
    missing = [c for c in official if c not in present]
    if not (present & set(official)) or not missing:
        return None
    return (f"BAPPS tree {root} holds {len(official) - len(missing)} of the {len(official)} categories of {split} "
            f"(missing: {', '.join(missing)}); if a download stopped midway, move the tree aside and run python -m "
            f"lit_attacks.datamodules.bapps download --out {root}")


def shard_urls(folder: Path, hashes: Optional[HashCache] = None) -> List[str]:
    """Absolute paths of the shards of ``folder``, each checked against the index (size, sha256) at first use."""
    folder = Path(folder).resolve()
    index = read_index(folder)
    verify_shards(folder, index, hashes or HashCache(cache_root()))
    return [str(folder / s["name"]) for s in index["shards"]]


def index_field(folder: Path, field: str, index: Optional[dict] = None) -> Dict[str, object]:
    """Shard path -> ``field`` of its index entry, for the shards whose entry has it: ``keys`` (checked while
    streaming), ``judges`` (counts without a pass over the shards), ``compression``. ``index``: the folder's
    index when already read."""
    folder = Path(folder).resolve()
    entries = (index or read_index(folder))["shards"]
    return {str(folder / s["name"]): s[field] for s in entries if s.get(field) is not None}


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that knows how many batches it yields (from the shard index),
    so progress bars have a total and an ETA. Its length counts every worker's last partial batch."""

    def __len__(self) -> int:
        return self.dataset.num_batches(self.batch_size, self.num_workers)


class ShardStream(IterableDataset):
    """Validated triplets from shards, for one process of a DDP world (and its loader workers).

    Args:
        urls: shard paths.
        keep: predicate on a validated sample (key, category, judge) deciding whether it is yielded.
        size: side of the square output images.
        rank, world_size: this process's place in the DDP world.
        split_by: "shard" deals shards to (rank, worker) slots; "sample" deals kept samples; "auto"
            uses shards when there are at least as many shards as slots.
        skip_bad: skip (and log) bad samples/shards instead of raising.
    """

    def __init__(self, urls: Sequence[str], keep: Callable[[dict], bool], size: int = 64, rank: int = 0,
                 world_size: int = 1, split_by: str = "auto", skip_bad: bool = False, validate: Callable = None,
                 decode: Callable = None, expected: Optional[Dict[str, List[str]]] = None,
                 judges: Optional[Dict[str, List[float]]] = None,
                 compression: Optional[Dict[str, str]] = None) -> None:
        if split_by not in ("auto", "shard", "sample"):
            raise ValueError(f"split_by must be 'auto', 'shard' or 'sample', got {split_by!r}")
        self.urls, self.keep, self.size = list(urls), keep, size
        self.rank, self.world_size, self.split_by = rank, world_size, split_by
        self.skip = SkipLog() if skip_bad else None
        self.validate, self.decode = validate, decode
        self.expected, self.judges, self.compression = expected or {}, judges or {}, compression or {}
        self._kept: Optional[List[int]] = None
        self.limit: Optional[int] = None  # samples per (rank, worker) slot; set for DDP training (equal shares)

    def __iter__(self):
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        slots, slot = self.world_size * workers, self.rank * workers + wid
        by_shard = self.split_by == "shard" or (self.split_by == "auto" and len(self.urls) >= slots)
        it = iter(stream(self.urls, self.keep, self.size, slot, slots, by_shard, self.skip, self.validate, self.decode,
                         self.expected, self.compression))
        return it if self.limit is None else itertools.islice(it, self.limit)

    def count(self) -> int:
        """Kept samples over all shards."""
        return sum(self.kept_per_shard())

    def kept_per_shard(self) -> List[int]:
        """Kept samples of each shard: from the index's keys and judges when it has them, else one pass over
        the shard with images not decoded (remembered)."""
        if self._kept is None:
            undecoded = lambda src, size, skip: src  # noqa: E731
            kept = []
            for url in self.urls:
                keys, judges = self.expected.get(url), self.judges.get(url)
                if keys is not None and judges is not None:
                    kept.append(sum(bool(self.keep({"key": k, "category": k.split("/")[1], "judge": j}))
                                    for k, j in zip(keys, judges)))
                else:
                    kept.append(sum(1 for _ in stream([url], self.keep, self.size, 0, 1, False, self.skip,
                                                      self.validate, undecoded, self.expected, self.compression)))
            self._kept = kept
        return self._kept

    def slot_sizes(self, workers: int) -> List[int]:
        """Samples each loader worker of this process yields (one entry when ``workers`` is 0), as
        :meth:`__iter__` deals them."""
        workers = max(1, workers)
        slots = self.world_size * workers
        kept = self.kept_per_shard()
        by_shard = self.split_by == "shard" or (self.split_by == "auto" and len(self.urls) >= slots)
        sizes = []
        for w in range(workers):
            slot = self.rank * workers + w
            n = sum(k for j, k in enumerate(kept) if j % slots == slot) if by_shard else \
                len(range(slot, sum(kept), slots))
            sizes.append(n if self.limit is None else min(n, self.limit))
        return sizes

    def num_batches(self, batch_size: int, workers: int) -> int:
        """Batches a DataLoader with ``batch_size`` and ``workers`` makes of this process's share (each worker
        batches its own samples)."""
        return sum(-(-n // batch_size) for n in self.slot_sizes(workers))


class BappsDataModule(pl.LightningDataModule):
    """BAPPS 2AFC triplets streamed from webdataset shards, as batches of dicts.

    Batches: ``key`` and ``category`` (lists of str), ``ref``, ``p0``, ``p1`` (B, 3, S, S) in [-1, 1],
    ``judge`` (B,) = fraction of people who preferred p1.

    Args:
        data: None for the built-in synthetic set, a shard folder, or a BAPPS tree root (holds ``2afc/``).
        split: split used for validation, test and predict ("val").
        train_split: split used for training ("train").
        categories: keep only these categories (None: all).
        unanimous_only: keep only samples with judge exactly 0 or 1 (the attack setting).
        load_size: images are resized to load_size x load_size (bilinear, as the official code).
        batch_size: samples per batch.
        num_workers: DataLoader workers per process.
        split_by: how samples are dealt to processes and workers ("auto", "shard", "sample").
        skip_bad: skip and report bad samples instead of raising.
        builtin_n: samples per category of the built-in set.
        builtin: which built-in set: "photos" (crops of CC0 photographs, cross-family pairs; metrics agree with
            its synthetic judges on 85-92% of the unanimous samples, as on BAPPS) or "procedural" (textures,
            one family per pair; about 99%). See :mod:`lit_attacks.datamodules.synthetic`.
        seed: seed of the built-in set.
        cache_dir: where built-in and converted shards go (default ``$LIT_ATTACKS_CACHE`` or ~/.cache/lit_attacks).
        refresh: rebuild generated shards (built-in set, converted trees) and re-hash every shard, ignoring
            what the cache remembers (one process only: under DDP pass it on rank 0).

    Every shard is checked against its index at first use (size and sha256, remembered by file stat in
    the cache), and while streaming (the keys the index lists, in order, and their count).
    """

    def __init__(self, data: Optional[str] = None, split: str = "val", train_split: str = "train",
                 categories: Optional[List[str]] = None, unanimous_only: bool = True, load_size: int = 64,
                 batch_size: int = 32, num_workers: int = 0, split_by: str = "auto", skip_bad: bool = False,
                 builtin_n: int = 40, seed: int = 0, cache_dir: Optional[str] = None, refresh: bool = False,
                 builtin: str = "photos") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.folders: dict = {}
        self.hashes = HashCache(Path(cache_dir) if cache_dir else cache_root(), fresh=refresh)

    def shard_folder(self, split: str) -> Path:
        if split not in self.folders:
            h = self.hparams
            self.folders[split] = resolve_shards(h.data, split, h.cache_dir, h.builtin_n, h.seed, refresh=h.refresh,
                                                 builtin=h.builtin)
        return self.folders[split]

    def prepare_data(self) -> None:
        """Runs on one process before the others start: builds (or converts) the shards they will read,
        the training split too when fitting, so DDP processes never write the same cache concurrently."""
        self.shard_folder(self.hparams.split)
        if self.trainer is not None and self.trainer.state.fn == "fit":
            self.shard_folder(self.hparams.train_split)

    def keep(self, s: dict) -> bool:
        cats = self.hparams.categories
        return (not cats or s["category"] in cats) and (not self.hparams.unanimous_only or is_unanimous(s["judge"]))

    def dataset(self, split: Optional[str] = None) -> ShardStream:
        split = split or self.hparams.split
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        folder = self.shard_folder(split)
        index = read_index(folder)
        fields = {f: index_field(folder, f, index) for f in ("keys", "judges", "compression")}
        return ShardStream(shard_urls(folder, self.hashes), self.keep, self.hparams.load_size, rank, world,
                           self.hparams.split_by, self.hparams.skip_bad, expected=fields["keys"],
                           judges=fields["judges"], compression=fields["compression"])

    def _loader(self, split: Optional[str] = None) -> DataLoader:
        ds = self.dataset(split)
        return ShardLoader(ds, batch_size=self.batch_size_for(ds), num_workers=self.hparams.num_workers)

    def batch_size_for(self, ds: "ShardStream") -> int:
        """The batch size, never above the samples there are (a batch never holds more: a huge ``batch_size`` on a
        small set asks for no memory it would not use)."""
        return max(1, min(self.hparams.batch_size, ds.count()))

    def train_dataloader(self) -> DataLoader:
        """Under DDP every process gets the same number of samples (a rank with one batch more than
        another would wait forever in the gradient all-reduce): samples are dealt one by one and each
        (rank, worker) slot stops at ``kept // slots``; the remainder is dropped for that epoch."""
        ds = self.dataset(self.hparams.train_split)
        if ds.world_size > 1:
            slots = ds.world_size * max(1, self.hparams.num_workers)
            ds.split_by, ds.limit = "sample", ds.count() // slots
            if ds.limit == 0:
                raise BappsDataError(f"training split {self.hparams.train_split!r} has fewer kept samples than the "
                                     f"{slots} (process, worker) slots")
        return ShardLoader(ds, batch_size=self.batch_size_for(ds), num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def describe(self, split: Optional[str] = None) -> dict:
        """Where the data comes from, with a fingerprint of its content (the shard index, which records every
        shard's sha256, after checking the shards against it; without an index, every shard's sha256)."""
        folder = self.shard_folder(split or self.hparams.split)
        index = read_index(folder)
        keys = verify_shards(folder, index, self.hashes)
        present = sorted({k.split("/")[1] for k in keys if k.count("/") == 2})
        for c in self.hparams.categories or []:
            if c not in present:
                raise BappsDataError(f"--categories {c!r}: no sample of that category in {folder}; present: "
                                     f"{', '.join(present)}")
        note = partial_tree(Path(self.hparams.data), split or self.hparams.split) if self.hparams.data else None
        return {"data": self.hparams.data or f"built-in {self.hparams.builtin} set (synthetic judges)",
                "shards": str(folder),
                "index_sha256": content_fingerprint(folder, index, self.hashes), **({"note": note} if note else {})}


class NightsDataModule(BappsDataModule):
    """NIGHTS (DreamSim's 2AFC set) from its own layout: :class:`BappsDataModule` on a NIGHTS root, with NIGHTS'
    evaluation split and DreamSim's resolution as defaults (:mod:`lit_attacks.datamodules.nights`).

    Args:
        data: the NIGHTS root (``data.csv``), or the folder holding ``nights/``.
        split: "test" (the evaluation split), "val" or "train".
        load_size: 224 (DreamSim's; the images are 768 px).
        kwargs: as :class:`BappsDataModule`.
    """

    def __init__(self, data: str, split: str = "test", load_size: int = 224, **kwargs) -> None:
        if nights_root(Path(data).expanduser()) is None:
            raise BappsDataError(f"{data}: no NIGHTS root (data.csv with NIGHTS' columns, or nights/data.csv); "
                                 "python -m lit_attacks.datamodules.bapps nights --out DIR downloads it")
        super().__init__(data=data, split=split, load_size=load_size, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m lit_attacks.datamodules.bapps`` (shards, download, builtin)."""
    p = argparse.ArgumentParser(prog="python -m lit_attacks.datamodules.bapps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shards", help="convert a BAPPS tree to webdataset shards")
    s.add_argument("--root", required=True, help="folder holding 2afc/")
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="val")
    s.add_argument("--categories", default=None, help="comma-separated (default: all present)")
    s.add_argument("--shard-size", type=int, default=1000)
    d = sub.add_parser("download", help="download the official 2AFC archives into ROOT/2afc")
    d.add_argument("--out", required=True)
    d.add_argument("--split", nargs="+", default=["val"])
    d.add_argument("--no-verify", action="store_true")
    b = sub.add_parser("builtin", help="write the built-in synthetic set as a tree and shards")
    b.add_argument("--out", required=True)
    b.add_argument("--n-per-category", type=int, default=40)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--split", nargs="+", default=["val"])
    b.add_argument("--kind", choices=["photos", "procedural"], default="photos", help="which built-in set")
    n = sub.add_parser("nights", help="download NIGHTS (nights.zip, DreamSim's) and unpack it into ROOT/nights")
    n.add_argument("--out", required=True)
    f = sub.add_parser("nights-fixture", help="write a small NIGHTS-layout set from the built-in photographs")
    f.add_argument("--out", required=True)
    f.add_argument("--n", type=int, default=12, help="triplets per split")
    f.add_argument("--size", type=int, default=96)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        splits = getattr(a, "split", [])  # the nights commands have none
        for split in splits if isinstance(splits, list) else [splits]:
            component(split, "--split", BappsDataError)  # a folder name under --out
        if a.cmd in WRITES_OUT:  # a folder these commands fill: new, empty or theirs (lit_attacks.folders)
            with claimed(Path(a.out), DATA_MANIFEST, "datamodules", arg="--out", what="output folder",
                         kind="run of this command") as folder:
                _write_out(a)
                folder.record_files(str(p.relative_to(a.out)) for p in Path(a.out).rglob("*")
                                    if p.is_file() and not p.name.startswith("."))
        elif a.cmd == "nights":
            from lit_attacks.datamodules.nights import download as nights_download
            print(f"NIGHTS in {nights_download(a.out)}")
        else:
            from lit_attacks.datamodules.download import download
            download(a.out, a.split, verify=not a.no_verify)
            print(f"BAPPS 2AFC {a.split} in {Path(a.out) / '2afc'}")
    except (BappsDataError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


WRITES_OUT = ("shards", "builtin", "nights-fixture")  # the commands whose --out is a folder they fill


def _write_out(a: argparse.Namespace) -> None:
    """The work of the commands that fill ``--out`` (inside its folder guard)."""
    if a.cmd == "shards":
        cats = a.categories.split(",") if a.categories else None
        index = write_shards(scan_tree(a.root, a.split, cats), a.out, a.shard_size, progress=True)
        print(f"wrote {index['count']} samples in {len(index['shards'])} shards to {a.out}")
    elif a.cmd == "nights-fixture":
        from lit_attacks.datamodules.nights import write_fixture
        print(f"NIGHTS-layout set in {write_fixture(a.out, a.n, a.size)}")
    else:
        from lit_attacks.datamodules.synthetic import write_tree
        write_tree(Path(a.out) / "tree", a.n_per_category, a.seed, a.size, splits=a.split, kind=a.kind)
        for split in a.split:
            idx = write_shards(scan_tree(Path(a.out) / "tree", split), Path(a.out) / "shards" / split, progress=True)
            print(f"{split}: {idx['count']} samples -> {Path(a.out) / 'shards' / split}")


if __name__ == "__main__":
    sys.exit(main())
