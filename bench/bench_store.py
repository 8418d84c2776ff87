"""Reading a zarr array through KVMapStore vs zarr's ObjectStore, VirtualiZarr's ManifestStore and fsspec.

One uint8 array of 64 MiB (no compression: ``compressors=None``, ``filters=None``,
so the I/O path dominates) in two layouts: (A) 1,024 chunks of 64 KiB, (B) 65,536
chunks of 1 KiB. It lives at path ``a`` under a root group in every store (VirtualiZarr's
ManifestStore serves arrays only as members of a group), so every store sees the
same keys (``zarr.json``, ``a/zarr.json``, ``a/c/{i}``). Everything is on local disk
under a temporary directory, in the page cache (it was just written).

Every side is read through zarr: ``arr = zarr.open_array(store=..., path="a", mode="r")``
(untimed), then

* **whole array**: one ``arr[...]`` call (zarr fetches the chunks with its default
  ``async.concurrency`` of 10). Layout B has 65,536 chunks, and zarr's own work is about
  80 us per chunk with any store (measured on its ``MemoryStore``), so one whole read of B
  takes 10-20 s on this machine; by default, B's case therefore reads its first 8,192
  chunks in one call, ``arr[:8192 * 1024]`` (the same code path: one selection, every
  chunk fetched concurrently), and ``--full`` reads all of it. One measurement makes
  the call until it has read 4,096 chunks or more (layout A: four calls), so that it
  lasts about a second; time per chunk.
* **random chunks**: ``for i in picks: arr[i * chunk:(i + 1) * chunk]``, 2,000 separate
  calls of zarr's synchronous API, each reading one chunk; ``picks`` are chunk indices
  drawn at random (with replacement, the same for every side). Time per read.

The cases:

1. **windows**: every chunk is a byte window of ONE packed file (a 4 KiB header, then
   the chunks in order, as in a virtual dataset). kvmap: a manifest of exact-key entries
   ``{"key": "a/c/i", "path": "file:///.../packed.bin", "offset": ..., "length": ...}``
   with both ``zarr.json`` documents inline (``{"key": ..., "json": ...}``), served by
   ``kvmap.KVMapStore(manifest)``. Baselines on the same chunks: (a) zarr's
   ``ObjectStore(obstore.store.LocalStore(dir))`` over a normal directory copy of the
   array (one file per chunk); (b) VirtualiZarr's ``ManifestStore`` over the packed file
   (``ChunkManifest.from_arrays`` with the same paths, offsets and lengths, an
   ``ObjectStoreRegistry`` with ``LocalStore("/")`` for ``file://``); (c) fsspec's
   ``ReferenceFileSystem`` on kerchunk references ``{"a/c/i": [url, offset, length]}``
   plus the two ``zarr.json`` texts, through ``zarr.storage.FsspecStore``. Targets on
   throughput: kvmap >= 1.0x ObjectStore, >= 0.95x ManifestStore and fsspec.
2. **redirect**: a manifest of one entry ``{"prefix": "", "path": "file:///.../dir/"}``
   onto the directory copy; ``KVMapStore`` vs ``ObjectStore`` on that directory (the same
   ObjectStore measurements as 1a). Target: >= 0.95x.
3. **overhead**: ``await store.get(key, prototype)`` for 20,000 random chunk keys in a
   plain loop on one event loop, with the obstore call replaced by a constant (cached
   ``bytes`` of the window's length), so what is left is each store's own work: for
   kvmap, the store, the Reader's walk, ``roots.open`` and the buffer (a ``Reader``
   subclass, :class:`NoIOReader`, overrides ``_read_async``: the one method that calls
   obstore); for ManifestStore, its key parsing, manifest lookup, registry resolution and
   the buffer (its registry holds :class:`NoIOObjectStore`, whose ``get_range_async``, the
   one call ``ManifestStore.get`` makes on its store, returns the constant). Target: kvmap
   <= 0.5x the time per key. A row without a target shows the redirect manifest the
   same way (per-key URLs: ``roots.open`` and the policy decision are not one cached URL).

Targets are on throughput; the table shows time ratios, so ">= 0.95x the throughput" is
"<= 1.05x the time". Every trial is run once as a warm-up (not recorded; the whole-array
read warms up on the first 1,024 chunks), then ``--repeat`` interleaved rounds. Results
are checked against the array's data (after the timing).

The default run takes about three minutes on a 2-core machine. ``--quick``: 500 random
reads and 3 repeats (about a minute); ``--full``: layout B's whole-array case reads all
65,536 chunks (about five minutes more).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import fsspec
import numpy as np
import zarr
from _common import Row, print_report, run_trials
from obspec_utils.registry import ObjectStoreRegistry
from obstore.store import LocalStore
from virtualizarr.manifests import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import FsspecStore, ObjectStore

import kvmap
from kvmap.chain import Read

COUNT = 2_000
QUICK_COUNT = 500
QUICK_REPEAT = 3
OVERHEAD_KEYS = 20_000
HEADER = 4096
WARM_CHUNKS = 1024
PART_CHUNKS = 8192
#: A whole-array measurement reads at least this many chunks (layout A: four passes), so it lasts ~1 s.
MIN_WHOLE_CHUNKS = 4096
REPEAT = 5
ARRAY = "a"

#: Throughput targets as bounds on kvmap's time / the baseline's time.
AT_LEAST_SAME = 1.0
AT_LEAST_95 = 1 / 0.95
OVERHEAD_TARGET = 0.5


@dataclass(frozen=True)
class Layout:
    name: str
    chunks: int
    chunk_bytes: int

    @property
    def label(self) -> str:
        return f"({self.name}) {self.chunks:,} chunks of {self.chunk_bytes // 1024} KiB"


LAYOUTS = (Layout("A", 1024, 64 << 10), Layout("B", 65_536, 1 << 10))


# -- the stores ------------------------------------------------------------------------


_CONSTANTS: dict[int, bytes] = {}


def constant(length: int) -> bytes:
    """The same ``bytes`` object for every request of ``length`` bytes: what the no-op I/O returns."""
    value = _CONSTANTS.get(length)
    if value is None:
        value = _CONSTANTS[length] = bytes(length)
    return value


class NoIOReader(kvmap.Reader):
    """A Reader whose obstore call returns a constant: the walk, ``roots.open`` and the checks stay.

    Only ``_read_async`` (the async driver's one call into obstore) is replaced; a
    whole-object read (a redirect) gets ``whole`` bytes.
    """

    __slots__ = ("whole",)

    def __init__(self, target: kvmap.Manifest, *, whole: int) -> None:
        super().__init__(target)
        self.whole = whole

    async def _read_async(self, r: Any) -> Any:
        if not isinstance(r, Read) or r.head or r.suffix is not None:
            return await super()._read_async(r)
        self.roots.open(r.url)  # kept: it is part of kvmap's per-key work before obstore
        return constant(self.whole if r.end is None else r.end - r.start)


class NoIOObjectStore:
    """The one method ``ManifestStore.get`` calls on its store, returning a constant without I/O."""

    async def get_range_async(self, path: str, *, start: int, end: int) -> bytes:
        return constant(int(end) - int(start))


@dataclass
class Built:
    """The array's data, the stores that serve it, and their no-op variants."""

    data: np.ndarray[Any, np.dtype[np.uint8]]
    stores: dict[str, Store]
    noop: dict[str, Store]


def build(directory: Path, layout: Layout, seed: int) -> Built:
    """The directory copy, the packed file, and every store over them."""
    n, size = layout.chunks, layout.chunk_bytes
    data = np.random.default_rng(seed).integers(0, 256, n * size, dtype=np.uint8)
    raw = data.tobytes()
    copy = directory / "dir"
    copy.mkdir()
    group = zarr.create_group(ObjectStore(LocalStore(copy)), zarr_format=3)
    group.create_array(ARRAY, shape=data.shape, chunks=(size,), dtype="uint8", compressors=None, filters=None)
    # With no compression a chunk file is the chunk's raw bytes, as zarr writes it (every read is checked).
    (copy / ARRAY / "c").mkdir()
    for i in range(n):
        (copy / ARRAY / "c" / str(i)).write_bytes(raw[i * size : (i + 1) * size])
    packed = directory / "packed.bin"
    packed.write_bytes(bytes(HEADER) + raw)
    url = packed.as_uri()
    offsets = [HEADER + i * size for i in range(n)]
    group_meta = json.loads((copy / "zarr.json").read_bytes())
    array_meta = json.loads((copy / ARRAY / "zarr.json").read_bytes())
    keys = [f"{ARRAY}/c/{i}" for i in range(n)]

    entries: list[dict[str, Any]] = [
        {"key": "zarr.json", "json": group_meta},
        {"key": f"{ARRAY}/zarr.json", "json": array_meta},
    ]
    entries += [{"key": k, "path": url, "offset": o, "length": size} for k, o in zip(keys, offsets, strict=True)]
    windows = kvmap.Manifest.from_json({"kvmap": 1, "entries": entries}, url=(directory / "m.json").as_uri())
    redirect = kvmap.Manifest.from_json(
        {"kvmap": 1, "entries": [{"prefix": "", "path": copy.as_uri() + "/"}]}, url=(directory / "r.json").as_uri()
    )

    chunk_manifest = ChunkManifest.from_arrays(
        paths=np.full(n, url, dtype=np.dtypes.StringDType()),
        offsets=np.array(offsets, dtype=np.uint64),
        lengths=np.full(n, size, dtype=np.uint64),
    )
    manifest_array = ManifestArray(metadata=ArrayV3Metadata.from_dict(dict(array_meta)), chunkmanifest=chunk_manifest)
    manifest_group = ManifestGroup(arrays={ARRAY: manifest_array})

    refs: dict[str, Any] = {"zarr.json": json.dumps(group_meta), f"{ARRAY}/zarr.json": json.dumps(array_meta)}
    refs.update({k: [url, o, size] for k, o in zip(keys, offsets, strict=True)})
    fs = fsspec.filesystem("reference", fo=refs, asynchronous=True, skip_instance_cache=True)

    kvmap_noop = kvmap.KVMapStore(windows, read_only=True)
    kvmap_noop.reader = NoIOReader(windows, whole=size)
    redirect_noop = kvmap.KVMapStore(redirect, read_only=True)
    redirect_noop.reader = NoIOReader(redirect, whole=size)
    return Built(
        data,
        {
            "kvmap": kvmap.KVMapStore(windows, read_only=True),
            "kvmap redirect": kvmap.KVMapStore(redirect, read_only=True),
            "ObjectStore": ObjectStore(LocalStore(copy), read_only=True),
            "ManifestStore": ManifestStore(manifest_group, registry=ObjectStoreRegistry({"file://": LocalStore("/")})),
            "fsspec": FsspecStore(fs, read_only=True),
        },
        {
            "kvmap": kvmap_noop,
            "kvmap redirect": redirect_noop,
            "ManifestStore": ManifestStore(
                manifest_group, registry=ObjectStoreRegistry({"file://": NoIOObjectStore()})
            ),
        },
    )


# -- the trials ------------------------------------------------------------------------


def whole_trial(
    arr: zarr.Array, expected: np.ndarray[Any, Any], stop: int, chunks: int, passes: int
) -> Callable[[], float]:
    """``arr[...]`` (or ``arr[:stop]`` for a part) ``passes`` times, in microseconds per chunk.

    Only the reads are timed; each one's result is checked after its timing.
    """
    whole = stop == expected.shape[0]

    def trial() -> float:
        elapsed = 0.0
        for _ in range(passes):
            start = perf_counter()
            out = arr[...] if whole else arr[:stop]
            elapsed += perf_counter() - start
            if not np.array_equal(out, expected[:stop]):
                raise RuntimeError(f"{arr.store} read wrong data")
            del out
        return elapsed / (chunks * passes) * 1e6

    return trial


def random_trial(arr: zarr.Array, picks: Sequence[int], size: int) -> Callable[[], float]:
    """``arr[i * size:(i + 1) * size]`` for every pick, one call each, in microseconds per read."""

    def trial() -> float:
        start = perf_counter()
        for i in picks:
            arr[i * size : (i + 1) * size]
        return (perf_counter() - start) / len(picks) * 1e6

    return trial


def overhead_trial(store: Store, indices: Sequence[int]) -> Callable[[], float]:
    """``await store.get(key, prototype)`` for every key (fresh strings), in microseconds per key."""
    prototype = default_buffer_prototype()

    async def loop(keys: list[str]) -> float:
        start = perf_counter()
        for k in keys:
            await store.get(k, prototype)
        return perf_counter() - start

    def trial() -> float:
        keys = [f"{ARRAY}/c/{i}" for i in indices]
        return asyncio.run(loop(keys)) / len(keys) * 1e6

    return trial


def check_random(arrays: dict[str, zarr.Array], data: np.ndarray[Any, Any], picks: Sequence[int], size: int) -> None:
    for i in picks:
        want = data[i * size : (i + 1) * size]
        for name, arr in arrays.items():
            if not np.array_equal(arr[i * size : (i + 1) * size], want):
                raise RuntimeError(f"{name} read chunk {i} wrong")


def check_noop(stores: dict[str, Store], key: str, size: int) -> None:
    prototype = default_buffer_prototype()
    for name, store in stores.items():
        got = asyncio.run(store.get(key, prototype))
        if got is None or got.to_bytes() != constant(size):
            raise RuntimeError(f"the no-op {name} store returned {got!r}")


def measure(layout: Layout, count: int, repeat: int, seed: int, full: bool) -> tuple[list[Row], dict[str, Any]]:
    rng = random.Random(seed)
    picks = [rng.randrange(layout.chunks) for _ in range(count)]
    keys = [rng.randrange(layout.chunks) for _ in range(OVERHEAD_KEYS)]
    whole_chunks = layout.chunks if full else min(layout.chunks, PART_CHUNKS)
    size = layout.chunk_bytes
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp), layout, seed)
        arrays = {name: zarr.open_array(store=s, path=ARRAY, mode="r") for name, s in built.stores.items()}
        check_random(arrays, built.data, picks[:50], size)
        check_noop(built.noop, f"{ARRAY}/c/0", size)
        passes = -(-MIN_WHOLE_CHUNKS // whole_chunks)
        whole = {
            f"whole {name}": whole_trial(arr, built.data, whole_chunks * size, whole_chunks, passes)
            for name, arr in arrays.items()
        }
        rand = {f"random {name}": random_trial(arr, picks, size) for name, arr in arrays.items()}
        noop = {f"noop {name}": overhead_trial(s, keys) for name, s in built.noop.items()}
        for name, arr in arrays.items():  # warm-up, not recorded
            whole_trial(arr, built.data, min(WARM_CHUNKS, layout.chunks) * size, WARM_CHUNKS, 1)()
            rand[f"random {name}"]()
        for trial in noop.values():
            trial()
        results = run_trials({**whole, **rand}, repeat)
        results |= run_trials(noop, repeat)
    what = "whole array" if whole_chunks == layout.chunks else f"arr[:{whole_chunks:,} chunks]"
    rows: list[Row] = []
    for case, prefix in ((what, "whole"), (f"{count:,} random chunks", "random")):
        kv = results[f"{prefix} kvmap"]
        rows += [
            Row(f"windows, {case}: vs ObjectStore (dir)", kv, results[f"{prefix} ObjectStore"], AT_LEAST_SAME),
            Row(f"windows, {case}: vs ManifestStore", kv, results[f"{prefix} ManifestStore"], AT_LEAST_95),
            Row(f"windows, {case}: vs fsspec refs", kv, results[f"{prefix} fsspec"], AT_LEAST_95),
        ]
    for case, prefix in ((what, "whole"), (f"{count:,} random chunks", "random")):
        rows.append(
            Row(
                f"redirect, {case}: vs ObjectStore (dir)",
                results[f"{prefix} kvmap redirect"],
                results[f"{prefix} ObjectStore"],
                AT_LEAST_95,
            )
        )
    rows += [
        Row(
            "overhead, no-op I/O: vs ManifestStore",
            results["noop kvmap"],
            results["noop ManifestStore"],
            OVERHEAD_TARGET,
        ),
        Row("overhead, no-op I/O: redirect vs windows (kvmap)", results["noop kvmap redirect"], results["noop kvmap"]),
    ]
    params = {
        "layout": layout.label,
        "whole-array chunks": whole_chunks,
        "whole-array passes": passes,
        "random reads": count,
        "overhead keys": OVERHEAD_KEYS,
        "repeat": repeat,
        "seed": seed,
    }
    return rows, params


def parse(doc: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """``--n`` (random chunk reads), ``--repeat`` and ``--seed`` as in the other scripts; ``--quick``, ``--full``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help=f"random chunk reads (default {COUNT:,})")
    parser.add_argument("--repeat", type=int, default=None, help=f"measurements per side (default {REPEAT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_COUNT} random reads and {QUICK_REPEAT} repeats (unless --n/--repeat say otherwise)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"layout B's whole-array case reads every chunk, not the first {PART_CHUNKS:,}",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(__doc__ or "", argv)
    count = args.n if args.n is not None else (QUICK_COUNT if args.quick else COUNT)
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else REPEAT)
    for layout in LAYOUTS:
        rows, params = measure(layout, count, repeat, args.seed, args.full)
        print_report(
            f"zarr store: {layout.label}, local disk",
            "us/chunk",
            rows,
            params,
            notes=[
                "targets are on throughput: >= 1.0x is <= 1.00x the time, >= 0.95x is <= 1.05x",
                f"whole array: one arr[...] call (B: arr[:{PART_CHUNKS:,} chunks] unless --full), time / chunks; "
                "random: one arr[slice] call per chunk",
                "overhead: await store.get(key) with the obstore call replaced by a constant, per key",
                f"zarr {zarr.__version__}, fsspec {fsspec.__version__}; "
                "kvmap and ManifestStore read the packed file, ObjectStore one file per chunk",
            ],
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
