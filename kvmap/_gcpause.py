"""Pause the cyclic garbage collector around bulk allocation.

Parsing a million-entry manifest or returning 100,000 resolutions allocates
millions of containers and no reference cycles; left on, the collector runs
every few hundred allocations and each full pass walks every live object, which
measured 2-4x slower at 1e6 entries. Reference counting still frees everything
at once; cycles made meanwhile are collected once the collector is back on.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the block; restore its previous state after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
