"""Benchmark perceptual metrics on BAPPS-style 2AFC data and attack them, cell by cell, resumably.

    python bench.py                                         # the quick preset
    python bench.py --help                                  # every flag; the usage text is lit_attacks.bench.cli.USAGE
"""
import sys

from lit_attacks.bench.cli import main, parse_args, resolve_config  # noqa: F401 (tests and notebooks call them here)
from lit_attacks.bench.folder import LOCK_NAME  # noqa: F401 (tests name the lock file by it)

if __name__ == "__main__":
    sys.exit(main())
