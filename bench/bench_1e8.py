"""One hundred million references as one kvmap-parquet file, built by streaming, against the
kerchunk parquet references of the same references: ``bench_scale.py`` at a size where nothing may
be held whole.

``bench_scale.py`` holds every reference in Python lists (and part 5 feeds fsspec's writer a whole
kerchunk JSON, 4.8 GiB at 1e7): it does not go to 1e8 on a 24 GiB machine. This script keeps only
what it measures: it makes the references of ``bench_scale.make_refs(n, seed, regular=False)`` chunk
by chunk (numpy's generator draws the same numbers in pieces as in one call, so three generators
started where ``make_refs`` starts its paths, offsets and lengths give the same columns; ``--check``
compares with ``make_refs``, with ``to_kvmap_parquet`` of its manifest and with
``bench_scale.write_kerchunk_directory`` of it, for an ``n`` that fits in memory). fsspec's
``LazyReferenceMapper`` writes a record's parquet file and frees the record, so the kerchunk
directory is written from the same stream, record by record, in little memory. Keys are the zarr v2
grid keys ``temperature/12.34.56`` of four variables, windows irregular over 1,000 files, as in
``bench_scale.py``; fsspec reads with its defaults (fastparquet engine, 128 records cached) except
in the warm lookups (below).

1. **JSON**: the kvmap manifest document of the references (the metadata documents as inline JSON
   entries, then one exact entry per reference in grid order, as the kvmap-parquet file of
   ``bench_scale.py``'s parts 1-4 lists them), written in chunks of about 1e6 entries: size, time.
2. **build**: ``build_kvmap_parquet(json, out)`` in a subprocess (``bench_scale.child_build``):
   time (imports excluded), peak RSS (``VmHWM``, imports included), and the peak disk use of the
   work directory (its sort runs go there: ``TMPDIR``); then the JSON is deleted.
   **kerchunk write**: in another subprocess, the kerchunk parquet directory of the same references
   (``LazyReferenceMapper.create(root, record_size=100_000)``, the metadata documents set as
   ``mapper[key] = json``, then each record filled from the stream and written by ``mapper.write``
   as soon as it is whole, as ``bench_scale.write_kerchunk_directory`` does, then ``flush``): time
   (imports excluded) and peak RSS (``VmHWM``, imports included).
3. **open + first key**, each in a fresh subprocess (``--repeat`` of each side, interleaved), after
   the imports and a first use on a 1,000-entry reference set in the same form (untimed):
   ``open_kvmap_parquet`` + one ``resolve_io`` through ``bench_scale.PreadFile`` (bytes read
   counted), ``kvmap.Reader(path, allow=...).locate_sync(key)``, and ``LazyReferenceMapper(root)`` +
   ``mapper[key]`` (bytes read: the process's ``rchar``). One more subprocess splits kvmap's open
   from its first key and profiles both (cProfile).
4. **warm lookups**: in one subprocess, 10,000 random keys of the whole map, each looked up once
   first on every side (answers checked), then ``--repeat`` interleaved rounds of fresh key strings:
   ``PreadFile.drive(cm.resolve_io(k))``, ``Reader.locate_sync(k)`` and ``mapper[k]``, µs per lookup.
   The keys touch nearly every fsspec record, more than its default LRU cache of 128 records holds,
   so this mapper is made with ``cache_size`` = the directory's record count, and all sides answer
   from memory (the misses of its cache in the timed rounds are reported; 0: all warm).
5. **resident memory growth** after open + 10,000 random lookups, past the imports and first use
   (``bench_scale.child_memory``, one subprocess per side and round; fsspec with its default cache),
   bytes per entry.
6. **file size**, bytes per entry (the kerchunk directory: every file).

The first table gives the medians (min-max); the second puts them beside the issue's targets, as
ratios kvmap / kerchunk parquet of the medians. Everything lives in a temporary directory under
``/tmp`` (``--dir`` to choose where), removed at the end unless ``--keep``. At 1e8 the JSON is about
10 GB and the build's sort runs about as much again, the kerchunk directory about 1 GB; the run takes
about half an hour on two cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import contextlib
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter, strftime
from typing import Any

import bench_scale as scale
import numpy as np
from _common import _spread, format_table, fresh, run_trials, time_call, time_loop
from bench_kerchunk_parquet import RECORD_SIZE, grid_side

import kvmap

DEFAULT_N = 100_000_000
#: Entries per chunk of the streamed references (rounded up to whole slabs of the grid).
CHUNK = 1_000_000
#: Bytes per entry the run needs on disk at most, about: the JSON (~97), the build's sort runs and
#: the kerchunk directory (~10).
DISK_PER_ENTRY = 230


def log(message: str) -> None:
    print(f"[{strftime('%H:%M:%S')}] {message}", flush=True)


# -- the references, chunk by chunk --------------------------------------------------------


@dataclass
class Chunk:
    """References ``start .. start + len(keys)`` in grid order, as ``make_refs`` has them."""

    start: int
    keys: list[str]
    paths: list[str]
    offsets: np.ndarray[Any, np.dtype[np.int64]]
    lengths: np.ndarray[Any, np.dtype[np.int64]]


def slab_keys(n: int, side: int) -> Iterator[list[str]]:
    """The keys of ``bench_scale.grid_keys(n, side)``, one slab (``variable/a.*.*``) at a time."""
    digits = [str(x) for x in range(side)]
    left = n
    for variable in scale.VARIABLES:
        for a in digits:
            if left <= 0:
                return
            heads = [f"{variable}/{a}.{b}." for b in digits]
            keys = [h + d for h in heads for d in digits]
            if len(keys) > left:
                del keys[left:]
            left -= len(keys)
            yield keys


def stream_refs(n: int, seed: int, chunk: int = CHUNK) -> Iterator[Chunk]:
    """``make_refs(n, seed, regular=False)`` in chunks of at least ``chunk`` references.

    ``make_refs`` draws every file index, then every offset, then every length from one generator.
    A first pass draws (and drops) the file indices and the offsets in pieces to find where the
    offsets and the lengths start; three generators set to those states then draw each chunk's
    columns (numpy draws the same numbers in pieces as in one call).
    """
    side = grid_side(n)
    skip = np.random.default_rng(seed)
    states = [skip.bit_generator.state]
    for high in (scale.FILES, 1 << 36):  # make_refs's default dtype of integers() is int64 too
        for a in range(0, n, chunk):
            skip.integers(0, high, min(chunk, n - a), dtype=np.int64)
        states.append(skip.bit_generator.state)
    paths_rng, offsets_rng, lengths_rng = (np.random.default_rng() for _ in range(3))
    for rng, state in zip((paths_rng, offsets_rng, lengths_rng), states, strict=True):
        rng.bit_generator.state = state
    files = np.array([f"s3://bucket/f{i}.nc" for i in range(scale.FILES)], dtype=object)
    start, keys = 0, []
    for slab in slab_keys(n, side):
        keys += slab
        if len(keys) < chunk and start + len(keys) < n:
            continue
        m = len(keys)
        paths = files[paths_rng.integers(0, scale.FILES, m, dtype=np.int64)].tolist()
        offsets = offsets_rng.integers(0, 1 << 36, m, dtype=np.int64)
        lengths = lengths_rng.integers(1_000, 200_000, m, dtype=np.int64)
        yield Chunk(start, keys, paths, offsets, lengths)
        start, keys = start + m, []


def empty_refs(n: int) -> scale.Refs:
    """A ``Refs`` without columns: what its ``metadata()`` and ``variables()`` need (``n``, the grid)."""
    nothing = np.zeros(0, dtype=np.int64)
    return scale.Refs(n, grid_side(n), [], [], nothing, nothing)


def write_json_streaming(
    path: Path, n: int, seed: int, probes: Sequence[int], check: scale.Refs | None
) -> tuple[dict[int, tuple[str, int, int]], int]:
    """The document ``bench_scale.write_manifest_json(path, before, columns, range(n))`` writes for
    ``make_refs(n, seed, False)``, written chunk by chunk; the references of the ``probes`` (global
    indices), and the peak RSS of this process while writing (bytes)."""
    refs = empty_refs(n)
    before = [{"key": k, "json": v} for k, v in refs.metadata().items()]
    wanted = np.unique(np.asarray(probes, dtype=np.int64))
    found: dict[int, tuple[str, int, int]] = {}
    with open(path, "w") as f:
        f.write('{"kvmap":1,"entries":[' + ",".join(json.dumps(e, separators=(",", ":")) for e in before))
        for number, c in enumerate(stream_refs(n, seed)):
            m = len(c.keys)
            offsets, lengths = c.offsets.tolist(), c.lengths.tolist()
            for lo in range(0, m, 200_000):
                hi = lo + 200_000
                rows = zip(c.keys[lo:hi], c.paths[lo:hi], offsets[lo:hi], lengths[lo:hi], strict=True)
                f.write("".join(f',{{"key":"{k}","path":"{p}","offset":{o},"length":{s}}}' for k, p, o, s in rows))
            for g in wanted[np.searchsorted(wanted, c.start) : np.searchsorted(wanted, c.start + m)].tolist():
                i = g - c.start
                if c.keys[i] != scale.key_of(g, refs.side):
                    raise RuntimeError(f"reference {g}: key {c.keys[i]!r}, expected {scale.key_of(g, refs.side)!r}")
                found[g] = (c.paths[i], offsets[i], lengths[i])
            if check is not None:
                b = c.start + m
                same = (
                    c.keys == check.keys[c.start : b]
                    and c.paths == check.paths[c.start : b]
                    and np.array_equal(c.offsets, check.offsets[c.start : b])
                    and np.array_equal(c.lengths, check.lengths[c.start : b])
                )
                if not same:
                    raise RuntimeError(f"--check: references {c.start:,}-{b - 1:,} differ from make_refs")
            if number % 10 == 9:
                log(f"  json: {c.start + m:,} of {n:,} entries written")
        f.write("]}")
    return found, scale.peak_rss()


def kerchunk_records(n: int) -> int:
    """The number of records (parquet files of references) of the kerchunk directory."""
    return sum(-(-count // RECORD_SIZE) for _, _, count in empty_refs(n).variables())


def write_kerchunk_streaming(root: str, n: int, seed: int) -> int:
    """The directory ``bench_scale.write_kerchunk_directory(root, make_refs(n, seed, False))`` writes,
    from the stream: each record is filled (across chunks) and written once whole, then freed by
    fsspec's writer; the number of records written by ``write`` before ``flush``."""
    from fsspec.implementations.reference import LazyReferenceMapper

    refs = empty_refs(n)
    out = LazyReferenceMapper.create(root, record_size=RECORD_SIZE)
    for key, value in refs.metadata().items():
        out[key] = json.dumps(value)
    per_variable, written = refs.per_variable, 0
    for c in stream_refs(n, seed):
        offsets, lengths, m, a = c.offsets.tolist(), c.lengths.tolist(), len(c.keys), 0
        while a < m:
            v, i = divmod(c.start + a, per_variable)
            record, row = divmod(i, RECORD_SIZE)
            left = min(RECORD_SIZE - row, per_variable - i)  # rows of this record still to come
            b = min(m, a + left)
            rows = zip(c.paths[a:b], offsets[a:b], lengths[a:b], strict=True)
            out._items.setdefault((scale.VARIABLES[v], record), {}).update(enumerate(map(list, rows), start=row))
            if b - a == left:
                out.write(scale.VARIABLES[v], record)
                written += 1
            a = b
    out.flush()
    return written


def child_kerchunk(spec: dict[str, Any]) -> dict[str, Any]:
    """``write_kerchunk_streaming`` in a fresh process: time (imports excluded), peak RSS."""
    import fastparquet  # noqa: F401
    import kerchunk.df  # noqa: F401
    import pandas  # noqa: F401
    from fsspec.implementations.reference import LazyReferenceMapper  # noqa: F401

    start_rss = scale.statm_rss()
    seconds, written = time_call(lambda: write_kerchunk_streaming(spec["out"], spec["n"], spec["seed"]))
    root = Path(spec["out"])
    return {
        "seconds": seconds,
        "peak": scale.peak_rss(),
        "start": start_rss,
        "written": written,
        "files": sum(1 for p in root.rglob("*") if p.is_file()),
        "size": scale.tree_bytes(root),
        "sha1": directory_digest(root),
    }


def directory_digest(root: Path) -> str:
    """The sha1 of a directory's files (relative names and contents), as ``child_kerchunk`` makes it."""
    digest = hashlib.sha1()
    for p in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()


# -- subprocesses --------------------------------------------------------------------------


def run_own_child(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run this script's ``--child`` on ``spec`` (passed in a file: the lookups' keys are long)."""
    spec_path = work / f"spec-{os.getpid()}-{random.getrandbits(32):08x}.json"
    spec_path.write_text(json.dumps(spec))
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(spec_path)], capture_output=True, text=True, check=False
        )
    finally:
        spec_path.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"child {spec['task']} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rchar() -> int:
    """Bytes this process has read by read and pread calls (``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def expected_of(value: Sequence[Any]) -> tuple[str, int, int]:
    return str(value[0]), int(value[1]), int(value[2])


def child_open(spec: dict[str, Any]) -> dict[str, Any]:
    """One side's open + first key in a fresh process, after its imports and a first use on the tiny file."""
    stats: dict[str, int] = {}
    tiny_expected = expected_of(spec["tiny_expected"])
    expected = expected_of(spec["expected"])
    path, tiny = spec["path"], spec["tiny"]
    if spec["side_name"] == "fsspec":
        import fastparquet  # noqa: F401
        import pandas  # noqa: F401
        from fsspec.implementations.reference import LazyReferenceMapper  # noqa: F401

        path, tiny = spec["kerchunk"], spec["tiny_kerchunk"]
        trial = scale.trial_open_fsspec
    else:
        import pyarrow.parquet  # noqa: F401

        scale.kvmap_parquet()
    if spec["side_name"] == "kvmap":

        def trial(path: str, key: str, expected: tuple[str, int, int]) -> float:
            return scale.trial_open_kvmap(path, key, expected, stats)
    elif spec["side_name"] == "reader":

        def trial(path: str, key: str, expected: tuple[str, int, int]) -> float:
            return scale.trial_open_reader(path, key, expected)

    first_use = trial(tiny, spec["tiny_key"], tiny_expected)
    gc.collect()
    read_before = rchar()
    ms = trial(path, spec["key"], expected)
    read = rchar() - read_before
    return {"ms": ms, "first_use_ms": first_use, "rchar": read, **stats}


def child_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """The open and the first key timed apart (after a first use), then both again under cProfile."""
    import pyarrow.parquet  # noqa: F401

    module = scale.kvmap_parquet()
    assert module is not None
    scale.trial_open_kvmap(spec["tiny"], spec["tiny_key"], expected_of(spec["tiny_expected"]), {})
    path, key, expected = spec["path"], spec["key"], expected_of(spec["expected"])
    url = Path(path).as_uri()

    def opened() -> tuple[Any, Any]:
        f = scale.PreadFile(path)
        return f, f.drive(module.open_kvmap_parquet(url, name=path))

    gc.collect()
    open_seconds, (f, cm) = time_call(opened)
    footer_bytes = f.bytes
    resolve_seconds, found = time_call(lambda: f.drive(cm.resolve_io(key)))
    f.close()
    if not scale.same(found, expected):
        raise RuntimeError(f"profile: {key!r} resolved to {found}, expected {expected}")
    blocks = len(cm._first)
    del cm
    gc.collect()
    profile = cProfile.Profile()
    profile.enable()
    f, cm = opened()
    f.drive(cm.resolve_io(key))
    profile.disable()
    f.close()
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(10)
    stats.sort_stats("cumulative").print_stats(10)
    return {
        "open_ms": open_seconds * 1e3,
        "resolve_ms": resolve_seconds * 1e3,
        "blocks": blocks,
        "bytes": footer_bytes,
        "profile": text.getvalue(),
    }


def child_warm(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm lookups of the spec's keys: each looked up once (checked), then timed in rounds."""
    import pyarrow.parquet  # noqa: F401
    from fsspec.implementations.reference import LazyReferenceMapper

    path, keys = spec["path"], spec["keys"]
    expected = [expected_of(e) for e in spec["expected"]]
    f = scale.PreadFile(path)
    cm = scale.open_columnar(path, f)
    reader = kvmap.Reader(path, allow=scale.ALLOW)
    mapper = LazyReferenceMapper(spec["kerchunk"], cache_size=spec["cache_size"])

    def lookup(k: str) -> Any:
        return f.drive(cm.resolve_io(k))

    sides: dict[str, Callable[[str], Any]] = {
        "kvmap": lookup,
        "reader": reader.locate_sync,
        "fsspec": mapper.__getitem__,
    }
    warmup: dict[str, float] = {}
    for name, fn in sides.items():  # the warm-up pass: each key once, every answer checked (cold lookups)
        start = perf_counter()
        for k, e in zip(keys, expected, strict=True):
            if not scale.same(found := fn(k), e):
                raise RuntimeError(f"{name} gave {found} for {k!r}, expected {e}")
        warmup[name] = (perf_counter() - start) / len(keys) * 1e6
    reads_before, misses_before = f.reads, mapper.open_refs.cache_info().misses
    records = mapper.open_refs.cache_info().currsize

    def loop(fn: Callable[[str], Any]) -> Callable[[], float]:
        def trial() -> float:
            return time_loop(fn, fresh(keys)) / len(keys) * 1e6

        return trial

    results = run_trials({name: loop(fn) for name, fn in sides.items()}, spec["repeat"])
    return {
        "results": results,
        "warmup": warmup,
        "timed_reads": f.reads - reads_before,
        "timed_misses": mapper.open_refs.cache_info().misses - misses_before,
        "records": records,
        "peak": scale.peak_rss(),
    }


# -- the run --------------------------------------------------------------------------------


@dataclass
class Measured:
    """One row of the first table: a measurement (one value per repeat) and its unit."""

    case: str
    values: list[float]
    unit: str
    baseline: list[float] | None = None


@dataclass
class Report:
    rows: list[Measured] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The targets table: (measurement, kvmap's value, kerchunk's, ratio, target, met).
    targets: list[tuple[str, str, str, str, str, bool]] = field(default_factory=list)

    def add(
        self, case: str, values: Sequence[float], unit: str, baseline: Sequence[float] | None = None
    ) -> list[float]:
        self.rows.append(Measured(case, list(values), unit, None if baseline is None else list(baseline)))
        return list(values)


class DiskWatch:
    """The largest size of a directory tree, sampled every ``interval`` seconds in a thread."""

    def __init__(self, root: Path, interval: float = 1.0) -> None:
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def size(self) -> int:
        total = 0
        for top, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a sort run merged away meanwhile
                    total += os.lstat(os.path.join(top, name)).st_blocks * 512
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.size())
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.size())


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="number of chunk references")
    parser.add_argument("--dir", help="where to make the work directory (default: a temporary one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (the .kvmap.parquet file)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per side (open, warm lookups)")
    parser.add_argument("--subprocess-repeat", type=int, default=None, help="memory subprocesses per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check", action="store_true", help="compare with make_refs and to_kvmap_parquet (n must fit in memory)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        tasks = {"open": child_open, "warm": child_warm, "profile": child_profile, "kerchunk": child_kerchunk}
        print(json.dumps(tasks[spec["task"]](spec)))
        return
    module = scale.kvmap_parquet()
    if module is None or not hasattr(module, "build_kvmap_parquet"):
        raise SystemExit("kvmap.formats.kvmap_parquet.build_kvmap_parquet is needed")
    source = Path(module.__file__ or "")
    print(
        f"measuring {source.name} sha1 {hashlib.sha1(source.read_bytes()).hexdigest()[:12]} "
        f"(block_rows {module.DEFAULT_BLOCK_ROWS:,}, cache_bytes {module.DEFAULT_CACHE_BYTES / 2**20:.0f} MiB, "
        f"known keys {getattr(module, 'DEFAULT_KNOWN_KEYS', '?'):,}); python {platform.python_version()}, "
        f"{os.cpu_count()} cores; timings are from a shared machine (other jobs ran on its cores)"
    )
    parent = Path(args.dir) if args.dir else Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(parent)
    need = args.n * DISK_PER_ENTRY
    print(
        f"work directory under {parent}: {disk.free / 1e9:.1f} GB free of {disk.total / 1e9:.1f} GB; "
        f"this run needs about {need / 1e9:.1f} GB at its peak"
    )
    if disk.free < need:
        raise SystemExit(
            f"not enough free disk under {parent}: {disk.free / 1e9:.1f} GB, about {need / 1e9:.1f} needed"
        )
    work = Path(tempfile.mkdtemp(prefix="kvmap-1e8-", dir=parent))
    wall = perf_counter()
    try:
        report = run(work, args, module)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_tables(report, args)
    print(f"\nwall time {perf_counter() - wall:,.0f} s ({(perf_counter() - wall) / 60:.1f} min)")


def run(work: Path, args: argparse.Namespace, module: Any) -> Report:
    n, seed, repeat = args.n, args.seed, args.repeat
    side = grid_side(n)
    report = Report()
    open_g = random.Random(seed).randrange(n)  # the key of bench_scale's part 1
    rng = random.Random(seed + 2)
    picks = [rng.randrange(n) for _ in range(scale.LOOKUPS)]
    check = scale.make_refs(n, seed, regular=False) if args.check else None

    # 1. the JSON manifest, streamed
    json_path = work / "manifest.json"
    log(f"1. writing the kvmap JSON manifest of {n:,} entries (grid {side}^3 x {len(scale.VARIABLES)})")
    seconds, (expected, json_peak) = time_call(
        lambda: write_json_streaming(json_path, n, seed, [open_g, *picks], check)
    )
    json_bytes = json_path.stat().st_size
    report.add("1. write the kvmap JSON manifest (streamed)", [seconds], "s")
    report.add("   its size", [json_bytes / n], "B/entry")
    report.notes.append(
        f"JSON: {json_bytes:,} bytes, written in {seconds:.0f} s in chunks of >= {CHUNK:,} entries (grid order); "
        f"this process's peak RSS {json_peak / 2**20:,.0f} MiB"
    )

    # 2. the build, in a subprocess
    out = work / "refs.kvmap.parquet"
    log("2. build_kvmap_parquet(json) in a subprocess")
    os.environ["TMPDIR"] = str(work)  # the build's sort runs go to the work directory
    with DiskWatch(work) as watch:
        built = scale.run_child(
            {"task": "build", "how": "build", "format": "kvmap", "source": str(json_path), "out": str(out)}
        )
    json_path.unlink()
    log(f"   built in {built['seconds']:.0f} s; the JSON deleted")
    report.notes.append(
        f"build: RSS after imports {built['start'] / 2**20:.0f} MiB; output sha1 {built['sha1'][:12]}; "
        f"the work directory peaked at {watch.peak:,} bytes"
    )
    kerchunk = work / "refs"
    log("2b. the kerchunk parquet directory of the same references, streamed, in a subprocess")
    with DiskWatch(work) as watch_kerchunk:
        wrote = run_own_child({"task": "kerchunk", "out": str(kerchunk), "n": n, "seed": seed}, work)
    log(f"   written in {wrote['seconds']:.0f} s ({wrote['files']} files, {wrote['size']:,} bytes)")
    report.add(
        "2. build_kvmap_parquet(json) vs the streamed kerchunk write, time (imports excluded)",
        [built["seconds"]],
        "s",
        [wrote["seconds"]],
    )
    kerchunk_peak = [wrote["peak"] / 2**20]
    peak_mib = report.add("   peak RSS (VmHWM, imports included)", [built["peak"] / 2**20], "MiB", kerchunk_peak)
    report.add(
        "   peak disk of the work directory (JSON + sort runs + output; kerchunk: during its write)",
        [watch.peak / 1e9],
        "GB",
        [watch_kerchunk.peak / 1e9],
    )
    report.notes.append(
        f"kerchunk write: RSS after imports {wrote['start'] / 2**20:.0f} MiB; {wrote['written']:,} records "
        f"written as they filled, then flush; {wrote['files']:,} files, {wrote['size']:,} bytes (sha1 of names and "
        f"contents {wrote['sha1'][:12]}); the work directory (kvmap file + directory) peaked at "
        f"{watch_kerchunk.peak:,} bytes meanwhile"
    )
    if check is not None:
        reference = hashlib.sha1(module.to_kvmap_parquet(scale.manifest_of(check))).hexdigest()
        same = reference == built["sha1"]
        report.notes.append(
            "--check: the streamed references equal make_refs'; the built file "
            + ("IS byte for byte" if same else "DIFFERS from")
            + " to_kvmap_parquet(bench_scale.manifest_of(make_refs(n)))"
        )
        scale.write_kerchunk_directory(str(work / "check-refs"), check)
        same = directory_digest(work / "check-refs") == wrote["sha1"]
        report.notes.append(
            "--check: the streamed kerchunk directory "
            + ("IS file for file and byte for byte" if same else "DIFFERS from")
            + " bench_scale.write_kerchunk_directory(make_refs(n))"
        )
        shutil.rmtree(work / "check-refs")
        del check
        gc.collect()

    # the tiny file of first use, as bench_scale's part 4 makes it
    tiny_refs = scale.make_refs(scale.TINY, seed, regular=False)
    tiny = work / "tiny.kvmap.parquet"
    tiny.write_bytes(module.to_kvmap_parquet(scale.manifest_of(tiny_refs)))
    tiny_kerchunk = work / "tiny-refs"
    scale.write_kerchunk_directory(str(tiny_kerchunk), tiny_refs)
    tiny_spec = {
        "tiny": str(tiny),
        "tiny_kerchunk": str(tiny_kerchunk),
        "tiny_key": tiny_refs.keys[0],
        "tiny_expected": list(tiny_refs.reference(0)),
    }
    size = out.stat().st_size
    with open(out, "rb") as f:
        f.seek(-8, os.SEEK_END)
        footer = int.from_bytes(f.read(4), "little")

    # 3. open + first key, a fresh subprocess per measurement
    log(f"3. open + first key: {repeat} fresh subprocesses per side")
    key = scale.key_of(open_g, side)
    base = {
        "task": "open",
        "path": str(out),
        "kerchunk": str(kerchunk),
        "key": key,
        "expected": list(expected[open_g]),
        **tiny_spec,
    }
    seen: dict[str, list[dict[str, Any]]] = {"kvmap": [], "reader": [], "fsspec": []}

    def open_trial(name: str) -> Callable[[], float]:
        def trial() -> float:
            result = run_own_child({**base, "side_name": name}, work)
            seen[name].append(result)
            return float(result["ms"])

        return trial

    opened = run_trials({name: open_trial(name) for name in seen}, repeat)
    fsspec_open, fsspec_rchar = opened["fsspec"], [r["rchar"] for r in seen["fsspec"]]
    report.add("3. open_kvmap_parquet + resolve_io (pread driver)", opened["kvmap"], "ms", fsspec_open)
    report.add("   bytes it read (kerchunk: rchar)", [r["bytes"] for r in seen["kvmap"]], "bytes", fsspec_rchar)
    report.add("   kvmap.Reader(path).locate_sync(key)", opened["reader"], "ms", fsspec_open)
    report.add(
        "   bytes the process read meanwhile (rchar)", [r["rchar"] for r in seen["reader"]], "bytes", fsspec_rchar
    )
    first = [r["first_use_ms"] for r in seen["kvmap"] + seen["reader"]]
    report.notes.append(
        f"open: in each subprocess after the imports and a first use on a {scale.TINY:,}-entry reference set in "
        f"the same form (untimed: kvmap {median(first):.0f} ms median, fsspec "
        f"{median([r['first_use_ms'] for r in seen['fsspec']]):.0f} ms), key {key!r}; kvmap read "
        f"{seen['kvmap'][0]['bytes']:,} bytes in {seen['kvmap'][0]['reads']} preads; the kerchunk column is "
        "LazyReferenceMapper(root) + mapper[key] (.zmetadata, then one record's parquet file, read whole)"
    )
    profiled = run_own_child({**base, "task": "profile"}, work)

    # 4. warm lookups
    log(f"4. warm lookups of {scale.LOOKUPS:,} random keys (a warm-up pass first: cold lookups)")
    records = kerchunk_records(n)
    warm = run_own_child(
        {
            "task": "warm",
            "path": str(out),
            "kerchunk": str(kerchunk),
            "cache_size": records,
            "keys": [scale.key_of(g, side) for g in picks],
            "expected": [list(expected[g]) for g in picks],
            "repeat": repeat,
        },
        work,
    )
    fsspec_warm = warm["results"]["fsspec"]
    report.add("4. warm lookup: PreadFile.drive(cm.resolve_io(k))", warm["results"]["kvmap"], "us/lookup", fsspec_warm)
    report.add("   warm lookup: Reader.locate_sync(k)", warm["results"]["reader"], "us/lookup", fsspec_warm)
    report.notes.append(
        f"warm: {scale.LOOKUPS:,} random keys of the whole map; the warm-up pass (cold: most lookups read a "
        f"block or a record) took {warm['warmup']['kvmap']:,.0f} us/lookup (resolve_io), "
        f"{warm['warmup']['reader']:,.0f} (Reader) and {warm['warmup']['fsspec']:,.0f} (mapper[k]); in the timed "
        f"rounds kvmap read its file {warm['timed_reads']} times and fsspec's record cache missed "
        f"{warm['timed_misses']} times (0: all warm)"
    )
    report.notes.append(
        f"warm, fsspec: LazyReferenceMapper(root, cache_size={records:,}) (every record"
        + ("; the default 128 would evict" if records > 128 else "")
        + f"): the keys loaded {warm['records']:,} of the {records:,} records; the subprocess's peak RSS "
        f"{warm['peak'] / 2**20:,.0f} MiB (all three sides)"
    )

    # 5. resident memory growth
    sub_repeat = args.subprocess_repeat or (1 if n >= 5_000_000 else min(repeat, 3))
    log(f"5. resident memory: {sub_repeat} subprocess(es) per side")
    memory_base = {"task": "memory", "n": n, "side": side, "seed": seed, "tiny_side": tiny_refs.side}
    memory: dict[str, list[dict[str, Any]]] = {"kvmap": [], "reader": [], "fsspec": []}
    memory_paths = {name: (str(out), str(tiny)) for name in memory}
    memory_paths["fsspec"] = (str(kerchunk), str(tiny_kerchunk))

    def memory_trial(name: str) -> Callable[[], float]:
        def trial() -> float:
            path, first_use = memory_paths[name]
            result = scale.run_child({**memory_base, "side_name": name, "path": path, "tiny": first_use})
            if result["missing"]:
                raise RuntimeError(f"{name}: {result['missing']} of the lookups found nothing")
            memory[name].append(result)
            return (result["after"] - result["before"]) / n

        return trial

    grown = run_trials({name: memory_trial(name) for name in memory}, sub_repeat)
    rss = {
        "kvmap": report.add(
            "5. RSS growth: open_kvmap_parquet + 10,000 resolve_io", grown["kvmap"], "B/entry", grown["fsspec"]
        ),
        "reader": report.add(
            "   RSS growth: kvmap.Reader + 10,000 locate_sync", grown["reader"], "B/entry", grown["fsspec"]
        ),
        "fsspec": grown["fsspec"],
    }
    for name, results in memory.items():
        one = results[0]
        report.notes.append(
            f"memory, {name}: growth {(one['after'] - one['before']) / 2**20:.1f} MiB; RSS after imports "
            f"{one['imported'] / 2**20:.0f} MiB, then {(one['before'] - one['imported']) / 2**20:+.0f} MiB for first "
            f"use (not counted); open + lookups took {one['seconds']:.1f} s"
            + (f", reading {one['reads']:,} ranges ({one['bytes'] / 1e6:,.0f} MB)" if "reads" in one else "")
        )

    # 6. file size
    directory = scale.tree_bytes(kerchunk)
    per_entry = report.add("6. file size", [size / n], "B/entry", [directory / n])[0]
    report.notes.append(
        f"kerchunk directory: {directory:,} bytes in {wrote['files']:,} files ({records:,} record files of "
        f"{RECORD_SIZE:,} rows, each variable's last padded to that, and .zmetadata)"
    )
    report.notes.append(
        f"file: {size:,} bytes; {profiled['blocks']:,} blocks of pieces; a parquet footer of {footer:,} bytes; "
        f"opening read {profiled['bytes']:,} bytes; in the profiled subprocess the open took "
        f"{profiled['open_ms']:.1f} ms and the first key {profiled['resolve_ms']:.1f} ms"
    )
    report.notes.append(
        "profile of one more open + first key in that subprocess (cProfile; by own time, then cumulative):\n"
        + profiled["profile"]
    )

    def ratio(ours: float, theirs: float, limit: float, what: str) -> tuple[str, str, str, str, bool]:
        return f"{ours:{what}}", f"{theirs:{what}}", f"{ours / theirs:.3f}x", f"<= {limit:.2f}x", ours / theirs <= limit

    def absolute(ours: float, theirs: float, limit: float, what: str) -> tuple[str, str, str, str, bool]:
        return f"{ours:{what}}", f"{theirs:{what}}", f"{ours / theirs:.3f}x", f"<= {limit:g}", ours <= limit

    fsspec_open_ms, fsspec_warm_us = median(fsspec_open), median(fsspec_warm)
    rows: list[tuple[str, tuple[str, str, str, str, bool]]] = [
        (
            "open + first key, ms (open_kvmap_parquet + resolve_io)",
            ratio(median(opened["kvmap"]), fsspec_open_ms, scale.OPEN_TARGET, ".1f"),
        ),
        (
            "open + first key, ms (Reader.locate_sync)",
            ratio(median(opened["reader"]), fsspec_open_ms, scale.OPEN_TARGET, ".1f"),
        ),
        (
            "warm lookup, us (resolve_io)",
            ratio(median(warm["results"]["kvmap"]), fsspec_warm_us, scale.WARM_TARGET, ".2f"),
        ),
        (
            "warm lookup, us (Reader.locate_sync)",
            ratio(median(warm["results"]["reader"]), fsspec_warm_us, scale.WARM_TARGET, ".2f"),
        ),
        ("file size, B/entry", ratio(per_entry, directory / n, scale.SIZE_TARGET, ".2f")),
        (
            "RSS growth, B/entry (resolve_io)",
            absolute(median(rss["kvmap"]), median(rss["fsspec"]), scale.MEMORY_TARGET, ".2f"),
        ),
        (
            "RSS growth, B/entry (Reader)",
            absolute(median(rss["reader"]), median(rss["fsspec"]), scale.MEMORY_TARGET, ".2f"),
        ),
        (
            "streaming write peak, MiB (VmHWM; kerchunk: its writer)",
            absolute(peak_mib[0], kerchunk_peak[0], scale.BUILD_PEAK_TARGET, ",.0f"),
        ),
    ]
    report.targets = [(case, *cells) for case, cells in rows]
    return report


def print_tables(report: Report, args: argparse.Namespace) -> None:
    setting = f"n={args.n:,}, windows=irregular (1,000 files), repeat={args.repeat}, seed={args.seed}"
    print(f"\n== kvmap-parquet vs kerchunk parquet at {args.n:,} entries ==")
    print(
        f"{setting}; python {platform.python_version()}; median (min-max); a shared 2-core machine "
        "(other jobs ran on its cores)"
    )
    cells = [
        [r.case, _spread(r.values), "-" if r.baseline is None else _spread(r.baseline), r.unit, str(len(r.values))]
        for r in report.rows
    ]
    print(format_table(["measurement", "kvmap", "kerchunk parquet", "unit", "runs"], cells))
    for note in report.notes:
        print(f"  * {note}")
    print(f"\n== the issue's targets at {args.n:,} entries (ratio: kvmap / kerchunk parquet, of the medians) ==")
    cells = [[*row[:5], "yes" if row[5] else "NO"] for row in report.targets]
    print(format_table(["measurement", "kvmap", "kerchunk parquet", "ratio", "target", "meets"], cells))


if __name__ == "__main__":
    main()
