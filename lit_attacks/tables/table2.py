"""Table 2: rank flips of each attack on each metric, over the unanimous samples, split by agreement with humans.

Config key ``attacks``: attack name -> parameters (or a list of names). Flags: ``--attacks a,b`` (keeps
the config's parameters of the chosen attacks; ``''`` for none) and ``--param ATTACK.KEY=VALUE``.
Files: ``table2.csv/.md``, ``samples/<attack>-<metric>.csv``. The work is the shared attack table's
(:class:`lit_attacks.tables.attack_rows.AttackTable`).
"""
from __future__ import annotations

from lit_attacks.tables.attack_rows import AttackTable
from lit_attacks.tables.base import TABLES


@TABLES.register("table2")
class Table2(AttackTable):
    """Every configured attack on every metric; per-sample rows in ``samples/<attack>-<metric>.csv``."""

    name = "table2"
    order = 20
    key, flag, param_flag, reverse = "attacks", "--attacks", "--param", False
    samples_dir, figure_prefix, log_prefix = "samples", "", "predict"
    heading = "# Table 2: rank flips on samples where humans were unanimous"
    title = "Table 2 (rank flips; agreed = the metric ranked like the humans; RMSE/PSNR over flipped)"
    config = {"attacks": {"fgsm": {}, "pgd": {}}}
    files = ("table2.csv", "table2.md")
    example = {"metrics": ["l2"], "attacks": {"fgsm": {}, "pgd": {"steps": 3}}}
