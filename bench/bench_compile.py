"""Compile time of a million exact-key entries vs sorting the same (key, value) pairs.

kvmap: ``kvmap.compile(manifest)`` on a manifest parsed with ``Manifest.loads``
(so its strings are freshly parsed, their hashes not yet computed). Baseline: the
plain way to build a sorted lookup structure from the same key strings and the
entry dicts, ``sorted(zip(keys, values))`` split into two lists. Target: kvmap
<= 1.5x the baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
from collections.abc import Sequence
from typing import Any

from _common import (
    Row,
    chunk_refs,
    exact_entries,
    manifest_bytes,
    parse_args,
    print_report,
    run_trials,
    time_call,
)

import kvmap

TARGET = 1.5


def sort_and_split(keys: list[str], values: list[Any]) -> tuple[list[str], list[Any]]:
    """The baseline: sort the (key, value) pairs and split them into two lists."""
    pairs = sorted(zip(keys, values, strict=True))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def trial_compile(text: bytes) -> float:
    manifest = kvmap.Manifest.loads(text)
    gc.collect()
    seconds, compiled = time_call(lambda: kvmap.compile(manifest))
    del compiled
    return seconds * 1e3


def trial_sort(text: bytes, *, gc_enabled: bool) -> float:
    manifest = kvmap.Manifest.loads(text)
    values = manifest.to_json()["entries"]
    keys = [e["key"] for e in values]
    gc.collect()
    seconds, result = time_call(lambda: sort_and_split(keys, values), gc_enabled=gc_enabled)
    del result
    return seconds * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, argv, "number of exact-key entries")

    text = manifest_bytes(exact_entries(chunk_refs(args.n, args.seed)))
    gc.collect()
    results = run_trials(
        {
            "kvmap": lambda: trial_compile(text),
            "sort": lambda: trial_sort(text, gc_enabled=True),
            "sort, gc off": lambda: trial_sort(text, gc_enabled=False),
        },
        args.repeat,
    )
    rows = [
        Row("compile vs sorted(zip(keys, entries)) + split", results["kvmap"], results["sort"], max_ratio=TARGET),
        Row("  same, baseline with gc disabled", results["kvmap"], results["sort, gc off"], max_ratio=TARGET),
    ]
    print_report(
        "compile: exact-key entries",
        "ms",
        rows,
        {"n": args.n, "repeat": args.repeat, "seed": args.seed},
        notes=[
            "each measurement parses the manifest anew (untimed), so string hashes are never cached",
            "kvmap.compile pauses the cyclic gc itself; the second row gives the baseline the same",
        ],
    )


if __name__ == "__main__":
    main()
