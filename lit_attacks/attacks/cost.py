"""What an attack costs per sample, in metric evaluations (a forward pass 1, a forward and backward pass 3): the
work the bench's ETA counts (cells differ by orders of magnitude: a Table 1 cell scores each sample twice, a PGD(30)
cell evaluates it about 94 times). Each attack declares it as a function of its own parameters (``cost``); an early
stop only makes the work smaller."""
from __future__ import annotations

import inspect
from typing import Any, Dict

from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.configuration import ConfigError

SCORE = 2.0  # d(ref, p0) and d(ref, p1)


def _defaults(cls) -> Dict[str, Any]:
    try:
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        return {}


def attack_cost(name: str, params: Dict[str, Any], most: bool = False) -> float:
    """Metric evaluations per sample of attack ``name`` with ``params`` (the prey's scoring and the re-scoring
    included), as the attack declares them (:meth:`lit_attacks.attacks.base.AttackModule.cost`; ``most``: its
    :meth:`~lit_attacks.attacks.base.AttackModule.max_cost`), its defaults filled in."""
    try:
        cls = ATTACKS.get(name)
    except KeyError:
        return 100.0
    p = {**_defaults(cls), **(params or {})}
    try:
        return float(cls.max_cost(p) if most else cls.cost(p))
    except NotImplementedError:  # an attack of the user's without a declaration: one line, before any work
        raise ConfigError(f"attack {name} declares no cost(params): metric evaluations per sample as a function of "
                          "its parameters (see AttackModule.cost)") from None
