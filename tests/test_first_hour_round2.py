"""A researcher's first hour, round 2 (issue 29): the three-line attack call, inputs checked before any work, and
Ctrl-C that says how to resume, wherever it lands."""
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from lit_attacks.attacks import create_attack
from lit_attacks.bench.cli import main as bench
from lit_attacks.metrics import create_metric

from helpers import CHROMIUM, chromium

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--metrics", "l2", "--builtin-n", "2", "--batch-size", "8", "--wandb", "disabled", "--sweep-eps", "",
         "--attacks", "pgd", "--param", "pgd.steps=3"]


def triplets(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(B, 3, 32, 32, generator=g) * 2 - 1
    p0 = (ref + 0.02 * torch.randn(B, 3, 32, 32, generator=g)).clamp(-1, 1)
    p1 = (ref + 0.2 * torch.randn(B, 3, 32, 32, generator=g)).clamp(-1, 1)
    return ref, p0, p1


def test_three_lines_attack_tensors_and_the_flips_re_score():
    ref, p0, p1 = triplets()
    out = create_attack("pgd", "l2", eps=0.2, alpha=0.02, steps=20)(ref, p0, p1)
    m = create_metric("l2")
    s0, s1 = m(ref, p0), m(ref, p1)
    assert out.prey.tolist() == (s1 < s0).long().tolist() and out.key[0] == "input/000000"
    other = torch.where((out.prey == 1).view(-1, 1, 1, 1), p0, p1)
    assert out.flipped.any()
    assert torch.equal(out.flipped, m(ref, out.adv) > m(ref, other))  # every flip re-scored on the returned image
    assert not out.agreed.any()  # no judge given: nothing to agree with
    judged = create_attack("pgd", "l2", eps=0.2, alpha=0.02, steps=20)(ref, p0, p1, judge=torch.zeros(6))
    assert torch.equal(judged.agreed, s0 < s1) and torch.equal(judged.flipped, out.flipped)


def test_a_metric_object_works_where_a_name_does():
    metric = create_metric("lpips_alex", pretrained=False)
    by_object = create_attack("pgd", metric, steps=3)
    by_name = create_attack("pgd", "lpips_alex", pretrained=False, steps=3)
    ref, p0, p1 = triplets(3)
    assert torch.equal(by_object(ref, p0, p1).s_adv, by_name(ref, p0, p1).s_adv)
    assert by_object.metric_name == "user:lpips_alex"


@pytest.mark.parametrize("change,message", [
    (lambda b: b.pop("key"), r"the batch is missing 'key'; a batch holds ref, p0, p1"),
    (lambda b: b.pop("category"), r"the batch is missing 'category'"),
    (lambda b: b.update(p1=b["p1"][:2]), r"ref, p0 and p1 must have the same shape"),
    (lambda b: b.update(ref=b["ref"][0]),
     r"ref must be a \(B, 3, H, W\) float tensor in \[-1, 1\], got shape \(3, 32, 32\)"),
    (lambda b: b.update(judge=torch.zeros(2)), r"judge must be a \(6,\) tensor"),
    (lambda b: b.update(key="one"), r"key must be 6 strings"),
])
def test_bad_batches_fail_in_one_line_before_any_work(change, message, monkeypatch):
    from lit_attacks.attacks import pgd

    atk = create_attack("pgd", "l2", steps=3)
    ref, p0, p1 = triplets()
    batch = {"ref": ref, "p0": p0, "p1": p1, "judge": torch.zeros(6), "key": [f"k{i}" for i in range(6)],
             "category": ["c"] * 6}
    change(batch)
    monkeypatch.setattr(pgd.PGD, "attack", lambda *a, **k: pytest.fail("the attack ran on a bad batch"))
    with pytest.raises(ValueError, match=message) as e:
        atk.predict_step(batch)
    assert "\n" not in str(e.value)


def test_a_batch_in_0_1_gets_one_warning_and_is_attacked_as_it_is():
    atk = create_attack("pgd", "l2", steps=2)
    ref, p0, p1 = ((t + 1) / 2 for t in triplets())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        atk(ref, p0, p1)
        atk(ref, p0, p1)
        atk(*triplets())
    texts = [str(x.message) for x in w if "[0, 1]" in str(x.message)]
    assert texts == ["pgd on l2: every image of this batch is in [0, 1]; attacks and metrics expect [-1, 1] images "
                     "(x * 2 - 1). Attacking them as they are."]


def test_a_long_repr_never_floods_an_error():
    with pytest.raises(ValueError, match=r"^pgd: eps must be a finite number, got .{1,80}$"):
        create_attack("pgd", "l2", eps=torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(30)]))


# ------------------------------------------------------------------------------ 2. Ctrl-C anywhere
def test_ctrl_c_inside_lightning_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Lightning catches KeyboardInterrupt in a predict loop and calls sys.exit(1): bench turns it back."""
    from lit_attacks.attacks import base

    def interrupt(self, batch, batch_idx=0):
        raise KeyboardInterrupt
    monkeypatch.setattr(base.AttackModule, "predict_step", interrupt)
    assert bench(SMALL + ["--out", str(tmp_path / "r"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err and str(tmp_path / "r" / "cells") in err
    assert (tmp_path / "r" / "cells").is_dir() and any((tmp_path / "r" / "cells").iterdir())  # table 1 kept


@pytest.mark.parametrize("where", ["lightning.pytorch", "preflight", "finish", "config"])
def test_ctrl_c_at_other_moments(where, tmp_path, capsys, monkeypatch):
    from lit_attacks.bench import cli, runner

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    if where == "preflight":
        monkeypatch.setattr(runner, "create_metric", interrupt)
    elif where == "finish":
        monkeypatch.setattr("lit_attacks.bench.outputs.write_outputs", interrupt)
    elif where == "config":
        monkeypatch.setattr(cli, "resolve_config", interrupt)
    else:
        monkeypatch.setattr("lit_attacks.scoring.ScoreModule.predict_step", interrupt)
    assert bench(SMALL + ["--out", str(tmp_path / "r"), "--quiet"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not (tmp_path / "r" / "summary.json").exists()  # no run-level file claims a finished run


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_real_signal_inside_a_cell_stops_the_run_with_the_resume_line(tmp_path, sig, code, word):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "--metrics", "l2,ssim", "--builtin-n", "10",
                          "--wandb", "disabled", "--out", str(tmp_path / "r")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 120
    line = ""
    while "[cell 3/" not in line and time.time() < deadline:  # well inside the run, inside a Lightning loop
        line = p.stdout.readline()
    p.send_signal(sig)  # SIGTERM: Lightning's predict loop alone only noted it and ran on to the end
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err[-2000:]
    assert f"bench.py: {word}. Completed cells are saved in" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "summary.json").exists()


# ------------------------------------------------------------------------------ 7. small things
def test_every_bench_flag_has_help_text():
    from lit_attacks.bench.cli import build_parser

    bare = [a.option_strings for a in build_parser()._actions if a.option_strings and not (a.help or "").strip()]
    assert not bare, f"flags without help: {bare}"


def test_the_offline_weights_error_names_both_files_and_advises_once(empty_hub, monkeypatch, capsys, tmp_path):
    from lit_attacks.metrics import WeightsNotFoundError
    from lit_attacks.metrics import weights as W

    monkeypatch.setenv(W.ENV_OFFLINE, "1")
    with pytest.raises(WeightsNotFoundError, match=r"'alexnet-owt-7be5be79.pth' \(or a features-only "
                                                  r"alexnet_features_\*.pth in the weights folder\) not found"):
        create_metric("lpips_alex", weights_dir=str(empty_hub))
    with pytest.raises(SystemExit):
        bench(["--metrics", "lpips_alex", "--weights-dir", str(empty_hub), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert err.count("pretrained") == 1 and "--pretrained false" in err and len(err.strip().splitlines()) == 1


def test_a_rerun_readme_keeps_what_the_cells_cost(tmp_path):
    import json
    import re

    out = tmp_path / "r"
    assert bench(SMALL + ["--out", str(out), "--quiet"]) == 0
    first = json.loads((out / "summary.json").read_text())
    assert "loaded" not in (out / "README.md").read_text()
    assert bench(SMALL + ["--out", str(out), "--quiet"]) == 0
    n = len(first["cells"])
    text = (out / "README.md").read_text()
    m = re.search(rf"which loaded {n} of its {n} cells from an earlier run; the cells took ([0-9.]+) s", text)
    assert m and float(m[1]) == pytest.approx(sum(c["seconds"] for c in first["cells"].values()), abs=0.06)


# ------------------------------------------------------------------------------ 3. the index page


def test_examples_are_drawn_across_categories_flipped_first():
    from types import SimpleNamespace

    from lit_attacks.callbacks.examples import ExampleCollector

    c = ExampleCollector(k=4)
    trainer = SimpleNamespace(is_global_zero=True)
    c.on_predict_start(trainer, None)
    c.on_predict_batch_end(trainer, None, _outputs(["b/0", "b/1", "b/2", "n/0"], ["blur"] * 3 + ["noise"],
                                                   [True, True, True, False]), None, 0)
    c.on_predict_batch_end(trainer, None, _outputs(["n/1", "j/0"], ["noise", "jpeg"], [True, False]), None, 1)
    c.on_predict_end(trainer, None)
    assert [e["key"] for e in c.examples] == ["b/0", "n/1", "b/1", "b/2"]  # flipped, one category at a time
    c = ExampleCollector(k=3)
    c.on_predict_start(trainer, None)
    c.on_predict_batch_end(trainer, None, _outputs(["b/0", "n/0", "j/0"], ["blur", "noise", "jpeg"],
                                                   [False, False, True]), None, 0)
    c.on_predict_end(trainer, None)
    assert [e["key"] for e in c.examples] == ["j/0", "b/0", "n/0"]  # then unflipped ones, across categories


def _outputs(keys, cats, flipped):
    from types import SimpleNamespace

    B = len(keys)
    img = torch.zeros(B, 4, 4, 3, dtype=torch.uint8)
    return SimpleNamespace(key=keys, category=cats, flipped=torch.tensor(flipped), s_other=torch.ones(B),
                           s_adv=torch.ones(B), s0=torch.zeros(B), s1=torch.ones(B),
                           images={n: img for n in ("ref", "other", "prey", "adv")})


@pytest.mark.skipif(not CHROMIUM, reason="no headless Chromium installed (Debian package chromium)")
def test_the_index_page_fits_1280_px_with_a_compact_table2_and_a_legend(tmp_path):
    out = tmp_path / "r"
    assert bench(SMALL[:-4] + ["--attacks", "fgsm,pgd", "--param", "pgd.steps=3", "--param", "fgsm.step=0.002",
                               "--out", str(out), "--quiet"]) == 0
    page = (out / "index.html").read_text()
    assert "<th>8-bit</th>" in page and "flipped_uint8" not in page.split("id='table2'")[1].split("</table>")[0]
    assert ">tied<" not in page  # no tie in this run: the empty groups are folded
    assert "<ul class='legend'>" in page and "table2.csv'>table2.csv</a> (every column)" in page
    dom = chromium(tmp_path, "--dump-dom", (out / "index.html").as_uri())
    assert 'data-broken-images="0"' in dom and 'data-overflow="false"' in dom
    chromium(tmp_path, f"--screenshot={tmp_path / 'page.png'}", (out / "index.html").as_uri())
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_train_py_says_no_noise(tmp_path):
    """W&B's anonymous and git-root warnings and Lightning's litlogger advert are gone; the quick config's logging
    interval fits its 8 batches per epoch."""
    import logging

    import yaml

    from lit_attacks.quiet import lightning_adverts_silenced
    from lit_attacks.robust.logger import AutoWandbLogger

    logger = AutoWandbLogger(mode="offline", save_dir=str(tmp_path))
    assert "anonymous" not in logger._wandb_init
    settings = logger._wandb_init["settings"]
    assert settings.disable_git or Path(settings.git_root, ".git").exists()
    lightning_adverts_silenced()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    try:
        log.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]...")
        log.info("GPU available: False, used: False")
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False"]
    quick = yaml.safe_load((ROOT / "configs" / "train" / "quick.yaml").read_text())
    batches = quick["data"]["builtin_n"] * 5 // quick["data"]["batch_size"]  # 5 categories of the built-in set
    assert quick["trainer"]["log_every_n_steps"] <= batches


# ------------------------------------------------------------------------------ 5. progress from the work left
def test_the_eta_is_the_work_left_over_the_measured_rate(monkeypatch, capsys):
    """Cells cost 0.5 s each plus 0.01 s per unit of work: the fit recovers both and predicts the rest."""
    from lit_attacks.bench import cells

    now = [0.0]
    monkeypatch.setattr(cells.time, "time", lambda: now[0])
    works = [2, 2, 256, 93, 996, 996]
    p = cells.Progress(len(works), work=sum(works))
    etas = []
    for w in works:
        p.start("cell", work=w)
        etas.append(capsys.readouterr().out.strip().rsplit("ETA ", 1)[1])
        now[0] += 0.5 + 0.01 * w
        p.finish()
    left = lambda i: sum(0.5 + 0.01 * w for w in works[i:])  # noqa: E731
    assert etas[:3] == ["?", "?", "?"]  # two cells of one work: the fixed cost and the rate are not separable yet
    assert etas[3] == cells.clock(left(3)) and etas[4] == cells.clock(left(4))  # exact for an exact linear cost


@pytest.mark.parametrize("preset", ["quick", "leaderboard_quick", "robust_quick", "table2"])
def test_each_table_plans_the_work_its_cells_declare(preset):
    from types import SimpleNamespace

    from lit_attacks.bench.cli import parse_args, resolve_config
    from lit_attacks.tables import tables

    cfg = resolve_config(parse_args(["--config", preset]))
    run = SimpleNamespace(cfg=cfg, devices={"accelerator": "cpu"})
    for t in tables():
        plan = t.plan(cfg)
        if plan.cells and t.name not in ("table3", "reproduce"):  # these read data or files to list their cells
            cells = list(t().cells(run))
            assert len(cells) == plan.cells and plan.total_work == pytest.approx(sum(c.work for c in cells)), t.name
    from lit_attacks.attacks.cost import attack_cost

    # as counted by the attack contract test: scoring, re-scoring (4), then forward + backward per step
    assert attack_cost("pgd", {"steps": 30}) == pytest.approx(4 + 30 * 3)
    assert attack_cost("square", {"queries": 100}) == pytest.approx(4 + 100)  # black-box: forwards only


def test_a_run_far_slower_than_this_machine_managed_says_so(tmp_path, capsys, monkeypatch):
    import json
    import re

    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cache"))
    assert bench(SMALL + ["--out", str(tmp_path / "a")]) == 0
    rates = json.loads((tmp_path / "cache" / "machine_rates.json").read_text())
    assert any(k.startswith("pgd-l2|cpu|64") for k in rates)
    assert "this machine's best rate" not in capsys.readouterr().out
    (tmp_path / "cache" / "machine_rates.json").write_text(json.dumps({k: v / 10 for k, v in rates.items()}))
    assert bench(SMALL + ["--out", str(tmp_path / "b")]) == 0  # as if this machine had once been 10x faster
    out = capsys.readouterr().out
    assert re.search(r"note: pgd on l2 ran at 0\.[0-4]\dx this machine's best rate for it", out), out
