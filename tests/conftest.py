"""Shared fixtures: seeded batches, random-backbone metrics, paths to ../shared/data."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIT_ATTACKS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Nothing a test does may write under the home folder (W&B's and matplotlib's state included; issue 35): the session
# runs with HOME pointed at an empty folder, checked at its end (pytest_sessionfinish), and with a cache folder of its
# own unless the caller chose one (as CI does). Set before any test module imports the package, which reads both.
_SAVED_ENV = {k: os.environ.get(k) for k in ("HOME", "LIT_ATTACKS_CACHE")}
FAKE_HOME = Path(tempfile.mkdtemp(prefix="lit-attacks-test-home-"))
os.environ["HOME"] = str(FAKE_HOME)
_SESSION_CACHE = None
if not os.environ.get("LIT_ATTACKS_CACHE"):
    _SESSION_CACHE = tempfile.mkdtemp(prefix="lit-attacks-test-cache-")
    os.environ["LIT_ATTACKS_CACHE"] = _SESSION_CACHE


def _wrote_home() -> list:
    return sorted(str(p.relative_to(FAKE_HOME)) for p in FAKE_HOME.rglob("*"))


def pytest_sessionfinish(session, exitstatus):
    if _wrote_home():
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    written = _wrote_home()
    if written:
        terminalreporter.write_line(f"FAILED: the tests wrote under the home folder: {', '.join(written[:20])}",
                                    red=True)


def pytest_unconfigure(config):
    for k, v in _SAVED_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(FAKE_HOME, ignore_errors=True)
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# the weights folder as the session started (fixtures such as empty_hub unset the variable for one test)
WEIGHTS = Path(os.environ.get("LIT_ATTACKS_WEIGHTS_DIR") or SHARED / "weights")


def weights_dir() -> Path:
    env = os.environ.get("LIT_ATTACKS_WEIGHTS_DIR")
    return Path(env) if env else SHARED / "weights"


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """``tmp_path``, with an empty torch hub cache under it and no weights folder set."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LIT_ATTACKS_WEIGHTS_DIR", raising=False)
    return tmp_path


def weights_file(name: str = "") -> Path:
    """A weights file (or the folder, ``name`` empty) in ``$LIT_ATTACKS_WEIGHTS_DIR`` (default ../shared/data/weights):
    a test that needs only the weights runs wherever they are, and skips with a reason where they are not."""
    p = WEIGHTS / name
    if not p.exists():
        pytest.skip(f"weights {p} not available (set LIT_ATTACKS_WEIGHTS_DIR to a folder holding them)")
    return p


def shared_file(rel: str) -> Path:
    """A file of ../shared/data; skips the test with a reason when it is absent."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data file {p} not available")
    return p


def load_image(path: Path, mode: str = "RGB") -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] from an image file (grey images repeated to 3 channels)."""
    arr = np.asarray(Image.open(path).convert(mode), dtype=np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1


def photo_triplet(category: str = "blur", idx: int = 0, size: int = 64):
    """(ref, p0, p1), each (1, 3, size, size) in [-1, 1]: a built-in photo triplet (CC0 photographs shipped with
    scikit-image), for checks that need real images but not particular ones."""
    from lit_attacks.datamodules.synthetic import make_photo_sample

    s = make_photo_sample(0, "val", category, idx, size)
    return tuple(torch.from_numpy(np.asarray(s[k], dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
                 for k in ("ref", "p0", "p1"))


@pytest.fixture
def seeded_batch():
    """(ref, x): 4 smooth-ish 64x64 images and a perturbed copy, in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 3, 16, 16, generator=g)
    ref = torch.nn.functional.interpolate(base, size=64, mode="bilinear", align_corners=False) * 2 - 1
    x = (ref + 0.15 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    return ref, x


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory):
    """For the whole session, and undone after it: W&B offline and silent (the cache folder and the empty home folder
    are set when this file is imported). Tests never set these themselves."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
