"""The official code's semantics, each checked against a plain reference written here, and the reproduce check.

Official code: github abhijay9/attacking_perceptual_similarity_metrics (BSD-2). References below restate
its scripts for one sample at a time; BAPPS-dependent checks run when $LIT_ATTACKS_BAPPS points at a BAPPS
tree root (the folder holding 2afc/) and skip otherwise.
"""
import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import differential_evolution
from scipy.signal import convolve2d

import bench
from lit_attacks.bench.config import CONFIG_DIR, load_yaml
from lit_attacks.configuration import ConfigError
from lit_attacks import official as off
from lit_attacks.attacks import create_attack
from lit_attacks.attacks.objectives import quantize, to_uint8
from lit_attacks.attacks.one_pixel import sample_seed
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.metrics import create_metric
from lit_attacks.report import read_csv
from lit_attacks.tables.table3 import table3_rows
from lit_attacks.transfer import official_transfer_counts

from conftest import load_image, shared_file
from helpers import fake_official, official_looking_tree

BAPPS = os.environ.get("LIT_ATTACKS_BAPPS")
needs_bapps = pytest.mark.skipif(not BAPPS, reason="set LIT_ATTACKS_BAPPS to a BAPPS tree root for this check")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    dm = BappsDataModule(batch_size=8, builtin_n=4, cache_dir=str(tmp_path_factory.mktemp("cache")))
    b = next(iter(dm.predict_dataloader()))
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in b.items()}


def official_rank(m, ref, p0, p1):
    s0, s1 = m(ref, p0), m(ref, p1)
    return s0, s1, int((s0 > s1).item())


# ------------------------------------------------------------------------------ 1. transfer counting
def notebook_loop(rows, judges, column):
    """The notebook's cell, restated: accurate samples, then flips of one column among them."""
    accurate = flipped = 0
    for r, h in zip(rows, judges):
        rank = int(r["d0"] > r["d1"])
        if rank != h:
            continue
        accurate += 1
        s_other = r["d0"] if rank else r["d1"]
        flipped += r[column] > s_other
    return accurate, flipped


@pytest.mark.parametrize("name", ["l2", "ssim", "stlpipsAlex"])
def test_official_counting_equals_the_notebook_loop_on_the_official_csvs(name):
    path = shared_file(f"bapps/transfer_official/{name}_transferableAdv.csv")
    rows = [{k: float(v) for k, v in r.items() if k != "sample"} for r in read_csv(path)]
    judges = np.random.default_rng(0).integers(0, 2, len(rows)).astype(float)  # constructed judges
    got = official_transfer_counts([r["d0"] for r in rows], [r["d1"] for r in rows], judges,
                                   {c: [r[c] for r in rows] for c in off.NOTEBOOK_COLUMNS.values()})
    for column in off.NOTEBOOK_COLUMNS.values():
        accurate, flipped = notebook_loop(rows, judges, column)
        assert got["accurate"] == accurate and got["flipped"][column] == flipped


@pytest.mark.parametrize("name,share", [("l2", 0.987), ("ssim", 0.990), ("stlpipsAlex", 0.822)])
def test_the_published_images_took_fixed_pgd_steps(name, share):
    """With early stop, PGD(10) and PGD(20) of a sample the attack flipped within 10 steps are one image (saved
    twice), so the target's distances to them are equal; on every row of every official CSV they differ, and
    PGD(20) moved farther than PGD(10) on most rows: the published images took exactly k steps, as our transfer
    variants do. (stAdv+PGD(k) differing from stAdv is no evidence either way: re-saving through tensor2im is
    lossy, so even an early-stopped stAdv+PGD image differs from the stAdv one.)"""
    rows = read_csv(shared_file(f"bapps/transfer_official/{name}_transferableAdv.csv"))
    assert len(rows) == 2726
    assert all(r["dPGD10"] != r["dPGD20"] for r in rows)
    farther = sum(float(r["dPGD20"]) > float(r["dPGD10"]) for r in rows) / len(rows)
    assert round(farther, 3) == share


@needs_bapps
@pytest.mark.parametrize("name", ["l2", "ssim", "stlpipsAlex"])
def test_official_counting_with_real_judges_gives_the_notebook_numbers(name):
    path = shared_file(f"bapps/transfer_official/{name}_transferableAdv.csv")
    official = off.read_official_transfer(path.parent)[name]
    judges = {k: float(np.load(Path(BAPPS) / "2afc" / k.replace("val/", "val/", 1).rsplit("/", 1)[0] / "judge" /
                               f"{k.rsplit('/', 1)[1]}.npy")[0]) for k in official}
    counts = off.notebook_counts(official, judges)
    accurate, flipped = off.PUBLISHED_COUNTS[name]
    assert counts["accurate"] == accurate and tuple(counts["flipped"].values()) == flipped


def test_table3_official_rows_equal_a_plain_count():
    variants = ["stadv", "pgd10"]
    rng = np.random.default_rng(1)
    records = [{"key": f"val/cnn/{i:06d}", "judge": float(rng.integers(0, 2)), "prey": int(rng.integers(0, 2)),
                "s_other": float(rng.random()), "s_prey": float(rng.random()), "source_agreed": bool(rng.integers(0, 2)),
                "target_agrees": True, "stadv:pass": bool(rng.integers(0, 2)), "pgd10:pass": bool(rng.integers(0, 2)),
                "stadv:s_adv": float(rng.random()), "pgd10:s_adv": float(rng.random())} for i in range(60)]
    rows = {r["attack"]: r for r in table3_rows("src", "tgt", records, variants, "official")}
    kept = [r for r in records if r["stadv:pass"]]  # the fixed list: stAdv kept on the source
    for v in variants:
        accurate = flipped = 0
        for r in kept:
            d0, d1 = (r["s_other"], r["s_prey"]) if r["prey"] == 1 else (r["s_prey"], r["s_other"])
            rank = int(d0 > d1)
            if rank == r["judge"]:
                accurate += 1
                flipped += r[f"{v}:s_adv"] > (d0 if rank else d1)
        assert (rows[v]["eligible"], rows[v]["flipped"]) == (accurate, flipped)
        assert rows[v]["counting"] == "official"


def test_table3_official_list_can_be_another_variant_or_an_explicit_key_file(tmp_path):
    """ICLR Table 3 counts over the FlowAdv list: the kept samples are those whose ``transfer_list`` variant passed,
    or exactly the keys of a file (the official list when one has it), counted as the plain notebook loop."""
    rng = np.random.default_rng(2)
    variants = ["stadv", "flowadv"]
    records = [{"key": f"val/cnn/{i:06d}", "judge": float(rng.integers(0, 2)), "prey": int(rng.integers(0, 2)),
                "s_other": float(rng.random()), "s_prey": float(rng.random()), "stadv:pass": bool(rng.integers(0, 2)),
                "flowadv:pass": bool(rng.integers(0, 2)), "stadv:s_adv": float(rng.random()),
                "flowadv:s_adv": float(rng.random())} for i in range(80)]

    def plain(kept, v):
        accurate = flipped = 0
        for r in kept:
            d0, d1 = (r["s_other"], r["s_prey"]) if r["prey"] == 1 else (r["s_prey"], r["s_other"])
            if int(d0 > d1) == r["judge"]:
                accurate += 1
                flipped += r[f"{v}:s_adv"] > max(d0, d1)
        return accurate, flipped

    by_flow = {r["attack"]: r for r in table3_rows("s", "t", records, variants, "official", list_variant="flowadv")}
    keys = [r["key"] for r in records[::3]]
    (tmp_path / "keys.txt").write_text("# the list\n" + "\n".join(
        [keys[0], "cnn_" + keys[1].rsplit("/", 1)[1], f"val/cnn/judge/{keys[2].rsplit('/', 1)[1]}.npy"] + keys[3:]))
    assert off.read_key_list(tmp_path / "keys.txt") == keys
    by_file = {r["attack"]: r for r in table3_rows("s", "t", records, variants, "official",
                                                    keys=off.read_key_list(tmp_path / "keys.txt"))}
    for v in variants:
        assert (by_flow[v]["eligible"], by_flow[v]["flipped"]) == plain([r for r in records if r["flowadv:pass"]], v)
        assert (by_file[v]["eligible"], by_file[v]["flipped"]) == plain(records[::3], v)
    (tmp_path / "bad.txt").write_text("val/cnn/000001\nnot a key\n")
    with pytest.raises(ConfigError, match=r"transfer_keys .*bad.txt, line 2: 'not a key' is not a sample key"):
        off.read_key_list(tmp_path / "bad.txt")


# ------------------------------------------------------------------------------ uint8 truncation
def test_truncation_is_the_official_tensor2im():
    x = torch.linspace(-1, 1, 3 * 64 * 64).view(1, 3, 64, 64)
    tensor2im = ((np.transpose(x[0].numpy(), (1, 2, 0)) + 1.0) * (255.0 / 2.0)).astype(np.uint8)
    assert np.array_equal(to_uint8(x, "trunc")[0].numpy(), tensor2im)
    assert torch.equal(quantize(x, "trunc"), torch.from_numpy(tensor2im).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert not np.array_equal(to_uint8(x, "round")[0].numpy(), tensor2im)  # the two modes differ


def test_transfer_shards_keep_the_clean_images_as_read_under_trunc():
    """Table 3's target must score the original PNGs: the clean images of a transfer shard are the 8-bit values
    they were read from, bit for bit, even with ``uint8: trunc`` (which only the adversarial images get)."""
    from lit_attacks.datamodules.streaming import to_tensor
    from lit_attacks.tasks import create_task

    rng = np.random.default_rng(0)
    u8 = {k: rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8) for k in ("ref", "p0", "p1")}
    u8["ref"][0, 0, :, 0] = np.arange(16) * 17  # levels that truncation moves down by one among them
    batch = {k: torch.stack([to_tensor(Image.fromarray(a), 16) for a in v]) for k, v in u8.items()}
    batch.update(key=["val/cnn/000000", "val/cnn/000001"], category=["cnn", "cnn"], judge=torch.tensor([0.0, 1.0]))
    gen = create_task("transfer_generate", metric="l2", spatial=[], pgd_steps=[2], ks=[], uint8="trunc")
    out = gen.predict_step(batch)
    assert np.array_equal(out.images["ref"].numpy(), u8["ref"])
    prey_is_p1 = out.prey.bool().tolist()
    for i, p1 in enumerate(prey_is_p1):
        assert np.array_equal(out.images["prey"][i].numpy(), u8["p1" if p1 else "p0"][i])
        assert np.array_equal(out.images["other"][i].numpy(), u8["p0" if p1 else "p1"][i])
    assert not np.array_equal(to_uint8(batch["ref"], "trunc").numpy(), u8["ref"])  # what the shards held before


# ------------------------------------------------------------------------------ 2. one-pixel encoding
def test_one_pixel_paper_encoding_and_strategy_equal_a_scipy_reference(batch):
    """ICLR Algorithm 4: genes r in [0, 255] set the pixel to (r/255 - 0.5)/0.1, DE/rand/1 (scipy rand1bin)."""
    m = create_metric("l2").double()
    sub = {k: v[:3] for k, v in batch.items()}
    a = create_attack("onepixel", "l2", population=20, generations=5, encoding="paper", strategy="rand1bin",
                      batch_invariant=True, backend="scipy")
    out = a.predict_step(sub)
    rows = out.rows()
    for i, r in enumerate(rows):
        ref, p0, p1 = sub["ref"][i:i + 1], sub["p0"][i:i + 1], sub["p1"][i:i + 1]
        s0, s1, rank = official_rank(m, ref, p0, p1)
        prey, s_other = (p1, s0.item()) if rank else (p0, s1.item())
        found = {}

        def fitness(X):
            imgs = prey.repeat(X.shape[1], 1, 1, 1)
            for j in range(X.shape[1]):
                x, y = int(X[0, j]), int(X[1, j])
                imgs[j, :, y, x] = torch.as_tensor((X[2:5, j] / 255 - 0.5) / 0.1, dtype=imgs.dtype)
            s = m(ref.expand_as(imgs), imgs, check=False)
            hit = (s > s_other).nonzero()
            if hit.numel() and not found:
                found["cand"] = X[:, int(hit[0])].copy()
                raise StopIteration
            return (1 - s / (s + s_other)).numpy()

        try:
            differential_evolution(fitness, [(0, 64 - 1e-6), (0, 64 - 1e-6), (0, 255), (0, 255), (0, 255)],
                                   popsize=4, maxiter=5, strategy="rand1bin", mutation=0.5, recombination=1.0,
                                   seed=sample_seed(0, r["key"]), polish=False, init="random", tol=0, atol=0,
                                   vectorized=True, updating="deferred")
        except StopIteration:
            pass
        assert r["flipped"] == ("cand" in found)
        if found:
            value = (found["cand"][2:5] / 255 - 0.5) / 0.1
            x, y = int(found["cand"][0]), int(found["cand"][1])
            assert (r["pixel_x"], r["pixel_y"]) == (x, y)
            assert [r["pixel_r"], r["pixel_g"], r["pixel_b"]] == np.round((value + 1) * 127.5).astype(int).tolist()
            assert torch.allclose(out.adv[i, :, y, x], torch.as_tensor(value, dtype=out.adv.dtype))
            rescored8 = m(ref, quantize(out.adv[i:i + 1], "round")).item()  # the flip as a real image
            assert r["flipped_uint8"] == (rescored8 > s_other)


def test_the_paper_encoding_reaches_values_a_valid_image_cannot_hold():
    from lit_attacks.attacks.one_pixel import decode_colour

    genes = torch.tensor([0.0, 127.5, 255.0])
    assert decode_colour(genes, "paper").tolist() == pytest.approx([-5.0, 0.0, 5.0])
    assert torch.equal(decode_colour(genes, "valid"), genes)


# ------------------------------------------------------------------------------ 3. official SSIM
def pytorch_ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch_ssim.SSIM()(a, b) for one (3, H, W) pair, restated with scipy: zero-padded 'same' Gaussian
    filtering (11x11, sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, the map averaged over channels and pixels."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2)).astype(np.float32)  # built in float32, as it does
    g = g / g.sum()
    w = np.outer(g, g).astype(np.float32).astype(np.float64)
    f = lambda x: convolve2d(x, w, mode="same", boundary="fill")  # noqa: E731  (w is symmetric)
    maps = []
    for x, y in zip(a, b):
        mx, my = f(x), f(y)
        sx, sy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2)))
    return float(np.mean(maps))


def test_official_ssim_equals_pytorch_ssim_restated(batch):
    m = create_metric("ssim_official").double()
    d = m(batch["ref"], batch["p0"])
    for i in range(len(d)):
        ssim = pytorch_ssim_reference(batch["ref"][i].numpy(), batch["p0"][i].numpy())
        # both windows are float32; normalised in another order they differ by ~1e-8, which the cancellations
        # of the SSIM map (variances as E[x^2] - E[x]^2 with C1 = 1e-4) amplify to ~1e-6
        assert d[i].item() == pytest.approx((1 - ssim) / 2, abs=1e-5)
    piq_ssim = create_metric("ssim").double()(batch["ref"], batch["p0"])
    assert (d - piq_ssim).abs().max() > 1e-3  # a different statistic from piq's SSIM


@needs_bapps
def test_official_ssim_equals_the_official_csv_on_bapps():
    official = off.read_official_transfer(shared_file("bapps/transfer_official/l2_transferableAdv.csv").parent)["ssim"]
    m = create_metric("ssim_official")
    for key in sorted(official)[:200]:
        split, cat, stem = key.split("/")
        imgs = [load_image(Path(BAPPS) / "2afc" / split / cat / n / f"{stem}.png").double() for n in ("ref", "p0", "p1")]
        imgs = [torch.nn.functional.interpolate(x, size=64, mode="bilinear", antialias=True) for x in imgs]
        assert m(imgs[0], imgs[1]).item() == pytest.approx(official[key]["d0"], abs=1e-4)
        assert m(imgs[0], imgs[2]).item() == pytest.approx(official[key]["d1"], abs=1e-4)


# ------------------------------------------------------------------------------ 4. PGD counting
def official_pgd(m, ref, p0, p1, eps, alpha, max_iters, reverse=False):
    """whitebox_attack_pgd.py (and, with ``reverse``, whitebox_toMakeMoreSimilar_attack_pgd.py) for one sample:
    (final image, flipped as it counts, i as it reports)."""
    s0, s1, rank = official_rank(m, ref, p0, p1)
    attack_p1 = (rank == 1) != reverse
    x_orig, s_other = (p1, s0) if attack_p1 else (p0, s1)
    x_i, target = x_orig.clone(), 0.0 if reverse else 1.0
    for i in range(max_iters):
        x_i.requires_grad_(True)
        s_adv = m(ref, x_i)
        if (s_adv < s_other) if reverse else (s_adv > s_other):
            return x_i.detach(), True, i
        loss = torch.nn.functional.mse_loss(s_other / (s_other + s_adv), torch.full((1,), target, dtype=s_adv.dtype))
        grad, = torch.autograd.grad(loss, x_i)
        eta = torch.clamp(x_i + alpha * grad.sign() - x_orig, min=-eps, max=eps)
        x_i = torch.clamp(x_orig + eta, min=-1, max=1).detach()
    return x_i, False, i


@pytest.mark.parametrize("attack,kw", [("pgd", dict(eps=0.03, alpha=0.001, steps=30)),
                                       pytest.param("pgd_reverse", dict(eps=0.1, alpha=0.001, steps=50),
                                                    marks=pytest.mark.slow)])  # 50 float64 steps a sample: ~70 s
def test_official_counting_equals_the_official_script(batch, attack, kw):
    m = create_metric("lpips_alex", pretrained=False).double()
    a = create_attack(attack, "lpips_alex", pretrained=False, batch_invariant=True, counting="official", **kw)
    a.metric = m
    out = a.predict_step(batch)
    final = create_attack(attack, "lpips_alex", pretrained=False, batch_invariant=True, **kw)
    final.metric = m
    final_rows = final.predict_step(batch).rows()
    differs = 0
    for i, r in enumerate(out.rows()):
        adv, flipped, it = official_pgd(m, batch["ref"][i:i + 1], batch["p0"][i:i + 1], batch["p1"][i:i + 1],
                                        kw["eps"], kw["alpha"], kw["steps"], reverse=attack == "pgd_reverse")
        torch.testing.assert_close(out.adv[i:i + 1], adv, atol=1e-5, rtol=0)
        assert (r["flipped"], r["iterations"]) == (flipped, it)
        assert (r["flipped_official"], r["iterations_official"]) == (flipped, it)
        assert final_rows[i]["flipped_official"] == flipped  # recorded under either counting
        differs += final_rows[i]["flipped"] != flipped  # the final image counts under ours
    assert sum(r["flipped"] for r in final_rows) >= sum(r["flipped"] for r in out.rows())
    print(f"{attack}: final-image counting differs from the official on {differs} of {len(final_rows)} samples")


def algorithm_1(m, ref, p0, p1, eps, alpha, steps):
    """ICLR Algorithm 1 for one sample, restated: k = 1 .. steps, a signed-gradient step projected to the eps ball
    and [-1, 1], then the rank checked; a flip after step k stops there. (final image, flipped, k)."""
    s0, s1, rank = official_rank(m, ref, p0, p1)
    prey, s_other = (p1, s0) if rank == 1 else (p0, s1)
    x = prey.clone()
    for k in range(1, steps + 1):
        x.requires_grad_(True)
        s = m(ref, x)
        loss = ((s_other / (s_other + s) - 1.0) ** 2).sum()
        grad, = torch.autograd.grad(loss, x)
        x = torch.clamp(prey + torch.clamp(x.detach() + alpha * grad.sign() - prey, -eps, eps), -1, 1)
        if m(ref, x) > s_other:
            return x, True, k
    return x, False, steps


def test_iclr_preset_pgd_is_algorithm_1(batch):
    """The iclr preset's PGD (eps 0.1, alpha 0.001, 40 steps) as ICLR Algorithm 1 (``while k <= 40``): every image
    after a step is checked, the 40th too (which official counting never checks): per sample the same image, flip and
    step count as the restatement; and a sample that flips exactly at the last step counts under the preset's rule
    but not under ``counting: official``."""
    kw = dict(load_yaml(CONFIG_DIR / "iclr.yaml")["attacks"]["pgd"])
    assert (kw["eps"], kw["alpha"], kw["steps"]) == (0.1, 0.001, 40)
    m = create_metric("lpips_alex", pretrained=False).double()

    def run(**over):
        a = create_attack("pgd", "lpips_alex", pretrained=False, batch_invariant=True, **{**kw, **over})
        a.metric = m
        return a.predict_step(batch)

    out, n = run(), len(batch["ref"])
    expected = [algorithm_1(m, batch["ref"][i:i + 1], batch["p0"][i:i + 1], batch["p1"][i:i + 1], kw["eps"],
                            kw["alpha"], kw["steps"]) for i in range(n)]
    for i, (r, (adv, flip, k)) in enumerate(zip(out.rows(), expected)):
        torch.testing.assert_close(out.adv[i:i + 1], adv, atol=1e-5, rtol=0)
        assert (r["flipped"], r["iterations"]) == (flip, k), i
    last = max(k for _, flip, k in expected if flip)  # rerun with this many steps: that sample flips at the last one
    i = next(i for i, (_, flip, k) in enumerate(expected) if flip and k == last)
    rows = run(steps=last).rows()
    assert (rows[i]["flipped"], rows[i]["iterations"]) == (True, last)
    assert rows[i]["flipped_official"] is False


def test_official_counting_needs_early_stop():
    with pytest.raises(ValueError, match="pgd: counting='official' counts flips seen before a step"):
        create_attack("pgd", "l2", counting="official", fixed_steps=True)


# ------------------------------------------------------------------------------ 7. ST-LPIPS, 8. E-LPIPS naming
@pytest.mark.parametrize("name,expected", [("stlpips_alex", (0.7778, 0.1320)), ("stlpips_vgg", (0.6517, 0.1361))])
def test_stlpips_reproduces_the_package_on_the_lpips_example(name, expected):
    ref, p0, p1 = (load_image(shared_file(f"images/lpips_examples/ex_{n}.png")) for n in ("ref", "p0", "p1"))
    m = create_metric(name)
    assert (m(ref, p0).item(), m(ref, p1).item()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("old,new", [("elpips", "'elpips_vgg' \\(E-LPIPS itself.* or 'elpips_style'"),
                                     ("elpips_alex", "'elpips_style_alex'")])
def test_elpips_names_are_retired_with_the_reason(old, new):
    with pytest.raises(KeyError, match=f"metric '{old}' was retired: use {new} \\(the earlier name's metric: it is "
                                       "E-LPIPS-style"):
        create_metric(old)


# ------------------------------------------------------------------------------ 9. reverse attack table
def test_reverse_table_runs_and_its_flips_rescore(tmp_path):
    out = tmp_path / "r"
    assert bench.main(["--metrics", "lpips_alex", "--pretrained", "false", "--attacks", "", "--sweep-eps", "",
                       "--reverse", "pgd_reverse", "--reverse-param", "pgd_reverse.steps=20", "--reverse-param",
                       "pgd_reverse.alpha=0.005", "--builtin-n", "3", "--quiet", "--wandb", "disabled",
                       "--out", str(out)]) == 0  # measured: 11 of 14 samples flip
    table = read_csv(out / "reverse.csv")
    assert [r["group"] for r in table] == ["agreed", "disagreed", "tied", "all"]
    rows = read_csv(out / "samples" / "reverse" / "pgd_reverse-lpips_alex.csv")
    assert int(table[-1]["flipped"]) == sum(r["flipped"] == "True" for r in rows) > 0
    for r in rows:  # the attacked image is the farther one: s_other is the closer image's distance
        assert float(r["s_other"]) == min(float(r["s0"]), float(r["s1"]))
        assert (r["flipped"] == "True") == (float(r["s_adv"]) < float(r["s_other"]))


def test_reverse_attacks_stay_out_of_table2(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--attacks", "pgd_reverse", "--out", str(tmp_path)])
    assert "pgd_reverse is not a rank-flip attack" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the reproduce check
def _official_looking_tree(root: Path, n: int = 6):
    return official_looking_tree(root, shared_file("bapps/bapps_clearWinner_subset.npy"), n)


@pytest.mark.slow  # two end-to-end bench runs, ~35 s
def test_reproduce_reports_full_agreement_with_itself_and_every_altered_row(tmp_path):
    keys = _official_looking_tree(tmp_path / "tree")
    argv = ["--config", str(Path(bench.__file__).parent / "configs" / "bench" / "reproduce.yaml"),
            "--data", str(tmp_path / "tree"), "--pretrained", "false", "--param", "pgd.steps=6", "--quiet",
            "--wandb", "disabled", "--out", str(tmp_path / "run"), "--batch-size", "4"]
    assert bench.main(argv) == 0
    fake_official(tmp_path / "run", tmp_path / "official")
    check = argv + ["--official-pgd", str(tmp_path / "official" / "lpipsAlex_pgd.csv"),
                    "--official-transfer", str(tmp_path / "official")]
    assert bench.main(check) == 0
    state = json.loads((tmp_path / "run" / "cells" / "reproduce.json").read_text())["payload"]
    assert state["pgd"]["matched"] == len(keys) and state["pgd"]["all_agree"] == 1.0
    assert state["pgd"]["d_rounded_equal"] == 1.0 and not state["pgd"]["disagreeing"]
    for name in off.TRANSFER_METRICS:
        assert state["transfer"][name]["matched"] == len(keys) and state["transfer"][name]["d0"]["max"] == 0.0
        assert state["transfer"][name]["counts_official_csv"] == state["transfer"][name]["counts_our_clean"]
    report = (tmp_path / "run" / "reproduce.md").read_text()
    assert "| all three | 100.00% |" in report and (tmp_path / "run" / "plots" / "reproduce.png").is_file()

    rows = read_csv(tmp_path / "official" / "lpipsAlex_pgd.csv")  # alter one PGD row and one transfer row
    rows[2]["i"] = str(int(rows[2]["i"]) + 1)
    with open(tmp_path / "official" / "lpipsAlex_pgd.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    t = read_csv(tmp_path / "official" / "l2_transferableAdv.csv")
    t[4]["d0"], t[4]["d1"] = t[4]["d1"], t[4]["d0"]
    with open(tmp_path / "official" / "l2_transferableAdv.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(t[0]))
        w.writeheader()
        w.writerows(t)
    assert bench.main(check) == 0
    state = json.loads((tmp_path / "run" / "cells" / "reproduce.json").read_text())["payload"]
    altered = off.key_of_judge_path(rows[2]["path"])
    assert state["pgd"]["disagreeing"] == [altered] and math.isclose(state["pgd"]["all_agree"], 5 / 6)
    assert state["transfer"]["l2"]["disagreeing"] == [off.key_of_sample(t[4]["sample"])]
    report = (tmp_path / "run" / "reproduce.md").read_text()
    assert altered in report and off.key_of_sample(t[4]["sample"]) in report
