"""Reliability and security, round 2: no file outside --out (or the cache) is written or removed, no data file
reaches another decoder or an external program, reads of user data are bounded and always end, identifiers
that name files or rows are unique, and bad input is one line naming the item."""
import errno
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import lpips as lpips_pkg
import numpy as np
import pytest
import torch
from PIL import Image

import bench
from lit_attacks.bench.folder import MANIFEST
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.datamodules.shards import read_index, write_shards
from lit_attacks.datamodules.tree import BappsDataError, decode_png, parse_judge_text, read_judge, scan_tree
from lit_attacks.metrics.trained import CHECKPOINT_KIND, CheckpointError, load_trained_lpips
from lit_attacks.safe_files import file_stem
from lit_attacks.tables import number_id, slug

from helpers import add_sample, flat, one_line_error, random_tree

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--quiet", "--wandb", "disabled", "--builtin-n", "2", "--batch-size", "8"]
RUN = ["--metrics", "l2", "--attacks", "pgd", "--param", "pgd.steps=2", "--sweep-eps", ""] + QUIET


def tree_listing(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def shard_folder(tmp_path, n=4, shard_size=100):
    random_tree(tmp_path / "tree", n=n)
    write_shards(scan_tree(tmp_path / "tree", "val"), tmp_path / "s", shard_size=shard_size, progress=False)
    return tmp_path / "s"


def png_bytes(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def tar_header(name, size, kind=b"0"):
    """A ustar header (with a valid checksum) for a member of ``size`` bytes of type ``kind``."""
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


# ====================================================================== 1. files outside the results folder
@pytest.mark.parametrize("sub", ["plots", "samples", "scores", "cells", "adv", "transfer", "wandb"])
def test_a_symlinked_subfolder_is_refused_and_its_target_untouched(tmp_path, capsys, sub):
    out = tmp_path / "r"
    assert bench.main(RUN + ["--out", str(out)]) == 0
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "thesis.tex").write_text("precious")
    (elsewhere / "examples-pgd-l2.png").write_text("also precious")  # a name bench writes
    target = out / sub
    if target.exists():
        for p in sorted(target.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        target.rmdir()
    target.symlink_to(elsewhere)
    err = one_line_error(capsys, RUN + ["--out", str(out), "--fresh"])
    assert f"{target} is a symlink" in err
    assert tree_listing(elsewhere) == ["examples-pgd-l2.png", "thesis.tex"]
    assert (elsewhere / "thesis.tex").read_text() == "precious"


def test_a_symlinked_file_inside_a_results_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert bench.main(RUN + ["--out", str(out)]) == 0
    mine = tmp_path / "mine.csv"
    mine.write_text("precious")
    (out / "samples" / "extra.csv").symlink_to(mine)
    err = one_line_error(capsys, RUN + ["--out", str(out)])
    assert "extra.csv is a symlink" in err and mine.read_text() == "precious"


@pytest.mark.parametrize("planted", [["summary.json"], ["cells/pgd-l2.json", "summary.json"], ["plots/mine.png"]])
def test_a_folder_bench_did_not_make_is_refused_even_if_it_looks_like_a_run(tmp_path, capsys, planted):
    out = tmp_path / "looks_like_a_run"
    for rel in planted + ["scores/mine.csv", "README.md"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("mine")
    before = {p: p.read_text() for p in out.rglob("*") if p.is_file()}
    err = one_line_error(capsys, RUN + ["--out", str(out)])
    assert "holds other files and no bench run" in err and MANIFEST in err
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file()} == before


def test_a_rerun_removes_only_files_bench_wrote_and_that_are_unchanged(tmp_path):
    out = tmp_path / "r"
    assert bench.main(RUN + ["--attacks", "pgd,fgsm", "--out", str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert "samples/fgsm-l2.csv" in manifest and "cells/fgsm-l2.json" in manifest and "summary.json" in manifest
    for rel in manifest:  # the manifest lists what is there, with its hash
        assert (out / rel).is_file(), rel
    (out / "plots" / "my-notes.txt").write_text("mine")  # the user's own files inside bench's folders
    (out / "samples" / "my-analysis.csv").write_text("mine")
    (out / "plots" / "examples-fgsm-l2.png").write_bytes(b"edited by the user")  # changed since bench wrote it
    assert bench.main(RUN + ["--out", str(out)]) == 0  # fgsm no longer in the run
    assert (out / "plots" / "my-notes.txt").read_text() == "mine"
    assert (out / "samples" / "my-analysis.csv").read_text() == "mine"
    assert (out / "plots" / "examples-fgsm-l2.png").read_bytes() == b"edited by the user"
    assert not (out / "samples" / "fgsm-l2.csv").exists() and not (out / "cells" / "fgsm-l2.json").exists()
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert not any("fgsm" in rel for rel in manifest) and "samples/my-analysis.csv" not in manifest


@pytest.mark.parametrize("listed", ["../outside.txt", "/etc/hostname"])
def test_a_forged_manifest_cannot_point_outside(tmp_path, capsys, listed):
    out = tmp_path / "r"
    out.mkdir()
    (tmp_path / "outside.txt").write_text("precious")
    (out / MANIFEST).write_text(json.dumps({"format": 1, "files": {listed: "0" * 64}}))
    err = one_line_error(capsys, RUN + ["--out", str(out)])
    assert "not a bench manifest" in err and (tmp_path / "outside.txt").read_text() == "precious"


def test_a_run_writes_nothing_outside_its_folder_and_the_cache(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(home)
    before = tree_listing(tmp_path)
    assert bench.main(RUN + ["--attacks", "pgd,fgsm", "--out", str(tmp_path / "r")]) == 0
    assert bench.main(RUN + ["--out", str(tmp_path / "r")]) == 0
    after = [p for p in tree_listing(tmp_path) if not p.startswith(("r", "cache"))]
    assert after == [p for p in before if not p.startswith(("r", "cache"))]


# ====================================================================== 2. paths built from user input
@pytest.mark.parametrize("argv,arg", [(["--split", "../../escaped"], "split"), (["--split", "a/b"], "split"),
                                      (["--split", ".."], "split"), (["--split", ""], "split"),
                                      (["--name", "../escaped"], "name"), (["--name", "/tmp/x"], "name"),
                                      (["--categories", "../x"], "categories"), (["--split", ".hidden"], "split")])
def test_values_that_become_path_components_are_single_names(tmp_path, capsys, monkeypatch, argv, arg):
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cache" / "inner"))
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, ["--metrics", "l2"] + argv + QUIET)
    assert f"error: {arg}" in err and "single name" in err
    assert tree_listing(tmp_path) == []  # nothing made: not the cache, not results/, not ../escaped


@pytest.mark.parametrize("cmd", ["builtin", "shards"])
def test_the_data_command_line_refuses_a_split_that_is_a_path(tmp_path, capsys, cmd):
    from lit_attacks.datamodules.bapps import main as bapps_main

    extra = ["--root", str(tmp_path)] if cmd == "shards" else []
    assert bapps_main([cmd, "--out", str(tmp_path / "o"), "--split", "../../escaped"] + extra) == 2
    assert "--split '../../escaped': must be a single name" in capsys.readouterr().err
    assert tree_listing(tmp_path) == []


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from lit_attacks.report import atomic_write

    real_write_bytes = Path.write_bytes

    def full(self, data):  # a disk that fills after three bytes, whichever way the file is written
        real_write_bytes(self, (data.encode() if isinstance(data, str) else data)[:3])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "summary.json", "{}" * 100)
    assert tree_listing(tmp_path) == []


def test_the_datamodule_refuses_a_split_that_is_a_path(tmp_path):
    with pytest.raises(BappsDataError, match="split '../x': must be a single name"):
        BappsDataModule(data=None, split="../x", cache_dir=str(tmp_path / "c")).prepare_data()
    assert not (tmp_path / "x").exists()


def test_file_names_made_from_metric_specs_are_safe_and_distinct():
    specs = ["rlpips:a b/last.ckpt", "rlpips:a_b/last.ckpt", "rlpips:a/b/last.ckpt", "rlpips:a_b_last.ckpt",
             "rlpips:../../etc/passwd", "rlpips:" + "x" * 300, "l2", "lpips_alex"]
    stems = [slug(s) for s in specs]
    assert len(set(stems)) == len(specs)
    for s in stems:
        assert "/" not in s and not s.startswith(".") and len(s) <= 128 and s == file_stem(s)
    assert slug("lpips_alex") == "lpips_alex"  # registered names keep their file names


# ====================================================================== 3. decoders
def _ps():
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n"


def test_a_postscript_file_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gs").write_text(f"#!/bin/sh\ntouch {tmp_path / 'GHOSTSCRIPT_RAN'}\n")
    (fake / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BappsDataError, match="not a PNG file"):
        decode_png(_ps(), "ref.png")
    add_sample(tmp_path / "t", "val", "cnn", "000001", flat(0), flat(1), flat(2), 1.0)
    (tmp_path / "t/2afc/val/cnn/p0/000001.png").write_bytes(_ps())
    with pytest.raises(BappsDataError, match=r"p0/000001.png: unreadable image \(not a PNG file"):
        write_shards(scan_tree(tmp_path / "t", "val"), tmp_path / "s", progress=False)
    assert not (tmp_path / "GHOSTSCRIPT_RAN").exists()


@pytest.mark.parametrize("fmt,kw", [("JPEG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {}), ("TIFF", {}),
                                    ("TIFF", {"float": True}), ("ICO", {}), ("PPM", {})])
def test_other_formats_named_png_are_refused(fmt, kw):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    if kw.get("float"):
        img = Image.fromarray(np.full((16, 16), 1.7, np.float32))  # would be clipped to white
    with pytest.raises(BappsDataError, match="not a PNG file"):
        decode_png(png_bytes(img, fmt), "x.png")


def test_alpha_is_dropped_only_when_nothing_is_transparent():
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    opaque = np.dstack([rgb, np.full((16, 16), 255, np.uint8)])
    assert np.array_equal(np.asarray(decode_png(png_bytes(Image.fromarray(opaque, "RGBA")), "x")), rgb)
    seethrough = opaque.copy()
    seethrough[3, 4, 3] = 10
    with pytest.raises(BappsDataError, match="1 pixels are transparent"):
        decode_png(png_bytes(Image.fromarray(seethrough, "RGBA")), "x")
    la = Image.fromarray(np.dstack([rgb[..., 0], np.zeros((16, 16), np.uint8)]), "LA")
    with pytest.raises(BappsDataError, match="256 pixels are transparent"):
        decode_png(png_bytes(la), "x")
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    with pytest.raises(BappsDataError, match="transparent"):
        decode_png(png_bytes(pal, transparency=int(np.asarray(pal)[0, 0])), "x")


def test_exact_conversions_are_exact():
    rgb = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    assert np.array_equal(np.asarray(decode_png(png_bytes(Image.fromarray(grey, "L")), "x")),
                          np.repeat(grey[..., None], 3, 2))
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=200)
    assert np.array_equal(np.asarray(decode_png(png_bytes(pal), "x")), np.asarray(pal.convert("RGB")))


def test_exif_orientation_and_animation_are_refused():
    img = Image.fromarray(np.zeros((16, 24, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    with pytest.raises(BappsDataError, match="EXIF orientation 6"):
        decode_png(png_bytes(img, exif=exif), "x")
    exif[0x0112] = 1
    assert decode_png(png_bytes(img, exif=exif), "x").size == (24, 16)
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 255)]
    apng = png_bytes(frames[0], save_all=True, append_images=frames[1:])
    with pytest.raises(BappsDataError, match="animated PNG"):
        decode_png(apng, "x")


@pytest.mark.parametrize("arr", [np.array([1], np.int64), np.array([True]), np.array([0.5 + 0j]),
                                 np.array(["1.0"]), np.array([0.5, 0.5], np.float32), np.zeros((1, 1, 1), np.float32)])
def test_judge_files_hold_one_float(tmp_path, arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    with pytest.raises(BappsDataError, match="judge"):
        read_judge(buf.getvalue(), "j.npy")


def test_judge_files_of_every_float_width_are_read():
    for dtype in (np.float16, np.float32, np.float64):
        buf = io.BytesIO()
        np.save(buf, np.array([0.25], dtype))
        assert read_judge(buf.getvalue(), "j") == 0.25


@pytest.mark.parametrize("text", [b"nan", b"inf", b"1_0", b"-0.0", b"+1", b"0x1p-1", b"1.5", b"", b"0,5", b"\xff"])
def test_a_judge_in_a_shard_is_a_plain_decimal_in_range(text):
    with pytest.raises(BappsDataError, match="judge"):
        parse_judge_text(text, "k")


def test_plain_judges_in_a_shard_parse():
    assert [parse_judge_text(t, "k") for t in (b"1.0", b"0.0", b"0.5", b"1e-05", b".25", b" 1 ")] == \
        [1.0, 0.0, 0.5, 1e-05, 0.25, 1.0]


# ====================================================================== 4. resource limits
PEAK = """
import sys
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.datamodules.tree import BappsDataError
try:
    dm = BappsDataModule(data=sys.argv[1], unanimous_only=False, cache_dir=sys.argv[2])
    dm.describe()
    print("KEYS", sum(len(b["key"]) for b in dm.predict_dataloader()))
except BappsDataError as e:
    print("ERROR", e)
# VmHWM: this process's peak resident memory (ru_maxrss would carry over the forking parent's across exec)
print("PEAK_KB", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def read_in_subprocess(folder, tmp_path):
    """(last error or key count, peak resident memory in bytes) of reading ``folder`` in a fresh process."""
    r = subprocess.run([sys.executable, "-c", PEAK, str(folder), str(tmp_path / "cache")], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert "PEAK_KB" in lines, r.stdout + r.stderr
    return lines.get("ERROR") or lines.get("KEYS"), int(lines["PEAK_KB"]) * 1024


def _bomb_gzip(path, declared=3 << 30, zeros=8 << 20):
    """A small gzip file whose tar header declares a member of ``declared`` bytes."""
    with gzip.open(path, "wb", compresslevel=1) as g:
        g.write(tar_header("val/cnn/000001.ref.png", declared))
        for _ in range(zeros >> 20):
            g.write(bytes(1 << 20))


def test_a_gzip_bomb_named_tar_is_refused_before_decompressing(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _bomb_gzip(d / "bomb-000000.tar")
    assert (d / "bomb-000000.tar").stat().st_size < 1 << 20
    msg, peak = read_in_subprocess(d, tmp_path)
    assert "is a gzip-compressed file, not a plain tar" in msg and "bomb-000000.tar" in msg
    assert peak < 1 << 30, peak


def test_a_declared_gzip_shard_is_bounded_by_its_member_sizes(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _bomb_gzip(d / "bomb-000000.tar.gz")
    (d / "index.json").write_text(json.dumps({"shards": [{"name": "bomb-000000.tar.gz", "compression": "gzip"}]}))
    msg, peak = read_in_subprocess(d, tmp_path)
    assert "member 'val/cnn/000001.ref.png' declares 3221225472 bytes" in msg and "refused before reading" in msg
    assert peak < 1 << 30, peak


def test_a_declared_gzip_shard_is_read(tmp_path):
    folder = shard_folder(tmp_path)
    entry = read_index(folder)["shards"][0]
    (folder / "x.tar.gz").write_bytes(gzip.compress((folder / entry["name"]).read_bytes()))
    (folder / entry["name"]).unlink()
    index = {"shards": [{"name": "x.tar.gz", "compression": "gzip", "keys": entry["keys"], "judges": entry["judges"]}]}
    (folder / "index.json").write_text(json.dumps(index))
    dm = BappsDataModule(data=str(folder), unanimous_only=False, cache_dir=str(tmp_path / "c"))
    dm.describe()
    assert [k for b in dm.predict_dataloader() for k in b["key"]] == entry["keys"]


def test_a_sparse_shard_declaring_gigabytes_is_refused_before_reading(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with open(d / "big-000000.tar", "wb") as f:  # a 3 GB file on disk that takes no space (sparse)
        f.write(tar_header("val/cnn/000001.ref.png", 3 << 30))
        f.truncate(512 + (3 << 30) + 1024)
    msg, peak = read_in_subprocess(d, tmp_path)
    assert "declares 3221225472 bytes" in msg and peak < 1 << 30


@pytest.mark.parametrize("kind,what", [(b"S", "a GNU sparse file"), (b"2", "a symlink"), (b"1", "a hard link"),
                                       (b"6", "a FIFO"), (b"3", "a character device"), (b"g", "a global pax header")])
def test_tar_members_that_are_not_regular_files_are_refused(tmp_path, kind, what):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x-000000.tar").write_bytes(tar_header("val/cnn/000001.ref.png", 0, kind) + bytes(1024))
    with pytest.raises(BappsDataError, match=f"is {what}; shards hold regular files only"):
        BappsDataModule(data=str(d), cache_dir=str(tmp_path / "c")).describe()


def test_a_pax_header_that_overrides_a_size_is_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    record = b"size=3221225472\n"
    record = f"{len(record) + 3} ".encode() + record
    pax = tar_header("././@PaxHeader", len(record), b"x") + record + bytes(512 - len(record))
    (d / "x-000000.tar").write_bytes(pax + tar_header("val/cnn/000001.ref.png", 0) + bytes(1024))
    with pytest.raises(BappsDataError, match="overrides a member's size"):
        BappsDataModule(data=str(d), cache_dir=str(tmp_path / "c")).describe()


def test_a_tar_header_with_a_wrong_checksum_is_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    h = bytearray(tar_header("val/cnn/000001.ref.png", 0))
    h[0] = ord("w")
    (d / "x-000000.tar").write_bytes(bytes(h) + bytes(1024))
    with pytest.raises(BappsDataError, match="checksum mismatch"):
        BappsDataModule(data=str(d), cache_dir=str(tmp_path / "c")).describe()


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.fixture
def must_end():
    """A test that would hang fails after 60 s instead."""
    import signal

    def hung(*_):
        raise TimeoutError("still waiting after 60 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_non_regular_files_where_files_are_expected_end_with_an_error(tmp_path, must_end):
    """Each of these used to wait forever (a FIFO opened for reading) or read forever (/dev/zero)."""
    d = tmp_path / "d"
    d.mkdir()
    _fifo(d / "x-000000.tar")
    with pytest.raises(BappsDataError, match="is a FIFO"):
        BappsDataModule(data=str(d), cache_dir=str(tmp_path / "c")).describe()
    os.unlink(d / "x-000000.tar")
    _fifo(d / "index.json")
    with pytest.raises(BappsDataError, match="index.json is a FIFO"):
        BappsDataModule(data=str(d), cache_dir=str(tmp_path / "c")).describe()
    tree = tmp_path / "t"
    add_sample(tree, "val", "cnn", "000001", flat(0), flat(1), flat(2), 1.0)
    judge = tree / "2afc/val/cnn/judge/000001.npy"
    judge.unlink()
    _fifo(judge)
    with pytest.raises(BappsDataError, match="is a FIFO"):
        write_shards(scan_tree(tree, "val"), tmp_path / "s1", progress=False)
    judge.unlink()
    np.save(judge, np.array([1.0], np.float32))
    ref = tree / "2afc/val/cnn/ref/000001.png"
    ref.unlink()
    ref.symlink_to("/dev/zero")
    with pytest.raises(BappsDataError, match="is a character device"):
        write_shards(scan_tree(tree, "val"), tmp_path / "s2", progress=False)
    assert tree_listing(tmp_path / "s1") == tree_listing(tmp_path / "s2") == []  # no partial shard left


def test_a_symlink_loop_in_a_tree_ends_with_an_error(tmp_path, capsys):
    tree = tmp_path / "t"
    add_sample(tree, "val", "cnn", "000001", flat(0), flat(1), flat(2), 1.0)
    (tree / "2afc/val/cnn/loop").symlink_to(tree / "2afc/val")
    err = one_line_error(capsys, ["--data", str(tree), "--out", str(tmp_path / "r")] + RUN)
    assert "a symlink loop" in err and "loop" in err


def test_a_built_in_set_beyond_the_cap_or_the_free_space_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cache"))
    err = one_line_error(capsys, ["--metrics", "l2", "--out", str(tmp_path / "r"), "--builtin-n", "1000000000",
                                  "--quiet", "--wandb", "disabled"])
    assert "builtin_n must be at most 100000" in err
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 10 ** 6, 10 ** 6))
    err = one_line_error(capsys, ["--metrics", "l2", "--out", str(tmp_path / "r"), "--builtin-n", "2000",
                                  "--quiet", "--wandb", "disabled"])
    assert "--builtin-n 2000: the built-in set would take about 0.45 GB" in err and "0.00 GB free" in err
    assert not list((tmp_path / "cache").rglob("*.png")) and not (tmp_path / "r").exists()


# ====================================================================== 5. silent drops and collisions
def test_a_judge_edited_in_the_index_is_caught_before_the_run(tmp_path):
    folder = shard_folder(tmp_path)
    index = json.loads((folder / "index.json").read_text())
    index["shards"][0]["judges"][2] = 1.0 if index["shards"][0]["judges"][2] != 1.0 else 0.0  # shard unchanged
    (folder / "index.json").write_text(json.dumps(index))
    key = index["shards"][0]["keys"][2]
    with pytest.raises(BappsDataError, match=f"key {key}: judge .* in the shard, .* in index.json"):
        BappsDataModule(data=str(folder), cache_dir=str(tmp_path / "c")).describe()


@pytest.mark.parametrize("edit", ["drop", "rename", "count"])
def test_keys_and_counts_edited_in_the_index_are_caught_before_the_run(tmp_path, edit):
    folder = shard_folder(tmp_path)
    index = json.loads((folder / "index.json").read_text())
    entry = index["shards"][0]
    if edit == "drop":
        entry["keys"], entry["judges"] = entry["keys"][:-1], entry["judges"][:-1]
    elif edit == "rename":
        entry["keys"][0] = "val/cnn/999999"
    else:
        entry["count"] = 3
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(BappsDataError, match="index.json"):
        BappsDataModule(data=str(folder), cache_dir=str(tmp_path / "c")).describe()


@pytest.mark.parametrize("judge", [True, "1.0", None, 1.5])
def test_index_judges_are_numbers_in_range(tmp_path, judge):
    folder = shard_folder(tmp_path)
    index = json.loads((folder / "index.json").read_text())
    index["shards"][0]["judges"][0] = judge
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(BappsDataError, match="judge"):
        read_index(folder)


def test_the_same_key_in_two_shards_is_named_before_any_worker_splits_them(tmp_path):
    folder = shard_folder(tmp_path, shard_size=4)  # 2 shards
    names = [s["name"] for s in read_index(folder)["shards"]]
    (folder / "index.json").unlink()
    (folder / names[1]).write_bytes((folder / names[0]).read_bytes())
    with pytest.raises(BappsDataError, match=rf"sample val/cnn/000000 is in two shards, .*{names[0]} and .*{names[1]}"):
        BappsDataModule(data=str(folder), cache_dir=str(tmp_path / "c"), num_workers=2).describe()


def test_a_category_selection_that_matches_nothing_is_an_error(tmp_path, capsys):
    err = one_line_error(capsys, RUN + ["--categories", "blurr", "--out", str(tmp_path / "r")])
    assert "--categories 'blurr': no sample of that category" in err and "blur" in err


def test_repeated_yaml_keys_are_an_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("metrics: [l2]\nbuiltin_n: 2\nmetrics: [ssim]\n")
    err = one_line_error(capsys, ["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--quiet"])
    assert "duplicate key 'metrics'" in err and "line 3" in err
    err = one_line_error(capsys, RUN + ["--param", "pgd.eps={a: 1, a: 2}", "--out", str(tmp_path / "r")])
    assert "duplicate key 'a'" in err


def test_repeated_keys_in_a_train_config_are_an_error(tmp_path, capsys):
    import train

    (tmp_path / "t.yaml").write_text("trainer:\n  max_epochs: 1\n  max_epochs: 2\n")
    with pytest.raises(SystemExit):
        train.main(["fit", "--config", str(tmp_path / "t.yaml")])
    assert "duplicate key 'max_epochs'" in capsys.readouterr().err


def test_numbers_that_name_cells_are_exact():
    assert number_id(0.03) == "0.03" and number_id(0.01, ".4f") == "0.0100"
    assert number_id(8 / 255) != number_id(0.0313725) and number_id(1e-5, ".4f") != number_id(2e-5, ".4f")
    assert float(number_id(8 / 255)) == 8 / 255


def test_sweep_points_closer_than_the_display_precision_get_their_own_cells(tmp_path):
    out = tmp_path / "r"
    assert bench.main(["--metrics", "l2", "--attacks", "", "--sweep-eps", "0.00001,0.00002", "--out", str(out)]
                      + QUIET) == 0
    csvs = sorted(p.name for p in (out / "samples" / "sweep").glob("*.csv"))
    assert len(csvs) == 2 and len(set(csvs)) == 2
    sweep = (out / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 3  # header + one row per point


def write_rlpips(path, corrupt=None):
    model = lpips_pkg.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"kind": CHECKPOINT_KIND, "net": "alex", "pretrained_backbone": False, "version": 1}
    if corrupt == "no_net":
        meta.pop("net")
    elif corrupt == "shape":
        k = next(k for k in sd if k.endswith("weight"))
        sd[k] = torch.zeros(3, 3)
    elif corrupt == "nan":
        k = next(k for k in sd if k.endswith("weight"))
        sd[k] = sd[k].clone().fill_(float("nan"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "lit_attacks": meta}, path)
    return path


def test_checkpoints_at_paths_that_look_alike_get_their_own_rows_and_files(tmp_path):
    a = write_rlpips(tmp_path / "x" / "quick" / "last.ckpt")
    b = write_rlpips(tmp_path / "y" / "quick" / "last.ckpt")
    c = write_rlpips(tmp_path / "a b" / "last.ckpt")
    d = write_rlpips(tmp_path / "a_b" / "last.ckpt")
    metrics = ",".join(f"rlpips:{p}" for p in (a, b, c, d))
    out = tmp_path / "r"
    assert bench.main(["--metrics", metrics, "--attacks", "", "--sweep-eps", "", "--out", str(out)] + QUIET) == 0
    rows = [r for r in (out / "table1.csv").read_text().splitlines()[1:] if ",all," in r]
    labels = {r.split(",")[0] for r in rows}
    assert len(rows) == 4 and len(labels) == 4
    assert len(list((out / "scores").glob("*.csv"))) == 4


# ====================================================================== 6. one line where one line is promised
@pytest.mark.parametrize("argv,msg", [
    (["--accelerator", "gpu"], "GPU(s) visible"), (["--accelerator", "bogus"], "--accelerator 'bogus': unknown"),
    (["--strategy", "bogus"], "--strategy 'bogus': unknown"), (["--strategy", "dpp"], "did you mean 'ddp'"),
    (["--seed", "-1"], "seed must be an integer >= 0"), (["--seed", str(2 ** 40)], "seed must be at most"),
    (["--param", "pgd.eps=!!python/object/apply:os.system ['touch PWNED']"], "the value is not plain YAML"),
    (["--param", "pgd.eps=[unclosed"], "the value is not plain YAML"),
])
def test_bad_flags_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.setenv("LIT_ATTACKS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    if "--accelerator" in argv and torch.cuda.device_count():
        pytest.skip("a GPU is visible")
    err = one_line_error(capsys, RUN + argv + ["--out", str(tmp_path / "r")])
    assert msg in err
    assert tree_listing(tmp_path) == []  # no built-in set generated, no results folder, no PWNED


def test_a_garbage_wandb_mode_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "garbage")
    err = one_line_error(capsys, ["--metrics", "l2", "--out", str(tmp_path / "r"), "--quiet", "--builtin-n", "2"])
    assert "WANDB_MODE='garbage'" in err


@pytest.mark.parametrize("corrupt,msg", [("no_net", "its record names LPIPS net None"),
                                         ("shape", "has shape (3, 3), expected"), ("nan", "holds NaN")])
def test_bad_rlpips_checkpoints_are_one_line(tmp_path, capsys, corrupt, msg):
    ckpt = write_rlpips(tmp_path / "bad.ckpt", corrupt)
    err = one_line_error(capsys, ["--metrics", f"rlpips:{ckpt}", "--out", str(tmp_path / "r")] + QUIET)
    assert msg in err and "bad.ckpt" in err
    assert not (tmp_path / "r").exists()


def test_rlpips_loading_never_imports_what_a_checkpoint_names(tmp_path, monkeypatch):
    mod = tmp_path / "mods" / "lit_attacks_evil_module.py"
    mod.parent.mkdir()
    marker = tmp_path / "IMPORTED"
    mod.write_text(f"open({str(marker)!r}, 'w').close()\nclass Payload:\n    pass\n")
    monkeypatch.syspath_prepend(str(mod.parent))
    import lit_attacks_evil_module

    ckpt = write_rlpips(tmp_path / "x.ckpt")
    obj = torch.load(ckpt, weights_only=True)
    obj["hyper_parameters"] = {"attack": lit_attacks_evil_module.Payload(),
                               "logger": {"class_path": "lit_attacks_evil_module.Payload"}}
    torch.save(obj, ckpt)
    obj["hyper_parameters"] = {"logger": {"class_path": "lit_attacks_evil_module.Payload"}}
    torch.save(obj, tmp_path / "strings_only.ckpt")
    del sys.modules["lit_attacks_evil_module"]
    marker.unlink()
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_trained_lpips(ckpt)
    load_trained_lpips(tmp_path / "strings_only.ckpt")  # a class_path string is only a string
    assert not marker.exists() and "lit_attacks_evil_module" not in sys.modules


@pytest.mark.parametrize("content", ["garbage", "truncated", "foreign"])
def test_a_bad_file_in_the_weights_folder_is_one_line(tmp_path, capsys, monkeypatch, content):
    wd = tmp_path / "weights"
    wd.mkdir()
    f = wd / "alexnet_features_broken.pth"
    real = sorted((ROOT.parent / "shared" / "data" / "weights").glob("alexnet_features_*.pth"))
    if content == "garbage":
        f.write_bytes(b"\x00not a torch file")
    elif content == "truncated":
        if not real:
            pytest.skip("the real AlexNet features are not in ../shared/data/weights")
        f.write_bytes(real[0].read_bytes()[:100_000])
    else:
        torch.save({"encoder.weight": torch.zeros(3)}, f)
    monkeypatch.setenv("LIT_ATTACKS_WEIGHTS_DIR", str(wd))
    err = one_line_error(capsys, ["--metrics", "lpips_alex", "--out", str(tmp_path / "r")] + QUIET)
    assert "alexnet_features_broken.pth" in err


@pytest.mark.parametrize("failing", ["README.md", "summary.json", "index.html"])
def test_a_full_disk_at_the_end_leaves_cells_and_no_partial_summary(tmp_path, capsys, monkeypatch, failing):
    from lit_attacks.bench import outputs
    from lit_attacks import report

    out = tmp_path / "r"
    real = report.atomic_write

    def full(path, text):
        if Path(path).name == failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(outputs, "atomic_write", full)
    monkeypatch.setattr(report, "atomic_write", full)
    err = one_line_error(capsys, RUN + ["--out", str(out)], code=1)
    assert f"{failing}: No space left on device" in err and "run the same command again" in err
    for name in ("summary.json", "README.md", "index.html", "table1.csv", "table2.csv"):
        assert not (out / name).exists(), name  # complete or absent: no summary without its README
    assert sorted(p.stem for p in (out / "cells").glob("*.json")) == ["pgd-l2", "table1-l2"]
    monkeypatch.undo()
    records = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert bench.main(RUN + ["--out", str(out)]) == 0  # the same command finishes the run from its cells
    assert (out / "summary.json").is_file() and (out / "README.md").is_file() and (out / "index.html").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == records


def test_a_results_folder_made_read_only_midway_is_one_line(tmp_path, capsys, monkeypatch):
    from lit_attacks.bench.cells import CellStore

    out = tmp_path / "r"
    original = CellStore.save

    def read_only(self, cell_id, *a, **kw):
        if cell_id == "pgd-l2":
            raise OSError(errno.EROFS, "Read-only file system", str(self.path(cell_id)))
        return original(self, cell_id, *a, **kw)

    monkeypatch.setattr(CellStore, "save", read_only)
    err = one_line_error(capsys, RUN + ["--out", str(out)], code=1)
    assert "cells/pgd-l2.json: Read-only file system" in err and "completed cells are kept" in err
    assert not (out / "summary.json").exists() and (out / "cells" / "table1-l2.json").is_file()


def test_runs_started_at_the_same_instant_never_trace_back(tmp_path):
    out = tmp_path / "shared-out"
    cmd = [sys.executable, str(ROOT / "bench.py"), "--metrics", "l2", "--attacks", "", "--sweep-eps", "",
           "--out", str(out)] + QUIET
    env = {**os.environ, "LIT_ATTACKS_CACHE": str(tmp_path / "cache")}
    subprocess.run(cmd[:2] + ["--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(tmp_path / "warm")]
                   + QUIET, env=env, check=True, capture_output=True)  # the built-in set, generated once
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results)[0] == 0
    for code, err in results:
        assert code in (0, 2) and "Traceback" not in err, err
        if code == 2:
            assert err.strip().count("\n") == 0 and "is in use by another bench run" in err
    assert (out / "summary.json").is_file() and not (out / ".bench.lock").exists()


# ====================================================================== 7. waiting without a word
def test_a_lock_left_by_a_dead_process_is_taken_over_and_said(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".bench.lock").write_text(f"{dead.pid}\n")
    assert bench.main(RUN + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of {out} left by pid {dead.pid}, which is no longer running" in err
    assert not (out / ".bench.lock").exists()  # released when the run returns


@pytest.mark.ddp
def test_a_multi_node_run_without_its_other_node_says_what_it_waits_for_and_gives_up(tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "LIT_ATTACKS_DDP_TIMEOUT": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29731",
           "LIT_ATTACKS_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--accelerator", "cpu", "--devices", "1",
                        "--num-nodes", "2", "--metrics", "l2", "--attacks", "", "--sweep-eps", "", "--out", str(out)]
                       + QUIET, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr
    assert "DDP: waiting for 2 processes (2 node(s) x 1 device(s)) to join at 127.0.0.1:29731" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bench.py: error: DDP: 2 processes did not all join") and "5 s" in last, r.stderr
    assert "Traceback" not in r.stderr and not (out / ".bench.lock").exists()
