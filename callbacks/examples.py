"""Keep a few example triplets (with their adversarial image) for the run's image grid."""
from __future__ import annotations

from typing import Any, Dict, List

import pytorch_lightning as pl


class ExampleCollector(pl.Callback):
    """Rank 0 keeps the first ``k`` flipped samples it sees (topped up with unflipped ones).

    Needs records with ``_images`` (attack modules built with ``keep_images=True``). After predict,
    :attr:`examples` holds dicts with key, images (uint8 HxWx3 ref/other/prey/adv), s_other, s_prey,
    s_adv, flipped.
    """

    def __init__(self, k: int = 6) -> None:
        self.k = k
        self.examples: List[Dict[str, Any]] = []
        self._flipped: List[Dict[str, Any]] = []
        self._other: List[Dict[str, Any]] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self.examples, self._flipped, self._other = [], [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.is_global_zero or len(self._flipped) >= self.k:
            return
        for r in outputs:
            if "_images" not in r:
                return
            pool = self._flipped if r["flipped"] else self._other
            if len(pool) < self.k:
                pool.append({"key": r["key"], "images": r["_images"], "s_other": r["s_other"],
                             "s_prey": min(r["s0"], r["s1"]), "s_adv": r["s_adv"], "flipped": bool(r["flipped"])})

    def on_predict_end(self, trainer, pl_module) -> None:
        self.examples = (self._flipped + self._other)[: self.k]
