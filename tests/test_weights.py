"""Real pretrained weights (skip when absent) and the weight-resolution errors."""
import urllib.error

import pytest
import torch

from lit_attacks.metrics import WeightsNotFoundError, create_metric
from lit_attacks.metrics import weights as W

from conftest import load_image, shared_file, weights_dir

EXAMPLES = "images/lpips_examples"


def _need(fname):
    p = weights_dir() / fname
    if not p.is_file():
        pytest.skip(f"real weights {p} not available (set LIT_ATTACKS_WEIGHTS_DIR)")
    return p


def _triplet():
    return [load_image(shared_file(f"{EXAMPLES}/ex_{n}.png")) for n in ("ref", "p0", "p1")]


@pytest.mark.weights
def test_lpips_alex_published_values():
    _need("alexnet_features_tv_IMAGENET1K_V1.pth")
    ref, p0, p1 = _triplet()
    m = create_metric("lpips_alex", weights_dir=str(weights_dir()))
    assert m(ref, p0).item() == pytest.approx(0.722, abs=1e-3)
    assert m(ref, p1).item() == pytest.approx(0.138, abs=1e-3)


@pytest.mark.weights
@pytest.mark.parametrize("name,backbone,values", [
    ("lpips_squeeze", "squeezenet1_1_features_tv_IMAGENET1K_V1.pth", (0.711048, 0.147902)),
    ("lpips_vgg", "vgg16_features_tv_IMAGENET1K_V1.pth", (0.5686, 0.4217)),
])
def test_lpips_manifest_values(name, backbone, values):
    """The MANIFEST's values of the lpips package with these backbones (no published value), within 1e-4."""
    _need(backbone)
    ref, p0, p1 = _triplet()
    m = create_metric(name, weights_dir=str(weights_dir()))
    assert (m(ref, p0).item(), m(ref, p1).item()) == pytest.approx(values, abs=1e-4)


@pytest.mark.weights
def test_weights_dir_from_environment(monkeypatch):
    _need("alexnet_features_tv_IMAGENET1K_V1.pth")
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(weights_dir()))
    ref, p0, _ = _triplet()
    assert create_metric("lpips_alex")(ref, p0).item() == pytest.approx(0.722, abs=1e-3)


@pytest.mark.weights
def test_full_torchvision_checkpoint_is_accepted(tmp_path):
    """A torchvision-style checkpoint (features.* + classifier.*) gives the same metric as the features file."""
    feats = torch.load(_need("alexnet_features_tv_IMAGENET1K_V1.pth"), weights_only=True)
    full = {f"features.{k}": v for k, v in feats.items()}
    full["classifier.1.weight"] = torch.zeros(2, 2)
    torch.save(full, tmp_path / W.BACKBONES["alexnet"])
    ref, p0, _ = _triplet()
    assert create_metric("lpips_alex", weights_dir=str(tmp_path))(ref, p0).item() == pytest.approx(0.722, abs=1e-3)


def test_missing_weights_offline_clear_error(empty_hub, monkeypatch):
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError) as e:
        create_metric("lpips_vgg", weights_dir=str(empty_hub / "nowhere"))
    msg = str(e.value)
    assert "lpips_vgg" in msg and "vgg16-397923af.pth" in msg
    assert str(empty_hub / "nowhere") in msg and "hub" in msg and "LIT_ATTACKS_WEIGHTS_DIR" in msg


def test_failed_download_clear_error(empty_hub, monkeypatch):
    def no_network(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.delenv(W.ENV_OFFLINE, raising=False)
    with pytest.raises(WeightsNotFoundError, match=r"dists: weights file .*could not be downloaded.*URLError"):
        create_metric("dists")


def test_corrupt_weights_file_names_the_file(empty_hub):
    bad = empty_hub / "alexnet_features_broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="alexnet_features_broken.pth"):
        create_metric("lpips_alex", weights_dir=str(empty_hub))


def test_mismatched_backbone_file_is_rejected(empty_hub):
    torch.save({"0.weight": torch.zeros(1)}, empty_hub / "alexnet_features_wrong.pth")
    with pytest.raises(RuntimeError, match="lpips_alex: backbone weights do not match"):
        create_metric("lpips_alex", weights_dir=str(empty_hub))
