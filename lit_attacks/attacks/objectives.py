"""Pure tensor functions shared by the attacks: prey choice, losses, flips, perturbation statistics."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_attacks.attacks.output import PIXEL_THRESHOLDS


def choose_prey(s0: Tensor, s1: Tensor) -> Tensor:
    """(B,) index of the prey, the image the metric finds closer: 1 if s0 > s1 else 0 (ties -> p0, as the official
    code)."""
    return (s0 > s1).long()


def split_prey(p0: Tensor, p1: Tensor, s0: Tensor, s1: Tensor, farther: bool = False
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(prey, other, s_prey, s_other) given the two images and their distances. The prey is the image the
    metric finds closer, or with ``farther`` the other one (the reverse attack's target)."""
    idx = choose_prey(s0, s1).bool() ^ farther
    m = idx.view(-1, 1, 1, 1)
    return torch.where(m, p1, p0), torch.where(m, p0, p1), torch.where(idx, s1, s0), torch.where(idx, s0, s1)


def agrees_with_humans(judge: Tensor, prey: Tensor, tied: Optional[Tensor] = None) -> Tensor:
    """(B,) the metric ranked like the humans: its closer image (``prey`` index) is the one people preferred
    (judge > 0.5: p1). A tie (s0 == s1, ``tied``) ranks nothing, so it never agrees: the prey of a tie is p0
    by convention (as the official code), which would otherwise count as agreeing whenever the judge is 0. No judge
    (nan: triplets given without one) never agrees."""
    agreed = ((judge > 0.5) == prey.bool()) & ~torch.isnan(judge)
    return agreed if tied is None else agreed & ~tied


def rank_loss(s_other: Tensor, s_adv: Tensor, target: float = 1.0) -> Tensor:
    """(B,) the official loss the white-box attacks ascend: MSE(s_other / (s_other + s_adv), target) per sample;
    target 1 pushes the adversarial image away (a rank flip), 0 pulls it closer (the reverse attack)."""
    return (s_other / (s_other + s_adv) - target) ** 2


LOSSES = ("rank", "margin", "ce")


def attack_loss(kind: str, s_adv: Tensor, s_other: Tensor) -> Tensor:
    """(B,) the loss an attack ascends towards a rank flip (``s_adv > s_other``).

    - ``rank``: the paper's ``MSE(s_other / (s_other + s_adv), 1)`` (:func:`rank_loss`); it saturates near the flip
      and its scale depends on the metric's.
    - ``margin``: ``s_adv - s_other``, positive exactly when the rank is flipped (the 2AFC margin; AutoAttack's
      margin losses and robust CLIP metrics' ``binary_margin_loss`` on the logits ``(-d0, -d1)``).
    - ``ce``: ``softplus(s_adv - s_other)``, the cross-entropy of the logits ``(-s_adv, -s_other)`` against
      "the prey is closer" (the default loss of the robust-CLIP evaluation, ``fra31/perceptual-metrics``).
    """
    if kind == "rank":
        return rank_loss(s_other, s_adv)
    if kind == "margin":
        return s_adv - s_other
    if kind == "ce":
        return F.softplus(s_adv - s_other)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")


def project_linf(x: Tensor, centre: Tensor, eps: float) -> Tensor:
    """``x`` projected into the l_inf ball of radius ``eps`` around ``centre`` and into [-1, 1]."""
    return torch.clamp(centre + torch.clamp(x - centre, -eps, eps), -1, 1)


def flipped(s_adv: Tensor, s_other: Tensor, reverse: bool = False) -> Tensor:
    """(B,) True where the adversarial prey is now farther than the other image (a rank flip), or with
    ``reverse`` closer (the reverse attack made the farther image the closer one)."""
    return s_adv < s_other if reverse else s_adv > s_other


def one_pixel_fitness(s_adv: Tensor, s_other: Tensor) -> Tensor:
    """Fitness minimised by One-pixel (paper appendix A.3): 1 - s_adv / (s_adv + s_other)."""
    return 1 - s_adv / (s_adv + s_other)


UINT8_MODES = ("round", "trunc")


def _levels(x: Tensor, mode: str = "round") -> Tensor:
    """[-1, 1] -> 8-bit levels 0..255 (float): ``round`` to the nearest, or ``trunc`` as the official code's
    ``util.tensor2im`` (``((x + 1) * 127.5).astype(np.uint8)``, computed in float32)."""
    if mode == "round":
        return torch.round((x.clamp(-1, 1) + 1) * 127.5)
    if mode == "trunc":
        return torch.trunc((x.clamp(-1, 1).float() + 1) * 127.5).to(x.dtype)
    raise ValueError(f"uint8 mode must be one of {UINT8_MODES}, got {mode!r}")


def quantize(x: Tensor, mode: str = "round") -> Tensor:
    """[-1, 1] -> the 8-bit value a saved PNG holds (see :func:`_levels`), back in [-1, 1]."""
    return _levels(x, mode) / 127.5 - 1


def to_uint8(x: Tensor, mode: str = "round") -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return _levels(x, mode).to(torch.uint8).permute(0, 2, 3, 1)


def perturbation_stats(prey: Tensor, adv: Tensor, uint8: str = "round") -> Dict[str, Tensor]:
    """Per-sample RMSE and PSNR on the 0-255 scale, l_inf, and ``fractions`` (B, T) of values with |adv - prey| > t.

    ``rmse`` uses the float images scaled to 0-255; ``rmse_official`` is the official script's: both
    images truncated to uint8 first (``util.tensor2im``), which for small perturbations reads 5-27% higher.
    PSNR = 20 log10(255 / RMSE), inf for an unchanged image: ``psnr`` of the float images, ``psnr_uint8`` of the
    saved 8-bit adversarial image (made with ``uint8``) against the prey's 8-bit values as read (the clean images
    come from 8-bit files: rounding gives them back exactly).
    """
    delta = (adv - prey).flatten(1)  # (B, 3HW) on [-1, 1]
    rmse = torch.sqrt(((delta * 127.5) ** 2).mean(1))
    d8 = (_levels(adv, "trunc") - _levels(prey, "trunc")).flatten(1)
    psnr = 20 * torch.log10(255.0 / rmse)
    saved = (_levels(adv, uint8) - _levels(prey, "round")).flatten(1)
    psnr_uint8 = (20 * torch.log10(255.0 / torch.sqrt((saved ** 2).mean(1)))).to(rmse.dtype)
    fractions = torch.stack([(delta.abs() > t).float().mean(1) for t in PIXEL_THRESHOLDS], 1)
    return {"rmse": rmse, "rmse_official": torch.sqrt((d8 ** 2).mean(1)).to(rmse.dtype), "psnr": psnr,
            "psnr_uint8": psnr_uint8,
            "linf": delta.abs().amax(1), "fractions": fractions}
