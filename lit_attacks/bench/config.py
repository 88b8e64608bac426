"""bench.py configuration: built-in defaults < YAML config (``--config``) < command-line flags.

A config is a flat YAML mapping whose keys are the ones in :data:`DEFAULTS`; ``attacks`` maps attack
name -> parameters (or is a list of names), ``sweep`` describes the epsilon sweep (robustness curves).
Unknown keys, names and values are reported in one line before any work starts (:class:`ConfigError`).
"""
from __future__ import annotations

import copy
import difflib
import inspect
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs" / "bench"
DEFAULT_CONFIG = CONFIG_DIR / "quick.yaml"

DEFAULTS: Dict[str, Any] = {
    "name": "default",           # results/<name>/ and the W&B run name
    "out": None,                 # results folder (default results/<name>)
    "data": None,                # BAPPS tree root or shard folder; None: built-in synthetic set
    "split": "val",
    "categories": None,          # list of categories (None: all)
    "builtin_n": 40,             # samples per category of the built-in set
    "seed": 0,                   # seed of the built-in set, of random backbones and of Lightning
    "metrics": ["l2", "ssim", "lpips_alex"],
    "attacks": {"fgsm": {}, "pgd": {}},
    "sweep": None,               # {"attack": "pgd", "eps": [...], "steps": 30}: PGD robustness curves
    "transfer": False,           # Table 3
    "source": ["lpips_alex"],
    "rmse_max": 8.0,
    "flowadv_width": None,
    "pretrained": True,
    "weights_dir": None,
    "batch_size": 64,
    "num_workers": 0,
    "batch_invariant": False,
    "save_adv": False,
    "examples": 6,               # example triplets per attack cell in the image grid
    "gpus": None,                # None: 1 GPU if one is visible, else the CPU; 0: CPU; N: DDP on N GPUs
    "accelerator": None,         # explicit Lightning accelerator (e.g. "cpu" with devices 2 for CPU DDP)
    "devices": None,
    "strategy": "auto",
    "num_nodes": 1,
    "wandb": "auto",             # auto | online | offline | disabled
    "wandb_project": "lit-attacks",
}
SWEEP_KEYS = {"attack", "eps", "steps"}
LIST_KEYS = ("metrics", "categories", "source")


class ConfigError(ValueError):
    """A bad config file, key or value; the message is one line naming the problem."""


def _suggest(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_yaml(path: str | Path) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"--config {path}: no such file; configs in {CONFIG_DIR}: {', '.join(names)}")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(cfg).__name__}")
    check_keys(cfg, DEFAULTS, f"{path}: ")
    return cfg


def check_keys(mapping: Dict[str, Any], known, where: str) -> None:
    """Raise on the first key of ``mapping`` not in ``known``, with a suggestion and the known keys."""
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{where}unknown key {key!r}{_suggest(str(key), known)}; known: {', '.join(known)}")


def _as_list(key: str, value: Any, where: str) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: {key} must be a list of names or a comma-separated string, got {value!r}")


def _as_attacks(value: Any, where: str) -> Dict[str, Dict[str, Any]]:
    if value is None:
        return {}
    if isinstance(value, (str, list, tuple)):
        return {a: {} for a in _as_list("attacks", value, where)}
    if isinstance(value, dict):
        out = {}
        for a, kw in value.items():
            if kw is not None and not isinstance(kw, dict):
                raise ConfigError(f"{where}: attacks.{a} must be a mapping of parameters, got {kw!r}")
            out[str(a)] = dict(kw or {})
        return out
    raise ConfigError(f"{where}: attacks must be a mapping (attack -> parameters) or a list, got {value!r}")


def merge(config: Dict[str, Any], flags: Dict[str, Any], config_name: str = "config") -> Dict[str, Any]:
    """defaults < config < flags. ``flags`` holds only the flags given on the command line.

    ``--attacks a,b`` selects attacks and keeps the config's parameters of those attacks;
    ``--param a.k=v`` entries (``flags["param"]``) override single parameters last.
    """
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in config.items():
        cfg[key] = _as_attacks(value, config_name) if key == "attacks" else copy.deepcopy(value)
    cfg["attacks"] = _as_attacks(cfg["attacks"], config_name)
    for key, value in flags.items():
        if key == "param":
            continue
        if key == "attacks":
            chosen = _as_list("attacks", value, "--attacks") or []
            cfg["attacks"] = {a: cfg["attacks"].get(a, {}) for a in chosen}
        else:
            cfg[key] = value
    for key in LIST_KEYS:
        cfg[key] = _as_list(key, cfg[key], config_name)
    for item in flags.get("param", []):
        attack, key, value = parse_param(item)
        if attack not in cfg["attacks"]:
            raise ConfigError(f"--param {item!r}: attack {attack!r} is not among --attacks "
                              f"({','.join(cfg['attacks']) or 'none'})")
        cfg["attacks"][attack][key] = value
    if cfg["out"] is None:
        cfg["out"] = str(Path("results") / cfg["name"])
    return cfg


def parse_param(item: str):
    """``"pgd.steps=40"`` -> ("pgd", "steps", 40); the value is parsed as YAML."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--param {item!r}: expected ATTACK.KEY=VALUE, e.g. pgd.steps=40")
    lhs, value = item.split("=", 1)
    attack, key = lhs.split(".", 1)
    return attack, key, yaml.safe_load(value)


def attack_parameters(attack: str) -> set:
    from lit_attacks.attacks import ATTACKS

    reserved = {"metric", "pretrained", "weights_dir", "keep_images", "batch_invariant"}
    return set(inspect.signature(ATTACKS.get(attack)).parameters) - reserved


def validate(cfg: Dict[str, Any]) -> None:
    """Names, parameters and values; raises :class:`ConfigError` (one line) on the first problem."""
    from lit_attacks.attacks import ATTACKS
    from lit_attacks.metrics import METRICS

    if not cfg["metrics"]:
        raise ConfigError("metrics is empty")
    for where, names in (("", cfg["metrics"]), ("--source: ", cfg["source"] or [])):
        for m in names:
            try:
                METRICS.get(m)
            except KeyError as e:
                raise ConfigError(where + str(e.args[0])) from None
    for attack, kw in cfg["attacks"].items():
        try:
            ATTACKS.get(attack)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
        allowed = attack_parameters(attack)
        for key in kw:
            if key not in allowed:
                raise ConfigError(f"attack {attack} has no parameter {key!r}{_suggest(key, allowed)}; "
                                  f"known: {', '.join(sorted(allowed))}")
        try:  # bad values (eps <= 0, steps < 1, ...) fail now, not after hours
            ATTACKS.get(attack)(metric="l2", **kw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"parameters of {attack}: {e}") from None
    validate_sweep(cfg["sweep"])
    for key in ("batch_size", "builtin_n", "num_nodes"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {cfg[key]!r}")
    if cfg["rmse_max"] <= 0:
        raise ConfigError(f"rmse_max must be > 0, got {cfg['rmse_max']}")
    if cfg["wandb"] not in ("auto", "online", "offline", "disabled"):
        raise ConfigError(f"wandb must be auto, online, offline or disabled, got {cfg['wandb']!r}")
    if cfg["gpus"] is not None and (not isinstance(cfg["gpus"], int) or cfg["gpus"] < 0):
        raise ConfigError(f"gpus must be an integer >= 0, got {cfg['gpus']!r}")


def validate_sweep(sweep: Any) -> None:
    if sweep is None:
        return
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep must be a mapping with attack, eps, steps; got {sweep!r}")
    check_keys(sweep, sorted(SWEEP_KEYS), "sweep: ")
    if sweep.get("attack", "pgd") != "pgd":
        raise ConfigError(f"sweep.attack: only pgd is swept, got {sweep['attack']!r}")
    eps = sweep.get("eps")
    if not isinstance(eps, list) or not eps or not all(isinstance(e, (int, float)) and e > 0 for e in eps):
        raise ConfigError(f"sweep.eps must be a non-empty list of positive numbers, got {eps!r}")
    if not isinstance(sweep.get("steps", 30), int) or sweep.get("steps", 30) < 1:
        raise ConfigError(f"sweep.steps must be an integer >= 1, got {sweep.get('steps')!r}")


def sweep_points(sweep: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """PGD parameters per epsilon. alpha = eps / steps, so eps 0.03 with 30 steps is the official PGD."""
    if not sweep:
        return []
    steps = int(sweep.get("steps", 30))
    return [{"eps": float(e), "alpha": float(e) / steps, "steps": steps} for e in sorted(sweep["eps"])]
