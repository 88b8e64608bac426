"""The 2AFC score (paper appendix A.1) as a pure function of tensors."""
from __future__ import annotations

import torch
from torch import Tensor


def two_afc(s0, s1, judge) -> Tensor:
    """(B,) per-sample 2AFC score (paper appendix A.1) in float64: ``(s0<s1)(1-p) + (s1<s0)p + 0.5 (s0==s1)``.

    ``p`` (judge) is the fraction of people who preferred p1; s0, s1 are distances (smaller = closer). Tensors (on
    any device; the result is on that of ``s0``) or array-likes.
    """
    s0, s1, p = (torch.as_tensor(a).detach() for a in (s0, s1, judge))
    s0, s1, p = s0.double(), s1.to(s0.device).double(), p.to(s0.device).double()
    return (s0 < s1).double() * (1 - p) + (s1 < s0).double() * p + 0.5 * (s0 == s1).double()
