"""What an attack costs per sample, in metric evaluations (a forward pass 1, a forward and backward pass 3): the
work the bench's ETA counts (cells differ by orders of magnitude: a Table 1 cell scores each sample twice, a PGD(30)
cell evaluates it about 90 times), from the attack's parameters and its own defaults. An estimate: an early stop
only makes the work smaller."""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict

from lit_attacks.attacks.registry import ATTACKS

SCORE = 2.0  # d(ref, p0) and d(ref, p1)


def _defaults(cls) -> Dict[str, Any]:
    try:
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        return {}


def attack_cost(name: str, params: Dict[str, Any]) -> float:
    """Metric evaluations per sample of ``name`` with ``params`` (the prey's scoring and the re-scoring included)."""
    try:
        cls = ATTACKS.get(name)
    except KeyError:
        return 100.0
    p = {**_defaults(cls), **(params or {})}
    if name == "worst_case":
        shared = {k: p[k] for k in ("eps", "norm", "target", "eot") if k in p}
        return SCORE + sum(attack_cost(e["attack"], {**shared, **(e.get("params") or {})})
                           for e in p.get("attacks") or [])
    if name == "min_eps":
        return SCORE + (int(p.get("bisections", 8)) + 1) * attack_cost(p.get("attack", "apgd"), p.get("params") or {})
    grad = 1.0 if getattr(cls, "black_box", False) else 3.0
    eot = max(1, int(p.get("eot", 1) or 1))
    if "population" in p and "generations" in p:  # differential evolution
        steps = float(p["population"]) * (int(p["generations"]) + 1)
    elif "max_eps" in p and "step" in p:  # FGSM's scan: one gradient, then on average half the grid
        steps = 1 + 0.5 * math.ceil(float(p["max_eps"]) / float(p["step"])) / grad
    else:
        steps = float(p.get("steps") or p.get("iterations") or p.get("queries") or 10)
        steps *= int(p.get("restarts", 1) or 1)
    return SCORE + 1 + steps * grad * eot
