"""Benchmark perceptual metrics on BAPPS-style 2AFC data and attack them, cell by cell, resumably.

    python bench.py                                         # the quick preset (configs/bench/quick.yaml)
    python bench.py --config configs/bench/table2.yaml --data ~/data/bapps-shards --gpus 8
    python bench.py --metrics l2,lpips_alex --attacks pgd --param pgd.steps=40 --out results/pgd40

Settings come from built-in defaults < the YAML config (--config, default configs/bench/quick.yaml)
< command-line flags. Every (metric, attack) cell, sweep point and transfer stage is a *cell*: it is
written atomically when complete and skipped when the same command is run again (--fresh recomputes).
Outputs in results/<name>/ (or --out): table1/2/3 and sweep as .csv/.md, summary.json, per-sample CSVs
(scores/, samples/), PNG plots (plots/), README.md (config, versions, data fingerprint, weights) and
the W&B run (wandb/; offline without an API key).
"""
import sys

from lit_attacks.bench.cli import main, parse_args, resolve_config  # noqa: F401 (tests and notebooks call them here)
from lit_attacks.bench.folder import LOCK_NAME  # noqa: F401 (tests name the lock file by it)

if __name__ == "__main__":
    sys.exit(main())
