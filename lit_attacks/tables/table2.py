"""Table 2: rank flips of each attack on each metric, over the unanimous samples, split by agreement with humans.

Config key ``attacks``: attack name -> parameters (or a list of names). Flags: ``--attacks a,b`` (keeps
the config's parameters of the chosen attacks; ``''`` for none) and ``--param ATTACK.KEY=VALUE``.
"""
from __future__ import annotations

import inspect
import shutil
from functools import partial
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from lit_attacks.attacks import ATTACKS, create_attack
from lit_attacks.attacks.output import FRACTION_COLUMNS
from lit_attacks.callbacks.adv_shards import AdvShardWriter
from lit_attacks.callbacks.attack_metrics import AttackMetrics
from lit_attacks.callbacks.examples import ExampleCollector
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.configuration import ConfigError, as_name_list, suggest
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.tables import plots
from lit_attacks.tables.base import TABLES, Cell, CellContext, Run, Table, metric_file_fingerprint, slug
from lit_attacks.wandb_utils import finite, wandb_table

COLUMNS = ["metric", "attack", "group", "total", "flipped", "flip_rate", "flipped_uint8", "failed", "eps_mean",
           "rmse_mean", "rmse_std", "psnr_mean", "queries_mean", "iterations_mean"] + FRACTION_COLUMNS
RESERVED = {"metric", "pretrained", "weights_dir", "keep_images", "batch_invariant"}  # set by the bench, not by users


def attack_cell(run: Run, ctx: CellContext, attack: str, metric: str, params: Dict[str, Any], cid: str, csv: str,
                examples: bool = True, save_adv: bool = False) -> Dict[str, Any]:
    """Run ``attack`` on ``metric`` over the unanimous samples: per-sample rows in ``csv``, flip statistics,
    an example grid (``plots/examples-<cid>.png``) and optionally the adversarial images as shards
    (``adv/<cid>/``). Returns the payload {label, results}."""
    cfg = run.cfg
    module = create_attack(attack, metric, keep_images=examples or save_adv, batch_invariant=cfg["batch_invariant"],
                           **run.metric_options(), **params)
    rows, stats = SampleRows(), AttackMetrics()
    grid = ExampleCollector(cfg["examples"])
    callbacks = [rows, stats] + ([grid] if examples else [])
    if save_adv:
        adv_dir = run.out / "adv" / cid
        if run.is_zero and adv_dir.exists():
            shutil.rmtree(adv_dir)  # shards of an interrupted earlier attempt
        callbacks.append(AdvShardWriter(str(adv_dir), prefix=cid))
    run.predict(module, callbacks, run.datamodule(unanimous_only=True))
    ctx.save_rows(csv, rows.rows, rows.columns)
    if save_adv:
        ctx.track(f"adv/{cid}")
    if run.is_zero and grid.examples:
        title = f"{attack} on {module.metric.label}"
        plots.example_grid(grid.examples, title, run.out / "plots" / f"examples-{cid}.png")
        ctx.track(f"plots/examples-{cid}.png")
    return {"label": module.metric.label, "results": stats.results}


def parse_param(item: str) -> Tuple[str, str, Any]:
    """``"pgd.steps=40"`` -> ("pgd", "steps", 40); the value is parsed as YAML."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--param {item!r}: expected ATTACK.KEY=VALUE, e.g. pgd.steps=40")
    lhs, value = item.split("=", 1)
    attack, key = lhs.split(".", 1)
    return attack, key, yaml.safe_load(value)


def as_attacks(value: Any, where: str) -> Dict[str, Dict[str, Any]]:
    """``attacks`` as a mapping attack -> parameters (a list or comma-separated string of names is accepted)."""
    if value is None:
        return {}
    if isinstance(value, (str, list, tuple)):
        return {a: {} for a in as_name_list("attacks", value, where)}
    if isinstance(value, dict):
        out = {}
        for a, kw in value.items():
            if kw is not None and not isinstance(kw, dict):
                raise ConfigError(f"{where}: attacks.{a} must be a mapping of parameters, got {kw!r}")
            out[str(a)] = dict(kw or {})
        return out
    raise ConfigError(f"{where}: attacks must be a mapping (attack -> parameters) or a list, got {value!r}")


def attack_parameters(attack: str) -> set:
    return set(inspect.signature(ATTACKS.get(attack)).parameters) - RESERVED


def validate_attack(attack: str, kw: Dict[str, Any]) -> None:
    """Known attack, known parameters, valid values (the attack is built once against l2)."""
    try:
        ATTACKS.get(attack)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    allowed = attack_parameters(attack)
    for key in kw:
        if key not in allowed:
            raise ConfigError(f"attack {attack} has no parameter {key!r}{suggest(key, allowed)}; "
                              f"known: {', '.join(sorted(allowed))}")
    try:  # bad values (eps <= 0, steps < 1, wrong types, ...) fail now, not after hours
        ATTACKS.get(attack)(metric="l2", **kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"parameters of {attack}: {e}") from None


@TABLES.register("table2")
class Table2(Table):
    """Every configured attack on every metric; per-sample rows in ``samples/<attack>-<metric>.csv``."""

    name = "table2"
    order = 20
    config = {"attacks": {"fgsm": {}, "pgd": {}}}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--attacks", help=f"comma-separated attacks ({', '.join(ATTACKS.names())}; '' for none); "
                                              "the config's parameters of these attacks are kept")
        parser.add_argument("--param", action="append", metavar="ATTACK.KEY=VALUE",
                            help="attack parameter (repeatable)")

    @classmethod
    def normalise(cls, cfg: Dict[str, Any], where: str) -> None:
        cfg["attacks"] = as_attacks(cfg["attacks"], where)

    @classmethod
    def apply_flags(cls, cfg: Dict[str, Any], flags: Dict[str, Any]) -> None:
        if "attacks" in flags:
            chosen = as_name_list("attacks", flags.pop("attacks"), "--attacks") or []
            cfg["attacks"] = {a: cfg["attacks"].get(a, {}) for a in chosen}
        for item in flags.pop("param", []):
            attack, key, value = parse_param(item)
            if attack not in cfg["attacks"]:
                raise ConfigError(f"--param {item!r}: attack {attack!r} is not among --attacks "
                                  f"({','.join(cfg['attacks']) or 'none'})")
            cfg["attacks"][attack][key] = value

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        for attack, kw in cfg["attacks"].items():
            validate_attack(attack, kw)

    @classmethod
    def enabled(cls, cfg: Dict[str, Any]) -> bool:
        return bool(cfg["attacks"])

    @classmethod
    def count(cls, cfg: Dict[str, Any]) -> int:
        return len(cfg["metrics"]) * len(cfg["attacks"])

    def cells(self, run: Run) -> Iterator[Cell]:
        for metric in run.cfg["metrics"]:
            mfp = {"metric_file": metric_file_fingerprint(metric)}
            for attack, params in run.cfg["attacks"].items():
                cid = f"{attack}-{slug(metric)}"
                compute = partial(self.compute, run, attack, metric, params, cid)
                yield Cell(cid, f"{attack} on {metric}", {"params": params, **mfp}, compute,
                           info={"attack": attack, "metric": metric, "csv": f"samples/{cid}.csv"})

    def compute(self, run: Run, attack: str, metric: str, params: Dict[str, Any], cid: str,
                ctx: CellContext) -> Dict[str, Any]:
        return attack_cell(run, ctx, attack, metric, params, cid, f"samples/{cid}.csv", examples=True,
                           save_adv=run.cfg["save_adv"])

    def log_cell(self, run: Run, cell: Cell, payload: Dict[str, Any]) -> Dict[str, Any]:
        prefix = f"predict/{cell.info['attack']}/{slug(cell.info['metric'])}"
        flat = {f"{prefix}/{g}/{k}": v for g, res in payload["results"].items() for k, v in res.items()}
        if payload.get("samples_per_s"):
            flat[f"{prefix}/samples_per_s"] = payload["samples_per_s"]
        return flat

    def rows(self, run: Run) -> List[Dict[str, Any]]:
        return [{"metric": payload["label"], "attack": cell.info["attack"], "group": g, **payload["results"][g],
                 "samples_per_s": payload.get("samples_per_s")}
                for cell, payload in self.done.values() for g in ("agreed", "disagreed", "tied", "all")]

    def samples(self, run: Run) -> Dict[str, List[Dict[str, Any]]]:
        return {cid: run.rows(cid, cell.info["csv"]) for cid, (cell, _) in self.done.items()}

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Optional[str]:
        if not rows:
            return None
        write_csv(run.out / "table2.csv", rows, COLUMNS + ["samples_per_s"])
        md = table2_markdown(rows)
        atomic_write(run.out / "table2.md", "# Table 2: rank flips on samples where humans were unanimous\n\n" + md)
        return md

    def console_title(self, cfg: Dict[str, Any]) -> str:
        return "Table 2 (rank flips; agreed = the metric ranked like the humans; RMSE/PSNR over flipped)"

    def figures(self, run: Run, rows: List[Dict[str, Any]]) -> List:
        figs = [plots.flip_rate_bars(rows, run.out / "plots" / "flip_rates.png"),
                plots.rmse_histograms(self.samples(run), run.out / "plots" / "rmse_hist.png")]
        grids = [run.out / "plots" / f"examples-{cid}.png" for cid in self.done]
        return [f for f in figs if f is not None] + sorted(p for p in grids if p.is_file())

    def wandb_panels(self, run: Run, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        import wandb

        panels: Dict[str, Any] = {}
        samples = self.samples(run)
        for cid, recs in samples.items():
            if recs:
                panels[f"samples/{cid}"] = wandb_table(recs)
        bars = [[f"{r['attack']} / {r['metric']}", 100 * r["flip_rate"]] for r in rows
                if r["group"] == "all" and finite(r["flip_rate"])]
        if bars:
            t = wandb.Table(columns=["attack / metric", "flip rate (%)"], data=bars)
            panels["charts/flip_rate"] = wandb.plot.bar(t, "attack / metric", "flip rate (%)",
                                                        title="Rank flips (% of unanimous samples)")
        for cid, recs in samples.items():
            vals = [float(r["rmse"]) for r in recs if r.get("flipped") is True]
            if vals:
                panels[f"charts/rmse/{cid}"] = wandb.Histogram(vals)
        return panels

    def wandb_summary(self, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {f"flip_rate/{r['attack']}/{r['metric']}": r["flip_rate"] for r in rows if r["group"] == "all"}


def table2_markdown(rows: List[Dict[str, Any]]) -> str:
    view = []
    for r in rows:
        v = dict(r)
        v["flipped"] = f"{r['flipped']} ({100 * r['flip_rate']:.1f}%)" if r["total"] else "0"
        v["rmse"] = f"{r['rmse_mean']:.3f} +- {r['rmse_std']:.3f}" if r["flipped"] else "-"
        view.append(v)
    cols = ["metric", "attack", "group", "total", "flipped", "eps_mean", "rmse", "psnr_mean", "frac>0.001",
            "frac>0.01", "frac>0.03", "frac>0.1", "flipped_uint8", "failed", "samples_per_s"]
    heads = {"eps_mean": "eps", "psnr_mean": "PSNR", "flipped_uint8": "flipped (8-bit)", "samples_per_s": "samples/s"}
    return markdown_table(view, cols, digits=3, headers=heads)
