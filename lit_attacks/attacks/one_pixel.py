"""One-pixel attack (Su et al. 2019; paper appendix A.3): black-box differential evolution on one pixel."""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Sequence

import numpy as np
import torch
from scipy.optimize import differential_evolution
from torch import Tensor

from lit_attacks.attacks.base import AttackModule, AttackResult
from lit_attacks.attacks.chunks import measured_chunk
from lit_attacks.attacks.de import STRATEGIES, differential_evolution as batched_de
from lit_attacks.limits import check_count
from lit_attacks.attacks.streams import Streams
from lit_attacks.attacks.objectives import one_pixel_fitness
from lit_attacks.attacks.registry import ATTACKS
from lit_attacks.metrics import BoundDistance


class _Found(Exception):
    def __init__(self, candidate: np.ndarray) -> None:
        self.candidate = candidate


MAX_POPULATION = 1_000_000
MAX_GENERATIONS = 1_000_000


def apply_pixel(prey: Tensor, cand: Tensor) -> Tensor:
    """(P, 3, H, W) copies of ``prey`` (1, 3, H, W) with pixel (x, y) set to (r, g, b) per candidate row (P, 5).

    x, y are continuous in [0, W) / [0, H) and floored; r, g, b are in [-1, 1].
    """
    P, (_, _, H, W) = cand.shape[0], prey.shape
    out = prey.expand(P, -1, -1, -1).clone()
    xs = cand[:, 0].floor().long().clamp(0, W - 1)
    ys = cand[:, 1].floor().long().clamp(0, H - 1)
    out[torch.arange(P), :, ys, xs] = cand[:, 2:5].to(out.dtype)
    return out


ENCODINGS = ("valid", "paper")
BACKENDS = ("torch", "scipy")


def decode_colour(values: Tensor, encoding: str) -> Tensor:
    """The pixel values a candidate's colour genes stand for. ``valid``: the genes are the values, in [-1, 1].
    ``paper`` (ICLR Algorithm 4): genes r in [0, 255] become ``(r / 255 - 0.5) / 0.1``, i.e. values in
    [-5, 5], not clipped; such an image is valid only after its 8-bit rounding (``flipped_uint8``)."""
    return values if encoding == "valid" else (values / 255 - 0.5) / 0.1


def sample_seed(seed: int, key: str) -> int:
    """A per-sample seed: the same sample gets the same search whatever its batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little")


def colour_bounds(encoding: str):
    return (-1.0, 1.0) if encoding == "valid" else (0.0, 255.0)


def one_pixel_batched(bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str], metric,
                      population: int = 400, generations: int = 100, mutation: float = 0.5,
                      recombination: float = 1.0, seed: int = 0, encoding: str = "valid",
                      strategy: str = "best1bin", local: bool = True, chunk: int = 0):
    """Differential evolution over (x, y, r, g, b) for all samples at once (:mod:`lit_attacks.attacks.de`).

    Each generation scores the candidates of every unfinished sample in one scorer call (chunked); the
    scorer is the metric's :meth:`~lit_attacks.metrics.Distance.pixel_scorer` (local evaluation where the
    metric supports it). Every sample's search uses its own random stream, keyed by ``seed`` and its key.
    Returns (DEResult with decoded colours, whether the scorer was local).
    """
    H, W = prey.shape[-2:]
    P = max(5, (population // 5) * 5)  # scipy's popsize x 5 parameters, as the scipy backend
    chunk = chunk or pixel_chunk(metric, bound, prey, local)
    scorer = metric.pixel_scorer(bound, prey, local=local, chunk=chunk)
    s_oth = s_other.double()
    lo_c, hi_c = colour_bounds(encoding)
    lower = torch.tensor([0.0, 0.0, lo_c, lo_c, lo_c], dtype=torch.float64)
    upper = torch.tensor([W - 1e-6, H - 1e-6, hi_c, hi_c, hi_c], dtype=torch.float64)

    def score(rows: Tensor, params: Tensor):
        A = len(rows)
        flat = params.reshape(A * P, 5)
        xs = flat[:, 0].floor().long().clamp(0, W - 1)
        ys = flat[:, 1].floor().long().clamp(0, H - 1)
        values = decode_colour(flat[:, 2:], encoding).to(prey.dtype)
        with torch.no_grad():
            s = scorer(rows.to(prey.device).repeat_interleave(P), ys.to(prey.device), xs.to(prey.device),
                       values.to(prey.device)).double().view(A, P).to(params.device)
        so = s_oth[rows].unsqueeze(1).expand_as(s).to(params.device)
        return one_pixel_fitness(s, so), s > so

    res = batched_de(score, Streams.for_samples(seed, keys, device=prey.device), lower, upper, P, generations,
                     mutation, recombination, strategy, device=prey.device)
    res.x[:, 2:] = decode_colour(res.x[:, 2:], encoding)
    return res, bool(scorer.local)


def pixel_chunk(metric, bound: BoundDistance, prey: Tensor, local: bool) -> int:
    """The scorer's fastest chunk, measured once per metric, device, dtype, image size and scoring kind
    (:func:`lit_attacks.attacks.chunks.measured_chunk`)."""
    S, _, H, W = prey.shape
    key = ("onepixel", type(metric).__name__, getattr(metric, "label", ""), str(prey.device), prey.dtype, H, W, local)

    def run(n: int) -> None:
        scorer = metric.pixel_scorer(bound, prey, local=local, chunk=n)
        N = n * (4 if scorer.local else 1)  # the local scorer's own chunk is 4x
        i = torch.arange(N, device=prey.device)
        with torch.no_grad():
            scorer(i % S, i % H, (i * 7) % W, torch.zeros(N, 3, dtype=prey.dtype, device=prey.device))
    return measured_chunk(key, run, prey.device)


def one_pixel_search(bound: BoundDistance, prey: Tensor, s_other: float, population: int = 400,
                     generations: int = 100, mutation: float = 0.5, recombination: float = 1.0, seed: int = 0,
                     encoding: str = "valid", strategy: str = "best1bin"):
    """Differential evolution over (x, y, r, g, b) for one sample; stops at the first flipping candidate.

    Each generation's population is scored in one batched metric call (scipy ``vectorized=True``).
    Returns (candidate (5,) with decoded colour, or None if no flip; queries; generations run).
    """
    H, W = prey.shape[-2:]
    rep = bound.repeat_interleave(1)
    state = {"queries": 0, "calls": 0}

    def fitness(X: np.ndarray) -> np.ndarray:  # X: (5, P)
        cand = torch.as_tensor(X.T, dtype=torch.float64, device=prey.device)
        cand = torch.cat([cand[:, :2], decode_colour(cand[:, 2:], encoding)], 1)
        imgs = apply_pixel(prey, cand)
        with torch.no_grad():
            s = rep.repeat_interleave(imgs.shape[0])(imgs)
        state["queries"] += imgs.shape[0]
        state["calls"] += 1
        hit = (s > s_other).nonzero()
        if hit.numel():
            raise _Found(cand[int(hit[0])].cpu().numpy())
        return one_pixel_fitness(s, torch.full_like(s, s_other)).double().cpu().numpy()

    colour = colour_bounds(encoding)
    bounds = [(0, W - 1e-6), (0, H - 1e-6), colour, colour, colour]
    try:
        differential_evolution(fitness, bounds, popsize=max(1, population // 5), maxiter=generations,
                               strategy=strategy, mutation=mutation, recombination=recombination, seed=seed,
                               polish=False,
                               init="random", tol=0, atol=0, vectorized=True, updating="deferred")
    except _Found as f:
        return f.candidate, state["queries"], state["calls"] - 1
    return None, state["queries"], state["calls"] - 1


@ATTACKS.register("onepixel")
class OnePixel(AttackModule):
    """Black-box one-pixel attack: only metric outputs are used.

    Defaults follow Su et al. (2019): population 400, up to 100 generations, F = 0.5, no crossover
    (recombination 1.0: the mutant is taken whole). Fitness (minimised): 1 - s_adv / (s_adv + s_other).

    Args:
        metric: victim metric name.
        population: candidates per generation (scipy's popsize multiplier is ``population // 5``).
        generations: maximum DE generations after the initial population.
        mutation, recombination: DE parameters.
        seed: combined with each sample's key into a per-sample seed.
        encoding: "valid" (default): the pixel takes values in [-1, 1], a valid image; "paper" (ICLR
            Algorithm 4): ``(r / 255 - 0.5) / 0.1`` for r in [0, 255], values in [-5, 5] without clipping
            (the adversarial image is then not clipped either; ``flipped_uint8`` says whether the flip
            survives as a real 8-bit image).
        strategy: scipy's DE strategy: "best1bin" (default) or "rand1bin" (DE/rand/1, the paper's Eq. 12),
            or another binomial one.
        backend: "torch" (default): every sample's search in one batched DE (:mod:`lit_attacks.attacks.de`),
            one scorer call per generation for all unfinished samples; "scipy": one ``scipy.optimize.
            differential_evolution`` per sample (the earlier implementation; scipy's random stream). Both
            run the same algorithm (random init, deferred updating, no polish, tol 0) from different
            random streams, so their flip rates agree within noise, not sample by sample.
        local: with the torch backend, score candidates by local evaluation where the metric supports it
            (LPIPS on AlexNet and VGG16: exact to float round-off); False scores whole images.
        chunk: images per metric call when scoring whole images (local evaluation uses 4x as many); 0 (the
            default): the fastest, measured once per metric, device and image size (:mod:`lit_attacks.attacks.chunks`).
    """

    name = "onepixel"
    black_box = True
    example_params = {"population": 20, "generations": 3}

    @classmethod
    def cost(cls, p: Dict[str, Any]) -> float:
        """Scoring and re-scoring (4), then the population (rounded as scipy's popsize) in every generation and the
        initial one (local evaluation makes each cheaper than a whole forward pass, counted as one here)."""
        return 4 + max(5, (int(p["population"]) // 5) * 5) * (int(p["generations"]) + 1)

    def __init__(self, metric: str = "lpips_alex", population: int = 400, generations: int = 100,
                 mutation: float = 0.5, recombination: float = 1.0, seed: int = 0, encoding: str = "valid",
                 strategy: str = "best1bin", backend: str = "torch", local: bool = True, chunk: int = 0,
                 **options: Any) -> None:
        if population < 5:
            raise ValueError(f"onepixel: population must be >= 5, got {population}")
        check_count(population, MAX_POPULATION, "onepixel: population (candidate images scored per sample and "
                    "generation)", "lower population (the paper: 400)")
        check_count(generations, MAX_GENERATIONS, "onepixel: generations", "lower generations (the paper: 100)")
        if generations < 1:
            raise ValueError(f"onepixel: generations must be >= 1, got {generations}")
        if encoding not in ENCODINGS:
            raise ValueError(f"onepixel: encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"onepixel: strategy must be a binomial scipy DE strategy (best1bin, rand1bin, ...), "
                             f"got {strategy!r}")
        if backend not in BACKENDS:
            raise ValueError(f"onepixel: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if chunk < 0:
            raise ValueError(f"onepixel: chunk must be >= 1 (or 0: measured), got {chunk}")
        super().__init__(metric, **options)
        self.save_hyperparameters()
        self.population, self.generations, self.seed = population, generations, seed
        self.mutation, self.recombination = mutation, recombination
        self.encoding, self.strategy = encoding, strategy
        self.backend, self.local, self.chunk = backend, local, chunk
        self.clamp_output = encoding == "valid"

    def attack(self, bound: BoundDistance, prey: Tensor, s_other: Tensor, keys: Sequence[str]) -> AttackResult:
        B = prey.shape[0]
        adv = prey.detach().clone()
        queries = torch.zeros(B, dtype=torch.long)
        gens = torch.zeros(B, dtype=torch.long)
        extra = {k: [None] * B for k in ("pixel_x", "pixel_y", "pixel_r", "pixel_g", "pixel_b")}
        if self.backend == "torch":
            res, _ = one_pixel_batched(bound, prey, s_other, keys, self.metric, self.population, self.generations,
                                       self.mutation, self.recombination, self.seed, self.encoding, self.strategy,
                                       self.local, self.chunk)
            for i in res.found.nonzero().flatten().tolist():
                self._record(adv, extra, prey, i, res.x[i].numpy())
            nan = torch.full((B,), float("nan"))
            return AttackResult(adv, res.generations, res.queries, nan, extra)
        for i in range(B):
            cand, q, g = one_pixel_search(bound.select(torch.tensor([i])), prey[i:i + 1], float(s_other[i]),
                                          self.population, self.generations, self.mutation, self.recombination,
                                          sample_seed(self.seed, keys[i]), self.encoding, self.strategy)
            queries[i], gens[i] = q, g
            if cand is not None:
                self._record(adv, extra, prey, i, cand)
        nan = torch.full((B,), float("nan"))
        return AttackResult(adv, gens, queries, nan, extra)

    @staticmethod
    def _record(adv: Tensor, extra: dict, prey: Tensor, i: int, cand: np.ndarray) -> None:
        """Sample i's adversarial image and pixel columns from its flipping candidate (decoded colour)."""
        c = torch.as_tensor(cand[None], dtype=torch.float64)
        adv[i] = apply_pixel(prey[i:i + 1], c)[0]
        x, y = int(np.floor(cand[0])), int(np.floor(cand[1]))
        rgb = np.round((np.asarray(cand[2:5]) + 1) * 127.5).astype(int).tolist()
        extra["pixel_x"][i], extra["pixel_y"][i] = x, y
        extra["pixel_r"][i], extra["pixel_g"][i], extra["pixel_b"][i] = rgb
