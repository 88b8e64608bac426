"""Every command in README.md and docs/*.md still works: each is parsed and validated by the program it names
(bench.py's config resolution, train.py's LightningCLI, the data CLI's parser), the Python snippets run,
relative links resolve, and the metric table lists exactly the registered metrics."""
import re
import shlex
from pathlib import Path

import pytest

import bench
import train
from lit_attacks.datamodules.bapps import BappsDataModule, build_parser
from lit_attacks.metrics import list_metrics
from lit_attacks.robust.module import RobustLPIPS

from conftest import ROOT, SHARED

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# placeholders the docs use for files a user has -> files of ../shared/data that stand in for them
PLACEHOLDERS = {"PATH/results/whitebox_attack/": f"{SHARED}/bapps/",
                "PATH/results/transferableAdv_benchmark": f"{SHARED}/bapps/transfer_official"}


def blocks(page: Path, lang: str):
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), flags=re.S)


def commands():
    for page in PAGES:
        for block in blocks(page, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words:
                        yield pytest.param(page.name, words, id=f"{page.name}:{' '.join(words)[:60]}")


def program_args(words):
    """(program, arguments) of a command line, through wrappers such as torchrun and srun."""
    for i, w in enumerate(words):
        if w.endswith("bench.py"):
            return "bench", words[i + 1:]
        if w.endswith("train.py"):
            return "train", words[i + 1:]
        if w == "-m" and i + 1 < len(words):
            return words[i + 1], words[i + 2:]
    return words[0], words[1:]


@pytest.mark.parametrize("page,words", list(commands()))
def test_documented_command_is_valid(page, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    program, args = program_args(words)
    args = [next((a.replace(k, v) for k, v in PLACEHOLDERS.items() if k in a), a) for a in args]
    if program == "bench":
        if any(not Path(v).exists() and k in " ".join(words) for k, v in PLACEHOLDERS.items()):
            pytest.skip("the shared official results are not available")
        cfg = bench.resolve_config(bench.parse_args(args))  # exits with the one-line error if not valid
        assert cfg["metrics"]
    elif program == "train":
        args = [a for i, a in enumerate(args) if a not in ("fit", "validate", "test") and a != "--ckpt_path"
                and (i == 0 or args[i - 1] != "--ckpt_path")]
        cli = train.TrainCLI(RobustLPIPS, BappsDataModule, run=False, trainer_defaults=train.TRAINER_DEFAULTS,
                             args=args + ["--model.pretrained_backbone", "false", "--trainer.logger", "false"])
        assert isinstance(cli.model, RobustLPIPS)
    elif program == "lit_attacks.datamodules.bapps":
        build_parser().parse_args(args)
    elif program == "lit_attacks.leaderboard":
        from lit_attacks.leaderboard.__main__ import build_parser as leaderboard_parser

        leaderboard_parser().parse_args(args)
    elif program in ("pip", "pytest", "wandb") or words[:3] == ["python", "-m", "pytest"]:
        pass  # installs and the test runner itself
    else:
        pytest.fail(f"{page}: no check for the documented command {' '.join(words)!r}")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_documented_python_runs(page):
    from lit_attacks.metrics import WeightsNotFoundError

    for block in blocks(page, "python"):
        try:
            exec(compile(block, str(page), "exec"), {})
        except WeightsNotFoundError as e:
            pytest.skip(f"needs real weights: {e}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_metric_table_is_the_one_the_registry_generates():
    from lit_attacks.metrics.catalog import replace_table

    text = (ROOT / "docs" / "metrics.md").read_text()
    assert replace_table(text) == text, "docs/metrics.md is stale: python -m lit_attacks.metrics.catalog --write docs/metrics.md"
    assert all(f"| `{n}` |" in text for n in list_metrics())
