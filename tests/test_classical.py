"""Classical measures written from their papers (NLPD), against the reference implementation the field and the
paper's official code use (IQA_pytorch, MIT) and its published example value."""
import pytest
import torch

from lit_attacks.metrics import create_metric
from lit_attacks.metrics.classical import nlpd_levels

from conftest import load_image, shared_file

IQA = pytest.importorskip("IQA_pytorch", reason="IQA_pytorch (dev extra) is the reference implementation")


def _r0_r1(mode):
    return [load_image(shared_file(f"images/dists_examples/{n}.png"), mode=mode) for n in ("r0", "r1")]


def test_nlpd_published_example_value():
    """IQA_pytorch's NLPD.py states score 0.4016 for r1 against r0 in grey (its code gives 0.40177 today)."""
    r0, r1 = _r0_r1("L")
    assert create_metric("nlpd")(r0, r1).item() == pytest.approx(0.4016, abs=3e-4)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_nlpd_equals_iqa_pytorch_at_full_resolution(mode):
    r0, r1 = _r0_r1(mode)
    c = 1 if mode == "L" else 3
    want = IQA.NLPD(channels=c)((r1[:, :c] + 1) / 2, (r0[:, :c] + 1) / 2, as_loss=False)
    torch.testing.assert_close(create_metric("nlpd")(r0, r1), want, rtol=1e-5, atol=1e-6)


def test_nlpd_at_64px_uses_five_bands_as_iqa_pytorch_with_k5(seeded_batch):
    ref, x = seeded_batch
    assert nlpd_levels(64, 64) == 5 and nlpd_levels(256, 256) == 6 and nlpd_levels(512, 384) == 6
    want = IQA.NLPD(channels=3, k=5)((x + 1) / 2, (ref + 1) / 2, as_loss=False)
    torch.testing.assert_close(create_metric("nlpd")(ref, x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError):  # what the reference does with the paper's 6 bands at 64 px
        IQA.NLPD(channels=3, k=6)((x + 1) / 2, (ref + 1) / 2, as_loss=False)
    with pytest.raises(ValueError, match=r"nlpd: images of \(64, 64\) are too small for 6 levels"):
        create_metric("nlpd", levels=6)(ref, x)


def test_nlpd_luma_is_the_grey_nlpd_of_rgb2gray(seeded_batch):
    ref, x = seeded_batch
    w = torch.tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)
    grey = lambda t: ((t + 1) / 2 * w).sum(1, keepdim=True)  # noqa: E731
    want = IQA.NLPD(channels=1, k=5)(grey(x), grey(ref), as_loss=False)
    torch.testing.assert_close(create_metric("nlpd", colour="luma")(ref, x), want, rtol=1e-5, atol=1e-6)


@pytest.fixture
def reference_cw_ssim(monkeypatch):
    """IQA_pytorch's CW_SSIM with the torch.rfft / torch.irfft it calls (removed in torch 1.8) restated with torch.fft."""
    monkeypatch.setattr(torch, "rfft", lambda x, signal_ndim, onesided=True: torch.view_as_real(torch.fft.rfft2(x)),
                        raising=False)
    monkeypatch.setattr(torch, "irfft", lambda x, signal_ndim, onesided=True, signal_sizes=None: torch.fft.irfft2(
        torch.view_as_complex(x.contiguous()), s=signal_sizes), raising=False)

    def build(size, channels, level=4):
        return IQA.CW_SSIM(imgSize=[size, size], channels=channels, level=level, ori=8, device=torch.device("cpu"))
    return build


def test_cw_ssim_published_example():
    """IQA_pytorch's CW_SSIM.py states 0.9561 for r1 against r0 in grey (256 px, level 4, 8 orientations)."""
    r0, r1 = _r0_r1("L")
    assert 1 - create_metric("cw_ssim")(r0, r1).item() == pytest.approx(0.9561, abs=5e-4)  # measured 0.95634


@pytest.mark.slow  # the reference builds its 256 px filters pixel by pixel in Python: about 40 s
def test_cw_ssim_equals_the_reference_code_at_256px(reference_cw_ssim):
    r0, r1 = _r0_r1("L")
    ours = 1 - create_metric("cw_ssim")(r0, r1)
    want = reference_cw_ssim(256, 1)((r1[:, :1] + 1) / 2, (r0[:, :1] + 1) / 2, as_loss=False)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("level", [4, 3])
def test_cw_ssim_equals_the_reference_at_64px(reference_cw_ssim, seeded_batch, level):
    ref, x = seeded_batch
    want = reference_cw_ssim(64, 3, level)((x + 1) / 2, (ref + 1) / 2, as_loss=False)
    torch.testing.assert_close(1 - create_metric("cw_ssim", level=level)(ref, x), want, rtol=0, atol=1e-5)


def test_cw_ssim_rejects_what_it_cannot_score(seeded_batch):
    ref, x = seeded_batch
    with pytest.raises(ValueError, match="cw_ssim: needs square images with at least 56 px for level 4, got 48x64"):
        create_metric("cw_ssim")(ref[..., :48, :], x[..., :48, :])


@pytest.fixture
def reference_mad(monkeypatch):
    monkeypatch.setattr(torch, "rfft", lambda x, signal_ndim, onesided=True: torch.view_as_real(
        torch.fft.rfft2(x) if onesided else torch.fft.fft2(x)), raising=False)
    monkeypatch.setattr(torch, "ifft", lambda x, signal_ndim: torch.view_as_real(
        torch.fft.ifft2(torch.view_as_complex(x.contiguous()))), raising=False)
    return IQA.MAD(channels=1)


def test_mad_port_equals_the_reference_on_the_example(reference_mad):
    """MAD is ported but not registered (64 px masks many distortions entirely): the port against IQA_pytorch's MAD
    (which weights by orientation, and whose patch statistics are only right for one grey image per call)."""
    from lit_attacks.metrics.classical import MADDistance

    r0, r1 = _r0_r1("L")
    want = reference_mad((r1[:, :1] + 1) / 2, (r0[:, :1] + 1) / 2, as_loss=False).item()  # 169.2194
    got = MADDistance(colour="luma", weighting="orientation")(r0, r1).item()
    assert got == pytest.approx(want, rel=1e-4) and want == pytest.approx(168, abs=1.5)  # published 168
    paper = MADDistance(colour="luma")(r0, r1).item()  # Larson & Chandler's per-scale weights
    assert 0 < paper < got
    with pytest.raises(KeyError, match="metric 'mad' is not available: ported"):
        create_metric("mad")
