"""Keep a few example triplets (with their adversarial image) for the run's image grid."""
from __future__ import annotations

from typing import Any, Dict, List

import pytorch_lightning as pl

from lit_attacks.attacks.output import AttackOutput


class ExampleCollector(pl.Callback):
    """Rank 0 keeps the first ``k`` flipped samples it sees (topped up with unflipped ones).

    Needs outputs with images (attack modules built with ``keep_images=True``). After predict,
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

    def on_predict_batch_end(self, trainer, pl_module, outputs: AttackOutput, batch, batch_idx,
                             dataloader_idx=0) -> None:
        if not trainer.is_global_zero or len(self._flipped) >= self.k or outputs.images is None:
            return
        flipped = outputs.flipped.tolist()
        s_other, s_adv = outputs.s_other.tolist(), outputs.s_adv.tolist()
        s_prey = [min(a, b) for a, b in zip(outputs.s0.tolist(), outputs.s1.tolist())]
        for i, key in enumerate(outputs.key):
            pool = self._flipped if flipped[i] else self._other
            if len(pool) < self.k:
                pool.append({"key": key, "images": {n: im[i].numpy() for n, im in outputs.images.items()},
                             "s_other": s_other[i], "s_prey": s_prey[i], "s_adv": s_adv[i], "flipped": flipped[i]})

    def on_predict_end(self, trainer, pl_module) -> None:
        self.examples = (self._flipped + self._other)[: self.k]
