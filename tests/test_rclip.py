"""R-CLIP and OpenCLIP ViT-B/16 metrics against OpenCLIP itself (tests/data/rclip, written by
tests/reference/make_rclip_fixture.py with open_clip 3.3 on a generated checkpoint of the real shapes)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import lit_attacks.metrics.weights as W
from lit_attacks.metrics import WeightsNotFoundError, create_metric
from lit_attacks.metrics.rclip import from_open_clip

from conftest import load_image, shared_file
from helpers import write_open_clip_visual

DATA = Path(__file__).parent / "data" / "rclip"
REF = np.load(DATA / "reference.npz")
META = json.loads((DATA / "reference.json").read_text())


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rclip")
    write_open_clip_visual(folder / "vit-b-16-fare-eps4.pt", seed=META["seed"])
    return folder


def test_equals_open_clip_on_its_input_and_through_our_resize(tower):
    m = create_metric("rclip_fare_vitb16", weights_dir=str(tower))
    prep = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])
    x = torch.stack([prep(Image.open(shared_file(f"images/{f}")).convert("RGB")) for f in META["images"]])
    with torch.no_grad():
        e = m.vit.norm(m.vit((x - m.mean) / m.std)[:, 0]) @ m.vit.proj  # OpenCLIP's input exactly
        np.testing.assert_allclose(e.numpy(), REF["embeddings"], rtol=1e-4, atol=1e-5)
        imgs = [load_image(shared_file(f"images/{f}")) for f in META["images"]]
        d = torch.cat([m(imgs[i], imgs[j]) for i, j in META["pairs"]]).numpy()
    # 64, 256 and 512x384 px through our resize; PIL's 8-bit rounding, which we skip, moves them by ~1e-4
    np.testing.assert_allclose(d, REF["distances"], rtol=0, atol=3e-4)


def test_whole_model_file_and_checkpoint_names(tower, tmp_path):
    whole = write_open_clip_visual(tmp_path / "clip-vit-b-16-laion2b-s34b-b88k.bin", seed=META["seed"], full_model=True)
    a = create_metric("rclip_fare_vitb16", weights_dir=str(tower))
    b = create_metric("clip_vitb16_laion", weights_dir=str(whole.parent))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    sd = torch.load(tower / "vit-b-16-fare-eps4.pt", weights_only=True)
    assert "patch_embed.proj.weight" in from_open_clip(sd) and "cls_token" in from_open_clip(sd)
    sd["attnpool.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "vit-b-16-tecoa-eps4.pt")
    with pytest.raises(RuntimeError, match=r"rclip_tecoa_vitb16: vit-b-16-tecoa-eps4.pt is not an OpenCLIP ViT-B/16 "
                                           r"image tower .*unexpected \['attnpool.weight'\]"):
        create_metric("rclip_tecoa_vitb16", weights_dir=str(tmp_path))


def test_missing_checkpoint_names_the_file_and_the_share(empty_hub, monkeypatch):
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError, match=r"rclip_tecoa_vitb16: weights file 'vit-b-16-tecoa-eps4.pt' not "
                       r"found .*nc.mlcloud.uni-tuebingen.de/index.php/s/ZBkmbMrAwgfeeSa/download"):
        create_metric("rclip_tecoa_vitb16")
