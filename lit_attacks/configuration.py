"""Config checking shared by ``bench.py`` and the table plug-ins: one-line errors with suggestions."""
from __future__ import annotations

import difflib
import math
from typing import Any, Dict, Iterable, List, Optional

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
