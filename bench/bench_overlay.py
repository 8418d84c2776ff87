"""Overlay stores: reads, writes and listings through a copy-on-write overlay of ``n`` entries.

kvmap: ``KVMapStore(base, overlay=DIR)`` whose overlay holds ``n`` committed small values
(``v<j>/c/<i>``, ten arrays, plus a small group ``meta/``) and 1% more pending writes.
Baseline, measured in the same rounds: a plain ``KVMapStore`` of a manifest holding the same
keys as inline entries — the same namespace without an overlay.

Cases: ``get`` of an overlay key and of a base key (per key), ``set`` of a small value (per
key, pending), ``list_dir`` of the small group ``meta/`` and of one array's chunk directory,
``list_prefix`` of one array, and ``commit()`` of one more write (a delta commit: it writes what
it changed, see :mod:`kvmap.overlay`; baseline: saving the plain manifest, what a snapshot
costs). Targets: none set by an issue; the overlay's listings of a small directory should not
grow with ``n`` (its index is an :class:`~kvmap.editable.EditableMap`, not a scan of every
overlay entry).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncio
import base64
import random
import tempfile
from collections.abc import Callable
from time import perf_counter
from typing import Any

from _common import Row, parse_args, print_report, run_trials
from zarr.core.buffer import default_buffer_prototype

import kvmap

ARRAYS = 10
PER_KEY = 2_000  # keys timed per per-key case


def _keys(n: int) -> list[str]:
    keys = [f"v{j}/c/{i}" for j in range(ARRAYS) for i in range(n // ARRAYS)]
    return [*keys, "meta/zarr.json", "meta/a", "meta/b"]


def _value(key: str) -> bytes:
    return key.encode() * 2


def _plain(keys: list[str], base_keys: list[str], where: str) -> kvmap.KVMapStore:
    # Writable where no entry is: a redirect of every key to a directory, first (lowest precedence).
    entries = [{"prefix": "", "path": f"file://{where}/"}]
    entries += [{"key": k, "data": base64.b64encode(_value(k)).decode()} for k in [*base_keys, *keys]]
    return kvmap.KVMapStore(kvmap.Manifest.from_json(entries, url=None), allow=[f"file://{where}/"])


def _overlaid(keys: list[str], base_keys: list[str], where: str) -> kvmap.KVMapStore:
    entries = [{"key": k, "data": base64.b64encode(_value(k)).decode()} for k in base_keys]
    base = kvmap.Manifest.from_json(entries, url=None, name="base")
    with kvmap.KVMapStore(base, overlay=where) as store:
        for k in keys:
            store._overlay.set_sync(k, _value(k))  # type: ignore[union-attr]
    store = kvmap.KVMapStore(base, overlay=where)
    for k in keys[: len(keys) // 100]:  # 1% pending on top
        store._overlay.set_sync(k, b"pending")  # type: ignore[union-attr]
    return store


def _per_key(fn: Callable[[str], Any], keys: list[str]) -> Callable[[], float]:
    async def go() -> float:
        t = perf_counter()
        for k in keys:
            await fn(k)
        return (perf_counter() - t) / len(keys)

    return lambda: asyncio.run(go())


def _once(fn: Callable[[], Any], times: int = 20) -> Callable[[], float]:
    async def go() -> float:
        t = perf_counter()
        for _ in range(times):
            await fn()
        return (perf_counter() - t) / times

    return lambda: asyncio.run(go())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__ or "", ["--n", "100000", *(argv if argv is not None else sys.argv[1:])], "overlay entries"
    )
    n = args.n
    rng = random.Random(args.seed)
    keys = _keys(n)
    base_keys = [f"base/c/{i}" for i in range(1000)]
    with tempfile.TemporaryDirectory() as tmp:
        t = perf_counter()
        over = _overlaid(keys, base_keys, f"{tmp}/overlay")
        build = perf_counter() - t
        t = perf_counter()
        asyncio.run(_drain(over.list_dir("meta/")))
        index = perf_counter() - t
        plain = _plain(keys, base_keys, f"{tmp}/plain")
        proto = default_buffer_prototype()
        probe = rng.sample(keys, PER_KEY)
        base_probe = rng.sample(base_keys, min(PER_KEY, len(base_keys)))
        fresh = [f"new/c/{i}" for i in range(PER_KEY)]
        value = proto.buffer.from_bytes(b"x" * 16)
        cases: dict[str, Callable[[kvmap.KVMapStore], Callable[[], float]]] = {
            # Listings first: the first one makes the overlay's index, which every later write edits.
            "list_dir('meta/')": lambda s: _once(lambda: _drain(s.list_dir("meta/"))),
            "list_dir('v3/c/')": lambda s: _once(lambda: _drain(s.list_dir("v3/c/")), 5),
            "list_prefix('v3/')": lambda s: _once(lambda: _drain(s.list_prefix("v3/")), 5),
            "get, overlay key": lambda s: _per_key(lambda k: s.get(k, proto), probe),
            "get, base key": lambda s: _per_key(lambda k: s.get(k, proto), base_probe),
            "set, small value": lambda s: _per_key(lambda k: s.set(k, value), fresh),
        }
        rows: list[Row] = []
        for name, make in cases.items():
            trials = run_trials({"overlay": make(over), "plain": make(plain)}, args.repeat)
            rows.append(Row(name, [v * 1e6 for v in trials["overlay"]], [v * 1e6 for v in trials["plain"]]))

        manifest = plain.reader.target
        assert isinstance(manifest, kvmap.Manifest)

        def commit_one() -> float:
            over._overlay.set_sync("meta/a", rng.randbytes(8))  # type: ignore[union-attr]
            t = perf_counter()
            over._overlay.commit()  # type: ignore[union-attr]
            return perf_counter() - t

        def save_plain() -> float:
            t = perf_counter()
            manifest.save(f"{tmp}/plain.json")
            return perf_counter() - t

        trials = run_trials({"commit": commit_one, "save": save_plain}, args.repeat)
        rows.append(
            Row(
                "commit() of one write / save()", [v * 1e6 for v in trials["commit"]], [v * 1e6 for v in trials["save"]]
            )
        )
    print_report(
        "overlay store against a plain store of the same keys",
        "us",
        rows,
        {"overlay entries": n, "pending": n // 100, "repeat": args.repeat, "seed": args.seed},
        notes=[
            f"building the overlay ({n:,} writes and a commit) took {build:.1f} s; its first listing "
            f"(which makes its index, an EditableMap) {index * 1e3:.0f} ms",
            "set: an overlay keeps a small value inline (pending); the plain store writes a file",
            "commit: a delta commit writes what it changed (a snapshot every 16th); baseline: Manifest.save",
        ],
    )


async def _drain(result: Any) -> None:
    async for _ in result:
        pass


if __name__ == "__main__":
    main()
