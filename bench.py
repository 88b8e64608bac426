"""Benchmark perceptual metrics on BAPPS-style 2AFC data: Table 1 (2AFC score and accuracy).

    python bench.py                                   # built-in synthetic set, default metrics
    python bench.py --data DIR --metrics l2,ssim,lpips_alex --out OUT

DIR is a BAPPS tree root (holding 2afc/) or a folder of shards. Outputs in OUT: table1.csv,
table1.md, summary.json and scores/<metric>.csv (one row per sample).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

DEFAULT_METRICS = "l2,ssim,lpips_alex"
TABLE1_COLUMNS = ["metric", "category", "samples", "unanimous", "two_afc", "accuracy"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="BAPPS tree root or shard folder (default: built-in synthetic set)")
    p.add_argument("--split", default="val")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated metric names (default {DEFAULT_METRICS})")
    p.add_argument("--out", default="results/default", help="results folder (default results/default)")
    p.add_argument("--pretrained", default="true", choices=["true", "false"],
                   help="false: random backbones (tests and timing only; labelled in every output)")
    p.add_argument("--weights-dir", default=None, help="folder searched first for weights ($LIT_ATTACKS_WEIGHTS_DIR)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--builtin-n", type=int, default=40, help="samples per category of the built-in set")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def fail(msg: str) -> None:
    print(f"bench.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_args(args: argparse.Namespace) -> List[str]:
    """Validate names and paths before any work; returns the metric list."""
    from lit_attacks.metrics import METRICS

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        fail("--metrics is empty")
    for m in metrics:
        try:
            METRICS.get(m)
        except KeyError as e:
            fail(str(e.args[0]))
    if args.data is not None and not Path(args.data).is_dir():
        fail(f"--data {args.data}: no such folder")
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        fail(f"--out {out} is not writable: {e}")
    return metrics


def make_trainer(args: argparse.Namespace, callbacks: list):
    import pytorch_lightning as pl

    return pl.Trainer(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, logger=False,
                      enable_checkpointing=False, enable_progress_bar=not args.quiet, enable_model_summary=False,
                      callbacks=callbacks, inference_mode=False)


def score_metric(args: argparse.Namespace, metric: str, dm) -> tuple:
    """Scores of every sample for one metric: (records, label, is_global_zero)."""
    from callbacks.records import RecordCollector
    from lit_attacks.metrics import WeightsNotFoundError
    from lit_attacks.scoring import ScoreModule

    try:
        module = ScoreModule(metric, pretrained=args.pretrained == "true", weights_dir=args.weights_dir)
    except WeightsNotFoundError as e:
        fail(f"{e}\n(or run with --pretrained false to use random backbones)")
    collector = RecordCollector()
    trainer = make_trainer(args, [collector])
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return collector.records, module.metric.label, trainer.is_global_zero


def quiet_lightning() -> None:
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    metrics = check_args(args)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*`pretrained` is deprecated.*|.*weight enum.*")

    from datamodules.bapps import BappsDataModule
    from datamodules.tree import BappsDataError
    from lit_attacks.evaluation import table1_rows
    from lit_attacks.report import markdown_table, write_csv, write_json

    out = Path(args.out)
    cats = args.categories.split(",") if args.categories else None
    dm = BappsDataModule(data=args.data, split=args.split, categories=cats, unanimous_only=False,
                         batch_size=args.batch_size, num_workers=args.num_workers, builtin_n=args.builtin_n)
    try:
        source = dm.describe()
    except BappsDataError as e:
        fail(str(e))
    if args.data is None:
        print(f"Using the built-in synthetic 2AFC set ({source['shards']}); pass --data for BAPPS.")
    t0 = time.time()
    rows, labels, is_zero = [], {}, True
    for i, metric in enumerate(metrics):
        if not args.quiet:
            print(f"[{i + 1}/{len(metrics)}] scoring {metric} ({time.time() - t0:.0f}s elapsed)")
        records, label, is_zero = score_metric(args, metric, dm)
        if not records:
            fail(f"no samples found in {source['shards']}" + (f" for categories {cats}" if cats else ""))
        labels[metric] = label
        if is_zero:
            write_csv(out / "scores" / f"{metric}.csv", records, ["key", "category", "judge", "s0", "s1"])
        for r in table1_rows(metric, records):
            r["metric"] = label
            rows.append(r)
    if not is_zero:
        return 0
    write_csv(out / "table1.csv", rows, TABLE1_COLUMNS)
    md = markdown_table(rows, TABLE1_COLUMNS)
    from lit_attacks.report import atomic_write
    atomic_write(out / "table1.md", "# Table 1: 2AFC score and accuracy on unanimous samples\n\n" + md)
    write_json(out / "summary.json", {"data": source, "metrics": labels, "table1": rows,
                                      "pretrained": args.pretrained == "true", "seconds": time.time() - t0})
    print("\nTable 1 (2AFC over all samples; accuracy over unanimous samples)\n")
    print(md)
    if args.pretrained != "true":
        print("WARNING: random backbones (--pretrained false): numbers are for testing and timing only.")
    print(f"results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
