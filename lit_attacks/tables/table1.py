"""Table 1: the 2AFC score (all samples) and the accuracy (unanimous samples) of every metric; and, from the same
scores, Table 4: the metrics' confidence, the mean |s0 - s1| per distortion group.

Table 4 as we read the paper (no released script or notebook computes it): per metric and BAPPS distortion group
(category), the mean absolute difference of the two distances over the unanimous samples (the paper's sample set),
``mean_abs_diff``; ``mean_abs_diff_all`` is the same over every sample, for reference. Each metric's distances are
on its own scale, so the numbers compare groups within a metric, not metrics.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, Iterator, List

from lit_attacks.attacks.cost import SCORE
from lit_attacks.callbacks.aggregates import TwoAFCScores
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.datamodules.bapps import is_unanimous
from lit_attacks.datamodules.tree import BappsDataError
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.tasks import create_task
from lit_attacks.tables.base import TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint, slug

COLUMNS = ["metric", "category", "samples", "unanimous", "two_afc", "accuracy"]
TABLE4_COLUMNS = ["metric", "category", "unanimous", "mean_abs_diff", "samples", "mean_abs_diff_all"]


def table4_rows(label: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Table 4's rows of one metric from its per-sample scores (key, category, judge, s0, s1): one per category
    (sorted), then "all"."""
    def mean(xs: List[float]) -> float:
        return sum(xs) / len(xs) if xs else math.nan

    out = []
    for cat in sorted({r["category"] for r in rows}) + ["all"]:
        group = [r for r in rows if cat == "all" or r["category"] == cat]
        unanimous = [r for r in group if is_unanimous(r["judge"])]
        out.append({"metric": label, "category": cat, "unanimous": len(unanimous),
                    "mean_abs_diff": mean([abs(r["s0"] - r["s1"]) for r in unanimous]), "samples": len(group),
                    "mean_abs_diff_all": mean([abs(r["s0"] - r["s1"]) for r in group])})
    return out


@TABLES.register("table1")
class Table1(Table):
    """Scores every sample with every metric (``scores/<metric>.csv``: key, category, judge, s0, s1)."""

    name = "table1"
    order = 10
    files = ("table1.csv", "table1.md", "table4.csv", "table4.md")
    example = {"metrics": ["l2", "ssim"], "attacks": {}}

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        return Plan(cells=len(cfg["metrics"]), work=SCORE * len(cfg["metrics"]))

    def cells(self, run: Run) -> Iterator[Cell]:
        for metric in run.cfg["metrics"]:
            cid = f"table1-{slug(metric)}"
            yield Cell(cid, f"table1 {metric}", {"metric_file": metric_file_fingerprint(metric)},
                       partial(self.score, run, metric), info={"metric": metric}, log=partial(self.scalars, metric),
                       work=SCORE)

    @staticmethod
    def csv(metric: str) -> str:
        return f"scores/{slug(metric)}.csv"

    def score(self, run: Run, metric: str, ctx: CellContext) -> Dict[str, Any]:
        module = create_task("score", metric=metric, batch_invariant=run.cfg["batch_invariant"], **run.metric_options())
        rows, scores = SampleRows(), TwoAFCScores()
        run.predict(module, [rows, scores], run.datamodule(unanimous_only=False))
        if not rows.rows:
            cats = run.cfg["categories"]
            where = f" for categories {cats}" if cats else ""
            raise BappsDataError(f"no samples found in {run.source['shards']}{where}")
        ctx.save_rows(self.csv(metric), rows.rows, rows.columns)
        return {"label": module.metric.label, "results": scores.results}

    @staticmethod
    def scalars(metric: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        res, m = payload["results"]["all"], slug(metric)
        return {f"table1/{m}/two_afc": res["two_afc"], f"table1/{m}/accuracy": res["accuracy"]}

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        """Per metric, one row per category (sorted) and one over all samples (``category`` "all")."""
        return [{"metric": payload["label"], "category": category, **res} for _, payload in self.done.values()
                for category, res in payload["results"].items()]

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        write_csv(run.out / "table1.csv", rows, COLUMNS)
        md = markdown_table(rows, COLUMNS)
        atomic_write(run.out / "table1.md", "# Table 1: 2AFC score (all samples) and accuracy (unanimous samples)\n\n"
                     + md)
        t4 = [r for cell, payload in self.done.values()
              for r in table4_rows(payload["label"], run.rows(cell.id, self.csv(cell.info["metric"])))]
        write_csv(run.out / "table4.csv", t4, TABLE4_COLUMNS)
        atomic_write(run.out / "table4.md", "# Table 4: mean |s0 - s1| per distortion group (unanimous samples; "
                     "mean_abs_diff_all: every sample)\n\nEach metric on its own scale: compare groups within a "
                     "metric.\n\n" + markdown_table(t4, TABLE4_COLUMNS, digits=4))
        return Written("Table 1 (2AFC over all samples; accuracy over unanimous samples)", md)
