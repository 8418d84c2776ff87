"""Copy-on-write overlays (kvmap.overlay): reads, writes, commits, races, squash, garbage collection.

Real parts only: bases are kvmap manifests over local directories, ``memory://`` stores and a raw file
read through byte windows; overlays live on local directories, ``memory://`` and the loopback S3 server
(moto). "Concurrent" writers are second stores on the same overlay, interleaved deterministically.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import obstore
import pytest
import xarray as xr
import zarr
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from obstore.exceptions import AlreadyExistsError
from obstore.store import LocalStore
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

import kvmap
from kvmap.overlay import (
    INLINE_LIMIT,
    OverlayBaseChangedError,
    OverlayConflictError,
    OverlayCorruptError,
    OverlayLocationError,
    collect_garbage,
    squash,
)
from kvmap.store import KVMapStore
from tests.servers import S3Server

BIG = b"B" * (INLINE_LIMIT + 1)  # stored as an object
SMALL = b"small"  # stored inline


@dataclass
class Place:
    """A base manifest (redirecting every key into ``data``) and an overlay location."""

    target: str | kvmap.Manifest
    overlay: str
    stores: dict[str, dict[str, Any]]
    base_files: Path | None  # the local directory of the base's objects, when local

    def store(self, **kwargs: Any) -> KVMapStore:
        return KVMapStore(self.target, overlay=self.overlay, stores=self.stores, **kwargs)


def _local_base(root: Path, files: dict[str, bytes]) -> Path:
    (root / "data").mkdir(parents=True)
    for key, value in files.items():
        (root / "data" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / key).write_bytes(value)
    (root / "m.json").write_text(json.dumps({"kvmap": 1, "entries": [{"prefix": "", "path": "data/"}]}))
    return root / "m.json"


def _checksums(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(params=["local", "memory", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    """A local base ({"a": b"A", "d/b": b"DB"}) with an overlay on each backend."""
    manifest = _local_base(tmp_path / "base", {"a": b"A", "d/b": b"DB"})
    if request.param == "local":
        return Place(str(manifest), str(tmp_path / "ov"), {}, tmp_path / "base" / "data")
    if request.param == "memory":
        return Place(str(manifest), f"memory://ov-{uuid.uuid4().hex}/o/", {}, tmp_path / "base" / "data")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"ov-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    root, stores = server.kvmap_stores()
    return Place(str(manifest), f"{root}{bucket}/o/", stores, tmp_path / "base" / "data")


def _get(store: KVMapStore, key: str) -> bytes | None:
    found = store.get_sync(key)
    return None if found is None else found.to_bytes()


def _keys(store: KVMapStore) -> list[str]:
    return list(store.reader.list_prefix_sync("")) if store.overlay is None else _run(store.overlay.list_prefix(""))


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


# -- the backends' create-if-absent, which commits rest on --------------------------------------------


@pytest.mark.parametrize("backend", ["local", "memory", "s3"])
def test_backends_create_if_absent(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """obstore 0.12: ``mode="create"`` refuses an existing object on LocalStore, MemoryStore and S3 (moto)."""
    if backend == "local":
        store: Any = LocalStore(str(tmp_path))
    elif backend == "memory":
        store = kvmap.memory_store(f"create-{uuid.uuid4().hex}")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = f"create-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        store = server.store(bucket)
    obstore.put(store, "commits/1.json", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "commits/1.json", b"second", mode="create")
    assert bytes(obstore.get(store, "commits/1.json").bytes()) == b"first"


def test_http_overlay_refused(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path, {"a": b"A"})
    for url in ("http://127.0.0.1:9/ov/", "https://example.invalid/ov/"):
        with pytest.raises(OverlayLocationError, match="create an object only if it is absent"):
            KVMapStore(manifest, overlay=url)
    with pytest.raises(OverlayLocationError, match="pipeline"):
        KVMapStore(manifest, overlay=f"{tmp_path}/x.zip|zip:")


# -- reads and writes ---------------------------------------------------------------------------------


def test_write_commit_reopen(place: Place) -> None:
    before = _checksums(place.base_files) if place.base_files else {}
    store = place.store()
    assert _get(store, "a") == b"A"
    store.set_sync("a", cpu.Buffer.from_bytes(SMALL))  # a base key, overridden
    store.set_sync("new/big", cpu.Buffer.from_bytes(BIG))  # an uncovered... here a new key, as an object
    store.delete_sync("d/b")  # a whiteout over a base key
    assert _get(store, "a") == SMALL
    assert _get(store, "new/big") == BIG
    assert _get(store, "d/b") is None
    assert _keys(store) == ["a", "new/big"]
    assert _run(store.overlay.list_dir("")) == ["a", "new"]  # type: ignore[union-attr]
    assert _get(place.store(), "a") == b"A"  # pending: no other store sees it
    assert store.commit() == 1
    again = place.store()
    assert _get(again, "a") == SMALL
    assert _get(again, "new/big") == BIG
    assert _get(again, "d/b") is None
    assert again.get_sync("new/big", byte_range=zarr.abc.store.RangeByteRequest(1, 3)).to_bytes() == b"BB"  # type: ignore[union-attr]
    assert _keys(again) == ["a", "new/big"]
    assert again.commit() == 1  # nothing pending: no new commit, the view is the newest
    if place.base_files:
        assert _checksums(place.base_files) == before  # the base is never written


def test_uncovered_and_windowed_keys_become_writable(tmp_path: Path) -> None:
    """What a plain store refuses (byte windows, inline values, uncovered keys) an overlay takes."""
    (tmp_path / "raw.bin").write_bytes(b"0123456789")
    doc = [{"key": "w", "path": "raw.bin", "offset": 2, "length": 3}, {"key": "i", "data": "aGk="}]
    (tmp_path / "m.json").write_text(json.dumps(doc))
    plain = KVMapStore(tmp_path / "m.json")
    with pytest.raises(kvmap.WriteError):
        plain.set_sync("w", cpu.Buffer.from_bytes(b"x"))
    store = KVMapStore(tmp_path / "m.json", overlay=tmp_path / "ov")
    for key in ("w", "i", "uncovered"):
        store.set_sync(key, cpu.Buffer.from_bytes(b"new-" + key.encode()))
    store.commit()
    fresh = KVMapStore(tmp_path / "m.json", overlay=tmp_path / "ov")
    assert [_get(fresh, k) for k in ("w", "i", "uncovered")] == [b"new-w", b"new-i", b"new-uncovered"]
    assert (tmp_path / "raw.bin").read_bytes() == b"0123456789"


def test_close_and_context_manager(place: Place) -> None:
    with place.store() as store:
        store.set_sync("k", cpu.Buffer.from_bytes(SMALL))
    assert _get(place.store(), "k") == SMALL  # leaving the block committed

    def failing_block() -> None:
        with place.store() as store:
            store.set_sync("k", cpu.Buffer.from_bytes(b"dropped"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        failing_block()
    assert _get(place.store(), "k") == SMALL  # a block that raises commits nothing
    store = place.store()
    store.set_sync("j", cpu.Buffer.from_bytes(BIG))
    store.close()
    assert _get(place.store(), "j") == BIG


def test_pickled_store_equals_and_reads_commits(place: Place) -> None:
    store = place.store()
    store.set_sync("k", cpu.Buffer.from_bytes(SMALL))
    copy = pickle.loads(pickle.dumps(store))
    assert copy == store
    assert copy != KVMapStore(place.target, stores=place.stores)
    assert _get(copy, "k") is None  # pending writes stay with the original
    store.commit()
    assert _get(pickle.loads(pickle.dumps(store)), "k") == SMALL


# -- concurrent writers -------------------------------------------------------------------------------


def test_disjoint_commits_both_succeed(place: Place) -> None:
    one, two = place.store(), place.store()
    assert _get(one, "a") == b"A"
    assert _get(two, "a") == b"A"
    one.set_sync("x", cpu.Buffer.from_bytes(SMALL))
    two.set_sync("y", cpu.Buffer.from_bytes(BIG))
    two.delete_sync("a")
    assert one.commit() == 1
    assert two.commit() == 2  # lost the race for 1, rebased
    assert _get(two, "x") == SMALL  # the rebased view holds the other writer's commit
    fresh = place.store()
    assert (_get(fresh, "x"), _get(fresh, "y"), _get(fresh, "a")) == (SMALL, BIG, None)


def test_same_key_exactly_one_conflict(place: Place) -> None:
    one, two = place.store(), place.store()
    _get(one, "a"), _get(two, "a")
    one.set_sync("k", cpu.Buffer.from_bytes(b"one"))
    two.set_sync("k", cpu.Buffer.from_bytes(b"two"))
    two.set_sync("other", cpu.Buffer.from_bytes(b"two"))
    assert one.commit() == 1
    with pytest.raises(OverlayConflictError) as caught:
        two.commit()
    assert caught.value.keys == ["k"]
    assert isinstance(caught.value, kvmap.WriteError)
    assert pickle.loads(pickle.dumps(caught.value)).keys == ["k"]
    assert set(two.overlay.pending) == {"k", "other"}  # type: ignore[union-attr]  # kept, not half-committed
    fresh = place.store()
    assert (_get(fresh, "k"), _get(fresh, "other")) == (b"one", None)
    two.overlay.discard()  # type: ignore[union-attr]
    two.overlay.refresh()  # type: ignore[union-attr]
    two.set_sync("k", cpu.Buffer.from_bytes(b"two"))
    assert two.commit() == 2  # after a refresh the write goes on top
    assert _get(place.store(), "k") == b"two"


def test_latest_hint_lost_or_stale(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    for i in range(1, 6):
        store = KVMapStore(manifest, overlay=tmp_path / "ov")
        store.set_sync(f"k{i}", cpu.Buffer.from_bytes(b"v"))
        assert store.commit() == i
    (tmp_path / "ov" / "latest").write_text("2")  # stale
    assert KVMapStore(manifest, overlay=tmp_path / "ov").overlay.commit_number == 5  # type: ignore[union-attr]
    (tmp_path / "ov" / "latest").unlink()  # lost
    assert KVMapStore(manifest, overlay=tmp_path / "ov").overlay.commit_number == 5  # type: ignore[union-attr]


def test_corrupt_commit_is_an_error(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    store = KVMapStore(manifest, overlay=tmp_path / "ov")
    store.set_sync("k", cpu.Buffer.from_bytes(BIG))
    store.commit()
    commit = next((tmp_path / "ov" / "commits").iterdir())
    doc = json.loads(commit.read_text())
    doc["entries"][0]["path"] = "/etc/passwd"  # a commit cannot send reads outside objects/
    commit.write_text(json.dumps(doc))
    with pytest.raises(OverlayCorruptError, match="entry 0"):
        _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "k")


def test_damaged_object_is_an_error(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    store = KVMapStore(manifest, overlay=tmp_path / "ov")
    store.set_sync("k", cpu.Buffer.from_bytes(BIG))
    store.commit()
    (obj,) = (tmp_path / "ov" / "objects").iterdir()
    obj.write_bytes(b"X" * len(BIG))
    with pytest.raises(kvmap.TargetError, match="does not hold the bytes"):
        _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "k")
    obj.unlink()
    with pytest.raises(kvmap.DanglingReferenceError):
        _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "k")


# -- the base's identity ------------------------------------------------------------------------------


def test_base_change_is_detected(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {"a": b"A"})
    store = KVMapStore(manifest, overlay=tmp_path / "ov")
    store.set_sync("k", cpu.Buffer.from_bytes(SMALL))
    store.commit()
    text = manifest.read_text()
    manifest.write_text(text)  # same bytes, new mtime (a new local ETag): not a change
    os.utime(manifest, (1, 1))
    assert _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "k") == SMALL
    manifest.write_text(text.replace("data/", "data/a/../"))
    with pytest.raises(OverlayBaseChangedError) as caught:
        _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "k")
    assert caught.value.recorded["sha256"] != caught.value.current["sha256"]
    accepting = KVMapStore(manifest, overlay=tmp_path / "ov", allow_base_change=True)
    accepting.set_sync("j", cpu.Buffer.from_bytes(SMALL))
    accepting.commit()  # records the new base
    assert _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "k") == SMALL


# -- crashes, garbage, squash -------------------------------------------------------------------------


def test_crash_leaves_only_unreferenced_objects(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    kept = KVMapStore(manifest, overlay=tmp_path / "ov")
    kept.set_sync("kept", cpu.Buffer.from_bytes(BIG))
    kept.commit()
    crashed = KVMapStore(manifest, overlay=tmp_path / "ov")
    crashed.set_sync("lost", cpu.Buffer.from_bytes(BIG + b"lost"))
    del crashed  # never committed: as if the writer was killed
    later = KVMapStore(manifest, overlay=tmp_path / "ov")
    assert _get(later, "lost") is None
    assert _get(later, "kept") == BIG
    assert len(list((tmp_path / "ov" / "objects").iterdir())) == 2
    young = collect_garbage(tmp_path / "ov")  # within the grace period: nothing goes
    assert young.objects == []
    assert young.kept == 2
    later.set_sync("x", cpu.Buffer.from_bytes(SMALL))
    later.commit()  # the crashed writer's object is now older than the newest commit
    report = collect_garbage(tmp_path / "ov", grace=timedelta(0))
    assert report.objects == [hashlib.sha256(BIG + b"lost").hexdigest()]
    assert report.kept == 1
    assert _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "kept") == BIG
    trimmed = collect_garbage(tmp_path / "ov", grace=timedelta(0), keep_commits=1)
    assert trimmed.commits == []  # commit 2 is a delta on snapshot 1: keeping it keeps 1
    assert trimmed.objects == []
    assert KVMapStore(manifest, overlay=tmp_path / "ov").overlay.commit_number == 2  # type: ignore[union-attr]


def _commit_doc(overlay: Path, number: int) -> dict[str, Any]:
    return json.loads((overlay / "commits" / f"{number:020d}.json").read_text())


def test_commits_are_deltas_on_a_snapshot_written_every_so_often(tmp_path: Path) -> None:
    from kvmap.overlay import MAX_DELTAS

    manifest = _local_base(tmp_path / "b", {})
    ov = tmp_path / "ov"
    expected: dict[str, bytes] = {}
    for n in range(1, 2 * MAX_DELTAS + 6):
        store = KVMapStore(manifest, overlay=ov)
        value = BIG + str(n).encode() if n % 3 else SMALL + str(n).encode()
        store.set_sync(f"k{n % 7}", cpu.Buffer.from_bytes(value))
        expected[f"k{n % 7}"] = value
        assert store.overlay.commit() == n  # type: ignore[union-attr]
        fresh = KVMapStore(manifest, overlay=ov)
        assert {k: _get(fresh, k) for k in expected} == expected
    kinds = [_commit_doc(ov, n)["kvmap_overlay"] for n in range(1, 2 * MAX_DELTAS + 6)]
    # A snapshot, then MAX_DELTAS deltas on it, then the next snapshot...
    assert kinds[: 2 * MAX_DELTAS + 3] == ([1] + [2] * MAX_DELTAS) * 2 + [1]
    delta = _commit_doc(ov, 3)
    assert delta["since"] == 1
    assert [e["key"] for e in delta["changes"]] == ["k3"]
    assert "entries" not in delta
    # Keeping the newest 2 commits keeps the snapshot and the deltas they build on, and no older.
    latest = 2 * MAX_DELTAS + 5
    since = _commit_doc(ov, latest)["since"]
    trimmed = collect_garbage(ov, grace=timedelta(0), keep_commits=2)
    assert trimmed.commits == list(range(1, since))
    assert {k: _get(KVMapStore(manifest, overlay=ov), k) for k in expected} == expected


def test_a_commit_repeating_a_quarter_of_the_entries_is_a_snapshot(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    ov = tmp_path / "ov"
    with KVMapStore(manifest, overlay=ov) as store:
        for i in range(5000):
            store.set_sync(f"c/{i}", cpu.Buffer.from_bytes(b"v"))
    with KVMapStore(manifest, overlay=ov) as store:
        for i in range(1000):  # 1,000 <= max(1024, 5000 / 4): a delta
            store.set_sync(f"c/{i}", cpu.Buffer.from_bytes(b"w"))
    with KVMapStore(manifest, overlay=ov) as store:
        for i in range(300):  # 1,300 in the deltas since the snapshot: more than 1,250
            store.set_sync(f"d/{i}", cpu.Buffer.from_bytes(b"x"))
    assert [_commit_doc(ov, n)["kvmap_overlay"] for n in (1, 2, 3)] == [1, 2, 1]
    assert len(_commit_doc(ov, 3)["entries"]) == 5300


def test_a_delta_on_something_that_is_not_its_snapshot_is_corrupt(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    ov = tmp_path / "ov"
    for n in range(3):
        with KVMapStore(manifest, overlay=ov) as store:
            store.set_sync(f"k{n}", cpu.Buffer.from_bytes(SMALL))
    doc = _commit_doc(ov, 3)
    doc["since"] = 2  # commit 2 is a delta, not a snapshot
    (ov / "commits" / f"{3:020d}.json").write_text(json.dumps(doc))
    with pytest.raises(OverlayCorruptError, match="not a snapshot"):
        _get(KVMapStore(manifest, overlay=ov), "k0")
    doc["since"] = 3  # a delta cannot be its own snapshot
    (ov / "commits" / f"{3:020d}.json").write_text(json.dumps(doc))
    with pytest.raises(OverlayCorruptError, match="since"):
        _get(KVMapStore(manifest, overlay=ov), "k0")


def test_squash(place: Place, tmp_path: Path) -> None:
    store = place.store()
    store.set_sync("a", cpu.Buffer.from_bytes(BIG))
    store.set_sync("s", cpu.Buffer.from_bytes(SMALL))
    store.delete_sync("d/b")
    store.commit()
    out = tmp_path / "elsewhere" / "squashed.json"
    out.parent.mkdir()
    squash(place.target, place.overlay, out, stores=place.stores)
    flat = KVMapStore(out, allow_all=True, stores=place.stores)
    assert (_get(flat, "a"), _get(flat, "s"), _get(flat, "d/b")) == (BIG, SMALL, None)
    assert sorted(flat.reader.list_prefix_sync("")) == ["a", "s"]
    doc = json.loads(out.read_text())
    assert not any("commits/" in str(e.get("path")) for e in doc["entries"])  # needs no commit


# -- a hypothesis model -------------------------------------------------------------------------------

KEYS = ["a", "d/b", "d/c", "e", "z/y/x"]
VALUES = [b"", SMALL, BIG, BIG + b"2"]
_NO = object()


class OverlayMachine(RuleBasedStateMachine):
    """An overlay store against a dict model: its pending writes over its view of the commits, a second
    writer committing behind its back, commits (with rebase or conflict) and reopenings."""

    def __init__(self) -> None:
        super().__init__()
        name = f"model-{uuid.uuid4().hex}"
        obstore.put(kvmap.memory_store(name), "data/a", b"base-a")
        obstore.put(kvmap.memory_store(name), "data/d/b", b"base-b")
        self.base = {"a": b"base-a", "d/b": b"base-b"}
        self.target = kvmap.Manifest.from_json([{"prefix": "", "path": "data/"}], url=f"memory://{name}/m.json")
        self.overlay = f"memory://{name}/ov/"
        self.committed: dict[str, bytes | None] = {}  # the overlay's entries (None: a whiteout)
        self.seen: dict[str, bytes | None] = {}  # the commit the store's view is of
        self.pending: dict[str, bytes | None] = {}
        self.store = self._open()

    def _open(self) -> KVMapStore:
        store = KVMapStore(self.target, overlay=self.overlay)
        # Merge the view's editable map every few writes, so that merges happen within a run.
        store.overlay._merge_at = 2  # type: ignore[union-attr]
        return store

    @staticmethod
    def _view(base: dict[str, bytes], entries: dict[str, bytes | None]) -> dict[str, bytes]:
        out = dict(base)
        for key, value in entries.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    @rule(key=st.sampled_from(KEYS), value=st.sampled_from(VALUES))
    def set(self, key: str, value: bytes) -> None:
        self.store.set_sync(key, cpu.Buffer.from_bytes(value))
        self.pending[key] = value

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.store.delete_sync(key)
        self.pending[key] = None

    @rule()
    def commit(self) -> None:
        changed = {k for k in self.pending if self.committed.get(k, _NO) != self.seen.get(k, _NO)}
        if changed:
            with pytest.raises(OverlayConflictError) as caught:
                self.store.commit()
            assert set(caught.value.keys) == changed
            self.store.overlay.discard()  # type: ignore[union-attr]
            self.store.overlay.refresh()  # type: ignore[union-attr]
            self.pending = {}
        else:
            self.store.commit()
            self.committed.update(self.pending)
            self.pending = {}
        self.seen = dict(self.committed)

    @rule()
    def reopen(self) -> None:
        self.store = self._open()  # pending writes of the old one are never committed
        self.pending = {}
        self.seen = dict(self.committed)

    @rule(writes=st.dictionaries(st.sampled_from(KEYS), st.sampled_from([*VALUES, None]), min_size=1, max_size=3))
    def other_writer(self, writes: dict[str, bytes | None]) -> None:
        other = self._open()
        for key, value in writes.items():
            if value is None:
                other.delete_sync(key)
            else:
                other.set_sync(key, cpu.Buffer.from_bytes(value))
        other.commit()
        self.committed.update(writes)

    @invariant()
    def reads_match(self) -> None:
        expected = self._view(self.base, {**self.seen, **self.pending})
        assert {k: _get(self.store, k) for k in KEYS} == {k: expected.get(k) for k in KEYS}
        assert _keys(self.store) == sorted(expected)
        overlay = self.store.overlay
        assert overlay is not None
        for directory in ("", "d/", "z/", "z/y/"):
            children = sorted({k[len(directory) :].split("/", 1)[0] for k in expected if k.startswith(directory)})
            assert _run(overlay.list_dir(directory)) == children, directory
        assert _run(overlay.list_prefix("d/")) == sorted(k for k in expected if k.startswith("d/"))

    @invariant()
    def fresh_store_sees_the_commits(self) -> None:
        expected = self._view(self.base, self.committed)
        fresh = self._open()
        assert {k: _get(fresh, k) for k in KEYS} == {k: expected.get(k) for k in KEYS}


TestOverlayMachine = OverlayMachine.TestCase
TestOverlayMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


# -- zarr's store conformance suite on an overlay store -----------------------------------------------


class _OverlayStoreTests(StoreTests[KVMapStore, cpu.Buffer]):
    """The suite's ``set`` helper writes into the base (under the overlay); ``get`` commits and reads
    with a new store, so every write the suite checks has gone through a commit."""

    store_cls = KVMapStore
    buffer_cls = cpu.Buffer

    def test_store_repr(self, store: KVMapStore) -> None:
        assert repr(store).startswith("KVMapStore(")

    def test_store_supports_writes(self, store: KVMapStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: KVMapStore) -> None:
        assert store.supports_listing

    async def get(self, store: KVMapStore, key: str) -> Buffer:
        store.commit()
        assert store.overlay is not None
        fresh = KVMapStore(store.target, overlay=store.overlay.url)
        found = await fresh.get(key, default_buffer_prototype())
        assert found is not None
        return self.buffer_cls.from_bytes(found.to_bytes())


class TestLocalOverlay(_OverlayStoreTests):
    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        manifest = _local_base(tmp_path / "base", {})
        return {"target": str(manifest), "overlay": str(tmp_path / "ov"), "read_only": False}

    async def set(self, store: KVMapStore, key: str, value: Buffer) -> None:
        target = store.target
        assert isinstance(target, str)
        path = Path(target.removeprefix("file://")).parent / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())


class TestMemoryOverlay(_OverlayStoreTests):
    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        name = f"overlay-conformance-{uuid.uuid4().hex}"
        manifest = kvmap.Manifest.from_json([{"prefix": "", "path": "data/"}], url=f"memory://{name}/m.json")
        return {"target": manifest, "overlay": f"memory://{name}/ov/", "read_only": False}

    async def set(self, store: KVMapStore, key: str, value: Buffer) -> None:
        target = store.target
        assert isinstance(target, kvmap.Manifest)
        assert target.url is not None
        name = target.url.removeprefix("memory://").split("/", 1)[0]
        obstore.put(kvmap.memory_store(name), f"data/{key}", value.to_bytes())


# -- xarray: patch a virtual dataset made of byte windows into a raw file ---------------------------


@pytest.fixture
def virtual_dataset(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """``raw.bin`` (a float32 8x10 grid) and a kerchunk-like manifest: zarr metadata inline, each
    chunk (4 rows) a byte window of the raw file."""
    values = np.arange(80, dtype="<f4").reshape(8, 10)
    (tmp_path / "raw.bin").write_bytes(values.tobytes())
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [8, 10],
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 10]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "dimension_names": ["y", "x"],
        "attributes": {},
    }
    entries = [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {"title": "raw"}}},
        {"key": "t/zarr.json", "json": meta},
        {"key": "t/c/0/0", "path": "raw.bin", "offset": 0, "length": 160},
        {"key": "t/c/1/0", "path": "raw.bin", "offset": 160, "length": 160},
    ]
    (tmp_path / "virtual.json").write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return tmp_path / "virtual.json", tmp_path / "raw.bin", values


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
@pytest.mark.parametrize("backend", ["local", "memory", "s3"])
def test_xarray_region_patch_through_overlay(
    backend: str, virtual_dataset: tuple[Path, Path, np.ndarray], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    manifest, raw, values = virtual_dataset
    checksum = hashlib.sha256(raw.read_bytes()).hexdigest()
    stores: dict[str, dict[str, Any]] = {}
    if backend == "local":
        overlay = str(tmp_path / "ov")
    elif backend == "memory":
        overlay = f"memory://xr-{uuid.uuid4().hex}/ov/"
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = f"xr-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        root, stores = server.kvmap_stores()
        overlay = f"{root}{bucket}/ov/"

    def open_store() -> KVMapStore:
        return KVMapStore(manifest, overlay=overlay, stores=stores)

    ds = xr.open_zarr(open_store(), consolidated=False)
    np.testing.assert_array_equal(ds["t"].values, values)
    patch = xr.Dataset({"t": (("y", "x"), np.full((4, 10), -1.0, dtype="f4"))})
    with open_store() as store:
        patch.to_zarr(store, region={"y": slice(4, 8)}, consolidated=False)
    with open_store() as store:  # root attributes, a new variable (mode="a"), consolidated metadata
        # mode="a" sets the root attributes to the dataset's: it carries the title on.
        added = xr.Dataset({"n": (("y",), np.arange(8, dtype="i2"))}, attrs={"title": "raw"})
        added.to_zarr(store, mode="a", consolidated=False)
        group = zarr.open_group(store, mode="r+")
        group.attrs["history"] = "patched rows 4-7"
        zarr.consolidate_metadata(store)
    again = xr.open_zarr(open_store(), consolidated=True)
    expected = values.copy()
    expected[4:] = -1.0
    np.testing.assert_array_equal(again["t"].values, expected)
    np.testing.assert_array_equal(again["n"].values, np.arange(8))
    assert again.attrs["history"] == "patched rows 4-7"
    assert again.attrs["title"] == "raw"
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == checksum  # the original is unchanged
    assert json.loads(manifest.read_text())["entries"][2]["offset"] == 0
    np.testing.assert_array_equal(xr.open_zarr(KVMapStore(manifest), consolidated=False)["t"].values, values)


def test_dask_threaded_to_zarr_through_overlay(virtual_dataset: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    """dask's threaded scheduler shares the one store: every task's writes are pending there, and
    leaving the block commits them together (worker processes: tests/test_overlay_dask.py)."""
    import dask

    manifest, raw, values = virtual_dataset
    patch = xr.Dataset({"t": (("y", "x"), np.full((8, 10), 5.0, dtype="f4"))}).chunk({"y": 4})
    with dask.config.set(scheduler="threads"), KVMapStore(manifest, overlay=tmp_path / "ov") as store:
        patch.to_zarr(store, region={"y": slice(0, 8)}, consolidated=False)
    again = xr.open_zarr(KVMapStore(manifest, overlay=tmp_path / "ov"), consolidated=False)
    np.testing.assert_array_equal(again["t"].values, np.full((8, 10), 5.0, dtype="f4"))
    assert raw.read_bytes() == values.tobytes()


# -- copies of a store (pickled, as dask sends it to workers): recorded writes, one commit ------------


def _records_of(store: KVMapStore) -> list[str]:
    assert store.overlay is not None
    return store.overlay._record_paths()


def test_copies_record_their_writes_for_the_owner(place: Place) -> None:
    owner = place.store()
    copy = pickle.loads(pickle.dumps(owner))
    assert copy == owner
    assert copy.overlay.member  # type: ignore[union-attr]
    assert not owner.overlay.member  # type: ignore[union-attr]
    assert copy.overlay.session == owner.overlay.session  # type: ignore[union-attr]
    copy.set_sync("x", cpu.Buffer.from_bytes(SMALL))  # inline, in the record
    _run(copy.set("y", cpu.Buffer.from_bytes(BIG)))  # an object, named by the record
    copy.delete_sync("a")
    owner.set_sync("z", cpu.Buffer.from_bytes(b"owner"))  # the owner's own (e.g. zarr.json) write
    assert (_get(copy, "x"), _get(copy, "y"), _get(copy, "a")) == (SMALL, BIG, None)  # the copy reads its own
    assert (_get(owner, "x"), _get(place.store(), "x")) == (None, None)  # nobody else sees them yet
    assert len(_records_of(owner)) == 3
    with pytest.raises(kvmap.WriteError, match="cannot commit from a copy"):
        copy.commit()
    copy.close()  # xarray closes the store on a worker: a copy's close commits nothing
    assert place.store().overlay.commit_number == 0  # type: ignore[union-attr]
    assert owner.commit() == 1
    fresh = place.store()
    assert [_get(fresh, k) for k in ("x", "y", "a", "z", "d/b")] == [SMALL, BIG, None, b"owner", b"DB"]
    assert _records_of(owner) == []  # consumed and deleted
    later = pickle.loads(pickle.dumps(owner))  # the session goes on: a later copy's writes, a later commit
    later.set_sync("x", cpu.Buffer.from_bytes(b"again"))
    assert owner.commit() == 2
    assert _get(place.store(), "x") == b"again"
    if place.base_files:
        assert _checksums(place.base_files) == {
            "a": hashlib.sha256(b"A").hexdigest(),
            "d/b": hashlib.sha256(b"DB").hexdigest(),
        }


def test_copies_of_one_session_order_and_disagreement(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {"a": b"A"})
    owner = KVMapStore(manifest, overlay=tmp_path / "ov")
    one, two = pickle.loads(pickle.dumps(owner)), pickle.loads(pickle.dumps(owner))
    one.set_sync("k", cpu.Buffer.from_bytes(b"first"))
    one.set_sync("k", cpu.Buffer.from_bytes(b"second"))  # one copy's writes are ordered: the later wins
    one.set_sync("same", cpu.Buffer.from_bytes(BIG))
    two.set_sync("same", cpu.Buffer.from_bytes(BIG))  # two copies agreeing (a retried task) is no conflict
    assert owner.commit() == 1
    fresh = KVMapStore(manifest, overlay=tmp_path / "ov")
    assert (_get(fresh, "k"), _get(fresh, "same")) == (b"second", BIG)

    one.set_sync("k", cpu.Buffer.from_bytes(b"one"))
    two.set_sync("k", cpu.Buffer.from_bytes(b"two"))  # unordered copies disagree: refused
    owner.set_sync("o", cpu.Buffer.from_bytes(b"own"))
    with pytest.raises(OverlayConflictError, match="copies of this store") as caught:
        owner.commit()
    assert caught.value.keys == ["k"]
    assert _get(KVMapStore(manifest, overlay=tmp_path / "ov"), "o") is None  # nothing committed
    assert set(owner.overlay.pending) == {"o"}  # type: ignore[union-attr]  # kept
    assert len(_records_of(owner)) == 2
    two.overlay.discard()  # type: ignore[union-attr]  # a copy drops its own records only
    assert len(_records_of(owner)) == 1
    owner.set_sync("k", cpu.Buffer.from_bytes(b"owner"))  # the owner and a copy disagree: refused too
    with pytest.raises(OverlayConflictError) as caught:
        owner.commit()
    assert caught.value.keys == ["k"]
    owner.overlay.discard()  # type: ignore[union-attr]  # the owner drops its writes and the session's
    assert _records_of(owner) == []
    assert owner.commit() == 1  # nothing left


def test_block_that_raises_drops_the_copies_writes(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    owner = KVMapStore(manifest, overlay=tmp_path / "ov")

    def failing_block() -> None:
        with owner:
            pickle.loads(pickle.dumps(owner)).set_sync("k", cpu.Buffer.from_bytes(BIG))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        failing_block()
    assert _records_of(owner) == []
    fresh = KVMapStore(manifest, overlay=tmp_path / "ov")
    assert fresh.commit() == 0
    assert _get(fresh, "k") is None


def test_records_of_a_crashed_session_are_collected(tmp_path: Path) -> None:
    """A session whose owner never commits leaves objects and records no commit references:
    invisible, and collected after the grace period; a young record keeps the objects it names."""
    manifest = _local_base(tmp_path / "b", {})
    ov = tmp_path / "ov"
    owner = KVMapStore(manifest, overlay=ov)
    copy = pickle.loads(pickle.dumps(owner))
    copy.set_sync("lost", cpu.Buffer.from_bytes(BIG))
    copy.set_sync("small", cpu.Buffer.from_bytes(SMALL))
    del owner, copy  # the owner crashed: nobody can commit the session any more
    assert _get(KVMapStore(manifest, overlay=ov), "lost") is None
    (obj,) = (ov / "objects").iterdir()
    os.utime(obj, (1, 1))  # the object is old, its record is young: kept, with its object
    report = collect_garbage(ov, grace=timedelta(hours=1))
    assert (report.objects, report.pending, report.kept) == ([], [], 1)
    other = KVMapStore(manifest, overlay=ov)
    other.set_sync("x", cpu.Buffer.from_bytes(SMALL))
    other.commit()  # the records are now older than the newest commit
    report = collect_garbage(ov, grace=timedelta(0))
    assert report.objects == [hashlib.sha256(BIG).hexdigest()]
    assert len(report.pending) == 2
    assert all(name.endswith(".json") and "/" in name for name in report.pending)
    assert list((ov / "pending").rglob("*.json")) == []
    assert _get(KVMapStore(manifest, overlay=ov), "x") == SMALL


def test_unpickled_store_needs_a_session_id(tmp_path: Path) -> None:
    manifest = _local_base(tmp_path / "b", {})
    with pytest.raises(ValueError, match="session id"):
        kvmap.overlay.Overlay(KVMapStore(manifest).reader, tmp_path / "ov", session="../../x")
