"""Per-sample random streams as tensor ops: counter-based draws for a whole batch, on the batch's device.

A sample's draws depend only on (seed, key, stream) and how many numbers that sample has drawn before: the same
alone or in any batch, in any order, on any device. The generator is a counter-based hash (no state but a
counter per sample): the sample's 64-bit key (SHA-256 of ``seed:key:stream``, computed once per sample) and the
64-bit counter of each number are mixed by two rounds of Wellons' ``lowbias32`` (the 2022 constants 0x21f0aaad,
0x735a2d97, shifts 16 / 15 / 15)::

    word = mix(mix(counter_lo ^ key_lo) ^ counter_hi ^ key_hi)

on int64 tensors holding 32-bit words (each product is below 2^63, so the integer stage is exact and bitwise the
same on CPU and CUDA). Uniforms are ``(word + 0.5) / 2^32`` in (0, 1); normals are Box-Muller of two uniforms
made from one counter.
Not cryptographic; the statistical checks are in ``tests/test_streams.py`` (moments, bins, neighbour correlation).
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

MASK = 0xFFFFFFFF
C1, C2 = 0x21F0AAAD, 0x735A2D97
GOLDEN = 0x9E3779B9


def mix(h: Tensor) -> Tensor:
    """``lowbias32`` on 32-bit words held in int64 (values in [0, 2^32)), in place."""
    h ^= h >> 16
    h *= C1
    h &= MASK
    h ^= h >> 15
    h *= C2
    h &= MASK
    h ^= h >> 15
    return h


CHUNK = 1 << 17  # words per block: in-place integer ops on a block that stays in cache (about 2x faster here)


def words(key: Tensor, counter: Tensor, fn: Optional[Callable[[Tensor], Tensor]] = None,
          dtype: torch.dtype = torch.long) -> Tensor:
    """32-bit words (int64 in [0, 2^32)) for keys (B,) and counters (B, N), both int64; with ``fn``, ``fn(words)``
    of each block instead, stored as ``dtype`` (the block stays in cache through the conversion too)."""
    lo, hi = (key & MASK).unsqueeze(1), ((key >> 32) & MASK).unsqueeze(1)
    out = torch.empty(counter.shape, dtype=dtype, device=counter.device)
    step = max(1, CHUNK // max(1, counter.shape[0]))
    for j in range(0, counter.shape[1], step):
        c = counter[:, j:j + step]
        h = mix((c & MASK) ^ lo)
        h ^= (c >> 32) & MASK
        h ^= hi
        h = mix(h)
        out[:, j:j + step] = h if fn is None else fn(h)
    return out


def _uniform(w: Tensor) -> Tensor:
    return w.to(torch.float64).add_(0.5).mul_(2.0 ** -32)


def _normal(w: Tensor) -> Tensor:
    """Box-Muller from one word: ``u1`` from ``w``, ``u2`` from ``mix(w ^ GOLDEN)``, in float64."""
    w2 = mix(w ^ GOLDEN)
    r = _uniform(w).log_().mul_(-2.0).sqrt_()
    return r.mul_(_uniform(w2).mul_(2.0 * math.pi).cos_())


def sample_key(seed: int, key: str, stream: int = 0) -> int:
    """A sample's 63-bit stream key: the same sample gets the same draws whatever its batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:{stream}".encode()).digest()[:8], "little") >> 1


class Streams:
    """One random stream per sample of a batch; ``uniform`` and ``normal`` draw for every sample (or the samples
    ``rows``) at once and advance those samples' counters.

    Args:
        keys: (B,) int64 stream keys (:func:`sample_key`), on the device the draws are made on.
    """

    def __init__(self, keys: Tensor) -> None:
        self.keys = keys.to(torch.long)
        self.used = torch.zeros_like(self.keys)

    @classmethod
    def for_samples(cls, seed: int, keys: Sequence[str], stream: int = 0,
                    device: torch.device | str = "cpu") -> "Streams":
        return cls(torch.tensor([sample_key(seed, k, stream) for k in keys], dtype=torch.long, device=device))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def _counters(self, n: int, rows: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        rows = torch.arange(len(self), device=self.device) if rows is None else rows.to(self.device)
        start = self.used[rows]
        self.used[rows] = start + n
        return self.keys[rows], start.unsqueeze(1) + torch.arange(n, device=self.device)

    def uniform(self, shape: Tuple[int, ...], rows: Optional[Tensor] = None, dtype: torch.dtype = torch.float64
                ) -> Tensor:
        """(R, *shape) uniforms in (0, 1)."""
        u = words(*self._counters(math.prod(shape), rows), fn=_uniform, dtype=torch.float64)
        return u.view(-1, *shape).to(dtype)

    def normal(self, shape: Tuple[int, ...], rows: Optional[Tensor] = None, dtype: torch.dtype = torch.float64
               ) -> Tensor:
        """(R, *shape) standard normals, one counter each (so any split of a draw into chunks gives the same
        numbers): Box-Muller ``sqrt(-2 ln u1) cos(2 pi u2)`` with ``u1`` from the counter's word ``w`` and ``u2``
        from ``mix(w ^ 0x9E3779B9)``, computed in float64 and stored as ``dtype``."""
        z = words(*self._counters(math.prod(shape), rows), fn=_normal, dtype=dtype)
        return z.view(-1, *shape)
