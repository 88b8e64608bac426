"""W&B logger for train.py: online with an API key, offline without one (no account needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pytorch_lightning.loggers import WandbLogger

from lit_attacks.wandb_utils import resolve_mode


class AutoWandbLogger(WandbLogger):
    """:class:`WandbLogger` whose mode defaults to offline when no W&B API key is configured.

    Args:
        project: W&B project.
        name: run name.
        save_dir: folder of the ``wandb/`` run directory.
        mode: "auto" ($WANDB_MODE, else online with a key, else offline), "online", "offline", "disabled".
        log_model: upload checkpoints as W&B artifacts (online runs).
    """

    def __init__(self, project: str = "lit-attacks-train", name: Optional[str] = None, save_dir: str = "results/train",
                 mode: str = "auto", log_model: bool = False) -> None:
        m = resolve_mode(mode)
        if m not in ("online", "offline", "disabled"):
            raise ValueError(f"AutoWandbLogger: mode must be auto, online, offline or disabled, got {mode!r}")
        self.mode = m
        extra = {"mode": "disabled"} if m == "disabled" else {}
        if m != "disabled":
            extra["settings"] = git_settings()
        super().__init__(project=project, name=name, save_dir=save_dir, offline=m == "offline", log_model=log_model,
                         **extra)
        self._wandb_init.pop("anonymous", None)  # Lightning always passes it; W&B warns that it has no effect


def git_settings():
    """W&B settings that record the source checkout's commit (W&B looks for git in the run folder, which is none,
    and warns), or skip git where the package is installed without one."""
    import wandb

    root = Path(__file__).resolve().parents[2]
    return wandb.Settings(git_root=str(root)) if (root / ".git").exists() else wandb.Settings(disable_git=True)
