"""Ten million references: the columnar kvmap-parquet manifest vs kerchunk parquet references.

Data: ``n`` exact-key chunk references (default 1e7) in the zarr v2 layout kerchunk parquet
requires — four float32 variables on a 3-D grid of one-element chunks (``VARIABLES``; keys
``temperature/12.34.56``, ``temperature/.zarray``), the last variable cut short so that there
are exactly ``n`` — pointing at byte windows. By default the windows are irregular: each in one
of 1,000 files (``s3://bucket/f{0..999}.nc``) at a random offset with a random length;
``--regular`` makes them perfectly regular (contiguous equal-size chunks, one file per
variable). The same references are written twice: as a kvmap-parquet file
(``to_kvmap_parquet`` of the manifest with the same keys, the metadata keys as inline JSON
entries) and as a kerchunk parquet directory written by fsspec's own writer
(``LazyReferenceMapper.create``/``write``/``flush``, fastparquet, whole records of 100,000
rows fed at once, as ``bench_kerchunk_parquet.py`` does). fsspec reads it with
``LazyReferenceMapper(root)`` (fastparquet engine, its default). kvmap's loaders are driven by
:class:`PreadFile`, which answers each :class:`~kvmap.fetch.Fetch` with an ``os.pread`` of only
the bytes asked for (``kvmap.fetch.drive`` would cut them from the whole file).

Parts (``--parts 1,2,...``; every one by default):

1. **open + first key**: kvmap ``open_kvmap_parquet(url)`` + one ``resolve_io`` (new objects,
   file opened and read each trial), and ``kvmap.Reader(path).locate_sync(key)`` on a new
   Reader, vs ``LazyReferenceMapper(root)`` + ``mapper[key]``. Target <= 1.0x.
2. **warm lookups**: 10,000 lookups (fresh key strings) drawn from one slab of variable 0 (the
   keys ``temperature/<i>.*.*`` of one grid index ``i``: consecutive chunk numbers inside one
   fsspec record, and consecutive in sorted key order, so a few kvmap blocks), after a warm-up
   pass, so that both sides answer from memory: ``pread_drive(cm.resolve_io(k))`` and
   ``Reader.locate_sync(k)`` vs ``mapper[k]``. Target <= 0.5x. Rows without a target show
   ``Reader.resolve_sync`` (one key, and the 10,000 at once) and ``cm.resolve_many_io``.
3. **file size**: the kvmap-parquet file vs the kerchunk directory (every file). Target <= 1.0x.
4. **resident memory** (RSS from ``/proc/self/statm``), in a subprocess per side: measured after
   the imports and one open + lookup of another, 1,000-entry reference set in the same form (the
   first use of pyarrow or pandas costs ~50 MiB, once, whatever the size; the notes show it), then
   after open + 10,000 lookups of random keys of the whole map (objects kept): growth per entry.
   Target: kvmap <= 10 B/entry; fsspec's is shown.
5. **build**: from a kvmap JSON manifest of the same ``n`` entries (entries in shuffled order),
   in a subprocess each: ``to_kvmap_parquet(Manifest.load(json))`` and, if the module has it,
   the streaming ``build_kvmap_parquet`` (from the kvmap JSON, and from a kerchunk JSON of the
   same references); the baseline writes the kerchunk parquet directory from that kerchunk JSON
   (``json.load``, ``mapper[key] = ref`` for every reference, ``flush``). Time (imports
   excluded) and peak RSS (``VmHWM``, imports included). Target: the streaming build's peak
   <= 1 GiB (stated for 1e7).
6. **through zarr**: ``zarr.open_array(store=kvmap.KVMapStore(path), path="a", mode="r")`` of a
   uint8 array of ``n`` 64-byte chunks (zarr v3, no compression) whose windows lie in eight
   local sparse data files (``truncate``d to size; the picked chunks hold real bytes, checked
   after the timing), 2,000 random single-chunk reads: the kvmap-parquet manifest of ``n``
   entries vs a kvmap JSON manifest of ``--json-n`` (default min(n, 1e6)) entries over the same
   files (both with absolute ``file://`` paths beside the manifest, inside its origin). Each round
   and side: cold (a new store, ``open_array`` and the reads, the manifest opened in the timing)
   <= 1.5x, then warm (the same chunks again on that store) <= 1.1x; first use (zarr, pyarrow)
   is paid untimed on 1,000-chunk copies of both manifests.

Parts 1-3 run every trial once untimed first (imports, first use), then ``--repeat`` interleaved
rounds (``run_trials``), as part 6 does its rounds; parts 4 and 5 run one subprocess per side per round, in
``--subprocess-repeat`` rounds (default ``min(repeat, 3)``, and 1 from 5e6 entries: at 1e7 a
build from JSON, or 10,000 random lookups that each read a block, take a minute or more).
Everything lives under a temporary directory in ``/tmp``, removed at the end. At 1e7 the data
and the builds take several minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import gc
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
from _common import VARIABLES, Row, fresh, print_report, run_trials, time_call, time_loop
from bench_kerchunk_parquet import RECORD_SIZE, grid_side, zarray

import kvmap
from kvmap.fetch import Fetch

DEFAULT_N = 10_000_000
LOOKUPS = 10_000
FILES = 1_000
REGULAR_CHUNK = 1 << 16
HEADER = 512
OPEN_TARGET = 1.0
WARM_TARGET = 0.5
SIZE_TARGET = 1.0
MEMORY_TARGET = 10.0  # bytes per entry
BUILD_PEAK_TARGET = 1024.0  # MiB
ZARR_READS = 2_000
ZARR_FILES = 8
ZARR_CHUNK = 64
ZARR_COLD_TARGET = 1.5
ZARR_WARM_TARGET = 1.1
ALLOW = ("s3://bucket/",)
#: Keys, paths, offsets and lengths of exact references.
Columns = tuple[Sequence[str], Sequence[str], Sequence[int], Sequence[int]]
#: Entries of the reference set each memory subprocess uses first (first-use costs excluded).
TINY = 1_000


# -- the references ------------------------------------------------------------------------


@dataclass
class Refs:
    """``n`` references in grid order (variable, then chunk number): columns and the metadata."""

    n: int
    side: int
    keys: list[str]
    paths: list[str]
    offsets: np.ndarray[Any, np.dtype[np.int64]]
    lengths: np.ndarray[Any, np.dtype[np.int64]]

    @property
    def per_variable(self) -> int:
        return self.side**3

    def variables(self) -> list[tuple[str, int, int]]:
        """``(variable, first global index, count)`` of every variable that has references."""
        out = []
        for v, variable in enumerate(VARIABLES):
            start = v * self.per_variable
            if start >= self.n:
                break
            out.append((variable, start, min(self.per_variable, self.n - start)))
        return out

    def metadata(self) -> dict[str, Any]:
        """The zarr v2 metadata documents (key -> JSON value) both sides carry."""
        meta: dict[str, Any] = {".zgroup": {"zarr_format": 2}, ".zattrs": {"title": "benchmark"}}
        for variable, _, _ in self.variables():
            meta[f"{variable}/.zarray"] = json.loads(zarray([self.side] * 3, "<f4"))
            meta[f"{variable}/.zattrs"] = {"_ARRAY_DIMENSIONS": ["a", "b", "c"]}
        return meta

    def reference(self, g: int) -> tuple[str, int, int]:
        return self.paths[g], int(self.offsets[g]), int(self.lengths[g])


def key_of(g: int, side: int) -> str:
    """The chunk key of global index ``g`` (``n`` need not be known: the grid is)."""
    v, c = divmod(g, side**3)
    return f"{VARIABLES[v]}/{c // side**2}.{c // side % side}.{c % side}"


def grid_keys(n: int, side: int) -> list[str]:
    """Every chunk key in grid order, built by concatenation (about 1.5 s for 1e7)."""
    digits = [str(x) for x in range(side)]
    keys: list[str] = []
    for variable in VARIABLES:
        if len(keys) >= n:
            break
        heads = [f"{variable}/{a}.{b}." for a in digits for b in digits]
        keys += [h + d for h in heads for d in digits]
    del keys[n:]
    return keys


def make_refs(n: int, seed: int, regular: bool) -> Refs:
    side = grid_side(n)
    keys = grid_keys(n, side)
    g = np.arange(n, dtype=np.int64)
    if regular:
        per_variable = side**3
        files = [f"s3://bucket/{v}.bin" for v in VARIABLES]
        paths = np.array(files, dtype=object)[g // per_variable].tolist()
        offsets = HEADER + (g % per_variable) * REGULAR_CHUNK
        lengths = np.full(n, REGULAR_CHUNK, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        files = [f"s3://bucket/f{i}.nc" for i in range(FILES)]
        paths = np.array(files, dtype=object)[rng.integers(0, FILES, n)].tolist()
        offsets = rng.integers(0, 1 << 36, n, dtype=np.int64)
        lengths = rng.integers(1_000, 200_000, n, dtype=np.int64)
    return Refs(n, side, keys, paths, offsets, lengths)


def manifest_of(refs: Refs, order: Sequence[int] | None = None) -> kvmap.Manifest:
    """The kvmap manifest of the references: metadata as inline JSON, then one exact entry each
    (in grid order, or in ``order``)."""
    before = [{"key": k, "json": v} for k, v in refs.metadata().items()]
    if order is None:
        return kvmap.Manifest.from_references(
            refs.keys, refs.paths, refs.offsets.tolist(), refs.lengths.tolist(), before=before
        )
    index = np.asarray(order)
    keys, paths = [refs.keys[g] for g in order], [refs.paths[g] for g in order]
    return kvmap.Manifest.from_references(
        keys, paths, refs.offsets[index].tolist(), refs.lengths[index].tolist(), before=before
    )


def write_kerchunk_directory(root: str, refs: Refs) -> None:
    """The kerchunk parquet directory, written by fsspec's writer fed whole records."""
    from fsspec.implementations.reference import LazyReferenceMapper

    out = LazyReferenceMapper.create(root, record_size=RECORD_SIZE)
    for key, value in refs.metadata().items():
        out[key] = json.dumps(value)
    for variable, start, count in refs.variables():
        for record in range(math.ceil(count / RECORD_SIZE)):
            a = start + record * RECORD_SIZE
            b = min(start + count, a + RECORD_SIZE)
            rows = zip(refs.paths[a:b], refs.offsets[a:b].tolist(), refs.lengths[a:b].tolist(), strict=True)
            out._items[(variable, record)] = dict(enumerate(map(list, rows)))
            out.write(variable, record)
    out.flush()


def write_manifest_json(path: Path, before: Sequence[dict[str, Any]], columns: Columns, order: Sequence[int]) -> None:
    """A kvmap manifest document: the entries ``before``, then one exact entry per reference in
    ``order`` (indices into the columns), written in pieces."""
    keys, paths, offsets, lengths = columns
    with open(path, "w") as f:
        f.write('{"kvmap":1,"entries":[' + ",".join(json.dumps(e, separators=(",", ":")) for e in before))
        for a in range(0, len(order), 200_000):
            part = order[a : a + 200_000]
            f.write(
                "".join(
                    f',{{"key":"{keys[g]}","path":"{paths[g]}","offset":{offsets[g]},"length":{lengths[g]}}}'
                    for g in part
                )
            )
        f.write("]}")


def write_kvmap_json(path: Path, refs: Refs, seed: int) -> None:
    """The kvmap manifest document of the references, entries in shuffled order."""
    before = [{"key": k, "json": v} for k, v in refs.metadata().items()]
    columns = (refs.keys, refs.paths, refs.offsets.tolist(), refs.lengths.tolist())
    write_manifest_json(path, before, columns, shuffled(refs.n, seed))


def shuffled(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed + 1).permutation(n).tolist()


def write_kerchunk_json(path: Path, refs: Refs) -> None:
    """A kerchunk version 1 document of the references, in grid order, written in pieces."""
    meta = {k: json.dumps(v) for k, v in refs.metadata().items()}
    with open(path, "w") as f:
        f.write('{"version":1,"refs":{' + json.dumps(meta)[1:-1])
        for a in range(0, refs.n, 200_000):
            b = min(refs.n, a + 200_000)
            rows = zip(
                refs.keys[a:b], refs.paths[a:b], refs.offsets[a:b].tolist(), refs.lengths[a:b].tolist(), strict=True
            )
            f.write("".join(f',"{k}":["{p}",{o},{n}]' for k, p, o, n in rows))
        f.write("}}")


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- reading kvmap-parquet from a local file -----------------------------------------------


class PreadFile:
    """Answers a loader's fetches (``Fetch("", byte_range)``) with ``os.pread`` of only those bytes."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.reads = 0
        self.bytes = 0

    def close(self) -> None:
        os.close(self.fd)

    def read(self, request: Fetch) -> bytes | None:
        if request.name:
            return None
        start, end = request.byte_range or (0, None)
        if start is None:
            start, end = max(0, self.size - (end or 0)), self.size
        elif end is None or end > self.size:
            end = self.size
        self.reads += 1
        self.bytes += max(0, end - start)
        return os.pread(self.fd, max(0, end - start), start)

    def drive(self, loading: Generator[Fetch, bytes | None, Any]) -> Any:
        """Run a loader or lookup to its end (the loop of ``kvmap.fetch.drive``)."""
        try:
            request = next(loading)
            while True:
                request = loading.send(self.read(request))
        except StopIteration as stop:
            return stop.value


def kvmap_parquet() -> Any | None:
    """The module ``kvmap.formats.kvmap_parquet``, or ``None`` while it does not exist."""
    try:
        import kvmap.formats.kvmap_parquet as module
    except ImportError:
        return None
    return module


def open_columnar(path: str, io: PreadFile) -> Any:
    module = kvmap_parquet()
    assert module is not None
    return io.drive(module.open_kvmap_parquet(Path(path).as_uri(), name=path))


def same(found: Any, expected: tuple[str, int, int]) -> bool:
    if found is None:
        return False
    if isinstance(found, list):
        return tuple(found) == expected
    return (found.url, found.offset, found.length) == expected


# -- part 1: open + first key ----------------------------------------------------------------


def trial_open_kvmap(path: str, key: str, expected: tuple[str, int, int], stats: dict[str, int]) -> float:
    module = kvmap_parquet()
    assert module is not None
    url = Path(path).as_uri()

    def run() -> Any:
        io = PreadFile(path)
        try:
            cm = io.drive(module.open_kvmap_parquet(url, name=path))
            found = io.drive(cm.resolve_io(key))
        finally:
            io.close()
        stats.update(reads=io.reads, bytes=io.bytes)
        return found

    seconds, found = time_call(run)
    if not same(found, expected):
        raise RuntimeError(f"kvmap-parquet resolved {key!r} to {found}, expected {expected}")
    return seconds * 1e3


def trial_open_reader(path: str, key: str, expected: tuple[str, int, int]) -> float:
    seconds, found = time_call(lambda: kvmap.Reader(path, allow=ALLOW).locate_sync(key))
    if not same(found, expected):
        raise RuntimeError(f"Reader.locate_sync({key!r}) gave {found}, expected {expected}")
    return seconds * 1e3


def trial_open_fsspec(root: str, key: str, expected: tuple[str, int, int]) -> float:
    from fsspec.implementations.reference import LazyReferenceMapper

    seconds, found = time_call(lambda: LazyReferenceMapper(root)[key])
    if not same(found, expected):
        raise RuntimeError(f"LazyReferenceMapper gave {found} for {key!r}, expected {expected}")
    return seconds * 1e3


def part_open(paths: Paths, refs: Refs, repeat: int, seed: int) -> None:
    g = random.Random(seed).randrange(refs.n)
    key, expected = refs.keys[g], refs.reference(g)
    stats: dict[str, int] = {}
    trials: dict[str, Callable[[], float]] = {"fsspec": lambda: trial_open_fsspec(paths.kerchunk, key, expected)}
    trials["kvmap"] = lambda: trial_open_kvmap(paths.columnar, key, expected, stats)
    notes = []
    if reader_opens(paths.columnar, key, expected, notes):
        trials["reader"] = lambda: trial_open_reader(paths.columnar, key, expected)
    for trial in trials.values():
        trial()  # imports and first use (pyarrow; pandas, fastparquet), untimed
    results = run_trials(trials, repeat)
    rows = [
        Row(
            "open_kvmap_parquet + resolve_io vs LazyReferenceMapper + mapper[key]",
            results["kvmap"],
            results["fsspec"],
            OPEN_TARGET,
        )
    ]
    if "reader" in results:
        rows.append(
            Row("kvmap.Reader(path).locate_sync(key) vs the same", results["reader"], results["fsspec"], OPEN_TARGET)
        )
    notes.insert(0, f"kvmap read {stats['bytes']:,} bytes of its file in {stats['reads']} preads to open and resolve")
    print_report("1. open + first key", "ms", rows, params(refs, repeat, seed, paths), notes)


def reader_opens(path: str, key: str, expected: tuple[str, int, int], notes: list[str]) -> bool:
    """Whether ``kvmap.Reader`` opens the .parquet manifest and answers (wired separately)."""
    try:
        found = kvmap.Reader(path, allow=ALLOW).locate_sync(key)
    except Exception as exc:
        notes.append(f"kvmap.Reader on the .parquet file failed ({type(exc).__name__}: {exc}); its rows left out")
        return False
    if not same(found, expected):
        notes.append(f"kvmap.Reader gave {found} for {key!r}, expected {expected}; its rows left out")
        return False
    return True


# -- part 2: warm lookups ----------------------------------------------------------------


def slab_indices(refs: Refs) -> range:
    """Global indices of one grid slab ``temperature/<i>.*.*`` that lies inside one fsspec record."""
    s2 = refs.side**2
    count = min(refs.per_variable, refs.n)
    for i in range(refs.side):
        a, b = i * s2, (i + 1) * s2
        if b <= count and a // RECORD_SIZE == (b - 1) // RECORD_SIZE:
            return range(a, b)
    return range(0, min(count, RECORD_SIZE))


def part_warm(paths: Paths, refs: Refs, repeat: int, seed: int) -> None:
    from fsspec.implementations.reference import LazyReferenceMapper

    module = kvmap_parquet()
    assert module is not None
    rng = random.Random(seed)
    slab = slab_indices(refs)
    picks = [rng.choice(slab) for _ in range(LOOKUPS)]
    io = PreadFile(paths.columnar)
    cm = open_columnar(paths.columnar, io)
    mapper = LazyReferenceMapper(paths.kerchunk)
    notes: list[str] = []
    reader = None
    if reader_opens(paths.columnar, refs.keys[0], refs.reference(0), notes):
        reader = kvmap.Reader(paths.columnar, allow=ALLOW)

    def lookup(k: str) -> Any:
        return io.drive(cm.resolve_io(k))

    sides: dict[str, Callable[[str], Any]] = {"kvmap": lookup, "fsspec": mapper.__getitem__}
    batches: dict[str, Callable[[list[str]], Any]] = {"kvmap many": lambda keys: io.drive(cm.resolve_many_io(keys))}
    if reader is not None:
        sides["reader"] = reader.locate_sync
        if hasattr(reader, "resolve_sync"):
            sides["reader resolve"] = lambda k: reader.resolve_sync([k])[0]
            batches["reader many"] = reader.resolve_sync
    for name, fn in sides.items():  # the warm-up pass, every answer checked
        for g in picks:
            if not same(found := fn(refs.keys[g]), refs.reference(g)):
                raise RuntimeError(f"{name} gave {found} for {refs.keys[g]!r}, expected {refs.reference(g)}")
    for name, many in batches.items():
        answers = many([refs.keys[g] for g in picks])
        if not all(same(a, refs.reference(g)) for a, g in zip(answers, picks, strict=True)):
            raise RuntimeError(f"{name}: a wrong answer")

    def loop(fn: Callable[[str], Any]) -> Callable[[], float]:
        def trial() -> float:
            keys = fresh(refs.keys[g] for g in picks)
            return time_loop(fn, keys) / LOOKUPS * 1e6

        return trial

    def batch(many: Callable[[list[str]], Any]) -> Callable[[], float]:
        def trial() -> float:
            keys = fresh(refs.keys[g] for g in picks)
            seconds, _ = time_call(lambda: many(keys))
            return seconds / LOOKUPS * 1e6

        return trial

    trials = {name: loop(fn) for name, fn in sides.items()} | {name: batch(fn) for name, fn in batches.items()}
    reads_before = io.reads
    results = run_trials(trials, repeat)
    base = results["fsspec"]
    rows = [Row("pread_drive(cm.resolve_io(k)) vs mapper[k]", results["kvmap"], base, WARM_TARGET)]
    if reader is not None:
        rows.append(Row("kvmap.Reader(path).locate_sync(k) vs mapper[k]", results["reader"], base, WARM_TARGET))
    if "reader resolve" in results:
        rows.append(Row("  Reader.resolve_sync([k])[0] (first hop only)", results["reader resolve"], base))
    rows.append(Row("  cm.resolve_many_io(10,000 keys), per key", results["kvmap many"], base))
    if "reader many" in results:
        rows.append(Row("  Reader.resolve_sync(10,000 keys), per key", results["reader many"], base))
    blocks = getattr(module, "DEFAULT_BLOCK_ROWS", None)
    notes[:0] = [
        f"keys: {LOOKUPS:,} drawn from the {len(slab):,} keys temperature/{slab.start // refs.side**2}.*.* "
        f"(chunk numbers {slab.start:,}-{slab.stop - 1:,}: one fsspec record; contiguous in sorted order"
        + (f", at most {math.ceil(len(slab) / blocks) + 1} kvmap blocks of {blocks:,} rows)" if blocks else ")")
        + ", every key looked up once before the timing",
        f"kvmap's map read its file {io.reads - reads_before} times during the timed rounds (0: every lookup warm)",
    ]
    io.close()
    print_report("2. warm lookups", "us/lookup", rows, params(refs, repeat, seed, paths), notes)


# -- part 3: file size ---------------------------------------------------------------------


def part_size(paths: Paths, refs: Refs, repeat: int, seed: int) -> None:
    module = kvmap_parquet()
    assert module is not None
    columnar, directory = tree_bytes(Path(paths.columnar)), tree_bytes(Path(paths.kerchunk))
    files = sum(1 for p in Path(paths.kerchunk).rglob("*") if p.is_file())
    manifest = manifest_of(refs, shuffled(refs.n, seed))
    mixed = len(module.to_kvmap_parquet(manifest))
    del manifest
    rows = [
        Row("kvmap-parquet file vs kerchunk parquet directory", [columnar / refs.n], [directory / refs.n], SIZE_TARGET),
        Row("  the manifest's entries in shuffled order (as part 5's JSON)", [mixed / refs.n], [directory / refs.n]),
    ]
    notes = [
        f"kvmap-parquet: {columnar:,} bytes in one file ({mixed:,} from the shuffled manifest); kerchunk: "
        f"{directory:,} bytes in {files} files",
        "the manifest of the first row lists its entries in grid order (kerchunk's order); kvmap-parquet stores "
        "each piece's entry number, so the entries' order changes its size",
        "kerchunk pads each variable's last record to 100,000 rows (fsspec's writer)",
    ]
    print_report("3. file size", "B/entry", rows, params(refs, 1, seed, paths), notes)


# -- part 4: resident memory (one subprocess per side) -------------------------------------


def statm_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """One side's RSS after its imports, after first use on a tiny file, and after open + lookups."""
    side, n = spec["side"], spec["n"]
    keys = [key_of(int(g), side) for g in np.random.default_rng(spec["seed"]).integers(0, n, LOOKUPS)]
    if spec["side_name"] == "fsspec":
        import fastparquet  # noqa: F401
        import pandas  # noqa: F401
        from fsspec.implementations.reference import LazyReferenceMapper

        def lookups(path: str, keys: Sequence[str]) -> tuple[Any, list[Any]]:
            mapper = LazyReferenceMapper(path)
            return mapper, [mapper[k] for k in keys]
    elif spec["side_name"] == "reader":
        import pyarrow.compute
        import pyarrow.parquet

        kvmap_parquet()

        def lookups(path: str, keys: Sequence[str]) -> tuple[Any, list[Any]]:
            reader = kvmap.Reader(path, allow=ALLOW)
            return reader, [reader.locate_sync(k) for k in keys]
    else:
        import pyarrow.compute
        import pyarrow.parquet  # noqa: F401

        kvmap_parquet()

        def lookups(path: str, keys: Sequence[str]) -> tuple[Any, list[Any]]:
            io = PreadFile(path)
            cm = open_columnar(path, io)
            found = [io.drive(cm.resolve_io(k)) for k in keys]
            io.close()
            stats.update(reads=io.reads, bytes=io.bytes)
            return cm, found

    stats: dict[str, int] = {}
    gc.collect()
    imported = statm_rss()
    # First use (pyarrow's or pandas' runtime, allocator arenas) on another, tiny reference set.
    first = lookups(spec["tiny"], [key_of(0, spec["tiny_side"])])
    if first[1][0] is None:
        raise RuntimeError(f"{spec['side_name']}: nothing found in the tiny reference set")
    del first
    gc.collect()
    before = statm_rss()
    start = perf_counter()
    kept = lookups(spec["path"], keys)
    seconds = perf_counter() - start
    gc.collect()
    after = statm_rss()
    missing = sum(f is None for f in kept[1])
    return {"imported": imported, "before": before, "after": after, "missing": missing, "seconds": seconds, **stats}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {spec['task']} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def part_memory(paths: Paths, refs: Refs, repeat: int, seed: int) -> None:
    module = kvmap_parquet()
    assert module is not None
    tiny = make_refs(TINY, seed, paths.regular)
    tiny_kvmap, tiny_kerchunk = str(Path(paths.tmp) / "tiny.kvmap.parquet"), str(Path(paths.tmp) / "tiny-refs")
    Path(tiny_kvmap).write_bytes(module.to_kvmap_parquet(manifest_of(tiny)))
    write_kerchunk_directory(tiny_kerchunk, tiny)
    base = {"task": "memory", "n": refs.n, "side": refs.side, "seed": seed, "tiny_side": tiny.side}
    specs = {
        "kvmap": {**base, "side_name": "kvmap", "path": paths.columnar, "tiny": tiny_kvmap},
        "fsspec": {**base, "side_name": "fsspec", "path": paths.kerchunk, "tiny": tiny_kerchunk},
    }
    notes: list[str] = []
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}

    def trial(name: str) -> Callable[[], float]:
        def run() -> float:
            result = run_child(specs[name])
            if result["missing"]:
                raise RuntimeError(f"{name}: {result['missing']} of the lookups found nothing")
            seen[name].append(result)
            return (result["after"] - result["before"]) / refs.n

        return run

    results = run_trials({name: trial(name) for name in specs}, repeat)
    rows = [
        Row(
            "open_kvmap_parquet + 10,000 resolve_io vs LazyReferenceMapper + mapper[k]",
            results["kvmap"],
            results["fsspec"],
            max_value=MEMORY_TARGET,
        )
    ]
    if "reader" in results:
        rows.append(
            Row(
                "kvmap.Reader + 10,000 locate_sync vs the same",
                results["reader"],
                results["fsspec"],
                max_value=MEMORY_TARGET,
            )
        )
    for name in specs:
        mib = [(r["after"] - r["before"]) / 2**20 for r in seen[name]]
        first = (seen[name][0]["before"] - seen[name][0]["imported"]) / 2**20
        one = seen[name][0]
        notes.append(
            f"{name}: growth {sorted(mib)[len(mib) // 2]:.1f} MiB (median); RSS after imports "
            f"{one['imported'] / 2**20:.0f} MiB, then {first:+.0f} MiB for first use (not counted); "
            f"open + lookups took {one['seconds']:.1f} s"
            + (f", reading {one['reads']:,} ranges ({one['bytes'] / 1e6:,.0f} MB)" if "reads" in one else "")
        )
    notes.append(
        "10,000 random keys of the whole map, the same in every subprocess; first use: one open + lookup of "
        f"another {TINY:,}-entry reference set in the same form, after the imports and before the measurement"
    )
    print_report("4. resident memory growth", "B/entry", rows, params(refs, repeat, seed, paths), notes)


# -- part 5: build (one subprocess per side) ------------------------------------------------


def peak_rss() -> int:
    """This process's peak resident set (``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    how = spec["how"]
    if how == "fsspec":
        import fastparquet  # noqa: F401
        import kerchunk.df  # noqa: F401
        import pandas  # noqa: F401
        from fsspec.implementations.reference import LazyReferenceMapper

        def build() -> None:
            with open(spec["source"], "rb") as f:
                refs = json.load(f)["refs"]
            out = LazyReferenceMapper.create(spec["out"], record_size=RECORD_SIZE)
            for key, value in refs.items():
                out[key] = value
            out.flush()
    else:
        import pyarrow.parquet  # noqa: F401

        module = kvmap_parquet()
        assert module is not None
        if how == "to_kvmap_parquet":

            def build() -> None:
                data = module.to_kvmap_parquet(kvmap.Manifest.load(spec["source"]))
                Path(spec["out"]).write_bytes(data)
        elif how == "convert":

            def build() -> None:
                kvmap.convert(spec["source"], spec["out"], source_format=spec["format"], target_format="kvmap-parquet")
        else:

            def build() -> None:
                module.build_kvmap_parquet(spec["source"], spec["out"], source_format=spec["format"])

    start_rss = statm_rss()
    start = perf_counter()
    build()
    seconds = perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries the parent's peak over a (v)fork + exec into ru_maxrss.
    peak = peak_rss()
    out = Path(spec["out"])
    digest = hashlib.sha1(out.read_bytes()).hexdigest() if out.is_file() else None
    return {"seconds": seconds, "peak": peak, "start": start_rss, "size": tree_bytes(out), "sha1": digest}


def part_build(paths: Paths, refs: Refs, repeat: int, seed: int) -> None:
    module = kvmap_parquet()
    assert module is not None
    kvmap_json, kerchunk_json = Path(paths.tmp) / "manifest.json", Path(paths.tmp) / "refs.json"
    start = perf_counter()
    write_kvmap_json(kvmap_json, refs, seed)
    write_kerchunk_json(kerchunk_json, refs)
    made = perf_counter() - start
    out = Path(paths.tmp) / "built"
    specs: dict[str, dict[str, Any]] = {
        "to_kvmap_parquet": {"how": "to_kvmap_parquet", "source": str(kvmap_json), "out": f"{out}.a.parquet"},
        "fsspec": {"how": "fsspec", "source": str(kerchunk_json), "out": f"{out}.refs"},
    }
    if hasattr(module, "build_kvmap_parquet"):
        specs["build"] = {"how": "build", "format": "kvmap", "source": str(kvmap_json), "out": f"{out}.b.parquet"}
        specs["build kerchunk"] = {
            "how": "build",
            "format": "kerchunk",
            "source": str(kerchunk_json),
            "out": f"{out}.c.parquet",
        }
        specs["convert"] = {"how": "convert", "format": "kvmap", "source": str(kvmap_json), "out": f"{out}.d.parquet"}
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}

    def trial(name: str) -> Callable[[], float]:
        def run() -> float:
            result = run_child({"task": "build", **specs[name]})
            seen[name].append(result)
            return float(result["seconds"])

        return run

    run_trials({name: trial(name) for name in specs}, repeat)

    def values(name: str, field: str, scale: float = 1.0) -> list[float]:
        return [r[field] / scale for r in seen[name]]

    time_rows = [
        Row(
            "to_kvmap_parquet(Manifest.load(kvmap json)) vs fsspec writer from kerchunk json",
            values("to_kvmap_parquet", "seconds"),
            values("fsspec", "seconds"),
        )
    ]
    peak_rows = [
        Row(
            "to_kvmap_parquet(Manifest.load(kvmap json)) vs fsspec writer from kerchunk json",
            values("to_kvmap_parquet", "peak", 2**20),
            values("fsspec", "peak", 2**20),
        )
    ]
    for name, case in (
        ("build", "build_kvmap_parquet(kvmap json) vs the same"),
        ("build kerchunk", "build_kvmap_parquet(kerchunk json) vs the same"),
        ("convert", "kvmap.convert(kvmap json, .kvmap.parquet) vs the same"),
    ):
        if name in seen:
            time_rows.append(Row(case, values(name, "seconds"), values("fsspec", "seconds")))
            peak_rows.append(
                Row(case, values(name, "peak", 2**20), values("fsspec", "peak", 2**20), max_value=BUILD_PEAK_TARGET)
            )
    sizes = ", ".join(f"{name} {seen[name][0]['size']:,}" for name in specs)
    notes = [
        f"sources: kvmap json {tree_bytes(kvmap_json):,} bytes (entries shuffled), kerchunk json "
        f"{tree_bytes(kerchunk_json):,} bytes (grid order); written in {made:.1f} s",
        f"outputs (bytes): {sizes}",
        "RSS after imports (MiB): " + ", ".join(f"{k} {v[0]['start'] / 2**20:.0f}" for k, v in seen.items()),
    ]
    if "build" not in specs:
        notes.append("build_kvmap_parquet does not exist yet: its rows (the 1 GiB target) are left out")
    else:
        same_file = {r["sha1"] for r in seen["build"] + seen["convert"] + seen["to_kvmap_parquet"]}
        notes.append(
            "build_kvmap_parquet(kvmap json), kvmap.convert and to_kvmap_parquet(Manifest.load(kvmap json)) wrote "
            + ("the same bytes" if len(same_file) == 1 else "DIFFERENT bytes")
        )
    kvmap_json.unlink()
    kerchunk_json.unlink()
    p = params(refs, repeat, seed, paths)
    print_report("5a. build time (imports excluded)", "s", time_rows, p, notes)
    print_report("5b. build peak memory (VmHWM, imports included)", "MiB", peak_rows, p)


# -- part 6: reading through zarr ------------------------------------------------------------


def zarr_documents(chunks: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The zarr v3 group and array documents of a uint8 array of ``chunks`` chunks of 64 bytes."""
    import zarr

    store = zarr.storage.MemoryStore()
    group = zarr.create_group(store, zarr_format=3)
    group.create_array(
        "a",
        shape=(chunks * ZARR_CHUNK,),
        chunks=(ZARR_CHUNK,),
        dtype="uint8",
        compressors=None,
        filters=None,
        fill_value=0,
    )
    docs = store._store_dict
    return json.loads(docs["zarr.json"].to_bytes()), json.loads(docs["a/zarr.json"].to_bytes())


def chunk_bytes(g: int) -> bytes:
    return g.to_bytes(8, "little") * (ZARR_CHUNK // 8)


def zarr_columns(tmp: Path, chunks: int) -> tuple[list[dict[str, Any]], Columns]:
    """Chunk ``g`` of ``a`` is the window ``(g // 8) * 64`` of data file ``g % 8``."""
    group, array = zarr_documents(chunks)
    urls = [(tmp / f"data{i}.bin").as_uri() for i in range(ZARR_FILES)]
    g = np.arange(chunks, dtype=np.int64)
    paths = np.array(urls, dtype=object)[g % ZARR_FILES].tolist()
    offsets = (HEADER + (g // ZARR_FILES) * ZARR_CHUNK).tolist()
    keys = [f"a/c/{i}" for i in range(chunks)]
    before = [{"key": "zarr.json", "json": group}, {"key": "a/zarr.json", "json": array}]
    return before, (keys, paths, offsets, [ZARR_CHUNK] * chunks)


def zarr_manifest(tmp: Path, chunks: int) -> kvmap.Manifest:
    before, (keys, paths, offsets, lengths) = zarr_columns(tmp, chunks)
    return kvmap.Manifest.from_references(keys, paths, offsets, lengths, before=before)


def zarr_json(tmp: Path, chunks: int, path: Path) -> None:
    """The same manifest as a JSON file (written in pieces: ``Manifest.save`` of a manifest built
    with ``from_references`` makes a dict per entry, about 15 s for 1e6)."""
    before, columns = zarr_columns(tmp, chunks)
    write_manifest_json(path, before, columns, range(chunks))


def write_zarr_data(tmp: Path, chunks: int, picked: Sequence[int]) -> None:
    """Eight sparse data files, with real bytes in the picked chunks."""
    per_file = math.ceil(chunks / ZARR_FILES)
    fds = [os.open(tmp / f"data{i}.bin", os.O_RDWR | os.O_CREAT, 0o644) for i in range(ZARR_FILES)]
    try:
        for fd in fds:
            os.ftruncate(fd, HEADER + per_file * ZARR_CHUNK)
        for g in picked:
            os.pwrite(fds[g % ZARR_FILES], chunk_bytes(g), HEADER + (g // ZARR_FILES) * ZARR_CHUNK)
    finally:
        for fd in fds:
            os.close(fd)


def zarr_rounds(files: dict[str, str], picks: dict[str, list[int]], repeat: int) -> dict[str, list[float]]:
    """Per round and side (the order rotating): a new store read cold, then the same chunks warm."""
    import zarr

    def read_all(array: Any, side: str) -> None:
        for g in picks[side]:
            array[g * ZARR_CHUNK : (g + 1) * ZARR_CHUNK]

    results: dict[str, list[float]] = {f"{side} {how}": [] for side in files for how in ("cold", "warm")}
    names = list(files)
    for r in range(repeat):
        for side in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            start = perf_counter()
            array = zarr.open_array(store=kvmap.KVMapStore(files[side]), path="a", mode="r")
            read_all(array, side)
            results[f"{side} cold"].append((perf_counter() - start) / len(picks[side]) * 1e6)
            gc.collect()
            seconds, _ = time_call(lambda array=array, side=side: read_all(array, side))
            results[f"{side} warm"].append(seconds / len(picks[side]) * 1e6)
            del array
    return results


def check_zarr(path: str, picks: Sequence[int]) -> None:
    import zarr

    array = zarr.open_array(store=kvmap.KVMapStore(path), path="a", mode="r")
    for g in picks[:200]:
        got = array[g * ZARR_CHUNK : (g + 1) * ZARR_CHUNK].tobytes()
        if got != chunk_bytes(g):
            raise RuntimeError(f"{path}: chunk {g} read {got[:16]!r}..., expected {chunk_bytes(g)[:16]!r}...")


def part_zarr(tmp: Path, n: int, json_n: int, repeat: int, seed: int) -> None:
    module = kvmap_parquet()
    assert module is not None
    rng = random.Random(seed)
    picks = {
        "columnar": [rng.randrange(n) for _ in range(ZARR_READS)],
        "json": [rng.randrange(json_n) for _ in range(ZARR_READS)],
    }
    start = perf_counter()
    write_zarr_data(tmp, max(n, json_n, TINY), picks["columnar"] + picks["json"] + list(range(10)))
    files = {"columnar": str(tmp / "zarr.parquet"), "json": str(tmp / "zarr.json")}
    Path(files["columnar"]).write_bytes(module.to_kvmap_parquet(zarr_manifest(tmp, n)))
    gc.collect()
    zarr_json(tmp, json_n, Path(files["json"]))
    made = perf_counter() - start
    # First use (zarr's imports, pyarrow's runtime) on 1,000-chunk copies of both forms, untimed.
    tiny = {"columnar": str(tmp / "tiny.parquet"), "json": str(tmp / "tiny.json")}
    Path(tiny["columnar"]).write_bytes(module.to_kvmap_parquet(zarr_manifest(tmp, TINY)))
    zarr_json(tmp, TINY, Path(tiny["json"]))
    zarr_rounds(tiny, {"columnar": list(range(10)), "json": list(range(10))}, 2)
    results = zarr_rounds(files, picks, repeat)
    for side in files:
        check_zarr(files[side], picks[side])
    rows = [
        Row(
            f"cold: {n:,}-entry kvmap-parquet vs {json_n:,}-entry JSON (new store, open in the timing)",
            results["columnar cold"],
            results["json cold"],
            ZARR_COLD_TARGET,
        ),
        Row(
            "warm: the same 2,000 chunks again on that store",
            results["columnar warm"],
            results["json warm"],
            ZARR_WARM_TARGET,
        ),
    ]
    sizes = {side: tree_bytes(Path(f)) for side, f in files.items()}
    notes = [
        f"manifests: kvmap-parquet {sizes['columnar']:,} bytes, JSON {sizes['json']:,} bytes; "
        f"data: {ZARR_FILES} sparse files of {tree_bytes(tmp / 'data0.bin'):,} bytes; made in {made:.1f} s",
        "2,000 random chunks per side (of its own array), one arr[i*64:(i+1)*64] call each; bytes checked after",
        "each round and side: a new KVMapStore + zarr.open_array + the reads (cold), then the reads again (warm)",
    ]
    param = {"n": n, "json_n": json_n, "reads": ZARR_READS, "repeat": repeat, "seed": seed}
    print_report("6. 2,000 random chunks through zarr (KVMapStore)", "us/chunk", rows, param, notes)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Paths:
    tmp: str
    columnar: str
    kerchunk: str
    regular: bool


def params(refs: Refs, repeat: int, seed: int, paths: Paths) -> dict[str, object]:
    return {"n": refs.n, "windows": "regular" if paths.regular else "irregular", "repeat": repeat, "seed": seed}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="number of chunk references")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regular", action="store_true", help="perfectly regular windows (one file per variable)")
    parser.add_argument("--parts", default="1,2,3,4,5,6", help="comma-separated parts to run (1-6)")
    parser.add_argument("--subprocess-repeat", type=int, default=None, help="subprocesses per side in parts 4 and 5")
    parser.add_argument("--json-n", type=int, default=None, help="entries of part 6's JSON manifest")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        spec = json.loads(args.child)
        result = child_memory(spec) if spec["task"] == "memory" else child_build(spec)
        print(json.dumps(result))
        return
    warnings.filterwarnings("ignore", message=".*fastparquet.*")  # pandas deprecates the engine fsspec uses
    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    module = kvmap_parquet()
    if module is None:
        print("kvmap.formats.kvmap_parquet does not exist yet: only the baseline side is built")
    else:
        source = Path(module.__file__ or "")
        digest = hashlib.sha1(source.read_bytes()).hexdigest()[:12]
        print(
            f"measuring {source.name} sha1 {digest} (block_rows {getattr(module, 'DEFAULT_BLOCK_ROWS', '?'):,}, "
            f"cache_bytes {getattr(module, 'DEFAULT_CACHE_BYTES', 0) / 2**20:.0f} MiB)"
        )
    with tempfile.TemporaryDirectory(prefix="kvmap-scale-", dir="/tmp") as tmp:
        disk = shutil.disk_usage(tmp)
        print(f"temporary directory {tmp}: {disk.free / 2**30:.1f} GiB free of {disk.total / 2**30:.1f} GiB")
        if parts & {1, 2, 3, 4, 5}:
            run_reference_parts(Path(tmp), args, parts, module)
        if 6 in parts and module is not None:
            part_zarr(Path(tmp), args.n, args.json_n or min(args.n, 1_000_000), args.repeat, args.seed)


def run_reference_parts(tmp: Path, args: argparse.Namespace, parts: set[int], module: Any) -> None:
    start = perf_counter()
    refs = make_refs(args.n, args.seed, args.regular)
    made = perf_counter() - start
    paths = Paths(str(tmp), str(tmp / "refs.kvmap.parquet"), str(tmp / "refs"), args.regular)
    line = f"references made in {made:.1f} s"
    if parts & {1, 2, 3, 4} or module is None:  # part 5 builds its own from JSON
        start = perf_counter()
        write_kerchunk_directory(paths.kerchunk, refs)
        line += f"; kerchunk directory ({tree_bytes(Path(paths.kerchunk)):,} bytes) written in "
        line += f"{perf_counter() - start:.1f} s"
        if module is not None:
            start = perf_counter()
            manifest = manifest_of(refs)
            Path(paths.columnar).write_bytes(module.to_kvmap_parquet(manifest))
            del manifest
            line += f"; kvmap-parquet ({tree_bytes(Path(paths.columnar)):,} bytes) written in "
            line += f"{perf_counter() - start:.1f} s (from_references + to_kvmap_parquet)"
    gc.collect()
    print(line)
    if module is None:
        return
    sub_repeat = args.subprocess_repeat or (1 if args.n >= 5_000_000 else min(args.repeat, 3))
    steps: dict[int, Callable[[Paths, Refs, int, int], None]] = {
        1: part_open,
        2: part_warm,
        3: part_size,
        4: part_memory,
    }
    for part in sorted(parts & set(steps)):
        steps[part](paths, refs, sub_repeat if part == 4 else args.repeat, args.seed)
        gc.collect()
        sys.stdout.flush()
    if 5 in parts:
        part_build(paths, refs, sub_repeat, args.seed)
    shutil.rmtree(paths.kerchunk, ignore_errors=True)


if __name__ == "__main__":
    main()
