"""Which image of a 2AFC triplet an attack perturbs, how a perturbation is scored and measured (l_inf, l_2).

The paper perturbs the *prey* (the image the metric finds closer to the reference). Robust-metric
evaluations since also perturb the *reference* (robust CLIP metrics, Croce et al. 2024:
``fra31/perceptual-metrics`` attacks the reference image) or the distorted images (R-LPIPS,
Ghazanfari et al. 2023: ``x_0``, ``x_1``, ``x_0_x_1``, ``ref``). A :class:`Threat` hides which: an attack
sees one variable ``x`` with a centre, a valid range [-1, 1], and ``threat(x) -> (s_adv, s_other)``; it
has flipped the metric's ranking when ``s_adv > s_other``.

- ``prey``: ``x`` is the prey (B, 3, H, W); ``s_adv = d(ref, x)``, ``s_other = d(ref, other)`` fixed.
- ``ref``: ``x`` is the reference; ``s_adv = d(x, prey)``, ``s_other = d(x, other)`` (both move).
- ``both``: ``x`` is prey and other stacked on channels (B, 6, H, W), each image in its own ball
  (per-image budgets, as R-LPIPS perturbs each image separately); ``s_adv = d(ref, x[:, :3])``,
  ``s_other = d(ref, x[:, 3:])``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from lit_attacks.metrics import BoundDistance, Distance

TARGETS = ("prey", "ref", "both")
NORMS = ("linf", "l2")


class Threat:
    """A batch of B 2AFC samples seen as one perturbed variable ``x`` (see the module docstring).

    Attributes:
        target: "prey", "ref" or "both".
        centre: (B, C, H, W) the clean variable (C = 6 for "both", else 3).
        parts: images in ``x`` (2 for "both", else 1): norms and budgets apply to each image separately.
    """

    def __init__(self, target: str, metric: Distance, ref: Tensor, prey: Tensor, other: Tensor, s_other: Tensor,
                 bound: Optional[BoundDistance] = None) -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.target, self.metric, self.ref, self.prey, self.other, self.s_other_clean = \
            target, metric, ref, prey, other, s_other
        self.bound = bound if bound is not None or target == "ref" else metric.bind(ref)
        self.parts = 2 if target == "both" else 1
        both = torch.cat([prey, other], 1) if target == "both" else None
        self.centre = {"prey": prey, "ref": ref, "both": both}[target]

    @classmethod
    def on_prey(cls, bound: BoundDistance, prey: Tensor, s_other: Tensor) -> "Threat":
        """The paper's threat from a bound metric (no other image needed: its distance is fixed)."""
        return cls("prey", bound.metric, bound.ref, prey, prey, s_other, bound=bound)

    def __len__(self) -> int:
        return self.centre.shape[0]

    def __call__(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(s_adv, s_other), each (B,): distance of the prey and of the other image after perturbing by ``x``."""
        if self.target == "prey":
            return self.bound(x), self.s_other_clean
        if self.target == "ref":
            d = self.metric(torch.cat([x, x]), torch.cat([self.prey, self.other]), check=False)  # one call, (2B,)
            return d[:len(x)], d[len(x):]
        B = len(x)
        d = self.bound.tile(2)(torch.cat([x[:, :3], x[:, 3:]]))
        return d[:B], d[B:]

    def select(self, idx: Tensor) -> "Threat":
        """The threat of samples ``idx`` (for compaction)."""
        t = Threat.__new__(Threat)
        t.target, t.metric, t.parts = self.target, self.metric, self.parts
        t.ref, t.prey, t.other = self.ref[idx], self.prey[idx], self.other[idx]
        t.s_other_clean, t.centre = self.s_other_clean[idx], self.centre[idx]
        t.bound = None if self.bound is None else self.bound.select(idx)
        return t

    def repeat_interleave(self, k: int) -> "Threat":
        """Each sample repeated ``k`` times in a row (to score k candidates per sample in one call)."""
        return self.select(torch.arange(len(self), device=self.centre.device).repeat_interleave(k))

    def images(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(ref, prey, other) after perturbing by ``x``."""
        if self.target == "prey":
            return self.ref, x, self.other
        if self.target == "ref":
            return x, self.prey, self.other
        return self.ref, x[:, :3], x[:, 3:]


# ------------------------------------------------------------------------------ norms and projections
def per_sample(eps: Union[float, Tensor], B: int, like: Tensor) -> Tensor:
    """(B,) budgets from one number or a (B,) tensor, in ``like``'s dtype and device."""
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    return e.expand(B).clone() if e.ndim == 0 else e


def eps_column(eps: Union[float, Tensor], B: int, device) -> Tensor:
    """(B,) float64 budgets for the per-sample ``eps`` column (exact: not rounded to the images' dtype)."""
    return per_sample(torch.as_tensor(eps, dtype=torch.float64), B, torch.zeros(0, dtype=torch.float64, device=device))


def l2_column(threat: "Threat", adv: Tensor) -> List[float]:
    """Per sample, the largest l_2 norm of the perturbation over the images ``adv`` perturbs (the ``l2`` column)."""
    return lp_norm(adv.clamp(-1, 1) - threat.centre, "l2", threat.parts).amax(1).tolist()


def part_view(x: Tensor, parts: int) -> Tensor:
    """(B, C, H, W) -> (B, parts, C * H * W / parts): one row per perturbed image."""
    return x.reshape(x.shape[0], parts, -1)


def lp_norm(delta: Tensor, norm: str, parts: int = 1) -> Tensor:
    """(B, parts) l_inf or l_2 norm of each perturbed image of ``delta``."""
    v = part_view(delta, parts)
    return v.abs().amax(-1) if norm == "linf" else v.pow(2).sum(-1).sqrt()


def normalize(v: Tensor, norm: str, parts: int = 1) -> Tensor:
    """``v`` scaled so that each image has unit l_inf or l_2 norm (zero stays zero)."""
    n = lp_norm(v, norm, parts)
    return (part_view(v, parts) / (n[..., None] + 1e-12)).view_as(v)


def project(x: Tensor, centre: Tensor, eps, norm: str, parts: int = 1) -> Tensor:
    """``x`` projected into the ``norm`` ball of radius ``eps`` (a float or (B,) per sample) around ``centre``,
    per image, then clipped to [-1, 1] (clipping towards a valid centre never leaves the ball)."""
    delta = x - centre
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if norm == "linf":
        e = e.view(-1, *[1] * (x.ndim - 1)) if e.ndim else e
        delta = torch.maximum(torch.minimum(delta, e), -e)
    elif norm == "l2":
        n = lp_norm(delta, "l2", parts)  # (B, parts)
        e = e.view(-1, 1) if e.ndim else e
        scale = torch.clamp(e / (n + 1e-12), max=1.0)
        delta = (part_view(delta, parts) * scale[..., None]).view_as(delta)
    else:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return (centre + delta).clamp(-1, 1)


def random_start(centre: Tensor, eps, norm: str, parts: int, streams) -> Tensor:
    """A random point of each sample's ball (AutoAttack's start: a uniform or Gaussian direction scaled to norm
    ``eps``), drawn from the sample's own stream (:class:`~lit_attacks.attacks.streams.Streams`, one row per
    sample of ``centre``) so that it does not depend on the batch."""
    shape = tuple(centre.shape[1:])
    t = streams.uniform(shape) * 2 - 1 if norm == "linf" else streams.normal(shape)
    t = t.to(centre.device, centre.dtype)
    e = torch.as_tensor(eps, dtype=centre.dtype, device=centre.device)
    e = e.view(-1, *[1] * (centre.ndim - 1)) if e.ndim else e
    return (centre + e * normalize(t, norm, parts)).clamp(-1, 1)
