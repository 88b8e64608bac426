"""The samples a step loop still runs, and the per-sample state it carries for them (STYLE.md rule 5).

Step loops either keep full-size state and update the running rows by index (Square, stAdv, FlowAdv's one index
into its per-sample parameters) or compact: finished samples leave, and every state tensor must then drop the same
rows. :class:`ActiveSet` does the compaction for all state at once, so a loop cannot forget one tensor::

    run = ActiveSet(torch.arange(B), t=threat, x=x0, best=loss0)
    for i in range(steps):
        ...
        gone = run.leave(flipped)   # batch indices of the samples that left; every state entry keeps the rest
        out[gone] = ...

State entries are tensors with one row per running sample, lists or tuples of them, or objects with
``select(indices)`` (a :class:`lit_attacks.attacks.threat.Threat`); anything else is refused when set, so a
loop cannot carry a value the compaction would silently skip.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ActiveSet:
    """Running samples (:attr:`idx`, batch indices) and their state, as attributes set by keyword or assignment.

    Args:
        idx: (A,) batch indices of the samples that start running.
        **state: per-sample state (see the module docstring), one row per running sample.
    """

    def __init__(self, idx: Tensor, **state: Any) -> None:
        object.__setattr__(self, "idx", idx)
        for name, value in state.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        _check(name, value, len(self.idx))
        object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.idx)

    def leave(self, gone: Tensor) -> Tensor:
        """The running samples where ``gone`` (an (A,) bool mask) is True leave; every state entry (and
        :attr:`idx`) keeps only the others, in order. Returns the batch indices of the samples that left."""
        if gone.shape != self.idx.shape or gone.dtype != torch.bool:
            raise ValueError(f"leave: expected a bool mask of shape {tuple(self.idx.shape)}, got {gone.dtype} "
                             f"{tuple(gone.shape)}")
        left = self.idx[gone]
        if len(left):
            keep = ~gone
            rows = keep.nonzero().flatten()
            for name, value in list(vars(self).items()):
                object.__setattr__(self, name, _rows(value, keep, rows))
        return left


def _rows(value: Any, keep: Tensor, rows: Tensor) -> Any:
    if torch.is_tensor(value):
        return value[keep]
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(v, keep, rows) for v in value)
    return value.select(rows)


def _check(name: str, value: Any, n: int) -> None:
    if torch.is_tensor(value):
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(f"ActiveSet.{name}: a state tensor needs one row per running sample ({n}), got shape "
                             f"{tuple(value.shape)}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check(name, v, n)
    elif not callable(getattr(value, "select", None)):
        raise TypeError(f"ActiveSet.{name}: state must be per-sample tensors, lists of them or objects with "
                        f"select(indices), got {type(value).__name__}")
