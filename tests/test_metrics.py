"""Generic properties of every registered metric (random backbones), plus independent references."""
import numpy as np
import piq
import pytest
import torch

from lit_attacks.metrics import MetricInputError, create_metric, list_metrics

from conftest import load_image, shared_file

ALL = list_metrics()
# the generic checks of the heaviest metrics run in the slow suite: DreamSim's ensemble (three ViT-B/16 at 224 px),
# E-LPIPS-VGG's 8 draws (elpips_vgg_random, one draw of the same network, stays fast), and the CLIP and LipSim
# metrics after the first of each (with random weights they are the same network)
HEAVY = {"dreamsim", "elpips_vgg", "rclip_tecoa_vitb16", "clip_vitb16_laion", "rclip_tecoa_convnext",
         "clip_convnext_laion", "lipsim_margin02", "lipsim_pretrained"}
ALL_FAST = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in ALL]
_CACHE = {}


def metric(name):
    if name not in _CACHE:
        _CACHE[name] = create_metric(name, pretrained=False)
    return _CACHE[name]


def same_draw(m, fn):
    """``fn()`` with a stochastic metric's generator reset first, so calls compared share one random draw (a
    stochastic metric draws once per call for the whole batch); a deterministic metric is just called."""
    if m.stochastic:
        m.generator.manual_seed(1234)
    return fn()


@pytest.mark.parametrize("name", ALL_FAST)
def test_batch_equals_each_sample_alone(name, seeded_batch):
    ref, x = seeded_batch
    m = metric(name)
    batch = same_draw(m, lambda: m(ref, x))
    alone = torch.cat([same_draw(m, lambda: m(ref[i:i + 1], x[i:i + 1])) for i in range(len(x))])
    assert batch.shape == (len(x),)
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ALL_FAST)
def test_identity_is_zero_and_distortion_positive(name, seeded_batch):
    ref, x = seeded_batch
    m = metric(name)
    assert m(ref, ref).abs().max().item() < 1e-5
    d = m(ref, x)
    assert (d.abs() > 1e-5).all() if m.signed else (d > 1e-5).all()  # signed: a quality regressor (WaDIQaM-FR)


@pytest.mark.parametrize("name", ALL_FAST)
def test_gradients_reach_input_not_parameters(name, seeded_batch):
    ref, x = seeded_batch
    m = metric(name)
    x = x.clone().requires_grad_(True)
    m(ref, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in m.parameters():
        assert not p.requires_grad and p.grad is None


@pytest.mark.parametrize("name", ALL_FAST)
def test_stays_in_eval_mode(name):
    m = metric(name)
    m.train()
    assert not m.training and not any(mod.training for mod in m.modules())


@pytest.mark.parametrize("name", ALL_FAST)
def test_bad_inputs_raise_naming_the_metric(name, seeded_batch):
    ref, x = seeded_batch
    m = metric(name)
    with pytest.raises(MetricInputError, match=f"{name}: ref and x shapes differ"):
        m(ref, x[:, :, :32])
    with pytest.raises(MetricInputError, match=rf"{name}: x must lie in \[-1, 1\]"):
        m(ref, x * 255)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(MetricInputError, match=f"{name}: x contains NaN"):
        m(ref, bad)
    with pytest.raises(MetricInputError, match=r"shape \(B, 3, H, W\)"):
        m(ref[:, :1], x[:, :1])


def test_l2_equals_plain_formula(seeded_batch):
    ref, x = seeded_batch
    r, a = ref.numpy().astype(np.float64), x.numpy().astype(np.float64)
    expected = np.array([((r[i] - a[i]) ** 2).sum() / r[i].size for i in range(len(r))])
    np.testing.assert_allclose(metric("l2")(ref, x).numpy(), expected, rtol=1e-5)


def test_ssim_equals_piq_with_documented_conversion(seeded_batch):
    ref, x = seeded_batch
    s = piq.ssim((x + 1) / 2, (ref + 1) / 2, data_range=1.0, reduction="none", downsample=False)
    torch.testing.assert_close(metric("ssim")(ref, x), (1 - s) / 2)  # downsampling is a no-op at 64x64


def test_ssim_rgb_and_luma_conventions_on_tid2013():
    """I01 (TID2013): piq's baseline 0.7842 (tolerance 0.01, as piq's test) with SSIM per RGB channel; the luma
    convention equals SSIM of the MATLAB rgb2gray images, computed here with piq directly."""
    ref = load_image(shared_file("images/piq_assets/I01.BMP"))
    x = load_image(shared_file("images/piq_assets/i01_01_5.bmp"))
    assert 1 - 2 * metric("ssim")(ref, x).item() == pytest.approx(0.7842, abs=0.01)
    grey = lambda t: (((t + 1) / 2) * torch.tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731
    want = piq.ssim(grey(x), grey(ref), data_range=1.0, reduction="none", downsample=True)
    torch.testing.assert_close(1 - 2 * create_metric("ssim", colour="luma")(ref, x), want)
    with pytest.raises(ValueError, match="colour must be one of rgb, luma"):
        create_metric("ssim", colour="grey")


@pytest.mark.parametrize("pair,mode,baseline,tol", [
    (("dists_examples/r0.png", "dists_examples/r1.png"), "RGB", 0.3347, 1e-4),  # DISTS repository
    (("piq_assets/goldhill.gif", "piq_assets/goldhill_jpeg.gif"), "L", 0.19509, 1e-3),  # the DISTS authors, via piq
    (("piq_assets/I01.BMP", "piq_assets/i01_01_5.bmp"), "RGB", 0.17321, 1e-3),
])
def test_dists_matches_the_authors_values_at_full_resolution(pair, mode, baseline, tol):
    ref, x = (load_image(shared_file(f"images/{p}"), mode=mode) for p in pair)
    with torch.no_grad():
        assert create_metric("dists")(ref, x).item() == pytest.approx(baseline, abs=tol)


def test_dists_resize_is_the_official_prepare_image():
    """resize=True: the shorter side to 256 (bilinear, antialiased) before scoring; a no-op on 256 px images."""
    import torch.nn.functional as F

    ref = load_image(shared_file("images/piq_assets/I01.BMP"))[..., :96, :128]
    x = load_image(shared_file("images/piq_assets/i01_01_5.bmp"))[..., :96, :128]
    plain, resized = create_metric("dists"), create_metric("dists", resize=True)
    up = lambda t: F.interpolate(t, size=(256, 341), mode="bilinear", align_corners=False, antialias=True)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(resized(ref, x), plain(up(ref).clamp(-1, 1), up(x).clamp(-1, 1)), rtol=1e-5, atol=1e-6)
        r0, r1 = (load_image(shared_file(f"images/dists_examples/{n}.png")) for n in ("r0", "r1"))
        assert resized(r0, r1).item() == plain(r0, r1).item()


def test_ssim_matches_matlab_baseline_on_goldhill():
    """piq's MATLAB baseline: SSIM(goldhill_jpeg, goldhill) = 0.8202 (grey, ssim.m's automatic 2x downsampling)."""
    ref = load_image(shared_file("images/piq_assets/goldhill.gif"), mode="L")
    x = load_image(shared_file("images/piq_assets/goldhill_jpeg.gif"), mode="L")
    s = 1 - 2 * metric("ssim")(ref, x).item()
    assert s == pytest.approx(0.8202, abs=5e-4)


@pytest.mark.parametrize("pair,mode,baseline", [
    (("goldhill.gif", "goldhill_jpeg.gif"), "L", 0.2665),  # MATLAB vifvec of Sheikh & Bovik, grey
    (("I01.BMP", "i01_01_5.bmp"), "RGB", 0.3147),  # the same on the YIQ luminance
])
def test_vif_p_matches_matlab_baselines(pair, mode, baseline):
    """piq's MATLAB baselines for VIF-p (its tests, v0.8): our distance is 1 - VIF-p on the same images."""
    ref = load_image(shared_file(f"images/piq_assets/{pair[0]}"), mode=mode)
    x = load_image(shared_file(f"images/piq_assets/{pair[1]}"), mode=mode)
    assert 1 - metric("vif_p")(ref, x).item() == pytest.approx(baseline, abs=1e-4)  # measured: 2.5e-5, 1.2e-5


# piq's MATLAB baselines (its tests, v0.8; values from the metric authors' MATLAB code), our distance converted back to
# the similarity (or deviation). Grey images are repeated to 3 channels: piq converts RGB to luminance first, so the
# scores equal the grey ones (FSIMc's chromatic term is 1 on grey images).
PIQ_BASELINES = [
    ("fsimc", "G", lambda d: 1 - d, 0.89691, 1e-4),
    ("fsimc", "C", lambda d: 1 - d, 0.92587, 1e-4),  # measured 0.92590
    ("gmsd", "G", lambda d: d, 0.138012587141798, 1e-5),
    ("gmsd", "C", lambda d: d, 0.094124655829098, 1e-5),
    ("mdsi", "G", lambda d: d, 0.395910876130775, 1e-5),
    ("mdsi", "C", lambda d: d, 0.338972600511665, 1e-5),
    ("vsi", "C", lambda d: 1 - d, 0.96405, 1e-5),
    ("srsim", "G", lambda d: 1 - d, 0.94652679, 1e-5),
    ("srsim", "C", lambda d: 1 - d, 0.9659730, 1e-5),
    ("dss", "G", lambda d: 1 - d, 0.45217181, 1e-3),  # piq's own tolerance; measured 0.45287
    ("dss", "C", lambda d: 1 - d, 0.77177436, 2e-4),  # MATLAB on uint8-rounded grey, ours on RGB: 0.77168
    ("haarpsi", "C", lambda d: 1 - d, 0.71706527, 1e-4),  # measured 0.71704
]


@pytest.mark.parametrize("name,pair,back,baseline,tol", PIQ_BASELINES,
                         ids=[f"{n}-{'goldhill' if p == 'G' else 'I01'}" for n, p, *_ in PIQ_BASELINES])
def test_piq_metrics_match_matlab_baselines(name, pair, back, baseline, tol):
    files, mode = ((("goldhill.gif", "goldhill_jpeg.gif"), "L") if pair == "G" else (("I01.BMP", "i01_01_5.bmp"), "RGB"))
    ref, x = (load_image(shared_file(f"images/piq_assets/{f}"), mode=mode) for f in files)
    with torch.no_grad():
        assert back(create_metric(name)(ref, x).item()) == pytest.approx(baseline, abs=tol)


@pytest.mark.parametrize("pair,scales,tf_value", [("G", 5, 0.9011584520339966), ("G", 3, 0.8574398756027222),
                                                 ("C", 5, 0.8799650073051453), ("C", 3, 0.8233466744422913)])
def test_ms_ssim_matches_tensorflow(pair, scales, tf_value):
    """tf.image.ssim_multiscale (TF 2.15; tests/reference/ms_ssim_tensorflow.py) on the full-size piq images."""
    files, mode = ((("goldhill.gif", "goldhill_jpeg.gif"), "L") if pair == "G" else (("I01.BMP", "i01_01_5.bmp"), "RGB"))
    ref, x = (load_image(shared_file(f"images/piq_assets/{f}"), mode=mode) for f in files)
    with torch.no_grad():
        assert 1 - 2 * create_metric("ms_ssim", scales=scales)(ref, x).item() == pytest.approx(tf_value, abs=5e-5)


def test_ms_ssim_rejects_too_small_images():
    ref = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="ms_ssim: images of .* too small"):
        metric("ms_ssim")(ref, ref)


def test_random_backbone_is_labelled():
    assert metric("lpips_vgg").label == "lpips_vgg [random backbone]"
    assert create_metric("l2", pretrained=False).label == "l2"


def test_elpips_identity_member_equals_inner_lpips(seeded_batch):
    ref, x = seeded_batch
    m = create_metric("elpips_style_alex", pretrained=False, n_transforms=1)
    m.offset_max = 0
    m.fixed = {"offset": torch.zeros(1, 2, dtype=torch.long), "flip": torch.tensor([3]),
               "perm": torch.tensor([[0, 1, 2]]), "color": torch.ones(1, 3), "scale_u": torch.zeros(1),
               "scale_offset": torch.zeros(1, 2)}
    torch.testing.assert_close(m(ref, x), m.model(ref, x).flatten())


def test_elpips_member_applies_flip_permutation_and_colour(seeded_batch):
    ref, x = seeded_batch
    m = create_metric("elpips_style_alex", pretrained=False, n_transforms=1)
    m.offset_max = 0
    colour = torch.tensor([0.5, 0.9, 0.3])
    m.fixed = {"offset": torch.zeros(1, 2, dtype=torch.long), "flip": torch.tensor([2]),
               "perm": torch.tensor([[2, 0, 1]]), "color": colour[None], "scale_u": torch.zeros(1),
               "scale_offset": torch.zeros(1, 2)}

    def by_hand(img):  # flip both axes, channels (2, 0, 1), scale colours, back to [-1, 1]
        img01 = (img + 1) / 2
        return img01.flip(2).flip(3)[:, [2, 0, 1]] * colour.view(1, 3, 1, 1) * 2 - 1

    torch.testing.assert_close(m(ref, x), m.model(by_hand(ref), by_hand(x)).flatten())


def test_elpips_seeded_and_deterministic_modes(seeded_batch):
    ref, x = seeded_batch
    a = create_metric("elpips_style_alex", pretrained=False, seed=3)
    b = create_metric("elpips_style_alex", pretrained=False, seed=3)
    torch.testing.assert_close(a(ref, x), a(ref, x))
    torch.testing.assert_close(a(ref, x), b(ref, x))
    r1 = create_metric("elpips_style_alex", pretrained=False, seed=3, deterministic=False)
    r2 = create_metric("elpips_style_alex", pretrained=False, seed=3, deterministic=False)
    first, second = r1(ref, x), r1(ref, x)
    assert not torch.allclose(first, second)  # a fresh ensemble each call
    torch.testing.assert_close(first, r2(ref, x))  # same seed, same sequence
    assert r1.stochastic and not a.stochastic
    assert create_metric("elpips_style_alex_random", pretrained=False, seed=3).stochastic


def test_random_backbone_is_reproducible(seeded_batch):
    """Two processes (or runs) building the same random-backbone metric get the same network."""
    ref, x = seeded_batch
    torch.manual_seed(123)
    a = create_metric("lpips_alex", pretrained=False)
    torch.manual_seed(456)
    b = create_metric("lpips_alex", pretrained=False)
    torch.testing.assert_close(a(ref, x), b(ref, x))
    c = create_metric("lpips_alex", pretrained=False, init_seed=1)
    assert not torch.allclose(a(ref, x), c(ref, x))


# The bound path of the embedding metrics is EmbeddingDistance's own (embed the references once), checked in the fast
# suite on dreamsim_clip and dreamsim_open_clip; on these four large networks (13-17 s each on 2 CPU cores) it
# runs in the slow suite.
HEAVY_BIND = {"dreamsim_dino", "lipsim", "rclip_fare_vitb16", "rclip_fare_convnext"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n.startswith("elpips") or n in HEAVY or n in HEAVY_BIND
                                  else n for n in ALL])  # E-LPIPS-style: many random draws of a VGG, ~25 s each
def test_bound_distance_equals_plain_call_and_selects(name, seeded_batch):
    """``bind`` (which caches reference features for LPIPS) gives the same distances, also on a subset."""
    ref, x = seeded_batch
    m = metric(name)
    bound = m.bind(ref)
    d = lambda f: same_draw(m, f)  # noqa: E731
    torch.testing.assert_close(d(lambda: bound(x)), d(lambda: m(ref, x)), rtol=1e-4, atol=1e-6)
    idx = torch.tensor([2, 0])
    torch.testing.assert_close(d(lambda: bound.select(idx)(x[idx])), d(lambda: m(ref[idx], x[idx])), rtol=1e-4, atol=1e-6)
    rep = bound.repeat_interleave(2)
    torch.testing.assert_close(d(lambda: rep(x.repeat_interleave(2, 0))), d(lambda: m(ref, x)).repeat_interleave(2),
                               rtol=1e-4, atol=1e-6)
    tiled = bound.tile(2)
    torch.testing.assert_close(d(lambda: tiled(torch.cat([x, x.flip(0)]))),
                               torch.cat([d(lambda: m(ref, x)), d(lambda: m(ref, x.flip(0)))]), rtol=1e-4, atol=1e-6)
