"""The ``reproduce`` check: this run, with the official semantics, against the official per-sample results.

Config keys (paths the user passes; nothing is read from elsewhere): ``official_pgd`` (the official
``results/whitebox_attack/lpipsAlex_pgd.csv``) and ``official_transfer`` (the folder holding the official
``l2/ssim/stlpipsAlex_transferableAdv.csv``). Preset: ``configs/bench/reproduce.yaml``.

It reads the run's own cells: ``samples/pgd-lpips_alex.csv`` (Table 2, PGD with ``counting: official``)
and ``scores/<metric>.csv`` (Table 1 of l2, ssim_official, stlpips_alex), matches samples by key (the
official judge paths and ``<category>_<id>`` names map to ``val/<category>/<id>``), and writes
``reproduce.md`` (agreement of prey, flip and iteration count; distributions of the distance and RMSE
differences; the notebook's Table 3 counts recomputed from the official CSVs and from our clean
distances, beside the published ones), per-sample comparisons in ``reproduce/`` and ``plots/reproduce.png``.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List

from lit_attacks import official as off
from lit_attacks.configuration import ConfigError, Option, defaults
from lit_attacks.datamodules.shards import sha256
from lit_attacks.report import atomic_write, fingerprint
from lit_attacks.tables import plots
from lit_attacks.tables.base import TABLES, Cell, CellContext, Plan, Run, Table, Written, slug

PGD_METRIC = "lpips_alex"
PGD_CELL, PGD_CSV = f"pgd-{PGD_METRIC}", f"samples/pgd-{PGD_METRIC}.csv"


def score_cell(metric: str):
    return f"table1-{slug(metric)}", f"scores/{slug(metric)}.csv"


@TABLES.register("reproduce")
class Reproduce(Table):
    name = "reproduce"
    order = 90
    options = (
        Option("official_pgd", None, help="the official lpipsAlex_pgd.csv, to compare this run's PGD with",
               optional=True),
        Option("official_transfer", None, help="folder of the official l2/ssim/stlpipsAlex_transferableAdv.csv, to "
                                               "compare with", optional=True),
    )
    config = defaults(options)
    files = ("reproduce.md",)
    # official_pgd / official_transfer: results in the official format of a run on BAPPS-named data (the contract
    # test writes them from a first run; see tests/test_table_contract.py)
    example = {"metrics": ["lpips_alex", "l2", "ssim_official", "stlpips_alex"],
               "attacks": {"pgd": {"counting": "official", "steps": 3}}}

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        super().validate(cfg)
        if cfg["official_pgd"]:
            off.read_official_pgd(Path(cfg["official_pgd"]).expanduser())  # one-line error if unreadable
            pgd = cfg["attacks"].get("pgd")
            if PGD_METRIC not in cfg["metrics"] or pgd is None or pgd.get("counting") != "official":
                raise ConfigError("official_pgd: the comparison needs metric lpips_alex and attacks.pgd with "
                                  "counting: official (see configs/bench/reproduce.yaml)")
        if cfg["official_transfer"]:
            off.read_official_transfer(Path(cfg["official_transfer"]).expanduser())
            missing = [m for m in off.TRANSFER_METRICS.values() if m not in cfg["metrics"]]
            if missing:
                raise ConfigError(f"official_transfer: the comparison needs the metrics {missing}")

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        return Plan(cells=1 if cfg["official_pgd"] or cfg["official_transfer"] else 0)

    def inputs(self, run: Run) -> Dict[str, Any]:
        cfg = run.cfg
        files = {}
        if cfg["official_pgd"]:
            files["pgd"] = Path(cfg["official_pgd"]).expanduser()
        if cfg["official_transfer"]:
            for name in off.TRANSFER_METRICS:
                files[name] = Path(cfg["official_transfer"]).expanduser() / f"{name}_transferableAdv.csv"
        ours = [(PGD_CELL, PGD_CSV)] if cfg["official_pgd"] else []
        ours += [score_cell(m) for m in off.TRANSFER_METRICS.values()] if cfg["official_transfer"] else []
        if cfg["official_transfer"]:
            ours += [score_cell(m) for m in cfg["metrics"][:1]]  # judges of every sample
        return {"files": files, "ours": list(dict.fromkeys(ours))}

    def cells(self, run: Run) -> Iterator[Cell]:
        inp = self.inputs(run)
        spec = {"official": {k: sha256(p)[:20] for k, p in inp["files"].items()},
                "ours": {rel: fingerprint(run.rows(cid, rel)) for cid, rel in inp["ours"]}}
        yield Cell("reproduce", "reproduce: comparison with the official results", spec,
                   partial(self.compute, run, inp))

    def compute(self, run: Run, inp: Dict[str, Any], ctx: CellContext) -> Dict[str, Any]:
        payload: Dict[str, Any] = {}
        if "pgd" in inp["files"]:
            rows, summary = off.compare_pgd(run.rows(PGD_CELL, PGD_CSV), off.read_official_pgd(inp["files"]["pgd"]))
            ctx.save_rows(f"reproduce/pgd-{PGD_METRIC}.csv", rows, list(rows[0]) if rows else ["key"])
            payload["pgd"] = summary
        if any(k in inp["files"] for k in off.TRANSFER_METRICS):
            official = off.read_official_transfer(Path(inp["files"]["l2"]).parent)
            judge_cell, judge_csv = score_cell(run.cfg["metrics"][0])
            judges = {r["key"]: r["judge"] for r in run.rows(judge_cell, judge_csv)}
            payload["transfer"] = {}
            for name, metric in off.TRANSFER_METRICS.items():
                cid, rel = score_cell(metric)
                ours = run.rows(cid, rel)
                rows, summary = off.compare_scores(ours, official[name])
                ctx.save_rows(f"reproduce/transfer-{name}.csv", rows, list(rows[0]) if rows else ["key"])
                mine = {r["key"]: (r["s0"], r["s1"]) for r in ours}
                summary["counts_official_csv"] = off.notebook_counts(official[name], judges)
                summary["counts_our_clean"] = (off.notebook_counts(official[name], judges, mine)
                                               if all(k in mine for k in official[name]) else None)
                summary["counts_published"] = off.PUBLISHED_COUNTS[name]
                payload["transfer"][name] = summary
        return payload

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        out = []
        for _, payload in self.done.values():
            if "pgd" in payload:
                s = payload["pgd"]
                out.append({"check": f"PGD on {PGD_METRIC}", "matched": s["matched"], "missing": s["missing"],
                            "agreement": s["all_agree"], "d_max_diff": max(s["d0"]["max"], s["d1"]["max"])})
            for name, s in payload.get("transfer", {}).items():
                out.append({"check": f"clean {off.TRANSFER_METRICS[name]} vs official {name}", "matched": s["matched"],
                            "missing": s["missing"], "agreement": s["rank_agreement"],
                            "d_max_diff": max(s["d0"]["max"], s["d1"]["max"])})
        return out

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        title = "Reproduction check (this run with official semantics vs the official per-sample results)"
        if not self.done:
            return Written(title)
        payload = next(iter(self.done.values()))[1]
        text = report(payload)
        atomic_write(run.out / "reproduce.md", "# Reproduction of the official results\n\n" + text)
        return Written(title, text, self.figures(run))

    @staticmethod
    def figures(run: Run) -> List:
        diffs = {}
        if (run.out / "reproduce" / f"pgd-{PGD_METRIC}.csv").is_file():
            r = run.rows("reproduce", f"reproduce/pgd-{PGD_METRIC}.csv")
            diffs[f"PGD {PGD_METRIC}: d0, d1"] = [a["d0"] - a["d0_official"] for a in r] + \
                                                 [a["d1"] - a["d1_official"] for a in r]
        for name, metric in off.TRANSFER_METRICS.items():
            if (run.out / "reproduce" / f"transfer-{name}.csv").is_file():
                r = run.rows("reproduce", f"reproduce/transfer-{name}.csv")
                diffs[f"{metric} vs {name}: d0, d1"] = [a["d0"] - a["d0_official"] for a in r] + \
                                                       [a["d1"] - a["d1_official"] for a in r]
        fig = plots.difference_histograms(diffs, run.out / "plots" / "reproduce.png")
        return [fig] if fig is not None else []


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _spread(s: Dict[str, float]) -> str:
    return f"median {s['median']:.2e}, 95th pct {s['p95']:.2e}, max {s['max']:.2e}"


def report(payload: Dict[str, Any]) -> str:
    """The Markdown report of one comparison payload."""
    lines: List[str] = []
    if "pgd" in payload:
        s = payload["pgd"]
        lines += [f"## PGD on {PGD_METRIC} (eps 0.03, alpha 0.001, 30 steps, official counting)", "",
                  f"Matched {s['matched']} of the {s['official_samples']} official samples ({s['missing']} missing "
                  f"from this run's data; this run attacked {s['our_samples']}).", "",
                  "| quantity | agreement |", "|---|---|",
                  f"| prey (official `orig_h`) | {_pct(s['prey_agreement'])} |",
                  f"| flipped (official `new_h != orig_h`) | {_pct(s['flip_agreement'])} |",
                  f"| iterations (official `i`) | {_pct(s['iteration_agreement'])} |",
                  f"| all three | {_pct(s['all_agree'])} |",
                  f"| d0 and d1 equal after rounding to 3 decimals | {_pct(s['d_rounded_equal'])} |", "",
                  f"Flipped: {s['flipped']} here, {s['flipped_official']} official. "
                  f"|d0 - d0_official|: {_spread(s['d0'])}; |d1 - d1_official|: {_spread(s['d1'])}; "
                  f"|RMSE - RMSE_official| (uint8-truncated images; official rounded to 3 decimals): "
                  f"{_spread(s['rmse'])}.", ""]
        if s["disagreeing"]:
            shown = ", ".join(s["disagreeing"][:20])
            lines += [f"Samples that disagree ({len(s['disagreeing'])}): {shown}"
                      + (" ..." if len(s["disagreeing"]) > 20 else "") + f" (all in reproduce/pgd-{PGD_METRIC}.csv)",
                      ""]
    if payload.get("transfer"):
        lines += ["## Clean distances and Table 3 counts of the transfer benchmark", "",
                  "| official metric | ours | matched | missing | rank agreement | abs(d - d_official) |",
                  "|---|---|---|---|---|---|"]
        for name, s in payload["transfer"].items():
            d = {k: max(s["d0"][k], s["d1"][k]) for k in ("median", "p95", "max")}
            lines.append(f"| {name} | {off.TRANSFER_METRICS[name]} | {s['matched']} | {s['missing']} | "
                         f"{_pct(s['rank_agreement'])} | {_spread(d)} |")
        lines += ["", "The notebook's counts (accurate / flipped under " + ", ".join(off.NOTEBOOK_COLUMNS) + "):", "",
                  "| metric | published | from the official CSVs | with our clean distances |", "|---|---|---|---|"]
        for name, s in payload["transfer"].items():
            pub = s["counts_published"]
            fmt = lambda c: "-" if c is None else f"{c['accurate']} / " + ", ".join(  # noqa: E731
                str(c["flipped"][v]) for v in off.NOTEBOOK_COLUMNS)
            lines.append(f"| {name} | {pub[0]} / {', '.join(map(str, pub[1]))} | {fmt(s['counts_official_csv'])} | "
                         f"{fmt(s['counts_our_clean'])} |")
        lines += ["", "(\"-\": some samples of the official CSV are not in this run's data, so the counts would "
                      "not be the notebook's.)", ""]
        for name, s in payload["transfer"].items():
            if s["disagreeing"]:
                lines.append(f"{name}: samples ranked differently ({len(s['disagreeing'])}): "
                             + ", ".join(s["disagreeing"][:20]) + (" ..." if len(s["disagreeing"]) > 20 else ""))
    return "\n".join(lines) + "\n"
