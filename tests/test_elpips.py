"""E-LPIPS-VGG against the authors' TensorFlow code (tests/data/elpips, written by
tests/reference/make_elpips_fixture.py under TF 2.15 with their custom_sample_ensemble hook and dropout off),
the transformation sampler's distribution, dropout, and the safe reader of their weights file."""
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import lit_attacks.metrics.elpips as E
from lit_attacks.metrics import create_metric

from conftest import load_image, shared_file

REF = json.loads((Path(__file__).parent / "data" / "elpips" / "reference.json").read_text())


@pytest.fixture(scope="module")
def metric():
    m = create_metric("elpips_vgg").double()
    if not m.pretrained:
        pytest.skip("VGG16 weights not available")
    return m


def test_network_and_transformations_equal_the_authors_tensorflow_code(metric):
    imgs = [load_image(shared_file(f)).double() for f in REF["images"]]
    with torch.no_grad():
        for p, (a, b) in enumerate(REF["pairs"]):
            x, r = imgs[a], imgs[b]
            assert metric.network_distance(r, x).item() == pytest.approx(REF["network"][p], rel=1e-5)
            for k, params in enumerate(REF["params"]):  # downscales 1, 2, 8, 3, offsets, flips, swaps, colours
                t = E.Transform.of(*params)
                got = metric.network_distance(t((r + 1) / 2) * 2 - 1, t((x + 1) / 2) * 2 - 1).item()
                assert got == pytest.approx(REF["transformed"][k][p], rel=1e-5), (a, b, params)


def test_transformations_are_drawn_with_the_authors_probabilities():
    g = torch.Generator().manual_seed(0)
    ts = [E.Transform(g) for _ in range(6000)]
    p = np.array([1 / s ** 2 for s in range(1, 9)])
    freq = np.bincount([t.scale for t in ts], minlength=9)[1:] / len(ts)
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.02)
    assert set(t.flip for t in ts) == {0, 1, 2, 3} and abs(np.mean([t.swap for t in ts]) - 0.5) < 0.03
    assert len({tuple(t.perm) for t in ts}) == 6
    colours = np.array([t.color for t in ts])
    assert colours.min() >= 0.2 and colours.max() <= 1.0 and abs(colours.mean() - 0.6) < 0.01
    assert all(0 <= o <= 7 for t in ts for o in t.offset) and all(0 <= o < t.scale for t in ts for o in t.scale_offset)


def test_transform_of_a_64px_image_at_every_scale_reaches_the_network(metric):
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    for s in range(1, 9):
        t = E.Transform.of(s, (s - 1, 0), (7, 0), 3, 0, (0, 1, 2), (1, 1, 1))
        y = t(x)
        assert y.shape[-1] == (2 * (s - 1) + 64) // s + 7
        assert torch.isfinite(metric.network_distance(y * 2 - 1, y * 2 - 1)).all()


def test_dropout_masks_are_shared_fixed_and_scaled(metric):
    masks = metric.masks(0, 71, 71, torch.zeros(1, dtype=torch.float64))
    assert [tuple(m.shape[1:]) for m in masks] == metric.net.mask_shapes(71, 71) and len(masks) == 13
    vals = torch.cat([m.flatten() for m in masks])
    assert set(vals.unique().tolist()) <= {0.0, 1 / 0.99} and abs((vals == 0).double().mean().item() - 0.01) < 0.002
    again = metric.masks(0, 71, 71, torch.zeros(1, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(masks, again))


def test_fresh_draws_every_call_in_the_stochastic_variant():
    m = create_metric("elpips_vgg_random", pretrained=False)
    assert m.stochastic and m.n == 1
    ref = torch.rand(1, 3, 32, 32) * 2 - 1
    x = (ref + 0.2 * torch.randn(1, 3, 32, 32)).clamp(-1, 1)
    with torch.no_grad():
        assert len({round(m(ref, x).item(), 8) for _ in range(6)}) > 1


def test_weights_file_is_read_without_arbitrary_code(tmp_path):
    lin = E.read_object_npy(E.LIN_PATH)
    assert sorted(lin) == sorted(f"lin{i}.model.1.weight" for i in range(14))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump(np.array(Evil(), dtype=object), buf, protocol=3)
    (tmp_path / "evil.npy").write_bytes(buf.getvalue())
    with pytest.raises(RuntimeError, match=r"could not read .*evil.npy.*global builtins.print is not allowed"):
        E.read_object_npy(tmp_path / "evil.npy")
    bad = tmp_path / "lin.npy"
    bad.write_bytes(E.LIN_PATH.read_bytes()[:-8])
    with pytest.raises(RuntimeError, match="elpips_vgg: .*lin.npy has sha256 .* expected 2f9171c0fb542223"):
        E.linear_weights(bad)
