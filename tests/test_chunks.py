"""Metric call sizes by measurement (lit_attacks/attacks/chunks.py): FGSM's scan and certification's draws split
their work into calls of the measured size, memory-bounded, with results that do not depend on the split."""
import pytest
import torch

from lit_attacks.attacks import chunks
from lit_attacks.attacks.fgsm import eps_grid, fgsm_direction, fgsm_scan
from lit_attacks.certify import CertifyModule, vote
from lit_attacks.attacks.streams import Streams
from lit_attacks.metrics import create_metric
from lit_attacks.metrics.base import BoundDistance

from helpers import procedural_batch


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return procedural_batch(tmp_path_factory.mktemp("cache"), 12)


@pytest.fixture
def call_sizes(monkeypatch):
    """Images in every call of a bound metric."""
    sizes, call = [], BoundDistance.__call__

    def spy(self, x):
        sizes.append(x.shape[0])
        return call(self, x)
    monkeypatch.setattr(BoundDistance, "__call__", spy)
    return sizes


def test_forward_chunk_measures_once_per_metric_and_size_and_not_for_small_work(batch, monkeypatch):
    monkeypatch.setattr(chunks, "CACHE", {})
    m = create_metric("lpips_alex", pretrained=False).double()
    assert chunks.forward_chunk(m, batch["ref"], 20) == 20 and chunks.CACHE == {}  # no measurement needed
    n = chunks.forward_chunk(m, batch["ref"], 10_000)
    assert n in chunks.SIZES and len(chunks.CACHE) == 1
    assert chunks.forward_chunk(m, batch["ref"][:, :, :32, :32], 10_000) in chunks.SIZES and len(chunks.CACHE) == 2
    assert chunks.forward_chunk(m, batch["ref"], 10_000) == n and len(chunks.CACHE) == 2  # cached


def test_fgsm_scan_splits_into_calls_of_max_images_with_the_same_answer(batch, call_sizes):
    m = create_metric("lpips_alex", pretrained=False).double()
    ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]
    s0, s1 = m(ref, p0), m(ref, p1)
    prey, s_other = torch.where((s0 > s1).view(-1, 1, 1, 1), p1, p0), torch.maximum(s0, s1)
    bound = m.bind(ref)
    d, _ = fgsm_direction(bound, prey, s_other)
    grid = eps_grid(1e-3, 0.05)
    call_sizes.clear()
    one = fgsm_scan(bound, prey, s_other, d, grid, eps_chunk=5, max_images=10 ** 6)
    assert max(call_sizes) == 12 * 5  # every active sample's 5 candidates in one call
    call_sizes.clear()
    split = fgsm_scan(bound, prey, s_other, d, grid, eps_chunk=5, max_images=12)
    assert max(call_sizes) <= 12 and len(call_sizes) > len(grid) // 5
    assert torch.equal(one[0], split[0]) and torch.equal(one[1], split[1])  # first flip and queries
    assert (one[0] >= 0).any() and (one[0] < 0).any()  # the comparison sees flips and non-flips


def test_certification_measures_its_call_size_and_keeps_to_it(batch, call_sizes, monkeypatch):
    measured = []

    def fixed(metric, like, need):  # stands in for the measurement: what matters is that vote keeps to it
        measured.append(need)
        return 40
    monkeypatch.setattr("lit_attacks.certify.forward_chunk", fixed)
    m = CertifyModule("lpips_alex", sigma=0.1, n0=8, n=24, chunk=8, pretrained=False, batch_invariant=True)
    auto = m.predict_step(batch)
    assert measured == [2 * 12 * 8, 2 * 12 * 8] and max(call_sizes) <= 40  # selection and estimation
    wide = CertifyModule("lpips_alex", sigma=0.1, n0=8, n=24, chunk=8, max_images=10 ** 6, pretrained=False,
                         batch_invariant=True).predict_step(batch)
    assert max(call_sizes) == 2 * 12 * 8 and torch.equal(auto.votes, wide.votes)


def test_vote_measures_its_call_size_by_default(batch, monkeypatch):
    monkeypatch.setattr(chunks, "CACHE", {})
    m = create_metric("l2")
    ref, p0, p1 = (batch[k].float() for k in ("ref", "p0", "p1"))
    streams = Streams.for_samples(0, list(batch["key"]), 0, ref.device)
    v = vote(m, ref, p0, p1, "both", 0.1, 16, streams, chunk=16)
    assert v.shape == (12,) and len(chunks.CACHE) == 1  # 2 x 12 x 16 images to score: measured


def test_host_overhead_section_runs_every_attack_without_flips_and_splits_fixed_from_per_sample_time():
    """benchmarks/ceiling.py --host: its premise (no sample flips, so every sample runs every step) holds for every
    attack, and the fixed/slope split inverts a linear cost model."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ceiling.py"
    spec = importlib.util.spec_from_file_location("ceiling", path)
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    rows = ceiling.host_overhead((2, 5), image=8, repeats=1)
    assert {r["attack"] for r in rows} == set(ceiling.HOST_ATTACKS) and len(rows) == 2 * len(ceiling.HOST_ATTACKS)
    assert all(r["flips"] == 0 and r["seconds"] > 0 for r in rows)
    steps = ceiling.HOST_STEPS
    cells = {b: {"seconds": (300 + 2.5 * b) * steps * 1e-6} for b in (64, 512)}  # 300 us + 2.5 us per sample
    fixed, slope = ceiling.host_split(cells)
    assert fixed == pytest.approx(300) and slope == pytest.approx(2.5)
    assert "| fixed us per step |" in ceiling.host_report(rows, 8)
