"""Collecting per-sample records from predict steps, exactly once each, under DDP."""
from __future__ import annotations

from typing import Any, Dict, List

import pytorch_lightning as pl
import torch.distributed as dist


class RecordCollector(pl.Callback):
    """Gathers the lists of per-sample dicts that ``predict_step`` returns.

    After ``trainer.predict`` every rank holds :attr:`records`: the records of all ranks, sorted by
    ``key``. A key seen twice raises (a sample processed by two ranks is a data-splitting bug).
    """

    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []
        self._local: List[Dict[str, Any]] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self._local, self.records = [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._local.extend({k: v for k, v in r.items() if not k.startswith("_")} for r in outputs)

    def on_predict_end(self, trainer, pl_module) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: List[List[Dict[str, Any]]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(parts, self._local)
            merged = [r for part in parts for r in part]
        else:
            merged = list(self._local)
        seen = set()
        for r in merged:
            if r["key"] in seen:
                raise RuntimeError(f"sample {r['key']} was processed more than once across ranks")
            seen.add(r["key"])
        self.records = sorted(merged, key=lambda r: r["key"])
