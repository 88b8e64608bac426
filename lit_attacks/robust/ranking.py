"""The LPIPS 2AFC ranking head and loss (Zhang et al. 2018, section 3.3), as pure modules/functions."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RankingHead(nn.Module):
    """Maps two distances to the probability that people preferred p1 (i.e. that ``d1 < d0``).

    A small network of 1x1 layers on ``(d0, d1, d0 - d1, d0 / (d1 + eps), d1 / (d0 + eps))`` with
    ``chn_mid`` hidden channels and LeakyReLU(0.2), ending in a sigmoid: the LPIPS ``Dist2LogitLayer``.
    """

    def __init__(self, chn_mid: int = 32, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.net = nn.Sequential(nn.Linear(5, chn_mid), nn.LeakyReLU(0.2), nn.Linear(chn_mid, chn_mid),
                                 nn.LeakyReLU(0.2), nn.Linear(chn_mid, 1), nn.Sigmoid())

    def forward(self, d0: Tensor, d1: Tensor) -> Tensor:
        """(B,) probabilities from (B,) distances."""
        e = self.eps
        feats = torch.stack([d0, d1, d0 - d1, d0 / (d1 + e), d1 / (d0 + e)], dim=1)  # (B, 5)
        return self.net(feats).squeeze(1)


def ranking_loss(head: RankingHead, d0: Tensor, d1: Tensor, judge: Tensor, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy between ``head(d0, d1)`` and the human judge (fraction who preferred p1).

    The official LPIPS code feeds ``(judge + 1) / 2`` as the target, which maps judges in [0, 1] to
    [0.5, 1]; we use the judge itself, the probability the head is meant to predict.
    """
    p = head(d0, d1).clamp(1e-6, 1 - 1e-6)
    return nn.functional.binary_cross_entropy(p, judge.to(p.dtype), reduction=reduction)
