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

import yaml
from jsonargparse import set_loader
from pytorch_lightning.cli import LightningCLI

from lit_attacks.configuration import load_yaml_text
from lit_attacks.datamodules.bapps import BappsDataModule
from lit_attacks.quiet import lightning_adverts_silenced, third_party_warnings_silenced
from lit_attacks.robust.module import RobustLPIPS

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
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults(PARSER_DEFAULTS)


def main(args: Optional[List[str]] = None) -> LightningCLI:
    lightning_adverts_silenced()
    with third_party_warnings_silenced():  # known, understood third-party warnings only (lit_attacks.quiet)
        return TrainCLI(RobustLPIPS, BappsDataModule, trainer_defaults=TRAINER_DEFAULTS,
                        save_config_kwargs={"overwrite": True}, parser_kwargs=PARSER_KWARGS, args=args)


if __name__ == "__main__":
    main()
    sys.exit(0)
