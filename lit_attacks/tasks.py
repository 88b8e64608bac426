"""Every prediction LightningModule of the project behind one registry of tasks, created by name.

A task is a ``pl.LightningModule`` whose ``predict_step`` returns a typed output (:mod:`lit_attacks.attacks.output`:
one row per sample, gathered exactly once under DDP by :class:`lit_attacks.callbacks.samples.SampleRows`):

- ``score``: the distances s0, s1 of a metric (Table 1; :class:`lit_attacks.scoring.ScoreModule`);
- ``attack:<name>``: any registered attack (:mod:`lit_attacks.attacks`), e.g. ``attack:pgd``;
- ``transfer_generate`` / ``transfer_score``: adversarial variants on a source metric, scored by a target (Table 3);
- ``certify``: randomized-smoothing certification (:class:`lit_attacks.certify.CertifyModule`);
- ``lipschitz``: LipSim's Lipschitz certificate, and ours (:class:`lit_attacks.lipschitz.LipschitzModule`);
- ``gradient_check``: the prey's gradient at the clean point (:class:`lit_attacks.gradcheck.GradientCheck`).

    >>> module = create_task("attack:pgd", metric="l2", steps=5)
    >>> trainer.predict(module, datamodule=dm)

Each module registers itself where it is defined (``@TASKS.register("score")``); this module imports them.
"""
from __future__ import annotations

from typing import Any, List

import pytorch_lightning as pl

from lit_attacks.attacks import ATTACKS
from lit_attacks.certify import CertifyModule  # noqa: F401 (registers "certify")
from lit_attacks.gradcheck import GradientCheck  # noqa: F401 (registers "gradient_check")
from lit_attacks.lipschitz import LipschitzModule  # noqa: F401 (registers "lipschitz")
from lit_attacks.registry import TASKS
from lit_attacks.scoring import ScoreModule  # noqa: F401 (registers "score")
from lit_attacks.transfer import TransferGenerator  # noqa: F401 (registers "transfer_generate", "transfer_score")


@TASKS.register_prefix("attack", what="a registered attack as a predict step (AttackOutput rows)")
def _attack(name: str, metric: str = "lpips_alex", **kwargs: Any) -> pl.LightningModule:
    return ATTACKS.get(name)(metric=metric, **kwargs)


def create_task(name: str, **kwargs: Any) -> pl.LightningModule:
    """The prediction module registered as ``name`` (``score``, ``attack:pgd``, ...); unknown names raise
    ``KeyError`` with close matches."""
    return TASKS.get(name)(**kwargs)


def list_tasks() -> List[str]:
    return TASKS.names() + [f"attack:{a}" for a in ATTACKS.names()]
