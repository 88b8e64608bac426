"""The bench run: every cell of every enabled table, resumably, then the run's outputs.

Each cell runs ``trainer.predict`` (DDP when configured) through :meth:`Bench.predict`; its callbacks
gather per-sample rows so each sample appears exactly once, rank 0 writes the cell's files and then
its completion record (:class:`lit_attacks.bench.cells.CellStore`). A completed cell with the same
fingerprint and unchanged files is loaded instead. The Bench knows no table by name.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import pytorch_lightning as pl
import torch

from lit_attacks.version import __version__, code_fingerprint
from lit_attacks.bench.cells import CellFiles, CellStore, MachineRates, Progress
from lit_attacks.bench.devices import (ENV_DDP_TIMEOUT, RunError, build_trainer, ddp_timeout, waiting_line,
                                       world_size)
from lit_attacks.bench.folder import ResultsFolder
from lit_attacks.datamodules.cache import cache_root
from lit_attacks.datamodules.shards import sha256
from lit_attacks.bench.wandb_log import WandbRun
from lit_attacks.configuration import ConfigError
from lit_attacks.metrics import CheckpointError, WeightsNotFoundError, create_metric
from lit_attacks.metrics.base import MetricCallError
from lit_attacks.metrics.weights import WeightsFileError
from lit_attacks.quiet import third_party_warnings_silenced
from lit_attacks.report import fingerprint
from lit_attacks.safe_files import InputError, first_line
from lit_attacks.tables import Cell, Table, tables
from lit_attacks.wandb_utils import resolve_mode


ENV_DEBUG = "LIT_ATTACKS_DEBUG"  # set: tracebacks instead of one-line errors where bench would summarise


class Bench:
    """Runs the cells of a resolved config (implements :class:`lit_attacks.tables.Run` for the tables);
    :meth:`finish` (rank 0) writes tables, plots, summary, README and the W&B run."""

    def __init__(self, cfg: Dict[str, Any], devices: Dict[str, Any], out: Path, source: Dict[str, Any], dm_all,
                 dm_attack, store: CellStore, quiet: bool = False, is_zero: bool = True,
                 folder: Optional[ResultsFolder] = None, trainer: Optional[pl.Trainer] = None,
                 argv: Optional[Sequence[str]] = None) -> None:
        self.cfg, self.devices, self.out, self.source = cfg, devices, out, source
        self.argv = list(sys.argv[1:] if argv is None else argv)  # the bench.py arguments the run records
        self.trainer = trainer if trainer is not None else build_trainer(devices, not quiet and sys.stdout.isatty())
        self._trainer_callbacks = list(self.trainer.callbacks)  # its own (the progress bar); each cell adds its own
        self.folder = folder if folder is not None else ResultsFolder(out)  # rank 0 claimed it
        self.dm_all, self.dm_attack, self.store = dm_all, dm_attack, store
        self.quiet, self.is_zero = quiet, is_zero
        self.tables: List[Table] = [t() for t in tables() if t.plan(cfg).cells > 0]
        self.progress = Progress(self.planned_cells(), quiet=quiet, is_zero=is_zero, work=self.planned_work())
        self.t0 = time.time()
        self.labels: Dict[str, str] = {}
        self.weights: Dict[str, str] = {}  # metric -> the weights file or folder it was built from
        self.unavailable: Dict[str, str] = {}  # metric -> why it could not be built (skip_unavailable)
        self.cells: Dict[str, Dict[str, Any]] = {}  # cell id -> payload, in run order
        self.loaded: Set[str] = set()  # cells completed by an earlier run, loaded by this one
        self.rates = MachineRates(cache_root() / "machine_rates.json")
        self._rows: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}  # (cell, CSV) -> rows computed or loaded
        self.wandb = WandbRun(resolve_mode(cfg["wandb"]), cfg["wandb_project"], cfg["name"], out,
                              dict(cfg), enabled=is_zero)
        self.base = {"data": source.get("index_sha256"), "data_source": str(source.get("data")),
                     "split": cfg["split"], "categories": cfg["categories"], "builtin_n": cfg["builtin_n"],
                     "builtin": cfg["builtin"],
                     "seed": cfg["seed"], "pretrained": cfg["pretrained"], "weights_dir": cfg["weights_dir"],
                     **({"image_size": cfg["image_size"]} if cfg["image_size"] != 64 else {}),  # 64: earlier cells stay
                     "batch_invariant": cfg["batch_invariant"], "uint8": cfg["uint8"], "version": __version__,
                     "code": code_fingerprint()}
        self.produced: Set[str] = set()  # files (relative to out) of this run's cells
        self._said_waiting = False

    # ---------------------------------------------------------------- what tables use (lit_attacks.tables.Run)
    def predict(self, module, callbacks: list, datamodule) -> None:
        """``trainer.predict`` with the run's one Trainer and this cell's callbacks."""
        if self.devices["num_nodes"] > 1 and not self._said_waiting:
            self._said_waiting = True
            print(waiting_line(self.devices), file=sys.stderr, flush=True)
        batch_keys = _BatchKeys()
        trainer = self.trainer
        trainer.callbacks = self._trainer_callbacks + list(callbacks) + [batch_keys]
        with third_party_warnings_silenced():
            try:
                trainer.predict(module, datamodule=datamodule, return_predictions=False)
            except MetricCallError as e:  # a metric misbehaved: one line naming the metric and the sample
                raise e.at(batch_keys.keys) from None
            except SystemExit:
                if trainer.interrupted:  # Lightning turns Ctrl-C into sys.exit(1), ignoring SIGINT from then on
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    raise KeyboardInterrupt from None
                raise
            except torch.distributed.DistError as e:
                raise RunError(f"DDP: {world_size(self.devices)} processes did not all join or stay within "
                               f"{ddp_timeout():g} s ({first_line(e)}); start every node with the same --num-nodes, "
                               f"MASTER_ADDR and MASTER_PORT, or raise ${ENV_DDP_TIMEOUT}") from None

    def results(self, table: str) -> Dict[str, Any]:
        """What table ``table`` computed in this run (:meth:`lit_attacks.tables.Table.results`); {} if it did not
        run."""
        return next((t.results() for t in self.tables if t.name == table), {})

    def datamodule(self, unanimous_only: bool):
        return self.dm_attack if unanimous_only else self.dm_all

    def metric_options(self) -> Dict[str, Any]:
        return {"pretrained": self.cfg["pretrained"], "weights_dir": self.cfg["weights_dir"]}

    def rows(self, cell_id: str, rel: str) -> List[Dict[str, Any]]:
        """The per-sample rows cell ``cell_id`` saved as ``rel``, typed as computed (a loaded cell's: from its
        record)."""
        if (cell_id, rel) not in self._rows:
            raise KeyError(f"cell {cell_id!r} saved no per-sample rows as {rel!r}")
        return self._rows[cell_id, rel]

    def software(self) -> Dict[str, Any]:
        import platform

        from lit_attacks.bench.run_readme import git_commit

        dev = self.devices
        device = (torch.cuda.get_device_name() if dev["accelerator"] in ("gpu", "cuda") and torch.cuda.is_available()
                  else f"CPU, {torch.get_num_threads()} threads")
        return {"lit_attacks": __version__, "code_fingerprint": code_fingerprint(), "commit": git_commit(),
                "torch": torch.__version__, "python": platform.python_version(),
                "device": f"{dev['devices']} x {device}" + (f", {dev['num_nodes']} nodes" if dev["num_nodes"] > 1
                                                            else "")}

    def command(self) -> str:
        from lit_attacks.bench.run_readme import command_line

        return "python bench.py " + " ".join(command_line(self.argv))

    def total_samples(self) -> int:
        return self.dm_all.dataset().count()

    def file_sha256(self, path: Path) -> str:
        return self.dm_all.hashes.sha256(path)

    def say(self, line: str) -> None:
        self.progress.say(line)

    def clear(self, rel: str) -> None:
        """Remove what bench wrote at or below ``rel`` (rank 0; only files the manifest lists, never through a
        link): e.g. the shards of an earlier attempt at a cell, before it is computed again."""
        if self.is_zero:
            self.folder.remove_all(self.folder.under(rel))

    # ---------------------------------------------------------------- cells
    def preflight(self) -> None:
        """Build every metric once, so missing weights or a bad checkpoint fail before any work
        (:class:`ConfigError`, reported by bench.py in one line). With ``skip_unavailable`` a metric whose weights
        cannot be found or whose optional extra is not installed is dropped from the run and listed, with the
        reason, in :attr:`unavailable` (the console, the run README and summary.json say so)."""
        names = list(self.cfg["metrics"]) + [m for t in self.tables for m in t.plan(self.cfg).metrics]
        for m in dict.fromkeys(names):
            try:
                built = create_metric(m, **self.metric_options())
                self.labels[m] = built.label
                if built.weights_file is not None:
                    self.weights[m] = built.weights_file
            except WeightsNotFoundError as e:
                why = str(e).replace("use pretrained=False", "run with --pretrained false")  # the flag, said once
                self._unavailable(m, why if "--pretrained false" in why else f"{why}; or run with --pretrained false "
                                  "(random backbones)")
            except ImportError as e:  # an optional extra is not installed
                self._unavailable(m, str(e))
            except (CheckpointError, WeightsFileError, InputError) as e:  # a bad checkpoint, weights file, user metric
                raise ConfigError(str(e)) from None
            except Exception as e:  # any other failure to build a metric: one line naming it
                if os.environ.get(ENV_DEBUG):
                    raise
                why = f"{type(e).__name__}: {first_line(e, 300, '')}"
                raise ConfigError(f"metric {m}: could not be built ({why}); set "
                                  f"{ENV_DEBUG}=1 for the traceback") from None
        if self.unavailable:
            self.progress.total, self.progress.work = self.planned_cells(), self.planned_work()
        by_label: Dict[str, str] = {}
        for m, label in self.labels.items():
            if label in by_label:
                raise ConfigError(f"metrics {by_label[label]!r} and {m!r} are both labelled {label!r}: their rows "
                                  "could not be told apart")
            by_label[label] = m
        for table in self.tables:
            table.preflight(self)

    def planned_cells(self) -> int:
        return sum(t.plan(self.cfg).cells for t in self.tables)

    def planned_work(self) -> float:
        return sum(t.plan(self.cfg).total_work for t in self.tables)

    def _unavailable(self, metric: str, reason: str) -> None:
        if not self.cfg["skip_unavailable"] or metric not in self.cfg["metrics"]:
            raise ConfigError(reason)
        self.cfg["metrics"] = [m for m in self.cfg["metrics"] if m != metric]
        if not self.cfg["metrics"]:
            raise ConfigError(f"no metric is available: {reason}")
        self.unavailable[metric] = reason.splitlines()[0]
        self.say(f"skipping {metric} (skip_unavailable): {self.unavailable[metric]}")

    def run_all(self) -> None:
        self.preflight()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_zero:
            clear_run_files(self.folder)
        for table in self.tables:
            for cell in table.cells(self):
                payload = self.run_cell(cell)
                table.add(cell, payload)
                if cell.log is not None:
                    self.wandb.log_metrics(cell.log(payload))

    def run_cell(self, cell: Cell) -> Dict[str, Any]:
        """Load the completed cell or compute it (files written on rank 0)."""
        if cell.id in self.cells:  # ids name files: two cells of one id would overwrite each other
            raise ConfigError(f"two cells of this run are named {cell.id!r} (the second: {cell.what}); make the "
                              "values that name them (metrics, radii, epsilons) distinct")
        depends = {"cell": cell.id, **self.base, **cell.spec}
        fp, parts = fingerprint(depends), {k: fingerprint(v) for k, v in depends.items()}
        state, why = self.store.load(cell.id, fp, parts)
        self.progress.start(cell.what, resumed=state is not None, work=cell.work, why=why)
        if state is None:
            files = CellFiles(self.out, self.is_zero)
            payload = cell.compute(files)
            payload["seconds"] = self.progress.finish()
            n = files.samples
            payload["samples_per_s"] = n / payload["seconds"] if payload["seconds"] > 0 else None
            self._compare_rate(cell, payload["seconds"], n)
            self._rows.update({(cell.id, rel): rows for rel, rows in files.rows.items()})
            hashes = files.hashes() if self.is_zero else {}
            if self.is_zero:
                hashes = self.store.save(cell.id, fp, payload, hashes, files.record(cell.id), parts)
                record = f"cells/{cell.id}.json"
                self.folder.record({**hashes, record: sha256(self.out / record)})
            self.produced.update(hashes)
        else:
            self.progress.finish()
            self.loaded.add(cell.id)
            payload = state["payload"]
            self._rows.update({(cell.id, rel): rows for rel, rows in state["rows"].items()})
            self.produced.update(state["files"])
        self.cells[cell.id] = payload
        return payload

    def _compare_rate(self, cell: Cell, seconds: float, samples: int) -> None:
        """Say so when this cell ran at under half the rate it had at its best on this machine (rank 0)."""
        if not self.is_zero or not samples:
            return
        key = f"{cell.id}|{self.devices['accelerator']}|{self.cfg['image_size']}"
        ratio = self.rates.observe(key, seconds / samples)
        if ratio is not None:
            self.say(f"note: {cell.what} ran at {ratio:.2f}x this machine's best rate for it (an earlier run): the "
                     "machine is busy or slower now, and the ETA, which uses this run's rate, is long for it")

    # ---------------------------------------------------------------- outputs
    def finish(self) -> None:
        """Remove what earlier runs left that this one did not produce, then write the run-level files. If
        writing them fails (a full disk, a folder made read-only), every file written so far is removed again (the
        folder guard knows them): the folder then holds the completed cells and no summary or results entry, and the
        same command finishes the run. The manifest says the run finished only once everything is written."""
        from lit_attacks.bench.outputs import write_outputs

        self.rates.save()
        remove_stale_files(self.folder, self.produced, set(self.cells))
        with self.folder.writing(undo=True):
            write_outputs(self)
            self.folder.set_state(finished=True)


class _BatchKeys(pl.Callback):
    """The keys of the batch being predicted (a metric's error names its sample among them)."""

    keys: List[str] = []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.keys = list(batch["key"]) if isinstance(batch, dict) and "key" in batch else []


def run_files(out: Path) -> List[Path]:
    """The run-level files bench writes at the end: summary.json, README.md, index.html and every table's files."""
    names = ["summary.json", "README.md", "index.html"] + [n for t in tables() for n in t.files]
    return [out / n for n in names]


def clear_run_files(folder: ResultsFolder) -> None:
    """At the start of a run: a results folder never shows run-level files of an earlier run beside this
    one's cells (a run killed midway leaves no summary or README claiming anything), and its manifest says the run
    has not finished until :meth:`Bench.finish` has written everything."""
    folder.set_state(finished=False)
    folder.remove_all([str(p.relative_to(folder.out)) for p in run_files(folder.out)] +
                      [rel for rel in folder.files if rel.startswith("leaderboard/")])  # results entries


def remove_stale_files(folder: ResultsFolder, produced: Set[str], cell_ids: Set[str]) -> None:
    """Before the run-level files are written: remove every file bench wrote earlier (per-sample CSVs, plots,
    shards, cell records) that this run's cells did not produce, so the folder describes exactly this run.
    Only files the manifest lists are removed; the user's own files and the W&B runs in wandb/ stay."""
    keep = set(produced) | {f"cells/{c}.json" for c in cell_ids} | {str(p.relative_to(folder.out))
                                                                   for p in run_files(folder.out)}
    folder.remove_all([rel for rel in folder.files if rel not in keep])
