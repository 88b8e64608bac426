"""LipSim against the authors' own network code (tests/data/lipsim, written by tests/reference/make_lipsim_fixture.py
on a generated checkpoint of the real 'small' shapes), its 1-Lipschitz property, and the checkpoint lookup."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import lit_attacks.metrics.weights as W
from lit_attacks.metrics import WeightsNotFoundError, create_metric
from lit_attacks.metrics.lipsim import SLLConv, SLLLinear

from conftest import load_image, shared_file
from helpers import write_lipsim_checkpoint

DATA = Path(__file__).parent / "data" / "lipsim"
REF = np.load(DATA / "reference.npz")
META = json.loads((DATA / "reference.json").read_text())


@pytest.fixture(scope="module")
def lipsim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lipsim")
    write_lipsim_checkpoint(folder / "lipsim_finetuned_margin0.5.pth", seed=META["seed"])
    return create_metric("lipsim", weights_dir=str(folder)), folder


def test_equals_the_authors_network_on_its_input_and_through_our_resize(lipsim):
    m = lipsim[0]
    t = T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])
    x = torch.stack([t(Image.open(shared_file(f"images/{f}")).convert("RGB")) for f in META["images"]])
    with torch.no_grad():
        e = m.net(x)  # the authors' input exactly
        np.testing.assert_allclose(e.numpy(), REF["embeddings"], rtol=1e-5, atol=1e-6)
        imgs = [load_image(shared_file(f"images/{f}")) for f in META["images"]]
        e = torch.cat([m.embed(torch.cat(imgs[:3])), m.embed(torch.cat(imgs[3:]))])  # 64 px, 256 px
        d = [m.cosine_distance(e[r], e[k]).item() for r, a, b in META["triplets"] for k in (a, b)]
    np.testing.assert_allclose(d, REF["distances"], rtol=0, atol=3e-4)  # PIL's 8-bit rounding, which we skip


def test_network_is_1_lipschitz(lipsim):
    """Each SLL layer (float64, random weights) and the whole network (the generated checkpoint) never stretch an l2
    distance between random pairs."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv, lin = SLLConv(45, 5).double(), SLLLinear(300, 64).double()
    conv.rescale(), lin.rescale()
    for layer, shape, tol in ((conv, (8, 45, 16, 16), 1e-9), (lin, (8, 300), 1e-9), (lipsim[0].net, (2, 3, 224, 224), 1e-4)):
        dtype = next(layer.parameters()).dtype
        a = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
        b = a + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        with torch.no_grad():
            ratio = (layer(a) - layer(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        assert (ratio <= 1 + tol).all() and (ratio > 0.01).all(), (type(layer).__name__, ratio)


def test_checkpoint_keys_and_errors(lipsim, tmp_path, empty_hub, monkeypatch):
    ckpt = torch.load(lipsim[1] / "lipsim_finetuned_margin0.5.pth", weights_only=True)
    bare = {k.replace("module.model.", ""): v for k, v in ckpt["model_state_dict"].items() if ".base." not in k}
    torch.save(bare, tmp_path / "lipsim_pretrained.pth")  # a bare state dict of the network is accepted too
    m2 = create_metric("lipsim_pretrained", weights_dir=str(tmp_path))
    for a, b in zip(lipsim[0].parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    bare.pop("linear.7.q")
    torch.save(bare, tmp_path / "lipsim_finetuned_margin0.2.pth")
    with pytest.raises(RuntimeError, match=r"lipsim_margin02: lipsim_finetuned_margin0.2.pth is not the authors' "
                                           r"LipSim 'small' network \(missing \['linear.7.q'\]"):
        create_metric("lipsim_margin02", weights_dir=str(tmp_path))
    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError, match=r"lipsim: weights file 'lipsim_finetuned_margin0.5.pth' not found "
                       r".*drive.usercontent.google.com/download\?id=11JoY5jrm4qmk0QmncQ5eVqXQpXQNLG1X"):
        create_metric("lipsim")
