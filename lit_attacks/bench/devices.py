"""Lightning device arguments of a bench run, checked before any work, and DDP that never waits silently.

:func:`resolve_devices` turns ``gpus`` / ``accelerator`` / ``devices`` / ``strategy`` / ``num_nodes`` into
Trainer arguments and refuses, in one line, names Lightning does not know and devices that are not
there. :func:`trainer_kwargs` gives DDP a rendezvous timeout (``$LIT_ATTACKS_DDP_TIMEOUT`` seconds,
default 300) so a multi-node run whose other nodes never come fails with a message naming the address,
port and world size it waited for, instead of waiting until killed.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Dict

from lit_attacks.configuration import ConfigError, suggest
from lit_attacks.safe_files import first_line

ENV_DDP_TIMEOUT = "LIT_ATTACKS_DDP_TIMEOUT"
DEFAULT_DDP_TIMEOUT = 300.0
GPU_NAMES = ("gpu", "cuda")


class RunError(RuntimeError):
    """A run that started failed (exit code 1); the message is one line naming what and why."""


def _accelerators() -> list:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    return sorted(set(AcceleratorRegistry.available_accelerators()) | {"gpu", "auto"})


def _strategies() -> list:
    from pytorch_lightning.strategies import StrategyRegistry

    return sorted(set(StrategyRegistry.available_strategies()) | {"auto"})


def resolve_devices(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Trainer device arguments (``accelerator``, ``devices``, ``strategy``, ``num_nodes``); raises
    :class:`ConfigError` naming the flag for an unknown accelerator or strategy or a device that is absent."""
    import torch

    visible = torch.cuda.device_count()
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
    if cfg["accelerator"] is not None:
        acc, dev = cfg["accelerator"], cfg["devices"] or 1
        if acc not in _accelerators():
            raise ConfigError(f"--accelerator {acc!r}: unknown{suggest(acc, _accelerators())}; known: "
                              f"{', '.join(_accelerators())}")
        if acc in GPU_NAMES and dev > visible:
            raise ConfigError(f"--accelerator {acc} --devices {dev}: {visible} GPU(s) visible{seen}; use "
                              "--accelerator cpu")
    elif cfg["gpus"] is not None:
        if cfg["gpus"] > visible:
            raise ConfigError(f"--gpus {cfg['gpus']}: only {visible} GPU(s) visible{seen}; use --gpus 0 for the CPU")
        acc, dev = ("gpu", cfg["gpus"]) if cfg["gpus"] > 0 else ("cpu", cfg["devices"] or 1)
    else:
        acc, dev = ("gpu", 1) if visible else ("cpu", cfg["devices"] or 1)
    if acc == "cpu" and dev > (os.cpu_count() or 1) * 4:
        raise ConfigError(f"--devices {dev}: {dev} CPU processes on {os.cpu_count()} cores; use at most "
                          f"{(os.cpu_count() or 1) * 4}")
    strategy = cfg["strategy"]
    if strategy not in _strategies():
        raise ConfigError(f"--strategy {strategy!r}: unknown{suggest(strategy, _strategies())}; known: "
                          f"{', '.join(_strategies())}")
    if strategy == "auto" and dev * cfg["num_nodes"] > 1:
        strategy = "ddp"
    return {"accelerator": acc, "devices": dev, "strategy": strategy, "num_nodes": cfg["num_nodes"]}


def ddp_timeout() -> float:
    """Seconds DDP waits for every process to join (``$LIT_ATTACKS_DDP_TIMEOUT``, default 300)."""
    raw = os.environ.get(ENV_DDP_TIMEOUT, "")
    if not raw:
        return DEFAULT_DDP_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{ENV_DDP_TIMEOUT}={raw!r}: must be a positive number of seconds")
    return value


def world_size(devices: Dict[str, Any]) -> int:
    return int(devices["devices"]) * int(devices["num_nodes"])


def trainer_kwargs(devices: Dict[str, Any]) -> Dict[str, Any]:
    """Trainer arguments; plain ``ddp`` becomes a DDPStrategy with the rendezvous timeout."""
    kw = dict(devices)
    if kw["strategy"] == "ddp" and world_size(devices) > 1:
        from pytorch_lightning.strategies import DDPStrategy

        kw["strategy"] = DDPStrategy(timeout=datetime.timedelta(seconds=ddp_timeout()))
    return kw


def waiting_line(devices: Dict[str, Any]) -> str:
    """What a multi-process run waits for, said before it waits."""
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = os.environ.get("MASTER_PORT", "a free port")
    node = os.environ.get("NODE_RANK", "0")
    return (f"DDP: waiting for {world_size(devices)} processes ({devices['num_nodes']} node(s) x {devices['devices']} "
            f"device(s)) to join at {addr}:{port} as node {node}; giving up after {ddp_timeout():g} s "
            f"(${ENV_DDP_TIMEOUT})")


def build_trainer(devices: Dict[str, Any], progress_bar: bool = False):
    """The run's Trainer, built once per process before any work (what Lightning refuses is a one-line
    :class:`ConfigError`; a Trainer launches nothing until it runs). Every cell predicts with it: each gives its own
    callbacks (:meth:`lit_attacks.bench.runner.Bench.predict`)."""
    import pytorch_lightning as pl

    from lit_attacks.quiet import third_party_warnings_silenced

    try:
        with third_party_warnings_silenced():
            return pl.Trainer(**trainer_kwargs(devices), logger=False, enable_checkpointing=False,
                              enable_progress_bar=progress_bar, enable_model_summary=False, inference_mode=False)
    except (ValueError, RuntimeError, TypeError, ImportError) as e:
        raise ConfigError(f"--accelerator {devices['accelerator']} --devices {devices['devices']} --strategy "
                          f"{devices['strategy']} --num-nodes {devices['num_nodes']}: {first_line(e)}") from None
