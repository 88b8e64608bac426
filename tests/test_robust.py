"""Robust evaluation: APGD against a plain reference, Square's queries and black-box property, the worst case,
minimum epsilon, threats on the reference and on both images, EOT, and certified 2AFC against closed forms."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from lit_attacks.attacks import create_attack
from lit_attacks.attacks.apgd import apgd
from lit_attacks.attacks.objectives import split_prey
from lit_attacks.attacks.streams import sample_key
from lit_attacks.attacks.square import square
from lit_attacks.attacks.threat import Threat
from lit_attacks.certify import CertifyModule, clopper_pearson_lower
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.metrics import create_metric

from helpers import PyStream


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    dm = BappsDataModule(batch_size=16, builtin_n=4, cache_dir=str(tmp_path_factory.mktemp("cache")), unanimous_only=True)
    b = next(iter(dm.predict_dataloader()))
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in b.items()}


def head(batch, n):
    return {k: v[:n] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}


def threat_of(metric, batch, target="prey"):
    ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]
    with torch.no_grad():
        s0, s1 = metric(ref, p0), metric(ref, p1)
    prey, other, _, s_other = split_prey(p0, p1, s0, s1)
    return Threat(target, metric, ref, prey, other, s_other)


# ------------------------------------------------------------------------------ APGD
def plain_apgd(f, centre, s_other, eps, norm_, steps, x0, rho=0.75):
    """APGD for ONE sample as AutoAttack's loop reads (counter-based checkpoints), margin loss; (adv, iterations)."""
    def loss_grad(x):
        x = x.clone().requires_grad_(True)
        s = f(x)
        g, = torch.autograd.grad((s - s_other).sum(), x)
        return (s - s_other).item(), s.item(), g

    def proj(x):
        d = x - centre
        if norm_ == "linf":
            d = d.clamp(-eps, eps)
        else:
            n = d.pow(2).sum().sqrt()
            d = d * min(1.0, eps / (n.item() + 1e-12))
        return (centre + d).clamp(-1, 1)

    def direction(g):
        return g.sign() if norm_ == "linf" else g / (g.pow(2).sum().sqrt() + 1e-12)

    x = x0.clone()
    l, s, g = loss_grad(x)
    if s > s_other:
        return x, 0
    x_best, g_best, l_best, x_old, step = x, g, l, x, 2 * eps
    k, size_decr, k_min = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    counter, hist, l_best_last, reduced_last = 0, [l], l, True
    for i in range(steps):
        a = 0.75 if i > 0 else 1.0
        z = proj(x + step * direction(g))
        x_new = proj(x + a * (z - x) + (1 - a) * (x - x_old))
        x_old, x = x, x_new
        l, s, g = loss_grad(x)
        if s > s_other:
            return x, i + 1
        hist.append(l)
        if l > l_best:
            x_best, g_best, l_best = x, g, l
        counter += 1
        if counter == k:
            increases = sum(hist[j + 1] > hist[j] for j in range(len(hist) - 1))
            reduce = increases <= k * rho or (not reduced_last and l_best_last >= l_best)
            reduced_last, l_best_last = reduce, l_best
            if reduce:
                step, x, g = step / 2, x_best, g_best
            k, counter, hist = max(k - size_decr, k_min), 0, [hist[-1]]
    return x_best, steps


@pytest.mark.parametrize("norm_,eps", [("linf", 0.004), ("l2", 0.15)])
def test_apgd_equals_a_plain_per_sample_reference(batch, norm_, eps):
    batch = head(batch, 8)
    m = create_metric("lpips_alex", pretrained=False).double()
    t = threat_of(m, batch)
    keys = list(batch["key"])
    adv, flipped, iters, queries = apgd(t, keys, eps, norm_, steps=25, loss="margin", seed=3)
    assert 0 < int(flipped.sum()) < len(keys), "want both outcomes in the batch"
    for i, key in enumerate(keys):
        c = t.centre[i:i + 1]
        g, n = PyStream(sample_key(3, key, 0)), c[0].numel()  # the sample's stream, restated in plain Python
        d = torch.tensor([2 * u - 1 for u in g.uniforms(n)] if norm_ == "linf" else g.normals(n),
                         dtype=torch.float64).view(c.shape[1:])
        d = d / (d.abs().max() if norm_ == "linf" else d.pow(2).sum().sqrt())
        x0 = (c + eps * d).clamp(-1, 1)
        f = lambda x: m(batch["ref"][i:i + 1], x, check=False)  # noqa: E731
        ref_adv, ref_iters = plain_apgd(f, c, t.s_other_clean[i].item(), eps, norm_, 25, x0)
        torch.testing.assert_close(adv[i:i + 1], ref_adv, rtol=0, atol=1e-9)
        assert int(iters[i]) == ref_iters and int(queries[i]) == ref_iters + 1


def test_apgd_flips_every_sample_pgd_flips_and_more(tmp_path):
    dm = BappsDataModule(batch_size=64, builtin_n=16, cache_dir=str(tmp_path), unanimous_only=True)
    b = next(iter(dm.predict_dataloader()))
    pgd = create_attack("pgd", "lpips_alex", pretrained=False, eps=0.01, alpha=0.001, steps=20).predict_step(b)
    ap = create_attack("apgd", "lpips_alex", pretrained=False, eps=0.01, steps=20).predict_step(b)
    assert torch.equal(ap.s0, pgd.s0)
    assert not (pgd.flipped & ~ap.flipped).any(), [k for k, a, p in zip(ap.key, ap.flipped, pgd.flipped) if p and not a]
    assert int(ap.flipped.sum()) > int(pgd.flipped.sum())
    assert (ap.linf <= 0.01 + 1e-6).all()


# ------------------------------------------------------------------------------ Square
def test_square_counts_queries_exactly_stays_in_the_ball_and_takes_no_gradient(batch, monkeypatch):
    batch = head(batch, 8)
    m = create_metric("lpips_alex", pretrained=False).double()
    keys = list(batch["key"])
    calls = []
    m.model.net.register_forward_pre_hook(
        lambda mod, inp: calls.append((torch.is_grad_enabled(), inp[0].requires_grad, inp[0].shape[0])))

    def no_grad(*a, **k):
        raise AssertionError("Square took a gradient")

    for norm_, eps in (("linf", 0.02), ("l2", 2.0)):
        t = threat_of(m, batch)  # binds the references (their features are computed here, not below)
        calls.clear()
        with monkeypatch.context() as mp:
            mp.setattr(torch.autograd, "grad", no_grad)
            adv, flipped, q = square(t, keys, eps, norm_, queries=40, seed=1)
        assert calls and not any(g or r for g, r, _ in calls)  # every metric call: no graph, no input gradient
        assert sum(n for _, _, n in calls) == int(q.sum())  # each counted query is one image scored, and vice versa
        assert flipped.any() and not flipped.all()
        assert (q[~flipped] == 40).all() and (q[flipped] < 40).all()
        delta = (adv - t.centre).flatten(1)
        size = delta.abs().amax(1) if norm_ == "linf" else delta.pow(2).sum(1).sqrt()
        assert (size <= eps * (1 + 1e-9)).all() and adv.min() >= -1 and adv.max() <= 1
        with torch.no_grad():
            assert torch.equal(m(batch["ref"], adv) > t.s_other_clean, flipped)  # re-scored here
        for i in range(len(keys)):  # a sample's search does not depend on its batch
            _, alone, q_alone = square(t.select(torch.tensor([i])), [keys[i]], eps, norm_, queries=40, seed=1)
            assert bool(alone[0]) == bool(flipped[i]) and int(q_alone[0]) == int(q[i])


# ------------------------------------------------------------------------------ worst case, minimum epsilon
def test_worst_case_flips_what_any_of_its_attacks_flips_rescored(batch):
    batch = head(batch, 12)
    attacks = [{"attack": "apgd", "params": {"steps": 1, "seed": 1}},  # seed 1: its random start leaves FGSM a flip
               {"attack": "fgsm", "params": {"step": 0.005, "max_eps": 0.01}},
               {"attack": "square", "params": {"queries": 20}}]
    kw = dict(pretrained=False, batch_invariant=True)
    wc = create_attack("worst_case", "lpips_alex", attacks=attacks, eps=0.01, **kw).predict_step(batch)
    alone = [create_attack(a["attack"], "lpips_alex", **a["params"], **kw,
                           **({} if a["attack"] == "fgsm" else {"eps": 0.01})).predict_step(batch) for a in attacks]
    union = alone[0].flipped | alone[1].flipped | alone[2].flipped
    assert torch.equal(wc.flipped, union)
    assert (alone[1].flipped & ~alone[0].flipped).any(), "the second attack should add flips here"
    m = create_metric("lpips_alex", pretrained=False).double()
    with torch.no_grad():
        s_adv = m(batch["ref"], wc.adv)
    assert torch.equal(wc.flipped, s_adv > wc.s_other)  # re-scored here, independently
    first = [next((a["attack"] for a, o in zip(attacks, alone) if o.flipped[i]), "") for i in range(len(wc))]
    assert wc.extra["flipped_by"] == first
    assert (wc.linf <= 0.01 + 1e-9).all()


def test_min_eps_flips_at_the_found_eps_and_not_just_below(batch):
    batch = head(batch, 6)
    kw = dict(pretrained=False, batch_invariant=True)
    out = create_attack("min_eps", "lpips_alex", params={"steps": 4}, eps_max=0.03, bisections=4, **kw).predict_step(batch)
    found = ~torch.isnan(out.eps)
    assert found.any() and torch.equal(out.flipped, found)
    m = create_metric("lpips_alex", pretrained=False).double()
    t = threat_of(m, batch)
    ap = create_attack("apgd", "l2", steps=4, pretrained=False)
    lo = torch.tensor(out.extra["eps_lo"], dtype=torch.float64)
    idx = found.nonzero().flatten()
    sub = t.select(idx)
    keys = [batch["key"][i] for i in idx.tolist()]
    for eps, want in ((out.eps[idx], True), (lo[idx], False)):
        eps = eps.clamp(min=1e-12)  # lo is 0 when the smallest budget tried flipped
        res = ap.attack_at(sub, keys, eps)
        with torch.no_grad():
            s = m(sub.ref, res.adv.clamp(-1, 1))
        assert ((s > sub.s_other_clean) == want).all()
    assert ((out.eps[idx] - lo[idx]) <= 0.03 / 2 ** 4 + 1e-12).all()


# ------------------------------------------------------------------------------ threats on the reference and both images
@pytest.mark.parametrize("attack", ["pgd", "apgd", "fgsm"])
@pytest.mark.parametrize("target", ["ref", "both"])
def test_reference_and_both_image_threats_are_rescored_independently(batch, attack, target):
    batch = head(batch, 8)
    params = {"pgd": {"eps": 0.02, "alpha": 0.005, "steps": 5}, "apgd": {"eps": 0.02, "steps": 5}, "fgsm": {"step": 0.005, "max_eps": 0.05}}
    a = create_attack(attack, "lpips_alex", pretrained=False, batch_invariant=True, target=target, keep_images=True,
                      **params[attack])
    out = a.predict_step(batch)
    m = create_metric("lpips_alex", pretrained=False).double()
    ref, p0, p1 = batch["ref"], batch["p0"], batch["p1"]
    pick = out.prey.bool().view(-1, 1, 1, 1)
    prey, other = torch.where(pick, p1, p0), torch.where(pick, p0, p1)
    with torch.no_grad():
        if target == "ref":
            s_adv, s_oth = m(out.adv, prey), m(out.adv, other)
            moved = [(out.adv, ref)]
        else:
            other_adv = torch.from_numpy(out.images["adv_other"].numpy()).permute(0, 3, 1, 2).double() / 127.5 - 1
            s_adv = m(ref, out.adv)
            s_oth = out.s_other
            moved = [(out.adv, prey)]
            assert (other_adv - other).abs().max() <= a.linf_budget + 1 / 127.5
    torch.testing.assert_close(out.s_adv, s_adv, rtol=1e-9, atol=1e-12)
    if target == "ref":
        torch.testing.assert_close(out.s_other, s_oth, rtol=1e-9, atol=1e-12)
    assert torch.equal(out.flipped, out.s_adv > out.s_other)
    for adv, centre in moved:
        assert (adv - centre).abs().flatten(1).amax(1).max() <= a.linf_budget + 1e-9
    assert out.flipped.any()


def test_square_refuses_both_images_and_reverse_attack_refuses_other_targets():
    with pytest.raises(ValueError, match="square: target 'both' is not supported"):
        create_attack("square", "l2", target="both")
    with pytest.raises(ValueError, match="target must be one of prey, ref, both"):
        create_attack("apgd", "l2", target="other")


# ------------------------------------------------------------------------------ EOT
def test_eot_on_a_stochastic_metric_is_reproducible_and_judged_on_expectations(batch):
    batch = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in head(batch, 4).items()}
    kw = dict(pretrained=False, eps=0.02, steps=3, eot=2, eot_eval=4)
    a, b = (create_attack("apgd", "elpips_style_alex_random", **kw) for _ in range(2))
    assert a.metric.stochastic
    oa, ob = a.predict_step(batch), b.predict_step(batch)
    torch.testing.assert_close(oa.s_adv, ob.s_adv)
    assert torch.equal(oa.flipped, oa.s_adv > oa.s_other)
    fresh = oa.extra["flip_rate_fresh"]
    assert len(fresh) == len(oa) and all(0 <= f <= 1 for f in fresh)
    assert int(oa.queries.max()) <= 2 * 4  # eot calls per evaluation, 1 + 3 evaluations


# ------------------------------------------------------------------------------ certified 2AFC
def test_certified_radius_on_l2_matches_the_closed_form():
    """Noise on the reference with the l2 metric: the base classifier is a half-space, the probability of the
    preferred class is Phi(distance to the bisecting hyperplane / sigma), and Cohen's radius for the true
    probability is exactly that distance."""
    g = torch.Generator().manual_seed(0)
    B, H, sigma, n, alpha = 6, 8, 0.05, 4000, 0.001
    ref = (torch.rand(B, 3, H, H, generator=g, dtype=torch.float64) - 0.5) * 0.4
    pref = ref + 0.03 * torch.randn(B, 3, H, H, generator=g, dtype=torch.float64)
    other = ref + torch.linspace(0.03, 0.05, B, dtype=torch.float64).view(B, 1, 1, 1) * torch.randn(
        B, 3, H, H, generator=g, dtype=torch.float64)
    batch = {"key": [f"s{i}" for i in range(B)], "category": ["c"] * B, "judge": torch.zeros(B),
             "ref": ref, "p0": pref, "p1": other}
    out = CertifyModule("l2", sigma=sigma, n0=100, n=n, alpha=alpha, target="ref", batch_invariant=True).predict_step(batch)
    for i in range(B):
        a, b, r = pref[i].flatten().numpy(), other[i].flatten().numpy(), ref[i].flatten().numpy()
        dist = (np.sum((r - b) ** 2) - np.sum((r - a) ** 2)) / (2 * np.linalg.norm(b - a))  # > 0: preferred side
        p_true = norm.cdf(abs(dist) / sigma)
        k = int(out.votes[i])
        assert abs(k / n - p_true) <= 4 * math.sqrt(p_true * (1 - p_true) / n) + 1 / n
        p_low = beta.ppf(alpha, k, n - k + 1)
        assert out.p_lower[i] == pytest.approx(p_low, rel=1e-12)
        assert int(out.predicted[i]) == (1 if dist > 0 else 0)
        assert out.radius[i] == pytest.approx(sigma * norm.ppf(p_low), rel=1e-9)
        assert out.radius[i] <= abs(dist)  # a certificate never exceeds the true radius (w.p. 1 - alpha)
        p_floor = p_true - 4 * math.sqrt(p_true * (1 - p_true) / n) - 1 / n
        assert out.radius[i] >= sigma * norm.ppf(clopper_pearson_lower(int(p_floor * n), n, alpha)) - 1e-12


def test_certificates_do_not_depend_on_the_batch(batch):
    m = CertifyModule("lpips_alex", sigma=0.1, n0=8, n=24, target="both", pretrained=False, batch_invariant=True)
    full = m.predict_step(batch)
    half = {k: v[:3] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}
    part = m.predict_step(half)
    assert torch.equal(full.votes[:3], part.votes) and full.radius[:3] == part.radius
    one_at_a_time = CertifyModule("lpips_alex", sigma=0.1, n0=8, n=24, target="both", chunk=8, max_images=16,
                                  pretrained=False, batch_invariant=True)  # 16 pairs per call: one sample per call
    assert torch.equal(one_at_a_time.predict_step(batch).votes, full.votes)
