"""Benchmark perceptual metrics on BAPPS-style 2AFC data and attack them, cell by cell, resumably.

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
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from lit_attacks.bench.config import DEFAULT_CONFIG, ConfigError, load_yaml, merge, validate
from lit_attacks.tables import tables


def parse_args(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Only the flags actually given (argparse.SUPPRESS), so they can override the config."""
    S = argparse.SUPPRESS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=S)
    p.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])})")
    p.add_argument("--name", help="run name: results/<name>/ and the W&B run name")
    p.add_argument("--out", help="results folder (default results/<name>)")
    p.add_argument("--data", help="BAPPS tree root or shard folder (default: built-in synthetic set; 'builtin' picks it over a config's path)")
    p.add_argument("--split")
    p.add_argument("--categories", help="comma-separated categories (default: all)")
    p.add_argument("--builtin-n", type=int, help="samples per category of the built-in set")
    p.add_argument("--builtin", choices=["photos", "procedural"], help="which built-in set (default photos)")
    p.add_argument("--seed", type=int)
    p.add_argument("--metrics", help="comma-separated metric names")
    for table in tables():  # each result table adds its own flags (--attacks, --param, --sweep-eps, --transfer, ...)
        table.add_arguments(p)
    p.add_argument("--pretrained", choices=["true", "false"], help="false: random backbones (tests, timing)")
    p.add_argument("--weights-dir", help="folder searched first for weights ($LIT_ATTACKS_WEIGHTS_DIR)")
    p.add_argument("--skip-unavailable", choices=["true", "false"],
                   help="true: metrics whose weights or extra are missing are listed as not run instead of stopping")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--batch-invariant", action="store_true", help="float64: results independent of batching")
    p.add_argument("--uint8", choices=["round", "trunc"],
                   help="8-bit images (PNGs, s_adv_uint8): round (default) or trunc as the official code")
    p.add_argument("--save-adv", action="store_true", help="also write adversarial images as shards in adv/")
    p.add_argument("--examples", type=int, help="example triplets per attack cell in the image grids")
    p.add_argument("--gpus", type=int, help="DDP on N GPUs (0: CPU; default: 1 GPU if visible, else CPU)")
    p.add_argument("--accelerator", help="explicit Lightning accelerator, e.g. cpu (with --devices 2: CPU DDP)")
    p.add_argument("--devices", type=int)
    p.add_argument("--strategy", help="Lightning strategy (default: ddp when more than one process)")
    p.add_argument("--num-nodes", type=int, help="nodes of a multi-node run (torchrun / SLURM)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode (auto: online with an API key, else offline)")
    p.add_argument("--wandb-project")
    p.add_argument("--fresh", action="store_true", help="recompute every cell, ignoring completed ones")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    flags = vars(p.parse_args(argv))
    for key in ("pretrained", "skip_unavailable"):
        if key in flags:
            flags[key] = flags[key] == "true"
    return flags


def fail(msg: str) -> None:
    print(f"bench.py: error: {msg}", file=sys.stderr)
    release_lock()
    sys.exit(2)


def resolve_config(flags: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults < config < flags, validated; exits with a one-line error on bad input."""
    flags = dict(flags)
    path = flags.pop("config", None) or DEFAULT_CONFIG
    for key in ("fresh", "quiet"):
        flags.pop(key, None)
    try:
        cfg = merge(load_yaml(path), flags, str(path))
        validate(cfg)
    except ConfigError as e:
        fail(str(e))
    cfg["config_file"] = str(path)
    return cfg


def resolve_devices(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Lightning Trainer device arguments from gpus / accelerator / devices / strategy / num_nodes."""
    import torch

    visible = torch.cuda.device_count()
    if cfg["accelerator"] is not None:
        acc, dev = cfg["accelerator"], cfg["devices"] or 1
    elif cfg["gpus"] is not None:
        if cfg["gpus"] > visible:
            shown = os.environ.get("CUDA_VISIBLE_DEVICES")
            fail(f"--gpus {cfg['gpus']}: only {visible} GPU(s) visible"
                 + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "") + "; use --gpus 0 for the CPU")
        acc, dev = ("gpu", cfg["gpus"]) if cfg["gpus"] > 0 else ("cpu", cfg["devices"] or 1)
    else:
        acc, dev = ("gpu", 1) if visible else ("cpu", cfg["devices"] or 1)
    strategy = cfg["strategy"]
    if strategy == "auto" and dev * cfg["num_nodes"] > 1:
        strategy = "ddp"
    return {"accelerator": acc, "devices": dev, "strategy": strategy, "num_nodes": cfg["num_nodes"]}


LOCK_NAME = ".bench.lock"
_LOCK: Dict[str, Any] = {}  # the open, locked file of this process's run, its folder and the folders made for it


def lock_out(out: Path) -> None:
    """One bench run at a time per results folder: the run's first process (rank 0; its DDP ranks share the
    run) holds an exclusive lock on ``out/.bench.lock`` until it exits or its next run starts. A second run on
    the same folder would interleave cells and, at its end, remove the files the first one's cells produced.
    Folders made only to hold the lock are removed again by :func:`release_lock` if the run does nothing."""
    import atexit
    import fcntl

    release_lock()  # an earlier main() of this process (tests, notebooks) is over
    created = [p for p in [out, *out.parents] if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_NAME, "a+")
    _LOCK.update(file=f, out=out, created=created)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        _LOCK.clear()
        f.close()
        fail(f"results folder {out} is in use by another bench run (pid {holder}); wait for it to finish or "
             "choose another --out")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    atexit.register(release_lock)


def release_lock() -> None:
    """Release this process's results-folder lock; a folder made for it that holds nothing else is removed."""
    f = _LOCK.pop("file", None)
    if f is None:
        return
    out, created = _LOCK.pop("out"), _LOCK.pop("created")
    if created and [p.name for p in out.iterdir()] == [LOCK_NAME]:  # the run did nothing: leave nothing
        (out / LOCK_NAME).unlink()
        for p in created:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    f.close()


def check_out(out: Path) -> None:
    """The results folder (and the subfolders a run writes into) must be writable, and a folder that already
    holds files must be a bench results folder: a run removes the earlier run's outputs it replaces."""
    from lit_attacks.bench.runner import MANAGED_DIRS

    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) \
            and not ((out / "cells").is_dir() or (out / "summary.json").is_file()):
        fail(f"results folder {out} holds other files and no bench run (no cells/ or summary.json); "
             "choose a new or empty folder")
    created = [p for p in [out, *out.parents] if not p.exists()]  # made for the probe, removed after it:
    for d in [out] + [out / sub for sub in ("cells",) + MANAGED_DIRS if (out / sub).exists()]:  # a run that
        try:                                                                  # fails before any work leaves nothing
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            fail(f"results folder {d} is not writable: {e.strerror or e}")
    for p in created:
        p.rmdir()


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    flags = parse_args(argv)
    cfg = resolve_config(flags)
    quiet_lightning()
    devices = resolve_devices(cfg)
    out = Path(cfg["out"])
    if cfg["data"] is not None and not Path(cfg["data"]).expanduser().is_dir():
        fail(f"--data {cfg['data']}: no such folder")
    check_out(out)

    from pytorch_lightning.utilities import rank_zero_only

    from lit_attacks.datamodules.bapps import BappsDataModule
    from lit_attacks.datamodules.tree import BappsDataError
    from lit_attacks.bench.cells import CellStore
    from lit_attacks.bench.runner import Bench

    is_zero = rank_zero_only.rank == 0
    if is_zero and os.environ.get("NODE_RANK", "0") == "0":  # the run's first process only
        lock_out(out)
    fresh = bool(flags.get("fresh"))
    cats = cfg["categories"]
    dm_kw = dict(data=cfg["data"], split=cfg["split"], categories=cats, batch_size=cfg["batch_size"],
                 num_workers=cfg["num_workers"], builtin_n=cfg["builtin_n"], seed=cfg["seed"], builtin=cfg["builtin"])
    # --fresh also rebuilds generated shards and re-hashes every shard (once, by rank 0, before the others start)
    dm_all = BappsDataModule(unanimous_only=False, refresh=fresh and is_zero, **dm_kw)
    dm_attack = BappsDataModule(unanimous_only=True, **dm_kw)
    try:
        source = dm_all.describe()
    except BappsDataError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or 'the data cache'}: {e.strerror or e} (the cache folder is $LIT_ATTACKS_CACHE, "
             f"default ~/.cache/lit_attacks)")
    quiet = bool(flags.get("quiet"))
    if cfg["data"] is None and not quiet and is_zero:
        print(f"Using the built-in {cfg['builtin']} 2AFC set, synthetic judges ({source['shards']}); pass --data for BAPPS.")

    import pytorch_lightning as pl

    pl.seed_everything(cfg["seed"], verbose=False)
    bench = Bench(cfg, devices, out, source, dm_all, dm_attack, CellStore(out, fresh=fresh),
                  quiet=quiet, is_zero=is_zero)
    try:
        bench.run_all()
        end_distributed()  # every rank is done with collectives; a clean exit of the other ranks
        if bench.is_zero:
            bench.finish()
    except (BappsDataError, ConfigError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        if is_zero:
            print(f"\nbench.py: interrupted. Completed cells are saved in {out / 'cells'}; run the same command "
                  "again to resume from there.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
