"""The reverse attack table (paper appendix F): attacks that pull the image the metric finds *farther*
until it becomes the closer one (``pgd_reverse``), on every metric, over the unanimous samples.

Config key ``reverse``: attack name -> parameters, e.g. ``{pgd_reverse: {}}`` (eps 0.1, alpha 0.001, 50
steps, as ``whitebox_toMakeMoreSimilar_attack_pgd.py``); flags ``--reverse pgd_reverse`` and
``--reverse-param pgd_reverse.steps=20``. Files: ``reverse.csv/.md``, ``samples/reverse/<attack>-<metric>.csv``.
"""
from __future__ import annotations

from lit_attacks.tables.attack_rows import AttackTable
from lit_attacks.tables.base import TABLES


@TABLES.register("reverse")
class ReverseTable(AttackTable):
    name = "reverse"
    order = 25
    key, flag, param_flag, reverse = "reverse", "--reverse", "--reverse-param", True
    samples_dir, figure_prefix, log_prefix = "samples/reverse", "reverse_", "reverse"
    heading = ("# Reverse attack (appendix F): the farther image made the closer one, on samples where humans "
               "were unanimous")
    title = "Reverse attack (flipped = the farther image became the closer one; RMSE/PSNR over flipped)"
    config = {"reverse": None}
    files = ("reverse.csv", "reverse.md")
    example = {"metrics": ["l2"], "attacks": {}, "reverse": {"pgd_reverse": {"steps": 3}}}
