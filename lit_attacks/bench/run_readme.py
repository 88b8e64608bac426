"""The README.md of a results folder: what was run, with which code, data and weights."""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (its git commit goes in the run README)

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics", "lpips", "piq", "webdataset", "wandb",
            "scipy", "numpy")


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> Optional[str]:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (r.stdout.strip() + ("+uncommitted changes" if dirty else "")) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cell_time(cells: Optional[tuple]) -> str:
    if not cells or not cells[1]:
        return ""
    n, loaded, compute = cells
    return (f" for this invocation, which loaded {loaded} of its {n} cells from an earlier run; the cells took "
            f"{compute:.1f} s when they were computed")


def render(cfg: Dict[str, Any], argv: Sequence[str], data: Dict[str, Any], labels: Dict[str, str],
           weights: Dict[str, str], files: List[str], seconds: float, devices: str,
           wandb_dir: Optional[str], unavailable: Optional[Dict[str, str]] = None,
           cells: Optional[tuple] = None) -> str:
    """The run README. ``cells``: (cells, of them loaded from an earlier run, seconds the cells took when computed),
    so a rerun that loads everything still says what the results cost."""
    lines = [f"# Bench run `{cfg['name']}`", ""]
    if not cfg["pretrained"]:
        lines += ["> **WARNING: random backbones** (`pretrained: false`). Learned metrics ran with randomly",
                  "> initialised networks: the numbers are for testing and timing only, not about LPIPS & co.", ""]
    lines += ["All tables, plots and example grids on one page: [index.html](index.html).", ""]
    lines += ["## Command", "", "```bash", "python bench.py " + " ".join(argv), "```", "",
              f"Wall time {seconds:.1f} s on {devices}{cell_time(cells)}.", "", "## Data", ""]
    lines += [f"- source: {data.get('data')}", f"- shards: `{data.get('shards')}`",
              f"- shard index sha256 (first 16 hex): `{data.get('index_sha256')}`", f"- split: {cfg['split']}", ""]
    lines += ["## Metrics and weights", "", "| metric | label | weights |", "|---|---|---|"]
    for m, label in labels.items():
        prefix, sep, arg = m.partition(":")
        own = {"py": f"your metric, imported from {arg.split(':')[0]}", "user": "your metric object (this process)"}
        w = weights.get(m) or (own.get(prefix) or f"checkpoint {arg}" if sep else
                               "no learned weights" if cfg["pretrained"] else "random backbone")
        lines.append(f"| {m} | {label} | `{w}` |")
    if unavailable:
        lines += ["", "Not run: their weights or optional extra are missing here (`skip_unavailable: true`):", ""]
        lines += [f"- `{m}`: {why}" for m, why in unavailable.items()]
    lines += ["", "## Versions", ""]
    commit = git_commit()
    lines += [f"- lit-attacks commit: {commit or 'unknown'}"] + [f"- {k}: {v}" for k, v in versions().items()]
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in files]
    if wandb_dir:
        lines += ["", f"W&B offline run: `{wandb_dir}`; upload with `wandb sync {wandb_dir}`."]
    lines += ["", "## Resolved config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def command_line(argv: Optional[Sequence[str]] = None) -> List[str]:
    """The arguments of this run (``argv``; default: this process's), shell-quoted, so the recorded command reruns
    verbatim (``--sweep-eps ''``)."""
    return [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
