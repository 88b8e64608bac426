"""What a result table is: a plug-in that owns its config keys, its cells, its columns and its outputs.

``bench.py`` knows no table by name. It asks every registered :class:`Table` (in ``order``) for its
config keys and flags, runs the cells of the enabled ones, and at the end asks each for its rows,
files, figures and W&B panels. Adding a table is adding one module here (plus, if wanted, a YAML preset).

A :class:`Cell` is one resumable unit of work; its ``compute(ctx)`` runs Trainers through the run
(:class:`Run`), saves per-sample rows with ``ctx.save_rows`` (rank 0 writes, the run records the
file's hash and column types) and returns a small JSON-able payload (labels, aggregates).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

from lit_attacks.datamodules.shards import sha256, stat_key
from lit_attacks.configuration import Option, check_all
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
    """What a cell of metric ``name`` depends on besides the run's settings, so a retrained checkpoint, replaced weights
    or an edited metric invalidate completed cells: for ``py:`` and ``user:`` what the metric computes (its outputs
    and input-gradients on a probe batch), its package's source and arguments; for ``rlpips:<checkpoint>`` the file's
    sha256; for a registry metric the sha256 of the weights it was built from in this process (remembered by file stat
    in this process); None when there is nothing of the kind (no weights, or a random backbone)."""
    from lit_attacks.metrics import WEIGHTS_USED
    from lit_attacks.metrics.user import USER, spec_fingerprint

    prefix, sep, arg = name.partition(":")
    if sep and prefix == "py":
        return spec_fingerprint(arg)
    if sep and prefix == "user":
        return USER[arg]["fingerprint"] if arg in USER else None
    p = Path(arg).expanduser()
    if sep and p.is_file():
        return sha256(p)[:20]
    weights = WEIGHTS_USED.get(name)
    return _weights_fingerprint(Path(weights)) if weights else None


_WEIGHT_HASHES: Dict[Tuple[str, str], str] = {}


def _weights_fingerprint(path: Path) -> Optional[str]:
    """sha256 (first 20 hex) over every file of a weights file or folder (each file hashed once per stat)."""
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    parts = []
    for f in files:
        key = (str(f.resolve()), stat_key(f))
        if key not in _WEIGHT_HASHES:
            _WEIGHT_HASHES[key] = sha256(f)
        parts.append(f"{f.relative_to(path) if path.is_dir() else f.name}:{_WEIGHT_HASHES[key]}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


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

    tables: List["Table"]  # the tables of this run, in order
    weights: Dict[str, str]  # metric -> the weights file or folder it was built from

    def software(self) -> Dict[str, Any]:
        """The package version, code fingerprint, git commit, torch, Python and device of this run."""

    def command(self) -> str:
        """The command line of this run, shell-quoted."""

    def total_samples(self) -> int:
        """Samples of the run's data (all, not only the unanimous ones)."""

    def file_sha256(self, path: Path) -> str:
        """sha256 of a file, remembered by its stat in the cache (unchanged files are not read again)."""


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
        log: ``log(payload) -> {name: scalar}`` logged to W&B once the cell is complete (None: nothing).
        work: metric evaluations per sample it needs (:func:`lit_attacks.attacks.cost.attack_cost`): the
            progress line's ETA is the work left over the rate measured so far.
    """

    id: str
    what: str
    spec: Dict[str, Any]
    compute: Callable[[CellContext], Dict[str, Any]]
    info: Dict[str, Any] = field(default_factory=dict)
    log: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
    work: float = 100.0


@dataclass
class Plan:
    """What a config asks of a table, known before any work.

    Attributes:
        cells: how many cells it will yield (0: the table is off for this config).
        metrics: metrics it builds besides ``cfg["metrics"]`` (built, and checked, in the preflight).
        work: the sum of its cells' :attr:`Cell.work` (None: 100 per cell).
    """

    cells: int = 0
    metrics: List[str] = field(default_factory=list)
    work: Optional[float] = None

    @property
    def total_work(self) -> float:
        return float(self.work) if self.work is not None else 100.0 * self.cells


@dataclass
class Written:
    """What :meth:`Table.write` wrote, for the console, the index page and W&B.

    Attributes:
        title: heading of the table on the console and the index page.
        markdown: the table as Markdown (None: nothing to show).
        figures: PNG figures of the table (drawn by :meth:`Table.write` or by its cells).
        summary: scalars for the W&B run summary.
        panels: ``panels() -> {name: W&B object}`` (tables, charts, histograms), called only when W&B logs.
        files: other files it wrote whose names depend on the run (results entries), recorded in the folder's
            manifest like :attr:`Table.files`.
    """

    title: str
    markdown: Optional[str] = None
    figures: List[Path] = field(default_factory=list)
    summary: Dict[str, Any] = field(default_factory=dict)
    panels: Optional[Callable[[], Dict[str, Any]]] = None
    files: List[Path] = field(default_factory=list)


class Table:
    """Base of the result tables: a table declares its config, its cells, how it aggregates finished cells and
    what it writes. The bench (:mod:`lit_attacks.bench.runner`) knows no table by name.

    Declared (class attributes):
        name: registry name, also the key of its rows in ``summary.json`` and the W&B table name.
        order: position among the tables (cells, files and reports follow it).
        options: the config keys this table owns that are plain typed values, declared once
            (:class:`lit_attacks.configuration.Option`: default, type, bounds, flag, help); their flags and checks
            come from the declaration.
        config: the config keys this table owns, with their defaults (the options' included: set it to
            ``defaults(options)`` plus the structured keys it checks itself).
        list_keys: which of its structured keys are lists of names (a comma-separated string is accepted; for its
            options, the kind "names" says so).
        files: the run-level files :meth:`write` may write, relative to the results folder (recorded in the
            folder's manifest; removed when a later run does not write them).
        example: a config (over the built-in defaults) that turns the table on for a few cells on the built-in set;
            the table contract test (tests/test_table_contract.py) runs every registered table with it.

    The contract, in the order a run uses it:
        :meth:`add_arguments`, :meth:`configure`, :meth:`validate` (config), :meth:`plan` (how many cells,
        which extra metrics), :meth:`cells` (the work), :meth:`aggregate` (the rows, from the finished cells'
        payloads and per-sample records), :meth:`write` (files, figures, W&B; rank 0).
    """

    name: ClassVar[str] = "table"
    order: ClassVar[int] = 100
    options: ClassVar[Tuple[Option, ...]] = ()
    config: ClassVar[Dict[str, Any]] = {}
    list_keys: ClassVar[Tuple[str, ...]] = ()
    files: ClassVar[Tuple[str, ...]] = ()
    example: ClassVar[Dict[str, Any]] = {}

    def __init__(self) -> None:
        self.done: Dict[str, Tuple[Cell, Dict[str, Any]]] = {}  # cell id -> (cell, payload), in run order

    # ------------------------------------------------------------------ configuration (class level)
    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add this table's command-line flags (``argument_default`` is SUPPRESS: only given flags arrive); by
        default the typed flags of its :attr:`options`."""
        for option in cls.options:
            option.add_to(parser)

    @classmethod
    def configure(cls, cfg: Dict[str, Any], flags: Dict[str, Any], where: str) -> None:
        """Bring this table's keys of ``cfg`` (defaults < config file) to their canonical form, then apply and
        remove from ``flags`` the flags that do not map one-to-one onto a key (``where`` names the config)."""

    @classmethod
    def validate(cls, cfg: Dict[str, Any]) -> None:
        """Raise :class:`lit_attacks.configuration.ConfigError` (one line) on a bad value of this table's keys
        (the whole config is resolved: other tables' keys are canonical, ``metrics`` expanded); by default the
        checks of its :attr:`options`."""
        check_all(cls.options, cfg)

    @classmethod
    def plan(cls, cfg: Dict[str, Any]) -> Plan:
        """How many cells the config gives (0: off) and the metrics built besides ``cfg["metrics"]``."""
        return Plan()

    # ------------------------------------------------------------------ running
    def preflight(self, run: Run) -> None:
        """Checks that need the built metrics (after the run has built each once, before any cell runs): raise
        :class:`lit_attacks.configuration.ConfigError` (one line). Default: none."""

    def cells(self, run: Run) -> Iterator[Cell]:
        """The cells, lazily: a cell may depend on the payload of one yielded before (see :attr:`done`)."""
        return iter(())

    def add(self, cell: Cell, payload: Dict[str, Any]) -> None:
        self.done[cell.id] = (cell, payload)

    # ------------------------------------------------------------------ finishing (rank 0)
    def aggregate(self, run: Run) -> List[Dict[str, Any]]:
        """The table's rows (``summary.json``, ``<name>.csv``) from the finished cells (:attr:`done`)."""
        return []

    def write(self, run: Run, rows: List[Dict[str, Any]]) -> Written:
        """Write the table's files (of :attr:`files`) and figures; what was written, for the console and W&B."""
        return Written(self.name)

    def results(self) -> Dict[str, Any]:
        """What the table computed in the finished run, as data the Python API returns (the leaderboard: metric ->
        its entry); by default nothing."""
        return {}

    def page(self, rows: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
        """What the run's index page shows of the rows, and a legend of its columns (the full rows stay in the
        table's CSV, linked beside it); by default the rows as they are."""
        return rows, []


def tables() -> List[type]:
    """Every registered table class, in ``order``."""
    return sorted((TABLES.get(n) for n in TABLES.names()), key=lambda t: t.order)
