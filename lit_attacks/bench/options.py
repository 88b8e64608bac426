"""The bench run's own config keys, declared once: default, type, bounds, choices, flag and help.

From :data:`DATA_OPTIONS` and :data:`RUN_OPTIONS` come the built-in defaults (:mod:`lit_attacks.bench.config`),
the typed command-line flags of ``bench.py`` (on a jsonargparse parser: ``--pretrained false`` arrives as the
boolean False, ``--batch-size 8`` as an int) and the one-line value checks. A table declares its own keys the same
way (:class:`lit_attacks.configuration.Option`, in :attr:`lit_attacks.tables.base.Table.options`) or, for
structured keys, with its own flags and checks.
"""
from __future__ import annotations

from typing import Tuple

from lit_attacks.attacks.objectives import UINT8_MODES
from lit_attacks.configuration import ConfigError, Option
from lit_attacks.wandb_utils import MODES

MAX_SEED = 2 ** 32 - 1  # numpy's and Lightning's seed range
MAX_BUILTIN_N = 100_000  # samples per category of the built-in set (about 22 GB of cache); BAPPS val has ~2,000
# The data keys: which samples (before the tables' keys in a config, as the built-in defaults list them).
DATA_OPTIONS: Tuple[Option, ...] = (
    Option("name", "default", help="run name: results/<name>/ and the W&B run name"),
    Option("out", None, optional=True, help="results folder (default results/<name>)"),
    Option("data", None, optional=True, help="BAPPS tree root, NIGHTS root or shard folder (default: built-in "
                                              "synthetic set; 'builtin' picks it over a config's path)"),
    Option("split", "val", help="data split: val (BAPPS), test (NIGHTS' evaluation split)"),
    Option("image_size", 64, "int", "images are resized to this many pixels a side at load (BAPPS: 64; NIGHTS is "
                                    "768 px, DreamSim scores at 224)", minimum=8, maximum=1024),
    Option("categories", None, "names", "comma-separated categories (default: all)", optional=True),
    Option("builtin_n", 40, "int", "samples per category of the built-in set", minimum=1, maximum=MAX_BUILTIN_N),
    Option("builtin", "photos", help="which built-in set (default photos)", choices=("photos", "procedural")),
    Option("seed", 0, "int", "seed of the built-in set, of random backbones and of Lightning", minimum=0,
           maximum=MAX_SEED),
    Option("metrics", ["l2", "ssim", "lpips_alex"], "names", "comma-separated metric names ('all': every one)"),
)

# The run keys: how the work runs (after the tables' keys).
RUN_OPTIONS: Tuple[Option, ...] = (
    Option("pretrained", True, "bool", "false: random backbones (tests, timing)"),
    Option("weights_dir", None, optional=True, help="folder searched first for weights ($LIT_ATTACKS_WEIGHTS_DIR)"),
    Option("skip_unavailable", False, "bool", "true: metrics whose weights or extra are missing are listed as not "
                                              "run instead of stopping"),
    Option("batch_size", 64, "int", "samples per batch of every cell (memory: attacks hold a few copies per sample)",
           minimum=1),
    Option("num_workers", 0, "int", "DataLoader worker processes per device process (0: load in the main process)",
           minimum=0, maximum=256),
    Option("batch_invariant", False, "bool", "float64: results independent of batching", switch=True),
    Option("uint8", "round", help="8-bit images (PNGs, s_adv_uint8): round (default) or trunc as the official code",
           choices=UINT8_MODES),
    Option("save_adv", False, "bool", "also write adversarial images as shards in adv/", switch=True),
    Option("examples", 6, "int", "example triplets per attack cell in the image grids", minimum=0, maximum=1000),
    Option("gpus", None, "int", "DDP on N GPUs (0: CPU; default: 1 GPU if visible, else CPU)", optional=True,
           minimum=0),
    Option("accelerator", None, optional=True, help="explicit Lightning accelerator, e.g. cpu (with --devices 2: "
                                                     "CPU DDP)"),
    Option("devices", None, "int", "Lightning devices per node (with --accelerator; --gpus N sets both)", optional=True,
           minimum=1),
    Option("strategy", "auto", help="Lightning strategy (default: ddp when more than one process)"),
    Option("num_nodes", 1, "int", "nodes of a multi-node run (torchrun / SLURM)", minimum=1),
    Option("wandb", "auto", help="W&B mode (auto: online with an API key, else offline)", choices=MODES),
    Option("wandb_project", "lit-attacks", help="W&B project name"),
)


def _check_declared() -> None:
    for o in DATA_OPTIONS + RUN_OPTIONS:
        try:
            o.check({o.key: o.default})
        except ConfigError as e:  # a default that its own declaration rejects is a programming error
            raise AssertionError(f"option {o.key}: its default fails its check: {e}") from None


_check_declared()
