"""pyarrow, imported when a parquet-based format is first used (it is an optional dependency)."""

from __future__ import annotations

import importlib
from typing import Any

from kvmap.errors import MissingDependencyError

__all__ = ["pyarrow"]

_INSTALL = "pip install 'kvmap[parquet]'"


def pyarrow(what: str) -> tuple[Any, Any, Any]:
    """``pyarrow``, ``pyarrow.parquet`` and ``pyarrow.compute``; :class:`MissingDependencyError`
    saying that ``what`` (e.g. "kerchunk parquet references") needs them and how to install them."""
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
        pc = importlib.import_module("pyarrow.compute")
    except ImportError as exc:
        raise MissingDependencyError(f"{what} need pyarrow, which is not installed: {_INSTALL}") from exc
    return pa, pq, pc
