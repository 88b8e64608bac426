"""Pixel-wise distances."""
from __future__ import annotations

from torch import Tensor

from lit_attacks.metrics.base import Distance
from lit_attacks.metrics.registry import METRICS


class L2Distance(Distance):
    """Mean squared difference over channels and pixels, on [-1, 1] (as the official ``calc_l2``)."""

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return ((ref - x) ** 2).mean(dim=(1, 2, 3))


class L1Distance(Distance):
    """Mean absolute difference over channels and pixels, on [-1, 1]."""

    def _distance(self, ref: Tensor, x: Tensor) -> Tensor:
        return (ref - x).abs().mean(dim=(1, 2, 3))


@METRICS.register(
    "l2",
    what="mean squared difference on [-1, 1], as the official code",
    distance="as is",
    weights="none",
    calibrated="the closed form (tested against the formula)")
def l2(**kw) -> Distance:
    return L2Distance(**kw)


@METRICS.register(
    "l1",
    what="mean absolute difference on [-1, 1]",
    distance="as is",
    weights="none",
    calibrated="the closed form")
def l1(**kw) -> Distance:
    return L1Distance(**kw)
