"""The 2AFC formula, Table 1 on a hand-made tree, and bench.py under 1 and 2 processes."""
import os
import subprocess
import sys

import numpy as np
import pytest

import bench
from lit_attacks.datamodules.shards import write_shards
from lit_attacks.datamodules.tree import scan_tree
from lit_attacks.evaluation import two_afc
from lit_attacks.report import read_csv

from conftest import ROOT
from helpers import add_sample, flat, random_tree


def test_two_afc_formula_with_ties():
    s0 = np.array([1.0, 2.0, 3.0, 3.0, 0.5])
    s1 = np.array([2.0, 1.0, 3.0, 3.0, 0.7])
    p = np.array([0.2, 0.2, 0.7, 1.0, 1.0])
    np.testing.assert_allclose(two_afc(s0, s1, p), [0.8, 0.2, 0.5, 0.5, 0.0])


@pytest.fixture
def hand_tree(tmp_path):
    r = tmp_path / "tree"
    add_sample(r, "val", "cnn", "000000", flat(100), flat(110), flat(150), 0.0)  # s0<s1, judge 0 -> 1
    add_sample(r, "val", "cnn", "000001", flat(100), flat(150), flat(110), 0.4)  # s1<s0, p=0.4 -> 0.4
    add_sample(r, "val", "cnn", "000002", flat(100), flat(120), flat(120), 1.0)  # tie -> 0.5
    add_sample(r, "val", "traditional", "000000", flat(50), flat(60), flat(200), 1.0)  # s0<s1, judge 1 -> 0
    add_sample(r, "val", "traditional", "000001", flat(50), flat(200), flat(60), 0.8)  # s1<s0, p=0.8 -> 0.8
    return r


def test_table1_on_hand_made_tree(hand_tree, tmp_path):
    out = tmp_path / "out"
    assert bench.main(["--data", str(hand_tree), "--metrics", "l2", "--out", str(out), "--quiet", "--sweep-eps", ""]) == 0
    rows = {r["category"]: r for r in read_csv(out / "table1.csv")}
    expected = {  # category: (samples, unanimous, 2AFC, accuracy), computed by hand above
        "cnn": (3, 2, (1 + 0.4 + 0.5) / 3, (1 + 0.5) / 2),
        "traditional": (2, 1, (0 + 0.8) / 2, 0.0),
        "all": (5, 3, (1 + 0.4 + 0.5 + 0 + 0.8) / 5, (1 + 0.5 + 0) / 3),
    }
    assert set(rows) == set(expected)
    for cat, (n, u, score, acc) in expected.items():
        r = rows[cat]
        assert (r["metric"], int(r["samples"]), int(r["unanimous"])) == ("l2", n, u)
        assert float(r["two_afc"]) == pytest.approx(score) and float(r["accuracy"]) == pytest.approx(acc)
    scores = read_csv(out / "scores" / "l2.csv")
    assert [s["key"] for s in scores] == ["val/cnn/000000", "val/cnn/000001", "val/cnn/000002",
                                          "val/traditional/000000", "val/traditional/000001"]
    assert float(scores[0]["s0"]) == pytest.approx((10 / 127.5) ** 2, rel=1e-5)
    assert (out / "table1.md").read_text().count("| l2 |") == 3
    assert "table1" in (out / "summary.json").read_text()


def test_bench_rejects_bad_arguments_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--metrics", "l2,lpips_alx", "--out", str(tmp_path)])
    assert "did you mean 'lpips_alex'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "no such folder" in capsys.readouterr().err


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    r = subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.ddp
def test_two_process_ddp_scores_every_sample_once(tmp_path):
    judges = random_tree(tmp_path / "tree", n=25, cats=("cnn", "traditional", "color"))
    write_shards(scan_tree(tmp_path / "tree", "val"), tmp_path / "shards", shard_size=30, progress=False)  # 3 shards on 2 ranks, 75 samples
    common = ["--data", str(tmp_path / "shards"), "--metrics", "l2,ssim", "--quiet", "--batch-size", "8", "--sweep-eps", ""]
    _run(common + ["--out", str(tmp_path / "one")], tmp_path)
    _run(common + ["--out", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp"], tmp_path)
    for m in ("l2", "ssim"):
        one, two = read_csv(tmp_path / "one/scores" / f"{m}.csv"), read_csv(tmp_path / "two/scores" / f"{m}.csv")
        assert [r["key"] for r in two] == sorted(judges)  # all 75 samples, none twice
        assert one == two
    assert read_csv(tmp_path / "one/table1.csv") == read_csv(tmp_path / "two/table1.csv")
