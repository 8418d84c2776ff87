"""Reading keys to bytes: kvmap's Reader vs kerchunk's ReferenceFileSystem, and chained manifests.

(a) 2,000 random 64-byte windows of one local file, one key at a time through the
sync API: ``reader.get_sync(k)`` vs ``fs.cat(k)`` on the equivalent kerchunk
references (fsspec's ``ReferenceFileSystem``). Target: kvmap >= 2x the keys/s,
i.e. <= 0.5x the time per key.

(b) The same 2,000 keys as one batched read: ``reader.get_many_sync(keys)`` vs
``fs.cat(keys)``. Target: kvmap >= 1.0x the keys/s (<= 1.0x the time).

(c) A key whose resolution goes through two chained manifests (``m.json`` maps
prefix ``""`` onto ``inner.json|kvmap:``) vs the same key in one manifest, both
with their manifests cached: ``get_sync`` (resolution and the read), and
``locate_sync`` (resolution alone, shown without a target). Target for the read:
<= 1.2x.

Both sides read the same bytes of the same file; the results are compared before timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
import random
import tempfile
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import fsspec
from _common import Row, parse_args, print_report, run_trials

import kvmap

COUNT = 2_000
WINDOW = 64
FILE_BYTES = 64 << 20


def build(directory: Path, count: int, seed: int) -> tuple[list[str], dict[str, Any]]:
    """A data file, a kvmap manifest, a chained manifest pair and kerchunk references over it."""
    rng = random.Random(seed)
    data = rng.randbytes(FILE_BYTES)
    (directory / "data.bin").write_bytes(data)
    windows = [(rng.randrange(FILE_BYTES - WINDOW), WINDOW) for _ in range(count)]
    keys = [f"var/c/{i // 100}/{i % 100}" for i in range(count)]
    entries = [
        {"key": k, "path": "data.bin", "offset": o, "length": n} for k, (o, n) in zip(keys, windows, strict=True)
    ]
    (directory / "inner.json").write_text(json.dumps({"kvmap": 1, "entries": entries}))
    (directory / "m.json").write_text(
        json.dumps({"kvmap": 1, "entries": [{"prefix": "", "path": "inner.json|kvmap:"}]})
    )
    refs = {
        "version": 1,
        "refs": {k: [str(directory / "data.bin"), o, n] for k, (o, n) in zip(keys, windows, strict=True)},
    }
    (directory / "refs.json").write_text(json.dumps(refs))
    return keys, {k: data[o : o + n] for k, (o, n) in zip(keys, windows, strict=True)}


def per_key_us(fn: Callable[[str], object], keys: Sequence[str]) -> float:
    start = perf_counter()
    for k in keys:
        fn(k)
    return (perf_counter() - start) / len(keys) * 1e6


def batch_us(fn: Callable[[list[str]], object], keys: list[str]) -> float:
    start = perf_counter()
    fn(keys)
    return (perf_counter() - start) / len(keys) * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__ or "", argv, f"keys (windows of {WINDOW} bytes); default {COUNT}")
    count = COUNT if args.n == 1_000_000 else args.n
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        keys, expected = build(directory, count, args.seed)
        one = kvmap.Reader(directory / "inner.json")
        two = kvmap.Reader(directory / "m.json")
        fs = fsspec.filesystem("reference", fo=str(directory / "refs.json"))
        batch = fs.cat(keys)
        for k, got, got2, got_many in zip(
            keys, map(one.get_sync, keys), map(two.get_sync, keys), one.get_many_sync(keys), strict=True
        ):
            if not (bytes(got) == bytes(got2) == bytes(got_many) == batch[k] == fs.cat(k) == expected[k]):
                raise RuntimeError(f"the readers disagree on {k!r}")
        random.Random(args.seed).shuffle(keys)
        results = run_trials(
            {
                "kvmap get_sync": lambda: per_key_us(one.get_sync, keys),
                "fsspec cat": lambda: per_key_us(fs.cat, keys),
                "kvmap get_many_sync": lambda: batch_us(one.get_many_sync, keys),
                "fsspec cat batch": lambda: batch_us(fs.cat, keys),
                "chained get_sync": lambda: per_key_us(two.get_sync, keys),
                "chained locate_sync": lambda: per_key_us(two.locate_sync, keys),
                "one locate_sync": lambda: per_key_us(one.locate_sync, keys),
            },
            args.repeat,
        )
    rows = [
        Row("(a) one key at a time: get_sync vs fs.cat(key)", results["kvmap get_sync"], results["fsspec cat"], 0.5),
        Row(
            "(b) batched: get_many_sync vs fs.cat(keys)",
            results["kvmap get_many_sync"],
            results["fsspec cat batch"],
            1.0,
        ),
        Row("(c) two chained manifests vs one: get_sync", results["chained get_sync"], results["kvmap get_sync"], 1.2),
        Row(
            "(c) two chained manifests vs one: locate_sync", results["chained locate_sync"], results["one locate_sync"]
        ),
    ]
    print_report(
        "read: keys to bytes on a local file",
        "us/key",
        rows,
        {"keys": count, "window bytes": WINDOW, "file bytes": FILE_BYTES, "repeat": args.repeat, "seed": args.seed},
        notes=[
            "targets are on time per key: >= 2x the keys/s is <= 0.5x the time",
            "kvmap reads through obstore (LocalStore); fsspec through its local file system",
            "locate_sync resolves without reading the window: the cost of the chain itself",
        ],
    )


if __name__ == "__main__":
    main()
