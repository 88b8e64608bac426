"""End of a bench run (rank 0): each table's files and figures, summary.json, index.html, the run README, W&B."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

from lit_attacks.bench import index_page
from lit_attacks.bench.run_readme import command_line, render
from lit_attacks.report import atomic_write, write_json
from lit_attacks.tables import tables


def write_outputs(bench) -> List[Path]:
    """Rows of every registered table (disabled ones: empty), their files and figures, then the summary;
    returns the figures and the other files the tables wrote (results entries)."""
    out, cfg = bench.out, bench.cfg
    running = {type(t).name: t for t in bench.tables}
    rows: Dict[str, List[Dict[str, Any]]] = {t.name: running[t.name].aggregate(bench) if t.name in running else []
                                             for t in tables()}
    written = {name: t.write(bench, rows[name]) for name, t in running.items()}
    figs: List[Path] = [f for w in written.values() for f in w.figures]

    seconds = time.time() - bench.t0
    weights = dict(bench.weights) if cfg["pretrained"] else {}
    write_json(out / "summary.json", {"config": cfg, "data": bench.source, "devices": bench.devices,
                                      "metrics": bench.labels, "unavailable": bench.unavailable, "weights": weights,
                                      "seconds": seconds,
                                      "cells": {cid: {"seconds": p.get("seconds"),
                                                      "samples_per_s": p.get("samples_per_s")}
                                                for cid, p in bench.cells.items()},
                                      **rows})
    panels: Dict[str, Any] = {}
    summary: Dict[str, Any] = {}
    for name, w in written.items():
        if rows[name] and bench.wandb.enabled:
            panels.update(w.panels() if w.panels is not None else {})
            summary.update(w.summary)
    bench.wandb.log_final({name: r for name, r in rows.items() if r}, panels, figs, summary)
    wandb_dir = bench.wandb.finish()
    listed = lambda: sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()  # noqa: E731
                            and "wandb" not in p.parts and "cells" not in p.parts and not p.name.startswith("."))
    notes = [] if cfg["pretrained"] else ["WARNING: random backbones (pretrained: false): the numbers are for testing "
                                          "and timing only."]
    notes += [f"Not run (unavailable here): {m}: {why}" for m, why in bench.unavailable.items()]
    page_tables = [(name, written[name].title, *running[name].page(rows[name])) for name in running if rows[name]]
    command = bench.command()
    atomic_write(out / "index.html", index_page.render(out, f"Bench run {cfg['name']}", command, notes, page_tables,
                                                       figs, listed() + ["README.md"]))
    dev = f"{bench.devices['devices']} x {bench.devices['accelerator']} ({bench.devices['strategy']})"
    files = listed()
    compute = sum(p.get("seconds") or 0 for p in bench.cells.values())
    atomic_write(out / "README.md", render(cfg, command_line(bench.argv), bench.source, bench.labels, weights, files,
                                           seconds, dev, wandb_dir, unavailable=bench.unavailable,
                                           cells=(len(bench.cells), len(bench.loaded), compute)))
    report(bench, {name: (w.title, w.markdown) for name, w in written.items() if w.markdown},
           wandb_dir, seconds)
    return figs + [f for w in written.values() for f in w.files]


def report(bench, md: Dict[str, Any], wandb_dir, seconds: float) -> None:
    if bench.quiet:
        print(f"results in {bench.out}/")
        return
    for title, text in md.values():
        print(f"\n{title}\n\n{text}")
    for m, why in bench.unavailable.items():
        print(f"NOT RUN: {m} ({why})")
    if not bench.cfg["pretrained"]:
        print("WARNING: random backbones (--pretrained false): numbers are for testing and timing only.")
    if wandb_dir:
        print(f"W&B offline run in {wandb_dir}; upload with: wandb sync {wandb_dir}")
    print(f"results in {bench.out}/ ({seconds:.1f} s; open {Path(bench.out) / 'index.html'} in a browser, "
          f"or read {Path(bench.out) / 'README.md'})")
