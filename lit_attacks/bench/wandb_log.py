"""One Weights & Biases run per bench invocation, written by rank 0 only.

Logged: the resolved config; per cell its aggregate metrics as they complete
(``table1/<metric>/<quantity>``, ``predict/<attack>/<metric>/<group>/<quantity>``,
``sweep/<metric>/eps=<e>/flip_rate``); at the end the result tables (``tables/table1`` ...), one
per-sample table per cell (``samples/<cell>``), a bar chart of flip rates, RMSE histograms per cell,
the robustness curves and the PNG figures (example grids included).
"""
from __future__ import annotations

import math
import netrc
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str) -> str:
    """``auto``: $WANDB_MODE if set, else online with an API key and offline without one."""
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_api_key() else "offline"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class WandbRun:
    """Lazily started W&B run; every method is a no-op unless ``enabled`` (mode != disabled, rank 0)."""

    def __init__(self, mode: str, project: str, name: str, out: Path, config: Dict[str, Any], enabled: bool) -> None:
        self.mode, self.project, self.name, self.out, self.config = mode, project, name, Path(out), config
        self.enabled = enabled and mode != "disabled"
        self.run = None

    def _start(self):
        if self.run is None and self.enabled:
            import wandb

            self.out.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(project=self.project, name=self.name, dir=str(self.out), config=self.config,
                                  mode=self.mode, job_type="bench", reinit="finish_previous",
                                  settings=wandb.Settings(console="off", silent=True))
        return self.run

    def log_metrics(self, flat: Dict[str, Any]) -> None:
        run = self._start()
        if run is not None:
            run.log({k: v for k, v in flat.items() if _finite(v)})

    def log_final(self, tables: Dict[str, Sequence[Dict[str, Any]]], samples: Dict[str, List[Dict[str, Any]]],
                  rows2: Sequence[Dict[str, Any]], sweep_rows: Sequence[Dict[str, Any]], figures: Sequence[Path]) -> None:
        run = self._start()
        if run is None:
            return
        import wandb

        payload: Dict[str, Any] = {}
        for name, rows in tables.items():
            if rows:
                payload[f"tables/{name}"] = _table(rows)
        for cell, recs in samples.items():
            if recs:
                payload[f"samples/{cell}"] = _table(recs)
        bars = [[f"{r['attack']} / {r['metric']}", 100 * r["flip_rate"]] for r in rows2
                if r["group"] == "all" and _finite(r["flip_rate"])]
        if bars:
            t = wandb.Table(columns=["attack / metric", "flip rate (%)"], data=bars)
            payload["charts/flip_rate"] = wandb.plot.bar(t, "attack / metric", "flip rate (%)",
                                                         title="Rank flips (% of unanimous samples)")
        for cell, recs in samples.items():
            vals = [float(r["rmse"]) for r in recs if r.get("flipped") is True and "rmse" in r]
            if vals:
                payload[f"charts/rmse/{cell}"] = wandb.Histogram(vals)
        if sweep_rows:
            metrics = list(dict.fromkeys(r["metric"] for r in sweep_rows))
            eps = sorted({r["eps"] for r in sweep_rows})
            rate = {(r["metric"], r["eps"]): 100 * r["flip_rate"] for r in sweep_rows}
            payload["charts/robustness"] = wandb.plot.line_series(
                xs=eps, ys=[[rate.get((m, e), float("nan")) for e in eps] for m in metrics], keys=metrics,
                title="Rank flips vs PGD epsilon", xname="epsilon")
        for fig in figures:
            payload[f"figures/{fig.stem}"] = wandb.Image(str(fig))
        run.log(payload)
        for r in rows2:
            if r["group"] == "all":
                run.summary[f"flip_rate/{r['attack']}/{r['metric']}"] = r["flip_rate"]

    def finish(self) -> Optional[str]:
        """Close the run; returns the offline run folder (for ``wandb sync``) or None."""
        if self.run is None:
            return None
        run_dir = Path(self.run.dir).parent  # <out>/wandb/offline-run-*/files -> the run folder
        self.run.finish()
        self.run = None
        return str(run_dir) if self.mode == "offline" else None


def _table(rows: Sequence[Dict[str, Any]]):
    import wandb

    cols = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    data = [[_cell(r.get(c)) for c in cols] for r in rows]
    return wandb.Table(columns=cols, data=data)


def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, dict)):
        return str(v)
    return v
