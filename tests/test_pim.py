"""PIM-1 / PIM-5 against the authors' TensorFlow code, through the fixture ``tests/data/pim`` that
``tests/reference/make_pim_fixture.py`` wrote with it (TensorFlow 2.15, the authors' repository at 478157a):
checkpoints in the layout of the released archives (reduced width, random weights), the images, and what the
authors' model computes on them. Also the TensorFlow checkpoint reader and the archive download."""
import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_attacks.metrics import WeightsNotFoundError, create_metric
from lit_attacks.metrics import weights as W
from lit_attacks.metrics.pim import PIMDistance, mixture_log_prob, mixture_mean, pim_from_folder
from lit_attacks.metrics.tfcheckpoint import CheckpointFormatError, read_tf_checkpoint

DATA = Path(__file__).parent / "data" / "pim"
REF = np.load(DATA / "reference.npz")


def images(dtype):
    x, y = (torch.tensor(REF[k] / 127.5 - 1, dtype=dtype).permute(0, 3, 1, 2) for k in ("x", "y"))
    return x, y


def metric(model, dtype, **kw):
    return PIMDistance(model, net=pim_from_folder(DATA / model).to(dtype), **kw)


# ------------------------------------------------------------------------------------- the checkpoint reader
def test_reader_gives_every_variable_with_its_keras_shape():
    w = read_tf_checkpoint(DATA / "pim-5" / "weights")
    assert len(w) == 8 * 6 + 8 * 10  # 8 bands: 3 convolutions; base x2, mix x2, logits (kernel + bias each)
    k = w["frontend/cnns/0/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert k.shape == (5, 5, 8, 8) and k.dtype == np.float32 and np.isfinite(k).all() and k.std() > 0
    assert w["marginal_encoder/encoders/7/logit_layer/kernel/.ATTRIBUTES/VARIABLE_VALUE"].shape == (5, 5)
    assert not any("OBJECT_GRAPH" in n for n in w)  # the string tensor is skipped


def _copy(tmp_path):
    dst = tmp_path / "pim-1"
    shutil.copytree(DATA / "pim-1", dst)
    return dst


def test_reader_refuses_corrupted_truncated_and_missing_files(tmp_path):
    d = _copy(tmp_path)
    data = d / "weights.data-00000-of-00001"
    good = data.read_bytes()
    raw = bytearray(good)
    raw[1000] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match="fails its CRC32-C check"):
        read_tf_checkpoint(d / "weights")
    data.write_bytes(good[:5000])
    with pytest.raises(CheckpointFormatError, match="truncated file"):
        read_tf_checkpoint(d / "weights")
    data.unlink()
    with pytest.raises(FileNotFoundError, match="weights.data-00000-of-00001"):
        read_tf_checkpoint(d / "weights")
    (d / "weights.index").write_bytes(b"not a table" * 10)
    with pytest.raises(CheckpointFormatError, match="not a TensorFlow checkpoint index"):
        read_tf_checkpoint(d / "weights")


# ------------------------------------------------------------------------------------- the authors' numbers
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-5), (torch.float32, 2e-5)])
def test_pim1_distance_equals_the_authors_tensorflow_model(dtype, rtol):
    """TensorFlow ran in float32: the float64 port agrees to its round-off."""
    x, y = images(dtype)
    m = metric("pim-1", dtype)
    np.testing.assert_allclose(m(x, y).numpy(), REF["pim1_distance"], rtol=rtol)
    np.testing.assert_allclose(m(y, x).numpy(), REF["pim1_distance"], rtol=rtol)  # symmetric
    # The symmetrised KL of two unit-variance Gaussians is the squared distance of the means: z_dim times PIM-1's
    # mean over the latent; the authors' 4000-sample estimate agrees within its standard error.
    assert np.all(np.abs(10 * REF["pim1_distance"] - REF["pim1_kl"]) < 4 * REF["pim1_kl_se"])


@pytest.mark.parametrize("model", ["pim-1", "pim-5"])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 2e-5), (torch.float32, 3e-5)])
def test_encoder_densities_equal_the_authors(model, dtype, rtol):
    """``q_x.log_prob(mean_y)`` and friends: every convolution, band, dense layer and mixture weight enters."""
    x, y = images(dtype)
    m = metric(model, dtype)
    qx, qy = m.encode(x), m.encode(y)
    key = model.replace("-", "")
    got = {"xx": mixture_log_prob(qx, mixture_mean(qx)), "xy": mixture_log_prob(qx, mixture_mean(qy)),
           "yx": mixture_log_prob(qy, mixture_mean(qx))}
    for k, v in got.items():
        np.testing.assert_allclose(v.numpy(), REF[f"{key}_lp_{k}"], rtol=rtol, err_msg=k)


def test_pim5_kl_estimate_agrees_with_the_authors_estimate():
    """Both estimate the same symmetrised KL: ours with 500 common-random-number draws, theirs with 4000 of its
    own (standard error about 0.012, stored; ours three times that), so they agree within 4 joint errors (0.15 of 79)."""
    x, y = images(torch.float32)
    d = metric("pim-5", torch.float32, samples=500)(x, y).numpy()
    se = REF["pim5_kl_se"] * np.sqrt(1 + 4000 / 500)
    assert np.all(np.abs(d - REF["pim5_kl"]) < 4 * se), (d, REF["pim5_kl"], se)


# ------------------------------------------------------------------------------------- the estimator
def test_pim5_is_deterministic_batch_independent_and_zero_at_the_reference():
    x, y = images(torch.float64)
    m = metric("pim-5", torch.float64, samples=3)
    d = m(x, y)
    torch.testing.assert_close(m(x, y), d, rtol=0, atol=0)
    torch.testing.assert_close(m(x[1:], y[1:]), d[1:], rtol=1e-12, atol=0)
    assert m(x, x).abs().max() == 0
    other = metric("pim-5", torch.float64, samples=3, seed=1)(x, y)
    assert not torch.allclose(other, d) and torch.allclose(other, d, rtol=0.05)  # another draw, same KL


def test_pim5_fresh_draws_like_the_authors_and_is_stochastic():
    x, y = images(torch.float64)
    m = metric("pim-5", torch.float64, samples=1, fresh=True)
    assert m.stochastic and not metric("pim-5", torch.float64).stochastic
    assert not torch.equal(m(x, y), m(x, y))


def test_gradients_of_pim5_reach_the_image():
    x, y = images(torch.float32)
    m = metric("pim-5", torch.float32, samples=2)
    y = y.clone().requires_grad_(True)
    m(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())


# ------------------------------------------------------------------------------------- weights lookup
def test_pim_reads_the_authors_folder_from_the_weights_dir(empty_hub):
    shutil.copytree(DATA / "pim-1", empty_hub / "w" / "pim-1")
    m = create_metric("pim_1", weights_dir=str(empty_hub / "w")).double()
    x, y = images(torch.float64)
    np.testing.assert_allclose(m(x, y).numpy(), REF["pim1_distance"], rtol=1e-5)
    assert m.weights_file == str(empty_hub / "w" / "pim-1")


def test_missing_pim_weights_name_the_folder_and_the_url(empty_hub, monkeypatch):
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError, match=r"pim_5: weights folder 'pim-5' \(with config.json\) not found .*"
                                                   r"storage.googleapis.com/tensorflow_compression/pim/pim-5.zip"):
        create_metric("pim_5")


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, src in members:
            z.write(src, name)
    return path


def test_archive_download_checks_sha512_refuses_escapes_and_unpacks_into_the_cache(empty_hub, monkeypatch):
    files = [(f"pim-1/{p.name}", p) for p in sorted((DATA / "pim-1").iterdir())]
    good = _zip(empty_hub / "good.zip", files)
    bad = _zip(empty_hub / "bad.zip", files + [("../evil.txt", DATA / "pim-1" / "config.json")])
    sha = {z: hashlib.sha512(z.read_bytes()).hexdigest() for z in (good, bad)}
    cache = W.hub_checkpoints_dir()

    def get(src, digest):
        return W.released_archive("pim_1", "pim-1", src.as_uri(), "config.json", sha512=digest)

    with pytest.raises(RuntimeError, match="has sha512 .* expected .*nothing was kept"):
        get(bad, sha[good])
    with pytest.raises(RuntimeError, match=r"holds '../evil.txt', outside pim-1/; nothing was kept"):
        get(bad, sha[bad])
    assert not (cache / "pim-1").exists() and not (cache.parent / "evil.txt").exists()
    assert list(cache.iterdir()) == []  # no temporary folder left either
    folder = get(good, sha[good])
    assert folder == cache / "pim-1" and (folder / "weights.index").is_file()
    assert get(bad, sha[bad]) == folder  # cached: no download
