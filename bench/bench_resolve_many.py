"""Bulk ``resolve_many`` vs a loop of ``resolve`` calls, per key.

On a map of n exact keys and on a map of n/10 prefix pieces,
``cm.resolve_many(keys)`` vs ``[cm.resolve(k) for k in keys]`` for n/10 keys
built anew, the loop both with the garbage collector as it is and inside
``gc.disable()``/``gc.enable()``. Target: resolve_many <= 0.5x the loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
from collections.abc import Callable, Sequence

from _common import (
    Row,
    exact_manifest,
    fresh,
    manifest_keys,
    prefix_entries,
    prefix_queries,
    run_exact_and_prefix,
    run_trials,
    sample,
    time_call,
)

import kvmap

TARGET = 0.5


def ns_per_key_many(compiled: kvmap.CompiledMap, keys: list[str]) -> float:
    seconds, resolved = time_call(lambda: compiled.resolve_many(keys))
    del resolved
    return seconds / len(keys) * 1e9


def ns_per_key_loop(compiled: kvmap.CompiledMap, keys: list[str], *, gc_enabled: bool) -> float:
    resolve = compiled.resolve
    seconds, resolved = time_call(lambda: [resolve(k) for k in keys], gc_enabled=gc_enabled)
    del resolved
    return seconds / len(keys) * 1e9


def check_same(compiled: kvmap.CompiledMap, keys: list[str]) -> None:
    if compiled.resolve_many(keys) != [compiled.resolve(k) for k in keys]:
        raise RuntimeError("resolve_many and resolve disagree")


def compare(label: str, compiled: kvmap.CompiledMap, queries: Callable[[], list[str]], repeat: int) -> list[Row]:
    """Rows for one map; ``queries()`` builds the keys anew for each measurement."""
    check_same(compiled, queries())
    gc.collect()
    results = run_trials(
        {
            "many": lambda: ns_per_key_many(compiled, queries()),
            "loop": lambda: ns_per_key_loop(compiled, queries(), gc_enabled=True),
            "loop, gc off": lambda: ns_per_key_loop(compiled, queries(), gc_enabled=False),
        },
        repeat,
    )
    return [
        Row(f"{label}: resolve_many vs loop", results["many"], results["loop"], TARGET),
        Row(f"{label}: resolve_many vs loop, gc disabled", results["many"], results["loop, gc off"], TARGET),
    ]


def exact_rows(n: int, count: int, repeat: int, seed: int) -> list[Row]:
    manifest = exact_manifest(n, seed)
    keys = sample(manifest_keys(manifest), count, seed)
    compiled = kvmap.compile(manifest)
    del manifest
    return compare("exact", compiled, lambda: fresh(keys), repeat)


def prefix_rows(pieces: int, count: int, repeat: int, seed: int) -> list[Row]:
    compiled = kvmap.compile(kvmap.Manifest.from_json(prefix_entries(pieces, seed)))
    return compare("prefix", compiled, lambda: prefix_queries(pieces, count, seed), repeat)


def main(argv: Sequence[str] | None = None) -> None:
    run_exact_and_prefix(
        __doc__,
        argv,
        "resolve_many: bulk vs one key at a time",
        exact_rows,
        prefix_rows,
        notes=[
            "resolve_many pauses the cyclic gc itself",
            "prefix queries: 90% inside a prefix, 10% in the gaps between prefixes",
        ],
    )


if __name__ == "__main__":
    main()
