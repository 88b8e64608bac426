"""Our attacks and protocols against plain restatements of their sources (read, never copied).

Square l_2 (AutoAttack, ``fra31/auto-attack``, ``autoattack/square.py``, the ``L2`` branch of
``attack_single_run``): the window's new perturbation is ``eta`` times random signs plus the old window's
per-channel direction, normalised per channel and scaled to ``sqrt(max(eps^2 - ||delta||^2, 0) / c +
||delta * mask||^2)``, where both norms are ``lp_norm``: over all channels of the image (``(x ** 2).view(n,
-1).sum(-1).sqrt()``); the second window is zeroed and the whole perturbation renormalised to eps.
"""
from __future__ import annotations

import math

import pytest
import torch

from lit_attacks.attacks import square as sq


class _FixedDraws:
    """A stand-in for a sample stream: hands out fixed uniforms."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u

    def uniform(self, shape, rows=None, dtype=torch.float64):
        return self.u.view(-1, *shape).to(dtype)


def _autoattack_l2_step(x_best, x, eps, s, vh, vw, vh2, vw2, eta, signs):
    """One l_2 proposal of AutoAttack's Square for one image (C, H, W), restated with its positions, pattern and
    signs given."""
    c = x.shape[0]
    delta = x_best - x
    norm_img = math.sqrt(float((delta ** 2).sum()))
    mask = torch.zeros_like(x)
    mask[:, vh:vh + s, vw:vw + s] = 1.0
    mask[:, vh2:vh2 + s, vw2:vw2 + s] = 1.0
    norm_windows = math.sqrt(float(((delta * mask) ** 2).sum()))  # lp_norm: over all channels
    old = delta[:, vh:vh + s, vw:vw + s]
    old = old / (1e-12 + (old ** 2).sum(dim=(-2, -1), keepdim=True).sqrt())
    new = torch.ones(c, s, s, dtype=x.dtype) * eta.view(1, s, s) * signs.view(c, 1, 1) + old
    budget = math.sqrt(max(eps ** 2 - norm_img ** 2, 0.0) / c + norm_windows ** 2)
    new = new / (1e-12 + (new ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
    delta = delta.clone()
    delta[:, vh2:vh2 + s, vw2:vw2 + s] = 0.0
    delta[:, vh:vh + s, vw:vw + s] = new
    return (x + delta / (math.sqrt(float((delta ** 2).sum())) + 1e-12) * eps).clamp(-1, 1)


@pytest.mark.parametrize("p,delta_norm", [(0.1, 0.8), (0.05, 0.3), (0.3, 1.0)])
def test_square_l2_proposal_is_autoattacks(p, delta_norm):
    torch.manual_seed(0)
    A, C, H, W, eps = 3, 3, 32, 32, 1.0
    centre = torch.rand(A, C, H, W, dtype=torch.float64) * 1.6 - 0.8
    d = torch.randn(A, C, H, W, dtype=torch.float64)
    x_best = centre + d / d.flatten(1).norm(dim=1).view(A, 1, 1, 1) * delta_norm  # ||delta|| below eps
    u = torch.rand(A, 5 + C, dtype=torch.float64)
    got = sq.l2_propose(x_best, centre, eps, p, _FixedDraws(u), torch.arange(A))
    s = min(max(int(round(math.sqrt(p * H * W))), 3), H - 1, W - 1)
    s += 1 if s % 2 == 0 and s + 1 < min(H, W) else 0
    for a in range(A):
        vh, vw, vh2, vw2 = (int(v) for v in sq._positions(u[a:a + 1, :4], (H - s, W - s, H - s, W - s))[0])
        eta = sq._patterns(s, u[a:a + 1, 4] > 0.5, centre.device)[0]
        signs = sq._signs(u[a, 5:])
        want = _autoattack_l2_step(x_best[a], centre[a], eps, s, vh, vw, vh2, vw2, eta, signs)
        assert torch.allclose(got[a], want, atol=1e-12, rtol=0), (a, (got[a] - want).abs().max())


def test_square_eta_is_autoattacks_nested_rectangles():
    def rectangles(x, y):  # AutoAttack's eta_rectangles
        delta = torch.zeros(x, y, dtype=torch.float64)
        xc, yc = x // 2 + 1, y // 2 + 1
        c0, c1 = xc - 1, yc - 1
        for counter in range(max(xc, yc)):
            delta[max(c0, 0):min(c0 + 2 * counter + 1, x), max(0, c1):min(c1 + 2 * counter + 1, y)] += \
                1.0 / (counter + 1) ** 2
            c0, c1 = c0 - 1, c1 - 1
        return delta / (delta ** 2).sum().sqrt()

    for s in (3, 5, 8, 13, 57):
        want = torch.zeros(s, s, dtype=torch.float64)
        want[:s // 2] = rectangles(s // 2, s)
        want[s // 2:] = -rectangles(s - s // 2, s)
        want /= (want ** 2).sum().sqrt()
        assert torch.allclose(sq._eta(s), want, atol=1e-15), s


# ---------------------------------------------------------------------------------------------- R-CLIP
def _rclip_apgd(clf, x, y, norm, eps, n_iter, x_init, loss="ce", early_stop=True):
    """R-CLIP's ``apgd_train`` (fra31/perceptual-metrics, autopgd_train_clean.py) with alpha 2, ``x_init`` given
    (their ``use_rs`` start), restated on [0, 1] images: (the per-sample robust accuracy ``acc``, correct at the start
    and at every step; ``x_best``, the point of highest loss). ``norm``: "Linf" or "L2"; ``loss``: "ce" or
    "binary-margin"."""
    B = x.shape[0]

    def criterion(logits):
        if loss == "ce":
            return torch.nn.functional.cross_entropy(logits, y, reduction="none")
        onehot = torch.nn.functional.one_hot(y, num_classes=2).to(logits.dtype)
        return (logits * (1 - onehot) - logits * onehot).sum(-1)

    def l2n(t):
        return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def loss_grad(z):
        z = z.clone().requires_grad_(True)
        logits = clf(z)
        value = criterion(logits)
        g, = torch.autograd.grad(value.sum(), z)
        return value.detach(), g.detach(), logits.detach()

    x_adv = x_init.clone().clamp(0, 1)
    x_best = x_adv.clone()
    loss_steps = torch.zeros(n_iter, B, dtype=x.dtype)
    k, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    step = 2.0 * eps * torch.ones(B, 1, 1, 1, dtype=x.dtype)
    counter3 = 0
    loss_indiv, grad, logits = loss_grad(x_adv)
    grad_best = grad.clone()
    acc = logits.max(1)[1] == y
    loss_best = loss_indiv.clone()
    loss_best_last_check, reduced_last_check = loss_best.clone(), torch.ones_like(loss_best)
    x_adv_old = x_adv.clone()
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        if norm == "Linf":
            x1 = x_adv + step * torch.sign(grad)
            x1 = torch.clamp(torch.min(torch.max(x1, x - eps), x + eps), 0.0, 1.0)
            x1 = torch.clamp(torch.min(torch.max(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps), 0.0, 1.0)
        else:
            x1 = x_adv + step * grad / (l2n(grad) + 1e-12)
            x1 = torch.clamp(x + (x1 - x) / (l2n(x1 - x) + 1e-12) * torch.min(eps * torch.ones_like(x), l2n(x1 - x)),
                             0.0, 1.0)
            x1 = x_adv + (x1 - x_adv) * a + grad2 * (1 - a)
            x1 = torch.clamp(x + (x1 - x) / (l2n(x1 - x) + 1e-12) * torch.min(eps * torch.ones_like(x), l2n(x1 - x)),
                             0.0, 1.0)
        x_adv = x1
        loss_indiv, g, logits = loss_grad(x_adv)
        if i < n_iter - 1:
            grad = g
        acc = acc & (logits.max(1)[1] == y)
        loss_steps[i] = loss_indiv
        ind = loss_indiv > loss_best
        x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss_indiv[ind]
        counter3 += 1
        if counter3 == k:
            t = torch.zeros(B, dtype=x.dtype)
            for c in range(k):
                t += (loss_steps[i - c] > loss_steps[i - c - 1]).to(x.dtype)  # at the first: row -1, still 0
            osc = (t <= k * 0.75).to(x.dtype)
            osc = torch.max(osc, (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).to(x.dtype))
            reduced_last_check, loss_best_last_check = osc.clone(), loss_best.clone()
            m = osc > 0
            step[m] /= 2.0
            x_adv[m], grad[m] = x_best[m].clone(), grad_best[m].clone()
            counter3, k = 0, max(k - size_decr, n_iter_min)
        if early_stop and acc.sum() == 0:
            break
    return acc, x_best


@pytest.fixture(scope="module")
def fixture_batch(tmp_path_factory):
    from lit_attacks.datamodules.bapps import BappsDataModule

    dm = BappsDataModule(batch_size=10, builtin_n=10, cache_dir=str(tmp_path_factory.mktemp("cache")))
    b = next(iter(dm.predict_dataloader()))
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in b.items()}


@pytest.mark.parametrize("norm,radius", [("linf", 4), ("l2", 3.0), pytest.param("linf", 1, marks=pytest.mark.slow),
                                         pytest.param("l2", 0.5, marks=pytest.mark.slow)])
def test_rclip_preset_is_rclips_evaluation_sample_by_sample(fixture_batch, norm, radius):
    """The rclip_nights preset's attack (its ensemble, target and first checkpoint; 12 iterations here instead of
    100, and its radii plus smaller ones so that some samples hold) gives every sample the verdict R-CLIP's loop
    gives it from the same start."""
    from lit_attacks.attacks.registry import ATTACKS
    from lit_attacks.attacks.streams import Streams
    from lit_attacks.attacks.threat import random_start
    from lit_attacks.bench.config import CONFIG_DIR, load_yaml, merge
    from lit_attacks.metrics import create_metric
    from lit_attacks.tables.robust_rows import settings, worst_case_params

    cfg = merge(load_yaml(CONFIG_DIR / "rclip_nights.yaml"), {}, "rclip_nights")
    s = settings(cfg)
    assert s["target"] == "ref" and s["linf"] == [4] and s["l2"] == [3.0] and len(s["ensemble"]) == 1
    member = s["ensemble"][0]
    assert member["attack"] == "apgd" and member["params"] == {"loss": "ce", "steps": 100, "restarts": 1,
                                                              "random_init": True, "first_check": "autoattack"}
    steps = 12
    params = worst_case_params(s, norm, radius)
    params["attacks"] = [{"attack": "apgd", "params": {**member["params"], "steps": steps}}]
    attack = ATTACKS.get("worst_case")(metric="lpips_alex", pretrained=False, batch_invariant=True, **params)
    with torch.enable_grad():
        out = attack.predict_step(fixture_batch)
    ours = (out.agreed & ~out.flipped).tolist()
    assert all(st == "ok" for st in out.status)

    b = fixture_batch
    ref, p0, p1, keys = b["ref"], b["p0"], b["p1"], list(b["key"])
    metric = create_metric("lpips_alex", pretrained=False, dtype=torch.float64)
    y = (b["judge"] > 0.5).long()  # R-CLIP's label: the right image (p1) has the majority

    def clf(x01):  # R-CLIP's lpips_clf: logits (-d(ref, p0), -d(ref, p1)) on [0, 1] images
        x = 2 * x01 - 1
        return torch.stack((-metric(x, p0), -metric(x, p1)), dim=1)

    eps = params["eps"]  # on [-1, 1]; R-CLIP's budget on [0, 1] is half of it
    x0 = random_start(ref, eps, norm, 1, Streams.for_samples(0, keys, 0, ref.device))  # the start both take
    acc, _ = _rclip_apgd(clf, (ref + 1) / 2, y, "Linf" if norm == "linf" else "L2", eps / 2, steps, (x0 + 1) / 2)
    assert acc.tolist() == ours, (acc.tolist(), ours)
    assert 0 < sum(ours) or radius > 1  # the small radii leave some samples robust: both paths are exercised


@pytest.mark.parametrize("loss,norm", [("margin", "linf"), pytest.param("margin", "l2", marks=pytest.mark.slow),
                                       pytest.param("ce", "linf", marks=pytest.mark.slow)])
def test_apgd_path_is_rclips_with_autoattacks_first_checkpoint_only(fixture_batch, loss, norm):
    """Every step, not only the verdict: without stopping at flips, our APGD's best points equal R-CLIP's loop's
    from the same start with first_check="autoattack", and with our own first checkpoint ("start") they differ
    for some sample under the margin loss (negative before a flip, so R-CLIP's comparison with 0 counts no
    increase where ours does)."""
    from lit_attacks.attacks.apgd import apgd_run
    from lit_attacks.attacks.threat import Threat
    from lit_attacks.metrics import create_metric

    b = fixture_batch
    metric = create_metric("lpips_alex", pretrained=False, dtype=torch.float64)
    bound = metric.bind(b["ref"])
    s0, s1 = bound(b["p0"]), bound(b["p1"])
    prey_is_1 = s1 < s0
    prey = torch.where(prey_is_1.view(-1, 1, 1, 1), b["p1"], b["p0"])
    other = torch.where(prey_is_1.view(-1, 1, 1, 1), b["p0"], b["p1"])
    threat = Threat.on_prey(bound, prey, torch.where(prey_is_1, s0, s1))
    eps, steps = (4 / 255, 20) if norm == "linf" else (0.5, 20)  # on [-1, 1]
    runs = {fc: apgd_run(threat, prey, eps, norm, steps, loss, stop_at_flip=False, first_check=fc)[0]
            for fc in ("start", "autoattack")}

    def clf(x01):  # the prey is the label 0
        x = 2 * x01 - 1
        return torch.stack((-bound(x), -bound(other)), dim=1)

    y = torch.zeros(len(prey), dtype=torch.long)
    _, x_best = _rclip_apgd(clf, (prey + 1) / 2, y, "Linf" if norm == "linf" else "L2", eps / 2, steps,
                            (prey + 1) / 2, "ce" if loss == "ce" else "binary-margin", early_stop=False)
    assert torch.allclose((runs["autoattack"] + 1) / 2, x_best, atol=1e-9, rtol=0)
    if loss == "margin":
        assert not torch.allclose((runs["start"] + 1) / 2, x_best, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- the presets run
PROTOCOL_PRESETS = {"rclip_nights": ("nights", [], "ref", "unanimous"),
                    "rclip_bapps": ("bapps", [], "ref", "all"),
                    "worst_case_bapps": ("bapps", [], "prey", "unanimous"),
                    # at 224 px the full budgets take 9 minutes here even for l2: the layout is what is checked
                    "worst_case_nights": ("nights", ["--image-size", "48"], "prey", "unanimous"),
                    # LipSim's checkpoints cannot be downloaded here: its network with random SLL layers
                    "lipsim_nights": ("nights", ["--metrics", "lipsim", "--pretrained", "false"], "ref", "unanimous"),
                    "lipsim_bapps": ("bapps", ["--metrics", "lipsim", "--pretrained", "false"], "ref", "all")}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PROTOCOL_PRESETS))
def test_each_protocol_preset_runs_on_its_layout_and_says_what_it_measured(preset, tmp_path):
    import json

    import bench
    from lit_attacks.datamodules.nights import write_fixture
    from lit_attacks.datamodules.synthetic import write_tree

    layout, extra, target, samples = PROTOCOL_PRESETS[preset]
    per = 1 if preset.startswith("lipsim") else 2  # LipSim's network at 224 px: half a second per image here
    data = write_fixture(tmp_path / "nights", n=8) if layout == "nights" else write_tree(tmp_path / "bapps", per)
    out = tmp_path / "out"
    assert bench.main(["--config", preset, "--data", str(data), "--metrics", "l2", "--out", str(out), "--quiet",
                       "--wandb", "disabled", *extra]) == 0
    metric = extra[extra.index("--metrics") + 1] if "--metrics" in extra else "l2"
    entry = json.loads(next((out / "leaderboard").glob(f"*/{preset}/{metric}.json")).read_text())
    assert entry["protocol"]["name"] == preset and entry["protocol"]["target"] == target
    assert entry["protocol"].get("samples", "unanimous") == samples
    assert entry["dataset"]["name"] == layout
    n = entry["dataset"]["unanimous"]
    everything = 5 * per if layout == "bapps" else None  # the built-in tree: per triplets in each of 5 categories
    if samples == "all":
        assert n == everything
    elif layout == "bapps":
        assert n < everything  # the split judges are left out
    assert all(r["accuracy"]["n"] == n for r in entry["results"]["robust"])
    if preset.startswith("lipsim"):  # LipSim's radii, its certificate and ours, recounted from the per-sample CSV
        from lit_attacks.report import read_csv

        rows = read_csv(out / "samples" / "robust" / f"lipschitz-{metric}.csv")
        assert len(rows) == n and entry["protocol"]["lipschitz"] == {"radii_255": [36.0, 72.0, 108.0]}
        for c in entry["results"]["certified_lipschitz"]:
            for key, column in (("accuracy", "radius"), ("accuracy_sound", "radius_sound")):
                k = sum(r["correct"] == "True" and float(r[column]) > c["radius_255"] / 255 for r in rows)
                assert c[key]["k"] == k and c[key]["n"] == n
        assert entry["results"]["clean"]["k"] == sum(r["correct"] == "True" for r in rows)
        from lit_attacks.leaderboard.site import build

        build([out], tmp_path / "site")  # the site shows both certificates by their names
        board = (tmp_path / "site" / "leaderboard.md").read_text()
        assert "LipSim certified 36/255" in board and "sound certified 108/255" in board


# ---------------------------------------------------------------------------------------------- LipSim
def _lipsim_certified(e_ref, e0, e1, target, eps_list):
    """LipSim's get_certified_accuracy (SaraGhazanfari/lipsim, lipsim/core/evaluate.py) restated: (accuracy,
    certified) per eps, from raw embeddings."""
    def unit(e):
        return e / torch.norm(e, p=2, dim=1).unsqueeze(1)

    r, a, b = unit(e_ref), unit(e0), unit(e1)
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-6)
    bound = torch.norm(a - b, p=2, dim=1).unsqueeze(1)
    dist_0, dist_1 = 1 - cos(r, a), 1 - cos(r, b)
    outputs = torch.stack((dist_1, dist_0), dim=1)
    predicted = outputs.argmax(axis=1)
    correct = outputs.max(1)[1] == target
    fy_fi = outputs.max(dim=1)[0].reshape(-1, 1) - outputs
    mask = (outputs.max(dim=1)[0].reshape(-1, 1) - outputs) == 0
    fy_fi[mask] = torch.inf
    radius = (fy_fi / bound).min(dim=1)[0]
    acc = [int(predicted.eq(target).sum()) / len(target)] * len(eps_list)
    cert = [int((correct & (radius > eps)).sum()) / len(target) for eps in eps_list]
    return acc, cert


def test_lipsim_certificate_is_lipsims_computation():
    from lit_attacks.lipschitz import certificates, certified_fraction

    torch.manual_seed(0)
    B, D = 400, 16
    e_ref = torch.randn(B, D, dtype=torch.float64)
    e0 = e_ref + 0.8 * torch.randn(B, D, dtype=torch.float64)
    e1 = e_ref + 0.8 * torch.randn(B, D, dtype=torch.float64)
    e1[:5] = e0[:5]  # exact ties: LipSim predicts p0 and gives an infinite radius
    target = (torch.rand(B) > 0.5).long()
    eps_list = [36 / 255, 72 / 255, 108 / 255, 1.0]
    acc, cert = _lipsim_certified(e_ref, e0, e1, target, eps_list)
    c = certificates(e_ref, e0, e1, target, 1.0)
    correct = c["correct"].tolist()
    assert sum(correct) / B == pytest.approx(acc[0], abs=1e-12)
    got = [certified_fraction(correct, c["radius"].tolist(), eps) for eps in eps_list]
    assert got == pytest.approx(cert, abs=1e-12) and 0 < cert[0] < acc[0]
    assert all(c["radius"][:5] == math.inf) and all(c["predicted"][:5] == 0)


class _LinearCosine(torch.nn.Module):
    """1 - cos of a linear embedding W x of [0, 1] images, W with spectral norm ``lip`` (so its Lipschitz constant
    in l_2 on [0, 1] images is exactly ``lip``); rows of W that vary fast make the embedding of smooth images small."""

    def __init__(self, shape, dim, lip, seed=0, smooth=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = math.prod(shape)
        w = torch.randn(dim, n, generator=g, dtype=torch.float64)
        if smooth is False:  # checkerboard-modulated rows: small on smooth images
            c, h, wd = shape
            board = ((torch.arange(h).view(-1, 1) + torch.arange(wd).view(1, -1)) % 2 * 2 - 1).to(torch.float64)
            w = w * board.expand(c, h, wd).reshape(1, -1)
        self.w = w / torch.linalg.matrix_norm(w, ord=2) * lip
        self.name, self.lip = "linear_cosine", lip

    def embed(self, x):
        return ((x + 1) / 2).flatten(1) @ self.w.T

    def embedding_lipschitz(self, size):
        return self.lip

    def forward(self, ref, x, check=True):
        return 1 - torch.nn.functional.cosine_similarity(self.embed(ref), self.embed(x), dim=1, eps=1e-6)


def test_no_attack_flips_a_sample_inside_its_sound_radius_and_lipsims_can_be_too_large(fixture_batch):
    """The sound radius holds against APGD (l_2, on the reference, 60 steps, margin loss) at 0.98 of it; beyond
    three times it the attack flips some sample (the check is not vacuous); and on an embedding whose norm is below
    1 LipSim's radius is larger than what holds: the attack flips samples inside it."""
    from lit_attacks.attacks.apgd import apgd_run
    from lit_attacks.attacks.threat import Threat
    from lit_attacks.lipschitz import certificates

    b = fixture_batch
    ref, p0, p1 = (torch.nn.functional.avg_pool2d(b[k], 4) for k in ("ref", "p0", "p1"))  # 16 x 16: fast
    metric = _LinearCosine(tuple(ref.shape[1:]), 8, lip=1.0)
    preferred = (b["judge"] > 0.5).long()
    c = certificates(metric.embed(ref), metric.embed(p0), metric.embed(p1), preferred, 1.0)
    norms = c["ref_norm"]
    assert (norms < 1).any()  # the case LipSim's argument does not cover
    prey_is_1 = c["predicted"].bool()
    prey = torch.where(prey_is_1.view(-1, 1, 1, 1), p1, p0)
    other = torch.where(prey_is_1.view(-1, 1, 1, 1), p0, p1)
    d_other = torch.where(prey_is_1, c["d0"], c["d1"])

    def attack(radius01):  # per-sample l_2 budgets on [0, 1] images -> flipped (B,)
        threat = Threat("ref", metric, ref, prey, other, d_other)
        _, flipped, _, _ = apgd_run(threat, ref, 2 * radius01, "l2", 60, "margin")
        return flipped

    ok = c["correct"] & (c["radius_sound"] > 1e-6)
    assert ok.any()
    inside = attack(0.98 * c["radius_sound"].clamp(min=1e-9))
    assert not (inside & ok).any(), "a sample certified by the sound radius was flipped inside it"
    assert attack(3.0 * c["radius_sound"].clamp(min=1e-9))[ok].any()
    lipsim_inside = attack(0.98 * c["radius"].clamp(max=10.0))
    assert (lipsim_inside & c["correct"] & (c["radius"] > c["radius_sound"])).any(), \
        "expected LipSim's radius to overstate the certificate where the embedding norm is below 1"


@pytest.mark.parametrize("extra,message", [
    (["--metrics", "lipsim", "--pretrained", "false", "--image-size", "64"],
     "robust.lipschitz: lipschitz certificate: metric lipsim declares no Lipschitz bound of its embedding for 64x64 "
     "images; LipSim's network is 1-Lipschitz on its 224 x 224 input: run at --image-size 224"),
    (["--metrics", "l2"], "robust.lipschitz: lipschitz certificate: metric l2 is not an embedding distance")])
def test_a_metric_without_a_lipschitz_bound_is_refused_in_one_line_before_any_work(extra, message, tmp_path,
                                                                                   capsys):
    import bench

    out = tmp_path / "out"
    try:
        code = bench.main(["--config", "lipsim_nights", "--data", "builtin", "--builtin-n", "2", "--out", str(out),
                           "--quiet", "--wandb", "disabled", *extra])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (out / "cells").exists()


# ---------------------------------------------------------------------------------------------- ICLR Table 3
def _generator(**kw):
    from lit_attacks.tasks import create_task

    return create_task("transfer_generate", metric="l2", batch_invariant=True, **kw)


def test_the_transfer_filter_compares_8_bit_with_8_bit(fixture_batch):
    """An adversarial image equal to the prey has RMSE 0 under truncation too (the float prey against the
    truncated image gave 0.497)."""
    gen = _generator(spatial=[], ks=(), pgd_steps=(1,), uint8="trunc")
    B = len(fixture_batch["key"])
    gen._adversarial = lambda bound, prey, s_other, keys: ({"pgd1": prey.clone()}, {"pgd1": ["ok"] * B}, {})
    with torch.enable_grad():
        out = gen.predict_step(fixture_batch)
    assert out.variants["pgd1"]["rmse"].abs().max().item() == 0.0


def test_flowadv_by_algorithm_2_passes_only_what_it_accepted(fixture_batch):
    """The same FlowAdv flips most samples on l2; counted by Algorithm 2 with an unreachable perturbation bound,
    none passes (the algorithm accepted none), with a bound it always meets, every flip it accepted does."""
    def passes(**extra):
        flow = {"width": 4, "head": 4, "iterations": 20, "restarts": 1, "lr": 0.05, "perturbation": "paper",
                "out_scale": 0.5, **extra}
        gen = _generator(spatial=["flowadv"], ks=(), pgd_steps=(), spatial_params={"flowadv": flow}, rmse_max=1e9)
        with torch.enable_grad():
            return gen.predict_step(fixture_batch).variants["flowadv"]["pass"]

    final = passes(pert_bound=1e12)  # the same trajectories as the accepting run below
    assert final.sum() >= 5
    assert not passes(counting="paper", pert_bound=1e-12).any()
    accepted = passes(counting="paper", pert_bound=1e12)
    assert accepted.any() and (accepted <= final).all()


def test_spatial_pgd_projects_around_the_spatial_image_when_asked(fixture_batch):
    from lit_attacks.attacks.combined import pgd_snapshots
    from lit_attacks.metrics import create_metric

    b = fixture_batch
    metric = create_metric("l2", dtype=torch.float64)
    bound = metric.bind(b["ref"])
    prey, s_other = b["p0"], bound(b["p1"])
    start = (prey + 0.02 * torch.sign(torch.randn_like(prey))).clamp(-1, 1)  # a "spatial" image 0.02 away
    eps = 0.03
    around_prey = pgd_snapshots(bound, prey, s_other, [20], start, eps, 0.004)[20]
    around_start = pgd_snapshots(bound, prey, s_other, [20], start, eps, 0.004, centre=start)[20]
    assert (around_prey - prey).abs().max() <= eps + 1e-12
    assert (around_start - start).abs().max() <= eps + 1e-12 and (around_start - prey).abs().max() > eps


def test_iclr_table3_preset_runs_flowadv_by_the_text_with_the_texts_cut():
    from lit_attacks.bench.config import CONFIG_DIR, load_yaml, merge, validate
    from lit_attacks.tables.table3 import Table3

    cfg = merge(load_yaml(CONFIG_DIR / "table3_iclr.yaml"), {}, "table3_iclr")
    validate(cfg)
    assert cfg["transfer_flowadv"] == "paper" and cfg["transfer_pgd_centre"] == "start"
    assert cfg["rmse_max"] == pytest.approx(0.05 * 127.5) and cfg["transfer_list"] == "flowadv"
    assert "samples whose FlowAdv passed on the source (RMSE <= 6.375)" in Table3.title(cfg)


# ---------------------------------------------------------------------------------------------- Table 4
def test_table4_is_the_mean_score_gap_per_group_recounted_from_the_per_sample_scores(tmp_path):
    import csv
    import statistics

    from lit_attacks.bench.cli import execute

    out = tmp_path / "r"
    assert execute(["--metrics", "l2,ssim", "--attacks", "", "--sweep-eps", "", "--builtin-n", "4", "--out",
                    str(out), "--quiet", "--wandb", "disabled"]).code == 0
    got = list(csv.DictReader(open(out / "table4.csv")))
    want = []
    for metric, label in (("l2", "L2"), ("ssim", "SSIM")):
        scores = list(csv.DictReader(open(out / "scores" / f"{metric}.csv")))
        for cat in sorted({r["category"] for r in scores}) + ["all"]:
            group = [r for r in scores if cat in ("all", r["category"])]
            unanimous = [r for r in group if float(r["judge"]) in (0.0, 1.0)]
            gap = [abs(float(r["s0"]) - float(r["s1"])) for r in unanimous]
            want.append((cat, len(unanimous), statistics.fmean(gap) if gap else math.nan, len(group),
                         statistics.fmean(abs(float(r["s0"]) - float(r["s1"])) for r in group)))
    assert len(got) == len(want)
    for g, (cat, nu, mu, n, m) in zip(got, want):
        assert g["category"] == cat and int(g["unanimous"]) == nu and int(g["samples"]) == n
        assert float(g["mean_abs_diff_all"]) == pytest.approx(m, rel=1e-12)
        assert (math.isnan(mu) and g["mean_abs_diff"] in ("nan", "")) or float(g["mean_abs_diff"]) == \
            pytest.approx(mu, rel=1e-12)
    assert "# Table 4" in (out / "table4.md").read_text()


# ---------------------------------------------------------------------------------------------- PSNR of the 8-bit image
def test_psnr_of_the_saved_8_bit_image_is_its_own_number():
    from lit_attacks.attacks.objectives import perturbation_stats

    prey = (torch.randint(0, 256, (3, 3, 8, 8)).double() / 127.5 - 1)  # 8-bit values, as read from a PNG
    adv = prey.clone()
    adv[0] += 0.3 / 127.5  # under a third of a level: rounds back to the prey, truncation moves 63 of 256 levels
    adv[1] += 2.0 / 127.5  # two levels everywhere
    adv = adv.clamp(-1, 1)
    for mode in ("round", "trunc"):
        st = perturbation_stats(prey, adv, mode)
        levels = (lambda t: ((t + 1) * 127.5).round()) if mode == "round" else \
            (lambda t: ((t.float() + 1) * 127.5).trunc().double())  # the official tensor2im, in float32
        err = (levels(adv) - ((prey + 1) * 127.5).round()).flatten(1)
        want = 20 * torch.log10(255 / err.pow(2).mean(1).sqrt())
        assert torch.allclose(st["psnr_uint8"], want, equal_nan=True)
        assert torch.isfinite(st["psnr"]).tolist() == [True, True, False]  # the float image: only the unchanged one
    assert math.isinf(perturbation_stats(prey, adv, "round")["psnr_uint8"][0].item())  # rounded back: no change


def test_transfer_rmse_per_variant_is_recounted_from_the_source_csv(tmp_path):
    import csv

    from lit_attacks.bench.cli import execute

    out = tmp_path / "r"
    assert execute(["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--transfer", "--source", "l2",
                    "--flowadv-width", "4", "--builtin-n", "3", "--out", str(out), "--quiet", "--wandb",
                    "disabled"]).code == 0
    got = list(csv.DictReader(open(out / "transfer_rmse.csv")))
    src = list(csv.DictReader(open(out / "transfer" / "source-l2.csv")))
    assert {g["attack"] for g in got} >= {"pgd10", "stadv", "flowadv", "flowadv_pgd20"}
    for g in got:
        v = g["attack"]
        ran = [r for r in src if r[f"{v}:status"] == "ok"]
        passed = [float(r[f"{v}:rmse"]) for r in ran if r[f"{v}:pass"] == "True"]
        every = [float(r[f"{v}:rmse"]) for r in ran]
        assert int(g["passed"]) == len(passed) and int(g["samples"]) == len(every)
        assert float(g["rmse_255_all"]) == pytest.approx(sum(every) / len(every), rel=1e-12)
        assert float(g["rmse_pm1_all"]) == pytest.approx(sum(every) / len(every) / 127.5, rel=1e-12)
        if passed:
            assert float(g["rmse_255"]) == pytest.approx(sum(passed) / len(passed), rel=1e-12)
