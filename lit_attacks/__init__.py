"""Attacks on perceptual similarity metrics, and robust metrics, with PyTorch Lightning.

``lit_attacks.evaluate(metric, ...)``: any metric (yours too) under a leaderboard protocol (:mod:`lit_attacks.api`).
"""
import os as _os
import sys as _sys

from lit_attacks.version import __version__, code_fingerprint  # noqa: F401 (the package's version and code)


def _matplotlib_in_cache() -> None:
    """matplotlib (imported by torchmetrics, so by nearly every module here) keeps its font cache and config under the
    home folder unless ``MPLCONFIGDIR`` says otherwise, and reads the variable once, at import: before that import, a
    variable the user has not set points into this project's cache (``$LIT_ATTACKS_CACHE/matplotlib``)."""
    if "matplotlib" not in _sys.modules and not _os.environ.get("MPLCONFIGDIR"):
        from lit_attacks.datamodules.cache import cache_root

        _os.environ["MPLCONFIGDIR"] = str(cache_root() / "matplotlib")


_matplotlib_in_cache()


def evaluate(metric, data=None, protocol="leaderboard_quick", **kwargs):
    """Evaluate any metric with a leaderboard protocol; returns its results entry (:func:`lit_attacks.api.evaluate`)."""
    from lit_attacks.api import evaluate as run

    return run(metric, data=data, protocol=protocol, **kwargs)
