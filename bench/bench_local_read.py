"""Local reads on an event loop: a blocking call vs an awaited one (``local_blocking_limit``).

kvmap's async reads of local files up to ``local_blocking_limit`` bytes (default 128 KiB)
are blocking calls (``kvmap.localfs``: open, check, ``pread``), made on the event loop's
thread. This script measures that choice: ``await reader.get(key)`` for windows of 1 KiB, 64 KiB, 128 KiB and 1 MiB of
files in the page cache, blocking (``local_blocking_limit`` above the size) vs awaited
(``local_blocking_limit=0``: every read handed to a worker thread and awaited, as zarr's
``ObjectStore`` and VirtualiZarr's ``ManifestStore`` await obstore's calls). Each in two ways:

* **one at a time**: ``for k in keys: await reader.get(k)`` (a zarr random-chunk read);
* **10 at a time**: ``asyncio.gather`` over the keys, at most 10 in flight (zarr's
  default ``async.concurrency``, a whole-array read).

Targets, at every size up to the default limit (128 KiB): one at a time, the blocking
read takes <= 1.0x the time of the awaited one; 10 at a time, <= 1.05x (no dearer, within
this 2-core machine's noise: in flight, awaited reads overlap on obstore's threads). The
1 MiB rows have no target; they show why the limit is not higher. A row
without a target shows the floor: the same windows read with ``os.pread`` (open, read,
close) in the loop, without obstore.

The windows lie in 64 files of 4 MiB, read once before timing (so they are cached).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncio
import os
import random
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter

from _common import Row, parse_args, print_report, run_trials

import kvmap
from kvmap.reader import DEFAULT_LOCAL_BLOCKING_LIMIT

COUNT = 1_000
FILES = 64
FILE_BYTES = 4 << 20
SIZES = (1 << 10, 64 << 10, 128 << 10, 1 << 20)
CONCURRENCY = 10

Window = tuple[str, int, int]  # path, offset, length


def build(directory: Path, size: int, count: int, seed: int) -> tuple[kvmap.Manifest, list[str], list[Window]]:
    """``count`` exact-key windows of ``size`` bytes at random places in the files."""
    rng = random.Random(seed)
    windows = [
        (str(directory / f"f{rng.randrange(FILES)}"), rng.randrange(FILE_BYTES - size + 1), size) for _ in range(count)
    ]
    keys = [f"c/{i}" for i in range(count)]
    entries = [
        {"key": k, "path": Path(p).as_uri(), "offset": o, "length": n}
        for k, (p, o, n) in zip(keys, windows, strict=True)
    ]
    manifest = kvmap.Manifest.from_json({"kvmap": 1, "entries": entries}, url=(directory / "m.json").as_uri())
    return manifest, keys, windows


def pread(window: Window) -> bytes:
    path, offset, length = window
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


async def _one_at_a_time(read: Callable[[int], Awaitable[object]], count: int) -> None:
    for i in range(count):
        await read(i)


async def _ten_at_a_time(read: Callable[[int], Awaitable[object]], count: int) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with limit:
            await read(i)

    await asyncio.gather(*(one(i) for i in range(count)))


def trial(
    read: Callable[[int], Awaitable[object]],
    count: int,
    together: bool,
) -> Callable[[], float]:
    """The reads of ``count`` windows on a fresh event loop, in microseconds per read."""
    run = _ten_at_a_time if together else _one_at_a_time

    async def timed() -> float:
        start = perf_counter()
        await run(read, count)
        return perf_counter() - start

    return lambda: asyncio.run(timed()) / count * 1e6


def measure(directory: Path, size: int, count: int, repeat: int, seed: int) -> list[Row]:
    manifest, keys, windows = build(directory, size, count, seed)
    blocking = kvmap.Reader(manifest, local_blocking_limit=size)
    awaited = kvmap.Reader(manifest, local_blocking_limit=0)
    for k, w in zip(keys, windows, strict=True):
        if not bytes(blocking.get_sync(k)) == pread(w):
            raise RuntimeError(f"{k} read wrong")

    async def floor(i: int) -> bytes:
        return pread(windows[i])

    rows: list[Row] = []
    for together, how in ((False, "one at a time"), (True, f"{CONCURRENCY} at a time")):
        trials = {
            "blocking": trial(lambda i: blocking.get(keys[i]), count, together),
            "awaited": trial(lambda i: awaited.get(keys[i]), count, together),
            "pread": trial(floor, count, together),
        }
        for t in trials.values():  # warm-up, not recorded
            t()
        results = run_trials(trials, repeat)
        label = f"{size >> 10:,} KiB, {how}"
        target = (1.05 if together else 1.0) if size <= DEFAULT_LOCAL_BLOCKING_LIMIT else None
        rows.append(Row(f"{label}: blocking vs awaited", results["blocking"], results["awaited"], target))
        rows.append(Row(f"{label}: blocking vs os.pread (the floor)", results["blocking"], results["pread"]))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv, f"reads per size; default {COUNT:,}")
    count = COUNT if args.n == 1_000_000 else args.n
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        rng = random.Random(args.seed)
        for i in range(FILES):
            (directory / f"f{i}").write_bytes(rng.randbytes(FILE_BYTES))
        for size in SIZES:
            rows += measure(directory, size, count, args.repeat, args.seed)
    print_report(
        "local reads on an event loop: blocking obstore calls vs awaited ones",
        "us/read",
        rows,
        {"reads per size": count, "files": f"{FILES} x {FILE_BYTES >> 20} MiB (cached)", "repeat": args.repeat},
        notes=[
            "blocking: Reader(m, local_blocking_limit=size).get; awaited: local_blocking_limit=0; "
            f"the default limit is {DEFAULT_LOCAL_BLOCKING_LIMIT >> 10} KiB",
            "os.pread: the same windows without obstore (open, pread, close on the loop's thread)",
        ],
    )


if __name__ == "__main__":
    main()
