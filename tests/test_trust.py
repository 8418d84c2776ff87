"""Regressions for the holes found when kvmap was attacked (issue 11): data loss through writes,
resource limits, deep chains, shared loads, stale caches, missing buckets and failed writes.

Real stores only: local files, memory stores, the loopback S3 API server and HTTP server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import threading
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
import zarr
from zarr.core.buffer import cpu

import kvmap
from kvmap.store import KVMapStore
from tests.servers import FaultHTTPServer, RangeHTTPServer, S3Server, redirect_path
from tests.test_store import _s3

NO_RETRIES = {"max_retries": 0}


def _memory(prefix: str = "trust") -> tuple[str, Any]:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return f"memory://{name}/", kvmap.memory_store(name)


def _put_json(store: Any, path: str, doc: Any) -> None:
    obstore.put(store, path, json.dumps(doc).encode())


# -- writes never touch the manifests and archives a store reads through --------------------------


def test_a_redirect_over_the_manifests_own_directory_keeps_the_manifest(tmp_path: Path) -> None:
    # Regression: zarr.open_group(mode="w") cleared the store and deleted m.json itself.
    (tmp_path / "m.json").write_text(json.dumps([{"prefix": "", "path": "./"}]))
    store = KVMapStore(tmp_path / "m.json")
    group = zarr.open_group(store, mode="w")
    group.create_array("x", shape=(4,), chunks=(2,), dtype="i4")
    zarr.open_group(store, mode="w")  # clears the hierarchy again: every key but the manifest
    assert json.loads((tmp_path / "m.json").read_text()) == [{"prefix": "", "path": "./"}]
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("*.json"))
    value = cpu.Buffer.from_bytes(b"overwritten")
    for write in (
        lambda: store.set_sync("m.json", value),
        lambda: asyncio.run(store.set("m.json", value)),
        lambda: store.delete_sync("m.json"),
        lambda: asyncio.run(store.delete("m.json")),
    ):
        with pytest.raises(kvmap.WriteError, match="manifest or archive"):
            write()
    assert json.loads((tmp_path / "m.json").read_text()) == [{"prefix": "", "path": "./"}]


def test_nested_manifests_archives_and_links_to_them_are_protected(tmp_path: Path) -> None:
    (tmp_path / "inner.json").write_text(json.dumps([{"prefix": "", "path": "data/"}]))
    (tmp_path / "m.json").write_text(
        json.dumps([{"prefix": "", "path": "./"}, {"prefix": "in/", "path": "inner.json|kvmap:"}])
    )
    os.symlink(tmp_path / "inner.json", tmp_path / "alias.json")
    (tmp_path / "sub").symlink_to(tmp_path)
    store = KVMapStore(tmp_path / "m.json")
    value = cpu.Buffer.from_bytes(b"x")
    # inner.json is named by an entry even before any key is read through it.
    for key in ("inner.json", "alias.json", "sub/inner.json", "sub/m.json"):
        with pytest.raises(kvmap.WriteError, match="manifest or archive"):
            store.set_sync(key, value)
    store.set_sync("in/c/0", value)  # a write through the nested manifest lands in its data/
    assert (tmp_path / "data" / "c" / "0").read_bytes() == b"x"
    assert json.loads((tmp_path / "inner.json").read_text()) == [{"prefix": "", "path": "data/"}]


# -- failed writes are kvmap errors; the old bytes survive ----------------------------------------


def test_a_failed_local_write_is_a_write_error_and_keeps_the_old_bytes(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps([{"prefix": "", "path": "d/"}]))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file").write_bytes(b"old")
    store = KVMapStore(tmp_path / "m.json")
    # A parent that is a file: no object can be written below it (root ignores permissions).
    with pytest.raises(kvmap.WriteError, match="write failed") as info:
        store.set_sync("file/below", cpu.Buffer.from_bytes(b"new"))
    assert info.value.key == "file/below"
    assert info.value.entry == 0
    assert info.value.url is not None
    assert info.value.url.endswith("d/file/below")
    assert (tmp_path / "d" / "file").read_bytes() == b"old"


def test_a_missing_bucket_is_an_error_not_absence(s3_server: S3Server) -> None:
    # Regression: a target in a missing bucket read as absent, and zarr filled the chunk.
    root, stores = _s3(s3_server)
    home = f"kv-{uuid.uuid4().hex[:12]}"
    gone = f"gone-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(home)
    manifest = [{"prefix": "c/", "path": f"{root}{gone}/data/"}, {"key": "k", "path": f"{root}{gone}/k"}]
    s3_server.put(home, "m.json", json.dumps(manifest).encode())
    store = KVMapStore(f"{root}{home}/m.json", stores=stores, allow=[f"{root}{gone}/"])
    reader = store.reader
    reads = (
        lambda k: reader.get_sync(k),
        lambda k: asyncio.run(reader.get(k)),
        lambda k: reader.size_sync(k),
        lambda k: reader.get_many_sync([k, k]),
        lambda k: reader.get_sync(k, (0, 2)),
    )
    for key in ("c/0", "k"):
        for read in reads:
            with pytest.raises(kvmap.TargetError, match="bucket does not exist") as info:
                read(key)
            assert info.value.key == key
    for write in (
        lambda: store.set_sync("c/0", cpu.Buffer.from_bytes(b"x")),
        lambda: store.delete_sync("c/0"),
    ):
        with pytest.raises(kvmap.WriteError, match=r"bucket does not exist|NoSuchBucket"):
            write()
    s3_server.create_bucket(gone)  # once it exists, a missing object under the prefix is absent again
    fresh = kvmap.Reader(f"{root}{home}/m.json", stores=stores, allow=[f"{root}{gone}/"])
    assert fresh.get_sync("c/0") is None
    assert fresh.size_sync("c/0") is None


# -- resource limits and deep chains ---------------------------------------------------------------


def test_a_huge_sparse_manifest_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps([{"prefix": "big/", "path": "huge.json|kvmap:"}]))
    with open(tmp_path / "huge.json", "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, sparse: reading it would abort the interpreter
    reader = kvmap.Reader(tmp_path / "m.json")
    with pytest.raises(kvmap.TargetError, match="larger than the limit") as info:
        reader.get_sync("big/x")
    assert info.value.key == "big/x"
    with pytest.raises(kvmap.TargetError, match="larger than the limit"):
        kvmap.Reader(tmp_path / "huge.json").get_sync("x")  # the caller's own manifest too


def test_the_manifest_limit_is_configurable_and_holds_for_every_store(tmp_path: Path) -> None:
    url, store = _memory()
    _put_json(store, "m.json", [{"prefix": "", "path": "inner.json|kvmap:"}])
    _put_json(store, "inner.json", [{"key": "k", "data": "aGk="}] * 100)
    assert kvmap.Reader(f"{url}m.json").get_sync("k") == b"hi"
    small = kvmap.Reader(f"{url}m.json", max_manifest_bytes=1000)
    with pytest.raises(kvmap.TargetError, match="limit of 1,000 bytes"):
        small.get_sync("k")
    with pytest.raises(kvmap.TargetError, match="limit of 10 bytes"):
        asyncio.run(kvmap.Reader(f"{url}m.json", max_manifest_bytes=10).get("k"))


def test_a_chain_longer_than_the_recursion_limit_reads(tmp_path: Path) -> None:
    # Regression: about 490 hops raised RecursionError under a large max_depth.
    url, store = _memory()
    hops = 550
    for i in range(hops):
        _put_json(store, f"m{i}.json", [{"prefix": "", "path": f"m{i + 1}.json|kvmap:"}])
    _put_json(store, f"m{hops}.json", [{"key": "k", "data": "ZGVlcA=="}])
    reader = kvmap.Reader(f"{url}m0.json", max_depth=600)
    assert reader.get_sync("k") == b"deep"
    assert asyncio.run(reader.get("k")) == b"deep"
    assert len(reader.explain_sync("k").hops) == hops + 1
    with pytest.raises(kvmap.ChainError, match="deeper than 100"):
        kvmap.Reader(f"{url}m0.json", max_depth=100).get_sync("k")


def test_max_depth_holds_on_the_fast_path() -> None:
    url, store = _memory()
    obstore.put(store, "a", b"bytes")
    m = kvmap.Manifest.from_json([{"key": "k", "path": "a"}], url=f"{url}m.json")
    assert kvmap.Reader(m, max_depth=1).get_sync("k") == b"bytes"
    for reader in (kvmap.Reader(m, max_depth=0),):
        with pytest.raises(kvmap.ChainError):
            reader.get_sync("k")
        with pytest.raises(kvmap.ChainError):
            asyncio.run(reader.get("k"))
    _put_json(store, "top.json", [{"prefix": "", "path": "m2.json|kvmap:"}])
    _put_json(store, "m2.json", [{"key": "k", "path": "a"}])
    # The top manifest of a pipeline is one hop in: a fast path read is a second.
    with pytest.raises(kvmap.ChainError):
        kvmap.Reader(f"{url}top.json|kvmap:|kvmap:", max_depth=1).get_sync("k")


# -- one cache, forgotten at once -------------------------------------------------------------------


def test_forget_drops_the_top_manifest_for_get_too() -> None:
    # Regression: get kept serving the old top manifest while listing and explain saw the new one.
    url, store = _memory()
    obstore.put(store, "a", b"old")
    obstore.put(store, "b", b"new")
    _put_json(store, "m.json", [{"key": "k", "path": "a"}])
    reader = kvmap.Reader(f"{url}m.json")
    assert reader.get_sync("k") == b"old"
    _put_json(store, "m.json", [{"key": "k", "path": "b"}])
    assert reader.get_sync("k") == b"old"  # decisions and manifests are remembered...
    reader.chain.forget()
    assert reader.get_sync("k") == b"new"  # ...until forgotten, by every method alike
    assert asyncio.run(reader.get("k")) == b"new"
    assert reader.explain_sync("k").hops[-1].url == f"{url}b"


# -- loads in flight are shared ----------------------------------------------------------------------


@pytest.fixture
def counted(http_server: RangeHTTPServer) -> tuple[RangeHTTPServer, str]:
    name = f"flight-{uuid.uuid4().hex}"
    (http_server.root / name).mkdir()
    (http_server.root / name / "m.json").write_text(
        json.dumps([{"key": f"k{i}", "data": "aGk="} for i in range(50)] + [{"prefix": "in/", "path": "n.json|kvmap:"}])
    )
    (http_server.root / name / "n.json").write_text(json.dumps([{"key": "x", "data": "aW4="}]))
    return http_server, f"{http_server.url}{name}/"


def _gets(server: RangeHTTPServer, path: str) -> int:
    return sum(1 for r in server.requests if r.method == "GET" and r.path.endswith(path))


def test_concurrent_first_reads_fetch_a_manifest_once(counted: tuple[RangeHTTPServer, str]) -> None:
    server, url = counted
    stores = {server.url: {"retry_config": NO_RETRIES}}
    reader = kvmap.Reader(f"{url}m.json", stores=stores)
    server.clear_requests()

    async def forty() -> list[Any]:
        return await asyncio.gather(
            *(reader.get(f"k{i % 50}") for i in range(40)), *(reader.get("in/x") for _ in range(40))
        )

    found = asyncio.run(forty())
    assert found == [b"hi"] * 40 + [b"in"] * 40
    assert _gets(server, "/m.json") == 1
    assert _gets(server, "/n.json") == 1

    threaded = kvmap.Reader(f"{url}m.json", stores=stores)
    server.clear_requests()
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def read() -> None:
        barrier.wait()
        results.append(bytes(threaded.get_sync("in/x")))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"in"] * 8
    assert _gets(server, "/m.json") == 1
    assert _gets(server, "/n.json") == 1


# -- zip archives: bounded inflation, CRC-32, and cached directories tied to the archive's version ---


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _zip_world(archive: bytes) -> tuple[kvmap.Reader, Any]:
    url, store = _memory("zip")
    obstore.put(store, "a.zip", archive)
    _put_json(store, "m.json", [{"prefix": "z/", "path": "a.zip|zip:"}, {"key": "k", "path": "a.zip|zip:c/0"}])
    return kvmap.Reader(f"{url}m.json"), store


def test_a_zip_bomb_member_is_refused_without_inflating_it() -> None:
    # A member that declares 10 bytes but inflates to 100 MiB: refused, having made at most ~10 bytes.
    bomb = _zip({"c/0": b"\0" * (100 << 20)}, zipfile.ZIP_DEFLATED)
    directory = bomb.rfind(b"PK\x01\x02")
    patched = bytearray(bomb)
    patched[directory + 24 : directory + 28] = (10).to_bytes(4, "little")  # the central directory's size
    reader, _ = _zip_world(bytes(patched))
    tracemalloc.start()
    try:
        with pytest.raises(kvmap.TargetError, match="does not inflate"):
            reader.get_sync("k")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_damaged_member_fails_its_crc_when_read_whole(method: int) -> None:
    data = bytes(range(256)) * 64
    archive = bytearray(_zip({"c/0": data}, method))
    header = archive.find(b"PK\x03\x04")
    start = header + 30 + len("c/0")
    archive[start + 100] ^= 0xFF  # one byte of the member's data
    reader, _ = _zip_world(bytes(archive))
    for read in (
        lambda: reader.get_sync("k"),
        lambda: reader.get_many_sync(["k", "z/c/0"]),
        lambda: reader.get_sync("z/c/0"),
    ):
        with pytest.raises(kvmap.TargetError, match=r"CRC-32|does not inflate"):
            read()
    if method == zipfile.ZIP_STORED:
        # A range of a stored member cannot be checked: it reads what the archive holds (spec 11.3).
        assert bytes(reader.get_sync("k", (0, 50))) == data[:50]


def test_a_replaced_archive_is_never_read_through_its_old_directory() -> None:
    old = _zip({"c/0": b"A" * 1000, "c/1": b"B" * 10})
    new = _zip({"pad": b"P" * 300, "c/1": b"b" * 7, "c/0": b"a" * 900})
    reader, store = _zip_world(old)
    assert reader.get_sync("k") == b"A" * 1000
    assert reader.get_many_sync(["z/c/0", "z/c/1"]) == [b"A" * 1000, b"B" * 10]
    obstore.put(store, "a.zip", new)
    for read in (
        lambda: reader.get_sync("k"),
        lambda: asyncio.run(reader.get("z/c/1")),
        lambda: reader.get_many_sync(["z/c/0", "z/c/1"]),
        lambda: reader.get_sync("k", (0, 10)),
    ):
        with pytest.raises(kvmap.TargetError, match="replaced since its directory was read"):
            read()
        # The stale directory is forgotten: the next read sees the new archive whole.
        assert reader.get_sync("k") == b"a" * 900
        assert reader.get_many_sync(["z/c/0", "z/c/1"]) == [b"a" * 900, b"b" * 7]
        obstore.put(store, "a.zip", old)
        with contextlib.suppress(kvmap.TargetError):  # the first read after a change may fail
            reader.get_sync("k")
        assert reader.get_sync("k") == b"A" * 1000
        obstore.put(store, "a.zip", new)


# -- HTTP redirects are never followed --------------------------------------------------------------


@pytest.fixture(scope="module")
def two_origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultHTTPServer, FaultHTTPServer]]:
    home, away = tmp_path_factory.mktemp("home-origin"), tmp_path_factory.mktemp("other-origin")
    (away / "secret").write_bytes(b"OTHER-ORIGIN")
    with FaultHTTPServer(home) as server, FaultHTTPServer(away) as other:
        yield server, other


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_an_http_redirect_is_an_error_naming_both_urls(
    two_origins: tuple[FaultHTTPServer, FaultHTTPServer], status: int
) -> None:
    # Regression: a 302/307 to another host returned its bytes, and sent the caller's API key there.
    server, other = two_origins
    elsewhere = f"{other.url}secret"
    same = f"{server.url}data.bin"
    (server.root / "data.bin").write_bytes(b"home")
    (server.root / "m.json").write_text(
        json.dumps(
            [
                {"key": "away", "path": redirect_path(status, elsewhere)},
                {"key": "same", "path": redirect_path(status, same)},
                {"key": "window", "path": redirect_path(status, elsewhere), "offset": 1, "length": 3},
                {"prefix": "r/", "path": redirect_path(status, elsewhere) + "/"},
            ]
        )
    )
    stores = {server.url: {"client_options": {"default_headers": {"x-api-key": "SECRET"}}, "retry_config": NO_RETRIES}}
    reader = kvmap.Reader(f"{server.url}m.json", stores=stores)
    other.clear_requests()
    reads = (
        lambda k: reader.get_sync(k),
        lambda k: asyncio.run(reader.get(k)),
        lambda k: reader.size_sync(k),
        lambda k: reader.get_many_sync([k, k]),
        lambda k: reader.get_sync(k, (0, 2)),
    )
    for key, to in (("away", elsewhere), ("same", same), ("window", elsewhere)):
        for read in reads:
            with pytest.raises(kvmap.TargetError, match="redirect") as info:
                read(key)
            assert to in str(info.value)
            assert info.value.key == key
    assert other.requests == []  # nothing, and no API key, went to the other origin
    assert all(h.get("x-api-key") == "SECRET" for _, h in server.header_log)


# -- local files: the policy holds at the moment of I/O, for listings as for reads and writes --------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "data" / "sub").mkdir(parents=True)
    (home / "data" / "sub" / "ok").write_bytes(b"inside")
    outside.mkdir()
    (outside / "secret").write_bytes(b"SECRET")
    (outside / "deep").mkdir()
    (outside / "deep" / "x").write_bytes(b"SECRET")
    (home / "m.json").write_text(json.dumps([{"prefix": "", "path": "data/"}]))
    return tmp_path


def test_listing_does_not_follow_a_directory_link_out_of_the_origin(tree: Path) -> None:
    # Regression: list_prefix/list_dir listed the names behind a link leading outside.
    (tree / "home" / "data" / "out").symlink_to(tree / "outside")
    (tree / "home" / "data" / "in").symlink_to(tree / "home" / "data" / "sub")
    store = KVMapStore(tree / "home" / "m.json")
    reader = store.reader
    assert reader.list_prefix_sync("") == ["in/ok", "sub/ok"]
    assert "out" not in reader.list_dir_sync("")
    assert reader.list_prefix_sync("out/") == []
    assert reader.list_dir_sync("out/") == []
    assert asyncio.run(reader.list_prefix("out")) == []


def test_a_directory_swapped_for_a_link_after_a_read_cannot_lead_out(tree: Path) -> None:
    # Regression: the decision remembered for data/sub/ let the same reader read, and the same
    # store write, outside once data/sub was replaced by a link to the outside.
    store = KVMapStore(tree / "home" / "m.json")
    reader = store.reader
    assert reader.get_sync("sub/ok") == b"inside"
    store.set_sync("sub/new", cpu.Buffer.from_bytes(b"written"))
    shutil.rmtree(tree / "home" / "data" / "sub")
    (tree / "home" / "data" / "sub").symlink_to(tree / "outside")
    (tree / "outside" / "ok").write_bytes(b"SECRET-ok")
    for read in (
        lambda: reader.get_sync("sub/ok"),
        lambda: asyncio.run(reader.get("sub/ok")),
        lambda: reader.get_many_sync(["sub/ok"]),
        lambda: reader.size_sync("sub/ok"),
        lambda: reader.get_sync("sub/secret", (0, 3)),
    ):
        with pytest.raises(kvmap.PolicyError, match="outside"):
            read()
    for write in (
        lambda: store.set_sync("sub/new", cpu.Buffer.from_bytes(b"evil")),
        lambda: asyncio.run(store.set("sub/planted", cpu.Buffer.from_bytes(b"evil"))),
        lambda: store.delete_sync("sub/secret"),
    ):
        with pytest.raises(kvmap.PolicyError, match="outside"):
            write()
    assert sorted(p.name for p in (tree / "outside").iterdir()) == ["deep", "ok", "secret"]
    assert (tree / "outside" / "secret").read_bytes() == b"SECRET"


def test_list_dir_omits_directories_that_hold_no_keys(tree: Path) -> None:
    # Regression: an empty directory left after a delete was listed, and zarr warned about it.
    store = KVMapStore(tree / "home" / "m.json")
    store.set_sync("arr/c/0/0", cpu.Buffer.from_bytes(b"x"))
    assert "arr" in store.reader.list_dir_sync("")
    store.delete_sync("arr/c/0/0")
    assert (tree / "home" / "data" / "arr" / "c" / "0").is_dir()  # the directory stays on disk
    assert "arr" not in store.reader.list_dir_sync("")
    assert store.reader.list_dir_sync("arr/") == []


# -- a range of an existing empty object is empty, on every store -------------------------------------


def test_a_range_of_an_empty_object_is_empty(tmp_path: Path, s3_server: S3Server, http_server: RangeHTTPServer) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (http_server.root / f"empty-{tmp_path.name}").write_bytes(b"")
    url, memory = _memory()
    obstore.put(memory, "empty", b"")
    root, stores = _s3(s3_server)
    bucket = f"kv-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    s3_server.put(bucket, "empty", b"")
    stores[http_server.url] = {"retry_config": NO_RETRIES}
    for where in (tmp_path.as_uri() + "/", url, f"{root}{bucket}/", f"{http_server.url}"):
        name = f"empty-{tmp_path.name}" if where == http_server.url else "empty"
        m = kvmap.Manifest.from_json([{"prefix": "", "path": where}], url=f"{where}m.json")
        reader = kvmap.Reader(m, stores=stores)
        for byte_range in (None, (0, 5), (3, None), (None, 4), (0, 0), (None, 0)):
            assert reader.get_sync(name, byte_range) == b"", (where, byte_range)
            assert asyncio.run(reader.get(name, byte_range)) == b"", (where, byte_range)
        assert reader.size_sync(name) == 0


def test_a_pipeline_goes_on_after_inline_bytes() -> None:
    # Found in review of the stack-based walk: adapters after a manifest hop that ends on inline
    # bytes (an archive kept inline in a manifest) must still apply to those bytes.
    url, store = _memory()
    archive = base64.b64encode(_zip({"c/0": b"member"})).decode()
    _put_json(store, "inner.json", [{"key": "arch", "data": archive}])
    _put_json(store, "m.json", [{"prefix": "z/", "path": "inner.json|kvmap:arch|zip:"}])
    reader = kvmap.Reader(f"{url}m.json")
    assert reader.get_sync("z/c/0") == b"member"
    assert reader.get_many_sync(["z/c/0", "z/c/1"]) == [b"member", None]
    assert reader.list_prefix_sync("z/") == ["z/c/0"]
