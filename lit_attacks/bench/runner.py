"""The cells of a bench run: Table 1 scores, attack cells, PGD sweep points and transfer stages.

Each cell runs one ``trainer.predict`` (DDP when configured), gathers per-sample records so each
sample appears exactly once, and on rank 0 writes its files and then its completion record
(:class:`lit_attacks.bench.cells.CellStore`). A completed cell with the same fingerprint is loaded.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict

from lit_attacks.bench.cells import CellStore, Progress, fingerprint
from lit_attacks.bench.config import ConfigError, sweep_points

SCORE_COLUMNS = ["key", "category", "judge", "s0", "s1"]


def slug(name: str) -> str:
    """A metric name usable in file names and cell ids (``rlpips:runs/x/last.ckpt`` -> ``rlpips_runs_x_last.ckpt``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def metric_file_fingerprint(name: str):
    """sha256 of the file behind a parametrised metric (``rlpips:<checkpoint>``), so a retrained checkpoint
    at the same path invalidates completed cells; None for registry metrics."""
    from datamodules.shards import sha256

    prefix, sep, arg = name.partition(":")
    p = Path(arg).expanduser()
    if not sep or not p.is_file():
        return None
    return sha256(p)[:20]


class Bench:
    """Runs every cell of a resolved config; :meth:`finish` (rank 0) writes tables, plots, README, W&B."""

    def __init__(self, cfg: Dict[str, Any], devices: Dict[str, Any], out: Path, source: Dict[str, Any], dm_all,
                 dm_attack, store: CellStore, quiet: bool = False, is_zero: bool = True) -> None:
        self.cfg, self.devices, self.out, self.source = cfg, devices, out, source
        self.dm_all, self.dm_attack, self.store = dm_all, dm_attack, store
        self.quiet, self.is_zero = quiet, is_zero
        self.progress = Progress(self.count_cells(), quiet=quiet, is_zero=is_zero)
        self.t0 = time.time()
        self.labels: Dict[str, str] = {}
        self.cells: Dict[str, Dict[str, Any]] = {}  # cell id -> payload, in run order
        self.table1: Dict[str, Dict[str, Any]] = {}
        self.attacks: Dict[str, Dict[str, Any]] = {}
        self.sweep: Dict[str, Dict[str, Any]] = {}
        self.transfer: Dict[str, Dict[str, Any]] = {}
        from lit_attacks.bench.wandb_log import WandbRun, resolve_mode

        self.wandb = WandbRun(resolve_mode(cfg["wandb"]), cfg["wandb_project"], cfg["name"], out,
                              dict(cfg), enabled=is_zero)
        self.base = {"data": source.get("index_sha256"), "data_source": str(source.get("data")),
                     "split": cfg["split"], "categories": cfg["categories"], "builtin_n": cfg["builtin_n"],
                     "seed": cfg["seed"], "pretrained": cfg["pretrained"], "weights_dir": cfg["weights_dir"],
                     "batch_invariant": cfg["batch_invariant"]}

    # ---------------------------------------------------------------- plumbing
    def count_cells(self) -> int:
        c = self.cfg
        n = len(c["metrics"]) * (1 + len(c["attacks"]) + len(sweep_points(c["sweep"])))
        if c["transfer"]:
            n += len(c["source"]) * (1 + len(c["metrics"]))
        return n

    def trainer(self, callbacks: list):
        import pytorch_lightning as pl

        return pl.Trainer(**self.devices, logger=False, enable_checkpointing=False, enable_progress_bar=not self.quiet,
                          enable_model_summary=False, callbacks=callbacks, inference_mode=False)

    def cell(self, cell_id: str, what: str, spec: Dict[str, Any], compute) -> Dict[str, Any]:
        """Load the completed cell or compute it (``compute()`` -> payload, files written on rank 0)."""
        fp = fingerprint({"cell": cell_id, **self.base, **spec})
        payload = self.store.load(cell_id, fp)
        self.progress.start(what, resumed=payload is not None)
        if payload is None:
            payload = compute()
            payload["seconds"] = self.progress.finish()
            n = len(payload.get("records", []))
            payload["samples_per_s"] = n / payload["seconds"] if payload["seconds"] > 0 else None
            if self.is_zero:
                self.store.save(cell_id, fp, payload)
        else:
            self.progress.finish()
        self.cells[cell_id] = payload
        return payload

    def preflight(self) -> None:
        """Build every metric once, so missing weights or a bad checkpoint fail before any work
        (:class:`ConfigError`, reported by bench.py in one line)."""
        from lit_attacks.metrics import WeightsNotFoundError, create_metric
        from lit_attacks.robust import CheckpointError

        names = list(self.cfg["metrics"]) + (list(self.cfg["source"]) if self.cfg["transfer"] else [])
        for m in dict.fromkeys(names):
            try:
                self.labels[m] = create_metric(m, pretrained=self.cfg["pretrained"],
                                               weights_dir=self.cfg["weights_dir"]).label
            except WeightsNotFoundError as e:
                raise ConfigError(f"{e}\n(or run with --pretrained false to use random backbones)") from None
            except CheckpointError as e:
                raise ConfigError(str(e)) from None

    # ---------------------------------------------------------------- cells
    def run_all(self) -> None:
        self.preflight()
        for metric in self.cfg["metrics"]:
            mfp = {"metric_file": metric_file_fingerprint(metric)}
            self.table1[metric] = self.cell(f"table1-{slug(metric)}", f"table1 {metric}", mfp, lambda: self.score(metric))
            self.log_table1(metric)
            for attack, params in self.cfg["attacks"].items():
                cid = f"{attack}-{slug(metric)}"
                self.attacks[cid] = self.cell(cid, f"{attack} on {metric}", {"params": params, **mfp},
                                              lambda: self.attack(attack, metric, params, cid))
                self.attacks[cid].update(attack=attack, metric=metric)
                self.log_attack(attack, metric, self.attacks[cid])
            for pt in sweep_points(self.cfg["sweep"]):
                cid = f"sweep-pgd-eps{pt['eps']:.4f}-{slug(metric)}"
                self.sweep[cid] = self.cell(cid, f"sweep pgd eps={pt['eps']:g} on {metric}", {"params": pt, **mfp},
                                            lambda: self.attack("pgd", metric, pt, cid, sweep=True))
                self.sweep[cid].update(metric=metric, **pt)
                self.wandb.log_metrics({f"sweep/{slug(metric)}/eps={pt['eps']:g}/flip_rate":
                                        self.sweep[cid]["results"]["all"]["flip_rate"]})
        if self.cfg["transfer"]:
            self.run_transfer()

    def score(self, metric: str) -> Dict[str, Any]:
        from callbacks.records import RecordCollector
        from lit_attacks.report import write_csv
        from lit_attacks.scoring import ScoreModule

        module = ScoreModule(metric, pretrained=self.cfg["pretrained"], weights_dir=self.cfg["weights_dir"],
                             batch_invariant=self.cfg["batch_invariant"])
        collector = RecordCollector()
        self.trainer([collector]).predict(module, datamodule=self.dm_all, return_predictions=False)
        if not collector.records:
            cats = self.cfg["categories"]
            raise _no_samples(self.source, cats)
        if self.is_zero:
            write_csv(self.out / "scores" / f"{slug(metric)}.csv", collector.records, SCORE_COLUMNS)
        return {"label": module.metric.label, "records": collector.records}

    def attack(self, attack: str, metric: str, params: Dict[str, Any], cid: str, sweep: bool = False) -> Dict[str, Any]:
        from callbacks.adv_shards import AdvShardWriter
        from callbacks.attack_metrics import AttackMetrics
        from callbacks.examples import ExampleCollector
        from callbacks.records import RecordCollector
        from lit_attacks.attacks import create_attack
        from lit_attacks.bench.plots import example_grid
        from lit_attacks.report import write_csv

        save_adv = self.cfg["save_adv"] and not sweep
        module = create_attack(attack, metric, pretrained=self.cfg["pretrained"], weights_dir=self.cfg["weights_dir"],
                               keep_images=not sweep, batch_invariant=self.cfg["batch_invariant"], **params)
        collector, stats = RecordCollector(), AttackMetrics(attack, metric)
        examples = ExampleCollector(self.cfg["examples"])
        callbacks = [collector, stats] + ([] if sweep else [examples])
        if save_adv:
            adv_dir = self.out / "adv" / cid
            if self.is_zero and adv_dir.exists():
                shutil.rmtree(adv_dir)  # shards of an interrupted earlier attempt
            callbacks.append(AdvShardWriter(str(adv_dir), prefix=cid))
        self.trainer(callbacks).predict(module, datamodule=self.dm_attack, return_predictions=False)
        records = collector.records
        if self.is_zero:
            from lit_attacks.attacks import RECORD_COLUMNS

            extra = [k for k in (records[0] if records else {}) if k not in RECORD_COLUMNS]
            name = cid[len("sweep-"):] if sweep else cid
            write_csv(self.out / "samples" / ("sweep" if sweep else "") / f"{name}.csv", records, RECORD_COLUMNS + extra)
            if examples.examples:
                example_grid(examples.examples, f"{attack} on {module.metric.label}",
                             self.out / "plots" / f"examples-{cid}.png")
        return {"label": module.metric.label, "records": records, "results": stats.results}

    def run_transfer(self) -> None:
        import torch

        from callbacks.adv_shards import AdvShardWriter
        from callbacks.records import RecordCollector
        from datamodules.adversarial import AdvShardDataModule
        from lit_attacks.report import write_csv
        from lit_attacks.transfer import TransferGenerator, TransferScorer, table3_rows

        width = self.cfg["flowadv_width"] or (256 if torch.cuda.is_available() and self.devices["accelerator"] != "cpu"
                                              else 32)
        if width != 256:
            self.progress.say(f"FlowAdv CNN width {width} (the paper uses 256; --flowadv-width 256 for the full model)")
        spec = {"width": width, "rmse_max": self.cfg["rmse_max"]}
        for src in self.cfg["source"]:
            shard_dir = self.out / "transfer" / f"adv-{slug(src)}"

            def generate() -> Dict[str, Any]:
                gen = TransferGenerator(src, rmse_max=self.cfg["rmse_max"], flowadv_params={"width": width},
                                        pretrained=self.cfg["pretrained"], weights_dir=self.cfg["weights_dir"],
                                        batch_invariant=self.cfg["batch_invariant"])
                if self.is_zero and shard_dir.exists():
                    shutil.rmtree(shard_dir)
                coll = RecordCollector()
                self.trainer([coll, AdvShardWriter(str(shard_dir), prefix=f"adv-{slug(src)}")]).predict(
                    gen, datamodule=self.dm_attack, return_predictions=False)
                if self.is_zero:
                    write_csv(self.out / "transfer" / f"source-{slug(src)}.csv", coll.records)
                return {"records": coll.records, "variants": gen.variants}

            gen_state = self.cell(f"transfer-gen-{slug(src)}", f"transfer: adversarial variants on {src}", spec, generate)
            for target in self.cfg["metrics"]:
                def score() -> Dict[str, Any]:
                    scorer = TransferScorer(target, pretrained=self.cfg["pretrained"],
                                            weights_dir=self.cfg["weights_dir"])
                    coll = RecordCollector()
                    self.trainer([coll]).predict(scorer, return_predictions=False,
                                                 datamodule=AdvShardDataModule(str(shard_dir), self.cfg["batch_size"]))
                    if self.is_zero:
                        write_csv(self.out / "transfer" / f"{slug(src)}-to-{slug(target)}.csv", coll.records)
                    return {"records": coll.records,
                            "rows": table3_rows(src, scorer.metric.label, coll.records, gen_state["variants"])}

                cid = f"transfer-{slug(src)}-to-{slug(target)}"
                self.transfer[cid] = self.cell(cid, f"transfer: {src} -> {target}", {**spec, "gen": fingerprint(gen_state["records"])},
                                               score)

    # ---------------------------------------------------------------- logging and outputs
    def log_table1(self, metric: str) -> None:
        from lit_attacks.evaluation import table1_rows

        row = table1_rows(metric, self.table1[metric]["records"])[-1]
        m = slug(metric)
        self.wandb.log_metrics({f"table1/{m}/two_afc": row["two_afc"], f"table1/{m}/accuracy": row["accuracy"]})

    def log_attack(self, attack: str, metric: str, payload: Dict[str, Any]) -> None:
        m = slug(metric)
        flat = {f"predict/{attack}/{m}/{g}/{k}": v for g, res in payload["results"].items() for k, v in res.items()}
        if payload.get("samples_per_s"):
            flat[f"predict/{attack}/{m}/samples_per_s"] = payload["samples_per_s"]
        self.wandb.log_metrics(flat)

    def finish(self) -> None:
        from lit_attacks.bench.outputs import write_outputs

        write_outputs(self)


def _no_samples(source: Dict[str, Any], cats) -> Exception:
    from datamodules.tree import BappsDataError

    return BappsDataError(f"no samples found in {source['shards']}" + (f" for categories {cats}" if cats else ""))
