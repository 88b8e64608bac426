"""The robust-2AFC table through bench.py: every number of robust.csv recomputed from the per-sample CSVs, the
flips re-scored, the certificates recomputed from their votes, and 1 vs 2 DDP processes giving the same rows."""
import math
import re
import os
import sys

import numpy as np
import pytest
import yaml

import bench
from lit_attacks.metrics import create_metric
from lit_attacks.certify import certified_radius, clopper_pearson_lower
from lit_attacks.report import read_csv

from conftest import ROOT
from helpers import assert_same_rows, read_wandb_offline, run_one_and_two_processes

ROBUST = {
    "linf": [8], "l2": [1.0], "target": "prey",
    "ensemble": [{"attack": "apgd", "params": {"loss": "margin", "steps": 5}},
                 {"attack": "square", "params": {"queries": 20}}],
    "min_eps": {"attack": "apgd", "params": {"steps": 5}, "linf_max": 16, "l2_max": 4.0, "bisections": 3},
    "certify": {"sigma": 0.25, "n0": 8, "n": 40, "alpha": 0.01, "radii": [0.05, 0.1]},
}


def _config(tmp_path, metrics="l2,lpips_alex", **robust):
    cfg = {"name": "robust_test", "data": None, "builtin_n": 2, "seed": 0, "metrics": metrics.split(","),
           "attacks": {}, "sweep": None, "robust": {**ROBUST, **robust}, "batch_size": 8}
    path = tmp_path / "robust.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _f(v):
    return float(v) if v not in ("", None) else math.nan


def _b(v):
    return str(v) == "True"


def test_robust_table_is_recomputed_from_its_per_sample_rows(tmp_path):
    out = tmp_path / "run"
    assert bench.main(["--config", str(_config(tmp_path)), "--pretrained", "false", "--quiet", "--wandb", "offline",
                       "--out", str(out)]) == 0
    table = {r["metric"]: r for r in read_csv(out / "robust.csv")}
    assert len(table) == 2
    for name in ("l2", "lpips_alex"):
        label = create_metric(name, pretrained=False).label
        row = table[label]
        wc = {norm: read_csv(out / "samples" / "robust" / f"{norm}-{name}.csv") for norm in ("linf-8", "l2-1")}
        n = len(wc["linf-8"])
        assert n == int(row["samples"]) and n >= 8  # the unanimous samples of the built-in set
        agreed = [_b(r["agreed"]) for r in wc["linf-8"]]
        assert float(row["clean"]) == pytest.approx(sum(agreed) / n)
        for norm, col, eps in (("linf-8", "linf 8/255", 16 / 255), ("l2-1", "l2 1", 2.0)):
            recs = wc[norm]
            robust = [_b(r["agreed"]) and r["status"] == "ok" and not _b(r["flipped"]) for r in recs]
            assert float(row[col]) == pytest.approx(sum(robust) / n)
            for r in recs:  # every flip is a re-scored rank flip within the budget, by a named attack
                if _b(r["flipped"]):
                    assert _f(r["s_adv"]) > _f(r["s_other"]) and r["flipped_by"] in ("apgd-margin", "square")
                    size = _f(r["linf"]) if norm.startswith("linf") else _f(r["l2"])
                    assert size <= eps * (1 + 1e-4)
                else:
                    assert r["flipped_by"] == ""
        # minimum eps: the AUC is the area under "agreed and not flipped at eps" over [0, max]
        for norm, mx, scale in (("linf", 16, 255 / 2), ("l2", 4.0, 0.5)):
            recs = read_csv(out / "samples" / "robust" / f"min_eps-{norm}-{name}.csv")
            e = np.array([_f(r["eps"]) * scale if r["status"] == "ok" else -np.inf for r in recs])
            a = np.array([_b(r["agreed"]) for r in recs])
            grid = np.linspace(0, mx, 41)
            acc = [np.mean(a & ~(e <= g)) for g in grid]
            assert float(row[f"auc {norm}"]) == pytest.approx(np.trapezoid(acc, grid) / mx, abs=1e-9)
        # certified: p_lower and the radius from the stored votes; accuracy at each radius on [0, 1] images
        recs = read_csv(out / "samples" / "robust" / f"certify-{name}.csv")
        for r in recs:
            p = clopper_pearson_lower(int(r["votes"]), 40, 0.01)
            assert _f(r["p_lower"]) == pytest.approx(p)
            rad = certified_radius(p, 0.5) if p > 0.5 else -math.inf
            assert _f(r["radius"]) == pytest.approx(rad)
            assert _b(r["correct"]) == (r["predicted"] == "1")
            assert (r["predicted"] == "-1") == (p <= 0.5)
        for rad in (0.05, 0.1):
            want = np.mean([_b(r["correct"]) and _f(r["radius"]) / 2 >= rad for r in recs])
            assert float(row[f"certified l2 {rad:g}"]) == pytest.approx(want)
    (run_dir,) = (out / "wandb").glob("offline-run-*")  # the W&B run holds the table's numbers and the plot
    summary = read_wandb_offline(run_dir)["summary"]
    for label, row in table.items():
        for col in ("clean", "linf 8/255", "l2 1", "auc linf", "certified l2 0.1"):
            assert summary[f"robust/{label}/{col}"] == pytest.approx(float(row[col]))
    assert any(k.startswith("figures/") and "min-eps" in k for k in summary), sorted(summary)
    curves = read_csv(out / "robust_curves.csv")
    assert len(curves) == 2 * 2 * 41
    assert (out / "robust.md").read_text().count("|") > 10
    assert (out / "plots" / "robust-min-eps.png").stat().st_size > 1000


@pytest.mark.ddp
def test_two_process_robust_table_equals_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    cmd = [sys.executable, str(ROOT / "bench.py"), "--config",
           str(_config(tmp_path, metrics="lpips_alex", l2=[], min_eps=None)),  # one worst-case cell, certification
           "--pretrained", "false", "--quiet", "--batch-invariant", "--wandb", "disabled"]
    one, two = run_one_and_two_processes(cmd, tmp_path, env)
    files = sorted(str(p.relative_to(one)) for p in one.rglob("*.csv"))
    assert {"robust.csv", "samples/robust/linf-8-lpips_alex.csv", "samples/robust/certify-lpips_alex.csv"} <= set(files)
    assert files == sorted(str(p.relative_to(two)) for p in two.rglob("*.csv"))
    for rel in files:
        a, b = read_csv(one / rel), read_csv(two / rel)
        if rel.startswith("samples/"):
            assert_same_rows(a, b, rel)
            assert len({r["key"] for r in a}) == len(a)  # each sample once
        else:
            assert a == b, rel


def test_robust_target_flag_overrides_the_config_and_turns_the_table_on():
    from lit_attacks.bench.config import CONFIG_DIR, load_yaml, merge, validate

    quick = merge(load_yaml(CONFIG_DIR / "robust_quick.yaml"), {"robust_target": "ref"})
    assert quick["robust"]["target"] == "ref" and quick["robust"]["linf"] == [2, 4, 8]  # the rest kept
    validate(quick)
    off = merge(load_yaml(CONFIG_DIR / "quick.yaml"), {})
    assert off["robust"] is None
    on = merge(load_yaml(CONFIG_DIR / "quick.yaml"), {"robust_target": "both"})
    assert on["robust"] == {"target": "both"}
    validate(on)


@pytest.mark.parametrize("robust,msg", [
    ({"linf": [0]}, "robust.linf must be a list of positive numbers"),
    ({"target": "p0"}, "robust.target must be prey, ref or both"),
    ({"certify": {"sigma": 0}}, "sigma must be > 0"),
    ({"certify": {"radii": "0.1"}}, "robust.certify.radii must be a list"),
    ({"min_eps": {"bisections": 0}}, "bisections must be >= 1"),
    ({"ensemble": [{"attack": "pgdd"}]}, "did you mean 'pgd'"),
    ({"ensemble": [{"attack": "square"}], "target": "both"}, "'square' cannot perturb 'both'"),
    ({"speed": 1}, "speed"),
])
def test_bad_robust_settings_are_one_line_errors_before_any_work(tmp_path, capsys, robust, msg):
    cfg = {"name": "bad", "data": None, "builtin_n": 1, "metrics": ["l2"], "attacks": {}, "sweep": None,
           "robust": robust}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        bench.main(["--config", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("bench.py: error:") and re.search(msg, err), err
    assert not (tmp_path / "out").exists()
