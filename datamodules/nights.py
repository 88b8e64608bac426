"""NIGHTS (Fu et al. 2023, DreamSim's 2AFC set) read from its own layout and converted to our shards.

Layout (``nights.zip`` unpacked; the root is the folder holding ``data.csv``, or its parent holding ``nights/``)::

    nights/data.csv             id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,...
    nights/ref/000/000.png      the reference
    nights/distort/000/000_0.png, 000_1.png

As DreamSim's loader, only triplets with ``votes >= 6`` are kept (the ones its authors call unanimous), and a
``split`` of ``train``, ``val`` or ``test``. Left is our ``p0``, right ``p1``; the judge (fraction preferring p1) is
``right_vote / (left_vote + right_vote)`` (DreamSim's own target is the ``right_vote`` column, a 0/1 majority for these
triplets: the same number). Keys are ``<split>/<imagenet|no_imagenet|nights>/<id>`` (``is_imagenet`` picks the
category when the column is there). ``--data DIR`` recognises a NIGHTS root; the split is converted once to shards in
the cache with every file checked (PNG only, sizes, the decoded-size cap), as a BAPPS tree is. Images are 768 px:
the run's ``image_size`` resizes them at load (DreamSim scores at 224).
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image

from lit_attacks.datamodules.shards import stat_key
from lit_attacks.datamodules.tree import NAME_RE, BappsDataError, TreeSample
from lit_attacks.safe_files import first_line, kind_of, open_regular, read_regular

URL = "https://data.csail.mit.edu/nights/nights.zip"  # DreamSim's dataset/download_dataset.sh
REQUIRED = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split")
MIN_VOTES = 6
SPLITS = ("train", "val", "test")
MAX_CSV_BYTES = 64 << 20


MAX_HEADER_BYTES = 1 << 20  # the header line (a NIGHTS header is about 100 bytes)
FLAGS = {"true": "imagenet", "1": "imagenet", "false": "no_imagenet", "0": "no_imagenet", "": "nights"}


def _header(f: Path) -> List[str]:
    """The column names of a CSV file's first line, read bounded and decoded leniently (for recognising a root: the
    whole file is checked strictly when it is read)."""
    with open_regular(f, "NIGHTS data.csv", None, BappsDataError) as fh:
        line = fh.readline(MAX_HEADER_BYTES)
    text = line.decode("utf-8-sig", errors="replace")
    try:
        return [c.strip() for c in next(csv.reader([text]), [])]
    except csv.Error:
        return []


def nights_root(data: Path) -> Optional[Path]:
    """The NIGHTS root under ``data`` (``data`` itself or ``data/nights``: the folder whose ``data.csv`` has NIGHTS'
    columns), or None."""
    for root in (data, data / "nights"):
        f = root / "data.csv"
        try:
            header = _header(f) if f.is_file() else []
        except (BappsDataError, OSError):
            continue
        if {"ref_path", "left_path", "right_path", "left_vote", "right_vote"} <= set(header):
            return root
    return None


def _number(row: Dict[str, str], col: str, where: str) -> float:
    try:
        v = float(row[col])
    except (TypeError, ValueError):
        raise BappsDataError(f"{where}: {col} {str(row.get(col))[:40]!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise BappsDataError(f"{where}: {col} {v} must be a finite number >= 0")
    return v


def judge_of(left: float, right: float) -> float:
    """The fraction of votes for the right image, ``right / (left + right)``, without overflow: both counts are
    scaled by the larger first (``1e308`` votes each give 0.5, not 0)."""
    m = max(left, right)
    return (right / m) / (left / m + right / m)


def _inside(root: Path, rel: str, where: str) -> Path:
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        raise BappsDataError(f"{where}: path {rel[:80]!r} must be relative to the NIGHTS root, without '..'")
    full = root / p
    if not full.exists():
        raise BappsDataError(f"{where}: {full} is missing")
    if not full.is_file():
        raise BappsDataError(f"{where}: {full} is {kind_of(full.stat().st_mode)}, not a regular file")
    return full


def read_rows(f: Path) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line, row by column name) of NIGHTS' ``data.csv``, read as users save it: a UTF-8 byte-order mark (Excel)
    skipped, columns in any order, surrounding spaces in names ignored, blank lines skipped. Text that is not UTF-8, a
    row with more or fewer fields than the header (a file cut inside its last row), a field over the csv module's
    limit or an unknown ``split`` is a one-line error naming the line."""
    data = read_regular(f, "NIGHTS data.csv", MAX_CSV_BYTES, BappsDataError)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BappsDataError(f"{f} line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save "
                             "data.csv as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [c.strip() for c in next(reader, [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise BappsDataError(f"{f}: missing columns {', '.join(missing)} (NIGHTS' data.csv has "
                                 f"{', '.join(REQUIRED)}; its header holds {', '.join(h[:40] for h in header[:12])})")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise BappsDataError(f"{f}: column {twice[0]!r} appears twice in the header")
        for row in reader:
            line = reader.line_num
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise BappsDataError(f"{f} line {line}: {len(row)} fields, the header has {len(header)} (a row cut "
                                     "short, or a stray comma); fix or remove the line")
            values = dict(zip(header, row))
            if values["split"] not in SPLITS:
                raise BappsDataError(f"{f} line {line}: split {values['split'][:20]!r} is not one of "
                                     f"{', '.join(SPLITS)}")
            yield line, values
    except csv.Error as e:
        raise BappsDataError(f"{f} line {reader.line_num}: not a readable CSV row ({first_line(e, 120)})") from None


def scan_nights(root: str | Path, split: str = "test") -> List[TreeSample]:
    """The kept triplets (``votes >= 6``) of ``split``, sorted by key; a malformed row or a missing image raises
    :class:`BappsDataError` naming the row and the file."""
    root = Path(root)
    if split not in SPLITS:
        raise BappsDataError(f"NIGHTS split {split!r}: NIGHTS has {', '.join(SPLITS)} (use --split test)")
    f = root / "data.csv"
    samples, seen = [], set()
    for line, row in read_rows(f):
        where = f"{f} line {line}"
        votes, left, right = (_number(row, c, where) for c in ("votes", "left_vote", "right_vote"))
        flag = row.get("is_imagenet", "").strip().lower()
        if flag not in FLAGS:
            raise BappsDataError(f"{where}: is_imagenet {flag[:20]!r} is not True, False, 1, 0 or empty")
        if row["split"] != split or votes < MIN_VOTES:
            continue
        if left + right <= 0:
            raise BappsDataError(f"{where}: left_vote and right_vote are both 0: no judge")
        if not NAME_RE.match(row["id"]):
            raise BappsDataError(f"{where}: id {row['id'][:40]!r} may hold only letters, digits, '_' and '-'")
        category = FLAGS[flag]
        key = f"{split}/{category}/{row['id']}"
        if key in seen:
            raise BappsDataError(f"{where}: id {row['id']!r} appears twice in split {split}")
        seen.add(key)
        paths = [_inside(root, row[c], where) for c in ("ref_path", "left_path", "right_path")]
        samples.append(TreeSample(key, category, *paths, judge=judge_of(left, right)))
    if not samples:
        raise BappsDataError(f"{f}: no triplet of split {split!r} with votes >= {MIN_VOTES}")
    return sorted(samples, key=lambda s: s.key)


def nights_fingerprint(root: Path, samples: List[TreeSample]) -> str:
    """data.csv's bytes and the size, mtime, ctime and inode of every image of ``samples`` (a split's kept
    triplets, from :func:`scan_nights`; their keys name the split)."""
    h = hashlib.sha1(str(root.resolve()).encode() + read_regular(root / "data.csv", "NIGHTS data.csv", MAX_CSV_BYTES,
                                                                  BappsDataError))
    for s in samples:
        h.update(s.key.encode())
        for p in (s.ref, s.p0, s.p1):
            h.update(f"{p.relative_to(root)}:{stat_key(p)}".encode())
    return h.hexdigest()[:16]


def download(out: str | Path, mirrors: Optional[List[str]] = None) -> Path:
    """Fetch ``nights.zip`` (resumable) and unpack it whole into ``out`` (``out/nights/data.csv``; through a private
    folder, checked against the free space and the archive's listing, marked complete last:
    :func:`lit_attacks.datamodules.download.unpack`); returns the root. A ``nights`` folder this command did not finish
    unpacking is refused, naming it, never taken as the data set."""
    from lit_attacks.datamodules.download import DownloadError, _fetch, unpack, unpacked, MARKER

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if unpacked(out / "nights"):
        return out / "nights"
    if (out / "nights").exists():
        raise DownloadError(f"{out / 'nights'} exists but was not unpacked whole by this command (no {MARKER}: an "
                            "interrupted unpack, or files put there by hand); remove or rename it and run again")
    archive = out / "nights.zip"
    errors = []
    for url in mirrors or [URL]:
        if archive.exists():
            break
        try:
            _fetch(url, archive)
        except OSError as e:  # URLError is an OSError
            errors.append(f"{url}: {e}")
    if not archive.exists():
        raise DownloadError(f"could not download nights.zip (no network?): {'; '.join(errors)}. Download {URL} by "
                            f"hand into {out} and rerun; a partial nights.zip.part resumes.")
    root = unpack(archive, out, "nights")
    archive.unlink()
    if nights_root(root) is None:
        raise DownloadError(f"{archive} unpacked, but {root / 'data.csv'} does not have NIGHTS' columns")
    return root


def write_fixture(root: str | Path, n: int = 12, size: int = 96, seed: int = 0, votes: int = 8) -> Path:
    """A NIGHTS-layout folder of ``n`` triplets per split from the built-in photographs (for tests and trying the
    pipeline without the 13 GB download): ``root/nights/{data.csv, ref/, distort/}``, DreamSim's columns, judges from
    the built-in set's; every fourth triplet, and every one whose built-in judge is split, has ``votes`` below 6
    (DreamSim drops it)."""
    from lit_attacks.datamodules.synthetic import CATEGORIES, make_photo_sample

    base = Path(root) / "nights"
    rows = ["id,left_vote,right_vote,votes,ref_path,left_path,right_path,prompt,split,is_imagenet"]
    i = 0
    for split in SPLITS:
        for j in range(n):
            s = make_photo_sample(seed, split, CATEGORIES[j % len(CATEGORIES)], j, size)
            judge = 1.0 if s["judge"] > 0.5 else 0.0
            folder = f"{i // 1000:03d}"
            ref, left, right = f"ref/{folder}/{i % 1000:03d}.png", f"distort/{folder}/{i % 1000:03d}_0.png", \
                f"distort/{folder}/{i % 1000:03d}_1.png"
            for rel, img in ((ref, s["ref"]), (left, s["p0"]), (right, s["p1"])):
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(img)).save(base / rel)
            v = votes if j % 4 and s["judge"] in (0.0, 1.0) else 5  # split judges: not unanimous, dropped
            rows.append(f"{i},{1 - judge:g},{judge:g},{v},{ref},{left},{right},an image of a photo,{split},"
                        f"{'True' if j % 2 else 'False'}")
            i += 1
    (base / "data.csv").write_text("\n".join(rows) + "\n")
    return base
