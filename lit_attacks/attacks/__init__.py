"""Attacks on perceptual metrics, created by name from :data:`ATTACKS`."""
from __future__ import annotations

from typing import Any, List

from lit_attacks.attacks.base import RECORD_COLUMNS, AttackModule, AttackResult
from lit_attacks.attacks.combined import SpatialPGD
from lit_attacks.attacks.fgsm import FGSM
from lit_attacks.attacks.flowadv import FlowAdv
from lit_attacks.attacks.one_pixel import OnePixel
from lit_attacks.attacks.pgd import PGD
from lit_attacks.attacks.stadv import StAdv
from lit_attacks.registry import Registry

ATTACKS = Registry("attack")
ATTACKS.register("fgsm")(FGSM)
ATTACKS.register("pgd")(PGD)
ATTACKS.register("onepixel")(OnePixel)
ATTACKS.register("stadv")(StAdv)
ATTACKS.register("flowadv")(FlowAdv)
ATTACKS.register("spatial_pgd")(SpatialPGD)


def create_attack(name: str, metric: str, **kwargs: Any) -> AttackModule:
    """Build attack ``name`` against ``metric``; unknown names raise with close matches."""
    return ATTACKS.get(name)(metric=metric, **kwargs)


def list_attacks(pattern: str = "*") -> List[str]:
    return ATTACKS.names(pattern)


__all__ = ["ATTACKS", "AttackModule", "AttackResult", "FGSM", "FlowAdv", "OnePixel", "PGD", "SpatialPGD", "StAdv", "RECORD_COLUMNS", "create_attack",
           "list_attacks"]
