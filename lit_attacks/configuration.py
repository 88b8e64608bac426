"""Config checking shared by ``bench.py`` and the table plug-ins: one-line errors with suggestions."""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from lit_attacks.safe_files import InputError


class ConfigError(InputError):
    """A bad config file, key or value; the message is one line naming the problem."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error (PyYAML keeps the last)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key != "<<" and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (each key may appear once)",
                                                    key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=True))


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
# YAML 1.2 numbers: PyYAML follows YAML 1.1, whose floats need a dot, so ``1e-12`` would be the string "1e-12"; here
# it is the number (as in YAML 1.2, JSON and Python). Only the loader of this project's configs changes.
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml_text(text: str) -> Any:
    """Parse YAML safely (no tags that build Python objects) and strictly (no repeated keys)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def suggest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, else an empty string."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(mapping: Dict[str, Any], known: Iterable[str], where: str) -> None:
    """Raise on the first key of ``mapping`` not in ``known``, with a suggestion and the known keys."""
    known = list(known)
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{where}unknown key {key!r}{suggest(str(key), known)}; known: {', '.join(known)}")


def as_name_list(key: str, value: Any, where: str) -> Optional[List[str]]:
    """A list of names from a list or a comma-separated string (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: {key} must be a list of names or a comma-separated string, got {value!r}")


def check_value(key: str, value: Any, kind: str, minimum: Optional[float] = None, optional: bool = False,
                choices: Optional[Iterable[str]] = None, maximum: Optional[float] = None) -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` is of ``kind`` ("int", "number", "bool", "str",
    "names") and at least ``minimum``; ``optional`` allows None."""
    if value is None and optional:
        return
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str),
          "names": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}[kind](value)
    what = {"int": "an integer", "number": "a finite number", "bool": "true or false", "str": "a string",
            "names": "a list of names"}[kind]
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be at most {maximum:g}, got {value!r}")
    if ok and choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    if not ok:
        bound = f" >= {minimum:g}" if minimum is not None else ""
        hint = " (a quoted string in YAML)" if kind == "bool" and isinstance(value, str) else ""
        raise ConfigError(f"{key} must be {what}{bound}{' or null' if optional else ''}, got {value!r}{hint}")


KINDS = ("str", "int", "number", "bool", "names")


@dataclass(frozen=True)
class Option:
    """One config key.

    Attributes:
        key: the YAML key (``batch_size``); its flag is ``--batch-size``.
        default: the built-in default.
        kind: "str", "int", "number" (finite), "bool" or "names" (a list of names, or a comma-separated string).
        help: the flag's help (None: the flag has no help line).
        optional: None is a valid value.
        minimum, maximum: bounds of a number.
        choices: the allowed values of a string.
        switch: the flag takes no value and sets True (``--save-adv``); else a bool flag takes true or false.
    """

    key: str
    default: Any
    kind: str = "str"
    help: Optional[str] = None
    optional: bool = False
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None
    switch: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.key}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def add_to(self, parser) -> None:
        """Add the typed flag to an (argparse or jsonargparse) parser whose ``argument_default`` is SUPPRESS."""
        kw: Dict[str, Any] = {"dest": self.key, "help": self.help}
        if self.switch:
            kw["action"] = "store_true"
        elif self.kind == "bool":
            kw["type"] = bool
        elif self.kind in ("int", "number"):
            kw["type"] = int if self.kind == "int" else float
        elif self.choices is not None:
            kw["choices"] = list(self.choices)
        parser.add_argument("--" + self.key.replace("_", "-"), **kw)

    def check(self, cfg: Dict[str, Any]) -> None:
        """Check the value of the key (one-line ConfigError); a names value is a list by now (the config's merge
        turns a comma-separated string into one)."""
        check_value(self.key, cfg[self.key], self.kind, self.minimum, self.optional, choices=self.choices,
                    maximum=self.maximum)


def defaults(options: Sequence[Option]) -> Dict[str, Any]:
    return {o.key: o.default for o in options}


def check_all(options: Sequence[Option], cfg: Dict[str, Any]) -> None:
    for o in options:
        o.check(cfg)
