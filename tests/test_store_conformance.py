"""zarr's own store conformance suite (``zarr.testing.store.StoreTests``) on KVMapStore.

Two writable configurations — a manifest whose one entry is a prefix-``""``
redirect onto a local directory, and one onto an in-memory store — so every
key the suite touches goes through resolution, the redirect and obstore. The
suite's ``set``/``get`` helpers bypass the store and touch the target directly.
Read-only configurations check that every write is refused.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import obstore
import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

import kvmap
from kvmap.store import KVMapStore


def _redirect(path: Path) -> None:
    """A manifest at ``path`` whose one entry redirects every key into ``data/`` beside it."""
    path.write_text(json.dumps({"kvmap": 1, "entries": [{"prefix": "", "path": "data/"}]}))


class _KVMapStoreTests(StoreTests[KVMapStore, cpu.Buffer]):
    store_cls = KVMapStore
    buffer_cls = cpu.Buffer

    def test_store_repr(self, store: KVMapStore) -> None:
        assert repr(store).startswith("KVMapStore(")
        assert str(store).startswith("kvmap://")

    def test_store_supports_writes(self, store: KVMapStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: KVMapStore) -> None:
        assert store.supports_listing


class TestLocalRedirect(_KVMapStoreTests):
    """``{"prefix": "", "path": "data/"}`` in ``m.json``, next to the directory ``data/``."""

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        (tmp_path / "data").mkdir()
        _redirect(tmp_path / "m.json")
        return {"target": str(tmp_path / "m.json"), "read_only": False}

    @staticmethod
    def _path(store: KVMapStore, key: str) -> Path:
        target = store.target
        assert isinstance(target, str)
        return Path(target.removeprefix("file://")).parent / "data" / key

    async def set(self, store: KVMapStore, key: str, value: Buffer) -> None:
        path = self._path(store, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: KVMapStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(self._path(store, key).read_bytes())


class TestMemoryRedirect(_KVMapStoreTests):
    """A :class:`~kvmap.Manifest` at ``memory://NAME/m.json`` redirecting ``""`` to ``memory://NAME/data/``."""

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        name = f"conformance-{uuid.uuid4().hex}"
        manifest = kvmap.Manifest.from_json([{"prefix": "", "path": "data/"}], url=f"memory://{name}/m.json")
        return {"target": manifest, "read_only": False}

    @staticmethod
    def _where(store: KVMapStore, key: str) -> tuple[Any, str]:
        target = store.target
        assert isinstance(target, kvmap.Manifest)
        assert target.url is not None
        name = target.url.removeprefix("memory://").split("/", 1)[0]
        return kvmap.memory_store(name), f"data/{key}"

    async def set(self, store: KVMapStore, key: str, value: Buffer) -> None:
        obstore.put(*self._where(store, key), value.to_bytes())

    async def get(self, store: KVMapStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(bytes(obstore.get(*self._where(store, key)).bytes()))


@pytest.fixture(params=["local", "memory"])
def read_only_store(request: pytest.FixtureRequest, tmp_path: Path) -> KVMapStore:
    if request.param == "local":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "k").write_bytes(b"v")
        _redirect(tmp_path / "m.json")
        return KVMapStore(tmp_path / "m.json", read_only=True)
    name = f"read-only-{uuid.uuid4().hex}"
    obstore.put(kvmap.memory_store(name), "data/k", b"v")
    manifest = kvmap.Manifest.from_json([{"prefix": "", "path": "data/"}], url=f"memory://{name}/m.json")
    return KVMapStore(manifest, read_only=True)


async def test_read_only_refuses_every_write(read_only_store: KVMapStore) -> None:
    value = cpu.Buffer.from_bytes(b"new")
    for write in (
        read_only_store.set("k", value),
        read_only_store.set("new", value),
        read_only_store.delete("k"),
        read_only_store.set_if_not_exists("new", value),
        read_only_store.clear(),
        read_only_store.delete_dir(""),
    ):
        with pytest.raises(ValueError, match="read-only"):
            await write
    with pytest.raises(ValueError, match="read-only"):
        read_only_store.set_sync("k", value)
    with pytest.raises(ValueError, match="read-only"):
        read_only_store.delete_sync("k")
    got = await read_only_store.get("k", default_buffer_prototype())
    assert got is not None
    assert got.to_bytes() == b"v"
    assert [k async for k in read_only_store.list()] == ["k"]
