"""The contract every registered attack keeps, checked for each entry of the attack registry.

A new attack registered with ``@ATTACKS.register`` gets these checks without new test code; it runs here
with its ``example_params`` against LPIPS(Alex) with a random backbone, in float64 (``batch_invariant``).
"""
import inspect
import math

import pytest
import torch

from lit_attacks.attacks import ATTACKS, AttackOutput, create_attack, list_attacks
from lit_attacks.attacks.objectives import to_uint8
from lit_attacks.attacks.output import FRACTION_COLUMNS, PIXEL_THRESHOLDS
from lit_attacks.datamodules.bapps import BappsDataModule

NAMES = list_attacks()
PER_SAMPLE = ("judge", "s0", "s1", "prey", "agreed", "tied", "s_other", "s_adv", "flipped", "s_adv_uint8", "flipped_uint8",
              "iterations", "queries", "eps", "rmse", "rmse_official", "psnr", "psnr_uint8", "linf")
COLUMNS = ["key", "category", *PER_SAMPLE, *FRACTION_COLUMNS, "status"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    dm = BappsDataModule(batch_size=4, builtin_n=4, cache_dir=str(tmp_path_factory.mktemp("cache")))
    b = next(iter(dm.predict_dataloader()))
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in b.items()}


def make(name, **kw):
    params = {**ATTACKS.get(name).example_params, **kw}
    return create_attack(name, "lpips_alex", pretrained=False, batch_invariant=True, **params)


def prey_images(batch, out):
    return torch.where(out.prey.bool().view(-1, 1, 1, 1), batch["p1"], batch["p0"])


def test_every_attack_is_registered_where_it_is_defined():
    assert {"fgsm", "pgd", "onepixel", "stadv", "flowadv", "spatial_pgd"} <= set(NAMES)
    for name in NAMES:
        assert ATTACKS.get(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_ranges_columns_and_rescored_flips(name, batch):
    a = make(name, keep_images=True)
    out = a.predict_step(batch)
    B = len(batch["key"])
    assert isinstance(out, AttackOutput) and len(out) == B and out.key == list(batch["key"])
    for field in PER_SAMPLE:
        assert getattr(out, field).shape == (B,), field
    assert out.fractions.shape == (B, len(PIXEL_THRESHOLDS)) and len(out.status) == B
    assert out.adv.shape == batch["ref"].shape and out.adv.min() >= -1 and out.adv.max() <= 1
    rows = out.rows()
    assert out.column_names()[:len(COLUMNS)] == COLUMNS and all(list(r) == out.column_names() for r in rows)
    m = a.metric
    with torch.no_grad():
        s_adv = m(batch["ref"], out.adv)  # re-scored here, independently of the attack's own scoring
        s_adv8 = m(batch["ref"], to_uint8(out.adv).permute(0, 3, 1, 2).double() / 127.5 - 1)
        s0, s1 = m(batch["ref"], batch["p0"]), m(batch["ref"], batch["p1"])
    ok = torch.tensor([s == "ok" for s in out.status])
    closer = (s0 > s1).long()  # the official rank: p1 when s0 > s1, p0 on a tie
    beyond = (lambda a, b: a < b) if a.reverse else (lambda a, b: a > b)  # a reverse attack flips towards ref
    torch.testing.assert_close(out.s_adv, s_adv, rtol=1e-9, atol=1e-12)
    assert torch.equal(out.flipped, beyond(s_adv, out.s_other) & ok)
    assert torch.equal(out.flipped_uint8, beyond(s_adv8, out.s_other) & ok)
    assert torch.equal(out.prey, closer ^ int(a.reverse))
    assert torch.equal(out.s_other, torch.where(out.prey.bool(), s0, s1))
    assert torch.equal(out.tied, s0 == s1)
    assert torch.equal(out.agreed, ((batch["judge"] > 0.5) == closer.bool()) & ~out.tied)
    delta = (out.adv - prey_images(batch, out)).flatten(1)
    torch.testing.assert_close(out.linf, delta.abs().amax(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.rmse, (delta * 127.5).pow(2).mean(1).sqrt(), rtol=1e-9, atol=1e-9)
    trunc = lambda t: ((t.float() + 1) * 127.5).floor().double()  # noqa: E731  util.tensor2im of the official code
    official = (trunc(out.adv) - trunc(prey_images(batch, out))).flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(out.rmse_official, official, rtol=1e-9, atol=1e-9)
    assert torch.equal(out.images["adv"], to_uint8(out.adv)) and out.images["ref"].dtype == torch.uint8


@pytest.mark.parametrize("name", NAMES)
def test_adversarial_images_stay_in_the_attack_budget(name, batch):
    a = make(name)
    if a.linf_budget is None:
        pytest.skip(f"{name} has no l_inf budget")
    out = a.predict_step(batch)
    assert (out.adv - prey_images(batch, out)).abs().max() <= a.linf_budget + 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_alone_equals_the_same_sample_in_a_batch(name, batch):
    """Every value to 1e-9, except that a pixel fraction ``|adv - prey| > t`` may differ by the pixels changed by t
    itself to within float64 round-off (1e-12): a PGD step of exactly alpha = t = 0.001 lands there, and which
    side of t it falls on is decided by the batch's round-off (adv agrees to ~1e-14)."""
    out = make(name).predict_step(batch)
    full = out.rows()
    for i in (0, len(full) - 1):
        one = make(name).predict_step({k: v[i:i + 1] for k, v in batch.items()}).rows()[0]
        delta = (out.adv[i] - prey_images(batch, out)[i]).abs().flatten()
        for col, v in one.items():
            if col in FRACTION_COLUMNS:
                t = PIXEL_THRESHOLDS[FRACTION_COLUMNS.index(col)]
                ties = ((delta - t).abs() < 1e-12).double().mean().item()
                assert abs(v - full[i][col]) <= ties + 1e-12, (name, i, col, v, full[i][col], ties)
            elif isinstance(v, float) and not isinstance(full[i][col], bool):
                assert v == pytest.approx(full[i][col], rel=1e-9, abs=1e-12, nan_ok=True), (name, i, col)
            else:
                assert v == full[i][col], (name, i, col)


@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_reaches_metric_parameters(name, batch):
    a = make(name)
    params = list(a.metric.parameters())
    assert params
    for p in params:
        p.requires_grad_(True)  # as if a caller had unfrozen the metric: an attack must still not touch it
    a.predict_step(batch)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameters_raise_naming_the_attack(name):
    cls = ATTACKS.get(name)
    numeric = [p.name for p in inspect.signature(cls).parameters.values()
               if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)]
    assert numeric
    for param in numeric:
        for bad in ("abc", math.nan):
            with pytest.raises(ValueError, match=rf"^{name}: {param} must be "):
                cls(metric="l2", **{param: bad})
    with pytest.raises(TypeError, match=rf"^{name}: .*not_a_parameter"):
        cls(metric="l2", not_a_parameter=1)


def _counting_metric(counts):
    """A user metric (mean squared difference) that counts per-sample evaluations in ``counts``: a forward pass 1, a
    backward pass 2 more (the unit of :meth:`AttackModule.cost`)."""

    def d(ref, x):
        counts["forward"] += x.shape[0]
        out = (x - ref).pow(2).flatten(1).mean(1)
        if out.requires_grad:
            out.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + g.shape[0]))
        return out

    return d


@pytest.fixture(scope="module")
def far_batch():
    """Prey = ref up to noise, other = the negative of ref: no attack flips within its example budget, so none stops
    early and every declared evaluation happens."""
    g = torch.Generator().manual_seed(0)
    B = 4
    ref = torch.rand(B, 3, 64, 64, generator=g, dtype=torch.float64) * 1.6 - 0.8
    p0 = (ref + 0.002 * torch.randn(B, 3, 64, 64, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return {"key": [f"val/cnn/{i}" for i in range(B)], "category": ["cnn"] * B,
            "judge": torch.zeros(B, dtype=torch.float64), "ref": ref, "p0": p0, "p1": -ref}


ADAPTIVE = {"stadv": "L-BFGS line searches take a data-dependent number of trials",
            "spatial_pgd": "its spatial stage is stAdv's L-BFGS"}


@pytest.mark.parametrize("name", NAMES)
def test_each_attack_declares_its_cost_and_makes_that_many_metric_evaluations(name, far_batch):
    from lit_attacks.attacks.base import AttackModule
    from lit_attacks.attacks.cost import attack_cost
    from lit_attacks.metrics.user import register_object

    cls = ATTACKS.get(name)
    assert cls.cost.__func__ is not AttackModule.cost.__func__, f"{name} declares no cost(params)"
    counts = {"forward": 0, "backward": 0}
    spec = register_object(_counting_metric(counts), f"counting_{name}")
    params = dict(cls.example_params)
    create_attack(name, spec, **params).predict_step(far_batch)  # once: sizes measured once per process (One-pixel)
    attack = create_attack(name, spec, **params)
    counts.update(forward=0, backward=0)
    out = attack.predict_step(far_batch)
    assert not out.flipped.any()
    B = len(far_batch["key"])
    counted = (counts["forward"] + 2 * counts["backward"]) / B
    declared, most = attack_cost(name, params), attack_cost(name, params, most=True)
    assert counted <= most + 1e-9, f"{name}: {counted} evaluations per sample, declared at most {most}"
    if name in ADAPTIVE:
        assert declared / 2 <= counted, f"{name}: {counted} evaluations, declared about {declared}"
    else:
        assert counted == declared, f"{name}: {counted} evaluations per sample, declared {declared}"
    bigger = {k: v * 2 for k, v in params.items() if k in ("steps", "queries", "iterations", "generations", "k")
              and isinstance(v, int)}
    if bigger:  # the declaration follows the attack's own parameters (a new parameter is never costed by name)
        assert attack_cost(name, {**params, **bigger}) > declared


def test_an_attack_without_a_cost_is_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import bench
    from lit_attacks.attacks.base import AttackModule

    monkeypatch.setattr(ATTACKS, "_factories", dict(ATTACKS._factories))  # the registration ends with the test
    monkeypatch.setattr(ATTACKS, "_info", dict(ATTACKS._info))

    @ATTACKS.register("uncosted_trial")
    class Uncosted(AttackModule):  # a user's new attack that forgot to declare its cost
        example_params = {}

        def __init__(self, metric="l2", tries: int = 1000, **options):
            super().__init__(metric, **options)

    with pytest.raises(SystemExit) as e:
        bench.main(["--metrics", "l2", "--attacks", "uncosted_trial", "--sweep-eps", "", "--out",
                    str(tmp_path / "run"), "--builtin-n", "2", "--quiet", "--wandb", "disabled"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uncosted_trial declares no cost(params)" in err[0], err
    assert not (tmp_path / "run" / "cells").exists()
