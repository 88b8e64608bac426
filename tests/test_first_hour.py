"""What a new user meets in the first hour: progress bars with totals, no third-party warning noise, one page
per run (opened in a real headless browser where one is installed), standard JSON, clear small messages."""
import hashlib
import html.parser
import json
import warnings

import pytest

import bench
from lit_attacks.attacks import create_attack
from lit_attacks.datamodules.bapps import BappsDataModule, main as bapps_main
from lit_attacks.metrics import create_metric
from lit_attacks.report import read_csv

from helpers import CHROMIUM, chromium, random_tree

SMALL = ["--metrics", "l2,lpips_alex", "--pretrained", "false", "--builtin-n", "3", "--batch-size", "8",
         "--wandb", "disabled", "--sweep-eps", "0.01,0.03"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first") / "run"
    assert bench.main(SMALL + ["--out", str(out), "--quiet"]) == 0
    return out


# ------------------------------------------------------------------------------ 1. progress with totals
@pytest.mark.parametrize("workers,world,split_by", [(0, 1, "auto"), (2, 1, "auto"), (0, 2, "sample"),
                                                   (2, 2, "sample"), (1, 3, "shard")])
def test_loaders_know_their_number_of_batches(tmp_path, workers, world, split_by):
    judges = random_tree(tmp_path / "tree", n=11)
    total = 0
    for rank in range(world):
        dm = BappsDataModule(data=str(tmp_path / "tree"), batch_size=3, num_workers=workers, load_size=8,
                             split_by=split_by, cache_dir=str(tmp_path / "cache"))
        ds = dm.dataset()
        ds.rank, ds.world_size = rank, world
        loader = type(dm.predict_dataloader())(ds, batch_size=3, num_workers=workers)
        batches = list(loader)
        assert len(loader) == len(batches)  # what Lightning's bar shows as its total
        total += sum(len(b["key"]) for b in batches)
    assert total == sum(j in (0.0, 1.0) for j in judges.values())  # every unanimous sample, once


def test_the_index_alone_gives_the_count(tmp_path):
    random_tree(tmp_path / "tree", n=10)
    dm = BappsDataModule(data=str(tmp_path / "tree"), cache_dir=str(tmp_path / "c"), unanimous_only=True)
    ds = dm.dataset()
    assert all(url in ds.judges for url in ds.urls)  # counts come from index.json, nothing is read
    expected = sum(1 for _ in ds)
    ds._kept = None
    assert ds.count() == expected


@pytest.mark.slow
def test_no_carriage_returns_when_stdout_is_not_a_terminal(tmp_path, capsys):
    assert bench.main(SMALL + ["--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out and "[cell 1/" in out and "index.html" in out


# ------------------------------------------------------------------------------ 2. warning noise
@pytest.mark.slow
def test_a_run_shows_no_third_party_warnings(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_metric("lpips_alex", pretrained=False)
        assert bench.main(SMALL + ["--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert [str(w.message)[:80] for w in caught] == []


# ------------------------------------------------------------------------------ 5. one page per run
class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.refs.append(a["src"])
        elif tag == "a" and not a["href"].startswith("#"):
            self.refs.append(a["href"])
        self.tables += tag == "table"


def test_index_page_links_every_table_plot_and_file(run):
    page = _Page()
    page.feed((run / "index.html").read_text())
    assert page.tables == 3  # table1, table2, sweep
    assert {"plots/flip_rates.png", "plots/robustness.png", "table2.csv", "README.md", "summary.json"} <= set(page.refs)
    for ref in page.refs:
        assert (run / ref).is_file(), ref
    assert "index.html" in (run / "README.md").read_text()




@pytest.mark.skipif(not CHROMIUM, reason="no headless Chromium installed (Debian package chromium)")
def test_index_page_renders_in_a_real_browser_with_every_image(run, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", (run / "index.html").as_uri())
    assert dom.count("<table") == 3 and 'data-broken-images="0"' in dom  # set by the page once images loaded


# ------------------------------------------------------------------------------ 7, 8. small things
def test_summary_is_standard_json_and_fgsm_has_no_iteration_placeholder(run):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    summary = json.loads((run / "summary.json").read_text(), parse_constant=refuse)
    fgsm = [r for r in summary["table2"] if r["attack"] == "fgsm"]
    assert fgsm and all(r["iterations_mean"] is None for r in fgsm)  # not applicable, not -1


def test_misspelled_names_get_a_suggestion_and_punctuation():
    with pytest.raises(KeyError, match=r"unknown attack 'PGD'; did you mean 'pgd'\? Known attacks: .*, stadv, worst_case\."):
        create_attack("PGD", "l2")
    with pytest.raises(KeyError, match=r"unknown metric 'zzzz'\. Known metrics: "):
        create_metric("zzzz")


def test_a_failed_preflight_leaves_no_results_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--metrics", f"rlpips:{tmp_path / 'missing.ckpt'}", "--out", str(tmp_path / "new" / "run")])
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from lit_attacks.bench import runner

    def interrupt(self, cell):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Bench, "run_cell", interrupt)
    assert bench.main(SMALL + ["--out", str(tmp_path / "r"), "--quiet"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_the_builtin_command_output_is_accepted_as_data(tmp_path):
    assert bapps_main(["builtin", "--out", str(tmp_path / "set"), "--n-per-category", "2"]) == 0
    assert bench.main(["--data", str(tmp_path / "set"), "--metrics", "l2", "--attacks", "", "--sweep-eps", "",
                       "--quiet", "--wandb", "disabled", "--out", str(tmp_path / "r")]) == 0
    assert read_csv(tmp_path / "r" / "table1.csv")[-1]["samples"] == "10"


def test_rlpips_is_labelled_by_its_run_and_file(tmp_path):
    from lit_attacks.metrics.trained import TrainedLPIPSDistance
    from lit_attacks.metrics.lpips import build_lpips

    m = TrainedLPIPSDistance(build_lpips("alex", False, None, "t"), "alex", pretrained=True)
    m.name = "rlpips:/data/results/train/quick/checkpoints/last.ckpt"
    tag = hashlib.sha256(m.name.encode()).hexdigest()[:6]  # distinct checkpoints, distinct labels
    assert m.label == f"rlpips:quick/last.ckpt#{tag}"
    m.pretrained = False
    assert m.label == f"rlpips:quick/last.ckpt#{tag} [random backbone]"
    m.name = "rlpips:/elsewhere/quick/checkpoints/last.ckpt"
    assert m.label.startswith("rlpips:quick/last.ckpt#") and tag not in m.label
