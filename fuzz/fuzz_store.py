"""Fuzz target: ``kvmap.KVMapStore`` key handling, over a memory store.

The manifest (``memory://kvmap-fuzz-store/m.json``, given as a ``Manifest``)::

    0  {"prefix": "",       "path": "memory://kvmap-fuzz-store/t/"}   writes go under t/
    1  {"prefix": "s/",     "path": "u/"}                             s/X goes to u/X
    2  {"key": "k",         "path": "t-exact/obj"}                    a whole object
    3  {"prefix": "w/",     "path": null}                             a whiteout
    4  {"key": "inline",    "data": "AA=="}                           inline bytes

The input is either ``J`` followed by a JSON array of operations (``["set", KEY, TEXT]``,
``["get", KEY]``, ``["del", KEY]``, ``["list", PREFIX]``, ``["dir", PREFIX]``; Python's
``json``, so keys may hold lone surrogates), or anything else: operations built with a
``FuzzedDataProvider`` on keys glued from ``..``, ``%2e``, ``/``, NUL, ``|``, lone
surrogates and the like, some of them very long. The operations run through the sync
API (``set_sync``, ``get_sync``, ``delete_sync``) and zarr's async listing API
(``list_prefix``, ``list_dir``, through ``asyncio.run``), against a model:

* only :class:`kvmap.KvmapError` comes out (a lone surrogate in a key is one; a read-only
  store raises ``ValueError``, as zarr's stores do); a key with a ``.`` or ``..`` segment,
  one whose object path would end in ``/`` or have an empty segment (no object has that
  name: obstore would write another one), and one that a whiteout, inline entry or no
  entry decides, is never written;
* a key that is written reads back what was written last *to that key* (so two keys that
  name one object show up), and reads ``None`` after it is deleted;
* the listing is exactly the keys written (and the exact keys), and ``list_dir`` agrees with it;
* no object is ever made outside ``t/``, ``u/`` and ``t-exact/obj`` (the memory store is
  listed after every run).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import obstore
from zarr.core.buffer import cpu

import kvmap
from fuzz import _gen
from fuzz._fdp import provider
from fuzz._harness import attempt, has_surrogate, main

STORE = "kvmap-fuzz-store"
ENTRIES: list[dict[str, Any]] = [
    {"prefix": "", "path": f"memory://{STORE}/t/"},
    {"prefix": "s/", "path": "u/"},
    {"key": "k", "path": "t-exact/obj"},
    {"prefix": "w/", "path": None},
    {"key": "inline", "data": "AA=="},
]
MANIFEST = kvmap.Manifest.from_json(ENTRIES, url=f"memory://{STORE}/m.json")
ALLOWED = ("t/", "u/")
EXACT_OBJECT = "t-exact/obj"
KEY_HEADS = ["", "", "", "s/", "w/", "k", "inline", "t/", "u/", "a/", "s", "a"]
OPS = ["set", "set", "get", "get", "del", "list", "dir"]

_memory = kvmap.memory_store(STORE)
_READ_ONLY = kvmap.KVMapStore(MANIFEST, read_only=True)


def check(data: bytes) -> None:
    ops = decode(data)
    if ops is None:
        return
    for path in [meta["path"] for meta in obstore.list(_memory).collect()]:
        obstore.delete(_memory, path)
    store = kvmap.KVMapStore(MANIFEST)
    written: dict[str, bytes] = {}
    try:
        for op in ops:
            _run(store, written, op)
        _check_listing(store, written, "")
    finally:
        outside = [meta["path"] for meta in obstore.list(_memory).collect() if not _inside(meta["path"])]
    assert not outside, ("objects written outside the redirect targets", outside)


def decode(data: bytes) -> list[tuple[str, str, bytes]] | None:
    if data.startswith(b"J"):
        try:
            raw = json.loads(data[1:].decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(raw, list):
            return None
        ops = []
        for op in raw:
            if isinstance(op, list) and len(op) >= 2 and op[0] in OPS and isinstance(op[1], str):
                value = op[2] if len(op) > 2 and isinstance(op[2], str) else ""
                ops.append((op[0], op[1], value.encode("utf-8", "surrogatepass")))
        return ops
    fdp = provider(data)
    return [
        (fdp.PickValueInList(OPS), _key(fdp), fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16)))
        for _ in range(fdp.ConsumeIntInRange(1, 8))
    ]


def _key(fdp: Any) -> str:
    key = str(fdp.PickValueInList(KEY_HEADS))
    if fdp.ConsumeIntInRange(0, 63) == 0:
        return key + str(fdp.PickValueInList(["a", "a/", "é", "."])) * fdp.ConsumeIntInRange(0, 50_000)
    return key + _gen.text(fdp)


def _inside(path: str) -> bool:
    return path.startswith(ALLOWED) or path == EXACT_OBJECT


def _segments_with_dots(key: str) -> bool:
    return any(s in (".", "..") for s in key.split("/"))


def _decider(key: str) -> str:
    """Which kind of entry decides ``key``: "redirect", "exact", "whiteout", "inline"."""
    if key == "k":
        return "exact"
    if key == "inline":
        return "inline"
    if key.startswith("w/"):
        return "whiteout"
    return "redirect"


def _run(store: Any, written: dict[str, bytes], op: tuple[str, str, bytes]) -> None:
    name, key, value = op
    if name == "set":
        _set(store, written, key, value)
    elif name == "get":
        _get(store, written, key)
    elif name == "del":
        _delete(store, written, key)
    elif name == "list":
        _check_listing(store, written, key)
    else:
        _check_dir(store, key)


def _set(store: Any, written: dict[str, bytes], key: str, value: bytes) -> None:
    try:
        _READ_ONLY.set_sync(key, cpu.Buffer.from_bytes(value))
    except ValueError:
        pass
    else:
        raise AssertionError(f"a read-only store wrote {key!r}")
    try:
        store.set_sync(key, cpu.Buffer.from_bytes(value))
    except kvmap.KvmapError:
        return
    assert not has_surrogate(key), ("wrote a key holding a lone surrogate", key)
    assert _decider(key) in ("redirect", "exact"), ("wrote a key that cannot take writes", key)
    remainder = key[2:] if key.startswith("s/") else key
    assert not _segments_with_dots(remainder), ("wrote a key with a dot segment", key)
    if _decider(key) == "redirect":  # no object is named by a path ending in "/" or with an empty segment
        path = "t/" + remainder
        assert not path.endswith("/"), ("wrote a key whose object path ends in '/'", key)
        assert "//" not in path, ("wrote a key whose object path has an empty segment", key)
    written[key] = value
    _get(store, written, key)


def _get(store: Any, written: dict[str, bytes], key: str) -> None:
    buffer, error = attempt(lambda: store.get_sync(key), (kvmap.KvmapError,))
    if error is not None:
        assert key not in written, ("a written key does not read", key, error)
        assert has_surrogate(key) or _decider(key) in ("redirect", "exact"), ("read failed", key, error)
        return
    got = None if buffer is None else buffer.to_bytes()
    assert not has_surrogate(key), ("read a key holding a lone surrogate", key)
    decider = _decider(key)
    if decider == "inline":
        assert got == b"\x00", (key, got)
    elif decider == "whiteout":
        assert got is None, (key, got)
    else:
        assert got == written.get(key), ("read other bytes than were written to this key", key, got, written)


def _delete(store: Any, written: dict[str, bytes], key: str) -> None:
    try:
        store.delete_sync(key)
    except kvmap.KvmapError:
        assert key not in written or _decider(key) == "exact", ("a written key does not delete", key)
        return
    assert _decider(key) == "redirect", ("deleted a key that cannot take writes", key)
    assert not has_surrogate(key), ("deleted a key holding a lone surrogate", key)
    written.pop(key, None)
    _get(store, written, key)


async def _collect(keys: Any) -> list[str]:
    return [k async for k in keys]


def _listing_may_fail(prefix: str) -> bool:
    """Only a prefix holding a lone surrogate (no key starts with it) may fail a listing: one that
    no object path can start with (a control character, a ``.`` segment) lists nothing."""
    return has_surrogate(prefix)


def _listing(store: Any, prefix: str) -> list[str] | None:
    try:
        return asyncio.run(_collect(store.list_prefix(prefix)))
    except (kvmap.KvmapError, ValueError):
        assert _listing_may_fail(prefix), ("listing failed", prefix)
        return None


def _check_listing(store: Any, written: dict[str, bytes], prefix: str) -> None:
    listed = _listing(store, prefix)
    if listed is None:
        return
    want = sorted({k for k in [*written, "k", "inline"] if k.startswith(prefix)})
    assert listed == want, ("the listing is not the keys written", prefix, listed, want)


def _check_dir(store: Any, directory: str) -> None:
    try:
        children = asyncio.run(_collect(store.list_dir(directory)))
    except (kvmap.KvmapError, ValueError):
        assert _listing_may_fail(directory), ("list_dir failed", directory)
        return
    inner = directory if directory == "" or directory.endswith("/") else directory + "/"
    below = _listing(store, inner) or []
    assert children == sorted({k[len(inner) :].split("/")[0] for k in below}), (directory, children, below)


if __name__ == "__main__":
    main(check)
