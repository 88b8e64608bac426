"""Attacks on perceptual similarity metrics, and robust metrics, with PyTorch Lightning.

``lit_attacks.evaluate(metric, ...)``: any metric (yours too) under a leaderboard protocol (:mod:`lit_attacks.api`).
"""
from lit_attacks.version import __version__, code_fingerprint  # noqa: F401 (the package's version and code)


def evaluate(metric, data=None, protocol="leaderboard_quick", **kwargs):
    """Evaluate any metric with a leaderboard protocol; returns its results entry (:func:`lit_attacks.api.evaluate`)."""
    from lit_attacks.api import evaluate as run

    return run(metric, data=data, protocol=protocol, **kwargs)
