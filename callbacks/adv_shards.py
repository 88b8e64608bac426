"""Writing adversarial examples as webdataset shards (for transfer runs), one shard per rank."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytorch_lightning as pl
import torch.distributed as dist
from PIL import Image

from lit_attacks.datamodules.shards import INDEX, sha256
from lit_attacks.report import atomic_file, atomic_write


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class AdvShardWriter(pl.Callback):
    """Saves, for every sample of the typed batch outputs, each of its ``images`` (8-bit PNG; ref, other,
    prey, adv or the transfer variants) and its row (``record.json``).

    Needs outputs with images (``AttackModule(keep_images=True)``). Each rank writes
    ``<prefix>-rank<r>.tar`` (via a temporary name); after all ranks finish, rank 0 writes
    ``index.json`` with the keys and sha256 of each shard. Keys are the BAPPS keys.
    """

    def __init__(self, out_dir: str, prefix: str = "adv") -> None:
        self.out_dir, self.prefix = Path(out_dir), prefix
        self._tar = None
        self._keys: List[str] = []

    def _name(self, rank: int) -> str:
        return f"{self.prefix}-rank{rank:03d}.tar"

    def on_predict_start(self, trainer, pl_module) -> None:
        self._file = atomic_file(self.out_dir / self._name(trainer.global_rank))  # through the results folder's guard
        self._tar = tarfile.open(self._file.__enter__(), "w", format=tarfile.USTAR_FORMAT)
        self._keys = []

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._tar is not None:  # the temporary shard is removed; nothing half-written stays
            self._tar.close()
            self._tar = None
            self._file.__exit__(type(exception), exception, None)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs.images is None:
            raise RuntimeError("AdvShardWriter needs outputs with images: build the attack with keep_images=True")
        for i, row in enumerate(outputs.rows()):
            for n, im in outputs.images.items():
                self._add(f"{row['key']}.{n}.png", _png(im[i].numpy()))
            self._add(f"{row['key']}.record.json", json.dumps(row).encode())
            self._keys.append(row["key"])

    def on_predict_end(self, trainer, pl_module) -> None:
        self._tar.close()
        self._tar = None
        self._file.__exit__(None, None, None)
        final = self.out_dir / self._name(trainer.global_rank)
        entry = {"name": final.name, "count": len(self._keys), "keys": self._keys}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: List[Dict[str, Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(parts, entry)
        else:
            parts = [entry]
        if trainer.is_global_zero:
            for p in parts:
                p["sha256"] = sha256(self.out_dir / p["name"])
                p["size"] = (self.out_dir / p["name"]).stat().st_size
            index = {"format": 1, "kind": "adversarial", "count": sum(p["count"] for p in parts), "shards": parts}
            atomic_write(self.out_dir / INDEX, json.dumps(index, indent=1))
