"""What the machine can hold: sizes a user sets are checked against it before the memory is asked for.

:func:`check_memory` refuses, in one line naming the argument and the limit, a tensor (or a batch) larger than the
memory available on its device: the free RAM (``MemAvailable``) for the CPU, the free memory of the GPU for CUDA. It
is a lower bound on what the work needs, so a refusal is never wrong; work that passes may still need more (a
metric's activations), which the device's own out-of-memory error then reports.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from lit_attacks.safe_files import InputError

MEMORY_SHARE = 0.9  # at most this share of the available memory in one request


class SizeError(InputError):
    """A size a user set (an argument or a config key) that this machine cannot hold; the message names both."""


def memory_available(device: Union[str, object, None] = None) -> Optional[int]:
    """Bytes free on ``device`` (a torch device or its name; None: the CPU), or None when it cannot be told."""
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    if kind == "cuda":
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except Exception:  # no driver, another process holding the GPU: no check rather than a wrong one
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_memory(nbytes: float, what: str, fix: str, device: Union[str, object, None] = None) -> None:
    """Raise :class:`SizeError` when ``nbytes`` exceed :data:`MEMORY_SHARE` of the memory available on ``device``:
    ``"<what> needs at least <n> GB; <device> has <m> GB available: <fix>"``."""
    free = memory_available(device)
    if free is not None and nbytes > MEMORY_SHARE * free:
        where = "the GPU" if "cuda" in str(getattr(device, "type", device)) else "this machine"
        raise SizeError(f"{what} needs at least {gb(nbytes)} of memory; {where} has {gb(free)} available: {fix}")


def check_count(value: int, limit: int, what: str, fix: str) -> None:
    """Raise :class:`SizeError` when a count (grid points, candidates, draws) is above what this implementation
    handles (``limit``, named in the message)."""
    if value > limit:
        raise SizeError(f"{what} is {value:.3g}, above the {limit:,} this implementation handles: {fix}")
