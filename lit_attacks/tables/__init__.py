"""Result tables of a bench run, one plug-in module per table (see :mod:`lit_attacks.tables.base`).

Every module of this package is imported here; each table registers itself with
``@TABLES.register(name)`` where it is defined, so adding a table is adding one module.
"""
from __future__ import annotations

import importlib
import pkgutil

from lit_attacks.tables.base import (TABLES, Cell, CellContext, Plan, Run, Table, Written, metric_file_fingerprint,
                                     number_id, slug, tables)

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["TABLES", "Cell", "CellContext", "Plan", "Run", "Table", "Written", "metric_file_fingerprint", "number_id",
           "slug", "tables"]
