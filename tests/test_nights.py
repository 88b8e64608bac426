"""NIGHTS (DreamSim's 2AFC set) in its own layout: a generated NIGHTS-layout fixture read, converted and run through
Table 1 and the quick leaderboard protocol unchanged; the layout's errors named in one line."""
import csv
import json
import zipfile

import pytest

from lit_attacks.bench.cli import main as bench
from lit_attacks.datamodules.bapps import BappsDataModule, NightsDataModule
from lit_attacks.datamodules.nights import MIN_VOTES, download, nights_root, scan_nights, write_fixture
from lit_attacks.datamodules.tree import BappsDataError
from lit_attacks.report import read_csv


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    base = tmp_path_factory.mktemp("nights")
    write_fixture(base, n=12, size=96)
    return base


def kept(base, split):
    """Independent restatement of DreamSim's filter: votes >= 6 and the split; judge = right / (left + right)."""
    with open(base / "nights" / "data.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and float(r["votes"]) >= 6]
    return {r["id"]: float(r["right_vote"]) / (float(r["left_vote"]) + float(r["right_vote"])) for r in rows}


def test_the_fixture_is_read_as_dreamsim_reads_it(nights):
    assert nights_root(nights) == nights / "nights" and nights_root(nights / "nights") == nights / "nights"
    samples = scan_nights(nights / "nights", "test")
    want = kept(nights, "test")
    assert 0 < len(samples) == len(want) < 12  # some triplets have fewer than 6 votes
    assert {s.key.split("/")[-1]: s.judge for s in samples} == want
    assert {s.key.split("/")[1] for s in samples} == {"imagenet", "no_imagenet"}
    assert all(s.key.startswith("test/") and s.p0.name.endswith("_0.png") and s.p1.name.endswith("_1.png")
               for s in samples)
    assert MIN_VOTES == 6


def test_data_recognises_a_nights_root_and_resizes_to_the_image_size(nights, tmp_path):
    dm = BappsDataModule(data=str(nights), split="test", load_size=96, batch_size=64, cache_dir=str(tmp_path))
    b = next(iter(dm.predict_dataloader()))
    assert b["ref"].shape[1:] == (3, 96, 96) and set(b["judge"].tolist()) <= {0.0, 1.0}
    assert sorted(k.split("/")[-1] for k in b["key"]) == sorted(kept(nights, "test"))
    small = BappsDataModule(data=str(nights), split="test", load_size=32, cache_dir=str(tmp_path))
    assert next(iter(small.predict_dataloader()))["p1"].shape[-1] == 32


def test_the_nights_datamodule_defaults_to_the_test_split_at_224_px(nights, tmp_path):
    dm = NightsDataModule(str(nights), cache_dir=str(tmp_path), batch_size=64)
    b = next(iter(dm.predict_dataloader()))
    assert b["ref"].shape[1:] == (3, 224, 224) and all(k.startswith("test/") for k in b["key"])
    assert len(b["key"]) == len(kept(nights, "test"))
    with pytest.raises(BappsDataError, match="no NIGHTS root"):
        NightsDataModule(str(tmp_path))


def test_table1_and_the_quick_protocol_run_on_nights_unchanged(nights, tmp_path):
    n = len(kept(nights, "test"))
    assert bench(["--data", str(nights), "--split", "test", "--metrics", "l2", "--attacks", "", "--sweep-eps", "",
                  "--image-size", "64", "--quiet", "--out", str(tmp_path / "t1")]) == 0
    rows = {r["category"]: r for r in read_csv(tmp_path / "t1" / "table1.csv")}
    assert int(rows["all"]["samples"]) == n
    assert int(rows["imagenet"]["samples"]) + int(rows["no_imagenet"]["samples"]) == n
    assert bench(["--config", "leaderboard_quick", "--data", str(nights), "--split", "test", "--metrics", "l2",
                  "--quiet", "--out", str(tmp_path / "lb")]) == 0
    entry = json.loads((tmp_path / "lb" / "leaderboard" / "nights" / "leaderboard_quick" / "l2.json").read_text())
    assert entry["dataset"]["name"] == "nights" and entry["dataset"]["unanimous"] == n
    assert entry["dataset"]["split"] == "test" and entry["results"]["clean"]["n"] == n


def _layout(tmp_path, header, row):
    root = tmp_path / "bad" / "nights"
    (root / "ref").mkdir(parents=True)
    write_fixture(tmp_path / "src", n=2)
    for name in ("ref/000/000.png", "distort/000/000_0.png", "distort/000/000_1.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((tmp_path / "src" / "nights" / name).read_bytes())
    (root / "data.csv").write_text(header + "\n" + row + "\n")
    return root


HEADER = "id,left_vote,right_vote,votes,ref_path,left_path,right_path,split"
GOOD = "0,1,0,8,ref/000/000.png,distort/000/000_0.png,distort/000/000_1.png,test"


@pytest.mark.parametrize("header,row,message", [
    (HEADER.replace(",votes", ""), GOOD.replace(",8,", ","), "missing columns votes"),
    (HEADER, GOOD.replace("ref/000/000.png", "../000.png"), "must be relative to the NIGHTS root, without '..'"),
    (HEADER, GOOD.replace("000_1.png", "999_1.png"), "distort/000/999_1.png is missing"),
    (HEADER, GOOD.replace("0,1,0,8", "0,0,0,8"), "left_vote and right_vote are both 0"),
    (HEADER, GOOD.replace("0,1,0,8", "0,x,0,8"), "left_vote 'x' is not a number"),
    (HEADER, GOOD.replace(",test", ",train"), "no triplet of split 'test' with votes >= 6"),
])
def test_a_malformed_layout_is_one_line_naming_the_file(tmp_path, header, row, message):
    root = _layout(tmp_path, header, row)
    with pytest.raises(BappsDataError, match=message) as e:
        scan_nights(root, "test")
    assert "\n" not in str(e.value) and "data.csv" in str(e.value)


def test_download_unpacks_the_archive_and_refuses_members_outside(tmp_path):
    src = tmp_path / "src"
    write_fixture(src, n=2)
    archive = tmp_path / "nights.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (src / "nights").rglob("*"):
            if f.is_file():
                z.write(f, str(f.relative_to(src)))
    root = download(tmp_path / "out", mirrors=[archive.as_uri()])
    assert root == tmp_path / "out" / "nights" and scan_nights(root, "test")
    assert not (tmp_path / "out" / "nights.zip").exists()
    evil = tmp_path / "evil" / "nights.zip"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", "x")
    from lit_attacks.datamodules.download import DownloadError

    with pytest.raises(DownloadError, match="would unpack outside"):
        download(tmp_path / "evil2", mirrors=[evil.as_uri()])
    assert not (tmp_path / "escape.txt").exists()
