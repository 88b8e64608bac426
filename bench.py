"""Benchmark perceptual metrics on BAPPS-style 2AFC data and attack them.

    python bench.py                                   # built-in synthetic set, default metrics and attacks
    python bench.py --data DIR --metrics l2,ssim,lpips_alex --attacks fgsm,pgd,onepixel --out OUT
    python bench.py --attacks pgd --param pgd.steps=40 --param onepixel.population=100

DIR is a BAPPS tree root (holding 2afc/) or a folder of shards. Outputs in OUT: table1.csv/.md
(2AFC score and accuracy), table2.csv/.md (attack flip rates), summary.json, scores/<metric>.csv and
samples/<attack>-<metric>.csv (one row per sample), and with --save-adv the adversarial images as
shards in adv/<attack>-<metric>/.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_METRICS = "l2,ssim,lpips_alex"
DEFAULT_ATTACKS = "fgsm,pgd"
TABLE1_COLUMNS = ["metric", "category", "samples", "unanimous", "two_afc", "accuracy"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="BAPPS tree root or shard folder (default: built-in synthetic set)")
    p.add_argument("--split", default="val")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated metric names (default {DEFAULT_METRICS})")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help=f"comma-separated attacks (fgsm, pgd, onepixel; default {DEFAULT_ATTACKS}; '' for Table 1 only)")
    p.add_argument("--param", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="attack parameter, e.g. pgd.steps=40 (repeatable)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="bit-exact per-sample results independent of batch composition (oneDNN/cuDNN off, slower)")
    p.add_argument("--save-adv", action="store_true", help="also write adversarial images as shards in OUT/adv/")
    p.add_argument("--transfer", action="store_true",
                   help="transfer benchmark (Table 3): adversarial shards on --source, scored by every --metrics entry")
    p.add_argument("--source", default="lpips_alex", help="comma-separated source metrics for --transfer "
                   "(default lpips_alex); several give a source x target matrix")
    p.add_argument("--rmse-max", type=float, default=8.0, help="imperceptibility bound (RMSE, 0-255) for --transfer")
    p.add_argument("--flowadv-width", type=int, default=None,
                   help="FlowAdv CNN width for --transfer (paper 256; default 256 on GPU, 32 on CPU)")
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


def parse_params(items: Sequence[str], attacks: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """``["pgd.steps=40"]`` -> ``{"pgd": {"steps": 40}}``, each value parsed as YAML, each key checked."""
    import inspect

    import yaml

    from lit_attacks.attacks import ATTACKS

    params: Dict[str, Dict[str, Any]] = {a: {} for a in attacks}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            fail(f"--param {item!r}: expected ATTACK.KEY=VALUE, e.g. pgd.steps=40")
        lhs, value = item.split("=", 1)
        attack, key = lhs.split(".", 1)
        if attack not in attacks:
            fail(f"--param {item!r}: attack {attack!r} is not among --attacks ({','.join(attacks) or 'none'})")
        allowed = set(inspect.signature(ATTACKS.get(attack)).parameters) - {"metric", "pretrained", "weights_dir",
                                                                            "keep_images", "batch_invariant"}
        if key not in allowed:
            fail(f"--param {item!r}: {attack} has no parameter {key!r}; known: {', '.join(sorted(allowed))}")
        params[attack][key] = yaml.safe_load(value)
    for attack, kw in params.items():  # bad values (eps <= 0, steps < 1, ...) fail now, not after hours
        try:
            ATTACKS.get(attack)(metric="l2", **kw)
        except (ValueError, TypeError) as e:
            fail(f"--param for {attack}: {e}")
    return params


def check_args(args: argparse.Namespace) -> List[str]:
    """Validate names and paths before any work; returns the metric list."""
    from lit_attacks.attacks import ATTACKS
    from lit_attacks.metrics import METRICS

    args.attack_list = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for a in args.attack_list:
        try:
            ATTACKS.get(a)
        except KeyError as e:
            fail(str(e.args[0]))
    args.params = parse_params(args.param, args.attack_list)
    args.sources = [m.strip() for m in args.source.split(",") if m.strip()]
    for m in args.sources:
        try:
            METRICS.get(m)
        except KeyError as e:
            fail(f"--source: {e.args[0]}")
    if args.rmse_max <= 0:
        fail(f"--rmse-max must be > 0, got {args.rmse_max}")

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


def sample_columns(records: Sequence[Dict[str, Any]]) -> List[str]:
    from lit_attacks.attacks import RECORD_COLUMNS

    extra = [k for k in (records[0] if records else {}) if k not in RECORD_COLUMNS]
    return RECORD_COLUMNS + extra


def table2_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    from lit_attacks.report import markdown_table

    view = []
    for r in rows:
        v = dict(r)
        v["flipped"] = f"{r['flipped']} ({100 * r['flip_rate']:.1f}%)" if r["total"] else "0"
        v["rmse"] = f"{r['rmse_mean']:.3f} +- {r['rmse_std']:.3f}" if r["flipped"] else "-"
        view.append(v)
    cols = ["metric", "attack", "group", "total", "flipped", "eps_mean", "rmse", "psnr_mean", "frac>0.001",
            "frac>0.01", "frac>0.03", "frac>0.1", "flipped_uint8", "samples_per_s"]
    heads = {"eps_mean": "eps", "psnr_mean": "PSNR", "flipped_uint8": "flipped (8-bit)", "samples_per_s": "samples/s"}
    return markdown_table(view, cols, digits=3, headers=heads)


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


def run_attack(args: argparse.Namespace, attack: str, metric: str, dm) -> tuple:
    """One (attack, metric) cell: (records, AttackMetrics results, is_global_zero)."""
    from callbacks.adv_shards import AdvShardWriter
    from callbacks.attack_metrics import AttackMetrics
    from callbacks.records import RecordCollector
    from lit_attacks.attacks import create_attack

    module = create_attack(attack, metric, pretrained=args.pretrained == "true", weights_dir=args.weights_dir,
                           keep_images=args.save_adv, batch_invariant=args.batch_invariant, **args.params[attack])
    collector, stats = RecordCollector(), AttackMetrics(attack, metric)
    callbacks = [collector, stats]
    if args.save_adv:
        callbacks.append(AdvShardWriter(str(Path(args.out) / "adv" / f"{attack}-{metric}"), prefix=f"{attack}-{metric}"))
    trainer = make_trainer(args, callbacks)
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return collector.records, stats.results, trainer.is_global_zero


def run_transfer(args: argparse.Namespace, targets: List[str], dm_attack, out: Path) -> List[Dict[str, Any]]:
    """Table 3: adversarial shards per source metric, then every target metric scores them."""
    import torch

    from callbacks.adv_shards import AdvShardWriter
    from callbacks.records import RecordCollector
    from datamodules.adversarial import AdvShardDataModule
    from lit_attacks.report import write_csv
    from lit_attacks.transfer import TransferGenerator, TransferScorer, table3_rows

    width = args.flowadv_width or (256 if torch.cuda.is_available() and args.accelerator != "cpu" else 32)
    if width != 256 and not args.quiet:
        print(f"FlowAdv CNN width {width} (the paper uses 256; --flowadv-width 256 for the full model)")
    rows = []
    for source in args.sources:
        gen = TransferGenerator(source, rmse_max=args.rmse_max, flowadv_params={"width": width},
                                pretrained=args.pretrained == "true", weights_dir=args.weights_dir,
                                batch_invariant=args.batch_invariant)
        shard_dir = out / "transfer" / f"adv-{source}"
        collector = RecordCollector()
        trainer = make_trainer(args, [collector, AdvShardWriter(str(shard_dir), prefix=f"adv-{source}")])
        if not args.quiet:
            print(f"[transfer] generating {len(gen.variants)} adversarial variants per sample on {source}")
        trainer.predict(gen, datamodule=dm_attack, return_predictions=False)
        if trainer.is_global_zero:
            write_csv(out / "transfer" / f"source-{source}.csv", collector.records)
        for target in targets:
            if not args.quiet:
                print(f"[transfer] scoring {source} examples with {target}")
            scorer = TransferScorer(target, pretrained=args.pretrained == "true", weights_dir=args.weights_dir)
            coll = RecordCollector()
            make_trainer(args, [coll]).predict(scorer, datamodule=AdvShardDataModule(str(shard_dir), args.batch_size),
                                               return_predictions=False)
            if trainer.is_global_zero:
                write_csv(out / "transfer" / f"{source}-to-{target}.csv", coll.records)
            rows += table3_rows(source, scorer.metric.label, coll.records, gen.variants)
    return rows


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
    from lit_attacks.evaluation import TABLE2_COLUMNS, table1_rows, table2_rows
    from lit_attacks.report import atomic_write, markdown_table, write_csv, write_json

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
    rows, rows2, labels, is_zero = [], [], {}, True
    dm_attack = BappsDataModule(data=args.data, split=args.split, categories=cats, unanimous_only=True,
                                batch_size=args.batch_size, num_workers=args.num_workers, builtin_n=args.builtin_n)
    n_cells, cell = len(metrics) * (1 + len(args.attack_list)), 0
    for metric in metrics:
        cell += 1
        if not args.quiet:
            print(f"[cell {cell}/{n_cells}] table1 {metric} ({time.time() - t0:.0f}s elapsed)")
        records, label, is_zero = score_metric(args, metric, dm)
        if not records:
            fail(f"no samples found in {source['shards']}" + (f" for categories {cats}" if cats else ""))
        labels[metric] = label
        if is_zero:
            write_csv(out / "scores" / f"{metric}.csv", records, ["key", "category", "judge", "s0", "s1"])
        for r in table1_rows(metric, records):
            r["metric"] = label
            rows.append(r)
        for attack in args.attack_list:
            cell += 1
            if not args.quiet:
                print(f"[cell {cell}/{n_cells}] {attack} on {metric} ({time.time() - t0:.0f}s elapsed)")
            t_cell = time.time()
            arecs, results, is_zero = run_attack(args, attack, metric, dm_attack)
            if is_zero:
                write_csv(out / "samples" / f"{attack}-{metric}.csv", arecs, sample_columns(arecs))
                r2 = table2_rows(label, attack, results)
                for r in r2:
                    r["samples_per_s"] = len(arecs) / max(time.time() - t_cell, 1e-9)
                rows2 += r2
    rows3 = run_transfer(args, metrics, dm_attack, out) if args.transfer else []
    if not is_zero:
        return 0
    write_csv(out / "table1.csv", rows, TABLE1_COLUMNS)
    md = markdown_table(rows, TABLE1_COLUMNS)
    atomic_write(out / "table1.md", "# Table 1: 2AFC score (all samples) and accuracy (unanimous samples)\n\n" + md)
    if rows2:
        write_csv(out / "table2.csv", rows2, TABLE2_COLUMNS + ["samples_per_s"])
        md2 = table2_markdown(rows2)
        atomic_write(out / "table2.md", "# Table 2: rank flips on samples where humans were unanimous\n\n" + md2)
    if rows3:
        from lit_attacks.transfer import table3_markdown, variant_names

        write_csv(out / "table3.csv", rows3, ["source", "target", "attack", "eligible", "flipped", "flip_rate"])
        md3 = table3_markdown(rows3, variant_names())
        atomic_write(out / "table3.md", "# Table 3: transfer of adversarial examples (flipped / eligible)\n\n" + md3)
    write_json(out / "summary.json", {"data": source, "metrics": labels, "attacks": args.attack_list,
                                      "params": args.params, "table1": rows, "table2": rows2, "table3": rows3,
                                      "pretrained": args.pretrained == "true", "seconds": time.time() - t0})
    print("\nTable 1 (2AFC over all samples; accuracy over unanimous samples)\n")
    print(md)
    if rows2:
        print("Table 2 (rank flips; agreed = the metric ranked like the humans; RMSE/PSNR over flipped samples)\n")
        print(md2)
    if rows3:
        print(f"Table 3 (transfer; eligible = passed the source flip and RMSE <= {args.rmse_max}, and both the source "
              "and the target ranked like the humans)\n")
        print(md3)
    if args.pretrained != "true":
        print("WARNING: random backbones (--pretrained false): numbers are for testing and timing only.")
    print(f"results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
