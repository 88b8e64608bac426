"""End of a bench run (rank 0): tables, plots, summary.json, the run README and the W&B run."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

TABLE1_COLUMNS = ["metric", "category", "samples", "unanimous", "two_afc", "accuracy"]
SWEEP_COLUMNS = ["metric", "eps", "alpha", "steps", "total", "flipped", "flip_rate", "flip_rate_agreed",
                 "rmse_mean", "samples_per_s"]
TABLE3_COLUMNS = ["source", "target", "attack", "eligible", "flipped", "flip_rate"]


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


def collect_rows(bench) -> Dict[str, List[Dict[str, Any]]]:
    """table1, table2, sweep and table3 rows from the cells' payloads."""
    from lit_attacks.evaluation import table1_rows, table2_rows

    labels = {m: bench.table1[m]["label"] for m in bench.table1}
    rows1 = []
    for m, payload in bench.table1.items():
        for r in table1_rows(m, payload["records"]):
            rows1.append({**r, "metric": labels[m]})
    rows2 = []
    for payload in bench.attacks.values():
        for r in table2_rows(payload["label"], payload["attack"], payload["results"]):
            rows2.append({**r, "samples_per_s": payload.get("samples_per_s")})
    sweep = []
    for payload in bench.sweep.values():
        res = payload["results"]
        sweep.append({"metric": payload["label"], "eps": payload["eps"], "alpha": payload["alpha"],
                      "steps": payload["steps"],
                      "total": res["all"]["total"], "flipped": res["all"]["flipped"],
                      "flip_rate": res["all"]["flip_rate"], "flip_rate_agreed": res["agreed"]["flip_rate"],
                      "rmse_mean": res["all"]["rmse_mean"], "samples_per_s": payload.get("samples_per_s")})
    rows3 = [r for payload in bench.transfer.values() for r in payload["rows"]]
    return {"table1": rows1, "table2": rows2, "sweep": sweep, "table3": rows3}


def write_outputs(bench) -> None:
    from lit_attacks.bench import plots
    from lit_attacks.bench.run_readme import command_line, render
    from lit_attacks.metrics.weights import USED
    from lit_attacks.report import atomic_write, markdown_table, write_csv, write_json
    from lit_attacks.transfer import table3_markdown, variant_names

    out, cfg = bench.out, bench.cfg
    rows = collect_rows(bench)
    md: Dict[str, str] = {}
    write_csv(out / "table1.csv", rows["table1"], TABLE1_COLUMNS)
    md["table1"] = markdown_table(rows["table1"], TABLE1_COLUMNS)
    atomic_write(out / "table1.md", "# Table 1: 2AFC score (all samples) and accuracy (unanimous samples)\n\n"
                 + md["table1"])
    if rows["table2"]:
        from lit_attacks.evaluation import TABLE2_COLUMNS

        write_csv(out / "table2.csv", rows["table2"], TABLE2_COLUMNS + ["samples_per_s"])
        md["table2"] = table2_markdown(rows["table2"])
        atomic_write(out / "table2.md", "# Table 2: rank flips on samples where humans were unanimous\n\n" + md["table2"])
    if rows["sweep"]:
        write_csv(out / "sweep.csv", rows["sweep"], SWEEP_COLUMNS)
        md["sweep"] = markdown_table(rows["sweep"], SWEEP_COLUMNS, digits=4)
        atomic_write(out / "sweep.md", "# PGD epsilon sweep (robustness curves; alpha = eps / steps)\n\n" + md["sweep"])
    if rows["table3"]:
        write_csv(out / "table3.csv", rows["table3"], TABLE3_COLUMNS)
        md["table3"] = table3_markdown(rows["table3"], variant_names())
        atomic_write(out / "table3.md", "# Table 3: transfer of adversarial examples (flipped / eligible)\n\n"
                     + md["table3"])

    figs = [plots.flip_rate_bars(rows["table2"], out / "plots" / "flip_rates.png"),
            plots.rmse_histograms({cid: p["records"] for cid, p in bench.attacks.items()},
                                  out / "plots" / "rmse_hist.png"),
            plots.robustness_curves(rows["sweep"], out / "plots" / "robustness.png")]
    figs = [f for f in figs if f is not None]
    figs += sorted(p for p in (out / "plots").glob("examples-*.png") if p.stem[len("examples-"):] in bench.attacks)

    seconds = time.time() - bench.t0
    weights = {m: USED[m] for m in bench.labels if m in USED and cfg["pretrained"]}
    write_json(out / "summary.json", {"config": cfg, "data": bench.source, "devices": bench.devices,
                                      "metrics": bench.labels, "weights": weights, "seconds": seconds,
                                      "cells": _cell_times(bench), **rows})
    bench.wandb.log_final({k: v for k, v in rows.items()},
                          {cid: p["records"] for cid, p in bench.attacks.items()}, rows["table2"], rows["sweep"], figs)
    wandb_dir = bench.wandb.finish()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "wandb" not in p.parts
                   and "cells" not in p.parts and not p.name.startswith("."))
    dev = f"{bench.devices['devices']} x {bench.devices['accelerator']} ({bench.devices['strategy']})"
    atomic_write(out / "README.md", render(cfg, command_line(), bench.source, bench.labels, weights, files, seconds,
                                           dev, wandb_dir))
    report(bench, md, wandb_dir, seconds)


def _cell_times(bench) -> Dict[str, Any]:
    return {cid: {"seconds": p.get("seconds"), "samples_per_s": p.get("samples_per_s")} for cid, p in bench.cells.items()}


def report(bench, md: Dict[str, str], wandb_dir, seconds: float) -> None:
    if bench.quiet:
        print(f"results in {bench.out}/")
        return
    titles = {"table1": "Table 1 (2AFC over all samples; accuracy over unanimous samples)",
              "table2": "Table 2 (rank flips; agreed = the metric ranked like the humans; RMSE/PSNR over flipped)",
              "sweep": "PGD epsilon sweep (flip rate over unanimous samples)",
              "table3": f"Table 3 (transfer; eligible = passed the source flip with RMSE <= {bench.cfg['rmse_max']} "
                        "and both metrics ranked like the humans)"}
    for key, title in titles.items():
        if key in md:
            print(f"\n{title}\n\n{md[key]}")
    if not bench.cfg["pretrained"]:
        print("WARNING: random backbones (--pretrained false): numbers are for testing and timing only.")
    if wandb_dir:
        print(f"W&B offline run in {wandb_dir}; upload with: wandb sync {wandb_dir}")
    print(f"results in {bench.out}/ ({seconds:.1f} s; see {Path(bench.out) / 'README.md'})")
