"""What a result table is: a plug-in that owns its config keys, its cells, its columns and its outputs.

``bench.py`` knows no table by name. It asks every registered :class:`Table` (in ``order``) for its
config keys and flags, runs the cells of the enabled ones, and at the end asks each for its rows,
files, figures and W&B panels. Adding a table is adding one module here (plus, if wanted, a YAML preset).

A :class:`Cell` is one resumable unit of work; its ``compute(ctx)`` runs Trainers through the run
(:class:`Run`), saves per-sample rows with ``ctx.save_rows`` (rank 0 writes, the run records the
file's hash and column types) and returns a small JSON-able payload (labels, aggregates).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

from lit_attacks.datamodules.shards import sha256
from lit_attacks.registry import Registry
from lit_attacks.safe_files import file_stem

TABLES = Registry("table")


def slug(name: str) -> str:
    """A metric name usable in file names and cell ids, unique for distinct names: a registered name as it is,
    ``rlpips:runs/x/last.ckpt`` -> ``rlpips_runs_x_last.ckpt-<hash>`` (:func:`lit_attacks.safe_files.file_stem`)."""
    return file_stem(name)


def number_id(x: float, fmt: str = "g") -> str:
    """A number in a cell id or file name, unique for distinct values: ``0.03`` -> ``0.03``, ``8/255`` ->
    ``0.03137254901960784`` (``fmt`` where it gives the number back exactly, else every digit)."""
    short = format(x, fmt)
    return short if float(short) == float(x) else repr(float(x))


def metric_file_fingerprint(name: str) -> Optional[str]:
    """sha256 of the file behind a parametrised metric (``rlpips:<checkpoint>``), so a retrained checkpoint
    at the same path invalidates completed cells; None for registry metrics."""
    prefix, sep, arg = name.partition(":")
    p = Path(arg).expanduser()
    if not sep or not p.is_file():
        return None
    return sha256(p)[:20]


class CellContext(Protocol):
    """Given to :attr:`Cell.compute`: where a cell puts its files."""

    def save_rows(self, rel: str, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> Path:
        """Write per-sample rows as ``<out>/<rel>`` (rank 0) and record the file; returns its path."""

    def track(self, rel: str) -> Path:
        """Record a file or folder the cell wrote under ``<out>`` (hashed; a missing or changed one reruns the cell)."""


class Run(Protocol):
    """What a table sees of the bench run (implemented by :class:`lit_attacks.bench.runner.Bench`)."""

    cfg: Dict[str, Any]
    out: Path
    devices: Dict[str, Any]
    source: Dict[str, Any]
    is_zero: bool
    labels: Dict[str, str]

    def predict(self, module, callbacks: list, datamodule) -> None:
        """``trainer.predict`` with the run's devices (DDP) and callbacks."""

    def datamodule(self, unanimous_only: bool):
        """The run's BAPPS DataModule (all samples, or the unanimous ones attacks use)."""

    def metric_options(self) -> Dict[str, Any]:
        """``pretrained``, ``weights_dir`` for building metrics and attacks."""

    def rows(self, cell_id: str, rel: str) -> List[Dict[str, Any]]:
        """Per-sample rows a cell saved as ``rel`` (from memory, or read back with their types)."""

    def say(self, line: str) -> None:
        """A progress line (rank 0, unless quiet)."""

    def clear(self, rel: str) -> None:
        """Remove what bench wrote at or below ``rel`` (rank 0; files its manifest lists, never through a link)."""


@dataclass
class Cell:
    """One resumable unit of bench work.

    Attributes:
        id: unique, file-safe (``pgd-lpips_alex``); ``cells/<id>.json`` marks it complete.
        what: the progress line's description.
        spec: JSON-able description of what the result depends on besides the run's data and
            weights (parameters, checkpoint hashes); fingerprinted.
        compute: ``compute(ctx) -> payload`` (a JSON-able dict), run on every rank.
        info: what the table needs to know about the cell later (metric, attack, ...).
    """

    id: str
    what: str
    spec: Dict[str, Any]
    compute: Callable[[CellContext], Dict[str, Any]]
    info: Dict[str, Any] = field(default_factory=dict)


class Table:
    """Base of the result tables. Class-level hooks configure; an instance runs one bench invocation.

    Class attributes:
        name: registry name, also the key of its rows in ``summary.json`` and the W&B table name.
        order: position among the tables (cells, files and reports follow it).
        config: the bench config keys this table owns, with their defaults.
        list_keys: which of them are lists of names (a comma-separated string is accepted).
    """

    name: ClassVar[str] = "table"
    order: ClassVar[int] = 100
    config: ClassVar[Dict[str, Any]] = {}
    list_keys: ClassVar[Tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.done: Dict[str, Tuple[Cell, Dict[str, Any]]] = {}  # cell id -> (cell, payload), in run order

    # ------------------------------------------------------------------ configuration (class level)
    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add this table's command-line flags (``argument_default`` is SUPPRESS: only given flags arrive)."""

    @classmethod
    def apply_flags(cls, cfg: Dict[str, Any], flags: Dict[str, Any]) -> None:
        """Apply and remove from ``flags`` the flags that do not map one-to-one onto a config key."""

    @classmethod
    def normalise(cls, cfg: Dict[str, Any], where: str) -> None:
        """Bring this table's config values to their canonical form (after the config file is read)."""

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        """Raise :class:`lit_attacks.configuration.ConfigError` (one line) on a bad value of this table's keys."""

    @classmethod
    def enabled(cls, cfg: Dict[str, Any]) -> bool:
        return True

    @classmethod
    def count(cls, cfg: Dict[str, Any]) -> int:
        """Number of cells (for the progress line)."""
        return 0

    @classmethod
    def run_files(cls) -> List[str]:
        """The run-level files :meth:`write` may write, relative to the results folder (recorded in its
        manifest, removed when a later run does not write them)."""
        return [f"{cls.name}.csv", f"{cls.name}.md"]

    @classmethod
    def extra_metrics(cls, cfg: Dict[str, Any]) -> List[str]:
        """Metrics this table builds besides ``cfg["metrics"]`` (checked before any work)."""
        return []

    # ------------------------------------------------------------------ running
    def cells(self, run: Run) -> Iterator[Cell]:
        """The cells, lazily: a cell may depend on the payload of one yielded before (see :attr:`done`)."""
        return iter(())

    def add(self, cell: Cell, payload: Dict[str, Any]) -> None:
        self.done[cell.id] = (cell, payload)

    def log_cell(self, run: Run, cell: Cell, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Scalars to log to W&B once ``cell`` is complete."""
        return {}

    # ------------------------------------------------------------------ finishing (rank 0)
    def rows(self, run: Run) -> List[Dict[str, Any]]:
        """The table's rows (``<name>.csv`` and ``summary.json``)."""
        return []

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Optional[str]:
        """Write ``<name>.csv``/``.md`` (and any other file); return the Markdown table for the console."""
        return None

    def console_title(self, cfg: Dict[str, Any]) -> str:
        return self.name

    def figures(self, run: Run, rows: List[Dict[str, Any]]) -> List[Path]:
        """PNG figures of the table (drawn here or by its cells)."""
        return []

    def wandb_panels(self, run: Run, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        """W&B objects (tables, charts, histograms) logged at the end, keyed by panel name."""
        return {}

    def wandb_summary(self, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Scalars for the W&B run summary."""
        return {}


def tables() -> List[type]:
    """Every registered table class, in ``order``."""
    return sorted((TABLES.get(n) for n in TABLES.names()), key=lambda t: t.order)
