"""bench.py configuration: built-in defaults < YAML config (``--config``) < command-line flags.

A config is a flat YAML mapping. The data and run keys are declared in :mod:`lit_attacks.bench.options`; every
result table (:mod:`lit_attacks.tables`) adds the keys it owns (Table 2 ``attacks``, the sweep ``sweep``, Table 3
``transfer``, ``source``, ``rmse_max``, ``flowadv_width``) with its own flags and checks. Unknown keys, names and
values are reported in one line before any work starts (:class:`ConfigError`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from lit_attacks.bench.options import DATA_OPTIONS, RUN_OPTIONS
from lit_attacks.configuration import (ConfigError, as_name_list, check_all, check_keys, defaults, load_yaml_text,
                                       yaml_problem)
from lit_attacks.metrics import METRICS
from lit_attacks.safe_files import component, read_text
from lit_attacks.tables import tables
from lit_attacks.wandb_utils import check_env_mode



def _presets() -> Path:
    """The presets folder: the installed ``lit_attacks.configs`` (the repository's ``configs/`` in a checkout or an
    editable install; package data after ``pip install .``)."""
    try:
        import lit_attacks.configs as configs
    except ImportError:  # an editable install made before configs/ was a package
        return Path(__file__).resolve().parents[2] / "configs"
    return Path(configs.__file__).resolve().parent


CONFIG_DIR = _presets() / "bench"
CODE_PREFIX = "py:"  # a metric that is code: lit_attacks.metrics.user
DEFAULT_CONFIG = CONFIG_DIR / "quick.yaml"

# The data keys, then each table's keys (in table order), then the run keys.
DEFAULTS: Dict[str, Any] = {**defaults(DATA_OPTIONS), **{k: v for t in tables() for k, v in t.config.items()},
                             **defaults(RUN_OPTIONS)}
# Lists of names (a comma-separated string is accepted): the declared "names" keys and the tables' other list keys.
LIST_KEYS = tuple(o.key for o in DATA_OPTIONS + RUN_OPTIONS + tuple(o for t in tables() for o in t.options)
                  if o.kind == "names") + tuple(k for t in tables() for k in t.list_keys)

__all__ = ["CONFIG_DIR", "ConfigError", "DEFAULTS", "DEFAULT_CONFIG", "load_yaml", "merge", "validate"]


def find_config(path: str | Path) -> Path:
    """``path`` when it exists; else the preset it names (``table2``, ``table2.yaml`` or ``configs/bench/table2.yaml``
    from another folder or an installed package); else ``path`` (reported as missing)."""
    p = Path(path)
    if p.exists():
        return p
    name = p.name if p.name.endswith(".yaml") else f"{p.name}.yaml"
    preset = CONFIG_DIR / name
    return preset if preset.is_file() and (len(p.parts) == 1 or p.parts[-2:-1] == ("bench",)) else p


def load_yaml(path: str | Path) -> Dict[str, Any]:
    p = find_config(path)
    if not p.exists():
        names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"--config {path}: no such file; configs in {CONFIG_DIR}: {', '.join(names)}")
    try:
        cfg = load_yaml_text(read_text(p, "--config", 16 << 20, ConfigError)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(cfg).__name__}")
    check_keys(cfg, DEFAULTS, f"{path}: ")
    return cfg


def code_named(value: Any, where: str = "") -> List[Tuple[str, str]]:
    """(key, spec) of every ``py:`` string anywhere in a config's values (lists and mappings included): the code it
    would import and run."""
    if isinstance(value, str):
        return [(where, value)] if value.strip().startswith(CODE_PREFIX) else []
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in code_named(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in code_named(v, f"{where}[{i}]")]
    return []


def check_code(config: Dict[str, Any], path: str, allow_code: bool) -> None:
    """The trust boundary of configs: a config file is data, and the code it names (``py:module:factory`` metrics, at
    any key) runs only when the user says so (``--allow-code``; ``lit_attacks.evaluate(..., allow_code=True)``). A
    ``py:`` metric on the command line is the user's own and needs no flag. (train.py's configs are code by design:
    docs/training.md.)"""
    hits = code_named(config)
    if hits and not allow_code:
        key, spec = hits[0]
        more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
        raise ConfigError(f"{path}: {key} names code to import and run ({spec[:80]}){more}; code named by a config "
                          "file runs only with --allow-code: read the file, then add the flag")


def merge(config: Dict[str, Any], flags: Dict[str, Any], config_name: str = "config") -> Dict[str, Any]:
    """defaults < config < flags. ``flags`` holds only the flags given on the command line; each table
    takes the flags that need more than a plain override (``--attacks``, ``--param``, ``--sweep-eps``)."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(config))
    flags = dict(flags)
    items = flags.pop("attacks_param", [])
    metric_params = [i for i in items if i.startswith("py:")]  # --param py:module:factory.KEY=VALUE
    if len(metric_params) < len(items):
        flags["attacks_param"] = [i for i in items if not i.startswith("py:")]
    for t in tables():
        t.configure(cfg, flags, config_name)
    cfg.update(flags)
    for key in LIST_KEYS:
        cfg[key] = as_name_list(key, cfg[key], config_name)
    cfg["metrics"] = with_metric_params(cfg["metrics"], metric_params)
    if cfg["out"] is None:
        cfg["out"] = str(Path("results") / cfg["name"])
    return cfg


def with_metric_params(metrics: List[str], items: List[str]) -> List[str]:
    """``--param py:module:factory.KEY=VALUE``: the keyword argument joins the metric's name
    (``py:module:factory:KEY=VALUE``), which identifies it everywhere (cells, tables, results entries)."""
    metrics = list(metrics)
    for item in items:
        lhs, eq, value = item.partition("=")
        spec, dot, key = lhs.rpartition(".")
        if not eq or not dot or not key.isidentifier() or ":" in value:
            raise ConfigError(f"--param {item!r}: expected py:MODULE:FACTORY.KEY=VALUE (a value without ':'), e.g. "
                              "py:mymetrics:build.width=32")
        hits = [i for i, m in enumerate(metrics) if m == spec or m.startswith(spec + ":")]
        if not hits:
            raise ConfigError(f"--param {item!r}: metric {spec!r} is not among --metrics ({','.join(metrics)})")
        for i in hits:
            metrics[i] += f":{key}={value}"
    return metrics


def expand_metrics(names: List[str]) -> List[str]:
    """``all`` stands for every registered metric (in name order), wherever it appears in the list; repeated
    names are kept once."""
    out: List[str] = []
    for n in names:
        for m in (METRICS.names() if n == "all" else [n]):
            if m not in out:
                out.append(m)
    return out


def validate(cfg: Dict[str, Any]) -> None:
    """Types, names, parameters and values; raises :class:`ConfigError` (one line) on the first problem."""
    check_all(DATA_OPTIONS + RUN_OPTIONS, cfg)
    component(cfg["split"], "split", ConfigError)  # folder names in the cache and data folders
    component(cfg["name"], "name", ConfigError)  # results/<name>
    for c in cfg["categories"] or []:
        component(c, "categories: category", ConfigError)
    if cfg["wandb"] != "disabled":
        check_env_mode()
    if cfg["data"] == "builtin":  # the built-in set, overriding a config's BAPPS path from the command line
        cfg["data"] = None
    if not cfg["metrics"]:
        raise ConfigError("metrics is empty")
    cfg["metrics"] = expand_metrics(cfg["metrics"])
    for m in cfg["metrics"]:
        try:
            METRICS.get(m)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
    for t in tables():
        t.validate(cfg)
