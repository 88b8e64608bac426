"""A small name -> factory registry with suggestions for unknown names (timm/pyiqa style)."""
from __future__ import annotations

import difflib
import fnmatch
import functools
from typing import Any, Callable, Dict, List


class Registry:
    """Maps names to factory callables.

    Args:
        kind: what is registered ("metric", "attack"), used in error messages.

    Example:
        >>> METRICS = Registry("metric")
        >>> @METRICS.register("l2")
        ... def l2(**kw): ...
        >>> METRICS.create("l2")
    """

    def __init__(self, kind: str, argument: str = "path", example: str = "path/to/last.ckpt") -> None:
        self.kind = kind
        self.argument, self.example = argument, example  # what follows "<prefix>:" in a prefixed name
        self._factories: Dict[str, Callable[..., Any]] = {}
        self._prefixes: Dict[str, Callable[..., Any]] = {}
        self._retired: Dict[str, str] = {}
        self._absent: Dict[str, tuple] = {}  # name -> (what it would be, why it is not registered)
        self._info: Dict[str, Dict[str, str]] = {}  # name or prefix -> what its registration says of it

    def register(self, name: str, **info: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` under ``name``, with ``info`` (e.g. ``what=...``: the documentation's
        description; a factory without a docstring gets ``what`` as one); a duplicate name raises."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = fn
            self._keep_info(name, fn, info)
            return fn

        return deco

    def register_prefix(self, prefix: str, **info: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a parametrised family: ``"<prefix>:<arg>"`` -> ``fn(arg, ...)``."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if prefix in self._prefixes or prefix in self._factories:
                raise KeyError(f"{self.kind} prefix {prefix!r} is already registered")
            self._prefixes[prefix] = fn
            self._keep_info(prefix, fn, info)
            return fn

        return deco

    def _keep_info(self, name: str, fn: Callable[..., Any], info: Dict[str, str]) -> None:
        self._info[name] = dict(info)
        if not getattr(fn, "__doc__", None) and info.get("what"):
            try:
                fn.__doc__ = f"{info['what']}."
            except (AttributeError, TypeError):  # a class or builtin whose docstring cannot be set
                pass

    def info(self, name: str) -> Dict[str, str]:
        """What the registration of ``name`` (a name or a prefix) says of it (``{}``: nothing)."""
        return dict(self._info.get(name, {}))

    def prefixes(self) -> List[str]:
        return sorted(self._prefixes)

    def retire(self, name: str, why: str) -> None:
        """A name that no longer stands for a factory (e.g. renamed because it was misleading): ``get``
        raises ``KeyError`` with ``why``."""
        self._retired[name] = why

    def absent(self, name: str, what: str, why: str) -> None:
        """A name users will look for that has no factory (no public code or weights, or not ported yet): ``get``
        raises ``KeyError`` saying why, and the documentation lists it."""
        self._absent[name] = (what, why)

    def absent_names(self) -> Dict[str, tuple]:
        return dict(sorted(self._absent.items()))

    def get(self, name: str) -> Callable[..., Any]:
        """The factory for ``name``; an unknown name raises with close matches."""
        if name in self._absent:
            raise KeyError(f"{self.kind} {name!r} is not available: {self._absent[name][1]}")
        if name in self._retired:
            raise KeyError(f"{self.kind} {name!r} was retired: {self._retired[name]}")
        prefix, sep, arg = name.partition(":")
        if sep and prefix in self._prefixes:
            if not arg:
                raise KeyError(f"{self.kind} {name!r}: expected {prefix}:<{self.argument}>, e.g. "
                               f"{prefix}:{self.example}")
            return functools.partial(self._prefixes[prefix], arg)
        if name not in self._factories:
            same_case = [n for n in self._factories if n.lower() == name.lower()]
            close = same_case or difflib.get_close_matches(name, self._factories, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
            known = self.names() + [f"{p}:<{self.argument}>" for p in sorted(self._prefixes)]
            raise KeyError(f"unknown {self.kind} {name!r}{hint} Known {self.kind}s: {', '.join(known)}.")
        return self._factories[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> List[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._factories if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        prefix, sep, arg = name.partition(":")
        return name in self._factories or bool(sep and arg and prefix in self._prefixes)

    def __len__(self) -> int:
        return len(self._factories)


#: Every prediction LightningModule (scoring, attacks, transfer, certification): see :mod:`lit_attacks.tasks`.
TASKS = Registry("task", argument="attack", example="pgd")
