"""Known third-party warnings, silenced where we make the call that triggers them (never process-wide),
so a warning a user sees is about their run."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

# (message regex, category): each one is understood and harmless here.
KNOWN = [
    # torchvision, when lpips / stlpips build their backbones with `pretrained=False` (we load weights ourselves)
    (r"The parameter 'pretrained' is deprecated", UserWarning),
    (r"Arguments other than a weight enum or `None` for 'weights' are deprecated", UserWarning),
    # pytorch_lightning's own use of a deprecated torch pytree API
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    # our shard loaders know their exact number of batches, workers included (ShardLoader)
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # attack and scoring loops are compute-bound; loader workers would not help
    (r"does not have many workers", UserWarning),
]


@contextlib.contextmanager
def third_party_warnings_silenced() -> Iterator[None]:
    """Within the block, the :data:`KNOWN` third-party warnings are not shown; every other warning is."""
    with warnings.catch_warnings():
        for message, category in KNOWN:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


class _NoAdverts:
    """A logging filter dropping Lightning's product tips (a line about installing litlogger on every run)."""

    def filter(self, record) -> bool:
        return "Tip: For seamless cloud logging" not in record.getMessage()


def lightning_adverts_silenced() -> None:
    """Drop Lightning's product tips from its rank-zero log (its device and run information stays)."""
    import logging

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
