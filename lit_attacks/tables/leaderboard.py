"""Leaderboard entries of a robust run: one JSON file per metric in ``leaderboard/<dataset>/<protocol>/<metric>.json``.

Config key ``leaderboard`` (None: off; needs ``robust``)::

    leaderboard:
      protocol: leaderboard_quick     # the name entries are merged under (python -m lit_attacks.leaderboard build)
      dataset: null                   # default: builtin-<set>, bapps or nights, from --data
      description: "..."              # where the budgets come from

Per metric it adds one cell, the gradient check at the clean point (:mod:`lit_attacks.gradcheck`), and at the end
writes each metric's entry (:mod:`lit_attacks.leaderboard.entry`) from the robust table's results and per-sample
rows. The entry format and its sanity flags are documented in docs/leaderboard.md.
"""
from __future__ import annotations

import datetime
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, List

import torch

from lit_attacks.attacks.ensemble import _label as attack_label
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.configuration import ConfigError, check_keys
from lit_attacks.datamodules.nights import nights_root
from lit_attacks.leaderboard.entry import (SCHEMA_VERSION, UNITS, fingerprint, rate, sanity_flags, sha256_files,
                                           validate)
from lit_attacks.metrics import METRICS, create_metric
from lit_attacks.report import markdown_table, write_json
from lit_attacks.tables import robust_rows as rb
from lit_attacks.tables.base import TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint, slug
from lit_attacks.tasks import create_task
from lit_attacks.wandb_utils import finite

KEYS = ("protocol", "dataset", "description")
GRADIENT = 5.0  # metric evaluations per sample of the gradient check: two scores, a forward and a backward


def dataset_name(cfg: Dict[str, Any], source: Dict[str, Any]) -> str:
    """``leaderboard.dataset``, else builtin-<set>, nights or bapps from the data (a NIGHTS root, a BAPPS tree, shards
    named nights-* or bapps-*), else the data folder's name."""
    lb = cfg.get("leaderboard") or {}
    if lb.get("dataset"):
        return lb["dataset"]
    if cfg["data"] is None:
        return f"builtin-{cfg['builtin']}"
    data = Path(cfg["data"]).expanduser()
    if nights_root(data) is not None:
        return "nights"
    if (data / "2afc").is_dir():
        return "bapps"
    shards = sorted(Path(str(source.get("shards", data))).glob("*.tar"))
    for kind in ("nights", "bapps"):
        if shards and shards[0].name.startswith(f"{kind}-"):
            return kind
    return data.name


def protocol_spec(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What a protocol fixes (attacks, radii, certification, seed, 8-bit checks): entries merged under one name
    must agree on it (its fingerprint)."""
    s = rb.settings(cfg)
    ens = rb.worst_case_params(s, "linf", 1.0)["attacks"]
    attacks = [{"attack": e["attack"], "params": dict(e.get("params") or {}), "label": attack_label(e),
                "black_box": bool(getattr(ATTACKS.get(e["attack"]), "black_box", False))} for e in ens]
    samples = {"samples": s["samples"]} if s["samples"] != "unanimous" else {}  # unanimous: fingerprints stay
    if s["lipschitz"]:
        samples["lipschitz"] = {"radii_255": [float(r) for r in s["lipschitz"]["radii_255"]]}
    return {"target": s["target"], **samples, "attacks": attacks,
            "radii": {"linf": list(s["linf"]), "l2": list(s["l2"]), "units": UNITS},
            "min_eps": s["min_eps"], "certify": s["certify"], "seed": int(cfg["seed"]),
            "eot": max([int((e.get("params") or {}).get("eot", 1)) for e in ens] or [1]),
            "image_size": int(cfg["image_size"]), "uint8": cfg["uint8"]}


@TABLES.register("leaderboard")
class Leaderboard(Table):
    """A gradient-check cell per metric; at the end, one results entry per metric."""

    name = "leaderboard"
    order = 70
    config = {"leaderboard": None}
    files = ()
    example = {"metrics": ["l2"], "attacks": {}, "robust": dict(rb.EXAMPLE["robust"]),
               "leaderboard": {"protocol": "contract"}}

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        lb = cfg["leaderboard"]
        if lb is None:
            return
        if not isinstance(lb, dict) or not isinstance(lb.get("protocol"), str) or not lb["protocol"]:
            raise ConfigError(f"leaderboard must be a mapping with a protocol name ({', '.join(KEYS)}) or null, "
                              f"got {lb!r}")
        check_keys(lb, KEYS, "leaderboard: ")
        if cfg["robust"] is None:
            raise ConfigError("leaderboard: needs the robust table (set robust:, e.g. --config leaderboard_quick)")

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        return Plan(cells=len(cfg["metrics"]), work=GRADIENT * len(cfg["metrics"])) if cfg["leaderboard"] is not None \
            else Plan()

    def cells(self, run: Run) -> Iterator[Cell]:
        for metric in run.cfg["metrics"]:
            csv = self.csv(metric)
            yield Cell(f"leaderboard-gradients-{slug(metric)}", f"gradient check on {metric}",
                       {"metric_file": metric_file_fingerprint(metric)}, partial(self.gradients, run, metric, csv),
                       info={"metric": metric, "csv": csv}, work=GRADIENT)

    @staticmethod
    def gradients(run: Run, metric: str, csv: str, ctx: CellContext) -> Dict[str, Any]:
        module = create_task("gradient_check", metric=metric, batch_invariant=run.cfg["batch_invariant"],
                             **run.metric_options())
        rows = SampleRows()
        run.predict(module, [rows], run.datamodule(unanimous_only=True))
        ctx.save_rows(csv, rows.rows, rows.columns)
        return {"label": module.metric.label, "gradients": dict(Counter(r["grad_status"] for r in rows.rows))}

    # ------------------------------------------------------------------ results
    def entries(self, run: Run) -> Dict[str, Dict[str, Any]]:
        """metric -> its entry (validated), from the robust table's results and this table's gradient checks."""
        robust = next((t for t in getattr(run, "tables", []) if hasattr(t, "records")), None)  # the robust cells
        if robust is None:
            return {}
        records = robust.records(run)
        cfg = run.cfg
        spec = protocol_spec(cfg)
        lb = cfg["leaderboard"]
        black_box = [a["label"] for a in spec["attacks"] if a["black_box"]]
        grads = {c.info["metric"]: run.rows(c.id, c.info["csv"]) for c, _ in self.done.values()}
        out = {}
        for metric, rec in records.items():
            cells = [c for c, _ in robust.done.values() if c.info["metric"] == metric]
            worst = [run.rows(c.id, c.info["csv"]) for c in cells if c.info["kind"] == "worst_case"]
            n = int(rec.samples)
            m = create_metric(metric, **run.metric_options())
            entry = {
                "schema_version": SCHEMA_VERSION,
                "metric": {"name": metric, "label": rec.label, "description": describe(metric, m),
                           "weights": sha256_files(run.weights.get(metric), run.file_sha256) if cfg["pretrained"]
                           else [],
                           "options": {"pretrained": cfg["pretrained"], "batch_invariant": cfg["batch_invariant"],
                                       "stochastic": bool(m.stochastic)},
                           "fingerprint": metric_file_fingerprint(metric)},
                "dataset": {"name": dataset_name(cfg, run.source), "split": cfg["split"],
                            "samples": int(run.total_samples()),
                            "unanimous": n, "source": str(run.source.get("data")),
                            "categories": cfg["categories"] or "all",
                            "fingerprint": fingerprint({"shards": run.source.get("index_sha256"),
                                                        "split": cfg["split"], "categories": cfg["categories"]})},
                "protocol": {"name": lb["protocol"], "fingerprint": fingerprint(spec),
                             "description": lb.get("description") or "", **{k: v for k, v in spec.items()
                                                                              if k != "uint8"}},
                "results": {
                    "clean": rate(rec.clean if rec.attacked else rec.lipschitz_clean if rec.lipschitz else None, n),
                    "robust": [{"norm": norm, "radius": r, "accuracy": rate(rec.robust.get((norm, float(r))), n)}
                               for norm in ("linf", "l2") for r in spec["radii"][norm]],
                    "auc": {**{norm: v for norm, v in rec.auc.items()},
                            **{f"median_min_eps_{norm}": v for norm, v in rec.median_min_eps.items()}},
                    "certified": [{"radius": r, "accuracy": rate(rec.certified.get(float(r)), n)}
                                  for r in [0.0] + list(spec["certify"]["radii"])] if spec["certify"] else [],
                    **({"certified_lipschitz": [
                        {"radius_255": r, "accuracy": rate(lipsim, n), "accuracy_sound": rate(sound, n)}
                        for r, (lipsim, sound) in rec.lipschitz.items()]} if rec.lipschitz else {}),
                    "failed": int(rec.failed),
                    "per_sample_csv": [c.info["csv"] for c in cells] + [self.csv(metric)],
                },
                "sanity": sanity_flags(worst, black_box, grads.get(metric, []), bool(m.stochastic), spec["eot"]),
                "software": run.software(),
                "seconds": sum(p.get("seconds") or 0 for c, p in robust.done.values() if c.info["metric"] == metric),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": run.command(),
            }
            entry["results"]["auc"] = {k: v if finite(v) else None for k, v in entry["results"]["auc"].items()}
            validate(entry, f"leaderboard entry of {metric}")
            out[metric] = entry
        return out

    @staticmethod
    def csv(metric: str) -> str:
        return f"samples/leaderboard/gradients-{slug(metric)}.csv"

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        self._entries = self.entries(run)
        return [{"metric": e["metric"]["label"], "entry": self.path(run, e),
                 "flags": ", ".join(k for k, f in e["sanity"].items() if f["raised"]) or "none"}
                for e in self._entries.values()]

    def results(self) -> Dict[str, Any]:
        """metric -> its entry, as written (``lit_attacks.evaluate`` returns it)."""
        return dict(getattr(self, "_entries", {}))

    @staticmethod
    def path(run: Run, entry: Dict[str, Any]) -> str:
        return str(Path("leaderboard") / slug(entry["dataset"]["name"]) / slug(entry["protocol"]["name"]) /
                   f"{slug(entry['metric']['name'])}.json")

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        title = "Leaderboard entries"
        files = []
        for e in getattr(self, "_entries", {}).values():
            p = run.out / self.path(run, e)
            write_json(p, e)
            files.append(p)
        md = markdown_table(rows, ["metric", "entry", "flags"]) if rows else None
        return Written(title, md, files=files)


def describe(name: str, metric: torch.nn.Module) -> str:
    if getattr(metric, "description", ""):
        return metric.description
    prefix, sep, _ = name.partition(":")
    info = METRICS.info(prefix if sep else name)
    return info.get("what", "") or (type(metric).__doc__ or "").strip().split("\n")[0]
