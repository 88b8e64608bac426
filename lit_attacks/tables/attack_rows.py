"""What the attack tables share (Table 2 and the reverse table; the robust and sweep tables run their cells with
:func:`attack_cell`): the cell, the parameter flags and checks, the rows and their Markdown. Not a table: the plug-ins
``table2.py`` and ``reverse.py`` register the tables.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import yaml

from lit_attacks.attacks import ATTACKS
from lit_attacks.attacks.base import attack_parameters
from lit_attacks.attacks.cost import attack_cost
from lit_attacks.attacks.output import FRACTION_COLUMNS
from lit_attacks.callbacks.adv_shards import AdvShardWriter
from lit_attacks.callbacks.attack_metrics import AttackMetrics
from lit_attacks.callbacks.examples import ExampleCollector
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.configuration import ConfigError, as_name_list, load_yaml_text, suggest, yaml_problem
from lit_attacks.report import atomic_write, markdown_table, write_csv
from lit_attacks.tables import plots
from lit_attacks.tables.base import Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint, slug
from lit_attacks.tasks import create_task
from lit_attacks.wandb_utils import finite, wandb_table

COLUMNS = ["metric", "attack", "group", "total", "flipped", "flip_rate", "flipped_uint8", "failed", "eps_mean",
           "rmse_mean", "rmse_std", "rmse_official_mean", "rmse_official_std", "psnr_mean", "psnr_std",
           "psnr_uint8_mean", "psnr_uint8_std", "queries_mean", "iterations_mean"] \
    + FRACTION_COLUMNS


def attack_cell(run: Run, ctx: CellContext, attack: str, metric: str, params: Dict[str, Any], cid: str, csv: str,
                examples: bool = True, save_adv: bool = False, aggregates: Sequence = (),
                unanimous_only: bool = True) -> Dict[str, Any]:
    """Run ``attack`` on ``metric`` over the unanimous samples (every sample with ``unanimous_only=False``; a
    sample then agrees with the humans when its closer image has the majority, judge > 0.5: p1): per-sample rows in
    ``csv``, flip statistics,
    an example grid (``plots/examples-<cid>.png``) and optionally the adversarial images as shards
    (``adv/<cid>/``); ``aggregates``: more callbacks fed by the same outputs (the caller reads them). Returns the
    payload {label, results}."""
    cfg = run.cfg
    module = create_task(f"attack:{attack}", metric=metric, keep_images=examples or save_adv,
                         batch_invariant=cfg["batch_invariant"], uint8=cfg["uint8"], **run.metric_options(), **params)
    rows, stats = SampleRows(), AttackMetrics()
    grid = ExampleCollector(cfg["examples"])
    callbacks = [rows, stats, *aggregates] + ([grid] if examples else [])
    if save_adv:
        adv_dir = run.out / "adv" / cid
        run.clear(f"adv/{cid}")  # shards of an earlier attempt
        callbacks.append(AdvShardWriter(str(adv_dir), prefix=cid))
    run.predict(module, callbacks, run.datamodule(unanimous_only=unanimous_only))
    ctx.save_rows(csv, rows.rows, rows.columns)
    if save_adv:
        ctx.track(f"adv/{cid}")
    if run.is_zero and grid.examples:
        title = f"{attack} on {module.metric.label}"
        plots.example_grid(grid.examples, title, run.out / "plots" / f"examples-{cid}.png")
        ctx.track(f"plots/examples-{cid}.png")
    return {"label": module.metric.label, "results": stats.results}


def parse_param(item: str, flag: str = "--param") -> Tuple[str, str, Any]:
    """``"pgd.steps=40"`` -> ("pgd", "steps", 40); the value is parsed as YAML."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"{flag} {item!r}: expected ATTACK.KEY=VALUE, e.g. pgd.steps=40")
    lhs, value = item.split("=", 1)
    attack, key = lhs.split(".", 1)
    try:
        return attack, key, load_yaml_text(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag} {item!r}: the value is not plain YAML ({yaml_problem(e)}); numbers, true/false, "
                          "strings and lists only") from None


def as_attacks(value: Any, where: str, key: str = "attacks") -> Dict[str, Dict[str, Any]]:
    """``attacks`` as a mapping attack -> parameters (a list or comma-separated string of names is accepted)."""
    if value is None:
        return {}
    if isinstance(value, (str, list, tuple)):
        return {a: {} for a in as_name_list(key, value, where)}
    if isinstance(value, dict):
        out = {}
        for a, kw in value.items():
            if kw is not None and not isinstance(kw, dict):
                raise ConfigError(f"{where}: {key}.{a} must be a mapping of parameters, got {kw!r}")
            out[str(a)] = dict(kw or {})
        return out
    raise ConfigError(f"{where}: {key} must be a mapping (attack -> parameters) or a list, got {value!r}")


def validate_attack(attack: str, kw: Dict[str, Any]) -> None:
    """Known attack, known parameters, valid values (the attack is built once against l2)."""
    try:
        ATTACKS.get(attack)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    allowed = set(attack_parameters(ATTACKS.get(attack)))  # the options (metric, uint8, ...) are set by the bench
    for key in kw:
        if key not in allowed:
            raise ConfigError(f"attack {attack} has no parameter {key!r}{suggest(key, allowed)}; "
                              f"known: {', '.join(sorted(allowed))}")
    try:  # bad values (eps <= 0, steps < 1, wrong types, ...) fail now, not after hours
        ATTACKS.get(attack)(metric="l2", **kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"parameters of {attack}: {e}") from None


class AttackTable(Table):
    """An attack table: every configured attack on every metric, per-sample rows in ``<samples_dir>/<attack>-<metric>
    .csv``. Not a table itself: Table 2 (``table2.py``) and the reverse table (``reverse.py``) set its class attributes
    (config key, flags, folders, headings)."""

    key: str
    flag: str
    param_flag: str
    reverse: bool
    samples_dir: str
    figure_prefix: str
    log_prefix: str
    heading: str
    title: str

    @classmethod
    def add_arguments(cls, parser) -> None:
        names = [n for n in ATTACKS.names() if ATTACKS.get(n).reverse == cls.reverse]
        parser.add_argument(cls.flag, dest=cls.key, help=f"comma-separated attacks ({', '.join(names)}; '' for "
                                                         "none); the config's parameters of these attacks are kept")
        parser.add_argument(cls.param_flag, dest=f"{cls.key}_param", action="append", metavar="ATTACK.KEY=VALUE",
                            help="attack parameter (repeatable)")

    @classmethod
    def configure(cls, cfg: Dict[str, Any], flags: Dict[str, Any], where: str) -> None:
        cfg[cls.key] = as_attacks(cfg[cls.key], where, cls.key)
        if cls.key in flags:
            chosen = as_name_list(cls.key, flags.pop(cls.key), cls.flag) or []
            cfg[cls.key] = {a: cfg[cls.key].get(a, {}) for a in chosen}
        for item in flags.pop(f"{cls.key}_param", []):
            attack, key, value = parse_param(item, cls.param_flag)
            if attack not in cfg[cls.key]:
                raise ConfigError(f"{cls.param_flag} {item!r}: attack {attack!r} is not among {cls.flag} "
                                  f"({','.join(cfg[cls.key]) or 'none'})")
            cfg[cls.key][attack][key] = value

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        for attack, kw in cfg[cls.key].items():
            validate_attack(attack, kw)
            if ATTACKS.get(attack).reverse != cls.reverse:
                kind = "a reverse attack" if cls.reverse else "a rank-flip attack"
                raise ConfigError(f"{cls.key}: {attack} is not {kind}; "
                                  f"{'reverse attacks go under reverse' if not cls.reverse else 'use attacks'}")

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        return Plan(cells=len(cfg["metrics"]) * len(cfg[cls.key]),
                    work=len(cfg["metrics"]) * sum(attack_cost(a, kw) for a, kw in cfg[cls.key].items()))

    def cells(self, run: Run) -> Iterator[Cell]:
        for metric in run.cfg["metrics"]:
            mfp = {"metric_file": metric_file_fingerprint(metric)}
            for attack, params in run.cfg[self.key].items():
                cid = f"{attack}-{slug(metric)}"
                csv = f"{self.samples_dir}/{cid}.csv"
                compute = partial(self.compute, run, attack, metric, params, cid, csv)
                yield Cell(cid, f"{attack} on {metric}", {"params": params, **mfp}, compute,
                           info={"attack": attack, "metric": metric, "csv": csv},
                           log=partial(self.scalars, attack, metric), work=attack_cost(attack, params))

    def compute(self, run: Run, attack: str, metric: str, params: Dict[str, Any], cid: str, csv: str,
                ctx: CellContext) -> Dict[str, Any]:
        return attack_cell(run, ctx, attack, metric, params, cid, csv, examples=True, save_adv=run.cfg["save_adv"])

    def scalars(self, attack: str, metric: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        prefix = f"{self.log_prefix}/{attack}/{slug(metric)}"
        flat = {f"{prefix}/{g}/{k}": v for g, res in payload["results"].items() for k, v in res.items()}
        if payload.get("samples_per_s"):
            flat[f"{prefix}/samples_per_s"] = payload["samples_per_s"]
        return flat

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        return [{"metric": payload["label"], "attack": cell.info["attack"], "group": g, **payload["results"][g],
                 "samples_per_s": payload.get("samples_per_s")}
                for cell, payload in self.done.values() for g in ("agreed", "disagreed", "tied", "all")]

    def samples(self, run: Run) -> Dict[str, List[Dict[str, Any]]]:
        return {cid: run.rows(cid, cell.info["csv"]) for cid, (cell, _) in self.done.items()}

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        if not rows:
            return Written(self.title)
        write_csv(run.out / f"{self.name}.csv", rows, COLUMNS + ["samples_per_s"])
        md = table2_markdown(rows)
        atomic_write(run.out / f"{self.name}.md", f"{self.heading}\n\n{counting_caption(run.cfg[self.key])}\n\n" + md)
        summary = {f"flip_rate/{r['attack']}/{r['metric']}": r["flip_rate"] for r in rows if r["group"] == "all"}
        return Written(self.title, md, self.figures(run, rows), summary, partial(self.panels, run, rows))

    def page(self, rows: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
        return table2_page(rows)

    def figures(self, run: Run, rows: List[Dict[str, Any]]) -> List:
        plots_dir = run.out / "plots"
        figs = [plots.flip_rate_bars(rows, plots_dir / f"{self.figure_prefix}flip_rates.png"),
                plots.rmse_histograms(self.samples(run), plots_dir / f"{self.figure_prefix}rmse_hist.png")]
        grids = [plots_dir / f"examples-{cid}.png" for cid in self.done]
        return [f for f in figs if f is not None] + sorted(p for p in grids if p.is_file())

    def panels(self, run: Run, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
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
            panels[f"charts/{self.figure_prefix}flip_rate"] = wandb.plot.bar(
                t, "attack / metric", "flip rate (%)",
                title=f"{self.title.split(' (')[0]}: flips (% of unanimous samples)")
        for cid, recs in samples.items():
            vals = [float(r["rmse"]) for r in recs if r.get("flipped") is True]
            if vals:
                panels[f"charts/rmse/{cid}"] = wandb.Histogram(vals)
        return panels


COUNTINGS = {"final": "the final image, re-scored by a fresh forward pass, ranked the other way",
             "official": "a flip seen before a step, as the official script (the image after the last step is not "
                         "checked)",
             "paper": "accepted by the paper's algorithm (flipped with its perturbation loss under pert_bound)"}


def counting_caption(attacks: Dict[str, Dict[str, Any]]) -> str:
    """Which rule counts a flip, per attack (its ``counting`` parameter; "final" by default)."""
    rules = [f"{a}: {COUNTINGS.get(kw.get('counting', 'final'), kw.get('counting'))}" for a, kw in attacks.items()]
    return "Flips counted as " + "; ".join(rules) + "."


PAGE_LEGEND = [
    "group: the samples the metric ranked like the humans (agreed), the other way (disagreed), or all of them",
    "total: unanimous samples in the group; flipped: rank flips of the float adversarial image (% of total); "
    "8-bit: of those, the flips that survive saving the image as 8 bits",
    "eps: mean smallest flipping epsilon (FGSM) or the budget (PGD), on [-1, 1]; RMSE (float) and PSNR (float, "
    "dB) of the flipped samples' float perturbations on [0, 255], PSNR (8-bit) of their saved 8-bit images (those "
    "that differ from the prey), mean +- std (population std, ddof 0; table2.csv also has the official RMSE: 8-bit, "
    "ddof 1)",
    "groups without samples (no tie, for instance) are left out; the CSV has every column and row",
]


def table2_page(rows: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """A compact Table 2 for the index page: the counts with their 8-bit share, epsilon, RMSE and PSNR."""
    view = []
    for r in rows:
        if not r["total"]:
            continue
        spread = lambda m, s: f"{r[m]:.2f} +- {r[s]:.2f}" if r["flipped"] else "-"  # noqa: E731
        view.append({"metric": r["metric"], "attack": r["attack"], "group": r["group"], "total": r["total"],
                     "flipped": f"{r['flipped']} ({100 * r['flip_rate']:.1f}%)", "8-bit": r["flipped_uint8"],
                     "eps": r["eps_mean"], "RMSE (float)": spread("rmse_mean", "rmse_std"),
                     "PSNR (float)": spread("psnr_mean", "psnr_std"),
                     "PSNR (8-bit)": spread("psnr_uint8_mean", "psnr_uint8_std")})
    return view, PAGE_LEGEND


def table2_markdown(rows: List[Dict[str, Any]]) -> str:
    view = []
    for r in rows:
        v = dict(r)
        v["flipped"] = f"{r['flipped']} ({100 * r['flip_rate']:.1f}%)" if r["total"] else "0"
        spread = lambda m, s: f"{r[m]:.3f} +- {r[s]:.3f}" if r["flipped"] else "-"  # noqa: E731
        v["rmse"], v["psnr"] = spread("rmse_mean", "rmse_std"), spread("psnr_mean", "psnr_std")
        v["psnr_uint8"] = spread("psnr_uint8_mean", "psnr_uint8_std")
        v["rmse_official"] = spread("rmse_official_mean", "rmse_official_std")
        view.append(v)
    cols = ["metric", "attack", "group", "total", "flipped", "eps_mean", "rmse", "rmse_official", "psnr", "psnr_uint8",
            "frac>0.001", "frac>0.01", "frac>0.03", "frac>0.05", "frac>0.1", "flipped_uint8", "failed",
            "samples_per_s"]
    heads = {"eps_mean": "eps", "psnr": "PSNR (float)", "psnr_uint8": "PSNR (8-bit)",
             "flipped_uint8": "flipped (8-bit)", "samples_per_s": "samples/s", "rmse": "RMSE (float, population sigma)",
             "rmse_official": "RMSE (official: 8-bit, sample sigma)", "frac>0.05": "frac>0.05 (ICLR)"}
    return markdown_table(view, cols, digits=3, headers=heads)
