"""Attacks built from other registered attacks: the worst case over an ensemble (AutoAttack's protocol) and
the minimum epsilon by bisection. Both re-score every candidate with a fresh forward pass before they
count it, and both hand their threat (prey, reference or both images) to the attacks they run.
"""
from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from lit_attacks.attacks.apgd import check_lp
from lit_attacks.attacks.base import AttackModule, AttackResult
from lit_attacks.attacks.cost import attack_cost
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.attacks.threat import Threat, eps_column, l2_column

# AutoAttack's standard ensemble minus its targeted attacks (2AFC has two classes: the untargeted attack is
# the only one): APGD on two losses, then the black-box Square attack.
STANDARD = ({"attack": "apgd", "params": {"loss": "ce"}},
            {"attack": "apgd", "params": {"loss": "margin"}},
            {"attack": "square", "params": {"queries": 5000}})


def _label(entry: Dict[str, Any]) -> str:
    p = entry.get("params", {})
    return entry.get("label") or entry["attack"] + (f"-{p['loss']}" if "loss" in p else "")


class Composite(AttackModule):
    """An attack that runs registered attacks on its own threat. Sub-attacks are built without a metric of their
    own (they only see the threat); shared settings (eps, norm, target, seed, eot) reach those that take them."""

    def _build(self, entry: Dict[str, Any], shared: Dict[str, Any], need: Optional[str] = None) -> AttackModule:
        if not isinstance(entry, dict) or "attack" not in entry or set(entry) - {"attack", "params", "label"}:
            raise ValueError(f"{self.name}: each attack must be a mapping with 'attack' and optional 'params', "
                             f"'label'; got {entry!r}")
        try:
            cls = ATTACKS.get(entry["attack"])
        except KeyError as e:
            raise ValueError(f"{self.name}: {e.args[0]}") from None
        if isinstance(cls, type) and issubclass(cls, Composite):
            raise ValueError(f"{self.name}: {entry['attack']!r} is itself a composite attack")
        if need and not hasattr(cls, need):
            raise ValueError(f"{self.name}: {entry['attack']!r} cannot run at a per-sample eps; use apgd or pgd")
        accepted = inspect.signature(cls.__init__).parameters
        params = {k: v for k, v in shared.items() if k in accepted}
        params.update(entry.get("params") or {})
        if params.get("target", "prey") not in cls.targets:
            raise ValueError(f"{self.name}: {entry['attack']!r} cannot perturb {params.get('target')!r} "
                             f"(it perturbs {', '.join(cls.targets)})")
        sub = cls(metric="l2", pretrained=False, batch_invariant=self.batch_invariant, **params)
        sub.metric = self.metric  # the threat carries the metric; this is only for messages
        return sub

    def _flips(self, threat: Threat, adv: Tensor, status: Optional[List[str]]) -> Tuple[Tensor, Tensor]:
        """(flipped (B,), margin s_adv - s_other (B,)) of candidates ``adv``, re-scored by fresh forward passes."""
        with torch.no_grad():
            s_adv, s_oth = self._rescore(threat, adv.detach().clamp(-1, 1), threat.s_other_clean, lambda t: t)
        ok = torch.tensor([s == "ok" for s in (status or ["ok"] * len(adv))], dtype=torch.bool, device=adv.device)
        return (s_adv > s_oth) & ok, s_adv - s_oth


@ATTACKS.register("worst_case")
class WorstCase(Composite):
    """The worst case over an ensemble of attacks (AutoAttack's protocol): attacks run in order, each only on the
    samples that no earlier attack flipped; a sample counts as robust only if every attack failed.

    Args:
        metric: victim metric name.
        eps: budget on [-1, 1] images, given to every attack that takes one.
        norm: "linf" or "l2", given to every attack that takes one.
        attacks: the ensemble, in order: ``[{"attack": name, "params": {...}, "label": optional}, ...]``; default
            APGD-CE, APGD-margin (100 steps each) and Square (5000 queries), AutoAttack's untargeted attacks.
        target: the image perturbed ("prey", "ref", "both"), given to every attack.
        eot: gradient samples per step for the attacks that take it (stochastic metrics).
        eot_eval: draws averaged to decide flips on a stochastic metric.
        seed: given to every attack that takes one.
        pretrained, weights_dir, keep_images, batch_invariant, uint8: see :class:`AttackModule`.

    Extra columns: ``flipped_by`` (label of the first attack that flipped the sample, "" if none).
    """

    name = "worst_case"
    targets = ("prey", "ref", "both")
    example_params = {"eps": 0.03, "attacks": [{"attack": "apgd", "params": {"steps": 3}},
                                               {"attack": "square", "params": {"queries": 10}}]}

    @classmethod
    def cost(cls, p: Dict[str, Any], most: bool = False) -> float:
        """Scoring and re-scoring (4), then every attack's own work (its scoring aside) with the shared settings."""
        members = p["attacks"] if p["attacks"] is not None else STANDARD  # as __init__ builds them
        shared = {k: p[k] for k in ("eps", "norm", "target", "eot")}
        return 4 + sum(attack_cost(e["attack"], {**shared, **(e.get("params") or {})}, most=most) - 3
                       for e in members)

    @classmethod
    def max_cost(cls, p: Dict[str, Any]) -> float:
        return cls.cost(p, most=True)

    def __init__(self, metric: str = "lpips_alex", eps: float = 16 / 255, norm: str = "linf",
                 attacks: Optional[List[Dict[str, Any]]] = None, target: str = "prey", eot: int = 1,
                 eot_eval: int = 32, seed: int = 0, **options: Any) -> None:
        check_lp(self.name, eps, norm)
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.set_target(target)
        self.eps, self.norm, self.eot_eval = eps, norm, eot_eval
        entries = copy.deepcopy(list(attacks) if attacks is not None else STANDARD)
        if not entries:
            raise ValueError(f"{self.name}: attacks is empty")
        shared = {"eps": eps, "norm": norm, "target": target, "eot": eot, "eot_eval": eot_eval, "seed": seed}
        self.labels = [_label(e) for e in entries]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{self.name}: attack labels must differ, got {self.labels}; give each a 'label'")
        self._subs = [self._build(e, shared) for e in entries]  # a plain list: not submodules

    @property
    def linf_budget(self) -> Optional[float]:
        return self.eps if self.norm == "linf" else None

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        B, dev = len(threat), threat.centre.device
        adv = threat.centre.detach().clone()
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        best = torch.full((B,), -math.inf, dtype=torch.float64, device=dev)
        iters, queries = torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev)
        nonfinite = torch.zeros(B, dtype=torch.bool, device=dev)
        by, status = [""] * B, ["ok"] * B
        for label, sub in zip(self.labels, self._subs):
            todo = (~done).nonzero().flatten()
            if not len(todo):
                break
            t = threat.select(todo)
            res = sub.attack_threat(t, [keys[int(i)] for i in todo])
            hit, margin = self._flips(t, res.adv, res.status)
            closer = hit | (margin.double() > best[todo])  # unflipped: keep the candidate nearest to a flip
            adv[todo[closer]] = res.adv.detach()[closer].to(adv.dtype)
            best[todo] = torch.maximum(best[todo], margin.double())
            done[todo[hit]] = True
            iters[todo] += res.iterations.clamp(min=0)
            queries[todo] += res.queries
            if res.nonfinite is not None:
                nonfinite[todo] |= res.nonfinite.to(dev)
            for j, i in enumerate(todo.tolist()):
                if hit[j]:
                    by[i] = label
                if res.status and res.status[j] != "ok" and status[i] == "ok":
                    status[i] = res.status[j]
        status = ["ok" if done[i] else s for i, s in enumerate(status)]
        return AttackResult(adv, iters, queries, eps_column(self.eps, B, dev), status=status,
                            nonfinite=nonfinite & ~done, extra={"flipped_by": by, "l2": l2_column(threat, adv)})


@ATTACKS.register("min_eps")
class MinEps(Composite):
    """Each sample's smallest budget at which an attack flips it, by bisection over eps.

    The attack runs at ``eps_max``; for the samples it flips there, ``bisections`` more runs halve the interval
    ``(lo, hi]`` in which the smallest flipping budget lies (lo: largest budget tried that did not flip, hi:
    smallest that did). A sample costs at most ``1 + bisections`` attack runs. The ``eps`` column is ``hi``
    (nan if the attack fails at ``eps_max``), ``eps_lo`` is ``lo``; the adversarial image is the one found at
    ``hi``. For a deterministic attack (fixed per-sample seeds) re-running it at ``hi`` flips and at ``lo`` does
    not. The flip rate at any budget e (the fraction with ``eps <= e``) gives the curve of flip rate against
    eps from one run; the curve assumes that the attack, flipping at ``hi``, would also flip at any larger budget.

    Args:
        metric: victim metric name.
        attack: the attack searched over: "apgd" (l_inf or l_2) or "pgd" (l_inf).
        params: its settings (e.g. ``{"steps": 100}``); eps is set by the search.
        norm: "linf" or "l2" (given to the attack when it takes a norm).
        eps_max: the largest budget tried, on [-1, 1] images.
        bisections: halvings of the interval (resolution ``eps_max / 2 ** bisections``).
        target, seed, eot, eot_eval: given to the attack when it takes them (see :class:`WorstCase`).
        pretrained, weights_dir, keep_images, batch_invariant, uint8: see :class:`AttackModule`.
    """

    name = "min_eps"
    targets = ("prey", "ref", "both")
    example_params = {"params": {"steps": 3}, "eps_max": 0.06, "bisections": 3}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """The attack once at ``eps_max`` and a re-scoring: a sample that does not flip there needs no bisection."""
        return cls._inner(p) + 1

    @classmethod
    def max_cost(cls, p: Dict[str, Any]) -> float:
        """Every sample bisected: the attack at ``eps_max`` and at every halving."""
        return 5 + (int(p["bisections"]) + 1) * (cls._inner(p, most=True) - 3)

    @staticmethod
    def _inner(p: Dict[str, Any], most: bool = False) -> float:
        shared = {k: p[k] for k in ("norm", "target", "eot")}
        return attack_cost(p["attack"], {**shared, **(p["params"] or {}), "eps": p["eps_max"]}, most=most)

    def __init__(self, metric: str = "lpips_alex", attack: str = "apgd", params: Optional[Dict[str, Any]] = None,
                 norm: str = "linf", eps_max: float = 32 / 255, bisections: int = 8, target: str = "prey",
                 eot: int = 1, eot_eval: int = 32, seed: int = 0, **options: Any) -> None:
        check_lp(self.name, eps_max, norm)
        if bisections < 1:
            raise ValueError(f"{self.name}: bisections must be >= 1, got {bisections}")
        if "eps" in (params or {}):
            raise ValueError(f"{self.name}: params must not set eps: the search sets it (give eps_max)")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.set_target(target)
        self.norm, self.eps_max, self.bisections, self.eot_eval = norm, eps_max, bisections, eot_eval
        shared = {"eps": eps_max, "norm": norm, "target": target, "eot": eot, "eot_eval": eot_eval, "seed": seed}
        self.sub = self._build({"attack": attack, "params": dict(params or {})}, shared, need="attack_at")
        if getattr(self.sub, "norm", "linf") != norm:
            raise ValueError(f"{self.name}: {attack!r} attacks l_inf only; use apgd for norm {norm!r}")
        self._subs = [self.sub]

    @property
    def linf_budget(self) -> Optional[float]:
        return self.eps_max if self.norm == "linf" else None

    def attack_threat(self, threat: Threat, keys: Sequence[str]) -> AttackResult:
        B, dev = len(threat), threat.centre.device
        f64 = dict(dtype=torch.float64, device=dev)
        lo, hi = torch.zeros(B, **f64), torch.full((B,), self.eps_max, **f64)
        res = self.sub.attack_at(threat, keys, self.eps_max)
        found, _ = self._flips(threat, res.adv, res.status)
        adv = res.adv.detach().clone()
        iters, queries = res.iterations.clamp(min=0).clone(), res.queries.clone()
        nonfinite = res.nonfinite.clone() if res.nonfinite is not None else torch.zeros(B, dtype=torch.bool, device=dev)
        for _ in range(self.bisections):
            act = found.nonzero().flatten()
            if not len(act):
                break
            mid = (lo[act] + hi[act]) / 2
            t = threat.select(act)
            r = self.sub.attack_at(t, [keys[int(i)] for i in act], mid)
            hit, _ = self._flips(t, r.adv, r.status)
            hi[act[hit]], lo[act[~hit]] = mid[hit], mid[~hit]
            adv[act[hit]] = r.adv.detach()[hit].to(adv.dtype)
            iters[act] += r.iterations.clamp(min=0)
            queries[act] += r.queries
        eps = torch.where(found, hi, torch.full_like(hi, math.nan))
        return AttackResult(adv, iters, queries, eps, nonfinite=nonfinite & ~found,
                            extra={"eps_lo": torch.where(found, lo, torch.full_like(lo, self.eps_max)).tolist(),
                                   "l2": l2_column(threat, adv)})
