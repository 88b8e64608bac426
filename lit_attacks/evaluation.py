"""The 2AFC score (paper appendix A.1) as a pure function."""
from __future__ import annotations

import numpy as np


def two_afc(s0: np.ndarray, s1: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """Per-sample 2AFC score (paper appendix A.1): (s0<s1)(1-p) + (s1<s0)p + 0.5 (s0==s1).

    ``p`` (judge) is the fraction of people who preferred p1; s0, s1 are distances (smaller = closer).
    """
    s0, s1, p = (np.asarray(a, dtype=np.float64) for a in (s0, s1, judge))
    return (s0 < s1) * (1 - p) + (s1 < s0) * p + 0.5 * (s0 == s1)
