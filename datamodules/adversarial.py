"""Reading adversarial shards (written by ``lit_attacks.callbacks.adv_shards.AdvShardWriter``) for transfer runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lit_attacks.datamodules.bapps import ShardLoader, ShardStream, index_field, shard_urls
from lit_attacks.datamodules.streaming import SkipLog, to_tensor
from lit_attacks.datamodules.tree import BappsDataError, check_key, decode_png

REQUIRED = ("ref.png", "other.png", "prey.png", "record.json")


def validate_adv(src: Iterable[dict], skip: Optional[SkipLog]) -> Iterator[dict]:
    for s in src:
        shard, key = s.get("__url__", "?"), s.get("__key__", "?")
        where = f"shard {shard}, key {key}"
        try:
            check_key(key, where)
            fields = {k for k in s if not k.startswith("__")}
            missing = [m for m in REQUIRED if m not in fields]
            if missing:
                raise BappsDataError(f"{where}: missing members {missing}")
            extra = sorted(f for f in fields - set(REQUIRED) if not f.endswith(".png"))
            if extra:
                raise BappsDataError(f"{where}: unexpected members {extra}")
            try:
                record = json.loads(s["record.json"])
            except json.JSONDecodeError as e:
                raise BappsDataError(f"{where}: record.json is not JSON ({e})") from e
            yield {"key": key, "shard": shard, "record": record,
                   "png": {f[:-4]: s[f] for f in sorted(fields) if f.endswith(".png")}}
        except BappsDataError as e:
            if skip is None:
                raise
            skip.add(str(e))


def decode_adv(src: Iterable[dict], size: int, skip: Optional[SkipLog]) -> Iterator[dict]:
    for s in src:
        where = f"shard {s['shard']}, key {s['key']}"
        imgs = {n: to_tensor(decode_png(b, f"{where}, {n}.png"), size) for n, b in s["png"].items()}
        yield {"key": s["key"], "record": json.dumps(s["record"]),
               "judge": torch.tensor(float(s["record"]["judge"])),
               "ref": imgs.pop("ref"), "other": imgs.pop("other"), "prey": imgs.pop("prey"), "adv": imgs}


class AdvShardDataModule(pl.LightningDataModule):
    """Batches of adversarial samples: key, record (JSON str), judge, ref, other, prey (B, 3, S, S) and
    ``adv``: dict variant -> (B, 3, S, S). Split across DDP ranks like :class:`BappsDataModule`.

    Args:
        folder: a folder written by ``AdvShardWriter`` (``index.json`` + tars).
        batch_size: samples per batch.
        load_size: images are (already) this size; others are resized.
    """

    def __init__(self, folder: str, batch_size: int = 32, load_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def predict_dataloader(self) -> DataLoader:
        folder = Path(self.hparams.folder)
        urls: List[str] = shard_urls(folder)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        ds = ShardStream(urls, lambda s: True, self.hparams.load_size, rank, world, "sample",
                         validate=validate_adv, decode=decode_adv, expected=index_field(folder, "keys"),
                         compression=index_field(folder, "compression"))
        return ShardLoader(ds, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)
