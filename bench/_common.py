"""Shared helpers for the kvmap benchmark scripts: data generators, timing, tables.

Every script compares kvmap with a baseline measured in the same process and the
same run. Measurements of the two sides are interleaved (the order rotates each
round) so that drift in machine speed affects both alike, and the verdict uses
the ratio of the medians over the repeats. Nothing here asserts on timings: the
scripts print tables. The scripts put the repository root on ``sys.path`` before
importing this module, so that ``kvmap`` is the working tree's.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import tracemalloc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice, product
from time import perf_counter
from typing import Any, TypeVar

import kvmap

T = TypeVar("T")

#: A chunk reference: (zarr key, URL, byte offset, byte length).
Ref = tuple[str, str, int, int]

VARIABLES = ("temperature", "salinity", "u_wind", "v_wind")
#: The few distinct files every chunk lives in (shared by kvmap and the baselines).
URLS = tuple(f"s3://bucket/data{i}.nc" for i in range(4))
_CHUNK_STRIDE = 1 << 16
_HEADER_BYTES = 512


# -- data ---------------------------------------------------------------------------


def chunk_keys(n: int) -> list[str]:
    """``n`` distinct zarr v3 chunk keys such as ``"temperature/c/12/34/56"``, in grid order."""
    per_variable = -(-n // len(VARIABLES))
    side = 1
    while side**3 < per_variable:
        side += 1
    keys = [
        f"{variable}/c/{i}/{j}/{k}"
        for variable in VARIABLES
        for i, j, k in islice(product(range(side), repeat=3), per_variable)
    ]
    return keys[:n]


def chunk_refs(n: int, seed: int) -> list[Ref]:
    """``n`` chunk references in shuffled order; chunk ``i`` lives in ``URLS[i % 4]``."""
    refs = [
        (key, URLS[i % len(URLS)], _HEADER_BYTES + (i // len(URLS)) * _CHUNK_STRIDE, 30_000 + (i * 7919) % 30_000)
        for i, key in enumerate(chunk_keys(n))
    ]
    random.Random(seed).shuffle(refs)
    return refs


def exact_entries(refs: Iterable[Ref]) -> list[dict[str, Any]]:
    """kvmap exact-key entries for the references, in the same order."""
    return [{"key": key, "path": url, "offset": offset, "length": length} for key, url, offset, length in refs]


def manifest_bytes(entries: list[dict[str, Any]]) -> bytes:
    """The kvmap manifest document for ``entries``, as written by ``Manifest.dumps``."""
    return kvmap.Manifest.from_json({"kvmap": 1, "entries": entries}).dumps()


def kerchunk_bytes(refs: Iterable[Ref]) -> bytes:
    """A kerchunk version 1 reference document for the references."""
    document = {"version": 1, "refs": {key: [url, offset, length] for key, url, offset, length in refs}}
    return json.dumps(document).encode()


def exact_manifest(n: int, seed: int) -> kvmap.Manifest:
    """A manifest of ``n`` shuffled exact-key entries whose strings were freshly parsed from JSON."""
    return kvmap.Manifest.loads(manifest_bytes(exact_entries(chunk_refs(n, seed))))


def manifest_keys(manifest: kvmap.Manifest) -> list[str]:
    """The key strings of an exact-key manifest: the very objects the manifest holds."""
    return [e["key"] for e in manifest.to_json()["entries"]]


def prefix_entries(pieces: int, seed: int) -> list[dict[str, Any]]:
    """``pieces`` disjoint prefix entries ``g000123/ -> s3://bucket/g123/``, in shuffled order."""
    entries = [{"prefix": f"g{i:06d}/", "path": f"s3://bucket/g{i}/"} for i in range(pieces)]
    random.Random(seed).shuffle(entries)
    return entries


def prefix_queries(pieces: int, count: int, seed: int) -> list[str]:
    """Keys for :func:`prefix_entries`: 90% inside a prefix, 10% in the gaps between them.

    Every call builds new string objects, as zarr builds each key anew.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        g, a, b = rng.randrange(pieces), rng.randrange(100), rng.randrange(100)
        out.append(f"g{g:06d}_gap/c/{a}" if rng.random() < 0.1 else f"g{g:06d}/c/{a}/{b}")
    return out


def sample(keys: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` keys drawn at random (with replacement) from ``keys``."""
    rng = random.Random(seed)
    return [keys[rng.randrange(len(keys))] for _ in range(count)]


def fresh(keys: Iterable[str]) -> list[str]:
    """New string objects equal to ``keys`` (with no cached hash), as zarr would build them."""
    return [k.encode().decode() for k in keys]


# -- measuring -------------------------------------------------------------------------


def time_call(fn: Callable[[], T], *, gc_enabled: bool = True) -> tuple[float, T]:
    """Seconds ``fn()`` took, and its result (freed by the caller, outside the timing).

    ``gc_enabled=False`` runs ``fn`` with the cyclic collector off, as kvmap's bulk
    paths run themselves: the "baseline with gc disabled" rows.
    """
    if not gc_enabled:
        gc.disable()
    try:
        start = perf_counter()
        result = fn()
        return perf_counter() - start, result
    finally:
        gc.enable()


def time_loop(fn: Callable[[str], object], keys: Sequence[str]) -> float:
    """Seconds for ``for k in keys: fn(k)``: the same loop for kvmap and for every baseline."""
    start = perf_counter()
    for k in keys:
        fn(k)
    return perf_counter() - start


def traced_bytes(build: Callable[[], T]) -> tuple[int, T]:
    """Bytes still allocated after ``build()`` returns, as tracemalloc counts them, and its result.

    Only what the result keeps alive counts: the temporaries of ``build`` are
    freed (and cycles collected) before the measurement.
    """
    gc.collect()
    tracemalloc.start()
    try:
        result = build()
        gc.collect()
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return current, result


def run_trials(trials: Mapping[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    """Run every trial ``repeat`` times, interleaved, rotating the order each round.

    A trial does its own untimed setup and returns one measurement; garbage is
    collected before each.
    """
    names = list(trials)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            results[name].append(trials[name]())
    return results


# -- reporting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One comparison: kvmap's and the baseline's measurements (one per repeat), and the target.

    ``max_ratio`` bounds median(kvmap) / median(baseline); ``max_value`` bounds
    median(kvmap) itself.
    """

    case: str
    kvmap: Sequence[float]
    baseline: Sequence[float]
    max_ratio: float | None = None
    max_value: float | None = None

    @property
    def ratio(self) -> float:
        return statistics.median(self.kvmap) / statistics.median(self.baseline)

    def meets(self) -> bool | None:
        """Whether the medians meet the target (``None`` if the row has none)."""
        if self.max_ratio is not None:
            return self.ratio <= self.max_ratio
        if self.max_value is not None:
            return statistics.median(self.kvmap) <= self.max_value
        return None


def _number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return _number(values[0])
    return f"{_number(statistics.median(values))} ({_number(min(values))}-{_number(max(values))})"


def _target(row: Row, unit: str) -> str:
    if row.max_ratio is not None:
        return f"<= {row.max_ratio:.2f}x"
    if row.max_value is not None:
        return f"<= {_number(row.max_value)} {unit}"
    return "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with left-aligned first column and right-aligned others."""
    widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *map(line, rows)])


def print_report(
    title: str, unit: str, rows: Sequence[Row], params: Mapping[str, object], notes: Sequence[str] = ()
) -> None:
    """Print a titled table: medians (min-max over the repeats), the ratio of medians, target, verdict."""
    verdicts = {True: "yes", False: "NO", None: "-"}
    cells = [
        [
            row.case,
            _spread(row.kvmap),
            _spread(row.baseline),
            f"{row.ratio:.2f}x",
            _target(row, unit),
            verdicts[row.meets()],
        ]
        for row in rows
    ]
    setting = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in params.items())
    print(f"\n== {title} ==")
    print(f"{setting}; python {platform.python_version()}; values in {unit}: median (min-max)")
    print(format_table(["case", "kvmap", "baseline", "ratio", "target", "meets"], cells))
    for note in notes:
        print(f"  * {note}")


def parse_args(doc: str, argv: Sequence[str] | None, n_help: str) -> argparse.Namespace:
    """The options every script takes: ``--n`` (default 1e6), ``--repeat`` (5) and ``--seed`` (0)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help=n_help)
    parser.add_argument("--repeat", type=int, default=5, help="measurements per side")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


RowsFn = Callable[[int, int, int, int], list["Row"]]


def run_exact_and_prefix(
    doc: str, argv: Sequence[str] | None, title: str, exact_rows: RowsFn, prefix_rows: RowsFn, notes: list[str]
) -> None:
    """The per-key scripts: a 1e6 exact-key map, then a map of n/10 prefixes, n/10 queries each.

    ``exact_rows(n, count, repeat, seed)`` and ``prefix_rows(pieces, count, repeat, seed)`` measure.
    """
    args = parse_args(doc, argv, "exact keys; prefix pieces and queries are n/10")
    count = pieces = max(1, args.n // 10)
    rows = exact_rows(args.n, count, args.repeat, args.seed)
    gc.collect()
    rows += prefix_rows(pieces, count, args.repeat, args.seed)
    params = {"n": args.n, "prefix pieces": pieces, "queries": count, "repeat": args.repeat, "seed": args.seed}
    print_report(title, "ns/key", rows, params, notes=notes)
