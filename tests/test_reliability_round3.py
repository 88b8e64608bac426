"""Reliability and security, round 3 (issue 35): the leaderboard site, user metrics, NIGHTS, the shared cache and
training held to the promises bench keeps. One section per class of the issue: its examples and cases of our own."""
import errno
import json
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
import lit_attacks
from lit_attacks.bench.folder import MANIFEST as BENCH_MANIFEST
from lit_attacks.folders import FolderError, OwnedFolder
from lit_attacks.leaderboard.__main__ import main as leaderboard_main
from lit_attacks.leaderboard.entry import EntryError, read_entry
from lit_attacks.leaderboard.site import MANIFEST as SITE_MANIFEST, build, md

from helpers import add_sample, flat, full_disk_at, one_line_error

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--quiet", "--wandb", "disabled", "--builtin-n", "2", "--batch-size", "8"]
RUN = ["--metrics", "l2", "--attacks", "pgd", "--param", "pgd.steps=2", "--sweep-eps", ""] + QUIET
PROTOCOL = """name: r3_test
data: null
builtin_n: 2
seed: 0
metrics: [l2]
attacks: {}
sweep: null
robust:
  linf: [4]
  l2: [0.5]
  target: prey
  ensemble:
    - {attack: apgd, params: {loss: ce, steps: 2}}
    - {attack: square, params: {queries: 5}}
  min_eps: null
  certify: null
leaderboard: {protocol: r3_test, description: "tiny budgets"}
"""


def leaderboard_error(capsys, argv, code=2):
    assert leaderboard_main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("python -m lit_attacks.leaderboard: error: "), err
    return err[-1]


def listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished bench run of the tiny protocol: one results entry (for l2)."""
    base = tmp_path_factory.mktemp("r3")
    (base / "r3_test.yaml").write_text(PROTOCOL)
    out = base / "run"
    assert bench.main(["--config", str(base / "r3_test.yaml"), "--out", str(out), "--quiet", "--wandb",
                       "disabled"]) == 0
    return out


@pytest.fixture
def entry_file(run_dir):
    (f,) = sorted((run_dir / "leaderboard").rglob("*.json"))
    return f


def write_entry(folder, entry, name="e.json"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(entry))
    return folder / name


# ====================================================================== 1. files outside the output folder
@pytest.mark.parametrize("listed", ["/etc/hostname", "{outside}", "../outside.txt"])
def test_a_site_manifest_naming_a_file_outside_is_refused_and_the_file_kept(run_dir, tmp_path, capsys, listed):
    site = tmp_path / "site"
    site.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    (site / SITE_MANIFEST).write_text(json.dumps({"files": [listed.format(outside=outside)]}))
    err = leaderboard_error(capsys, ["build", str(run_dir), "--out", str(site)])
    assert "not a path inside the folder" in err and outside.read_text() == "precious"
    assert Path("/etc/hostname").exists()


@pytest.mark.parametrize("link", ["entries", "plots", "entries/builtin-photos", "leaderboard.md"])
def test_a_symlink_in_a_site_is_refused_and_its_target_untouched(run_dir, tmp_path, capsys, link):
    site = tmp_path / "site"
    assert leaderboard_main(["build", str(run_dir), "--out", str(site)]) == 0
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "mine.json").write_text("mine")
    p = site / link
    if p.is_dir():
        import shutil

        shutil.rmtree(p)
    else:
        p.unlink()
    p.symlink_to(target if link != "leaderboard.md" else target / "mine.json")
    err = leaderboard_error(capsys, ["build", str(run_dir), "--out", str(site)])
    assert "is a symlink" in err and listing(target) == ["mine.json"] and (target / "mine.json").read_text() == "mine"


def test_a_site_out_equal_to_an_input_folder_is_refused_and_the_users_files_kept(run_dir, tmp_path, capsys,
                                                                                entry_file):
    mine = tmp_path / "my_entries"
    mine.mkdir()
    (mine / "index.html").write_text("<p>my own page</p>")
    (mine / "e.json").write_bytes(entry_file.read_bytes())
    err = leaderboard_error(capsys, ["build", str(mine), "--out", str(mine)])
    assert "holds other files and no leaderboard site" in err
    assert (mine / "index.html").read_text() == "<p>my own page</p>" and listing(mine) == ["e.json", "index.html"]
    before = (run_dir / "index.html").read_bytes()
    err = leaderboard_error(capsys, ["build", str(run_dir), "--out", str(run_dir)])
    assert "holds other files" in err and (run_dir / "index.html").read_bytes() == before


def test_a_rebuild_removes_only_the_files_its_build_wrote(run_dir, tmp_path):
    site = tmp_path / "site"
    assert leaderboard_main(["build", str(run_dir), "--out", str(site)]) == 0
    manifest = json.loads((site / SITE_MANIFEST).read_text())
    assert manifest["format"] == 1 and set(manifest["files"]) == {
        str(p.relative_to(site)) for p in site.rglob("*") if p.is_file() and p.name != SITE_MANIFEST}
    (site / "leaderboard.md").write_text("edited by hand")  # changed since: never removed
    stale = site / "entries" / "old.json"
    stale.write_text("{}")  # not written by a build: never removed
    assert leaderboard_main(["build", str(run_dir), "--out", str(site)]) == 0
    assert stale.read_text() == "{}"


@pytest.mark.parametrize("sub", ["leaderboard", "extra", "samples/inner"])
def test_a_symlink_anywhere_in_a_results_folder_is_refused(tmp_path, capsys, sub):
    out = tmp_path / "r"
    assert bench.main(RUN + ["--out", str(out)]) == 0
    target = tmp_path / "elsewhere"
    target.mkdir()
    (out / sub).parent.mkdir(parents=True, exist_ok=True)
    (out / sub).symlink_to(target)
    err = one_line_error(capsys, ["--config", "leaderboard_quick", "--metrics", "l2", "--out", str(out)] + QUIET)
    assert "is a symlink" in err and listing(target) == []


def test_the_data_commands_and_bench_never_fill_a_folder_of_the_users(tmp_path, capsys):
    from lit_attacks.datamodules.bapps import main as bapps_main

    tree = tmp_path / "tree"
    add_sample(tree, "val", "cnn", "000000", flat(0), flat(1), flat(2), 1.0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.json").write_text("my own index")
    for cmd in (["shards", "--root", str(tree)], ["builtin", "--n-per-category", "1"], ["nights-fixture", "--n", "1"]):
        assert bapps_main(cmd + ["--out", str(mine)]) == 2
        err = capsys.readouterr().err.strip()
        assert "holds other files and no run of this command" in err and "\n" not in err
        assert listing(mine) == ["index.json"] and (mine / "index.json").read_text() == "my own index"
    assert bapps_main(["shards", "--root", str(tree), "--out", str(tmp_path / "s")]) == 0
    assert bapps_main(["shards", "--root", str(tree), "--out", str(tmp_path / "s")]) == 0  # its own folder again
    capsys.readouterr()
    err = one_line_error(capsys, RUN + ["--data", str(tree), "--out", str(tree)])
    assert "holds other files and no bench run" in err and listing(tree) == listing(tmp_path / "tree")


def test_temporary_files_of_a_killed_writer_are_removed_when_the_folder_is_claimed_again(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    OwnedFolder(root, ".m.json", "test").claim()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [root / f".last.ckpt.tmp{dead}-0123abcd", root / "sub" / f".index.html.tmp{dead}"]
    keep = [root / f".x.tmp{os.getpid()}-0123abcd", root / "notes.tmp1-0123abcd", root / "wandb" / f".a.tmp{dead}"]
    for p in stale + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    OwnedFolder(root, ".m.json", "test").claim()
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_the_guard_refuses_paths_that_leave_its_folder_and_links_made_after_the_claim(tmp_path):
    from lit_attacks.report import atomic_write

    root = tmp_path / "site"
    root.mkdir()
    folder = OwnedFolder(root, ".m.json", "test", exempt=("wandb",))
    folder.claim()
    outside = tmp_path / "outside"
    outside.mkdir()
    with folder.writing():
        atomic_write(root / "a" / "b.txt", "ok")
        (root / "late").symlink_to(outside)  # made while the run goes on
        with pytest.raises(FolderError, match="is a symlink, not a folder"):
            atomic_write(root / "late" / "x.txt", "no")
        with pytest.raises(FolderError, match="not a file of"):
            atomic_write(root / "wandb" / "x.txt", "no")  # W&B's own folder
        atomic_write(tmp_path / "not_guarded.txt", "outside the folder: no guard applies")
    assert listing(outside) == [] and json.loads((root / ".m.json").read_text())["files"] == {
        "a/b.txt": __import__("hashlib").sha256(b"ok").hexdigest()}


@pytest.mark.slow
def test_an_offline_wandb_run_writes_nothing_under_home_or_outside_its_folders(tmp_path):
    home, cache, out = tmp_path / "home", tmp_path / "cache", tmp_path / "out"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MPLCONFIGDIR", "XDG_"))}
    env.update(HOME=str(home), LIT_ATTACKS_CACHE=str(cache), WANDB_MODE="offline", WANDB_SILENT="true")
    before = set(os.listdir(tmp_path)) | {"cache", "out"}
    r = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--metrics", "l2", "--attacks", "pgd", "--param",
                        "pgd.steps=2", "--sweep-eps", "0.01", "--builtin-n", "2", "--out", str(out), "--quiet"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert listing(home) == [], listing(home)  # no ~/.cache/wandb, ~/.local/share/wandb, ~/.cache/matplotlib
    assert set(os.listdir(tmp_path)) == before  # nothing in the working folder either (only out and the cache)
    assert list((out / "wandb").glob("offline-run-*")) and (cache / "matplotlib").is_dir()


# ====================================================================== 2. code named by a config
def test_code_named_by_a_config_runs_only_with_allow_code_and_never_a_python_builtin(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "evil.yaml"
    cfg.write_text('metrics: ["py:os:system:command=touch PWNED"]\n')
    err = one_line_error(capsys, ["--config", str(cfg), "--out", str(tmp_path / "r")] + QUIET)
    assert "metrics[0] names code" in err and "--allow-code" in err
    err = one_line_error(capsys, ["--config", str(cfg), "--allow-code", "--out", str(tmp_path / "r")] + QUIET)
    assert "os is part of Python's standard library" in err
    (tmp_path / "reexport.py").write_text("from os import system\nfrom builtins import exec as run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, why in [("py:reexport:system:command=touch PWNED", "a callable of Python itself"),
                      ("py:reexport:run:source=1", "a callable of Python itself"),
                      ("py:builtins:exec:source=1", "standard library"), ("py:subprocess:run", "standard library")]:
        err = one_line_error(capsys, ["--metrics", spec, "--out", str(tmp_path / "r")] + QUIET)
        assert why in err, err
    assert not (tmp_path / "PWNED").exists() and not (ROOT / "PWNED").exists()


def test_code_at_any_key_of_a_config_or_protocol_is_found(tmp_path):
    from lit_attacks.api import EvaluationError
    from lit_attacks.bench.config import code_named

    assert code_named({"a": [1, {"b": " py:x:y"}], "c": "l2"}) == [("a[1].b", " py:x:y")]
    protocol = tmp_path / "p.yaml"
    protocol.write_text(PROTOCOL.replace("metrics: [l2]", "metrics: [l2, 'py:os:getcwd']"))
    with pytest.raises(EvaluationError, match="names code to import and run"):
        lit_attacks.evaluate("l2", protocol=str(protocol), out=str(tmp_path / "r"))


# ====================================================================== 3. several runs on one cache
def test_bounded_reads_take_the_files_size_not_the_cap(tmp_path):
    small = tmp_path / "index.json"
    small.write_text(json.dumps({"shards": []}) + " " * 2000)
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        from lit_attacks.safe_files import read_regular
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))
        print(len(read_regular({str(small)!r}, "index", 4 << 30)))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == str(small.stat().st_size), r.stderr[-1000:]


@pytest.mark.parametrize("name", ["machine_rates.json", "sha256.json"])
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "garbage", "folder"])
def test_a_cache_file_that_is_not_a_regular_json_file_is_ignored_and_replaced(tmp_path, monkeypatch, name, kind):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(cache))
    p = cache / name
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev_zero":
        p.symlink_to("/dev/zero")
    elif kind == "garbage":
        p.write_text('{"a": NaN, "a": 1')
    else:
        p.mkdir()
    t0 = time.time()
    assert bench.main(RUN + ["--out", str(tmp_path / "r")]) == 0
    assert time.time() - t0 < 300
    if kind != "folder":
        assert p.is_file() and not p.is_symlink() and isinstance(json.loads(p.read_text()), dict)


def test_a_failed_or_killed_cache_build_leaves_no_entry_and_the_next_build_cleans_up(tmp_path):
    from lit_attacks.datamodules.cache import publish

    entry = tmp_path / "c" / "entry"
    entry.parent.mkdir()
    (entry.parent / ".entry.tmp-999-dead").mkdir()  # a builder that was killed

    def failing(tmp):
        (tmp / "half.png").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        publish(entry, failing, "test", complete=lambda p: (p / "index.json").is_file())
    assert listing(entry.parent) == [".entry.lock"]
    built = publish(entry, lambda tmp: (tmp / "index.json").write_text("{}"), "test",
                    complete=lambda p: (p / "index.json").is_file())
    assert built == entry and listing(entry.parent) == [".entry.lock", "entry", "entry/index.json"]


def _concurrent(argvs, env, cwd):
    procs = [subprocess.Popen([sys.executable, str(ROOT / "bench.py")] + a, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in argvs]
    return [(p.wait(timeout=900), p.stdout.read(), p.stderr.read()) for p in procs]


def _rows(folder):
    """Every CSV of a run with the timing column left out (the only one that differs between identical runs)."""
    out = {}
    for f in sorted(folder.rglob("*.csv")):
        lines = f.read_text().splitlines()
        head = lines[0].split(",")
        keep = [i for i, c in enumerate(head) if c != "samples_per_s"]
        out[str(f.relative_to(folder))] = [[row.split(",")[i] for i in keep] for row in lines]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("data", ["builtin", "tree"])
def test_three_runs_started_together_on_a_fresh_cache_all_succeed_with_one_copy_and_equal_results(tmp_path, data):
    cache = tmp_path / "cache"
    env = dict(os.environ, LIT_ATTACKS_CACHE=str(cache), WANDB_MODE="disabled")
    extra = []
    if data == "tree":
        rng = np.random.default_rng(0)
        for cat in ("cnn", "traditional"):
            for i in range(6):
                img = lambda: rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)  # noqa: E731
                add_sample(tmp_path / "tree", "val", cat, f"{i:06d}", img(), img(), img(), float(i % 2))
        extra = ["--data", str(tmp_path / "tree"), "--image-size", "16"]
    argvs = [["--metrics", "l2,ssim", "--attacks", "pgd", "--param", "pgd.steps=3", "--sweep-eps", "0.01",
              "--builtin-n", "6", "--out", str(tmp_path / f"r{i}"), "--quiet", "--wandb", "disabled"] + extra
             for i in range(3)]
    results = _concurrent(argvs, env, tmp_path)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    rows = [_rows(tmp_path / f"r{i}") for i in range(3)]
    assert rows[0] and rows[0] == rows[1] == rows[2]
    entries = [p for p in cache.rglob("index.json")]
    assert len(entries) == 1, entries  # one copy of the shards
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]  # no half-built entry left


# ====================================================================== 4. stale results reused
@pytest.mark.slow
def test_a_py_metric_whose_helper_module_changed_is_recomputed_and_the_log_says_why(tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "mypkg_r3"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from mypkg_r3.core import build\n")
    (pkg / "helpers.py").write_text("def power():\n    return 1\n")
    (pkg / "core.py").write_text(textwrap.dedent("""
        from mypkg_r3 import helpers

        def build():
            def distance(ref, x):
                return (ref - x).abs().pow(helpers.power()).mean((1, 2, 3))
            return distance
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, str(ROOT / "bench.py"), "--metrics", "py:mypkg_r3:build", "--attacks", "", "--sweep-eps",
            "", "--builtin-n", "2", "--out", str(tmp_path / "r"), "--wandb", "disabled"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600).stdout
    assert "done earlier, loaded (same data, code, parameters and metric)" in again
    table = (tmp_path / "r" / "table1.csv").read_text()
    (pkg / "helpers.py").write_text("def power():\n    return 2\n")  # only the helper changes
    edited = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600).stdout
    assert "recomputed: the metric (what it computes" in edited and "loaded" not in edited
    assert (tmp_path / "r" / "table1.csv").read_text() != table


def test_replaced_weights_of_a_registered_metric_recompute_its_cells(tmp_path, capsys):
    from conftest import weights_file

    src = weights_file("squeezenet1_1_features_tv_IMAGENET1K_V1.pth")
    wd = tmp_path / "weights"
    wd.mkdir()
    (wd / src.name).write_bytes(src.read_bytes())
    argv = ["--metrics", "lpips_squeeze", "--attacks", "", "--sweep-eps", "", "--weights-dir", str(wd), "--builtin-n",
            "2", "--out", str(tmp_path / "r"), "--wandb", "disabled"]
    assert bench.main(argv) == 0
    scores = (tmp_path / "r" / "scores" / "lpips_squeeze.csv").read_text()
    capsys.readouterr()
    assert bench.main(argv) == 0 and "done earlier, loaded" in capsys.readouterr().out
    state = torch.load(wd / src.name, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] * 1.5  # retrained weights under the same file name
    torch.save(state, wd / src.name)
    assert bench.main(argv) == 0
    assert "recomputed: the metric" in capsys.readouterr().out
    assert (tmp_path / "r" / "scores" / "lpips_squeeze.csv").read_text() != scores  # the new weights' distances


class Lp(torch.nn.Module):
    """Mean |ref - x|^p: constructor arguments change what it computes, its source and state do not."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, ref, x):
        return (ref - x).abs().pow(self.p).mean((1, 2, 3))


def test_objects_of_one_name_and_source_with_other_arguments_or_closures_are_recomputed(tmp_path, capsys):
    from lit_attacks.metrics.user import register_object

    out = str(tmp_path / "r")
    tables = []
    for obj in (Lp(1), Lp(8), (lambda k: lambda ref, x: (ref - x).abs().mean((1, 2, 3)) * k)(2.0),
                (lambda k: lambda ref, x: (ref - x).abs().mean((1, 2, 3)) * k)(3.0)):
        name = register_object(obj, "lp")
        assert bench.main(["--metrics", name, "--attacks", "", "--sweep-eps", "", "--builtin-n", "2", "--out", out,
                           "--wandb", "disabled"]) == 0
        log = capsys.readouterr().out
        assert "loaded" not in log, log
        tables.append((tmp_path / "r" / "scores" / "user_lp.csv").read_text() if
                      (tmp_path / "r" / "scores" / "user_lp.csv").exists() else
                      sorted((tmp_path / "r" / "scores").glob("*.csv"))[0].read_text())
    assert len(set(tables)) == 4  # each object's own scores, never the previous one's


# ====================================================================== 5. a user metric that misbehaves on the data
USER_METRICS = '''
import sys
import numpy as np
import torch


def base(ref, x):
    return (ref - x).abs().mean((1, 2, 3))


def nan_later(ref, x):
    d = base(ref, x)
    return torch.where(d > 0.3, d * float("nan"), d)


def inf_later(ref, x):
    d = base(ref, x)
    return torch.where(d > 0.3, d + float("inf"), d)


def shape_later(ref, x):
    d = base(ref, x)
    return d if ref.shape[0] == 2 else d[:1]


def complex_later(ref, x):
    d = base(ref, x)
    return d if ref.shape[0] == 2 else d.to(torch.complex64)


def bool_later(ref, x):
    d = base(ref, x)
    return d if ref.shape[0] == 2 else d > 0.1


def string_later(ref, x):
    return base(ref, x) if ref.shape[0] == 2 else "far"


def raises_later(ref, x):
    if ref.shape[0] > 2:
        raise KeyError("no such feature")
    return base(ref, x)


def exits_later(ref, x):
    if ref.shape[0] > 2:
        sys.exit(3)
    return base(ref, x)


def allocates_later(ref, x):
    if ref.shape[0] > 2:
        torch.empty(10 ** 14)
    return base(ref, x)


def in_numpy(ref, x):
    return np.abs(ref.detach().numpy() - x.detach().numpy()).mean((1, 2, 3))


def detached(ref, x):
    return base(ref, x).detach()


def edits_ref(ref, x):
    d = base(ref, x)
    ref.mul_(0)
    x.add_(1)
    return d
'''


@pytest.fixture
def user_metrics(tmp_path, monkeypatch):
    (tmp_path / "r3_user_metrics.py").write_text(USER_METRICS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("fn,said", [
    ("nan_later", r"sample val/\w+/\d+: returned non-finite values \(nan"),
    ("inf_later", r"sample val/\w+/\d+: returned non-finite values \(inf"),
    ("shape_later", r"returned shape \(1,\), expected \(\d+,\)"),
    ("complex_later", "returned a torch.complex64 tensor, expected real distances"),
    ("bool_later", "returned a torch.bool tensor, expected real distances"),
    ("string_later", "returned a str, expected a Tensor"),
    ("raises_later", "raised KeyError: 'no such feature'"),
    ("exits_later", "raised SystemExit: 3"),
    ("allocates_later", "raised RuntimeError"),
])
def test_a_user_metric_that_misbehaves_after_its_probe_is_one_line_naming_it_and_the_samples(user_metrics, tmp_path,
                                                                                            capsys, fn, said):
    err = one_line_error(capsys, ["--metrics", f"py:r3_user_metrics:{fn}", "--attacks", "pgd", "--param",
                                  "pgd.steps=2", "--sweep-eps", "", "--out", str(tmp_path / "r")] + QUIET)
    assert f"metric py:r3_user_metrics:{fn}" in err and re.search(said, err), err
    assert "sample val/" in err or "batch of samples val/" in err
    assert "interrupted" not in err


def test_a_metric_without_gradients_refuses_gradient_attacks_and_runs_black_box_ones(user_metrics, tmp_path, capsys):
    for fn in ("in_numpy", "detached"):
        err = one_line_error(capsys, ["--metrics", f"py:r3_user_metrics:{fn}", "--attacks", "pgd", "--sweep-eps", "",
                                      "--out", str(tmp_path / "r")] + QUIET)
        assert "gives no gradient" in err and "pgd needs one" in err and "square" in err
        assert bench.main(["--metrics", f"py:r3_user_metrics:{fn}", "--attacks", "square", "--param",
                           "square.queries=5", "--sweep-eps", "", "--out", str(tmp_path / fn)] + QUIET) == 0


def test_in_place_edits_by_a_user_metric_change_nothing_outside_it(user_metrics, tmp_path):
    for fn in ("base", "edits_ref"):
        assert bench.main(["--metrics", f"py:r3_user_metrics:{fn}", "--attacks", "pgd", "--param", "pgd.steps=3",
                           "--sweep-eps", "", "--out", str(tmp_path / fn)] + QUIET) == 0
    def content(fn):  # every CSV's rows, files and cells named after the metric made alike
        name = f"py:r3_user_metrics:{fn}"
        return sorted([[c.replace(name, "M") for c in row] for rows in _rows(tmp_path / fn).values() for row in rows])

    assert content("edits_ref") == content("base")  # same scores, same attack, same flips


def test_a_metric_that_cannot_be_copied_or_names_the_running_program_is_one_line(tmp_path, capsys):
    import threading

    from lit_attacks.metrics.user import UserMetricError, register_object

    class Locked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

        def forward(self, ref, x):
            return (ref - x).abs().mean((1, 2, 3))

    with pytest.raises(UserMetricError, match=r"metric user:locked: the module cannot be copied \(TypeError"):
        register_object(Locked(), "locked")
    err = one_line_error(capsys, ["--metrics", "py:__main__:main", "--out", str(tmp_path / "r")] + QUIET)
    assert "__main__ is the running program" in err


def test_a_users_distance_subclass_that_raises_is_one_line(tmp_path, capsys):
    from lit_attacks.metrics import Distance
    from lit_attacks.metrics.user import register_object

    class Fussy(Distance):
        def _distance(self, ref, x):
            if ref.shape[0] > 2:
                raise ValueError("batch too large for me")
            return (ref - x).abs().mean((1, 2, 3))

    name = register_object(Fussy(), "fussy")
    err = one_line_error(capsys, ["--metrics", name, "--attacks", "", "--sweep-eps", "", "--out",
                                  str(tmp_path / "r")] + QUIET)
    assert "metric user:fussy, the batch of samples val/" in err and "raised ValueError: batch too large" in err


# ====================================================================== 6. leaderboard entries are untrusted input
def _site_error(capsys, tmp_path, folder):
    return leaderboard_error(capsys, ["build", str(folder), "--out", str(tmp_path / "site")])


@pytest.mark.parametrize("change,said", [
    (lambda t: t.replace('"value": 1.0', '"value": NaN', 1) if '"value": 1.0' in t else
     t.replace('"value": 0', '"value": NaN', 1), "NaN is not a JSON number"),
    (lambda t: t.replace('"seconds": ', '"seconds": Infinity, "x": ', 1), "Infinity is not a JSON number"),
    (lambda t: t.replace('{', '{"date": "2020-01-01T00:00:00+00:00", ', 1), "appears twice"),
    (lambda t: "[" * 200000 + "]" * 200000, "nested 200000 levels deep"),
])
def test_entries_with_non_standard_json_are_refused_in_one_line(tmp_path, capsys, entry_file, change, said):
    folder = tmp_path / "entries"
    folder.mkdir()
    (folder / "e.json").write_text(change(entry_file.read_text()))
    err = _site_error(capsys, tmp_path, folder) if "nested" not in said else None
    if err is None:
        with pytest.raises(EntryError, match=said):
            read_entry(folder / "e.json")
        return
    assert said in err and "e.json" in err


def _edited(entry_file, edit):
    e = json.loads(entry_file.read_text())
    edit(e)
    return e


@pytest.mark.parametrize("edit,said", [
    (lambda e: e["results"]["clean"].update(k=e["results"]["clean"]["n"] + 1), "exceeds n"),
    (lambda e: e["results"]["clean"].update(n=10 ** 400), "out of range"),
    (lambda e: e["results"]["clean"].update(value=0.123456), "is not k / n"),
    (lambda e: e["results"]["clean"].update(ci95=[0.0, 0.01]) if e["results"]["clean"]["value"] > 0.01 else
     e["results"]["clean"].update(ci95=[0.5, 0.6]), "does not contain the value"),
    (lambda e: [r.update(radius=0) for r in e["results"]["robust"]], "less than or equal to the minimum of 0"),
    (lambda e: e.update(date="yesterday"), "date: 'yesterday' is not a"),  # the schema's format, else ours
    (lambda e: e["metric"].update(name="x" * 50000), "metric/name: a string of 50000 characters"),
])
def test_entries_whose_numbers_disagree_or_break_bounds_are_refused_naming_the_field(tmp_path, capsys, entry_file,
                                                                                      edit, said):
    folder = tmp_path / "entries"
    write_entry(folder, _edited(entry_file, edit))
    err = _site_error(capsys, tmp_path, folder)
    assert said in err, err
    assert not (tmp_path / "site").exists() or listing(tmp_path / "site") == []


def test_a_huge_entry_is_refused_before_it_is_read(tmp_path, capsys, entry_file):
    folder = tmp_path / "entries"
    folder.mkdir()
    with open(folder / "e.json", "wb") as f:
        f.write(b'{"schema_version": 1, ')
        f.truncate(400 << 20)  # 400 MB, sparse: costs no disk
    t0 = time.time()
    err = _site_error(capsys, tmp_path, folder)
    assert "above the 4194304 bytes" in err and time.time() - t0 < 30


def test_raw_html_and_markdown_in_an_entry_are_inert_in_every_output(tmp_path, entry_file):
    evil = "<script>alert(1)</script> | [x](javascript:alert(1)) ![i](http://x/i.png) `code`"
    folder = tmp_path / "entries"
    write_entry(folder, _edited(entry_file, lambda e: (e["metric"].update(label=evil, description=evil),
                                                      e["protocol"].update(description=evil))))
    build([folder], tmp_path / "site")
    text = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "<script" not in text and "[x](javascript" not in text and "![i](" not in text  # only escaped forms
    row = next(line for line in text.splitlines() if "alert(1)&lt;" in line)
    assert row.count(" | ") == len([c for c in row.split(" | ")]) - 1 and "\\|" in row  # the pipe stays in its cell
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    svg = next((tmp_path / "site" / "plots").glob("*.svg")).read_text()
    assert "<script" not in svg
    assert md("a|b\n<i>") == "a\\|b &lt;i&gt;"


def test_the_newest_entry_wins_by_time_across_time_zones(tmp_path, entry_file):
    folder = tmp_path / "entries"
    early = _edited(entry_file, lambda e: (e.update(date="2026-12-07T10:00:00+09:00"),
                                          e["metric"].update(label="early")))  # 01:00 UTC
    late = _edited(entry_file, lambda e: (e.update(date="2026-12-07T02:00:00+00:00"), e["metric"].update(label="late")))
    write_entry(folder, early, "a.json")
    write_entry(folder, late, "b.json")
    (group,) = build([folder], tmp_path / "site")["groups"]
    assert [r["metric"] for r in group["rows"]] == ["late"]  # as strings "2026-12-07T10..." > "2026-12-07T02..."


def test_a_site_given_as_input_is_refused_and_one_inside_an_input_skipped(run_dir, tmp_path, capsys):
    site = run_dir.parent / "site_inside"
    assert leaderboard_main(["build", str(run_dir), "--out", str(site)]) == 0
    err = leaderboard_error(capsys, ["build", str(site), "--out", str(tmp_path / "other")])
    assert "is a leaderboard site" in err
    assert leaderboard_main(["build", str(run_dir.parent), "--out", str(site)]) == 0  # the site inside is skipped
    assert "skipped" in capsys.readouterr().err
    board = json.loads((site / "leaderboard.json").read_text())
    assert sum(len(g["rows"]) for g in board["groups"]) == 1


# ====================================================================== 7. half-finished data and results
def test_a_run_whose_end_fails_leaves_no_entry_and_an_unfinished_run_is_never_published(tmp_path, capsys,
                                                                                        monkeypatch):
    protocol = tmp_path / "p.yaml"
    protocol.write_text(PROTOCOL)
    out = tmp_path / "run"
    import lit_attacks.bench.outputs as outputs

    with full_disk_at(monkeypatch, outputs, "README.md"):
        one_line_error(capsys, ["--config", str(protocol), "--out", str(out), "--quiet", "--wandb", "disabled"], code=1)
    assert not list((out / "leaderboard").rglob("*.json")) if (out / "leaderboard").exists() else True
    assert json.loads((out / BENCH_MANIFEST).read_text())["finished"] is False
    assert bench.main(["--config", str(protocol), "--out", str(out), "--quiet", "--wandb", "disabled"]) == 0
    assert leaderboard_main(["build", str(out), "--out", str(tmp_path / "site")]) == 0
    # a run killed after its entries were written (SIGKILL: no clean-up ran) is not published
    m = json.loads((out / BENCH_MANIFEST).read_text())
    m["finished"] = False
    (out / BENCH_MANIFEST).write_text(json.dumps(m))
    err = leaderboard_error(capsys, ["build", str(out), "--out", str(tmp_path / "site2")])
    assert "no leaderboard entries" in err


def _nights_zip(tmp_path, n=2, cut=None):
    from lit_attacks.datamodules.nights import write_fixture

    src = tmp_path / "src"
    write_fixture(src, n=n)
    archive = tmp_path / "nights.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted((src / "nights").rglob("*")):
            if f.is_file():
                z.write(f, str(f.relative_to(src)))
    return archive


def test_an_interrupted_nights_unpack_is_never_taken_as_the_data_set(tmp_path, monkeypatch):
    from lit_attacks.datamodules import download as dl
    from lit_attacks.datamodules.nights import download

    archive = _nights_zip(tmp_path)
    out = tmp_path / "out"
    real = zipfile.ZipFile.extractall

    def interrupted(self, path=None, members=None, pwd=None):
        self.extract(self.namelist()[0], path)
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(out, mirrors=[archive.as_uri()])
    assert not (out / "nights").exists()  # only the private folder was touched, and it is gone
    monkeypatch.setattr(zipfile.ZipFile, "extractall", real)
    root = download(out, mirrors=[archive.as_uri()])
    assert dl.unpacked(root) and root == out / "nights"
    # a nights folder with data.csv and one image, left by an older version: refused, never taken as the data set
    old = tmp_path / "old"
    (old / "nights" / "ref" / "000").mkdir(parents=True)
    (old / "nights" / "data.csv").write_text((root / "data.csv").read_text())
    (old / "nights" / "ref" / "000" / "000.png").write_bytes((root / "ref" / "000" / "000.png").read_bytes())
    with pytest.raises(dl.DownloadError, match="was not unpacked whole"):
        download(old, mirrors=[archive.as_uri()])


def test_a_bapps_split_left_by_a_stopped_download_is_refused_and_an_archive_unpacks_whole(tmp_path):
    import tarfile

    from lit_attacks.datamodules import download as dl

    out = tmp_path / "bapps"
    add_sample(out, "val", "cnn", "000000", flat(0), flat(1), flat(2), 1.0)
    with pytest.raises(dl.DownloadError, match="not unpacked whole"):
        dl.download(out, ["val"], mirrors=["file:///nonexistent/"])
    src = tmp_path / "src"
    add_sample(src / "x", "val", "cnn", "000000", flat(0), flat(1), flat(2), 1.0)
    add_sample(src / "x", "val", "traditional", "000000", flat(0), flat(1), flat(2), 0.0)
    archive = tmp_path / "twoafc_val.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "x" / "2afc" / "val", "val")
    folder = dl.unpack(archive, tmp_path / "fresh" / "2afc", "val")
    assert dl.unpacked(folder) and len([p for p in folder.rglob("*.png")]) == 6


@pytest.mark.parametrize("cut", [-3, -12, -30])
def test_a_data_csv_cut_inside_its_last_row_is_an_error_naming_the_line(tmp_path, cut):
    from lit_attacks.datamodules.nights import scan_nights, write_fixture
    from lit_attacks.datamodules.tree import BappsDataError

    root = write_fixture(tmp_path, n=4)
    text = (root / "data.csv").read_text()
    (root / "data.csv").write_text(text[:len(text) + cut])
    n = text.count("\n")
    with pytest.raises(BappsDataError, match=rf"data.csv line {n}: "):
        for split in ("train", "val", "test"):
            scan_nights(root, split)


# ====================================================================== 8. NIGHTS data.csv as users save it
def _csv(root, text, encoding="utf-8"):
    (root / "data.csv").write_bytes(text.encode(encoding) if isinstance(text, str) else text)


def test_nights_data_csv_as_users_save_it(tmp_path):
    from lit_attacks.datamodules.nights import judge_of, nights_root, scan_nights, write_fixture
    from lit_attacks.datamodules.tree import BappsDataError

    root = write_fixture(tmp_path, n=4)
    text = (root / "data.csv").read_text()
    reference = scan_nights(root, "test")
    _csv(root, "\ufeff" + text)  # Excel's byte-order mark
    assert scan_nights(root, "test") == reference
    head, *rows = text.strip().split("\n")
    order = list(reversed(range(len(head.split(",")))))
    shuffled = "\n".join(",".join(r.split(",")[i] for i in order) for r in [head] + rows) + "\n"
    _csv(root, shuffled)
    assert scan_nights(root, "test") == reference  # columns by name, in any order
    short = shuffled.strip().split("\n")
    short[3] = ",".join(short[3].split(",")[:-2])
    _csv(root, "\n".join(short) + "\n")
    with pytest.raises(BappsDataError, match=r"data.csv line 4: 8 fields, the header has 10"):
        scan_nights(root, "test")
    _csv(root, "x" * 140000 + "," + text)
    assert nights_root(tmp_path) is None or True
    with pytest.raises(BappsDataError, match="data.csv"):
        scan_nights(root, "test")
    _csv(root, text.replace("an image of a photo", "une photo d'\xe9t\xe9", 1), "latin-1")
    assert nights_root(tmp_path) == root  # still recognised: the header is plain ASCII
    with pytest.raises(BappsDataError, match=r"data.csv line 2: not UTF-8 text \(byte 0xe9"):
        scan_nights(root, "test")
    assert judge_of(1e308, 1e308) == 0.5 and judge_of(0.0, 8.0) == 1.0 and judge_of(3.0, 1.0) == 0.25
    big = text.replace(",0,1,8,", ",1e308,1e308,8,").replace(",1,0,8,", ",1e308,1e308,8,")
    _csv(root, big)
    assert {s.judge for s in scan_nights(root, "test")} == {0.5}


# ====================================================================== 9. bounds
def test_sizes_beyond_what_the_machine_holds_are_refused_before_work(tmp_path, capsys, monkeypatch):
    t0 = time.time()
    for value in ("1.0e-12", "1e-12"):
        err = one_line_error(capsys, ["--metrics", "l2", "--attacks", "fgsm", "--param", f"fgsm.step={value}",
                                      "--sweep-eps", "", "--out", str(tmp_path / "r")] + QUIET)
        assert "the epsilon grid of step=1e-12" in err and "above the 1,000,000" in err and "step >= 5e-08" in err
    assert time.time() - t0 < 60
    assert bench.main(["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(tmp_path / "big"),
                       "--batch-size", "100000000000"] + QUIET[:-2]) == 0  # the batch holds the 10 samples there are
    import lit_attacks.limits as limits

    monkeypatch.setattr(limits, "memory_available", lambda device=None: 50 << 20)
    err = one_line_error(capsys, ["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(tmp_path / "r2"),
                                  "--batch-size", "1000", "--builtin-n", "40", "--quiet", "--wandb", "disabled"])
    assert "--batch-size 1000" in err and "GB available" in err


def test_an_archive_declaring_more_than_the_free_space_is_refused_before_unpacking(tmp_path, monkeypatch):
    import shutil

    from lit_attacks.datamodules import download as dl

    archive = tmp_path / "nights.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("nights/data.csv", b"\0" * (64 << 20))  # 64 MB of zeros: a 64 kB archive
    assert archive.stat().st_size < 1 << 20
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - (8 << 20), 8 << 20))
    with pytest.raises(dl.DownloadError, match=r"take 0.07 GB unpacked and .* has 0.01 GB free"):
        dl.unpack(archive, tmp_path / "out", "nights")
    assert listing(tmp_path / "out") == []


def test_other_counts_have_named_limits(monkeypatch):
    from lit_attacks.attacks import create_attack
    from lit_attacks.attacks.streams import Streams
    from lit_attacks.certify import check_certify, vote
    from lit_attacks.limits import SizeError
    from lit_attacks.metrics import create_metric

    with pytest.raises(SizeError, match="onepixel: population"):
        create_attack("onepixel", "l2", population=10 ** 9)
    with pytest.raises(SizeError, match=r"certify: n0 \+ n"):
        check_certify(0.25, 100, 10 ** 12, 0.001, "both")
    x = torch.zeros(2, 3, 64, 64)
    with pytest.raises(SizeError, match=r"certify: 1 samples x chunk=10000000 noise draws at once needs at least"):
        vote(create_metric("l2"), x, x, x, "both", 0.25, 10 ** 7, Streams(torch.tensor([1, 2])), chunk=10 ** 7,
             max_images=1)


# ====================================================================== 10. training and DDP faults
KILLER = '''
import os, signal
import pytorch_lightning as pl


class KillAtEpoch(pl.Callback):
    """SIGKILL at the start of an epoch: the previous epochs finished, nothing of this one did."""

    def __init__(self, epoch: int = 2):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def _train_config(tmp_path, name, kill=False, **model):
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "train" / "quick.yaml").read_text())
    cfg["model"].update(pretrained_backbone=False, val_attack_samples=4, **model)
    cfg["data"].update(builtin_n=4, batch_size=4)
    cfg["trainer"].update(max_epochs=4, enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / name)
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / name / "checkpoints")
    if kill:
        cfg["trainer"]["callbacks"].append({"class_path": "r3_killer.KillAtEpoch", "init_args": {"epoch": 2}})
    path = tmp_path / f"{name}{'_kill' if kill else ''}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(tmp_path, config, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), WANDB_MODE="offline")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config), *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_killed_training_run_resumes_from_its_last_finished_epoch_to_the_same_weights(tmp_path):
    (tmp_path / "r3_killer.py").write_text(KILLER)
    whole = _train(tmp_path, _train_config(tmp_path, "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _train(tmp_path, _train_config(tmp_path, "killed", kill=True))
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # epochs 0 and 1 finished: quick.yaml's save_top_k: 0
    resumed = _train(tmp_path, _train_config(tmp_path, "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "(2 epochs done" in resumed.stderr
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["global_step"] == b["global_step"] == 20
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    other = _train(tmp_path, _train_config(tmp_path, "killed", lr=0.02))
    assert other.returncode == 2 and "train.py: error: " in other.stderr and "model.lr: 0.01 there, 0.02 now" in \
        other.stderr
    assert _train(tmp_path, _train_config(tmp_path, "killed", lr=0.02), "--fresh").returncode == 0


def test_a_training_folder_is_guarded(tmp_path, capsys):
    import train

    config = _train_config(tmp_path, "t")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        train.main(["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.logger", "false",
                    "--trainer.limit_val_batches", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: ") and "holds other files and no train.py run" in err
    assert (tmp_path / "t" / "notes.txt").read_text() == "mine"


@pytest.mark.ddp
def test_a_killed_ddp_rank_is_named_with_how_to_resume(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    p = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "--metrics", "l2", "--attacks", "pgd", "--param",
                          "pgd.steps=3000", "--sweep-eps", "", "--builtin-n", "20", "--batch-size", "4",
                          "--accelerator", "cpu", "--devices", "2", "--out", str(tmp_path / "r"), "--quiet"],
                         env=env, stderr=subprocess.PIPE, text=True)
    victim = None
    for _ in range(600):
        for pid in [int(x) for x in os.listdir("/proc") if x.isdigit()]:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
                with open(f"/proc/{pid}/status") as f:
                    ppid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            if ppid == p.pid and b"LOCAL_RANK=1" in environ:
                victim = pid
        if victim:
            break
        time.sleep(0.2)
    assert victim, "rank 1 never started"
    time.sleep(3)
    os.kill(victim, signal.SIGKILL)
    err = p.communicate(timeout=600)[1]
    assert p.returncode in (-signal.SIGKILL, 137), err[-2000:]
    assert f"bench.py: error: DDP process rank 1 (pid {victim}) was killed by signal 9 (SIGKILL)" in err
    assert f"Completed cells are kept in {tmp_path / 'r' / 'cells'}: run the same command again" in err


# ====================================================================== 11. tracebacks where one line is promised
@pytest.mark.parametrize("content,said", [
    ("[]", "not a bench manifest of format 1 (it holds a JSON list"),
    ('{"format": 1, "files": {"a": 1}}', "has no sha256"),
    ('{"format": 1, "files": {"a": "' + "0" * 64 + '"}, "files": {}}', "appears twice"),
    ("\xff", "not UTF-8"),
])
def test_a_damaged_bench_manifest_is_one_line(tmp_path, capsys, content, said):
    out = tmp_path / "r"
    out.mkdir()
    (out / BENCH_MANIFEST).write_bytes(content.encode("latin-1"))
    assert said in one_line_error(capsys, RUN + ["--out", str(out)])


@pytest.mark.parametrize("content,said", [
    ('{"files": [1]}', "it lists 1, which is not a path inside"),
    ('{"files": "x"}', "not a leaderboard manifest"),
    ("7", "not a leaderboard manifest"),
])
def test_a_damaged_site_manifest_is_one_line(run_dir, tmp_path, capsys, content, said):
    site = tmp_path / "site"
    site.mkdir()
    (site / SITE_MANIFEST).write_text(content)
    assert said in leaderboard_error(capsys, ["build", str(run_dir), "--out", str(site)])


def test_a_nights_zip_that_is_not_a_zip_is_one_line(tmp_path, capsys):
    from lit_attacks.datamodules.bapps import main as bapps_main

    (tmp_path / "nights.zip").write_text("<html>a login page</html>")
    assert bapps_main(["nights", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "neither a zip nor a tar archive" in err and "nights.zip" in err


def test_a_full_disk_under_the_leaderboard_builder_is_one_line_and_a_rebuild_cleans_up(run_dir, tmp_path, capsys,
                                                                                       monkeypatch):
    import lit_attacks.leaderboard.site as site_module

    site = tmp_path / "site"
    with full_disk_at(monkeypatch, site_module, "index.html"):
        assert leaderboard_main(["build", str(run_dir), "--out", str(site)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err
    listed = json.loads((site / SITE_MANIFEST).read_text())["files"]
    assert set(listed) == {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file() and p.name[0] != "."}
    assert leaderboard_main(["build", str(run_dir), "--out", str(site)]) == 0
    assert (site / "index.html").is_file()


def test_yaml_numbers_in_exponent_notation_are_numbers():
    from lit_attacks.configuration import load_yaml_text

    assert load_yaml_text("a: 1e-12\nb: 2E3\nc: 1.5e+2\nd: 1e\ne: '1e-3'") == {
        "a": 1e-12, "b": 2000.0, "c": 150.0, "d": "1e", "e": "1e-3"}
