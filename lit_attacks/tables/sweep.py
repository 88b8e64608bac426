"""Robustness curves: the PGD flip rate against the budget epsilon, one line per metric.

Config key ``sweep``: ``{attack: pgd, eps: [...], steps: 30}`` (None: off); flag ``--sweep-eps 0.01,0.02``
(``''`` turns it off). alpha = eps / steps, so eps 0.03 with 30 steps is the official PGD.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, Iterator, List, Optional

from lit_attacks.configuration import ConfigError, check_keys
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.tables import plots
from lit_attacks.tables.base import (TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint,
                                     number_id, slug)
from lit_attacks.attacks.cost import attack_cost
from lit_attacks.tables.attack_rows import attack_cell

COLUMNS = ["metric", "eps", "alpha", "steps", "total", "flipped", "flip_rate", "flipped_uint8", "flip_rate_agreed",
           "rmse_mean", "samples_per_s"]
KEYS = ("attack", "eps", "steps")


def sweep_points(sweep: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """PGD parameters per epsilon. alpha = eps / steps, so eps 0.03 with 30 steps is the official PGD."""
    if not sweep:
        return []
    steps = int(sweep.get("steps", 30))
    return [{"eps": float(e), "alpha": float(e) / steps, "steps": steps} for e in sorted(sweep["eps"])]


@TABLES.register("sweep")
class Sweep(Table):
    """One PGD cell per (metric, epsilon); per-sample rows in ``samples/sweep/pgd-eps<eps>-<metric>.csv``."""

    name = "sweep"
    order = 30
    config = {"sweep": None}
    files = ("sweep.csv", "sweep.md")
    example = {"metrics": ["l2"], "attacks": {}, "sweep": {"eps": [0.01, 0.03], "steps": 3}}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--sweep-eps", help="comma-separated PGD epsilons for robustness curves ('' disables)")

    @classmethod
    def configure(cls, cfg: Dict[str, Any], flags: Dict[str, Any], where: str) -> None:
        if "sweep_eps" not in flags:
            return
        text = flags.pop("sweep_eps")
        try:
            eps = [float(e) for e in text.split(",") if e.strip()]
        except ValueError as e:
            raise ConfigError(f"--sweep-eps {text!r}: {e}") from None
        cfg["sweep"] = {"attack": "pgd", "steps": (cfg["sweep"] or {}).get("steps", 30), "eps": eps} if eps else None

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        sweep = cfg["sweep"]
        if sweep is None:
            return
        if not isinstance(sweep, dict):
            raise ConfigError(f"sweep must be a mapping with attack, eps, steps; got {sweep!r}")
        check_keys(sweep, sorted(KEYS), "sweep: ")
        if sweep.get("attack", "pgd") != "pgd":
            raise ConfigError(f"sweep.attack: only pgd is swept, got {sweep['attack']!r}")
        eps = sweep.get("eps")
        if not isinstance(eps, list) or not eps or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0 for e in eps):
            raise ConfigError(f"sweep.eps must be a non-empty list of positive numbers, each finite; got {eps!r}")
        if not isinstance(sweep.get("steps", 30), int) or sweep.get("steps", 30) < 1:
            raise ConfigError(f"sweep.steps must be an integer >= 1, got {sweep.get('steps')!r}")

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        points = sweep_points(cfg["sweep"])
        return Plan(cells=len(cfg["metrics"]) * len(points),
                    work=len(cfg["metrics"]) * sum(attack_cost("pgd", p) for p in points))

    def cells(self, run: Run) -> Iterator[Cell]:
        for metric in run.cfg["metrics"]:
            mfp = {"metric_file": metric_file_fingerprint(metric)}
            for pt in sweep_points(run.cfg["sweep"]):
                cid = f"sweep-pgd-eps{number_id(pt['eps'], '.4f')}-{slug(metric)}"
                csv = f"samples/sweep/{cid[len('sweep-'):]}.csv"
                compute = partial(self.compute, run, metric, pt, cid, csv)
                yield Cell(cid, f"sweep pgd eps={pt['eps']:g} on {metric}", {"params": pt, **mfp}, compute,
                           info={"metric": metric, **pt}, log=partial(self.scalars, metric, pt["eps"]),
                           work=attack_cost("pgd", pt))

    @staticmethod
    def compute(run: Run, metric: str, pt: Dict[str, Any], cid: str, csv: str, ctx: CellContext) -> Dict[str, Any]:
        return attack_cell(run, ctx, "pgd", metric, pt, cid, csv, examples=False, save_adv=False)

    @staticmethod
    def scalars(metric: str, eps: float, payload: Dict[str, Any]) -> Dict[str, Any]:
        return {f"sweep/{slug(metric)}/eps={eps:g}/flip_rate": payload["results"]["all"]["flip_rate"]}

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        out = []
        for cell, payload in self.done.values():
            res = payload["results"]
            out.append({"metric": payload["label"], "eps": cell.info["eps"], "alpha": cell.info["alpha"],
                        "steps": cell.info["steps"], "total": res["all"]["total"], "flipped": res["all"]["flipped"],
                        "flip_rate": res["all"]["flip_rate"], "flipped_uint8": res["all"]["flipped_uint8"],
                        "flip_rate_agreed": res["agreed"]["flip_rate"],
                        "rmse_mean": res["all"]["rmse_mean"], "samples_per_s": payload.get("samples_per_s")})
        return out

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        title = "PGD epsilon sweep (flip rate over unanimous samples)"
        if not rows:
            return Written(title)
        write_csv(run.out / "sweep.csv", rows, COLUMNS)
        md = markdown_table(rows, COLUMNS, digits=4)
        atomic_write(run.out / "sweep.md", "# PGD epsilon sweep (robustness curves; alpha = eps / steps)\n\n" + md)
        fig = plots.robustness_curves(rows, run.out / "plots" / "robustness.png")
        return Written(title, md, [fig] if fig is not None else [], panels=partial(self.panels, rows))

    @staticmethod
    def panels(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        import wandb

        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        eps = sorted({r["eps"] for r in rows})
        rate = {(r["metric"], r["eps"]): 100 * r["flip_rate"] for r in rows}
        return {"charts/robustness": wandb.plot.line_series(
            xs=eps, ys=[[rate.get((m, e), float("nan")) for e in eps] for m in metrics], keys=metrics,
            title="Rank flips vs PGD epsilon", xname="epsilon")}
