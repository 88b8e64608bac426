"""Table 3: transfer of adversarial examples made on a source metric to the target metrics (``--transfer``).

Config keys: ``transfer`` (on/off), ``source`` (source metrics), ``rmse_max`` (imperceptibility bound,
RMSE on 0-255), ``flowadv_width`` (FlowAdv CNN width; default 256 on a GPU, 32 on the CPU). Per source,
one generator cell writes every variant as shards (``transfer/adv-<source>/``) and its per-sample
verdicts (``transfer/source-<source>.csv``); then one cell per target scores the shards
(``transfer/<source>-to-<target>.csv``). See :mod:`lit_attacks.transfer` for the counting rule.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from lit_attacks.callbacks.adv_shards import AdvShardWriter
from lit_attacks.callbacks.samples import SampleRows
from lit_attacks.configuration import ConfigError, Option, defaults
from lit_attacks.datamodules.adversarial import AdvShardDataModule
from lit_attacks.metrics import METRICS
from lit_attacks.report import atomic_write, fingerprint, markdown_table, write_csv
from lit_attacks.tables import plots
from lit_attacks import official as off
from lit_attacks.tables.base import TABLES, Cell, CellContext, Plan, Run, Table, Written, slug
from lit_attacks.tasks import create_task
from lit_attacks.transfer import PGD_CENTRES, PGD_STARTS, official_transfer_counts, variant_names

FLOWADV_KINDS = {"flow": {}, "paper": {"perturbation": "paper", "counting": "paper"}}  # FlowAdv's parameters

COLUMNS = ["source", "target", "attack", "counting", "eligible", "flipped", "flip_rate"]
COUNTINGS = ("strict", "official")
VARIANT_LABELS = {"stadv": "stAdv", "flowadv": "FlowAdv"}
RMSE_COLUMNS = ["source", "attack", "passed", "rmse_pm1", "rmse_255", "samples", "rmse_pm1_all", "rmse_255_all"]


def rmse_rows(source: str, records: Sequence[Dict[str, Any]], variants: Sequence[str]) -> List[Dict[str, Any]]:
    """Per variant, the mean RMSE of the saved 8-bit image (``<variant>:rmse``, 0-255) over the samples that passed on
    the source and over every sample it ran on (status ok), on 0-255 and in the ICLR text's [-1, 1] units
    (/ 127.5)."""
    def mean(xs: List[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    out = []
    for v in variants:
        ran = [r for r in records if r.get(f"{v}:status") == "ok"]
        passed = [r[f"{v}:rmse"] for r in ran if r.get(f"{v}:pass")]
        every = [r[f"{v}:rmse"] for r in ran]
        out.append({"source": source, "attack": v, "passed": len(passed), "rmse_pm1": mean(passed) / 127.5,
                    "rmse_255": mean(passed), "samples": len(every), "rmse_pm1_all": mean(every) / 127.5,
                    "rmse_255_all": mean(every)})
    return out
LIST_VARIANT = "stadv"  # the official sample list: the samples whose stAdv attack on the source was kept


def table3_rows(source: str, target: str, records: Sequence[Dict[str, Any]], variants: Sequence[str],
                counting: str = "strict", list_variant: str = LIST_VARIANT,
                keys: Optional[Sequence[str]] = None) -> List[Dict]:
    """One row per variant with its eligible samples and how many of them the adversarial image flips on the
    target, counted ``strict``-ly or as the ``official`` notebook does (see :mod:`lit_attacks.transfer`).

    The official counting runs over a fixed sample list: the samples whose ``list_variant`` passed on the source
    (flipped it as an 8-bit image within ``rmse_max``; the notebook's list is stAdv's), or, given, the samples of
    ``keys`` (an explicit list, such as the ICLR FlowAdv list kept by an RMSE filter and a visual check). ``keys``
    restricts the strict counting to its samples too."""
    rows = []
    if keys is not None:
        wanted = set(keys)
        records = [r for r in records if r["key"] in wanted]
    if counting == "official":
        kept = records if keys is not None else [r for r in records if r.get(f"{list_variant}:pass")]
        d0 = [r["s_other"] if r["prey"] == 1 else r["s_prey"] for r in kept]  # the target's distances to p0, p1
        d1 = [r["s_prey"] if r["prey"] == 1 else r["s_other"] for r in kept]
        counts = official_transfer_counts(d0, d1, [r["judge"] for r in kept],
                                          {v: [r[f"{v}:s_adv"] for r in kept] for v in variants})
        for v in variants:
            n, k = counts["accurate"], counts["flipped"][v]
            rows.append({"source": source, "target": target, "attack": v, "counting": counting, "eligible": n,
                         "flipped": k, "flip_rate": k / n if n else float("nan")})
        return rows
    for v in variants:
        elig = [r for r in records if r.get(f"{v}:pass") and r["source_agreed"] and r["target_agrees"]]
        flipped = sum(r[f"{v}:transfers"] for r in elig)
        rows.append({"source": source, "target": target, "attack": v, "counting": counting, "eligible": len(elig),
                     "flipped": flipped, "flip_rate": flipped / len(elig) if elig else float("nan")})
    return rows


def table3_markdown(rows: Sequence[Dict[str, Any]], variants: Sequence[str]) -> str:
    """Rows = (source, target), columns = attacks, cells = flipped / eligible (%)."""
    by: Dict[Any, Dict[str, str]] = {}
    for r in rows:
        cell = f"{r['flipped']}/{r['eligible']} ({100 * r['flip_rate']:.0f}%)" if r["eligible"] else "0/0"
        by.setdefault((r["source"], r["target"]), {})[r["attack"]] = cell
    lines = ["| source | target | " + " | ".join(variants) + " |", "|" + "---|" * (len(variants) + 2)]
    for (s, t), cells in by.items():
        lines.append(f"| {s} | {t} | " + " | ".join(cells.get(v, "-") for v in variants) + " |")
    return "\n".join(lines) + "\n"


@TABLES.register("table3")
class Table3(Table):
    name = "table3"
    order = 40
    options = (
        Option("transfer", False, "bool", "transfer benchmark (Table 3) from --source", switch=True),
        Option("source", ["lpips_alex"], "names", "comma-separated source metrics for --transfer"),
        Option("rmse_max", 8.0, "number", "imperceptibility bound (RMSE, 0-255) for --transfer"),
        Option("flowadv_width", None, "int", "FlowAdv CNN width for --transfer (paper 256; CPU default 32)",
               optional=True, minimum=1),
        Option("transfer_counting", "strict", help="Table 3 counting: strict (ours) or official (the official "
                                                   "notebook)", choices=COUNTINGS),
        Option("transfer_list", LIST_VARIANT, help="official counting: the variant whose passing samples form the "
                                                   "fixed list (stadv: the notebook's; flowadv: ICLR Table 3's)"),
        Option("transfer_keys", None, help="official counting: a file of sample keys forming the fixed list instead "
                                           "(e.g. the official ICLR FlowAdv list)", optional=True),
        Option("transfer_pgd_start", "float", help="spatial + PGD(k) starts from the spatial image as computed "
                                                   "(float, ours) or as its saved 8-bit PNG (saved, the official "
                                                   "script)", choices=PGD_STARTS),
        Option("transfer_pgd_centre", "prey", help="the eps ball of spatial + PGD(k): around the clean prey (prey, "
                                                   "the official script) or around the spatial image (start, what "
                                                   "the ICLR text's RMSE implies)", choices=PGD_CENTRES),
        Option("transfer_flowadv", "flow", help="FlowAdv in the transfer generation: flow (ours: flow-smoothness "
                                                "loss, final image) or paper (ICLR Eq. 7-9 and Algorithm 2's "
                                                "acceptance)", choices=tuple(FLOWADV_KINDS)),
    )
    config = defaults(options)
    files = ("table3.csv", "table3.md", "transfer_rmse.csv", "transfer_rmse.md")
    example = {"metrics": ["l2"], "attacks": {}, "transfer": True, "source": ["l2"], "flowadv_width": 4}

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        super().validate(cfg)
        for m in cfg["source"] or []:
            try:
                METRICS.get(m)
            except KeyError as e:
                raise ConfigError("--source: " + str(e.args[0])) from None
        if cfg["rmse_max"] <= 0:
            raise ConfigError(f"rmse_max must be > 0, got {cfg['rmse_max']}")
        if cfg["transfer_list"] not in variant_names():
            raise ConfigError(f"transfer_list must be one of the variants ({', '.join(variant_names())}), got "
                              f"{cfg['transfer_list']!r}")
        if cfg["transfer_keys"] is not None:
            off.read_key_list(cfg["transfer_keys"], cfg["split"])  # one-line error if unreadable

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        if not cfg["transfer"]:
            return Plan()
        return Plan(cells=len(cfg["source"]) * (1 + len(cfg["metrics"])), metrics=list(cfg["source"]))

    def cells(self, run: Run) -> Iterator[Cell]:
        cfg = run.cfg
        on_gpu = torch.cuda.is_available() and run.devices["accelerator"] != "cpu"
        width = cfg["flowadv_width"] or (256 if on_gpu else 32)
        if width != 256:
            run.say(f"FlowAdv CNN width {width} (the paper uses 256; --flowadv-width 256 for the full model)")
        spec = {"width": width, "rmse_max": cfg["rmse_max"], "pgd_start": cfg["transfer_pgd_start"],
                "pgd_centre": cfg["transfer_pgd_centre"], "flowadv": cfg["transfer_flowadv"]}
        keys = off.read_key_list(cfg["transfer_keys"], cfg["split"]) if cfg["transfer_keys"] else None  # read once
        for src in cfg["source"]:
            gen = Cell(f"transfer-gen-{slug(src)}", f"transfer: adversarial variants on {src}", spec,
                       partial(self.generate, run, src, width), info={"source": src})
            yield gen
            gen_payload = self.done[gen.id][1]
            gen_fp = fingerprint(run.rows(gen.id, self.source_csv(src)))
            for target in cfg["metrics"]:
                yield Cell(f"transfer-{slug(src)}-to-{slug(target)}", f"transfer: {src} -> {target}",
                           {**spec, "gen": gen_fp, "counting": cfg["transfer_counting"], "list": cfg["transfer_list"],
                            "keys": fingerprint(keys) if keys else None},
                           partial(self.score, run, src, target, gen_payload["variants"], keys),
                           info={"source": src, "target": target})

    @staticmethod
    def source_csv(src: str) -> str:
        return f"transfer/source-{slug(src)}.csv"

    @staticmethod
    def shards(run: Run, src: str):
        return run.out / "transfer" / f"adv-{slug(src)}"

    def generate(self, run: Run, src: str, width: int, ctx: CellContext) -> Dict[str, Any]:
        cfg = run.cfg
        flowadv = {"width": width, **FLOWADV_KINDS[cfg["transfer_flowadv"]]}
        gen = create_task("transfer_generate", metric=src, rmse_max=cfg["rmse_max"],
                          spatial_params={"flowadv": flowadv}, batch_invariant=cfg["batch_invariant"],
                          uint8=cfg["uint8"], pgd_start=cfg["transfer_pgd_start"],
                          pgd_centre=cfg["transfer_pgd_centre"], **run.metric_options())
        shard_dir = self.shards(run, src)
        run.clear(f"transfer/adv-{slug(src)}")  # shards of an earlier attempt
        rows = SampleRows()
        run.predict(gen, [rows, AdvShardWriter(str(shard_dir), prefix=f"adv-{slug(src)}")],
                    run.datamodule(unanimous_only=True))
        ctx.save_rows(self.source_csv(src), rows.rows, rows.columns)
        ctx.track(f"transfer/adv-{slug(src)}")
        return {"variants": gen.variants}

    def score(self, run: Run, src: str, target: str, variants: List[str], keys: Optional[List[str]],
              ctx: CellContext) -> Dict[str, Any]:
        scorer = create_task("transfer_score", metric=target, variants=variants, **run.metric_options())
        rows = SampleRows()
        run.predict(scorer, [rows], AdvShardDataModule(str(self.shards(run, src)), run.cfg["batch_size"]))
        ctx.save_rows(f"transfer/{slug(src)}-to-{slug(target)}.csv", rows.rows, rows.columns)
        return {"rows": table3_rows(src, scorer.metric.label, rows.rows, variants, run.cfg["transfer_counting"],
                                    run.cfg["transfer_list"], keys)}

    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        return [r for cell, payload in self.done.values() if "target" in cell.info for r in payload["rows"]]

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        title = self.title(run.cfg)
        if not rows:
            return Written(title)
        write_csv(run.out / "table3.csv", rows, COLUMNS)
        variants = list(dict.fromkeys(r["attack"] for r in rows)) or variant_names()
        md = table3_markdown(rows, variants)
        atomic_write(run.out / "table3.md", "# Table 3: transfer of adversarial examples (flipped / eligible)\n\n" + md)
        fig = plots.transfer_heatmap(rows, run.out / "plots" / "transfer.png")
        sizes = [r for cell, _ in self.done.values() if "target" not in cell.info
                 for r in rmse_rows(cell.info["source"], run.rows(cell.id, self.source_csv(cell.info["source"])),
                                    variants)]
        write_csv(run.out / "transfer_rmse.csv", sizes, RMSE_COLUMNS)
        atomic_write(run.out / "transfer_rmse.md", "# Mean RMSE of each transfer variant (the ICLR text's Section "
                     "4.2 numbers are in [-1, 1] units: rmse_pm1; ours on 0-255: rmse_255)\n\nThe saved 8-bit "
                     "image against the 8-bit prey; over the samples that passed on the source, and over every "
                     "sample the attack ran on.\n\n" + markdown_table(sizes, RMSE_COLUMNS, digits=4))
        return Written(title, md, [fig] if fig is not None else [])

    @staticmethod
    def title(cfg: Dict[str, Any]) -> str:
        if cfg["transfer_counting"] == "official":
            variant = VARIANT_LABELS.get(cfg["transfer_list"], cfg["transfer_list"])
            which = "the given key list" if cfg["transfer_keys"] else \
                f"samples whose {variant} passed on the source (RMSE <= {cfg['rmse_max']:g})"
            return f"Table 3 (transfer, official counting: {which}; eligible = the target ranks like the humans)"
        return (f"Table 3 (transfer; eligible = passed the source flip with RMSE <= {cfg['rmse_max']} "
                "and both metrics ranked like the humans)")
