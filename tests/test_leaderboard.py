"""Bring your own metric, results entries and the leaderboard site (issue 28): a metric defined in this file (not in
the package) evaluated from Python and from the command line, its entry checked against the schema and against the
per-sample rows it cites, the site built from several runs and opened in a real browser."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lit_attacks
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.gradcheck import gradient_status
from lit_attacks.leaderboard.entry import EntryError, clopper_pearson, read_entry, sanity_flags, validate
from lit_attacks.leaderboard.site import build
from lit_attacks.report import read_csv

from helpers import CHROMIUM, chromium

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = """name: lb_test
data: null
builtin_n: 4
seed: 0
metrics: [l2]
attacks: {}
sweep: null
robust:
  linf: [4, 8]
  l2: [0.5, 2.0]
  target: prey
  ensemble:
    - {attack: apgd, params: {loss: ce, steps: 5}}
    - {attack: square, params: {queries: 40}}
  min_eps: {attack: apgd, params: {steps: 5}, linf_max: 16, l2_max: 4.0, bisections: 3}
  certify: {sigma: 0.25, n0: 8, n: 32, alpha: 0.01, radii: [0.05]}
leaderboard: {protocol: lb_test, description: "test budgets"}
batch_size: 16
"""


class MeanAbsDistance(torch.nn.Module):
    """Mean absolute pixel difference, times a learnable scale (a user's metric, defined outside the package)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def forward(self, ref, x):
        return self.scale * (ref - x).abs().flatten(1).mean(1)


def build_mean_abs(scale: float = 1.0):
    """The factory the command line imports: py:test_leaderboard:build_mean_abs."""
    return MeanAbsDistance(scale)


class StepDistance(torch.nn.Module):
    """Mean absolute difference rounded to 1/50: piecewise constant, so every gradient is exactly zero."""

    def forward(self, ref, x):
        return torch.floor(50 * (ref - x).abs().flatten(1).mean(1)) / 50


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("lb")
    protocol = base / "lb_test.yaml"
    protocol.write_text(PROTOCOL)
    py_entry = lit_attacks.evaluate(MeanAbsDistance(), protocol=str(protocol), out=str(base / "py" / "mean_abs"))
    step_entry = lit_attacks.evaluate(StepDistance(), protocol=str(protocol), out=str(base / "py" / "step"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cli = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--config", str(protocol), "--metrics",
                          "l2,py:test_leaderboard:build_mean_abs",
                          "--param", "py:test_leaderboard:build_mean_abs.scale=3",
                          "--out", str(base / "cli"), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    return {"base": base, "protocol": protocol, "py": py_entry, "step": step_entry}


def unanimous_agreement(fn):
    """Independent restatement: the fraction of unanimous built-in samples on which ``fn`` finds the image the
    humans preferred closer to the reference."""
    dm = BappsDataModule(builtin_n=4, batch_size=64, unanimous_only=True)
    k = n = 0
    for b in dm.predict_dataloader():
        with torch.no_grad():
            s0, s1 = fn(b["ref"], b["p0"]), fn(b["ref"], b["p1"])
        pref1 = b["judge"] > 0.5
        k += int(torch.where(pref1, s1 < s0, s0 < s1).sum())
        n += len(s0)
    return k, n


def test_a_metric_of_this_file_evaluated_from_python_gives_a_valid_entry_whose_numbers_match_its_rows(runs):
    e = runs["py"]
    validate(e)
    assert e["metric"]["name"] == "user:MeanAbsDistance" and e["protocol"]["name"] == "lb_test"
    assert e["protocol"]["image_size"] == 64 and e["dataset"]["categories"] == "all"
    assert e["metric"]["description"].startswith("Mean absolute pixel difference")
    k, n = unanimous_agreement(MeanAbsDistance())
    assert (e["results"]["clean"]["k"], e["results"]["clean"]["n"]) == (k, n) and n == e["dataset"]["unanimous"]
    out = runs["base"] / "py" / "mean_abs"
    for norm in ("linf", "l2"):
        accs = [r["accuracy"]["value"] for r in e["results"]["robust"] if r["norm"] == norm]
        assert accs == sorted(accs, reverse=True) and accs[0] <= e["results"]["clean"]["value"]
    csvs = e["results"]["per_sample_csv"]
    assert all((out / c).is_file() for c in csvs) and len(csvs) == 4 + 2 + 1 + 1  # radii, min eps, certify, grads
    worst = [c for c in csvs if c.startswith("samples/robust/linf-8-")]
    rows = read_csv(out / worst[0])
    robust = sum(r["agreed"] == "True" and r["flipped"] == "False" and r["status"] == "ok" for r in rows)
    linf8 = next(r for r in e["results"]["robust"] if r["norm"] == "linf" and r["radius"] == 8)["accuracy"]
    assert linf8["k"] == robust and linf8["n"] == len(rows) == n
    lo, hi = linf8["ci95"]
    assert lo <= linf8["value"] <= hi and (lo, hi) == tuple(clopper_pearson(robust, n))
    assert not any(f["raised"] for f in e["sanity"].values() if f is not e["sanity"]["flip_lost_in_uint8"])


def test_a_zero_gradient_metric_raises_the_gradient_and_black_box_flags(runs):
    e = runs["step"]
    s = e["sanity"]
    assert s["zero_or_nonfinite_gradients"]["raised"] and s["zero_or_nonfinite_gradients"]["samples"] == \
        e["dataset"]["unanimous"]  # floor() has a zero gradient everywhere
    assert s["black_box_beat_white_box"]["raised"]  # APGD cannot move; Square flips some samples
    assert not s["stochastic_without_eot"]["raised"]


def test_the_command_line_imports_a_metric_of_this_file_with_its_parameter(runs):
    folder = runs["base"] / "cli" / "leaderboard" / "builtin-photos" / "lb_test"
    names = sorted(p.name for p in folder.glob("*.json"))
    assert names[0] == "l2.json" and names[1].startswith("py_test_leaderboard_build_mean_abs_scale_3")
    e = read_entry(folder / names[1])
    assert e["metric"]["name"] == "py:test_leaderboard:build_mean_abs:scale=3"
    assert e["results"]["clean"] == runs["py"]["results"]["clean"]  # the scale does not change a ranking
    assert "--param py:test_leaderboard:build_mean_abs.scale=3" in e["command"]


def test_bad_metric_specs_and_params_are_one_line_errors(tmp_path, capsys):
    from lit_attacks.bench.cli import main

    for argv, message in [
        (["--metrics", "py:no_such_module_here:build"], "cannot import no_such_module_here"),
        (["--metrics", "py:test_leaderboard:nothing"], "test_leaderboard has no callable 'nothing'"),
        (["--metrics", "l2", "--param", "py:test_leaderboard:build_mean_abs.scale=3"], "is not among --metrics"),
        (["--metrics", "py:test_leaderboard:build_mean_abs:bogus=1"], "build_mean_abs(bogus) failed"),
    ]:
        with pytest.raises(SystemExit):
            main(argv + ["--out", str(tmp_path / "r"), "--attacks", "", "--sweep-eps", ""])
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_the_site_lists_every_metric_and_refuses_entries_of_another_protocol(runs, tmp_path):
    site = tmp_path / "site"
    board = build([runs["base"] / "py", runs["base"] / "cli"], site)
    (group,) = board["groups"]
    assert {r["name"] for r in group["rows"]} == {"user:MeanAbsDistance", "user:StepDistance", "l2",
                                                   "py:test_leaderboard:build_mean_abs:scale=3"}
    md = (site / "leaderboard.md").read_text()
    assert "| user:MeanAbsDistance |" in md and "| l2 |" in md and "black-box beat white-box" in md
    # an entry whose protocol differs under the same name is refused, naming both files
    other = tmp_path / "other"
    src = next((runs["base"] / "cli" / "leaderboard").rglob("l2.json"))
    e = copy.deepcopy(json.loads(src.read_text()))
    e["protocol"]["fingerprint"] = "0" * 16
    (other / "x").mkdir(parents=True)
    (other / "x" / "l2.json").write_text(json.dumps(e))
    with pytest.raises(EntryError, match=r"l2\.json and .*l2\.json: both say protocol 'lb_test' but their protocol "
                                         r"fingerprints differ"):
        build([runs["base"] / "cli", other], tmp_path / "site2")
    assert not (tmp_path / "site2").exists()


def test_the_site_has_no_broken_link_or_image(runs, tmp_path):
    site = tmp_path / "site"
    build([runs["base"] / "py", runs["base"] / "cli"], site)
    page = (site / "index.html").read_text()
    refs = re.findall(r"(?:href|src)='([^']+)'", page)
    assert len(refs) >= 7 and all((site / r).is_file() for r in refs), refs
    for r in refs:
        if r.endswith(".json") and r.startswith("entries/"):
            read_entry(site / r)  # a copy that still validates
    assert (site / "plots").is_dir() and all(p.read_text().startswith("<svg") for p in (site / "plots").iterdir())




@pytest.mark.skipif(not CHROMIUM, reason="no headless Chromium installed (Debian package chromium)")
def test_the_site_opens_in_a_real_browser_with_its_plot_and_a_sortable_table(runs, tmp_path):
    site = tmp_path / "site"
    build([runs["base"] / "py", runs["base"] / "cli"], site)
    dom = chromium(tmp_path, "--dump-dom", (site / "index.html").as_uri())
    assert 'data-broken-images="0"' in dom and dom.count("<tr>") == 5  # a header and four metrics


def test_entries_that_break_the_schema_are_refused_naming_the_field(runs, tmp_path):
    e = copy.deepcopy(runs["py"])
    del e["sanity"]["flip_lost_in_uint8"]
    with pytest.raises(EntryError, match=r"x\.json: sanity: 'flip_lost_in_uint8' is a required property"):
        p = tmp_path / "x.json"
        p.write_text(json.dumps(e))
        read_entry(p)
    e = copy.deepcopy(runs["py"])
    e["results"]["clean"]["value"] = 1.5
    with pytest.raises(EntryError, match=r"results/clean/value: 1\.5 is greater than the maximum of 1"):
        validate(e, "entry")


def test_sanity_flags_and_gradient_status_from_rows():
    worst = [[{"key": "a", "flipped_by": "square", "flipped": True, "flipped_uint8": False},
              {"key": "b", "flipped_by": "apgd-ce", "flipped": True, "flipped_uint8": True}],
             [{"key": "a", "flipped_by": "apgd-ce", "flipped": True, "flipped_uint8": True},
              {"key": "c", "flipped_by": "", "flipped": False, "flipped_uint8": False}]]
    grads = [{"key": "a", "grad_status": "ok"}, {"key": "b", "grad_status": "nonfinite"}]
    f = sanity_flags(worst, ["square"], grads, stochastic=True, eot=1)
    assert f["black_box_beat_white_box"]["samples"] == 1 and f["flip_lost_in_uint8"]["samples"] == 1
    grad = f["zero_or_nonfinite_gradients"]
    assert grad["samples"] == 1 and "nonfinite" in grad["detail"]
    assert f["stochastic_without_eot"]["raised"]
    assert not sanity_flags(worst, [], grads, True, 4)["stochastic_without_eot"]["raised"]
    g = torch.zeros(3, 3, 2, 2)
    g[1, 0, 0, 0], g[2, 1, 1, 1] = 1.0, float("nan")
    assert gradient_status(g) == ["zero", "ok", "nonfinite"]


def test_clopper_pearson_matches_the_textbook_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** 0.1)  # (alpha/2)^(1/n) at k = 0
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1 and lo == pytest.approx(0.025 ** 0.1)
    lo, hi = clopper_pearson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1871, 0.8129)


def test_objects_are_wrapped_once_frozen_converted_and_copied_per_task():
    from lit_attacks.metrics import create_metric
    from lit_attacks.metrics.user import UserMetricError, register_object

    def cosine(ref, x):
        return torch.nn.functional.cosine_similarity(ref.flatten(1), x.flatten(1))

    name = register_object(cosine, "cos", similarity=True)
    m = create_metric(name)
    g = torch.Generator().manual_seed(1)
    ref, x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    assert torch.allclose(m(ref, x), 1 - cosine(ref, x)) and m.signed and m.label == "user:cos"
    module = MeanAbsDistance(2.0)
    m = create_metric(register_object(module))
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    m.double()  # what a batch_invariant task does to its own copy
    assert create_metric("user:MeanAbsDistance").fn.scale.dtype == torch.float32 and module.scale.requires_grad
    with pytest.raises(UserMetricError, match=r"metric user:bad: returned shape \(1,\), expected \(2,\)"):
        register_object(lambda ref, x: ref.sum().view(1), "bad")
    with pytest.raises(UserMetricError, match=r"metric user:nan: returned non-finite values"):
        register_object(lambda ref, x: (ref - x).mean((1, 2, 3)) * float("nan"), "nan")
    with pytest.raises(UserMetricError, match=r"metric user:Tensor: got a Tensor, expected a torch.nn.Module"):
        register_object(torch.zeros(1), "Tensor")
