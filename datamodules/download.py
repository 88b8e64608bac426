"""Download the official BAPPS 2AFC archives (resumable, sha256-verified) and unpack them."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from lit_attacks.datamodules.shards import sha256
from lit_attacks.safe_files import InputError, first_line

# The LPIPS authors' download script (richzhang/PerceptualSimilarity scripts/download_dataset.sh)
# now points at this bucket; the original Berkeley host is tried second.
MIRRORS = (
    "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/",
    "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/",
)
ARCHIVES = {
    "val": ("twoafc_val.tar.gz", "41486671b06de923e7ba277c4797d4d9d86d609863ba35ecdb576133f8b9d859"),
    "train": ("twoafc_train.tar.gz", "b4f5c772c7cd88ac44bcb4ff0741745d434c05f0094f2bfb262ddcd0055bf393"),
}


class DownloadError(InputError):
    """A download or unpack that cannot go on; the message names the file and what to do."""


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` with an HTTP Range request."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        resumed = have and r.status == 206
        total = int(r.headers.get("Content-Length", 0)) + (have if resumed else 0)
        with open(part, "ab" if resumed else "wb") as f, tqdm(total=total or None, initial=have if resumed else 0,
                                                               unit="B", unit_scale=True, desc=dest.name) as bar:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                bar.update(len(block))
    part.rename(dest)


MARKER = ".lit_attacks-unpacked.json"  # written last into a folder this module unpacked whole
SPACE_MARGIN = 0.9  # unpack only into at most this fraction of the free space


def unpacked(folder: Path) -> bool:
    """``folder`` was unpacked whole by :func:`unpack` (its completion marker is there)."""
    return (Path(folder) / MARKER).is_file()


def _members(archive: Path):
    """(kind, members): the archive's members as (name, size, is_file, is_dir), read from the zip's central directory
    or the tar's headers. A file that is neither archive is a :class:`DownloadError`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            return "zip", [(i.filename, i.file_size, not i.is_dir(), i.is_dir()) for i in z.infolist()]
    try:
        with tarfile.open(archive) as tar:
            return "tar", [(m.name, m.size, m.isfile(), m.isdir()) for m in tar]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{archive}: neither a zip nor a tar archive, or cut short ({first_line(e, 120)}); "
                            "delete it and run again to download it anew") from None


def unpack(archive: Path, dest: Path, top: str) -> Path:
    """Unpack ``archive``, whose members all lie under ``top/``, into ``dest/top``, whole or not at all: the members'
    declared sizes are checked against the free space first (a 1 MB archive declaring 1 GiB is refused before a byte
    is written), every member must be a plain path under ``top/``, the files are unpacked into a private folder beside
    ``dest/top``, counted against the archive's own listing, marked complete (:data:`MARKER`, written last) and then
    renamed into place. An interrupted unpack leaves only its private folder, removed by the next attempt."""
    kind, members = _members(archive)
    total = sum(size for _, size, is_file, _ in members if is_file)
    files = [name for name, _, is_file, _ in members if is_file]
    for name, _, is_file, is_dir in members:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts or parts[0] != top or not (is_file or is_dir):
            raise DownloadError(f"{archive}: member {name[:120]!r} would unpack outside {top}/ or is not a plain file "
                                "or folder; nothing was unpacked")
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if total > SPACE_MARGIN * free:
        raise DownloadError(f"{archive}: its {len(files)} files take {total / 1e9:.2f} GB unpacked and {dest} has "
                            f"{free / 1e9:.2f} GB free; make room (at least {total / SPACE_MARGIN / 1e9:.2f} GB) or "
                            "choose another --out")
    for stale in dest.glob(f".{top}.unpacking-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dest / f".{top}.unpacking-{os.getpid()}"
    try:
        tmp.mkdir()
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        got = sum(1 for p in (tmp / top).rglob("*") if p.is_file()) if (tmp / top).is_dir() else 0
        if got != len(files):
            raise DownloadError(f"{archive}: unpacked {got} files, the archive lists {len(files)}; nothing was kept")
        (tmp / top / MARKER).write_text(json.dumps({"archive": archive.name, "files": len(files), "bytes": total}))
        os.rename(tmp / top, dest / top)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise DownloadError(f"{archive}: damaged archive ({first_line(e, 120)}); delete it and run again to download "
                            "it anew; nothing was kept") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / top


def download(out: str | Path, splits: Sequence[str] = ("val",), verify: bool = True, keep_archive: bool = False,
             mirrors: Optional[Sequence[str]] = None) -> Path:
    """Fetch and unpack the 2AFC ``splits`` so that ``out/2afc/<split>/...`` exists, each unpacked whole
    (:func:`unpack`). Returns ``out``. A split folder this command did not finish unpacking is never taken as the
    data: it is refused, naming it."""
    out = Path(out)
    (out / "2afc").mkdir(parents=True, exist_ok=True)
    for split in splits:
        if split not in ARCHIVES:
            raise ValueError(f"unknown split {split!r}; choose from {sorted(ARCHIVES)}")
        folder = out / "2afc" / split
        if unpacked(folder):
            print(f"{folder} already present; skipping")
            continue
        if folder.exists():
            raise DownloadError(f"{folder} exists but was not unpacked whole by this command (no {MARKER}: an "
                                "interrupted unpack, or a tree put there by hand); remove or rename it and run again")
        fname, digest = ARCHIVES[split]
        archive = out / fname
        errors = []
        for base in mirrors or MIRRORS:
            if archive.exists():
                break
            try:
                _fetch(base + fname, archive)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(f"{base + fname}: {e}")
        if not archive.exists():
            raise DownloadError(f"could not download {fname} (no network?): " + "; ".join(errors) +
                                f". Download it by hand into {out} and rerun; a partial {fname}.part resumes.")
        if verify and sha256(archive) != digest:
            bad = archive.with_name(fname + ".corrupt")
            archive.rename(bad)
            raise DownloadError(f"{fname}: sha256 mismatch (expected {digest}); moved to {bad}, rerun to download "
                                "again")
        unpack(archive, out / "2afc", split)
        if not keep_archive:
            archive.unlink()
    return out
