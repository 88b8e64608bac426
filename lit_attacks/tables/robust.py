"""Robust 2AFC: clean, robust (worst case over an attack ensemble), minimum-epsilon and certified accuracy.

Config key ``robust`` (None: off)::

    robust:
      linf: [2, 4, 8]            # l_inf radii in 1/255 of [0, 1] images (x 2 / 255 on the [-1, 1] images attacked)
      l2: [0.5, 1.0, 2.0]        # l_2 radii on [0, 1] images (x 2 on [-1, 1])
      target: prey               # the perturbed image: prey (the paper), ref (robust CLIP), both (R-LPIPS)
      ensemble: null             # worst_case attacks (default: APGD-CE, APGD-margin, Square; AutoAttack's)
      min_eps: {attack: apgd, params: {}, linf_max: 16, l2_max: 4.0, bisections: 8}   # or null
      certify: {sigma: 0.25, n0: 100, n: 1000, alpha: 0.001, radii: [0.125, 0.25, 0.5]}  # [0, 1] units, or null
      samples: unanimous         # or all: every sample, the humans' choice being the majority's (judge > 0.5: p1)
      lipschitz: null            # LipSim's certificate: {radii_255: [36, 72, 108]} (l_2, [0, 1] images, in 1/255)

All accuracies are over the unanimous samples (``samples: all``: over every sample). *clean*: the metric ranks like
the humans. *robust at e*: it does and the worst case over the ensemble (each attack run only on samples no earlier
one flipped, each flip re-scored by a fresh forward pass) does not flip it within e; samples whose attack failed
(non-finite gradients) are not robust and are counted in ``failed``. *AUC*: the area under robust accuracy against
eps in [0, max], divided by max, from the minimum-epsilon search. *certified at r*: randomized smoothing
(:mod:`lit_attacks.certify`) returns "the preferred image is closer" with an l_2 radius of at least r.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, Iterator, List

import torch

from lit_attacks.attacks.cost import SCORE, attack_cost
from lit_attacks.callbacks.aggregates import GatherColumns
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.certify import certified_accuracy, check_certify
from lit_attacks.configuration import ConfigError, check_keys
from lit_attacks.lipschitz import LipschitzError, certified_fraction, lipschitz_constant
from lit_attacks.metrics import create_metric
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.tables import plots
from lit_attacks.tables.base import (TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint,
                                     number_id, slug)
from lit_attacks.tables.attack_rows import attack_cell, validate_attack
from lit_attacks.tables.robust_rows import (CERTIFY_KEYS, DEFAULTS, EXAMPLE, LIPSCHITZ_KEYS, MIN_EPS_KEYS, SAMPLES,
                                              RobustRecord, display_row, min_eps_params, min_eps_summary,
                                              radius_label, robust_records, settings, worst_case_params)
from lit_attacks.tasks import create_task

LIPSCHITZ = 2.0  # metric evaluations per sample of a Lipschitz certificate: three embeddings (a score embeds two)


def _min_eps_columns(out) -> Dict[str, Any]:
    """What a min_eps cell gathers of each sample: its minimum flipping eps, agreement, and whether it ran."""
    ok = torch.tensor([s == "ok" for s in out.status], dtype=torch.bool, device=out.eps.device)
    return {"eps": out.eps, "agreed": out.agreed, "ok": ok}


@TABLES.register("robust")
class Robust(Table):
    """Per metric: worst-case cells per radius, minimum-epsilon cells per norm and a certification cell."""

    name = "robust"
    order = 60
    config = {"robust": None}
    files = ("robust.csv", "robust_curves.csv", "robust.md")
    example = EXAMPLE

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--robust-target", choices=("prey", "ref", "both"),
                            help="the image the robust table's attacks perturb (turns the table on with its defaults)")

    @classmethod
    def configure(cls, cfg: Dict[str, Any], flags: Dict[str, Any], where: str) -> None:
        if "robust_target" in flags:
            cfg["robust"] = {**(cfg["robust"] or {}), "target": flags.pop("robust_target")}

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        r = cfg["robust"]
        if r is None:
            return
        if not isinstance(r, dict):
            raise ConfigError(f"robust must be a mapping ({', '.join(DEFAULTS)}) or null, got {r!r}")
        check_keys(r, list(DEFAULTS), "robust: ")
        s = settings(cfg)
        for norm in ("linf", "l2"):
            v = s[norm]
            if not isinstance(v, list) or not all(isinstance(e, (int, float)) and not isinstance(e, bool)
                                                  and math.isfinite(e) and e > 0 for e in v):
                raise ConfigError(f"robust.{norm} must be a list of positive numbers, got {v!r}")
        if s["target"] not in ("prey", "ref", "both"):
            raise ConfigError(f"robust.target must be prey, ref or both, got {s['target']!r}")
        if s["samples"] not in SAMPLES:
            raise ConfigError(f"robust.samples must be one of {', '.join(SAMPLES)}, got {s['samples']!r}")
        for norm, e in [("linf", e) for e in s["linf"]] + [("l2", e) for e in s["l2"]]:
            validate_attack("worst_case", cls.worst_case_params(s, norm, e))
        if s["min_eps"] is not None:
            check_keys(s["min_eps"], MIN_EPS_KEYS, "robust.min_eps: ")
            for norm in ("linf", "l2"):
                validate_attack("min_eps", cls.min_eps_params(s, norm))
        if s["certify"] is not None:
            c = s["certify"]
            check_keys(c, CERTIFY_KEYS, "robust.certify: ")
            try:
                check_certify(c["sigma"], c["n0"], c["n"], c["alpha"], "ref" if s["target"] == "ref" else "both",
                              c.get("chunk", 64), c.get("max_images", 0))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"robust.{e}") from None
            if not isinstance(c["radii"], list) or not all(isinstance(x, (int, float)) and x >= 0 for x in c["radii"]):
                raise ConfigError(f"robust.certify.radii must be a list of numbers >= 0, got {c['radii']!r}")
        lip = r.get("lipschitz")
        if lip is not None:
            if not isinstance(lip, dict):
                raise ConfigError(f"robust.lipschitz must be a mapping (radii_255) or null, got {lip!r}")
            check_keys(lip, LIPSCHITZ_KEYS, "robust.lipschitz: ")
            radii = s["lipschitz"].get("radii_255")
            if not isinstance(radii, list) or not radii or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
                    for x in radii):
                raise ConfigError(f"robust.lipschitz.radii_255 must be a list of positive numbers (l_2 radii on "
                                  f"[0, 1] images in 1/255, LipSim's: [36, 72, 108]), got {radii!r}")

    worst_case_params = staticmethod(worst_case_params)
    min_eps_params = staticmethod(min_eps_params)

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        if cfg["robust"] is None:
            return Plan()
        s = settings(cfg)
        per = len(s["linf"]) + len(s["l2"]) + (2 if s["min_eps"] else 0) + (1 if s["certify"] else 0) \
            + (1 if s["lipschitz"] else 0)
        return Plan(cells=len(cfg["metrics"]) * per, work=len(cfg["metrics"]) * sum(cls.cell_costs(s)))

    @classmethod
    def cell_costs(cls, s: Dict[str, Any]) -> List[float]:
        """Metric evaluations per sample of one metric's cells (:func:`lit_attacks.attacks.cost.attack_cost`)."""
        costs = [attack_cost("worst_case", cls.worst_case_params(s, norm, r)) for norm in ("linf", "l2")
                 for r in s[norm]]
        if s["min_eps"]:
            costs += [attack_cost("min_eps", cls.min_eps_params(s, norm)) for norm in ("linf", "l2")]
        if s["certify"]:
            costs.append(SCORE * (s["certify"]["n0"] + s["certify"]["n"]))
        if s["lipschitz"]:
            costs.append(LIPSCHITZ)
        return costs

    # ------------------------------------------------------------------ cells
    def preflight(self, run: Run) -> None:
        """LipSim's certificate needs, of every metric, an embedding with a declared Lipschitz bound at the run's
        image size: one line naming the metric otherwise, before any work."""
        if not settings(run.cfg)["lipschitz"]:
            return
        size = (run.cfg["image_size"], run.cfg["image_size"])
        for m in run.cfg["metrics"]:
            try:
                lipschitz_constant(create_metric(m, **run.metric_options()), size)
            except LipschitzError as e:
                raise ConfigError(f"robust.lipschitz: {e}") from None

    def cells(self, run: Run) -> Iterator[Cell]:
        s = settings(run.cfg)
        for metric in run.cfg["metrics"]:
            mfp = {"metric_file": metric_file_fingerprint(metric),  # + the sample set, when not the unanimous one
                   **({"samples": s["samples"]} if s["samples"] != "unanimous" else {})}
            for norm in ("linf", "l2"):
                for r in s[norm]:
                    cid = f"robust-{norm}-{number_id(r)}-{slug(metric)}"
                    params = self.worst_case_params(s, norm, r)
                    yield self._attack(run, cid, f"worst case {radius_label(norm, r)} on {metric}", "worst_case",
                                       metric, params, mfp, {"kind": "worst_case", "norm": norm, "radius": r})
            if s["min_eps"]:
                for norm in ("linf", "l2"):
                    cid = f"robust-min_eps-{norm}-{slug(metric)}"
                    yield self._attack(run, cid, f"minimum {norm} eps on {metric}", "min_eps", metric,
                                       self.min_eps_params(s, norm), mfp,
                                       {"kind": "min_eps", "norm": norm, "max": s["min_eps"][f"{norm}_max"]})
            if s["certify"]:
                cid, csv = f"robust-certify-{slug(metric)}", f"samples/robust/certify-{slug(metric)}.csv"
                c = {**s["certify"], "target": "ref" if s["target"] == "ref" else "both"}
                yield Cell(cid, f"certify (sigma {c['sigma']:g}) {metric}", {"params": c, **mfp},
                           partial(self.certify, run, metric, c, csv),
                           info={"kind": "certify", "metric": metric, "csv": csv}, work=SCORE * (c["n0"] + c["n"]))
            if s["lipschitz"]:
                cid, csv = f"robust-lipschitz-{slug(metric)}", f"samples/robust/lipschitz-{slug(metric)}.csv"
                radii = [float(r) for r in s["lipschitz"]["radii_255"]]
                yield Cell(cid, f"Lipschitz certificate {metric}", {"params": {"radii_255": radii}, **mfp},
                           partial(self.lipschitz, run, metric, radii, csv),
                           info={"kind": "lipschitz", "metric": metric, "csv": csv}, work=LIPSCHITZ)

    def _attack(self, run: Run, cid: str, what: str, attack: str, metric: str, params: Dict[str, Any],
                mfp: Dict[str, Any], info: Dict[str, Any]) -> Cell:
        csv = f"samples/robust/{cid[len('robust-'):]}.csv"
        compute = partial(self.attack, run, attack, metric, params, cid, csv, info)
        return Cell(cid, what, {"params": params, **mfp}, compute,
                    info={**info, "metric": metric, "csv": csv}, log=partial(self.scalars, cid, metric),
                    work=attack_cost(attack, params))

    @staticmethod
    def attack(run: Run, attack: str, metric: str, params: Dict[str, Any], cid: str, csv: str, info: Dict[str, Any],
               ctx: CellContext) -> Dict[str, Any]:
        """An attack cell; a minimum-epsilon cell also gathers each sample's eps for its curve (payload
        ``min_eps``: grid, curve, auc, median)."""
        gather = [GatherColumns(("eps", "agreed", "ok"), _min_eps_columns)] if info["kind"] == "min_eps" else []
        payload = attack_cell(run, ctx, attack, metric, params, cid, csv, examples=False, save_adv=False,
                              aggregates=gather, unanimous_only=settings(run.cfg)["samples"] == "unanimous")
        if gather:
            v = gather[0].values
            payload["min_eps"] = min_eps_summary([a == 1 for a in v["agreed"]], v["eps"], [o == 1 for o in v["ok"]],
                                                 info["norm"], info["max"])
        return payload

    @staticmethod
    def certify(run: Run, metric: str, c: Dict[str, Any], csv: str, ctx: CellContext) -> Dict[str, Any]:
        """A certification cell; payload ``certified``: ``{"radius", "accuracy"}`` at radius 0 and at each of
        ``radii`` (l_2, [0, 1] image units, as numbers)."""
        module = create_task("certify", metric=metric, sigma=2 * c["sigma"], n0=c["n0"], n=c["n"], alpha=c["alpha"],
                             target=c["target"], chunk=c.get("chunk", 64), max_images=c.get("max_images", 0),
                             batch_invariant=run.cfg["batch_invariant"], **run.metric_options())
        rows = SampleRows()
        gather = GatherColumns(("radius", "correct"), lambda o: {"radius": torch.tensor(o.radius, dtype=torch.float64),
                                                                 "correct": o.correct})
        unanimous = settings(run.cfg)["samples"] == "unanimous"
        run.predict(module, [rows, gather], run.datamodule(unanimous_only=unanimous))
        ctx.save_rows(csv, rows.rows, rows.columns)
        radius01 = [r / 2 for r in gather.values["radius"]]  # [-1, 1] -> [0, 1] images
        correct = [c == 1 for c in gather.values["correct"]]
        certified = [{"radius": float(rad), "accuracy": certified_accuracy(radius01, correct, rad)}
                     for rad in [0.0] + [float(r) for r in c["radii"]]]
        return {"label": module.metric.label, "certified": certified}

    @staticmethod
    def lipschitz(run: Run, metric: str, radii_255: List[float], csv: str, ctx: CellContext) -> Dict[str, Any]:
        """A Lipschitz-certificate cell (:mod:`lit_attacks.lipschitz`); payload ``lipschitz``: samples, LipSim's
        clean accuracy and, per radius, the share certified by LipSim's radius and by the sound one."""
        module = create_task("lipschitz", metric=metric, batch_invariant=run.cfg["batch_invariant"],
                             **run.metric_options())
        rows = SampleRows()
        unanimous = settings(run.cfg)["samples"] == "unanimous"
        run.predict(module, [rows], run.datamodule(unanimous_only=unanimous))
        ctx.save_rows(csv, rows.rows, rows.columns)
        correct = [bool(r["correct"]) for r in rows.rows]
        n = len(correct)
        certified = [{"radius_255": r, "lipsim": certified_fraction(correct, [x["radius"] for x in rows.rows],
                                                                    r / 255),
                      "sound": certified_fraction(correct, [x["radius_sound"] for x in rows.rows], r / 255)}
                     for r in radii_255]
        return {"label": module.metric.label,
                "lipschitz": {"samples": n, "clean": sum(correct) / n if n else math.nan, "certified": certified}}

    # ------------------------------------------------------------------ results
    def records(self, run: Run) -> Dict[str, RobustRecord]:
        """metric -> its typed record of this run's robust cells (computed once per set of finished cells)."""
        key = tuple(self.done)
        if getattr(self, "_records_of", None) != key:
            self._records_of, self._records = key, robust_records(self.done.values())
        return self._records

    def metric_rows(self, run: Run) -> Dict[str, Dict[str, Any]]:
        """metric -> its display row (labels as the table's columns), with its curves under ``_curves``."""
        return {m: {**display_row(r), "_curves": r.curves} for m, r in self.records(run).items()}

    def columns(self, run: Run) -> List[str]:
        s = settings(run.cfg)
        cols = ["metric", "samples", "clean"] + [radius_label("linf", r) for r in s["linf"]] \
            + [radius_label("l2", r) for r in s["l2"]]
        if s["min_eps"]:
            cols += ["auc linf", "auc l2", "median min eps linf", "median min eps l2"]
        if s["certify"]:
            cols += ["certified clean"] + [f"certified l2 {r:g}" for r in s["certify"]["radii"]]
        if s["lipschitz"]:
            cols += ["lipsim clean"] + [f"{kind} certified l2 {float(r):g}/255" for r in s["lipschitz"]["radii_255"]
                                        for kind in ("lipsim", "sound")]
        return cols + ["failed"]

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "_curves"} for r in self.metric_rows(run).values()]

    def curve_rows(self, run: Run) -> List[Dict[str, Any]]:
        return [{"metric": r["metric"], "norm": norm, "eps": g, "robust_accuracy": a}
                for r in self.metric_rows(run).values() for norm, (grid, acc) in r.get("_curves", {}).items()
                for g, a in zip(grid, acc)]

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        s = settings(run.cfg)
        title = f"Robust 2AFC accuracy ({_samples(s)}; perturbed: {s['target']})"
        if not rows:
            return Written(title)
        cols = self.columns(run)
        write_csv(run.out / "robust.csv", rows, cols)
        curves = self.curve_rows(run)
        if curves:
            write_csv(run.out / "robust_curves.csv", curves, ["metric", "norm", "eps", "robust_accuracy"])
        md = markdown_table(rows, cols, digits=3)
        atomic_write(run.out / "robust.md", f"# Robust 2AFC accuracy ({_samples(s)})\n\n"
                     f"Radii on [0, 1] images (l_inf in 1/255); perturbed image: {s['target']}. Robust = ranked like "
                     "the humans and not flipped by any attack of the ensemble; certified = randomized smoothing "
                     "(Cohen et al. 2019) certifies the preferred image closer within the l_2 radius.\n\n" + md)
        fig = plots.min_eps_curves(curves, run.out / "plots" / "robust-min-eps.png") if curves else None
        summary = {f"robust/{r['metric']}/{k}": v for r in rows for k, v in r.items()
                   if k not in ("metric", "samples") and isinstance(v, (int, float))}
        return Written(title, md, [fig] if fig is not None else [], summary)

    def page(self, rows: List[Dict[str, Any]]):
        """Accuracies in % (as the README states them), AUC in %, median minimum epsilons as they are."""
        def percent(key: str) -> bool:
            return key not in ("metric", "samples", "failed") and not key.startswith("median")

        view = [{(f"{k} (%)" if percent(k) else k): (round(100 * v, 1) if percent(k) and isinstance(v, float) else v)
                 for k, v in r.items()} for r in rows]
        return view, ["accuracies in % of the unanimous samples: clean, robust at each radius (radii on [0, 1] "
                      "images, l_inf in 1/255), AUC of robust accuracy against the budget, certified at each l_2 "
                      "radius; median min eps: of the flipped samples, in the radius units"]

    @staticmethod
    def scalars(cell_id: str, metric: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        res = payload.get("results", {}).get("all")
        return {f"robust/{slug(metric)}/{cell_id}/flip_rate": res["flip_rate"]} if res else {}


def _samples(s: Dict[str, Any]) -> str:
    return "unanimous samples" if s["samples"] == "unanimous" else "all samples, majority label"
