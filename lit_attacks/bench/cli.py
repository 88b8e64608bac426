"""The ``bench.py`` command: flags and config, the results-folder lock, the run and its one-line errors.

``bench.py`` at the top of the repository only calls :func:`main`. Settings: built-in defaults < the YAML config
(``--config``) < command-line flags (:mod:`lit_attacks.bench.config`). Bad input ends the command with one line,
``bench.py: error: ...``, and exit status 2 (1 for a run that failed midway, 130 for Ctrl-C), raised as
``SystemExit`` from :func:`main` only.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from lit_attacks.bench.config import DEFAULT_CONFIG, ConfigError, check_code, load_yaml, merge, validate
from lit_attacks.bench.devices import RunError
from lit_attacks.bench.folder import MANIFEST, OWN, FolderError, ResultsFolder, RunLock, SUBFOLDERS
from lit_attacks.safe_files import InputError
from lit_attacks.tables import tables

USAGE = """Benchmark perceptual metrics on BAPPS-style 2AFC data and attack them, cell by cell, resumably.

    python bench.py                                         # the quick preset (configs/bench/quick.yaml)
    python bench.py --config configs/bench/table2.yaml --data ~/data/bapps-shards --gpus 8
    python bench.py --metrics l2,lpips_alex --attacks pgd --param pgd.steps=40 --out results/pgd40

Settings come from built-in defaults < the YAML config (--config, default configs/bench/quick.yaml)
< command-line flags. Every (metric, attack) cell, sweep point and transfer stage is a *cell*: it is
written atomically when complete and skipped when the same command is run again (--fresh recomputes).
Outputs in results/<name>/ (or --out): table1/2/3 and sweep as .csv/.md, summary.json, per-sample CSVs
(scores/, samples/), PNG plots (plots/), README.md (config, versions, data fingerprint, weights) and
the W&B run (wandb/; offline without an API key).
"""


class Stop(Exception):
    """Ends the command: ``bench.py: error: <message>`` on stderr and exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


TYPE_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number"}


def _parser_class():
    import jsonargparse

    class Parser(jsonargparse.ArgumentParser):
        """A jsonargparse parser whose errors are one line, as the config's: ``bench.py: error: <what>``, with the
        closest flag for an unknown one."""

        def error(self, message: str, ex: Optional[Exception] = None):  # noqa: D401 (argparse's hook)
            raise Stop(one_line_error(message, self._option_string_actions))

    return Parser


def one_line_error(message: str, flags) -> str:
    """A parser error in one line: a typed flag's bad value as ``--flag: expected <type>, got 'value'``; an unknown
    flag with the closest known one."""
    import difflib
    import re

    text = " ".join(str(message).split())
    m = re.match(r'Parser key "([^"]+)": Expected a <class \'(\w+)\'>\. Got value: (.*)$', text)
    if m:
        key, kind, value = m.groups()
        return f"--{key.replace('_', '-')}: expected {TYPE_NAMES.get(kind, kind)}, got {value!r}"
    m = re.match(r"Unrecognized arguments: (.*)$", text, flags=re.I)
    if m:
        unknown = m.group(1).split()[0].split("=")[0]
        close = difflib.get_close_matches(unknown.replace("_", "-"), [f for f in flags if f.startswith("--")], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown flag {unknown}{hint}; bench.py --help lists the flags"
    return text


def build_parser():
    """The typed command line (a jsonargparse parser; every flag's default is SUPPRESS, so only the flags given
    arrive and override the config): the data keys, each table's flags, the run keys, then the command's own."""
    from lit_attacks.bench.options import DATA_OPTIONS, RUN_OPTIONS

    p = _parser_class()(prog="bench.py", description=USAGE, argument_default=argparse.SUPPRESS,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"YAML config or preset name (default {DEFAULT_CONFIG.stem}; presets: "
                                    f"{DEFAULT_CONFIG.parent})")
    for option in DATA_OPTIONS:
        option.add_to(p)
    for table in tables():  # each result table adds its own flags (--attacks, --param, --sweep-eps, --transfer, ...)
        table.add_arguments(p)
    for option in RUN_OPTIONS:
        option.add_to(p)
    p.add_argument("--fresh", action="store_true", help="recompute every cell, ignoring completed ones")
    p.add_argument("--allow-code", action="store_true",
                   help="run the code a config file names (py:module:factory metrics): without it such a config is "
                        "refused; a py: metric given on the command line is yours and runs without it")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    # jsonargparse passes its own --print_config on as "--print_config=": an optional value, ignored
    p.add_argument("--print_config", "--print-config", dest="print_config", nargs="?", const="", metavar="",
                   help="print the resolved config (defaults < --config < flags) as YAML and exit; usable as --config")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Only the flags actually given, typed (booleans are booleans), so they can override the config."""
    return dict(vars(build_parser().parse_args(argv)))


def resolve_config(flags: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults < config < flags, validated; raises :class:`Stop` (one line) on bad input."""
    flags = dict(flags)
    path = flags.pop("config", None) or DEFAULT_CONFIG
    allow_code = bool(flags.pop("allow_code", False))
    for key in ("fresh", "quiet", "print_config"):
        flags.pop(key, None)
    try:
        config = load_yaml(path)
        check_code(config, str(path), allow_code)
        cfg = merge(config, flags, str(path))
        validate(cfg)
    except ConfigError as e:
        raise Stop(str(e)) from None
    cfg["config_file"] = str(path)
    return cfg


def print_config(cfg: Dict[str, Any]) -> None:
    """The resolved config as YAML that ``--config`` reads back to the same run."""
    import yaml

    from lit_attacks.bench.config import DEFAULTS

    print(yaml.safe_dump({k: cfg[k] for k in DEFAULTS}, sort_keys=False, default_flow_style=None), end="")


def resolve_devices(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Lightning Trainer device arguments (see :mod:`lit_attacks.bench.devices`)."""
    from lit_attacks.bench.devices import resolve_devices as resolve

    try:
        return resolve(cfg)
    except ConfigError as e:
        raise Stop(str(e)) from None


def run_trainer(devices: Dict[str, Any], quiet: bool):
    """The run's one Trainer (:func:`lit_attacks.bench.devices.build_trainer`); Lightning's per-batch bar only on a
    terminal (in a log file the cell lines say enough, without carriage-return noise)."""
    from lit_attacks.bench.devices import build_trainer

    try:
        return build_trainer(devices, progress_bar=not quiet and sys.stdout.isatty())
    except ConfigError as e:
        raise Stop(str(e)) from None


@contextmanager
def locked(out: Path, first: bool) -> Iterator[Optional[ResultsFolder]]:
    """One bench run at a time per results folder. The run's first process (``first``: rank 0 of node 0; its DDP
    ranks share the run) holds an exclusive lock on ``out/.bench.lock`` for the block, claims the folder
    (:class:`lit_attacks.bench.folder.ResultsFolder`: a new, empty or bench-made folder, no symlink where bench
    writes) and checks it is writable; the other processes get None. A second run on the same folder would
    interleave cells and remove the files the first one's cells produced. On leaving, a folder made for the run
    that holds nothing else is removed."""
    if not first:
        yield None
        return
    lock = RunLock(out)
    try:
        lock.acquire()
    except FolderError as e:
        raise Stop(str(e)) from None
    folder = ResultsFolder(out)
    try:
        if lock.replaced:
            print(f"bench.py: note: took over the lock of {out} left by pid {lock.replaced}, which is no longer "
                  "running", file=sys.stderr)
        try:
            folder.claim()
            folder.check_writable(SUBFOLDERS)
        except FolderError as e:
            raise Stop(str(e)) from None
        with folder.writing():  # every file bench writes in out goes through the folder guard
            yield folder
    finally:
        rest = [p.name for p in lock.out.iterdir() if p.name not in OWN] if lock.out.is_dir() else []
        lock.release(leave_nothing=not rest and not folder.files, manifest=MANIFEST)


BATCH_COPIES = 4  # copies of a batch's images an attack holds at least (the batch, the adversarial images, a
# gradient, a candidate): the lower bound a batch size is checked against


def check_batch_memory(cfg: Dict[str, Any], devices: Dict[str, Any], samples: int) -> None:
    """``--batch-size`` against the memory of the device, before any work: a batch (at most the samples there are) of
    three images at ``--image-size``, with the copies an attack holds, must fit
    (:func:`lit_attacks.limits.check_memory`)."""
    from lit_attacks.limits import check_memory

    n = min(cfg["batch_size"], max(samples, 1))
    device = "cuda" if devices["accelerator"] in ("gpu", "cuda") else "cpu"
    check_memory(n * 3 * 3 * cfg["image_size"] ** 2 * 4 * BATCH_COPIES,
                 f"--batch-size {cfg['batch_size']} ({n} samples of three {cfg['image_size']} px images per batch, "
                 f"with an attack's copies)", "choose a smaller --batch-size or --image-size", device)


def end_distributed() -> None:
    """Tear the DDP process group down once all ranks are past their last collective, so no process exits with
    gloo's threads still running (which can abort it, and Lightning then kills the whole run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def quiet_lightning() -> None:
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Terminated(Exception):
    """SIGTERM (``kill``, a scheduler's time limit): raised by bench's handler, which Lightning's own SIGTERM handler
    calls too (alone, Lightning only sets a flag that its predict loop never reads, so the run went on)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``bench.py`` with ``argv``: 0 when done, 130 on Ctrl-C, 143 on SIGTERM; ``SystemExit`` with the status on
    an error."""
    import signal
    import threading

    from lit_attacks.processes import say_when_a_rank_dies

    say_when_a_rank_dies("bench.py", "Completed cells are kept in <out>/cells: run the same command again to resume.")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return command(argv)
    except Stop as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        raise SystemExit(e.code) from None
    except (KeyboardInterrupt, Terminated) as e:  # before the results folder was known (config, lock), or after
        print(f"\nbench.py: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; run the same command "
              "again to resume (completed cells are kept in <out>/cells).", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if main_thread:  # None: a handler not set from Python; the default is the closest to it
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def command(argv: Optional[Sequence[str]] = None) -> int:
    """``bench.py`` with ``argv`` (default: this process's arguments): its exit status (errors raise :class:`Stop`)."""
    return execute(argv).code


@dataclass
class Outcome:
    """What one bench command did: its exit status and, when it ran, the run (its tables hold their results)."""

    code: int
    bench: Optional[Any] = None  # lit_attacks.bench.runner.Bench


def execute(argv: Optional[Sequence[str]] = None) -> Outcome:
    """Run the bench command in this process (``lit_attacks.evaluate`` calls it with its own arguments): the exit
    status and the finished run, whose tables hold their rows and results."""
    from lit_attacks.metrics import metric_pool

    argv = list(sys.argv[1:] if argv is None else argv)
    with metric_pool():  # each metric is built once per run and process (checking the config builds some too)
        return _execute(argv)


def _execute(argv: List[str]) -> Outcome:
    flags = parse_args(argv)
    cfg = resolve_config(flags)
    if "print_config" in flags:
        print_config(cfg)
        return Outcome(0)
    quiet_lightning()
    devices = resolve_devices(cfg)
    trainer = run_trainer(devices, bool(flags.get("quiet")))
    from lit_attacks.bench.devices import world_size

    in_process = [m for m in cfg["metrics"] if m.startswith("user:")]
    if in_process and world_size(devices) > 1:
        raise Stop(f"metric {in_process[0]} is an object of this process (lit_attacks.evaluate) and cannot reach "
                   "other DDP processes; use py:package.module:factory for multi-process runs")
    out = Path(cfg["out"])
    from lit_attacks.processes import say_when_a_rank_dies

    say_when_a_rank_dies("bench.py", f"Completed cells are kept in {out / 'cells'}: run the same command again to "
                                     "resume.")
    if cfg["data"] is not None and not Path(cfg["data"]).expanduser().is_dir():
        raise Stop(f"--data {cfg['data']}: no such folder")

    from pytorch_lightning.utilities import rank_zero_only

    is_zero = rank_zero_only.rank == 0
    from lit_attacks.datamodules.cache import cache_root
    from lit_attacks.wandb_utils import third_party_state

    with locked(out, is_zero and os.environ.get("NODE_RANK", "0") == "0") as folder, \
            third_party_state(out, cache_root()):  # W&B's and matplotlib's files: in out and the cache, not ~
        try:
            return Outcome(0, run(cfg, devices, trainer, out, flags, is_zero, folder, argv))
        except (KeyboardInterrupt, Terminated) as e:
            if is_zero:
                print(f"\nbench.py: {'terminated' if isinstance(e, Terminated) else 'interrupted'}. Completed cells "
                      f"are saved in {out / 'cells'}; run the same command again to resume from there.",
                      file=sys.stderr)
            return Outcome(143 if isinstance(e, Terminated) else 130)
        except InputError as e:  # bad data, config, weights or folder
            raise Stop(str(e)) from None
        except RunError as e:
            raise Stop(str(e), code=1) from None
        except OSError as e:  # a full disk, a folder made read-only midway, ...
            where = e.filename or "a results or cache file"
            raise Stop(f"{where}: {e.strerror or e}; the run stopped: completed cells are kept in {out / 'cells'} (no "
                       "summary was written); fix this and run the same command again to resume", code=1) from None


def run(cfg: Dict[str, Any], devices: Dict[str, Any], trainer, out: Path, flags: Dict[str, Any], is_zero: bool,
        folder: Optional[ResultsFolder], argv: Sequence[str]):
    """The run (:class:`lit_attacks.bench.runner.Bench`) of a resolved config, finished."""
    from lit_attacks.datamodules.bapps import BappsDataModule
    from lit_attacks.bench.cells import CellStore
    from lit_attacks.bench.runner import Bench

    fresh = bool(flags.get("fresh"))
    cats = cfg["categories"]
    dm_kw = dict(data=cfg["data"], split=cfg["split"], categories=cats, batch_size=cfg["batch_size"],
                 num_workers=cfg["num_workers"], builtin_n=cfg["builtin_n"], seed=cfg["seed"], builtin=cfg["builtin"],
                 load_size=cfg["image_size"])
    # --fresh also rebuilds generated shards and re-hashes every shard (once, by rank 0, before the others start)
    dm_all = BappsDataModule(unanimous_only=False, refresh=fresh and is_zero, **dm_kw)
    dm_attack = BappsDataModule(unanimous_only=True, **dm_kw)
    try:
        source = dm_all.describe()
    except OSError as e:
        raise Stop(f"{e.filename or 'the data cache'}: {e.strerror or e} (the cache folder is $LIT_ATTACKS_CACHE, "
                   f"default ~/.cache/lit_attacks)") from None
    check_batch_memory(cfg, devices, dm_all.dataset().count())
    quiet = bool(flags.get("quiet"))
    if cfg["data"] is None and not quiet and is_zero:
        print(f"Using the built-in {cfg['builtin']} 2AFC set, synthetic judges ({source['shards']}); pass --data for "
              "BAPPS.")
    if source.get("note") and not quiet and is_zero:
        print(f"note: {source['note']}")

    import pytorch_lightning as pl

    pl.seed_everything(cfg["seed"], verbose=False)
    bench = Bench(cfg, devices, out, source, dm_all, dm_attack, CellStore(out, fresh=fresh),
                  quiet=quiet, is_zero=is_zero, folder=folder, trainer=trainer, argv=argv)
    bench.run_all()
    end_distributed()  # every rank is done with collectives; a clean exit of the other ranks
    if bench.is_zero:
        bench.finish()
    return bench
