"""Attacks on perceptual metrics, created by name from :data:`ATTACKS`.

Every module of this package is imported here, and each attack registers itself where it is defined
(``@ATTACKS.register("pgd")``): adding an attack is adding one module.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, List

from lit_attacks.attacks.base import AttackModule, AttackResult, SpatialAttack, spatial_attack, spatial_attack_names
from lit_attacks.attacks.output import AttackOutput, ScoreOutput
from lit_attacks.attacks.registry import ATTACKS

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")


def create_attack(name: str, metric: str, **kwargs: Any) -> AttackModule:
    """Build attack ``name`` against ``metric``; unknown names raise with close matches."""
    return ATTACKS.get(name)(metric=metric, **kwargs)


def list_attacks(pattern: str = "*") -> List[str]:
    return ATTACKS.names(pattern)


__all__ = ["ATTACKS", "AttackModule", "AttackOutput", "AttackResult", "ScoreOutput", "SpatialAttack", "create_attack",
           "list_attacks", "spatial_attack", "spatial_attack_names"]
