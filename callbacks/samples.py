"""Per-sample rows of a predict run, from the typed batch outputs, exactly once each under DDP."""
from __future__ import annotations

from typing import Any, Dict, List

import pytorch_lightning as pl
import torch.distributed as dist


class SampleRows(pl.Callback):
    """Turns the typed output of every ``predict_step`` (:class:`lit_attacks.attacks.ScoreOutput` and its
    subclasses) into per-sample rows and gathers them from every rank.

    After ``trainer.predict`` every rank holds :attr:`rows` (all ranks' rows, sorted by ``key``) and
    :attr:`columns` (the output's column list, which it owns). A key seen twice raises: a sample processed
    by two ranks is a data-splitting bug.
    """

    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.columns: List[str] = []
        self._local: List[Dict[str, Any]] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self._local, self.rows, self.columns = [], [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.columns:
            self.columns = outputs.column_names()
        self._local.extend(outputs.rows())

    def on_predict_end(self, trainer, pl_module) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (self.columns, self._local))
            self.columns = next((cols for cols, _ in parts if cols), [])
            merged = [r for _, part in parts for r in part]
        else:
            merged = list(self._local)
        seen = set()
        for r in merged:
            if r["key"] in seen:
                raise RuntimeError(f"sample {r['key']} was processed more than once across ranks")
            seen.add(r["key"])
        self.rows = sorted(merged, key=lambda r: r["key"])
