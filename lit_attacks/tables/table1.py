"""Table 1: the 2AFC score (all samples) and the accuracy (unanimous samples) of every metric."""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Dict, Iterable, Iterator, List, Sequence

import numpy as np

from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.datamodules.tree import BappsDataError
from lit_attacks.evaluation import two_afc
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.scoring import ScoreModule
from lit_attacks.tables.base import TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint, slug

COLUMNS = ["metric", "category", "samples", "unanimous", "two_afc", "accuracy"]


def table1_rows(metric: str, records: Sequence[Dict], categories_order: Iterable[str] = ()) -> List[Dict]:
    """Rows (metric, category, samples, unanimous, two_afc, accuracy) per category plus ``all``.

    ``two_afc`` averages over all samples; ``accuracy`` is the same per-sample score over the
    unanimous samples (judge 0 or 1), i.e. the fraction the metric ranks like the humans (ties 1/2).
    """
    by_cat: Dict[str, List[Dict]] = OrderedDict((c, []) for c in categories_order)
    for r in records:
        by_cat.setdefault(r["category"], []).append(r)
    rows = []
    groups = [(c, rs) for c, rs in by_cat.items() if rs] + [("all", list(records))]
    for cat, rs in groups:
        s0 = np.array([r["s0"] for r in rs])
        s1 = np.array([r["s1"] for r in rs])
        p = np.array([r["judge"] for r in rs])
        score = two_afc(s0, s1, p)
        unan = (p == 0) | (p == 1)
        rows.append({"metric": metric, "category": cat, "samples": len(rs), "unanimous": int(unan.sum()),
                     "two_afc": float(score.mean()) if len(rs) else float("nan"),
                     "accuracy": float(score[unan].mean()) if unan.any() else float("nan")})
    return rows


@TABLES.register("table1")
class Table1(Table):
    """Scores every sample with every metric (``scores/<metric>.csv``: key, category, judge, s0, s1)."""

    name = "table1"
    order = 10
    files = ("table1.csv", "table1.md")
    example = {"metrics": ["l2", "ssim"], "attacks": {}}

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        return Plan(cells=len(cfg["metrics"]))

    def cells(self, run: Run) -> Iterator[Cell]:
        for metric in run.cfg["metrics"]:
            cid = f"table1-{slug(metric)}"
            yield Cell(cid, f"table1 {metric}", {"metric_file": metric_file_fingerprint(metric)},
                       partial(self.score, run, metric), info={"metric": metric},
                       log=partial(self.scalars, run, cid, metric))

    @staticmethod
    def csv(metric: str) -> str:
        return f"scores/{slug(metric)}.csv"

    def score(self, run: Run, metric: str, ctx: CellContext) -> Dict[str, Any]:
        module = ScoreModule(metric, batch_invariant=run.cfg["batch_invariant"], **run.metric_options())
        rows = SampleRows()
        run.predict(module, [rows], run.datamodule(unanimous_only=False))
        if not rows.rows:
            cats = run.cfg["categories"]
            where = f" for categories {cats}" if cats else ""
            raise BappsDataError(f"no samples found in {run.source['shards']}{where}")
        ctx.save_rows(self.csv(metric), rows.rows, rows.columns)
        return {"label": module.metric.label}

    def metric_rows(self, run: Run, cell_id: str, metric: str) -> List[Dict[str, Any]]:
        return table1_rows(metric, run.rows(cell_id, self.csv(metric)))

    def scalars(self, run: Run, cell_id: str, metric: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        row = self.metric_rows(run, cell_id, metric)[-1]
        m = slug(metric)
        return {f"table1/{m}/two_afc": row["two_afc"], f"table1/{m}/accuracy": row["accuracy"]}

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        return [{**r, "metric": payload["label"]} for cell, payload in self.done.values()
                for r in self.metric_rows(run, cell.id, cell.info["metric"])]

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        write_csv(run.out / "table1.csv", rows, COLUMNS)
        md = markdown_table(rows, COLUMNS)
        atomic_write(run.out / "table1.md", "# Table 1: 2AFC score (all samples) and accuracy (unanimous samples)\n\n"
                     + md)
        return Written("Table 1 (2AFC over all samples; accuracy over unanimous samples)", md)
