"""Train a robust perceptual metric: LPIPS heads on BAPPS 2AFC judgements, clean or adversarial (R-LPIPS).

    python train.py fit --config configs/train/rlpips.yaml            # adversarial training
    python train.py fit --config configs/train/lpips_clean.yaml       # the same, clean (no attack)
    python train.py validate --config configs/train/rlpips.yaml --ckpt_path results/train/rlpips/checkpoints/last.ckpt
    python bench.py --metrics lpips_alex,rlpips:results/train/rlpips/checkpoints/last.ckpt --attacks pgd

A LightningCLI over :class:`lit_attacks.robust.module.RobustLPIPS` and
:class:`lit_attacks.datamodules.bapps.BappsDataModule` (2AFC train split for fit, val for validation). Any init
argument is a flag (``--model.adversarial false``, ``--data.batch_size 32``, ``--trainer.devices 2
--trainer.strategy ddp``). W&B logs offline unless an API key is configured.
"""
from __future__ import annotations

import sys
from typing import List, Optional

import lit_attacks  # noqa: F401 (first: it points matplotlib's files at the cache before anything imports matplotlib)
import yaml
from jsonargparse import set_loader
from pytorch_lightning.cli import LightningCLI

from lit_attacks.configuration import load_yaml_text
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.datamodules.cache import cache_root
from lit_attacks.processes import say_when_a_rank_dies
from lit_attacks.quiet import lightning_adverts_silenced, third_party_warnings_silenced
from lit_attacks.robust.checkpoint import (ConfigFile, epochs_done, guarded_run, resume_point, run_folder,
                                           use_epoch_checkpoints)
from lit_attacks.robust.module import RobustLPIPS
from lit_attacks.safe_files import InputError
from lit_attacks.wandb_utils import third_party_state

TRAINER_DEFAULTS = {"inference_mode": False, "max_epochs": 5}  # inference_mode off: validation runs PGD
PARSER_DEFAULTS = {
    "trainer.logger": {"class_path": "lit_attacks.robust.logger.AutoWandbLogger",
                       "init_args": {"project": "lit-attacks-train", "save_dir": "results/train"}},
    "trainer.callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": "results/train/checkpoints", "filename": "best-{epoch}-{step}",
                                         "monitor": "val/2afc", "mode": "max", "save_top_k": 1, "save_last": True,
                                         "enable_version_counter": False}}],  # a rerun replaces last.ckpt
}


# Configs are read by PyYAML's safe loader with repeated keys refused (a key given twice is an error, not
# "the last one wins"). A config's class_path is imported by LightningCLI: a config is code (docs/training.md).
YAML_MODE = "yaml_unique_keys"
set_loader(YAML_MODE, load_yaml_text, exceptions=(yaml.YAMLError,))
SUBCOMMANDS = ("fit", "validate", "test", "predict")
PARSER_KWARGS = {"parser_mode": YAML_MODE, **{sub: {"parser_mode": YAML_MODE} for sub in SUBCOMMANDS}}


class TrainCLI(LightningCLI):
    """train.py's LightningCLI: every folder it writes goes through the folder guard (lit_attacks.folders), every
    ModelCheckpoint writes last.ckpt at each epoch's end, and ``fit`` resumes from the last.ckpt a run of the same
    settings left (``--fresh``: start over)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults(PARSER_DEFAULTS)
        parser.add_argument("--fresh", action="store_true",
                            help="fit from the start even when the checkpoint folder holds a last.ckpt to resume from")

    def _run_subcommand(self, subcommand: str) -> None:
        use_epoch_checkpoints(self.trainer)
        folder = run_folder(self.trainer)
        with guarded_run(self.trainer), third_party_state(folder or ".", cache_root()):
            super()._run_subcommand(subcommand)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand == "fit" and kwargs.get("ckpt_path") is None and not self.config[subcommand].get("fresh"):
            last = resume_point(self.trainer, self.model, self.datamodule)
            if last is not None:
                if self.trainer.is_global_zero:
                    print(f"train.py: resuming from {last} ({epochs_done(last)} epochs done; --fresh starts over)",
                          file=sys.stderr, flush=True)
                kwargs["ckpt_path"] = str(last)
        return kwargs


RESUME = "The last finished epoch is in last.ckpt: run the same command again to resume from it."


def main(args: Optional[List[str]] = None) -> LightningCLI:
    """Run train.py; bad input (a folder, a config, a checkpoint of other settings) ends it with one line and status
    2."""
    lightning_adverts_silenced()
    say_when_a_rank_dies("train.py", RESUME)
    try:
        with third_party_warnings_silenced():  # known, understood third-party warnings only (lit_attacks.quiet)
            return TrainCLI(RobustLPIPS, BappsDataModule, trainer_defaults=TRAINER_DEFAULTS,
                            save_config_callback=ConfigFile, save_config_kwargs={"overwrite": True},
                            parser_kwargs=PARSER_KWARGS, args=args)
    except InputError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
    sys.exit(0)
