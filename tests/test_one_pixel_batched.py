"""Batched one-pixel DE and local evaluation of one-pixel candidates, against plain references."""
import pytest
import torch
from torch import nn

from lit_attacks.attacks import create_attack
from lit_attacks.attacks.de import STRATEGIES, differential_evolution, distinct_members
from lit_attacks.attacks.streams import Streams
from lit_attacks.metrics import create_metric
from lit_attacks.metrics.local import FullScorer, LocalConvScorer, conv_chain

from helpers import PyStream, procedural_batch


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return procedural_batch(tmp_path_factory.mktemp("cache"), 6)


# ------------------------------------------------------------------------------------------- local evaluation
def candidates(S, H, W, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, S, (n,), generator=g)
    ys, xs = torch.randint(0, H, (n,), generator=g), torch.randint(0, W, (n,), generator=g)
    corners = torch.tensor([[0, 0], [0, W - 1], [H - 1, 0], [H - 1, W - 1], [1, 2], [H - 2, W - 3]])
    ys[:len(corners)], xs[:len(corners)] = corners[:, 0], corners[:, 1]
    return rows, ys, xs, torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1


@pytest.mark.parametrize("name", ["lpips_alex", pytest.param("lpips_vgg", marks=pytest.mark.slow)])  # vgg: ~30 s
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_local_lpips_equals_the_full_forward(name, dtype, tol):
    """Real ImageNet backbones (../shared/data/weights): every border and a random sample of positions."""
    m = create_metric(name).to(dtype)
    g = torch.Generator().manual_seed(1)
    ref, prey = (torch.rand(3, 3, 64, 64, generator=g, dtype=dtype) * 2 - 1 for _ in range(2))
    bound = m.bind(ref)
    local = m.pixel_scorer(bound, prey)
    assert isinstance(local, LocalConvScorer)
    rows, ys, xs, values = candidates(3, 64, 64, 150 if name == "lpips_alex" else 30, dtype)
    with torch.no_grad():
        got = local(rows, ys, xs, values)
        imgs = FullScorer(bound, prey).images(rows, ys, xs, values)
        want = m(ref[rows], imgs)  # the plain metric on whole images, no binding
        assert torch.allclose(local.prey_distance, m(ref, prey), rtol=tol, atol=0)
    assert ((got - want).abs() / want.abs()).max() < tol


def test_a_metric_without_local_support_falls_back_to_whole_images():
    m = create_metric("lpips_squeeze", pretrained=False)
    ref, prey = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    assert isinstance(m.pixel_scorer(m.bind(ref), prey), FullScorer)  # Fire modules
    assert isinstance(create_metric("l2").pixel_scorer(create_metric("l2").bind(ref), prey), FullScorer)
    m = create_metric("lpips_alex", pretrained=False)
    assert isinstance(m.pixel_scorer(m.bind(ref), prey, local=False), FullScorer)


CHAINS = {
    "conv-pool": [nn.Conv2d(3, 5, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(5, 4, 3, 1, 1), nn.ReLU()],
    "strided": [nn.Conv2d(3, 6, 5, 2, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(6, 4, 1, 3, 0), nn.ReLU(),
                nn.Conv2d(4, 4, (3, 1), (1, 2), (1, 0))],
    "alexlike": [nn.Conv2d(3, 8, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(8, 6, 5, 1, 2), nn.ReLU(),
                 nn.MaxPool2d(3, 2), nn.Conv2d(6, 6, 3, 1, 1, groups=2)],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_every_layer_of_a_chain_equals_the_full_forward(chain):
    """Each layer its own tap, with an identity-like head: every layer's windows are checked, including
    geometries whose previous window does not fit in the next input window (stride > kernel)."""
    torch.manual_seed(0)
    mods = [m.double() for m in CHAINS[chain]]
    ops = conv_chain(mods)
    pre = lambda x: x * 0.9 + 0.05  # noqa: E731  (a pointwise map, as LPIPS' scaling layer)

    def chans(i):
        c = 3
        for m in mods[:i + 1]:
            c = m.out_channels if isinstance(m, nn.Conv2d) else c
        return c

    lins = [nn.Conv2d(chans(i), 1, 1, bias=False).double() for i in range(len(mods))]
    for lin in lins:
        nn.init.uniform_(lin.weight, 0.1, 1.0)
    normalize = lambda a: a  # noqa: E731  (raw activations: each layer's values enter the terms)

    def features(x):
        out, a = [], pre(x)
        for m in mods:
            a = m(a)
            out.append(a)
        return out

    H, W = 67, 53
    ref, prey = torch.rand(2, 3, H, W, dtype=torch.float64), torch.rand(2, 3, H, W, dtype=torch.float64)
    local = LocalConvScorer(pre, [[op] for op in ops], lins, normalize, features(ref), prey)
    if chain == "strided":
        assert not all(g[-1] for g in local.geo if g), "the non-fitting path must be exercised"
    rows, ys, xs, values = candidates(2, H, W, 80, torch.float64)
    imgs = FullScorer(None, prey).images(rows, ys, xs, values)
    with torch.no_grad():
        got = local(rows, ys, xs, values)
        fr, fx = features(ref[rows]), features(imgs)
        for k in range(1, len(mods) + 1):  # the distance through layer k equals the full forward's
            partial = LocalConvScorer(pre, [[op] for op in ops[:k]], lins[:k], normalize, features(ref)[:k], prey)
            want_k = sum(lin((a - b) ** 2).mean(dim=(1, 2, 3)) for lin, a, b in zip(lins[:k], fr[:k], fx[:k]))
            assert torch.allclose(partial(rows, ys, xs, values), want_k, rtol=1e-12, atol=1e-12), f"layer {k}"
    assert torch.allclose(got, want_k, rtol=1e-12, atol=1e-12)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # the full forward's convolutions, counted by torch
        a = pre(prey[:1])
        for m in mods:
            a = m(a)
    local_macs, full_macs = local.macs()
    assert 2 * full_macs == fc.get_total_flops() and 0 < local_macs <= full_macs


# ------------------------------------------------------------------------------------------- batched DE
def test_distinct_members_are_distinct_uniform_and_avoid_the_candidate():
    P, k = 7, 5
    u = torch.rand(20000, k, dtype=torch.float64)
    cand = torch.randint(0, P, (20000,))
    r = distinct_members(u, cand, P)
    full = torch.cat([r, cand[:, None]], 1)
    assert (full.sort(1).values.diff(dim=1) > 0).all()  # k + 1 distinct indices in range
    assert r.min() >= 0 and r.max() < P
    counts = torch.bincount(r[cand == 3][:, 0], minlength=P).double()  # uniform over the other members
    assert counts[3] == 0
    others = counts[torch.arange(P) != 3]
    assert (others / others.sum() - 1 / (P - 1)).abs().max() < 0.02


def reference_de(energy_fn, hit_fn, g, lo, hi, P, generations, F, CR, strategy):
    """One search, one candidate at a time, with the draws in the documented order from ``g`` (a plain-Python
    restatement of the search's stream, :class:`helpers.PyStream`)."""
    D = len(lo)
    k = STRATEGIES[strategy]
    scale = lambda u: lo + u * (hi - lo)  # noqa: E731
    pop = torch.tensor(g.uniforms(P * D), dtype=torch.float64).view(P, D)
    energy = [energy_fn(scale(p)) for p in pop]
    queries = P
    for i in range(P):
        if hit_fn(scale(pop[i])):
            return True, scale(pop[i]), queries, 0
    for gen in range(1, generations + 1):
        u = torch.tensor(g.uniforms(P * (k + 1 + 2 * D)), dtype=torch.float64)
        um, uf = u[:P * k].view(P, k), u[P * k:P * (k + 1)]
        uc, ur = u[P * (k + 1):P * (k + 1 + D)].view(P, D), u[P * (k + 1 + D):].view(P, D)
        best = int(torch.tensor(energy).argmin())
        trials = []
        for j in range(P):
            pool = [m for m in range(P) if m != j]
            r = []
            for m in range(k):
                idx = min(int(um[j, m] * len(pool)), len(pool) - 1)
                r.append(pool.pop(idx))
            b, x = pop[best], pop
            mutant = {"best1bin": lambda: b + F * (x[r[0]] - x[r[1]]),
                      "rand1bin": lambda: x[r[0]] + F * (x[r[1]] - x[r[2]]),
                      "best2bin": lambda: b + F * (x[r[0]] + x[r[1]] - x[r[2]] - x[r[3]]),
                      "rand2bin": lambda: x[r[0]] + F * (x[r[1]] + x[r[2]] - x[r[3]] - x[r[4]]),
                      "currenttobest1bin": lambda: x[j] + F * (b - x[j] + x[r[0]] - x[r[1]]),
                      "randtobest1bin": lambda: x[r[0]] + F * (b - x[r[0]] + x[r[1]] - x[r[2]])}[strategy]()
            fill = min(int(uf[j] * D), D - 1)
            t = torch.stack([mutant[d] if (uc[j, d] < CR or d == fill) else pop[j, d] for d in range(D)])
            t = torch.where((t < 0) | (t > 1), ur[j], t)
            trials.append(t)
        queries += P
        for j, t in enumerate(trials):
            if hit_fn(scale(t)):
                return True, scale(t), queries, gen
        for j, t in enumerate(trials):
            e = energy_fn(scale(t))
            if e <= energy[j]:
                pop[j], energy[j] = t, e
        if all(e == energy[0] for e in energy):
            break
    return False, None, queries, gen


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_batched_de_equals_a_one_candidate_at_a_time_reference(strategy):
    """Sphere problems with a hit threshold per search: same hits, points, queries and generations."""
    centres = torch.tensor([[0.3, -0.2, 0.5], [0.9, 0.9, -0.9], [0.0, 0.1, 0.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    thresholds = torch.tensor([0.05, 0.02, 0.3, 0.1], dtype=torch.float64)  # the last is out of the box: no hit
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    P, G, F, CR = 12, 15, 0.6, 0.7

    def score(rows, x):
        d = ((x - centres[rows].unsqueeze(1)) ** 2).sum(-1)
        return d, d < thresholds[rows].unsqueeze(1) ** 2

    seeds = [11, 12, 13, 14]
    res = differential_evolution(score, Streams(torch.tensor(seeds)), lo, hi, P, G, F, CR, strategy)
    for i, s in enumerate(seeds):
        e_fn = lambda p: float(((p - centres[i]) ** 2).sum())  # noqa: E731
        h_fn = lambda p: e_fn(p) < float(thresholds[i]) ** 2  # noqa: E731
        found, x, q, gen = reference_de(e_fn, h_fn, PyStream(s), lo, hi, P, G, F, CR, strategy)
        assert (bool(res.found[i]), int(res.queries[i]), int(res.generations[i])) == (found, q, gen), (strategy, i)
        if found:
            assert torch.allclose(res.x[i], x, rtol=0, atol=1e-15)
    assert res.found[:3].sum() >= 1 and not res.found[3]


def rows_of(a, batch):
    return [{k: r[k] for k in ("key", "flipped", "queries", "iterations", "pixel_x", "pixel_y", "pixel_r",
                               "pixel_g", "pixel_b")} for r in a.predict_step(batch).rows()]


@pytest.mark.parametrize("name,kw", [pytest.param("lpips_alex", {}, marks=pytest.mark.slow),  # ~20 s
                                     ("l2", {"encoding": "paper", "strategy": "rand1bin"})])
def test_a_sample_gets_the_same_search_in_any_batch(batch, name, kw):
    """Every sample's best point, energy, queries and generations are those it gets alone or in another batch."""
    from lit_attacks.attacks.objectives import split_prey
    from lit_attacks.attacks.one_pixel import one_pixel_batched

    m = create_metric(name, pretrained=False).double()
    with torch.no_grad():
        s0, s1 = m(batch["ref"], batch["p0"]), m(batch["ref"], batch["p1"])
    prey, _, _, s_other = split_prey(batch["p0"], batch["p1"], s0, s1)

    def run(idx):
        res, _ = one_pixel_batched(m.bind(batch["ref"][idx]), prey[idx], s_other[idx],
                                   [batch["key"][i] for i in idx], m, population=30, generations=6, seed=3, **kw)
        return [(bool(res.found[j]), res.x[j].tolist(), float(res.energy[j]), int(res.queries[j]),
                 int(res.generations[j])) for j in range(len(idx))]

    whole = run(list(range(6)))
    order = [4, 0, 5, 2]
    assert run(order) == [whole[i] for i in order] and run([1]) == [whole[1]]
    assert len({w[1][0] for w in whole}) == 6  # the searches differ from sample to sample


@pytest.mark.slow  # whole DE searches twice (~40 s); the per-layer and end-to-end exactness tests above stay fast
def test_local_and_whole_image_scoring_give_the_same_attack(batch):
    kw = dict(pretrained=False, population=40, generations=8, seed=5, batch_invariant=True)
    local = rows_of(create_attack("onepixel", "lpips_alex", **kw), batch)
    full = rows_of(create_attack("onepixel", "lpips_alex", local=False, **kw), batch)
    assert local == full


def test_the_torch_backend_records_its_flip_as_the_saved_image_scores(batch):
    """A metric one pixel can flip: every recorded pixel, written into the prey, re-scores as a flip."""
    from lit_attacks.metrics import Distance

    class MaxPixel(Distance):
        def _distance(self, ref, x):
            return (ref - x).abs().sum(1).amax((1, 2))

    a = create_attack("onepixel", "l2", pretrained=False, population=40, generations=20, seed=1)
    a.metric = MaxPixel()
    a.metric.name = "maxpixel"
    sub = {k: v.float() if torch.is_tensor(v) else v for k, v in batch.items()}
    recs = a.predict_step(sub).rows()
    assert sum(r["flipped"] for r in recs) >= 4
    for i, r in enumerate(recs):
        assert r["queries"] == 40 * (r["iterations"] + 1)
        if r["flipped"]:
            adv = (sub["p1"] if r["prey"] else sub["p0"])[i].clone()
            adv[:, r["pixel_y"], r["pixel_x"]] = torch.tensor([r["pixel_r"], r["pixel_g"], r["pixel_b"]]) / 127.5 - 1
            assert (a.metric(sub["ref"][i:i + 1], adv[None]).item() > r["s_other"]) == r["flipped_uint8"]


def test_one_pixel_arguments_are_checked():
    with pytest.raises(ValueError, match="backend must be one of torch, scipy"):
        create_attack("onepixel", "l2", backend="numpy")
    with pytest.raises(ValueError, match=r"chunk must be >= 1 \(or 0: measured\)"):
        create_attack("onepixel", "l2", chunk=-1)
    with pytest.raises(ValueError, match="needs a population of at least 6"):
        differential_evolution(lambda r, x: None, Streams(torch.tensor([0])), torch.zeros(2), torch.ones(2), 5, 1,
                               strategy="rand2bin")


def test_measured_chunk_picks_the_fastest_size_caches_it_and_stops_at_out_of_memory():
    import time

    from lit_attacks.attacks import chunks

    calls = []

    def run(n):  # a fixed cost per call, then a per-item cost that triples past 256 items: fastest at 256
        calls.append(n)
        time.sleep(0.004 + n * (2e-5 if n <= 256 else 6e-5))
    assert chunks.measured_chunk(("test", 1), run, torch.device("cpu")) == 256
    assert max(calls) == 512 and chunks.measured_chunk(("test", 1), run, torch.device("cpu")) == 256  # cached
    n_calls = len(calls)
    assert chunks.measured_chunk(("test", 1), run, torch.device("cpu")) == 256 and len(calls) == n_calls

    def oom(n):
        if n > 64:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(0.001)
    assert chunks.measured_chunk(("test", 2), oom, torch.device("cpu")) == 64
    with pytest.raises(RuntimeError, match="boom"):
        chunks.measured_chunk(("test", 3), lambda n: (_ for _ in ()).throw(RuntimeError("boom")), torch.device("cpu"))


def test_one_pixel_measures_its_chunk_once_per_metric_and_size(batch, monkeypatch):
    from lit_attacks.attacks import chunks

    monkeypatch.setattr(chunks, "CACHE", {})
    a = create_attack("onepixel", "lpips_alex", pretrained=False, population=20, generations=1, batch_invariant=True)
    a.predict_step(batch)
    assert len(chunks.CACHE) == 1 and list(chunks.CACHE.values())[0] in chunks.SIZES
    a.predict_step(batch)
    assert len(chunks.CACHE) == 1
