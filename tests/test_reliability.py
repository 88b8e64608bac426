"""Reliability and security: a data folder cannot run commands, stale or mismatched results are never
reused, no sample is dropped or mangled in silence, and bad input is one line naming the problem."""
import io
import json
import os
import shlex
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import bench
from lit_attacks.attacks import create_attack
from lit_attacks.bench import runner
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.datamodules.shards import read_index, write_shards
from lit_attacks.datamodules.tree import BappsDataError, decode_png, scan_tree
from lit_attacks.metrics import create_metric
from lit_attacks.report import read_csv

from helpers import add_sample, flat, random_tree

QUIET = ["--quiet", "--wandb", "disabled", "--builtin-n", "3", "--batch-size", "8"]


def keys_of(dm):
    return [k for b in dm.predict_dataloader() for k in b["key"]]


def shard_folder(tmp_path, n=10, shard_size=100):
    random_tree(tmp_path / "tree", n=n)
    write_shards(scan_tree(tmp_path / "tree", "val"), tmp_path / "s", shard_size=shard_size, progress=False)
    return tmp_path / "s"


def rewrite_tar(path, keep=None, swap=None):
    """Rewrite a shard with the members ``keep`` selects; ``swap`` = (a, b) exchanges two members' bytes."""
    with tarfile.open(path) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    if keep is not None:
        members = [m for m in members if keep(m[0])]
    if swap is not None:
        data = dict(members)
        a, b = swap
        members = [(n, data[b] if n == a else data[a] if n == b else d) for n, d in members]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            t.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------ 1. security
def test_a_pipe_shard_name_in_the_index_is_refused_and_never_run(tmp_path, monkeypatch):
    folder = shard_folder(tmp_path)
    index = read_index(folder)
    (folder / index["shards"][0]["name"]).rename(folder / "a.tar")
    index["shards"][0]["name"] = "pipe:touch PWNED;cat a.tar"
    (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.chdir(folder)
    with pytest.raises(BappsDataError, match=r"shard name 'pipe:touch PWNED;cat a.tar' looks like a URL or a command"):
        keys_of(BappsDataModule(data=".", unanimous_only=False, cache_dir=str(tmp_path / "c")))
    assert not (folder / "PWNED").exists()


def test_a_tar_named_like_a_command_is_refused_and_never_run(tmp_path, monkeypatch):
    folder = shard_folder(tmp_path)
    name = read_index(folder)["shards"][0]["name"]
    (folder / "index.json").unlink()
    (folder / name).rename(folder / "pipe:touch PWNED;cat x.tar")
    monkeypatch.chdir(folder)
    with pytest.raises(BappsDataError, match="looks like a URL or a command"):
        keys_of(BappsDataModule(data=".", unanimous_only=False, cache_dir=str(tmp_path / "c")))
    assert not (folder / "PWNED").exists()


def test_shards_are_opened_as_local_files_only(tmp_path, monkeypatch):
    from lit_attacks.datamodules.streaming import read_local_shards

    monkeypatch.chdir(tmp_path)
    with pytest.raises(BappsDataError, match="cannot be read"):
        list(read_local_shards([{"url": "pipe:touch PWNED; cat /dev/null"}], {}, None))
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------------------------------ 2. integrity
def test_a_shard_cut_cleanly_after_a_sample_is_refused(tmp_path):
    folder = shard_folder(tmp_path)  # one shard, 20 samples
    shard = folder / read_index(folder)["shards"][0]["name"]
    rewrite_tar(shard, keep=lambda n: not n.startswith("val/traditional/000009."))  # a valid tar of 19 samples
    with pytest.raises(BappsDataError, match=f"corrupt or truncated shard .*{shard.name}"):
        keys_of(BappsDataModule(data=str(folder), unanimous_only=False, cache_dir=str(tmp_path / "c")))


def test_a_shard_whose_bytes_changed_is_refused(tmp_path):
    folder = shard_folder(tmp_path)
    shard = folder / read_index(folder)["shards"][0]["name"]
    rewrite_tar(shard, swap=("val/cnn/000003.p0.png", "val/cnn/000003.p1.png"))  # same size, p0 and p1 swapped
    with pytest.raises(BappsDataError, match=f"corrupt or changed shard .*{shard.name}: its sha256 differs"):
        keys_of(BappsDataModule(data=str(folder), unanimous_only=False, cache_dir=str(tmp_path / "c")))


def test_keys_and_counts_of_the_index_are_checked_while_streaming(tmp_path):
    folder = shard_folder(tmp_path)
    index = read_index(folder)
    for s in index["shards"]:  # an index that records keys but no hashes: the stream still checks what it lists
        s.pop("sha256"), s.pop("size")
    (folder / "index.json").write_text(json.dumps(index))
    shard = folder / index["shards"][0]["name"]
    rewrite_tar(shard, keep=lambda n: not n.startswith("val/traditional/000009."))
    with pytest.raises(BappsDataError, match=f"shard .*{shard.name}: holds 19 samples, index.json lists 20"):
        keys_of(BappsDataModule(data=str(folder), unanimous_only=False, cache_dir=str(tmp_path / "c")))


# ------------------------------------------------------------------------------------------ 3. resume
def _table1(out):
    return {r["category"]: r for r in read_csv(out / "table1.csv")}


def test_resume_sees_deleted_shards_of_a_folder_without_index(tmp_path):
    folder = shard_folder(tmp_path, shard_size=10)
    (folder / "index.json").unlink()
    argv = ["--data", str(folder), "--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(tmp_path / "r")]
    assert bench.main(argv + QUIET) == 0
    assert _table1(tmp_path / "r")["all"]["samples"] == "20"
    sorted(folder.glob("*.tar"))[0].unlink()
    assert bench.main(argv + QUIET) == 0
    assert _table1(tmp_path / "r")["all"]["samples"] == "10"


@pytest.mark.parametrize("symlinked", [False, True])
def test_resume_sees_tree_edits_that_keep_size_and_mtime(tmp_path, symlinked):
    judges = random_tree(tmp_path / "real", n=4)
    root = tmp_path / "real"
    if symlinked:  # a tree whose category folder is a symlink to another place
        (tmp_path / "tree" / "2afc" / "val").mkdir(parents=True)
        (tmp_path / "tree" / "2afc" / "val" / "cnn").symlink_to(root / "2afc" / "val" / "cnn")
        root = tmp_path / "tree"
    argv = ["--data", str(root), "--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(tmp_path / "r"),
            "--categories", "cnn"]
    assert bench.main(argv + QUIET) == 0
    judge = tmp_path / "real" / "2afc" / "val" / "cnn" / "judge" / "000000.npy"
    old = judges["val/cnn/000000"]
    st = judge.stat()
    new = 0.0 if old == 1.0 else 1.0
    np.save(judge, np.array([new], dtype=np.float32))  # same size
    os.utime(judge, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p / rsync -a / tar x leave it
    assert judge.stat().st_size == st.st_size and judge.stat().st_mtime_ns == st.st_mtime_ns
    assert bench.main(argv + QUIET) == 0
    row = next(r for r in read_csv(tmp_path / "r" / "scores" / "l2.csv") if r["key"] == "val/cnn/000000")
    assert float(row["judge"]) == new


def test_fresh_rebuilds_the_tree_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cache"))
    random_tree(tmp_path / "tree", n=4)
    argv = ["--data", str(tmp_path / "tree"), "--metrics", "l2", "--attacks", "", "--sweep-eps", "",
            "--out", str(tmp_path / "r")]
    assert bench.main(argv + QUIET) == 0
    first = (tmp_path / "r" / "scores" / "l2.csv").read_text()
    (converted,) = (tmp_path / "cache").glob("trees/*/val/*.tar")
    rewrite_tar(converted, swap=("val/cnn/000001.p0.png", "val/cnn/000001.p1.png"))  # the cached shards damaged
    assert bench.main(argv + QUIET + ["--fresh"]) == 0
    assert (tmp_path / "r" / "scores" / "l2.csv").read_text() == first


def test_cells_computed_by_other_code_are_recomputed(tmp_path, monkeypatch):
    argv = ["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--out", str(tmp_path / "r")] + QUIET
    assert bench.main(argv) == 0
    computed = []
    original = runner.Bench.run_cell

    def spy(self, cell):
        compute = cell.compute
        cell.compute = lambda ctx: computed.append(cell.id) or compute(ctx)
        return original(self, cell)

    monkeypatch.setattr(runner.Bench, "run_cell", spy)
    assert bench.main(argv) == 0 and computed == []
    monkeypatch.setattr(runner, "code_fingerprint", lambda: "changed")  # e.g. a metric was edited
    assert bench.main(argv) == 0 and computed == ["table1-l2", "pgd-l2"]


# ------------------------------------------------------------------------------------------ 4. results folders
def _listed(out):
    text = (out / "README.md").read_text().split("## Files")[1].split("\n## ")[0]
    return sorted(line.strip()[3:-1] for line in text.splitlines() if line.strip().startswith("- `"))


def _present(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not {"wandb", "cells"} &
                  set(p.relative_to(out).parts) and not p.name.startswith("."))


def test_a_rerun_with_fewer_attacks_leaves_only_its_own_files(tmp_path):
    out = tmp_path / "r"
    assert bench.main(["--metrics", "l2", "--attacks", "pgd,fgsm", "--sweep-eps", "0.01,0.03", "--out", str(out)]
                      + QUIET) == 0
    assert (out / "sweep.csv").is_file() and (out / "samples" / "fgsm-l2.csv").is_file()
    assert bench.main(["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--out", str(out)] + QUIET) == 0
    present = _present(out)
    assert not any(("fgsm" in p or "sweep" in p or "robustness" in p) for p in present), present
    assert _listed(out) == [p for p in present if p != "README.md"]
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == ["pgd-l2", "table1-l2"]


def test_a_killed_rerun_leaves_no_summary_of_the_earlier_run(tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert bench.main(["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--out", str(out)] + QUIET) == 0
    original = runner.Bench.run_cell

    def crash(self, cell):
        if cell.id == "fgsm-l2":
            raise KeyboardInterrupt
        return original(self, cell)

    monkeypatch.setattr(runner.Bench, "run_cell", crash)
    assert bench.main(["--metrics", "l2", "--attacks", "pgd,fgsm", "--sweep-eps", "", "--out", str(out)] + QUIET) == 130
    for name in ("summary.json", "README.md", "table1.csv", "table2.csv", "table2.md"):
        assert not (out / name).exists(), name


def test_the_recorded_command_reruns_verbatim(tmp_path, monkeypatch):
    out = tmp_path / "r"
    argv = ["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(out)] + QUIET
    monkeypatch.setattr("sys.argv", ["bench.py"] + argv)
    assert bench.main(argv) == 0
    readme = (out / "README.md").read_text()
    line = readme.split("```bash\n")[1].split("\n")[0]
    assert "--sweep-eps ''" in line and "--attacks ''" in line
    again = shlex.split(line)[2:]
    assert again == argv and bench.main(again) == 0


def test_a_folder_that_is_not_a_results_folder_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        bench.main(["--metrics", "l2", "--out", str(tmp_path)] + QUIET)
    err = capsys.readouterr().err.strip()
    assert "holds other files and no bench run" in err and "\n" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------ 5. dropped or mangled data
def test_an_image_without_a_judge_file_is_an_error(tmp_path):
    add_sample(tmp_path, "val", "cnn", "000001", flat(0), flat(1), flat(2), 1.0)
    add_sample(tmp_path, "val", "cnn", "000002", flat(0), flat(1), flat(2), 1.0)
    (tmp_path / "2afc/val/cnn/judge/000002.npy").unlink()
    with pytest.raises(BappsDataError, match=r"image .*ref/000002.png has no judge file"):
        scan_tree(tmp_path, "val")


def test_a_16_bit_png_decodes_to_its_8_bit_value():
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128 * 257, dtype=np.uint16)).save(buf, format="PNG")
    assert np.asarray(decode_png(buf.getvalue(), "x")).max() == 128


@pytest.mark.parametrize("size,msg", [((1, 1), "image is 1x1; images must be at least 8x8"),
                                      ((12000, 12000), "image is 12000x12000 .*above the 16.8 Mpx")])
def test_tiny_and_huge_images_are_refused_before_decoding(size, msg):
    buf = io.BytesIO()
    Image.new("1", size).save(buf, format="PNG")
    with pytest.raises(BappsDataError, match=msg):
        decode_png(buf.getvalue(), "x")


# ------------------------------------------------------------------------------------------ 6. non-finite gradients
def _flat_batch(values, judge=1.0):
    ref, p0, p1 = (torch.stack([torch.full((3, 64, 64), float(v[j])) for v in values]) for j in range(3))
    return {"key": [f"val/flat/{i:06d}" for i in range(len(values))], "category": ["flat"] * len(values),
            "judge": torch.full((len(values),), judge), "ref": ref, "p0": p0, "p1": p1}


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_an_attack_without_a_gradient_marks_the_sample_failed(attack):
    batch = _flat_batch([(0.0, 0.2, 0.6), (0.1, 0.3, -0.4)])  # flat images: FSIMc's gradient is NaN there
    m = create_metric("fsimc")
    x = batch["p0"].clone().requires_grad_(True)
    grad, = torch.autograd.grad(m(batch["ref"], x).sum(), x)
    assert not torch.isfinite(grad).all()  # the premise, checked
    out = create_attack(attack, "fsimc", max_eps=0.01, step=0.005) if attack == "fgsm" else \
        create_attack(attack, "fsimc", steps=3)
    res = out.predict_step(batch)
    assert res.status == ["non-finite gradient"] * 2 and not res.flipped.any()


def test_haarpsi_of_an_all_black_triplet_is_a_finite_zero():
    black = -torch.ones(2, 3, 64, 64)
    assert torch.equal(create_metric("haarpsi")(black, black), torch.zeros(2))


# ------------------------------------------------------------------------------------------ 7. ties
def test_a_tie_never_counts_as_agreeing_with_humans():
    batch = _flat_batch([(0.0, 0.5, 0.5), (0.0, 0.2, 0.6)], judge=0.0)  # sample 0: p0 == p1, judge 0
    res = create_attack("pgd", "l2", steps=2).predict_step(batch)
    assert res.tied.tolist() == [True, False] and res.agreed.tolist() == [False, True]


# ------------------------------------------------------------------------------------------ 8. one-line errors
@pytest.mark.parametrize("text,msg", [
    ("num_workers: -1", "num_workers must be an integer >= 0, got -1"),
    ('rmse_max: "abc"', "rmse_max must be a finite number, got 'abc'"),
    ('seed: "abc"', "seed must be an integer >= 0, got 'abc'"),
    ("split: 5", "split must be a string, got 5"),
    ("batch_size: true", "batch_size must be an integer >= 1, got True"),
    ('pretrained: "false"', "pretrained must be true or false, got 'false' (a quoted string in YAML)"),
])
def test_bad_config_values_are_one_line(tmp_path, capsys, text, msg):
    (tmp_path / "c.yaml").write_text(text + "\n")
    with pytest.raises(SystemExit):
        bench.main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


@pytest.mark.parametrize("argv,msg", [
    (["--sweep-eps", "inf"], "sweep.eps must be a non-empty list of positive numbers, each finite"),
    (["--attacks", "pgd", "--param", "pgd.eps=.nan"], "pgd: eps must be a finite number"),
    (["--attacks", "pgd", "--param", "pgd.steps=abc"], "pgd: steps must be an integer, got 'abc'"),
])
def test_non_finite_and_mistyped_parameters_are_one_line(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit):
        bench.main(argv + ["--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


@pytest.mark.parametrize("index,msg", [([], "not a shard index"), ({"count": 3}, "not a shard index"),
                                       ({"shards": ["a.tar"]}, "must be an object with a 'name'")])
def test_a_malformed_index_is_one_line(tmp_path, capsys, index, msg):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit):
        bench.main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")] + QUIET)
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_a_key_in_two_shards_names_the_key_and_both_shards(tmp_path):
    folder = shard_folder(tmp_path)
    name = read_index(folder)["shards"][0]["name"]
    (folder / "index.json").unlink()
    (folder / "b.tar").write_bytes((folder / name).read_bytes())
    (folder / name).rename(folder / "a.tar")
    with pytest.raises(BappsDataError, match=r"sample val/cnn/000000 is in two shards, .*a.tar and .*b.tar"):
        keys_of(BappsDataModule(data=str(folder), unanimous_only=False, cache_dir=str(tmp_path / "c")))


def test_an_empty_rlpips_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit):
        bench.main(["--metrics", f"rlpips:{tmp_path / 'empty.ckpt'}", "--out", str(tmp_path / "r")] + QUIET)
    err = capsys.readouterr().err.strip()
    assert "(0 bytes) is not a readable checkpoint" in err and "\n" not in err


@pytest.mark.parametrize("blocked", ["cells", "samples"])
def test_an_unwritable_output_folder_fails_before_any_work(tmp_path, capsys, blocked):
    out = tmp_path / "r"
    assert bench.main(["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--out", str(out)] + QUIET) == 0
    target = out / blocked
    for p in sorted(target.rglob("*"), reverse=True):
        p.unlink()
    target.rmdir()
    target.write_text("a file where a folder should be")  # as unwritable as it gets when running as root
    with pytest.raises(SystemExit):
        bench.main(["--metrics", "l2", "--attacks", "pgd", "--sweep-eps", "", "--out", str(out), "--fresh"] + QUIET)
    err = capsys.readouterr().err.strip()
    assert f"results folder {target} is not writable" in err and "\n" not in err


def test_an_unwritable_cache_folder_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "cachefile").write_text("not a folder")
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cachefile"))
    with pytest.raises(SystemExit):
        bench.main(["--metrics", "l2", "--out", str(tmp_path / "r"), "--builtin-n", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert "cache" in err and "\n" not in err and err.startswith("bench.py: error:")


@pytest.mark.parametrize("category,stem", [("my cat", "000001"), ("cnn", "0001.v2"), ("cnn", "échantillon")])
def test_names_that_cannot_be_shard_keys_are_refused_at_conversion(tmp_path, category, stem):
    add_sample(tmp_path, "val", category, stem, flat(0), flat(1), flat(2), 1.0)
    with pytest.raises(BappsDataError, match="may hold only letters, digits, '_' and '-'"):
        scan_tree(tmp_path, "val")


def test_a_second_bench_run_on_the_same_results_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    """Two runs writing one folder would interleave cells and delete each other's files at their ends."""
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f.fileno(), fcntl.LOCK_EX); "
        "f.write('4242\\n'); f.flush(); print('locked', flush=True); time.sleep(60)"), str(out / bench.LOCK_NAME)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as e:
            bench.main(["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--builtin-n", "1", "--quiet",
                        "--wandb", "disabled", "--out", str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"bench.py: error: results folder {out} is in use by another bench run (pid 4242); wait for it " \
                      "to finish or choose another --out"
        assert [p.name for p in out.iterdir()] == [bench.LOCK_NAME]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # once the first run is gone the folder is free again, and the lock file does not make it "foreign"
    assert bench.main(["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--builtin-n", "1", "--quiet",
                       "--wandb", "disabled", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file()
    assert not (out / bench.LOCK_NAME).exists()  # released when the run returns: the next run may start at once
    assert bench.main(["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--builtin-n", "1", "--quiet",
                       "--wandb", "disabled", "--out", str(out)]) == 0
