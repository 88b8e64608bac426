"""LipSim's certificate (Ghazanfari et al., ICLR 2024): a deterministic bound on how far the reference can move
before a 2AFC decision of a 1-Lipschitz cosine metric changes, as LipSim's code computes it, and a sound variant.

LipSim's ``get_certified_accuracy`` (SaraGhazanfari/lipsim, ``lipsim/core/evaluate.py``; read, not copied): with
the unit-normalised embeddings ``e_ref, e_0, e_1`` and ``d_k = 1 - cos(e_ref, e_k)``, the prediction is the image
whose distance is smaller (``argmax`` of ``(d_1, d_0)``: a tie predicts p0), correct when it is the one people
preferred (judge > 0.5: p1), and the radius is ``|d_0 - d_1| / ||e_0 - e_1||`` (a tie: infinite). A sample is
certified at ``eps`` (an l_2 radius on [0, 1] images; LipSim reports 36/255, 72/255, 108/255) when it is correct and
its radius is larger than ``eps``. The argument: ``d_1 - d_0 = e_ref . (e_0 - e_1)`` moves by at most
``||e_ref' - e_ref|| ||e_0 - e_1||``, and the normalised embedding of a 1-Lipschitz network is taken to move by at
most ``||ref' - ref||``.

That last step holds only where the embedding's norm stays at least 1 (normalising ``u`` to ``u / ||u||`` is
``1 / rho``-Lipschitz where ``||u|| >= rho``). **Ours, by its own name** (``radius_sound``): with ``n = ||f(ref)||``
and ``f`` L-Lipschitz, ``||f(ref')|| >= n - L eps``, so the decision is certified while
``margin > ||e_0 - e_1|| L eps / (n - L eps)``, i.e. for ``eps < m n / (L (1 + m))`` with ``m = margin / ||e_0 -
e_1||``; it equals LipSim's radius when ``n = 1 + m`` and is larger for larger embeddings. Both are reported; the
presets named after LipSim quote LipSim's.

A metric offers the certificate by declaring ``embedding_lipschitz(size)``: the Lipschitz constant of its embedding
in l_2 on [0, 1] images of that size, or None where it knows none (LipSim: 1 at 224 x 224, its network's input; at
other sizes its resize comes first and the constant is not 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lit_attacks.attacks.output import ScoreOutput, as_list
from lit_attacks.registry import TASKS
from lit_attacks.scoring import MetricTask

LIPSIM_RADII_255 = (36, 72, 108)  # LipSim's reported radii, l_2 on [0, 1] images, in 1/255


class LipschitzError(ValueError):
    """A metric without a Lipschitz bound for the images it would certify."""


def require_embedding(metric: Any) -> None:
    """One-line :class:`LipschitzError` unless the metric is ``1 - cos`` of embeddings (it has ``embed``)."""
    if not callable(getattr(metric, "embed", None)):
        raise LipschitzError(f"lipschitz certificate: metric {metric.name} is not an embedding distance (1 - cos of "
                             "embeddings), which LipSim's certificate needs")


def lipschitz_constant(metric: Any, size: Tuple[int, int]) -> float:
    """The metric's declared Lipschitz constant of its embedding on [0, 1] images of ``size``; one-line
    :class:`LipschitzError` when it is no embedding distance or declares none."""
    require_embedding(metric)
    declared = getattr(metric, "embedding_lipschitz", None)
    value = declared(tuple(size)) if callable(declared) else None
    if value is None:
        hint = getattr(metric, "lipschitz_hint", "")
        raise LipschitzError(f"lipschitz certificate: metric {metric.name} declares no Lipschitz bound of its "
                             f"embedding for {size[0]}x{size[1]} images{'; ' + hint if hint else ''}")
    return float(value)


def certificates(e_ref: Tensor, e0: Tensor, e1: Tensor, preferred: Tensor, lipschitz: float,
                 cosine_eps: float = 1e-6) -> Dict[str, Tensor]:
    """Per sample, from the raw embeddings (B, D): ``d0, d1`` (1 - cos), ``predicted`` (1: p1 closer; LipSim's
    argmax, a tie predicts p0), ``correct``, ``margin`` = |d0 - d1|, ``bound`` = ||e0 - e1|| of the normalised
    embeddings, ``radius`` (LipSim's, l_2 on [0, 1] images; inf for a tie), ``ref_norm`` = ||f(ref)|| and
    ``radius_sound`` (ours: see the module docstring; 0 for a tie)."""
    def unit(e: Tensor) -> Tensor:
        return e / e.norm(dim=1, keepdim=True)

    cos = torch.nn.CosineSimilarity(dim=1, eps=cosine_eps)
    d0, d1 = 1 - cos(e_ref, e0), 1 - cos(e_ref, e1)
    predicted = (d0 > d1).long()
    correct = predicted == preferred.long()
    margin = (d0 - d1).abs()
    bound = (unit(e0) - unit(e1)).norm(dim=1)
    tie = margin == 0
    m = margin / bound
    radius = torch.where(tie, torch.full_like(m, math.inf), m / lipschitz)
    n = e_ref.norm(dim=1)
    sound = torch.where(tie, torch.zeros_like(m), m * n / (lipschitz * (1 + m)))
    return {"d0": d0, "d1": d1, "predicted": predicted, "correct": correct, "margin": margin, "bound": bound,
            "radius": radius, "ref_norm": n, "radius_sound": sound}


def certified_fraction(correct: Sequence[bool], radius: Sequence[float], eps: float) -> float:
    """Share of samples that are correct with a radius larger than ``eps`` (LipSim's ``radius > eps``)."""
    n = len(correct)
    return sum(bool(c) and r > eps for c, r in zip(correct, radius)) / n if n else math.nan


@dataclass(kw_only=True)
class LipschitzOutput(ScoreOutput):
    """Per-sample Lipschitz certificates (:func:`certificates`); ``preferred``: 1 if people preferred p1."""

    preferred: Tensor
    predicted: Tensor
    correct: Tensor
    margin: Tensor
    bound: Tensor
    radius: Tensor
    ref_norm: Tensor
    radius_sound: Tensor

    def columns(self) -> Dict[str, List[Any]]:
        cols = super().columns()
        for name in ("preferred", "predicted", "correct", "margin", "bound", "radius", "ref_norm", "radius_sound"):
            cols[name] = as_list(getattr(self, name))
        return cols


@TASKS.register("lipschitz", what="LipSim's Lipschitz certificate of the 2AFC decision, and ours (LipschitzOutput "
                                  "rows)")
class LipschitzModule(MetricTask):
    """LipSim's certificate (and the sound one) of one metric's 2AFC decisions, as a predict step.

    Args:
        metric: registry name of a metric that declares ``embedding_lipschitz``.
        pretrained, weights_dir: as for attacks.
        batch_invariant: compute in float64.
    """

    def __init__(self, metric: str = "lipsim", pretrained: bool = True, weights_dir: Optional[str] = None,
                 batch_invariant: bool = False) -> None:
        super().__init__(metric, pretrained, weights_dir, batch_invariant)
        require_embedding(self.metric)

    def predict_step(self, batch: Dict[str, Any], batch_idx: int = 0) -> LipschitzOutput:
        ref, p0, p1 = self.images(batch)
        judge = batch["judge"]
        lip = lipschitz_constant(self.metric, ref.shape[-2:])
        with torch.no_grad():
            e_ref, e0, e1 = (self.metric.embed(x) for x in (ref, p0, p1))
        preferred = (judge > 0.5).to(ref.device)
        c = certificates(e_ref, e0, e1, preferred, lip, getattr(self.metric, "cosine_eps", 1e-6))
        return LipschitzOutput(key=list(batch["key"]), category=list(batch["category"]), judge=judge, s0=c["d0"],
                               s1=c["d1"], preferred=preferred.long(), predicted=c["predicted"],
                               correct=c["correct"], margin=c["margin"], bound=c["bound"], radius=c["radius"],
                               ref_norm=c["ref_norm"], radius_sound=c["radius_sound"])
