"""kvmap.localfs against obstore's LocalStore: the cost of checking real paths at the moment of I/O.

``kvmap.localfs.read`` opens the file, checks the real path of the open descriptor against
the confining directory (``readlink`` of ``/proc/self/fd/N`` on Linux), ``fstat``s it and
``pread``s the window. It replaces a blocking obstore call (``get_range``, ``get``) on a
``LocalStore``. Floor: ``os.open`` + ``os.pread`` + ``os.close`` with no check at all.
Also measured: a write (atomic replace, with and without ``fsync``) against ``obstore.put``,
and a listing of 1,000 files against ``obstore.list``.

Files are in the page cache (written, then read once before timing). Each sample times a
batch of calls with ``time.perf_counter_ns`` and divides; the candidates of one row group
take turns batch by batch, so drift in machine speed reaches all alike. The table shows the
median over the samples, in microseconds per call, and the ratio to the first line of its
group. Nothing is asserted.

    python bench/bench_localfs.py [--samples 200] [--batch 50]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import itertools
import os
import platform
import statistics
import tempfile
from collections.abc import Callable, Sequence
from time import perf_counter_ns

import obstore
from obstore.store import LocalStore

from kvmap import localfs

Group = tuple[str, dict[str, Callable[[], object]]]


def pread_floor(path: str, start: int, end: int) -> Callable[[], object]:
    def run() -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, end - start, start)
        finally:
            os.close(fd)

    return run


def measure(calls: dict[str, Callable[[], object]], samples: int, batch: int) -> dict[str, float]:
    """The median microseconds per call of each of ``calls``, batches interleaved."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        for _ in range(batch):
            call()
    for _ in range(samples):
        for name, call in calls.items():
            start = perf_counter_ns()
            for _ in range(batch):
                call()
            times[name].append((perf_counter_ns() - start) / batch / 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def read_groups(directory: str, store: LocalStore) -> list[Group]:
    groups: list[Group] = []
    for size in (1 << 10, 64 << 10):
        name = f"f{size}"
        path = f"{directory}/{name}"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        window = (0, size)
        calls: dict[str, Callable[[], object]] = {
            "os.pread (open, pread, close; no check)": pread_floor(path, *window),
            "localfs.read(start, end), inside=None": lambda p=path, s=size: localfs.read(p, 0, s),
            "localfs.read(start, end), inside=dir": lambda p=path, s=size: localfs.read(p, 0, s, inside=directory),
            "localfs.read() whole, inside=dir": lambda p=path: localfs.read(p, inside=directory),
            "obstore.get_range (blocking)": lambda n=name, s=size: obstore.get_range(store, n, start=0, end=s),
            "obstore.get(...).bytes() (blocking)": lambda n=name: obstore.get(store, n).bytes(),
        }
        with open(path, "rb") as f:
            whole = f.read()
        for call in calls.values():
            assert bytes(call()) == whole  # type: ignore[call-overload]
        groups.append((f"read {size >> 10} KiB (cached)", calls))
    return groups


def write_group(directory: str, store: LocalStore) -> Group:
    data = os.urandom(1 << 10)
    fresh = itertools.count()
    os.makedirs(f"{directory}/w", exist_ok=True)
    return (
        "write 1 KiB (replace an existing file)",
        {
            "obstore.put (blocking)": lambda: obstore.put(store, "w/a", data),
            "localfs.write, inside=dir": lambda: localfs.write(f"{directory}/w/b", data, inside=directory),
            "localfs.write, inside=dir, durable (fsync)": lambda: localfs.write(
                f"{directory}/w/c", data, inside=directory, durable=True
            ),
            "localfs.write of a new name, inside=dir": lambda: localfs.write(
                f"{directory}/n/{next(fresh)}", data, inside=directory
            ),
        },
    )


def list_group(directory: str, store: LocalStore) -> Group:
    for i in range(1000):
        path = f"{directory}/tree/{i % 10}/{i // 10 % 10}/{i}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")
    root = f"{directory}/tree"
    theirs = sorted(m["path"][len("tree/") :] for m in obstore.list(store, "tree").collect())
    assert localfs.list_keys(root, inside=directory) == theirs
    return (
        "list 1,000 files in 110 directories",
        {
            "obstore.list(...).collect() (blocking)": lambda: obstore.list(store, "tree").collect(),
            "localfs.list_keys, inside=dir": lambda: localfs.list_keys(root, inside=directory),
            "obstore.list_with_delimiter (blocking)": lambda: obstore.list_with_delimiter(store, "tree"),
            "localfs.list_dir, inside=dir": lambda: localfs.list_dir(root, inside=directory),
        },
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per call (default 200)")
    parser.add_argument("--batch", type=int, default=50, help="calls per sample (default 50)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.realpath(tmp)
        store = LocalStore(directory)
        plan = [(g, args.samples, args.batch) for g in read_groups(directory, store)]
        plan.append((write_group(directory, store), max(10, args.samples // 4), max(1, args.batch // 10)))
        plan.append((list_group(directory, store), max(10, args.samples // 10), 1))
        print(f"kvmap.localfs vs obstore {obstore.__version__} LocalStore; Python {platform.python_version()}")
        print(f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
        print("median microseconds per call; ratio to the group's first line\n")
        for (title, calls), samples, batch in plan:
            medians = measure(calls, samples, batch)
            first = next(iter(medians.values()))
            print(f"{title}  ({samples} samples x {batch} calls)")
            for name, median in medians.items():
                print(f"  {name:<46} {median:>10.1f} us  {median / first:>6.2f}x")
            print()


if __name__ == "__main__":
    main()
