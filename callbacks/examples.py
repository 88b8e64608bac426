"""Keep a few example triplets (with their adversarial image) for the run's image grid."""
from __future__ import annotations

import itertools
from typing import Any, Dict, List, Tuple

import pytorch_lightning as pl

from lit_attacks.attacks.output import AttackOutput


class ExampleCollector(pl.Callback):
    """Rank 0 keeps ``k`` examples drawn across the categories: flipped samples first, taken from each category in
    turn (the first ``k`` flipped of each, in the order seen), topped up with unflipped ones the same way.

    Needs outputs with images (attack modules built with ``keep_images=True``). After predict,
    :attr:`examples` holds dicts with key, category, images (uint8 HxWx3 ref/other/prey/adv), s_other, s_prey,
    s_adv, flipped.
    """

    def __init__(self, k: int = 6) -> None:
        self.k = k
        self.examples: List[Dict[str, Any]] = []
        self._pools: Dict[Tuple[bool, str], List[Dict[str, Any]]] = {}  # (flipped, category) -> first k seen

    def on_predict_start(self, trainer, pl_module) -> None:
        self.examples, self._pools = [], {}

    def on_predict_batch_end(self, trainer, pl_module, outputs: AttackOutput, batch, batch_idx,
                             dataloader_idx=0) -> None:
        if not trainer.is_global_zero or outputs.images is None or not self.k:
            return
        flipped = outputs.flipped.tolist()
        s_other, s_adv = outputs.s_other.tolist(), outputs.s_adv.tolist()
        s_prey = [min(a, b) for a, b in zip(outputs.s0.tolist(), outputs.s1.tolist())]
        for i, key in enumerate(outputs.key):
            pool = self._pools.setdefault((bool(flipped[i]), outputs.category[i]), [])
            if len(pool) < self.k:
                pool.append({"key": key, "category": outputs.category[i], "s_other": s_other[i], "s_prey": s_prey[i],
                             "images": {n: im[i].numpy() for n, im in outputs.images.items()}, "s_adv": s_adv[i],
                             "flipped": flipped[i]})

    def on_predict_end(self, trainer, pl_module) -> None:
        categories = list(dict.fromkeys(c for _, c in self._pools))
        picked: List[Dict[str, Any]] = []
        for flipped in (True, False):
            pools = [self._pools.get((flipped, c), []) for c in categories]
            turns = itertools.chain.from_iterable(itertools.zip_longest(*pools))  # one of each category in turn
            picked += [ex for ex in turns if ex is not None]
        self.examples = picked[: self.k]
