"""R-CLIP and the clean OpenCLIP metrics (ConvNeXt-B and ViT-B/16 towers) against OpenCLIP itself
(tests/data/rclip, written by tests/reference/make_rclip_fixture.py with open_clip 3.3 on generated checkpoints of
the real shapes, preprocessed as the authors' eval.py does)."""
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
from helpers import write_open_clip_convnext, write_open_clip_visual

DATA = Path(__file__).parent / "data" / "rclip"
REF = np.load(DATA / "reference.npz")
META = json.loads((DATA / "reference.json").read_text())
TOWERS = {"vit": ("rclip_fare_vitb16", "vit-b-16-fare-eps4.pt", write_open_clip_visual, 224),
          "convnext": ("rclip_tecoa_convnext", "convnext_base_w-tecoa-eps4.pt", write_open_clip_convnext, 256)}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rclip")
    for name, fname, write, _ in TOWERS.values():
        write(folder / fname, seed=META["seed"])
    return folder


@pytest.mark.parametrize("arch", ["vit", pytest.param("convnext", marks=pytest.mark.slow)])
def test_equals_open_clip_on_its_input_and_through_our_resize(arch, towers):
    name, _, _, resize = TOWERS[arch]
    m = create_metric(name, weights_dir=str(towers))
    prep = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor()])
    x = torch.stack([prep(Image.open(shared_file(f"images/{f}")).convert("RGB")) for f in META["images"]])
    with torch.no_grad():
        e = m.embed224(x)  # OpenCLIP's input exactly
        np.testing.assert_allclose(e.numpy(), REF[f"{arch}/embeddings"], rtol=1e-4, atol=1e-5)
        imgs = [load_image(shared_file(f"images/{f}")) for f in META["images"]]
        e = [m.embed(x) for x in imgs]
        d = np.array([m.cosine_distance(e[i], e[j]).item() for i, j in META["pairs"]])
    # 64, 256 and 512x384 px through our resize; PIL's 8-bit rounding, which we skip, moves them by ~1e-4
    np.testing.assert_allclose(d, REF[f"{arch}/distances"], rtol=0, atol=3e-4)


def test_whole_model_file_and_checkpoint_names(towers, tmp_path):
    whole = write_open_clip_visual(tmp_path / "clip-vit-b-16-laion2b-s34b-b88k.bin", seed=META["seed"], full_model=True)
    a = create_metric("rclip_fare_vitb16", weights_dir=str(towers))
    b = create_metric("clip_vitb16_laion", weights_dir=str(whole.parent))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    sd = torch.load(towers / "vit-b-16-fare-eps4.pt", weights_only=True)
    assert "patch_embed.proj.weight" in from_open_clip(sd) and "cls_token" in from_open_clip(sd)
    sd["attnpool.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "vit-b-16-tecoa-eps4.pt")
    with pytest.raises(RuntimeError, match=r"rclip_tecoa_vitb16: vit-b-16-tecoa-eps4.pt is not an OpenCLIP ViT-B/16 "
                                           r"image tower .*unexpected \['attnpool.weight'\]"):
        create_metric("rclip_tecoa_vitb16", weights_dir=str(tmp_path))
    torch.save(sd, tmp_path / "convnext_base_w-fare-eps4.pt")  # a ViT file where a ConvNeXt is expected
    with pytest.raises(RuntimeError, match=r"rclip_fare_convnext: convnext_base_w-fare-eps4.pt is not an OpenCLIP "
                                           r"ConvNeXt-B \(convnext_base_w\) image tower \(missing \['trunk.stem.0.weight'"):
        create_metric("rclip_fare_convnext", weights_dir=str(tmp_path))


def test_missing_checkpoint_names_the_file_and_the_share(empty_hub, monkeypatch):
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError, match=r"rclip_tecoa_convnext: weights file 'convnext_base_w-tecoa-eps4.pt' "
                       r"not found .*nc.mlcloud.uni-tuebingen.de/index.php/s/zHKCC9aS7rf4qCt/download"):
        create_metric("rclip_tecoa_convnext")
