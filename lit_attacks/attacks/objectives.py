"""Pure tensor functions shared by the attacks: prey choice, losses, flips, perturbation statistics."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from lit_attacks.attacks.output import PIXEL_THRESHOLDS


def choose_prey(s0: Tensor, s1: Tensor) -> Tensor:
    """(B,) index of the prey, the image the metric finds closer: 1 if s0 > s1 else 0 (ties -> p0, as the official code)."""
    return (s0 > s1).long()


def split_prey(p0: Tensor, p1: Tensor, s0: Tensor, s1: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(prey, other, s_prey, s_other) given the two images and their distances."""
    idx = choose_prey(s0, s1).bool()
    m = idx.view(-1, 1, 1, 1)
    return torch.where(m, p1, p0), torch.where(m, p0, p1), torch.where(idx, s1, s0), torch.where(idx, s0, s1)


def agrees_with_humans(judge: Tensor, prey: Tensor, tied: Optional[Tensor] = None) -> Tensor:
    """(B,) the metric ranked like the humans: its closer image (``prey`` index) is the one people preferred
    (judge > 0.5: p1). A tie (s0 == s1, ``tied``) ranks nothing, so it never agrees: the prey of a tie is p0
    by convention (as the official code), which would otherwise count as agreeing whenever the judge is 0."""
    agreed = (judge > 0.5) == prey.bool()
    return agreed if tied is None else agreed & ~tied


def rank_loss(s_other: Tensor, s_adv: Tensor) -> Tensor:
    """(B,) the official loss the white-box attacks ascend: MSE(s_other / (s_other + s_adv), 1) per sample."""
    return (s_other / (s_other + s_adv) - 1) ** 2


def project_linf(x: Tensor, centre: Tensor, eps: float) -> Tensor:
    """``x`` projected into the l_inf ball of radius ``eps`` around ``centre`` and into [-1, 1]."""
    return torch.clamp(centre + torch.clamp(x - centre, -eps, eps), -1, 1)


def flipped(s_adv: Tensor, s_other: Tensor) -> Tensor:
    """(B,) True where the adversarial prey is now farther than the other image: a rank flip."""
    return s_adv > s_other


def one_pixel_fitness(s_adv: Tensor, s_other: Tensor) -> Tensor:
    """Fitness minimised by One-pixel (paper appendix A.3): 1 - s_adv / (s_adv + s_other)."""
    return 1 - s_adv / (s_adv + s_other)


def quantize(x: Tensor) -> Tensor:
    """[-1, 1] -> the nearest 8-bit value, back in [-1, 1]: what a saved PNG holds."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1)


def perturbation_stats(prey: Tensor, adv: Tensor) -> Dict[str, Tensor]:
    """Per-sample RMSE and PSNR on the 0-255 scale, l_inf, and ``fractions`` (B, T) of values with |adv - prey| > t.

    RMSE uses the float images scaled to 0-255 (the official script truncates to uint8 first, which
    differs by well under one grey level); PSNR = 20 log10(255 / RMSE), inf for an unchanged image.
    """
    delta = (adv - prey).flatten(1)  # (B, 3HW) on [-1, 1]
    rmse = torch.sqrt(((delta * 127.5) ** 2).mean(1))
    psnr = 20 * torch.log10(255.0 / rmse)
    fractions = torch.stack([(delta.abs() > t).float().mean(1) for t in PIXEL_THRESHOLDS], 1)
    return {"rmse": rmse, "psnr": psnr, "linf": delta.abs().amax(1), "fractions": fractions}
