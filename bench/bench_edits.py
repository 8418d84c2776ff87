"""Editable maps: edits to a 1e6-entry map without a recompile, and resolve after them.

kvmap: ``kvmap.editable.EditableMap`` of a manifest of ``n`` shuffled exact-key entries
(built untimed). Baseline, measured in the same rounds: a fresh ``kvmap.compile`` of the
edited manifest — what a map without incremental edits has to do after an edit — and
resolving the same keys through that freshly compiled map.

Cases (targets from issue 17):

* 10,000 exact-key edits (40% replace an entry by a new exact key or window, 40% append a
  new key, 20% remove an entry), in total: <= 1 s;
* 1,000 prefix/range edits (appends of prefix and range entries over the chunk keys, and
  replacements and removals of them): reported;
* resolving 200,000 keys of the edited map (about 1% of them edited), per key, after the
  exact-key edits: <= 1.5x the fresh compile's map; after ``merge()``: equal (the merged
  map's ``resolve`` is the compiled map's own);
* the same after the prefix/range edits, resolving only edited keys, and ``merge()`` itself
  against a compile: reported, the numbers the merge bound (``kvmap.editable``) comes from;
* ``merge()`` of a mixed manifest (n/10 entries: references, inline values and prefixes, then
  4,000 appended inline values) against a compile of the edited manifest: reported.

Every round builds the maps anew and alternates which side is timed first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import base64
import gc
import random
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from _common import Row, exact_manifest, fresh, manifest_keys, parse_args, print_report, time_loop

import kvmap
from kvmap.editable import EditableMap

EDITS = 10_000
RANGE_EDITS = 1_000
MIXED_EDITS = 4_000
QUERIES = 200_000


def exact_edits(keys: list[str], seed: int) -> list[tuple[Any, ...]]:
    """``EDITS`` exact-key edits of a map whose slot ``i`` holds the exact key ``keys[i]``."""
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    slots = list(range(len(keys)))
    rng.shuffle(slots)
    for j in range(EDITS):
        u = rng.random()
        entry = {"key": f"new/c/{j}", "path": "s3://bucket/new.nc", "offset": 8 * j, "length": 8}
        if u < 0.4:
            ops.append(("append", entry))
        elif u < 0.8:
            ops.append(("replace", slots.pop(), {**entry, "key": keys[rng.randrange(len(keys))]}))
        else:
            ops.append(("remove", slots.pop()))
    return ops


def mixed_manifest(n: int) -> kvmap.Manifest:
    """``n`` entries of three kinds: references, inline values (every other key) and a prefix per 1,000."""
    entries: list[dict[str, Any]] = []
    for i in range(n):
        if i % 1000 == 0:
            entries.append({"prefix": f"p{i}/", "path": f"s3://bucket/p{i}/"})
        elif i % 2:
            entries.append({"key": f"c/{i}", "data": base64.b64encode(f"value {i}".encode()).decode()})
        else:
            entries.append({"key": f"c/{i}", "path": "s3://bucket/data.nc", "offset": 8 * i, "length": 8})
    return kvmap.Manifest.from_json(entries, url=None)


def range_edits(n: int, seed: int) -> list[tuple[Any, ...]]:
    """``RANGE_EDITS`` prefix/range edits: appends, then replacements and removals of appended ones."""
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    appended = 0
    for j in range(RANGE_EDITS):
        u = rng.random()
        variable = rng.choice(["temperature", "salinity", "u_wind", "v_wind"])
        a = rng.randrange(60)
        if u < 0.6 or appended == 0:
            if rng.random() < 0.5:
                entry = {"prefix": f"{variable}/c/{a}/{rng.randrange(60)}/", "path": f"s3://bucket/p{j}/"}
            else:
                entry = {"min": f"{variable}/c/{a}/", "max": f"{variable}/c/{a}/5", "path": f"s3://bucket/r{j}/"}
            ops.append(("append", entry))
            appended += 1
        elif u < 0.85:
            ops.append(("replace-appended", rng.randrange(appended), {"prefix": f"{variable}/c/{a}/", "path": None}))
        else:
            ops.append(("remove-appended", rng.randrange(appended)))
    return ops


def apply(em: EditableMap, ops: Sequence[tuple[Any, ...]], first_appended: int) -> None:
    """Apply the edits (``*-appended`` name the k-th appended entry; one already removed is skipped)."""
    for op in ops:
        kind = op[0]
        if kind == "append":
            em.append(op[1])
        elif kind == "replace":
            em.replace(op[1], op[2])
        elif kind == "remove":
            em.remove(op[1])
        else:
            slot = first_appended + op[1]
            if em.entry(slot) is None:
                continue
            if kind == "replace-appended":
                em.replace(slot, op[2])
            else:
                em.remove(slot)


def timed(fn: Any) -> tuple[float, Any]:
    start = perf_counter()
    result = fn()
    return perf_counter() - start, result


def ns_per_key(resolve: Any, keys: list[str]) -> float:
    return time_loop(resolve, fresh(keys)) / len(keys) * 1e9


def live_keys(em: EditableMap) -> list[str]:
    return em.exact_keys(whiteouts=False)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, argv, "number of exact-key entries")
    base = exact_manifest(args.n, args.seed)
    keys = manifest_keys(base)
    ops = exact_edits(keys, args.seed)
    rops = range_edits(args.n, args.seed)
    rng = random.Random(args.seed)
    m: dict[str, list[float]] = {}
    mixed = mixed_manifest(args.n // 10)

    def add(name: str, value: float) -> None:
        m.setdefault(name, []).append(value)

    for r in range(args.repeat):
        gc.collect()
        # -- exact-key edits ------------------------------------------------------------
        em = EditableMap(base)
        seconds, _ = timed(lambda em=em: apply(em, ops, args.n))
        add("exact edits", seconds * 1e3)
        add("pending after exact edits", em.pending)
        edited_manifest = em.manifest()
        gc.collect()
        seconds, cm = timed(lambda edited_manifest=edited_manifest: kvmap.compile(edited_manifest))
        add("compile", seconds * 1e3)
        current = live_keys(em)
        queries = [current[rng.randrange(len(current))] for _ in range(QUERIES)]
        edited = [op[1]["key"] if op[0] == "append" else op[2]["key"] for op in ops if op[0] != "remove"]
        edited_queries = [edited[rng.randrange(len(edited))] for _ in range(QUERIES // 10)]
        sides = [("em", em.resolve), ("cm", cm.resolve)]
        for name, resolve in sides if r % 2 == 0 else sides[::-1]:
            add(f"resolve {name}", ns_per_key(resolve, queries))
            add(f"resolve edited {name}", ns_per_key(resolve, edited_queries))
        check = queries[:1000] + edited_queries[:1000]
        renumbered = [
            None if x is None else x._replace(entry=em.exported_index(x.entry)) for x in em.resolve_many(check)
        ]
        assert renumbered == cm.resolve_many(check), "the edited map answers as a recompile"
        gc.collect()
        seconds, _ = timed(em.merge)
        add("merge", seconds * 1e3)
        sides = [("em", em.resolve), ("cm", cm.resolve)]
        for name, resolve in sides if r % 2 == 0 else sides[::-1]:
            add(f"merged {name}", ns_per_key(resolve, queries))
        del em, cm, edited_manifest
        gc.collect()
        # -- prefix/range edits ----------------------------------------------------------
        em = EditableMap(base)
        seconds, _ = timed(lambda em=em: apply(em, rops, args.n))
        add("range edits", seconds * 1e3)
        edited_manifest = em.manifest()
        cm = kvmap.compile(edited_manifest)
        range_queries = [
            f"{rng.choice(['temperature', 'salinity', 'u_wind', 'v_wind'])}/c/{rng.randrange(60)}/"
            f"{rng.randrange(60)}/{rng.randrange(60)}"
            for _ in range(QUERIES // 10)
        ]
        sides = [("em", em.resolve), ("cm", cm.resolve)]
        for name, resolve in sides if r % 2 == 0 else sides[::-1]:
            add(f"range resolve {name}", ns_per_key(resolve, queries))
            add(f"range resolve edited {name}", ns_per_key(resolve, range_queries))
        del em, cm, edited_manifest
        gc.collect()
        # -- a merge of a mixed manifest (not all plain references) ----------------------------
        em = EditableMap(mixed)
        for j in range(MIXED_EDITS):
            em.append({"key": f"new/{j}", "data": "AAAA"})
        gc.collect()
        seconds, _ = timed(em.merge)
        add("mixed merge", seconds * 1e3)
        edited_manifest = em.manifest()
        gc.collect()
        seconds, _ = timed(lambda edited_manifest=edited_manifest: kvmap.compile(edited_manifest))
        add("mixed compile", seconds * 1e3)
        del em, edited_manifest

    rows = [
        Row(f"{EDITS:,} exact-key edits, total ms (vs one compile)", m["exact edits"], m["compile"], max_value=1000),
        Row(f"{RANGE_EDITS:,} prefix/range edits, total ms (vs one compile)", m["range edits"], m["compile"]),
        Row("merge() after the exact-key edits, ms (vs compile)", m["merge"], m["compile"]),
        Row("resolve after exact edits, ns/key (~1% edited keys)", m["resolve em"], m["resolve cm"], max_ratio=1.5),
        Row("  only edited keys, ns/key", m["resolve edited em"], m["resolve edited cm"]),
        Row("resolve after merge(), ns/key", m["merged em"], m["merged cm"], max_ratio=1.1),
        Row("resolve after prefix/range edits, ns/key", m["range resolve em"], m["range resolve cm"]),
        Row("  only keys in the edited ranges, ns/key", m["range resolve edited em"], m["range resolve edited cm"]),
        Row(
            f"merge() of a mixed manifest ({len(mixed):,} entries), ms (vs compile)",
            m["mixed merge"],
            m["mixed compile"],
        ),
    ]
    print_report(
        "editable maps: edits without a recompile",
        "ms or ns/key",
        rows,
        {"n": args.n, "queries": QUERIES, "repeat": args.repeat, "seed": args.seed},
        notes=[
            "baseline: kvmap.compile of the edited manifest, and resolve on that freshly compiled map, same round",
            f"edits pending after the exact-key edits (no merge): {int(m['pending after exact edits'][0]):,}; "
            f"merge bound at this size: {EditableMap(base).merge_at:,}",
            "resolve after merge() is the compiled map's own resolve (the 'equal' target; 1.1x allows for noise)",
        ],
    )


if __name__ == "__main__":
    main()
