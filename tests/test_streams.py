"""Per-sample counter-based random streams (lit_attacks.attacks.streams): a plain-Python restatement, batch
invariance, statistics, and no per-sample Python in the step loops that draw from them."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from lit_attacks.attacks import streams as st
from lit_attacks.attacks.apgd import apgd
from lit_attacks.attacks.de import differential_evolution
from lit_attacks.attacks.flowadv import init_params, layer_shapes
from lit_attacks.attacks.square import square
from lit_attacks.attacks.streams import Streams, sample_key
from lit_attacks.attacks.threat import Threat
from lit_attacks.certify import vote
from lit_attacks.metrics import create_metric

from helpers import PyStream

KEYS = [f"val/cnn/{i:06d}" for i in range(9)]


def test_words_equal_a_plain_python_restatement():
    """Keys with high bits set and counters past 2^32 (both 32-bit halves of the counter are mixed in)."""
    keys = [sample_key(0, k) for k in KEYS[:3]] + [2 ** 63 - 1, 0, 2 ** 32 + 5]
    counters = [0, 1, 2, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3, 2 ** 62 + 11]
    w = st.words(torch.tensor(keys), torch.tensor([counters] * len(keys)))
    assert w.min() >= 0 and w.max() < 2 ** 32
    assert w.tolist() == [[PyStream(k).word(c) for c in counters] for k in keys]
    s, p = Streams(torch.tensor(keys[:2])), PyStream(keys[1])
    torch.testing.assert_close(s.uniform((5,))[1], torch.tensor(p.uniforms(5), dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(s.normal((7,))[1], torch.tensor(p.normals(7), dtype=torch.float64), rtol=0, atol=1e-12)
    assert s.used.tolist() == [12, 12]


def test_a_samples_draws_do_not_depend_on_its_batch_order_or_chunking():
    full = Streams.for_samples(3, KEYS, stream=1)
    a, b = full.uniform((4, 5)), full.normal((33,))
    for order in ([4], [8, 0, 3], list(range(9))[::-1]):
        sub = Streams.for_samples(3, [KEYS[i] for i in order], stream=1)
        assert torch.equal(sub.uniform((4, 5)), a[order]) and torch.equal(sub.normal((33,)), b[order])
    chunked = Streams.for_samples(3, KEYS, stream=1)
    chunked.uniform((20,))
    assert torch.equal(torch.cat([chunked.normal((n,)) for n in (1, 16, 9, 7)], 1), b)  # any split, same numbers
    rows = Streams.for_samples(3, KEYS, stream=1)  # drawing for some rows advances only theirs
    u = rows.uniform((20,), torch.tensor([2, 5]))
    assert torch.equal(u, a.flatten(1)[[2, 5]]) and rows.used.tolist() == [0, 0, 20, 0, 0, 20, 0, 0, 0]
    assert torch.equal(rows.uniform((20,))[0], a[0].flatten())
    other = Streams.for_samples(4, KEYS, stream=1).uniform((4, 5))
    assert not torch.equal(other, a) and not torch.equal(Streams.for_samples(3, KEYS, 2).uniform((4, 5)), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_words_are_bitwise_the_same_on_cuda():
    keys = torch.tensor([sample_key(0, k) for k in KEYS])
    counters = torch.arange(9 * 4096).view(9, -1) + 2 ** 33
    assert torch.equal(st.words(keys.cuda(), counters.cuda()).cpu(), st.words(keys, counters))


def test_uniforms_and_normals_look_random():
    """Moments, 64-bin chi-square, lag-1 and cross-sample correlation; the normal's moments and tail."""
    s = Streams.for_samples(0, KEYS[:4])
    u = s.uniform((250_000,))
    x = u.flatten()
    assert 0 < float(x.min()) and float(x.max()) < 1
    assert abs(float(x.mean()) - 0.5) < 0.002 and abs(float(x.var()) - 1 / 12) < 0.001
    counts = torch.bincount((x * 64).long(), minlength=64).double()
    chi2 = float(((counts - len(x) / 64) ** 2 / (len(x) / 64)).sum())
    assert chi2 < 120  # 63 degrees of freedom: p ~ 2e-5 at 120
    for a, b in ((u[:, :-1], u[:, 1:]), (u[0], u[1]), (u[2], u[3])):
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(r) < 0.005
    z = s.normal((250_000,)).flatten()
    assert abs(float(z.mean())) < 0.005 and abs(float(z.std()) - 1) < 0.005
    assert abs(float((z ** 4).mean()) - 3) < 0.05
    assert abs(float((z.abs() > 3).double().mean()) - 0.0026998) < 0.0004


# --------------------------------------------------------------------------- no per-sample Python in step loops
class Calls:
    """Counts generator calls (ours and torch's) and host reads (``.item()``, ``.tolist()``, ``int()``, ...) while
    active."""

    def __init__(self, monkeypatch):
        self.n = Counter()
        names = [("words", st)] + [(f, torch) for f in ("rand", "randn", "randint", "stack")] + \
            [(f, torch.Tensor) for f in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")]
        for name, owner in names:
            orig = getattr(owner, name)

            def counted(*a, _orig=orig, _name=name, **k):
                self.n[_name] += 1
                return _orig(*a, **k)
            monkeypatch.setattr(owner, name, counted)


def _threat(B):
    g = torch.Generator().manual_seed(0)
    ref, prey = (torch.rand(B, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(2))
    m = create_metric("l2")
    bound = m.bind(ref)
    s_other = bound(prey).detach() + 10.0  # never flipped: every sample runs every step
    return Threat.on_prey(bound, prey, s_other)


def _keys(B):
    return [f"val/cnn/{i:06d}" for i in range(B)]


RUNS = {
    "square_linf": lambda B: square(_threat(B), _keys(B), 0.01, "linf", queries=30),
    "square_l2": lambda B: square(_threat(B), _keys(B), 0.1, "l2", queries=30),
    "apgd_random_starts": lambda B: apgd(_threat(B), _keys(B), 0.01, "linf", steps=3, restarts=3, random_init=True),
    "de": lambda B: differential_evolution(lambda rows, x: (x.sum(-1) + rows.unsqueeze(1), torch.zeros(x.shape[:2],
                                                            dtype=torch.bool)), Streams.for_samples(0, _keys(B)),
                                           torch.zeros(3), torch.ones(3), 10, 20),
    "flowadv_init": lambda B: init_params(layer_shapes(8, 3, 4), _keys(B), 0, 0, "cpu", torch.float32, 0.1),
    "certify_votes": lambda B: vote(create_metric("l2"), *(_threat(B).centre,) * 3, "prey", 0.1, 40,
                                    Streams.for_samples(0, _keys(B)), chunk=8, max_images=10 ** 6),  # one group:
    # calls of a measured size split a batch by memory, not per sample (tests/test_chunks.py)
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_step_loops_make_no_per_sample_python_calls(name, monkeypatch):
    """The same number of generator calls and host reads at 2 and at 16 samples (every sample running every step)."""
    counts = []
    for B in (2, 16):
        calls = Calls(monkeypatch)
        RUNS[name](B)
        counts.append(dict(calls.n))
        monkeypatch.undo()
    assert counts[0] == counts[1] and counts[0].get("words", 0) > 0, counts


def test_sample_key_is_63_bits_and_depends_on_seed_key_and_stream():
    ks = {sample_key(s, k, r) for s in (0, 1) for k in KEYS[:3] for r in (0, 1)}
    assert len(ks) == 12 and all(0 <= k < 2 ** 63 for k in ks)
    assert math.isclose(np.mean([k / 2 ** 63 for k in ks]), 0.5, abs_tol=0.3)
