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
from torch import Tensor

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


def forward_chunk(metric, like: Tensor, need: int) -> int:
    """Images per call of ``metric`` bound to references (the certification draws', FGSM's scan): the fastest size,
    measured once per metric, device, dtype and image size. ``need`` is the most the caller has to score: at most
    the smallest measured size needs no measurement."""
    if need <= SIZES[0]:
        return max(1, need)
    _, C, H, W = like.shape
    key = ("forward", type(metric).__name__, getattr(metric, "label", ""), str(like.device), like.dtype, C, H, W)
    x0 = like[:1].detach()
    bound: Dict[int, object] = {}

    def run(n: int) -> None:
        x = x0.expand(n, C, H, W).contiguous()
        with torch.no_grad():
            if n not in bound:  # the first of the two timed calls also binds: the faster second one counts
                bound[n] = metric.bind(x)
            bound[n](x.flip(-1))
    return measured_chunk(key, run, like.device)
