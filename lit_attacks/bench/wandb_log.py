"""One Weights & Biases run per bench invocation, written by rank 0 only.

Logged: the resolved config; per cell, as it completes, the scalars its table reports (e.g.
``table1/<metric>/<quantity>``, ``predict/<attack>/<metric>/<group>/<quantity>``,
``sweep/<metric>/eps=<e>/flip_rate``); at the end every table's rows (``tables/<name>``), the panels
the tables make (per-sample tables, charts, histograms), the PNG figures and summary scalars.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lit_attacks.wandb_utils import finite, wandb_table


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
            run.log({k: v for k, v in flat.items() if finite(v)})

    def log_final(self, tables: Dict[str, List[Dict[str, Any]]], panels: Dict[str, Any], figures: Sequence[Path],
                  summary: Dict[str, Any]) -> None:
        """Every table's rows, the tables' panels, the figures and summary scalars, in one step."""
        run = self._start()
        if run is None:
            return
        import wandb

        payload: Dict[str, Any] = {f"tables/{name}": wandb_table(rows) for name, rows in tables.items()}
        payload.update(panels)
        for fig in figures:
            payload[f"figures/{fig.stem}"] = wandb.Image(str(fig))
        run.log(payload)
        for k, v in summary.items():
            run.summary[k] = v

    def finish(self) -> Optional[str]:
        """Close the run; returns the offline run folder (for ``wandb sync``) or None."""
        if self.run is None:
            return None
        run_dir = Path(self.run.dir).parent  # <out>/wandb/offline-run-*/files -> the run folder
        self.run.finish()
        self.run = None
        return str(run_dir) if self.mode == "offline" else None
