"""Batch sizes by measurement: the chunk a scorer runs fastest at, per metric, device and image size.

A scorer's throughput depends on its batch far more than on its arithmetic (on 2 CPU cores SSIM slows at large
batches while LPIPS gains up to a few hundred images; a GPU wants thousands), so a fixed chunk is wrong somewhere.
:func:`measured_chunk` times the scorer at growing sizes (the best of two calls each), stops when the throughput
stops rising, when a call takes longer than ``max_call_s`` or at an out-of-memory error, and caches the winner
under the caller's key for the rest of the process.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Hashable, Sequence

import torch

SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
CACHE: Dict[Hashable, int] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def measured_chunk(key: Hashable, run: Callable[[int], object], device: torch.device,
                   sizes: Sequence[int] = SIZES, max_call_s: float = 1.0, gain: float = 1.03) -> int:
    """The size in ``sizes`` with the most items per second for ``run(n)`` (which scores n items), cached by ``key``.

    Sizes grow while each beats the best so far by ``gain``; a size that runs out of memory ends the search."""
    if key in CACHE:
        return CACHE[key]
    best, best_rate = sizes[0], 0.0
    for n in sizes:
        try:
            times = []
            for _ in range(2):
                _sync(device)
                t0 = time.perf_counter()
                run(n)
                _sync(device)
                times.append(time.perf_counter() - t0)
        except RuntimeError as e:
            if not _out_of_memory(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        rate = n / max(min(times), 1e-9)
        if rate < best_rate * gain:
            break
        best, best_rate = n, rate
        if min(times) > max_call_s:
            break
    CACHE[key] = best
    return best
