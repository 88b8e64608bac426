"""train.py's folders and checkpoints: the folder guard, a checkpoint every epoch, resuming where a run stopped.

- :class:`EpochCheckpoint` is Lightning's ``ModelCheckpoint`` (train.py turns every one a config names into it) whose
  ``last.ckpt`` is written at the end of every training epoch, whatever ``save_top_k`` says (Lightning writes it only
  with a top-k checkpoint, so ``save_top_k: 0`` left nothing until fit ended), atomically (a temporary file renamed:
  a run killed while saving keeps the previous whole checkpoint) and through the folder guard; it removes only
  checkpoints the guard's manifest lists.
- :class:`ConfigFile` writes the run's ``config.yaml`` through the guard, into the logger's ``save_dir``.
- :func:`resume_point`: the ``last.ckpt`` a run of the same settings left, to resume from, or a one-line error when
  the folder holds a checkpoint of other settings.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback

from lit_attacks.folders import TRAIN_MANIFEST, FolderError, claimed, guard_of
from lit_attacks.report import atomic_file, atomic_write


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with ``last.ckpt`` at every epoch's end, atomic writes and guarded removals (see the
    module). Takes exactly ``ModelCheckpoint``'s arguments."""

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_train_epoch_end(trainer, pl_module)  # validation ran before this hook: its top-k save is done
        if (self.save_last and trainer.state.fn == "fit" and not trainer.sanity_checking
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        if trainer.is_global_zero:
            with atomic_file(filepath) as tmp:  # every rank calls save_checkpoint (a collective); rank 0 writes
                trainer.save_checkpoint(str(tmp), self.save_weights_only)
        else:
            trainer.save_checkpoint(filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def _remove_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        if not trainer.is_global_zero:
            return
        owner = guard_of(Path(filepath))
        if owner is None:  # no guarded folder (the library used directly): Lightning's own removal
            trainer.strategy.remove_checkpoint(filepath)
            return
        folder, _ = owner
        rel = folder.rel(Path(filepath))
        if rel is not None:
            folder.remove_all([rel])  # only when listed and unchanged since train.py wrote it


class ConfigFile(SaveConfigCallback):
    """The resolved config as ``config.yaml`` in the logger's ``save_dir`` (rank 0), written atomically through the
    folder guard; no other folder (Lightning's default writes into the working directory without a logger)."""

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True,
                 multifile: bool = False) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        folder = run_folder(trainer)
        if folder is not None:
            atomic_write(folder / self.config_filename, self.parser.dump(self.config, skip_none=False))


def run_folder(trainer: "pl.Trainer") -> Optional[Path]:
    """The folder of a training run: its first logger's ``save_dir``, else the folder above its first checkpoint
    folder; None without either."""
    for logger in trainer.loggers:
        if getattr(logger, "save_dir", None):
            return Path(logger.save_dir)
    dirs = checkpoint_dirs(trainer)
    return dirs[0].parent if dirs else None


def checkpoint_dirs(trainer: "pl.Trainer") -> List[Path]:
    return [Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]


def use_epoch_checkpoints(trainer: "pl.Trainer") -> None:
    """Every plain ``ModelCheckpoint`` of ``trainer`` becomes an :class:`EpochCheckpoint` (same state, same arguments:
    it adds behaviour, no state)."""
    for cb in trainer.callbacks:
        if type(cb) is ModelCheckpoint:
            cb.__class__ = EpochCheckpoint
        if isinstance(cb, ModelCheckpoint) and cb.save_last == "link":
            cb.save_last = True  # a copy, not a symlink: the folder guard never keeps links in a run's folder


SETTINGS = ("hyper_parameters", "datamodule_hyper_parameters")


def resume_point(trainer: "pl.Trainer", model: "pl.LightningModule", datamodule: Any) -> Optional[Path]:
    """The ``last.ckpt`` of this run's checkpoint folder when it was written with the same model and data settings (to
    resume from: Lightning restores the weights, optimizer, epoch and step), None when there is none; a
    :class:`FolderError` naming the first difference when its settings differ (train.py --fresh starts over)."""
    for cb in trainer.callbacks:
        if not isinstance(cb, ModelCheckpoint) or not cb.dirpath or not cb.save_last:
            continue
        last = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
        if not last.is_file():
            continue
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: say so rather than resume from it
            raise FolderError(f"{last} cannot be read to resume from ({type(e).__name__}); remove it, or pass --fresh "
                              "to start over") from None
        now = {"hyper_parameters": dict(model.hparams),
               "datamodule_hyper_parameters": dict(datamodule.hparams) if datamodule is not None else {}}
        for part in SETTINGS:
            before = dict(state.get(part) or {})
            for key in sorted(set(before) | set(now[part])):
                if _plain(before.get(key)) != _plain(now[part].get(key)):
                    side = "model" if part == "hyper_parameters" else "data"
                    raise FolderError(f"{last} was written by a run with other settings ({side}.{key}: "
                                      f"{before.get(key)!r} there, {now[part].get(key)!r} now); run the same config "
                                      "to resume it, pass --fresh to start over (its checkpoints are replaced), or "
                                      "choose another save_dir")
        return last
    return None


def _plain(v: Any) -> Any:
    """A setting as compared across runs (tuples and lists alike)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def epochs_done(path: Path) -> int:
    """Training epochs a checkpoint has finished (Lightning records the epoch it was saved in)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return 0
    return int(state.get("epoch", -1)) + 1


def is_first_process() -> bool:
    """Rank 0 of node 0: the process that claims and locks the run's folders (its DDP ranks share them)."""
    from pytorch_lightning.utilities import rank_zero_only

    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"


@contextmanager
def guarded_run(trainer: "pl.Trainer") -> Iterator[None]:
    """For the block (the subcommand): the run's folder (:func:`run_folder`) and every checkpoint folder outside it
    claimed by the folder guard (:class:`lit_attacks.folders.OwnedFolder`: a new or empty folder, or one train.py made;
    no symlink in it; only files its manifest lists are removed) and locked against a second train.py run; every file
    written in them goes through the guard. Rank 0 of node 0 only; the other processes write nothing there."""
    folders: List[Path] = []
    for d in ([run_folder(trainer)] if run_folder(trainer) is not None else []) + checkpoint_dirs(trainer):
        if not any(_inside(d, f) for f in folders):
            folders.append(d)
    with ExitStack() as stack:
        if is_first_process():
            for d in folders:
                stack.enter_context(claimed(d, TRAIN_MANIFEST, "train.py", arg="save_dir", what="training folder",
                                            kind="train.py run"))
        yield


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(folder))
    except ValueError:
        return False
    return True
