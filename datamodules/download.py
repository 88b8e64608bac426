"""Download the official BAPPS 2AFC archives (resumable, sha256-verified) and unpack them."""
from __future__ import annotations

import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from lit_attacks.datamodules.shards import sha256

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


class DownloadError(RuntimeError):
    pass


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


def download(out: str | Path, splits: Sequence[str] = ("val",), verify: bool = True, keep_archive: bool = False,
             mirrors: Optional[Sequence[str]] = None) -> Path:
    """Fetch and unpack the 2AFC ``splits`` so that ``out/2afc/<split>/...`` exists. Returns ``out``."""
    out = Path(out)
    (out / "2afc").mkdir(parents=True, exist_ok=True)
    for split in splits:
        if split not in ARCHIVES:
            raise ValueError(f"unknown split {split!r}; choose from {sorted(ARCHIVES)}")
        if (out / "2afc" / split).is_dir() and any((out / "2afc" / split).iterdir()):
            print(f"{out / '2afc' / split} already present; skipping")
            continue
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
            raise DownloadError(f"{fname}: sha256 mismatch (expected {digest}); moved to {bad}, rerun to download again")
        with tarfile.open(archive) as tar:
            tar.extractall(out / "2afc", filter="data")
        if not keep_archive:
            archive.unlink()
    return out
