"""Aggregates from the torchmetrics callback vs numpy on the per-sample CSV; adversarial shards; DDP == 1 process."""
import io
import json
import os
import re
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import bench
from lit_attacks.metrics import METRICS, Distance, create_metric
from lit_attacks.report import read_csv

from conftest import ROOT
from helpers import assert_same_rows, run_one_and_two_processes

FRACS = ["frac>0.001", "frac>0.005", "frac>0.01", "frac>0.02", "frac>0.03", "frac>0.05", "frac>0.1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--metrics", "lpips_alex", "--attacks", "fgsm,pgd", "--pretrained", "false", "--builtin-n", "6",
                       "--out", str(out), "--quiet", "--save-adv", "--batch-size", "16", "--sweep-eps", ""]) == 0
    return out


def _group(r):
    return "tied" if r["tied"] == "True" else "agreed" if r["agreed"] == "True" else "disagreed"


def _numpy_table(rows, group):
    sel = [r for r in rows if group == "all" or _group(r) == group]
    flipped = [r for r in sel if r["flipped"] == "True"]
    rmse = np.array([float(r["rmse"]) for r in flipped])
    eps = np.array([float(r["eps"]) for r in flipped])
    out = {"total": len(sel), "flipped": len(flipped), "failed": sum(r["status"] != "ok" for r in sel),
           "flipped_uint8": sum(r["flipped_uint8"] == "True" for r in sel)}
    if flipped:
        official = np.array([float(r["rmse_official"]) for r in flipped])
        psnr = np.array([float(r["psnr"]) for r in flipped])
        out.update(rmse_mean=rmse.mean(), rmse_std=rmse.std(), eps_mean=np.nanmean(eps), psnr_mean=psnr.mean(),
                   psnr_std=psnr.std(), rmse_official_mean=official.mean(),
                   **{f: np.mean([float(r[f]) for r in flipped]) for f in FRACS})
        if len(flipped) > 1:  # the official notebook's sigma: pandas' std (ddof 1) of the 8-bit RMSE
            out["rmse_official_std"] = official.std(ddof=1)
    return out


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_table2_equals_numpy_on_the_per_sample_csv(run_dir, attack):
    rows = read_csv(run_dir / "samples" / f"{attack}-lpips_alex.csv")
    assert len(rows) == len({r["key"] for r in rows}) > 0
    table = [r for r in read_csv(run_dir / "table2.csv") if r["attack"] == attack]
    assert [r["group"] for r in table] == ["agreed", "disagreed", "tied", "all"]
    for r in table:
        ref = _numpy_table(rows, r["group"])
        for k, v in ref.items():
            assert float(r[k]) == pytest.approx(v, rel=1e-6, abs=1e-9), (r["group"], k)
    assert any(r["flipped"] == "True" for r in rows)
    assert table[0]["metric"] == "lpips_alex [random backbone]"


def test_every_reported_flip_rescored_from_the_saved_shard(run_dir):
    """The adversarial PNGs written for transfer re-score to the recorded 8-bit score and flip flag."""
    m = create_metric("lpips_alex", pretrained=False)
    shard_dir = run_dir / "adv" / "pgd-lpips_alex"
    index = json.loads((shard_dir / "index.json").read_text())
    rows = {r["key"]: r for r in read_csv(run_dir / "samples" / "pgd-lpips_alex.csv")}
    assert index["count"] == len(rows)
    to_t = lambda b: torch.from_numpy(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float32)).permute(2, 0, 1)[None] / 127.5 - 1  # noqa: E731
    checked = 0
    with tarfile.open(shard_dir / index["shards"][0]["name"]) as t:
        members = {m_.name: t.extractfile(m_).read() for m_ in t.getmembers()}
    for key, r in rows.items():
        ref, adv, prey = (to_t(members[f"{key}.{n}.png"]) for n in ("ref", "adv", "prey"))
        s = m(ref, adv).item()
        assert s == pytest.approx(float(r["s_adv_uint8"]), rel=1e-4)
        assert (s > float(r["s_other"])) == (r["flipped_uint8"] == "True")
        assert (adv - prey).abs().max() <= 0.03 + 1 / 127.5  # eps ball, up to 8-bit rounding
        checked += 1
    assert checked == len(rows)


def test_nan_metric_leaves_no_complete_looking_csv(tmp_path, monkeypatch, capsys):
    class HalfNaN(Distance):  # finite on 8-bit images (the data), NaN once an attack moves off the grid
        def _distance(self, ref, x):
            d = (ref - x).pow(2).mean((1, 2, 3))
            with torch.no_grad():
                off_grid = ((x + 1) * 127.5 - ((x + 1) * 127.5).round()).abs().flatten(1).amax(1) > 1e-3
            return d + torch.where(off_grid, float("nan"), 0.0)

    monkeypatch.setitem(METRICS._factories, "halfnan", lambda: HalfNaN())
    with pytest.raises(SystemExit) as e:  # one line naming the metric, the score and the sample (issue 35)
        bench.main(["--metrics", "halfnan", "--attacks", "pgd", "--builtin-n", "2", "--out", str(tmp_path), "--quiet",
                    "--param", "pgd.eps=0.001", "--param", "pgd.alpha=0.001", "--param", "pgd.steps=1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert re.search(r"metric halfnan, sample val/\w+/\d+: pgd on halfnan: returned nan as s_adv", err), err
    assert not (tmp_path / "samples" / "pgd-halfnan.csv").exists() and not (tmp_path / "table2.csv").exists()


@pytest.mark.parametrize("argv,msg", [
    (["--attacks", "pgdd"], "did you mean 'pgd'"),
    (["--attacks", "pgd", "--param", "pgd.eps=0"], "pgd: eps must be > 0"),
    (["--attacks", "pgd", "--param", "pgd.stepz=3"], "pgd has no parameter 'stepz'"),
    (["--attacks", "pgd", "--param", "fgsm.max_eps=0.1"], "attack 'fgsm' is not among --attacks"),
])
def test_bad_attack_arguments_fail_before_work(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit):
        bench.main(argv + ["--out", str(tmp_path)])
    assert msg in capsys.readouterr().err


@pytest.mark.ddp
def test_two_process_attack_run_equals_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIT_ATTACKS_CACHE=str(tmp_path / "cache"))
    common = [sys.executable, str(ROOT / "bench.py"), "--metrics", "l2,lpips_alex", "--attacks", "pgd,fgsm",
              "--pretrained", "false", "--builtin-n", "5", "--quiet", "--batch-size", "8", "--batch-invariant",
              "--sweep-eps", ""]
    run_one_and_two_processes(common, tmp_path, env, two=["--devices", "2", "--strategy", "ddp"])
    for cell in ("pgd-l2", "fgsm-l2", "pgd-lpips_alex", "fgsm-lpips_alex"):
        one, two = (read_csv(tmp_path / n / "samples" / f"{cell}.csv") for n in ("one", "two"))
        assert len(one) >= 20  # the unanimous of 25
        assert_same_rows(one, two, cell)
    t1, t2 = read_csv(tmp_path / "one/table2.csv"), read_csv(tmp_path / "two/table2.csv")
    for a, b in zip(t1, t2):
        for k in a:
            if k != "samples_per_s":
                assert a[k] == b[k] or float(a[k]) == pytest.approx(float(b[k]), rel=1e-6, nan_ok=True), k
