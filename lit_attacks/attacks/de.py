"""Differential evolution for many independent searches at once, as tensor operations.

The population of S searches is one tensor (S, P, D) in the unit cube; each generation, mutation,
crossover and bound repair run as tensor ops, and the caller scores all S x P trial vectors in one
call. Every search draws its random numbers from its own counter-based stream (one tensor call for all
searches, :mod:`lit_attacks.attacks.streams`), in a fixed order that depends only on its own state, so a
search gives the same result whatever batch it runs in (up to the scores the caller returns). Searches
stop independently (first hit, convergence, generation limit) and finished ones are compacted out of the
population.

The algorithm is scipy's ``differential_evolution`` with ``init="random"``, ``updating="deferred"``,
``polish=False``, ``tol=atol=0`` and a binomial strategy: trial vectors outside the unit cube are
redrawn uniformly, a trial replaces its parent when its energy is lower or equal, and a search
converges when all its energies are equal. The random streams differ from scipy's (scipy draws
with numpy, one candidate at a time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import Tensor

from lit_attacks.attacks.streams import Streams

# strategy -> (random members drawn per candidate, uses the best member, uses the current member)
STRATEGIES = {
    "best1bin": 2, "rand1bin": 3, "best2bin": 4, "rand2bin": 5, "currenttobest1bin": 2, "randtobest1bin": 3,
}

# (active sample rows (A,), trial vectors in parameter space (A, P, D)) -> (energies (A, P), hits (A, P))
Scorer = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]


@dataclass
class DEResult:
    """Per search: ``found`` a hit was scored, ``x`` (S, D) the first hit in parameter space (else the best
    member), ``energy`` (S,) its energy, ``queries`` trial vectors scored, ``generations`` generations after
    the initial population (the generation of the hit, if any)."""

    found: Tensor
    x: Tensor
    energy: Tensor
    queries: Tensor
    generations: Tensor


def distinct_members(u: Tensor, exclude: Tensor, population: int) -> Tensor:
    """(..., k) member indices, distinct from each other and from ``exclude`` (...,), uniform over the rest.

    ``u`` (..., k) in [0, 1): draw m picks among the ``population - 1 - m`` members not yet excluded,
    by counting up past each excluded index in increasing order.
    """
    k = u.shape[-1]
    taken = exclude.unsqueeze(-1)
    out = []
    for m in range(k):
        r = (u[..., m] * (population - 1 - m)).long().clamp(max=population - 2 - m)
        for e in taken.sort(-1).values.unbind(-1):
            r = r + (r >= e).long()
        out.append(r)
        taken = torch.cat([taken, r.unsqueeze(-1)], -1)
    return torch.stack(out, -1)


def mutate(pop: Tensor, best: Tensor, members: Tensor, strategy: str, scale: float) -> Tensor:
    """Mutant vectors (A, P, D) of ``pop`` (A, P, D) for scipy's binomial strategies.

    ``best`` (A,) index of each search's best member, ``members`` (A, P, k) distinct random members.
    """
    A, P, D = pop.shape
    g = lambda i: pop.gather(1, members[..., i:i + 1].expand(A, P, D))  # noqa: E731
    b = pop[torch.arange(A, device=pop.device), best].unsqueeze(1)
    if strategy == "best1bin":
        return b + scale * (g(0) - g(1))
    if strategy == "rand1bin":
        return g(0) + scale * (g(1) - g(2))
    if strategy == "best2bin":
        return b + scale * (g(0) + g(1) - g(2) - g(3))
    if strategy == "rand2bin":
        return g(0) + scale * (g(1) + g(2) - g(3) - g(4))
    if strategy == "currenttobest1bin":
        return pop + scale * (b - pop + g(0) - g(1))
    if strategy == "randtobest1bin":
        r0 = g(0)
        return r0 + scale * (b - r0 + g(1) - g(2))
    raise ValueError(f"unknown DE strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def differential_evolution(score: Scorer, streams: Streams, lower: Tensor, upper: Tensor,
                           population: int, generations: int, mutation: float = 0.5, recombination: float = 1.0,
                           strategy: str = "best1bin", device: torch.device | str = "cpu",
                           dtype: torch.dtype = torch.float64) -> DEResult:
    """Minimise S independent problems over the box [lower, upper] (D,) with DE; stop each at its first hit.

    Args:
        score: scores trial vectors (see :data:`Scorer`); a hit ends that search (the first hit in
            population order is its result).
        streams: one random stream per search (:class:`~lit_attacks.attacks.streams.Streams`, on ``device``);
            its draws decide that search alone.
        population: members per search (P >= number of random members the strategy needs + 1).
        generations: trial generations after the initial population (scipy's ``maxiter``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown DE strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    k = STRATEGIES[strategy]
    if population < k + 1:
        raise ValueError(f"DE strategy {strategy} needs a population of at least {k + 1}, got {population}")
    S, D, P = len(streams), lower.numel(), population
    lower, upper = lower.to(device, dtype), upper.to(device, dtype)
    to_params = lambda u: lower + u * (upper - lower)  # noqa: E731

    def draws(rows: Tensor, shape: Tuple[int, ...]) -> Tensor:
        return streams.uniform(shape, rows).to(device, dtype)

    if S == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return DEResult(empty.bool(), torch.zeros(0, D, dtype=dtype), torch.zeros(0, dtype=dtype), empty, empty)
    found = torch.zeros(S, dtype=torch.bool, device=device)
    best_x = torch.zeros(S, D, dtype=dtype, device=device)
    best_e = torch.full((S,), float("inf"), dtype=dtype, device=device)
    queries = torch.zeros(S, dtype=torch.long, device=device)
    gens = torch.zeros(S, dtype=torch.long, device=device)

    rows = torch.arange(S, device=device)  # active searches
    pop = draws(rows, (P, D))
    energy = torch.full((S, P), float("inf"), dtype=dtype, device=device)
    trial = pop
    for gen in range(generations + 1):
        e_trial, hit = score(rows, to_params(trial))
        queries[rows] += P
        gens[rows] = gen
        if gen == 0:
            energy = e_trial
        else:
            take = e_trial <= energy
            pop = torch.where(take.unsqueeze(-1), trial, pop)
            energy = torch.where(take, e_trial, energy)
        any_hit = hit.any(1)
        first = hit.long().argmax(1)
        ib = energy.argmin(1)
        ar = torch.arange(len(rows), device=device)
        best_x[rows] = torch.where(any_hit.unsqueeze(-1), to_params(trial[ar, first]), to_params(pop[ar, ib]))
        best_e[rows] = torch.where(any_hit, e_trial[ar, first], energy[ar, ib])
        found[rows] = any_hit
        converged = (energy == energy[:, :1]).all(1)  # scipy's std(energies) <= 0
        keep = ~any_hit & (~converged if gen > 0 else torch.ones_like(any_hit))
        if gen == generations or not keep.any():
            break
        rows, pop, energy, ib = rows[keep], pop[keep], energy[keep], ib[keep]
        A = len(rows)
        # the draws of one generation, per search, in a fixed order: members, fill point, crossover, repair
        u = draws(rows, (P * (k + 1 + 2 * D),))
        u_members = u[:, :P * k].view(A, P, k)
        u_fill = u[:, P * k:P * (k + 1)].view(A, P)
        u_cross = u[:, P * (k + 1):P * (k + 1 + D)].view(A, P, D)
        u_repair = u[:, P * (k + 1 + D):].view(A, P, D)
        cand = torch.arange(P, device=device).expand(A, P)
        mutant = mutate(pop, ib, distinct_members(u_members, cand, P), strategy, mutation)
        fill = (u_fill * D).long().clamp(max=D - 1)
        cross = (u_cross < recombination) | (torch.arange(D, device=device) == fill.unsqueeze(-1))
        trial = torch.where(cross, mutant, pop)
        out = (trial < 0) | (trial > 1)
        trial = torch.where(out, u_repair, trial)
    return DEResult(found.cpu(), best_x.cpu(), best_e.cpu(), queries.cpu(), gens.cpu())
