"""Per-key resolve time vs a plain dict (exact keys) and a plain bisect lookup (prefix pieces).

(a) A map of n exact keys: ``cm.resolve(k)`` vs ``d[k]`` on a ``dict`` of the
same keys, called through ``d.__getitem__`` and through a ``def`` function.
Target: kvmap <= 1.5x.

(b) A map of n/10 disjoint prefix entries: ``cm.resolve(k)`` vs a Python
function doing ``bisect_right`` over sorted lists of the prefixes' bounds.
Target: kvmap <= 1.0x.

Each measurement resolves n/10 keys built anew (fresh string objects, no cached
hash), all sides through the same ``for k in keys: f(k)`` loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from _common import (
    Row,
    exact_manifest,
    fresh,
    prefix_entries,
    prefix_queries,
    run_exact_and_prefix,
    run_trials,
    sample,
    time_loop,
)

import kvmap

EXACT_TARGET = 1.5
PREFIX_TARGET = 1.0

Chunk = tuple[str, int, int]


def build_exact(n: int, count: int, seed: int) -> tuple[kvmap.CompiledMap, dict[str, Chunk], list[str]]:
    """The compiled map, a dict of the same key strings, and ``count`` of its keys drawn at random."""
    manifest = exact_manifest(n, seed)
    table = {e["key"]: (e["path"], e["offset"], e["length"]) for e in manifest.to_json()["entries"]}
    compiled = kvmap.compile(manifest)
    return compiled, table, sample(list(table), count, seed)


def check_exact(compiled: kvmap.CompiledMap, table: dict[str, Chunk], keys: Sequence[str]) -> None:
    for key in keys:
        found = compiled.resolve(key)
        if found is None or (found.url, found.offset, found.length) != table[key]:
            raise RuntimeError(f"kvmap resolved {key!r} to {found}, the dict has {table[key]}")


def getter(table: dict[str, Chunk]) -> Callable[[str], Chunk]:
    """The def-function baseline: ``return d[k]``."""

    def get(key: str) -> Chunk:
        return table[key]

    return get


def prefix_end(prefix: str) -> str:
    """The least string after every string that starts with ``prefix`` (``prefix`` is not empty)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def bisect_lookups(
    entries: list[dict[str, Any]],
) -> tuple[Callable[[str], str | None], Callable[[str], str | None]]:
    """The prefix baselines: the winning URL prefix, and the full URL (prefix URL + rest of the key)."""
    rows: list[tuple[str, str, str, int]] = sorted(
        (e["prefix"], prefix_end(e["prefix"]), e["path"], len(e["prefix"])) for e in entries
    )
    mins = [r[0] for r in rows]
    maxs = [r[1] for r in rows]
    vals = [r[2] for r in rows]
    strips = [r[3] for r in rows]

    def lookup(key: str) -> str | None:
        i = bisect_right(mins, key) - 1
        if i >= 0 and key < maxs[i]:
            return vals[i]
        return None

    def lookup_url(key: str) -> str | None:
        i = bisect_right(mins, key) - 1
        if i >= 0 and key < maxs[i]:
            return vals[i] + key[strips[i] :]
        return None

    return lookup, lookup_url


def check_prefix(compiled: kvmap.CompiledMap, lookup_url: Callable[[str], str | None], keys: Sequence[str]) -> None:
    for key in keys:
        found = compiled.resolve(key)
        if (found and found.url) != lookup_url(key):
            raise RuntimeError(f"kvmap resolved {key!r} to {found}, the baseline to {lookup_url(key)}")


def ns_per_key(fn: Callable[[str], object], keys: list[str]) -> float:
    return time_loop(fn, keys) / len(keys) * 1e9


def exact_rows(n: int, count: int, repeat: int, seed: int) -> list[Row]:
    compiled, table, queries = build_exact(n, count, seed)
    check_exact(compiled, table, queries)
    gc.collect()
    resolve, get = compiled.resolve, getter(table)
    results = run_trials(
        {
            "kvmap": lambda: ns_per_key(resolve, fresh(queries)),
            "getitem": lambda: ns_per_key(table.__getitem__, fresh(queries)),
            "def": lambda: ns_per_key(get, fresh(queries)),
        },
        repeat,
    )
    return [
        Row("exact: resolve vs dict.__getitem__", results["kvmap"], results["getitem"], EXACT_TARGET),
        Row("exact: resolve vs def get(k): return d[k]", results["kvmap"], results["def"], EXACT_TARGET),
    ]


def prefix_rows(pieces: int, count: int, repeat: int, seed: int) -> list[Row]:
    entries = prefix_entries(pieces, seed)
    compiled = kvmap.compile(kvmap.Manifest.from_json(entries))
    lookup, lookup_url = bisect_lookups(entries)
    del entries
    check_prefix(compiled, lookup_url, prefix_queries(pieces, count, seed))
    gc.collect()
    resolve = compiled.resolve
    results = run_trials(
        {
            "kvmap": lambda: ns_per_key(resolve, prefix_queries(pieces, count, seed)),
            "bisect": lambda: ns_per_key(lookup, prefix_queries(pieces, count, seed)),
            "bisect+url": lambda: ns_per_key(lookup_url, prefix_queries(pieces, count, seed)),
        },
        repeat,
    )
    return [
        Row("prefix: resolve vs bisect lookup", results["kvmap"], results["bisect"], PREFIX_TARGET),
        Row("prefix: resolve vs bisect lookup + URL", results["kvmap"], results["bisect+url"], PREFIX_TARGET),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    run_exact_and_prefix(
        __doc__,
        argv,
        "resolve: one key at a time",
        exact_rows,
        prefix_rows,
        notes=[
            "kvmap returns a new Resolution per key; the dict returns a tuple it already holds",
            "prefix queries: 90% inside a prefix, 10% in the gaps between prefixes",
            "'bisect lookup' returns only the prefix's URL; '+ URL' also appends the rest of the key, as kvmap does",
        ],
    )


if __name__ == "__main__":
    main()
