"""Finding pretrained weights: a weights folder, the torch hub cache, or a download.

Order of lookup for a torchvision backbone ``arch`` (alexnet, squeezenet1_1, vgg16):

1. ``weights_dir`` (argument, else the ``LIT_ATTACKS_WEIGHTS_DIR`` environment variable):
   torchvision's full checkpoint under its usual file name (``alexnet-owt-7be5be79.pth``), or a
   features-only state dict named ``<arch>_features_*.pth`` (keys ``0.weight``, ``0.bias``, ...).
2. The torch hub cache, ``$TORCH_HOME/hub/checkpoints/<torchvision file name>``.
3. A download into that cache (what a user with internet gets).

When all three fail, :class:`WeightsNotFoundError` names the metric, the file and where to put it.
Everything is read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Dict, Iterator, Optional

import torch

from lit_attacks.safe_files import InputError, first_line, open_regular

ENV_WEIGHTS_DIR = "LIT_ATTACKS_WEIGHTS_DIR"
ENV_OFFLINE = "LIT_ATTACKS_OFFLINE"

# torchvision's ImageNet checkpoints that LPIPS and DISTS use (file name, URL).
_TV_ROOT = "https://download.pytorch.org/models/"
BACKBONES: Dict[str, str] = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    "vgg16": "vgg16-397923af.pth",
}
# DISTS alpha/beta as piq publishes them; the DISTS repository's own file is accepted too.
DISTS_URL = "https://github.com/photosynthesis-team/piq/releases/download/v0.4.1/dists_weights.pt"
DISTS_FILES = ("dists_weights.pt", "dists_alpha_beta.pt", "weights.pt")


class WeightsNotFoundError(FileNotFoundError):
    """No weights file could be found locally or downloaded."""


class WeightsFileError(InputError, RuntimeError):
    """A weights file that exists but is not what it should be (truncated, foreign, wrong shapes, NaN);
    the message is one line naming the file."""


def resolve_weights_dir(weights_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The folder to search first: the argument, else ``$LIT_ATTACKS_WEIGHTS_DIR``, else None."""
    wd = weights_dir if weights_dir is not None else os.environ.get(ENV_WEIGHTS_DIR) or None
    return Path(wd).expanduser() if wd else None


def hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def read_torch(path: Path, what: str, kind: str, error: type, hint: str = "", default: Optional[str] = None):
    """The object in a torch file, read with ``weights_only=True`` (tensors and plain containers: a global the
    file names is refused, never imported) from a regular file only (a FIFO or device is refused, not read).
    Any failure is one ``error`` line: ``<what> '<path>' (<size> bytes) is not a readable <kind> (...)<hint>``."""
    with open_regular(path, what, error=error) as f:
        size = os.fstat(f.fileno()).st_size
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, foreign, a pickle with code, ...
            raise error(f"{what} {str(path)!r} ({size} bytes) is not a readable {kind} "
                        f"({type(e).__name__}: {first_line(e, 200, default)}){hint}") from None


def _load(path: Path) -> Dict[str, torch.Tensor]:
    """A state dict from a torch file (:func:`read_torch`); any failure is one :class:`WeightsFileError` line."""
    obj = read_torch(path, "weights file", "torch state dict", WeightsFileError, "; download it again or remove it")
    if not isinstance(obj, dict):
        raise WeightsFileError(f"weights file {str(path)!r} holds {type(obj).__name__}, not a state dict")
    return obj


def _download(url: str, metric: str, fname: str, weights_dir: Optional[Path],
              also: str = "") -> Dict[str, torch.Tensor]:
    where = f"{weights_dir} or {hub_checkpoints_dir()}" if weights_dir else str(hub_checkpoints_dir())
    msg = (
        f"{metric}: weights file {fname!r}{also} not found and could not be downloaded from {url}; "
        f"put it in {where} (or set {ENV_WEIGHTS_DIR}=<folder>), or use pretrained=False for a "
        f"random backbone (tests and timing only)"
    )
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise WeightsNotFoundError(msg + f" [download skipped: {ENV_OFFLINE} is set]")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except Exception as e:  # URLError, HTTPError, timeouts, partial files
        raise WeightsNotFoundError(f"{msg} [{type(e).__name__}: {e}]") from e


def backbone_features(metric: str, arch: str,
                      weights_dir: Optional[str | os.PathLike] = None) -> Dict[str, torch.Tensor]:
    """State dict of torchvision ``<arch>().features`` (keys ``0.weight``, ...) for ``metric``."""
    if arch not in BACKBONES:
        raise KeyError(f"{metric}: unknown backbone {arch!r}; known: {sorted(BACKBONES)}")
    fname = BACKBONES[arch]
    wd = resolve_weights_dir(weights_dir)
    if wd is not None:
        if (wd / fname).is_file():
            return _features_only(_load(wd / fname), wd / fname, metric)
        feats = sorted(wd.glob(f"{arch}_features_*.pth"))
        if feats:
            return _features_only(_load(feats[0]), feats[0], metric)
    cached = hub_checkpoints_dir() / fname
    if cached.is_file():
        return _features_only(_load(cached), cached, metric)
    also = f" (or a features-only {arch}_features_*.pth in the weights folder)"
    return _features_only(_download(_TV_ROOT + fname, metric, fname, wd, also), hub_checkpoints_dir() / fname, metric)


_USED: ContextVar[Optional[Dict[str, str]]] = ContextVar("lit_attacks_weights_used", default=None)


@contextmanager
def recording() -> Iterator[Dict[str, str]]:
    """Within the block, every weights file (or folder) a metric is built from is recorded as metric name -> path
    in the dict it yields (``create_metric`` keeps it as ``Distance.weights_file``, for run READMEs); per context,
    so concurrent builds (threads, notebooks) never see each other's files."""
    files: Dict[str, str] = {}
    token = _USED.set(files)
    try:
        yield files
    finally:
        _USED.reset(token)


def note_used(metric: str, path) -> None:
    files = _USED.get()
    if files is not None and metric:
        files[metric] = str(path)


def used(metric: str, default: str = "") -> str:
    """The weights file ``metric`` was built from so far in the current :func:`recording` block (else ``default``)."""
    return (_USED.get() or {}).get(metric, default)


def _features_only(sd: Dict[str, torch.Tensor], path: Path, metric: str = "") -> Dict[str, torch.Tensor]:
    """Accept a full torchvision checkpoint (``features.N.*``) or a features-only one (``N.*``)."""
    note_used(metric, path)
    if any(k.startswith("features.") for k in sd):
        return {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    if all(k.split(".")[0].isdigit() for k in sd):
        return sd
    raise WeightsFileError(f"weights file {str(path)!r} is neither a torchvision checkpoint nor a features state dict")


def dists_alpha_beta(metric: str, weights_dir: Optional[str | os.PathLike] = None) -> Dict[str, torch.Tensor]:
    """The DISTS ``alpha`` and ``beta`` tensors, each (1, 1475, 1, 1)."""
    wd = resolve_weights_dir(weights_dir)
    candidates = [wd / f for f in DISTS_FILES] if wd is not None else []
    candidates.append(hub_checkpoints_dir() / DISTS_FILES[0])
    found = next((p for p in candidates if p.is_file()), None)
    sd = _load(found) if found else _download(DISTS_URL, metric, DISTS_FILES[0], wd)
    note_used(metric, found or hub_checkpoints_dir() / DISTS_FILES[0])
    if "alpha" not in sd or "beta" not in sd:
        raise RuntimeError(f"{metric}: DISTS weights {str(found or DISTS_URL)!r} lack 'alpha'/'beta'")
    return {"alpha": sd["alpha"], "beta": sd["beta"]}


def _file_digest(path: Path, algorithm: str = "sha256") -> str:
    import hashlib

    h = hashlib.new(algorithm)
    with open_regular(path, "weights file", error=WeightsFileError) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_to(url: str, dest: Path, msg: str) -> None:
    """Download ``url`` to ``dest`` (nothing left there on failure), or raise :class:`WeightsNotFoundError` with
    ``msg`` (the not-found message naming the file and where to put it) when offline or the download fails."""
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise WeightsNotFoundError(msg + f" [download skipped: {ENV_OFFLINE} is set]")
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as e:  # URLError, HTTPError, timeouts
        dest.unlink(missing_ok=True)
        raise WeightsNotFoundError(f"{msg} [{type(e).__name__}: {e}]") from e


def released_file(metric: str, fname: str, url: str, weights_dir: Optional[str | os.PathLike] = None,
                  sha256: Optional[str] = None, aliases: tuple = ()) -> Path:
    """The path of a file a learned metric's authors released, found as ``fname`` (or one of ``aliases``, e.g. the
    authors' own file name) in ``weights_dir`` / ``$LIT_ATTACKS_WEIGHTS_DIR``, then in the torch hub cache, else
    downloaded from ``url`` into the cache as ``fname`` (through a ``.part`` file: a failed download leaves nothing).
    A known ``sha256`` is checked on the cached or downloaded file (a mismatch is an error naming the file, never a
    silently different metric); a file in the weights folder is the user's choice (e.g. retrained weights) and is
    not checked."""
    wd = resolve_weights_dir(weights_dir)
    names = (fname,) + tuple(aliases)
    candidates = [wd / n for n in names] if wd is not None else []
    candidates += [hub_checkpoints_dir() / n for n in names]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = f"{wd} or {hub_checkpoints_dir()}" if wd else str(hub_checkpoints_dir())
        msg = (f"{metric}: weights file {fname!r} not found and could not be downloaded from {url}; put it in "
               f"{where} (or set {ENV_WEIGHTS_DIR}=<folder>), or use pretrained=False (tests and timing only)")
        found = hub_checkpoints_dir() / fname
        found.parent.mkdir(parents=True, exist_ok=True)
        tmp = found.with_name(f".{found.name}.part{os.getpid()}")  # each process its own: concurrent starts never
        try:  # write into one file; the rename publishes a whole file
            _download_to(url, tmp, msg)
            tmp.replace(found)
        finally:
            tmp.unlink(missing_ok=True)
    if sha256 is not None and found.parent == hub_checkpoints_dir():
        got = _file_digest(found)
        if got != sha256:
            raise RuntimeError(f"{metric}: weights file {str(found)!r} has sha256 {got[:16]}..., expected "
                               f"{sha256[:16]}... (the authors' release); delete it to download it again")
    note_used(metric, found)
    return found


def released_weights(metric: str, fname: str, url: str, weights_dir: Optional[str | os.PathLike] = None,
                     sha256: Optional[str] = None, aliases: tuple = ()) -> Dict[str, torch.Tensor]:
    """The state dict in :func:`released_file`, read with ``weights_only=True``."""
    return _load(released_file(metric, fname, url, weights_dir, sha256, aliases))


def load_exactly(module: torch.nn.Module, sd: Dict[str, torch.Tensor], what: str, error: type = RuntimeError) -> None:
    """Load ``sd`` into ``module``; a missing or unexpected key raises ``error`` with ``what`` (the metric and the
    file) and the first keys of each kind, instead of torch's message that names neither."""
    own = module.state_dict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise error(f"{what} (entry {k!r} is a {type(v).__name__}, not a tensor)")
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise error(f"{what} (tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)})")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise error(f"{what} (tensor {k!r} holds NaN or infinite values)")
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise error(f"{what} (missing {missing[:5]}, unexpected {unexpected[:5]})")


def load_sliced_features(net: torch.nn.Module, features: Dict[str, torch.Tensor], metric: str) -> None:
    """Copy a features state dict into LPIPS' sliced backbone (``slice2.3.weight`` is ``3.weight``)."""
    own = {name.split(".", 1)[1]: p for name, p in net.named_parameters()}
    missing, extra = sorted(set(own) - set(features)), sorted(set(features) - set(own))
    where = f" in {used(metric)}" if used(metric) else ""
    if missing or extra:
        raise WeightsFileError(f"{metric}: backbone weights do not match (missing {missing}, unexpected "
                               f"{extra}){where}")
    with torch.no_grad():
        for k, p in own.items():
            if not isinstance(features[k], torch.Tensor) or p.shape != features[k].shape:
                shape = tuple(getattr(features[k], "shape", ()))
                raise WeightsFileError(f"{metric}: backbone tensor {k} has shape {shape}, expected "
                                       f"{tuple(p.shape)}{where}")
            if not bool(torch.isfinite(features[k]).all()):
                raise WeightsFileError(f"{metric}: backbone tensor {k} holds NaN or infinite values{where}")
            p.copy_(features[k])


def released_archive(metric: str, folder: str, url: str, marker: str, weights_dir: Optional[str | os.PathLike] = None,
                     sha512: Optional[str] = None, flat: bool = False) -> Path:
    """The folder ``folder`` of a zip archive a learned metric's authors released (e.g. ``pim-1/`` with
    ``config.json`` and a TensorFlow checkpoint), recognised by the file ``marker`` in it: found in ``weights_dir`` /
    ``$LIT_ATTACKS_WEIGHTS_DIR``, then in the torch hub cache, else downloaded from ``url`` (the zip's ``sha512``
    checked before anything is unpacked) and unpacked into the cache through a temporary folder, so a failed
    download or unpacking leaves nothing behind. Members outside ``folder/`` or with absolute or ``..`` paths are
    refused. ``flat``: the archive has no top folder (DreamSim's releases); its members are unpacked into
    ``folder/``."""
    import shutil
    import tempfile
    import zipfile

    wd = resolve_weights_dir(weights_dir)
    candidates = ([wd / folder] if wd is not None else []) + [hub_checkpoints_dir() / folder]
    found = next((p for p in candidates if (p / marker).is_file()), None)
    if found is None:
        where = f"{wd} or {hub_checkpoints_dir()}" if wd else str(hub_checkpoints_dir())
        msg = (f"{metric}: weights folder {folder!r} (with {marker}) not found and could not be downloaded from {url}; "
               f"unzip the authors' archive into {where} (or set {ENV_WEIGHTS_DIR}=<folder>), or use pretrained=False "
               f"(tests and timing only)")
        cache = hub_checkpoints_dir()
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=f".{folder}-") as tmp:
            zpath = Path(tmp) / f"{folder}.zip"
            _download_to(url, zpath, msg)
            if sha512 is not None:
                h = _file_digest(zpath, "sha512")
                if h != sha512:
                    raise RuntimeError(f"{metric}: download from {url} has sha512 {h[:16]}..., expected "
                                       f"{sha512[:16]}... (the authors' release); nothing was kept")
            with zipfile.ZipFile(zpath) as z:
                for name in z.namelist():
                    parts = Path(name).parts
                    if Path(name).is_absolute() or ".." in parts or not parts or (not flat and parts[0] != folder):
                        raise RuntimeError(f"{metric}: archive {url} holds {name!r}, outside {folder}/; nothing was "
                                           "kept")
                z.extractall(Path(tmp) / folder if flat else tmp)
            if not (Path(tmp) / folder / marker).is_file():
                raise RuntimeError(f"{metric}: archive {url} has no {folder}/{marker}; nothing was kept")
            shutil.move(str(Path(tmp) / folder), str(cache / folder))
        found = cache / folder
    note_used(metric, found)
    return found
