"""Table 1: the 2AFC score (all samples) and the accuracy (unanimous samples) of every metric."""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Iterator, List

from lit_attacks.attacks.cost import SCORE
from lit_attacks.callbacks.aggregates import TwoAFCScores
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.datamodules.tree import BappsDataError
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.tasks import create_task
from lit_attacks.tables.base import TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint, slug

COLUMNS = ["metric", "category", "samples", "unanimous", "two_afc", "accuracy"]


@TABLES.register("table1")
class Table1(Table):
    """Scores every sample with every metric (``scores/<metric>.csv``: key, category, judge, s0, s1)."""

    name = "table1"
    order = 10
    files = ("table1.csv", "table1.md")
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
        return Written("Table 1 (2AFC over all samples; accuracy over unanimous samples)", md)
