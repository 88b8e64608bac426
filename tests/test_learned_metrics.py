"""Learned metrics whose weights come from their authors' releases (Watson-DFT, the R-LPIPS checkpoints): the
arithmetic against independent restatements on generated weight files of the released layout, the file lookup,
checksums and the errors. The released files cannot be downloaded here; the values measured with them are in
each metric's docstring (docs/metrics.md)."""
import urllib.error

import numpy as np
import pytest
import torch

from lit_attacks.metrics import WeightsNotFoundError, create_metric
from lit_attacks.metrics import weights as W
from lit_attacks.metrics.watson import WATSON_FILES

from conftest import load_image, photo_triplet, shared_file, weights_file


# ----------------------------------------------------------------------------------------------- Watson-DFT
CHANNELS = ("ly", "lcb", "lcr")


def watson_file(path, seed=0):
    """A state dict with the layout of the authors' rgb_watson_fft_trial0.pth and random values in its ranges."""
    g = torch.Generator().manual_seed(seed)
    sd = {"w_tild": torch.randn(3, generator=g) * 0.1,
          "to_YCbCr.transform": torch.tensor([[.299, -.1687, .5], [.587, -.3313, -.4187], [.114, .5, -.0813]]),
          "to_YCbCr.bias": torch.tensor([0., .5, .5])}
    for c in CHANNELS:
        sd.update({f"{c}.blocksize": torch.tensor(8), f"{c}.t_tild": torch.randn(8, 5, generator=g),
                   f"{c}.alpha": torch.rand((), generator=g) * 2 - 1, f"{c}.w_tild": torch.randn((), generator=g) - 2,
                   f"{c}.beta": 0.5 + torch.rand((), generator=g), f"{c}.w_phase_tild": torch.randn(8, 5, generator=g) - 2})
    torch.save(sd, path / WATSON_FILES["rgb"][0])
    return {k: v.double().numpy() for k, v in sd.items()}


def watson_numpy(ref, x, sd, eps=1e-10):
    """The authors' Watson-DFT (watson_fft.py + color_wrapper.py, deterministic), restated in float64 numpy for one
    image pair (3, H, W) in [0, 1], minus its value at x = ref."""
    def ycbcr(im):
        return np.einsum("chw,cd->dhw", im, sd["to_YCbCr.transform"]) + sd["to_YCbCr.bias"][:, None, None]

    def blocks(ch):
        H, W = ch.shape
        b = ch.reshape(H // 8, 8, W // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
        return np.fft.rfft2(b) / 64

    def channel(a, b, c):
        t_tild, alpha, w_tild, beta, wp = (sd[f"{c}.{k}"] for k in ("t_tild", "alpha", "w_tild", "beta", "w_phase_tild"))
        c0, c1 = blocks(a), blocks(b)
        amp0 = np.sqrt((c0.real + eps) ** 2 + (c0.imag + eps) ** 2)
        amp1 = np.sqrt((c1.real + eps) ** 2 + (c1.imag + eps) ** 2)
        t_l = np.exp(t_tild)[None] * (((amp0[:, 0, 0] + eps) / (amp0[:, 0, 0].mean() + eps)) ** alpha)[:, None, None]
        w = 1 / (1 + np.exp(-w_tild))
        m = (amp0 + eps) ** w * t_l ** (1 - w)
        e1, e2 = np.exp(t_l - np.maximum(t_l, m)), np.exp(m - np.maximum(t_l, m))
        s = (t_l * e1 + m * e2) / (e1 + e2)
        pooled = (((np.abs((amp0 - amp1) / s) + eps) ** beta + eps).sum()) ** (1 / beta)
        w_phase = np.exp(wp)
        for i, j in ((0, 0), (0, 4), (4, 4), (4, 0)):
            w_phase[i, j] = 0
        ph0, ph1 = np.arctan2(c0.imag, c0.real + eps), np.arctan2(c1.imag, c1.real + eps)
        phase = (np.arccos(np.cos(ph0 - ph1) * (1 - 1e-7)) * w_phase[None]).sum()
        return pooled + phase

    mix = np.exp(sd["w_tild"]) / np.exp(sd["w_tild"]).sum()
    yr, yx = ycbcr(ref), ycbcr(x)
    return sum(mix[i] * (channel(yr[i], yx[i], c) - channel(yr[i], yr[i], c)) for i, c in enumerate(CHANNELS))


def test_watson_dft_equals_float64_restatement_of_the_authors_code(empty_hub, seeded_batch):
    sd = watson_file(empty_hub)
    m = create_metric("watson_dft", weights_dir=str(empty_hub))
    ref, x = seeded_batch
    got = m(ref.double(), x.double())
    want = [watson_numpy(((r + 1) / 2).numpy().astype(np.float64), ((a + 1) / 2).numpy().astype(np.float64), sd)
            for r, a in zip(ref, x)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert m(ref, ref).abs().max() < 1e-4 * got.min()  # the offset is removed (in float32 too)
    np.testing.assert_allclose(m(ref, x).numpy(), want, rtol=1e-4)


def test_watson_dft_is_not_symmetric_the_reference_sets_the_masking(empty_hub, seeded_batch):
    watson_file(empty_hub)
    m = create_metric("watson_dft", weights_dir=str(empty_hub))
    ref, x = seeded_batch
    assert not torch.allclose(m(ref, x), m(x, ref), rtol=1e-3)


def test_watson_dft_grey_uses_the_luma_and_the_grey_file(empty_hub, seeded_batch):
    g = torch.Generator().manual_seed(3)
    sd = {"blocksize": torch.tensor(8), "t_tild": torch.randn(8, 5, generator=g), "alpha": torch.tensor(0.3),
          "w_tild": torch.tensor(-1.0), "beta": torch.tensor(0.8), "w_phase_tild": torch.randn(8, 5, generator=g) - 2}
    torch.save(sd, empty_hub / WATSON_FILES["grey"][0])
    m = create_metric("watson_dft", weights_dir=str(empty_hub), colour="grey")
    ref, x = seeded_batch
    # the grey model on the luma equals the colour model whose chroma channels get zero weight
    rgb = {k: v.double().numpy() for k, v in sd.items()}
    full = {"w_tild": np.array([0.0, -1e3, -1e3]), "to_YCbCr.transform": np.array(
        [[.299, -.1687, .5], [.587, -.3313, -.4187], [.114, .5, -.0813]]), "to_YCbCr.bias": np.array([0., .5, .5])}
    for c in CHANNELS:
        full.update({f"{c}.{k}": rgb[k] for k in ("t_tild", "alpha", "w_tild", "beta", "w_phase_tild")})
    want = [watson_numpy(((r + 1) / 2).double().numpy(), ((a + 1) / 2).double().numpy(), full) for r, a in zip(ref, x)]
    np.testing.assert_allclose(m(ref.double(), x.double()).numpy(), want, rtol=1e-6)


def test_watson_dft_rejects_sizes_off_the_block_grid(empty_hub):
    watson_file(empty_hub)
    m = create_metric("watson_dft", weights_dir=str(empty_hub))
    with pytest.raises(ValueError, match="watson_dft: image size 60x64 is not a multiple of the 8x8 blocks"):
        m(torch.zeros(1, 3, 60, 64), torch.zeros(1, 3, 60, 64))


def test_watson_dft_offline_error_names_file_and_url(empty_hub, monkeypatch):
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError) as e:
        create_metric("watson_dft")
    msg = str(e.value)
    assert "rgb_watson_fft_trial0.pth" in msg and "raw.githubusercontent.com/SteffenCzolbe" in msg
    assert "LIT_ATTACKS_WEIGHTS_DIR" in msg


def test_watson_dft_failed_download_leaves_no_partial_file(empty_hub, monkeypatch):
    def broken(url, dst, progress=True):
        open(dst, "wb").write(b"half a file")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken)
    monkeypatch.delenv(W.ENV_OFFLINE, raising=False)
    with pytest.raises(WeightsNotFoundError, match="URLError"):
        create_metric("watson_dft")
    assert not any(W.hub_checkpoints_dir().glob("*"))


def test_watson_dft_checksum_guards_the_cache(empty_hub, monkeypatch):
    """A cached or downloaded file must be the authors' (sha256); a file in the weights folder is the user's choice."""
    def fake_download(url, dst, progress=True):
        watson_file(empty_hub)  # writes a same-layout file that is not the authors'
        (empty_hub / WATSON_FILES["rgb"][0]).replace(dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.delenv(W.ENV_OFFLINE, raising=False)
    with pytest.raises(RuntimeError, match=r"watson_dft: weights file .*rgb_watson_fft_trial0.pth.* has sha256 .*expected 98386c0e"):
        create_metric("watson_dft")


def test_watson_dft_runs_on_the_example_triplet(empty_hub):
    watson_file(empty_hub)
    m = create_metric("watson_dft", weights_dir=str(empty_hub))
    ref, p0, p1 = (load_image(shared_file(f"images/lpips_examples/ex_{n}.png")) for n in ("ref", "p0", "p1"))
    d = m(torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert torch.isfinite(d).all() and (d > 0).all()


# ------------------------------------------------------------------------------------- R-LPIPS (released)
def _package_lpips(sd):
    """The lpips package's own network with a state dict loaded: the independent reference."""
    import lpips

    net = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    net.load_state_dict(sd, strict=False)
    return net.eval()


def rlpips_file(path, fname, backbone=True, tune=False, prefix="", seed=0):
    """An R-LPIPS checkpoint of the authors' layout: the whole lpips.LPIPS state dict (ImageNet AlexNet from
    shared/data, heads perturbed; ``tune``: the AlexNet perturbed too), or the heads only."""
    feats = torch.load(weights_file("alexnet_features_tv_IMAGENET1K_V1.pth"), weights_only=True)
    net = _package_lpips({})
    sd = net.state_dict()
    slices = {f"net.slice{i}.{k}": None for i in range(1, 6) for k in dict(getattr(net.net, f"slice{i}").state_dict())}
    for key in slices:
        sd[key] = feats[key.split(".", 2)[2]].clone()
    g = torch.Generator().manual_seed(seed)
    for k in [k for k in sd if k.startswith("lin") and k.endswith("weight")]:
        sd[k] = torch.rand(sd[k].shape, generator=g) * 0.1
    if tune:
        sd["net.slice1.0.weight"] = sd["net.slice1.0.weight"] * (1 + 0.1 * torch.randn(sd["net.slice1.0.weight"].shape, generator=g))
    full = dict(sd)
    for i in range(5):  # lins.i is the same module as lin{i}: keep both names in step, as lpips does
        for k in ("model.1.weight",):
            full[f"lins.{i}.{k}"] = full[f"lin{i}.{k}"]
    saved = {prefix + k: v for k, v in full.items() if backbone or not k.startswith("net.")}
    torch.save(saved, path / fname)
    return full


@pytest.mark.parametrize("name,fname,kwargs", [
    ("rlpips_linf_x0", "latest_net_linf_x0.pth", {}),  # the authors' file name in the weights folder
    ("rlpips_linf_ref", "rlpips_latest_net_linf_ref.pth", {"prefix": "module."}),  # our cache name, DataParallel keys
    ("rlpips_linf_x0_tune", "latest_net_linf_x0_tune.pth", {"tune": True}),  # fine-tuned AlexNet read from the file
])
def test_released_rlpips_equals_lpips_with_the_checkpoint(empty_hub, name, fname, kwargs):
    sd = rlpips_file(empty_hub, fname, **kwargs)
    m = create_metric(name, weights_dir=str(empty_hub))
    ref, p0, p1 = photo_triplet()  # any real images: two implementations are compared
    refs, xs = torch.cat([ref, ref]), torch.cat([p0, p1])
    want = _package_lpips(sd)(refs, xs).flatten()
    torch.testing.assert_close(m(refs, xs), want, rtol=1e-6, atol=1e-7)
    plain = create_metric("lpips_alex", weights_dir=str(weights_file()))(refs, xs)
    assert not torch.allclose(m(refs, xs), plain, rtol=1e-2)  # the checkpoint's heads, not the package's
    assert m.label == name and m.pretrained


def test_released_rlpips_heads_only_file_takes_the_imagenet_alexnet(empty_hub):
    sd = rlpips_file(empty_hub, "latest_net_linf_x1.pth", backbone=False)
    feats = weights_file("alexnet_features_tv_IMAGENET1K_V1.pth")
    (empty_hub / feats.name).symlink_to(feats)
    m = create_metric("rlpips_linf_x1", weights_dir=str(empty_hub))
    ref, p0, _ = photo_triplet()
    torch.testing.assert_close(m(ref, p0), _package_lpips(sd)(ref, p0).flatten(), rtol=1e-6, atol=1e-7)


def test_released_rlpips_errors(empty_hub, monkeypatch):
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError) as e:
        create_metric("rlpips_linf_x0_x1")
    assert "rlpips_latest_net_linf_x0_x1.pth" in str(e.value) and "SaraGhazanfari/R-LPIPS" in str(e.value)
    torch.save({"alpha": torch.zeros(1)}, empty_hub / "latest_net_linf_x0.pth")
    with pytest.raises(RuntimeError, match=r"rlpips_linf_x0: .*latest_net_linf_x0.pth is not an R-LPIPS .* lacks \['lin0"):
        create_metric("rlpips_linf_x0", weights_dir=str(empty_hub))


# ---------------------------------------------------------------------------------------------- WaDIQaM-FR
def wadiqam_file(path, fname, top="weighted", prefix="", seed=0):
    """A Chainer save_hdf5 file of the authors' FRModel layout (groups conv1..conv10, fc1, fc2[, fc1_a, fc2_a] with
    datasets W and b), random weights scaled so activations stay in range for 0..255 inputs."""
    h5py = pytest.importorskip("h5py")
    g = np.random.default_rng(seed)
    params = {}
    chans = (3, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512)
    for i in range(10):
        fan_in = chans[i] * 9
        params[f"conv{i + 1}"] = (g.normal(0, (2 / fan_in) ** 0.5, (chans[i + 1], chans[i], 3, 3)),
                                  g.normal(0, 0.01, chans[i + 1]))
    heads = ("fc1", "fc2", "fc1_a", "fc2_a") if top == "weighted" else ("fc1", "fc2")
    for n in heads:
        shape = (512, 1536) if n.startswith("fc1") else (1, 512)
        params[n] = (g.normal(0, (1 / shape[1]) ** 0.5, shape), g.normal(0, 0.1, shape[0]))
    with h5py.File(path / fname, "w") as f:
        for n, (w, b) in params.items():
            grp = f.require_group(prefix + n)
            grp.create_dataset("W", data=w.astype(np.float32))
            grp.create_dataset("b", data=b.astype(np.float32))
    return {n: (torch.from_numpy(w).float(), torch.from_numpy(b).float()) for n, (w, b) in params.items()}


def wadiqam_reference(params, ref, x, top="weighted"):
    """The authors' evaluate.py for one image pair (3, H, W) in [-1, 1]: patch by patch, 0..255 pixel values."""
    import torch.nn.functional as F

    def feats(p):
        h = p[None]
        for i in range(10):
            w, b = params[f"conv{i + 1}"]
            h = torch.relu(F.conv2d(h, w, b, padding=1))
            if i % 2:
                h = F.max_pool2d(h, 2)
        return h.flatten()

    ys, a_s = [], []
    H, W = ref.shape[-2:]
    for r in range(0, H - 31, 32):
        for c in range(0, W - 31, 32):
            fx = feats((x[:, r:r + 32, c:c + 32] + 1) * 127.5)
            fr = feats((ref[:, r:r + 32, c:c + 32] + 1) * 127.5)
            h = torch.cat([fx - fr, fx, fr])
            lin = lambda n, v: params[n][0] @ v + params[n][1]  # noqa: E731
            ys.append(lin("fc2", torch.relu(lin("fc1", h)))[0])
            a_s.append(torch.relu(lin("fc2_a", torch.relu(lin("fc1_a", h))))[0] + 1e-6 if top == "weighted" else torch.tensor(1.0))
    ys, a_s = torch.stack(ys), torch.stack(a_s)
    return (ys * a_s).sum() / a_s.sum()


@pytest.mark.parametrize("dataset,top,fname,prefix", [
    ("live", "weighted", "fr_live_weighted.model", ""),
    ("tid", "weighted", "wadiqam_fr_tid_weighted.model", "predictor/"),  # our cache name; a Classifier's level
    ("tid", "patchwise", "fr_tid_patchwise.model", ""),
])
def test_wadiqam_fr_equals_the_authors_patchwise_evaluation(empty_hub, dataset, top, fname, prefix):
    params = wadiqam_file(empty_hub, fname, top, prefix)
    m = create_metric(f"wadiqam_fr_{dataset}", weights_dir=str(empty_hub), top=top)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 64, 80, generator=g) * 2 - 1  # 80 px: a 16 px remainder the authors leave out
    x = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        q = m.quality(ref, x)
        want = torch.stack([wadiqam_reference(params, r, a, top) for r, a in zip(ref, x)])
        torch.testing.assert_close(q, want, rtol=1e-4, atol=1e-4)
        q0 = torch.stack([wadiqam_reference(params, r, r, top) for r in ref])
        sign = -1 if dataset == "tid" else 1  # MOS: higher is better; DMOS: higher is worse
        torch.testing.assert_close(m(ref, x), sign * (want - q0), rtol=1e-4, atol=1e-4)
        assert m(ref, ref).abs().max() == 0 and m.signed


def test_wadiqam_fr_errors(empty_hub, monkeypatch):
    import importlib.util

    wadiqam_file(empty_hub, "fr_live_weighted.model", top="patchwise")  # a patchwise file where a weighted one is asked
    with pytest.raises(RuntimeError, match="wadiqam_fr_live: the model file lacks 'fc1_a/W'"):
        create_metric("wadiqam_fr_live", weights_dir=str(empty_hub))
    (empty_hub / "fr_live_weighted.model").rename(empty_hub / "fr_live_patchwise.model")
    m = create_metric("wadiqam_fr_live", weights_dir=str(empty_hub), top="patchwise")
    with pytest.raises(ValueError, match="wadiqam_fr: images of 16x64 are smaller than one 32x32 patch"):
        m(torch.zeros(1, 3, 16, 64), torch.zeros(1, 3, 16, 64))
    (empty_hub / "fr_tid_weighted.model").write_bytes(b"not hdf5")
    with pytest.raises(RuntimeError, match="wadiqam_fr_tid: .*fr_tid_weighted.model.* is not a readable HDF5 model"):
        create_metric("wadiqam_fr_tid", weights_dir=str(empty_hub))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real(name, *a))
    with pytest.raises(ImportError, match=r"wadiqam_fr_live needs h5py: pip install -e \".\[wadiqam\]\""):
        create_metric("wadiqam_fr_live", weights_dir=str(empty_hub), top="patchwise")
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError, match=r"fr_live_weighted.model.*github.com/dmaniry/deepIQA"):
        create_metric("wadiqam_fr_live", weights_dir=str(empty_hub / "elsewhere"))
