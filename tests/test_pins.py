"""Pinned versions (spec 3.4): an exact entry's ``etag``, ``version`` and ``sha256``, checked on every
read — on the loopback S3 server with bucket versioning, on local files and on ``memory://``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import S3Store

import kvmap
from kvmap.check import pin_manifest
from kvmap.entries import Pins
from kvmap.errors import ObjectChangedError
from tests.servers import S3Server

V1 = b"the first version of the object, 48 bytes long.."
V2 = b"a second version: other bytes, another length, and more of them"
VERSIONING = (
    b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Status>Enabled</Status></VersioningConfiguration>"
)
NO_RETRIES: Any = {"max_retries": 0}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Versioned:
    """A bucket with versioning enabled on the loopback S3 server, and kvmap's stores for it."""

    def __init__(self, server: S3Server) -> None:
        self.bucket = f"pins-{uuid.uuid4().hex[:12]}"
        server.create_bucket(self.bucket)
        # moto's S3 API: PUT /bucket?versioning (what boto3's put_bucket_versioning sends).
        server._request("PUT", f"/{self.bucket}?versioning", VERSIONING)
        self.store: S3Store = server.store(self.bucket)
        root, self.stores = server.kvmap_stores(retry_config=NO_RETRIES)
        self.root = f"{root}{self.bucket}/"

    def put(self, key: str, data: bytes) -> dict[str, Any]:
        result = obstore.put(self.store, key, data)
        assert result["version"] is not None  # versioning is on
        return dict(result)

    def reader(self, entries: list[dict[str, Any]]) -> kvmap.Reader:
        m = kvmap.Manifest.from_json(entries, url=f"{self.root}m.json")
        return kvmap.Reader(m, stores=self.stores)


@pytest.fixture
def bucket(s3_server: S3Server) -> Versioned:
    return Versioned(s3_server)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ({"key": "k", "path": "s3://b/x", "etag": 7}, "etag", "must be a string"),
        ({"key": "k", "path": "s3://b/x", "version": ""}, "version", "must not be empty"),
        ({"key": "k", "path": "s3://b/x", "sha256": "AB" * 32}, "sha256", "64 lower-case hexadecimal"),
        ({"key": "k", "path": "s3://b/x", "sha256": "ab" * 31}, "sha256", "64 lower-case hexadecimal"),
        ({"prefix": "k/", "path": "s3://b/x/", "etag": "e"}, "etag", "only on exact-key entries"),
        ({"min": "a", "max": "b", "path": "s3://b/x/", "sha256": "0" * 64}, "sha256", "only on exact-key"),
        ({"key": "k", "path": None, "version": "v"}, "version", "needs a path target"),
        ({"key": "k", "data": "", "etag": "e"}, "etag", "needs a path target"),
        ({"key": "k", "json": 1, "sha256": "0" * 64}, "sha256", "needs a path target"),
        ({"key": "k", "path": "s3://b/a.zip|zip:m", "etag": "e"}, "etag", "with adapters"),
    ],
)
def test_validation_names_entry_and_field(entry: dict[str, Any], field: str, reason: str) -> None:
    document = {"kvmap": 1, "entries": [{"key": "ok", "path": "s3://b/ok"}, entry]}
    for load in (
        lambda: kvmap.Manifest.from_json(document, url="s3://b/m.json"),
        lambda: kvmap.Manifest.loads(json.dumps(document), url="s3://b/m.json"),
    ):
        with pytest.raises(kvmap.ManifestError, match=reason) as caught:
            load()
        assert (caught.value.entry, caught.value.field, caught.value.manifest) == (1, field, "s3://b/m.json")


def test_pins_are_kept_and_written() -> None:
    pinned = {
        "key": "k",
        "path": "s3://b/x",
        "offset": 1,
        "length": 2,
        "etag": '"e"',
        "version": "v",
        "sha256": "0" * 64,
    }
    entries = [{"key": f"c/{i}", "path": "s3://b/y", "offset": i, "length": 1} for i in range(50)] + [pinned]
    m = kvmap.Manifest.loads(json.dumps(entries), url=None)
    assert m.entries[50].pins == Pins('"e"', "v", "0" * 64)
    assert m.entries[0].pins is None
    assert m.entries[50].to_json() == pinned
    again = kvmap.Manifest.loads(m.dumps(), url=None)
    assert again == m
    assert again.entries[50].pins == Pins('"e"', "v", "0" * 64)


# -- loopback S3 with bucket versioning ---------------------------------------------------------


def test_pinned_version_reads_that_version_after_an_overwrite(bucket: Versioned) -> None:
    first = bucket.put("data.bin", V1)
    bucket.put("data.bin", V2)  # overwritten: the latest version is another object
    r = bucket.reader(
        [
            {"key": "whole", "path": "data.bin", "version": first["version"]},
            {"key": "window", "path": "data.bin", "offset": 4, "length": 5, "version": first["version"]},
            {"key": "latest", "path": "data.bin"},
        ]
    )
    assert bytes(r.get_sync("whole")) == V1
    assert bytes(r.get_sync("window")) == V1[4:9]
    assert bytes(r.get_sync("window", (1, 3))) == V1[5:7]
    assert r.size_sync("whole") == len(V1)
    assert r.size_sync("window") == 5
    assert bytes(asyncio.run(r.get("whole", (None, 4)))) == V1[-4:]
    assert [bytes(v) for v in r.get_many_sync(["whole", "window", "latest"])] == [V1, V1[4:9], V2]
    assert bytes(r.get_sync("latest")) == V2


def test_etag_mismatch_refuses_never_other_bytes(bucket: Versioned) -> None:
    first = bucket.put("data.bin", V1)
    r = bucket.reader([{"key": "k", "path": "data.bin", "etag": first["e_tag"]}])
    assert bytes(r.get_sync("k")) == V1
    bucket.put("data.bin", V2)
    r = bucket.reader([{"key": "k", "path": "data.bin", "etag": first["e_tag"]}])
    for read in (
        lambda: r.get_sync("k"),
        lambda: r.get_sync("k", (0, 4)),
        lambda: r.size_sync("k"),
        lambda: r.get_many_sync(["k"]),
        lambda: asyncio.run(r.get("k")),
    ):
        with pytest.raises(ObjectChangedError, match="changed since the manifest was made") as caught:
            read()
        assert isinstance(caught.value, kvmap.TargetError)
        assert (caught.value.key, caught.value.entry) == ("k", 0)


def test_etag_without_quotes_matches(bucket: Versioned) -> None:
    first = bucket.put("data.bin", V1)
    r = bucket.reader([{"key": "k", "path": "data.bin", "etag": first["e_tag"].strip('"')}])
    assert bytes(r.get_sync("k")) == V1


def test_version_and_etag_of_different_objects_refuse(bucket: Versioned) -> None:
    first = bucket.put("data.bin", V1)
    second = bucket.put("data.bin", V2)
    r = bucket.reader([{"key": "k", "path": "data.bin", "version": first["version"], "etag": second["e_tag"]}])
    with pytest.raises(ObjectChangedError, match="ETag"):
        r.get_sync("k")


def test_missing_version_is_an_error_not_absence(bucket: Versioned) -> None:
    bucket.put("data.bin", V1)
    r = bucket.reader(
        [
            {"key": "k", "path": "data.bin", "version": "no-such-version"},
            {"key": "w", "path": "data.bin", "offset": 0, "length": 4, "version": "no-such-version"},
        ]
    )
    for read in (lambda: r.get_sync("k"), lambda: r.get_sync("w"), lambda: r.size_sync("k")):
        with pytest.raises(ObjectChangedError, match="does not exist"):
            read()
    with pytest.raises(ObjectChangedError, match="does not exist"):
        r.get_many_sync(["k", "w"])


def test_sha256_mismatch_refuses(bucket: Versioned) -> None:
    bucket.put("data.bin", V2)
    r = bucket.reader(
        [
            {"key": "good", "path": "data.bin", "offset": 2, "length": 6, "sha256": sha(V2[2:8])},
            {"key": "bad", "path": "data.bin", "offset": 2, "length": 6, "sha256": sha(V1[2:8])},
        ]
    )
    assert bytes(r.get_sync("good", (1, 3))) == V2[3:5]
    with pytest.raises(ObjectChangedError, match="SHA-256"):
        r.get_sync("bad")
    with pytest.raises(ObjectChangedError, match="SHA-256"):
        r.get_sync("bad", (0, 1))  # a part of the window is checked by the whole window's hash


# -- local files and memory -------------------------------------------------------------------------


def test_local_sha256_pin(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    entries = [
        {"key": "k", "path": "a.bin", "sha256": sha(V1)},
        {"key": "w", "path": "a.bin", "offset": 3, "length": 4, "sha256": sha(V1[3:7])},
    ]
    kvmap.Manifest.from_json(entries, url=tmp_path / "m.json").save(tmp_path / "m.json")
    r = kvmap.Reader(tmp_path / "m.json")
    assert bytes(r.get_sync("k")) == V1
    assert bytes(r.get_sync("w", (1, None))) == V1[4:7]
    (tmp_path / "a.bin").write_bytes(V1[:3] + b"XXXX" + V1[7:])  # changed in place, same size
    r = kvmap.Reader(tmp_path / "m.json")
    with pytest.raises(ObjectChangedError, match="SHA-256"):
        r.get_sync("k")
    with pytest.raises(ObjectChangedError, match="SHA-256"):
        asyncio.run(r.get("w"))


def test_local_files_have_no_versions(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    kvmap.Manifest.from_json([{"key": "k", "path": "a.bin", "version": "1"}], url=tmp_path / "m.json").save(
        tmp_path / "m.json"
    )
    with pytest.raises(ObjectChangedError, match="reports no object versions"):
        kvmap.Reader(tmp_path / "m.json").get_sync("k")


def test_memory_store_ignores_versions_so_a_version_pin_refuses() -> None:
    name = f"pins-{uuid.uuid4().hex[:8]}"
    m = kvmap.Manifest.from_json(
        [
            {"key": "v", "path": f"memory://{name}/x", "version": "1"},
            {"key": "s", "path": f"memory://{name}/x", "sha256": sha(V1)},
            {"key": "e", "path": f"memory://{name}/x", "etag": "not-it"},
        ],
        url=f"memory://{name}/m.json",
    )
    r = kvmap.Reader(m)
    store, path = r.roots.open(f"memory://{name}/x")
    obstore.put(store, path, V1)
    with pytest.raises(ObjectChangedError, match="no object versions"):
        r.get_sync("v")
    with pytest.raises(ObjectChangedError, match="ETag"):
        r.get_sync("e")
    assert bytes(r.get_sync("s")) == V1


# -- the fast path ----------------------------------------------------------------------------------


def test_the_fast_path_takes_pinned_entries_to_the_walk(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    entries = [{"key": "plain", "path": "a.bin"}, {"key": "k", "path": "a.bin", "sha256": sha(V2)}]
    m = kvmap.Manifest.from_json(entries, url=(tmp_path / "m.json").as_uri())
    r = kvmap.Reader(m)
    assert bytes(r.get_sync("plain")) == V1  # loads the top map
    assert r.chain.plan("plain", None) is not None
    assert r.chain.plan("k", None) is None
    assert r.chain.place("k") is None
    with pytest.raises(ObjectChangedError):
        r.get_sync("k")
    with pytest.raises(ObjectChangedError):
        asyncio.run(r.get("k"))


def test_a_manifest_without_pins_plans_as_before(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    r = kvmap.Reader(kvmap.Manifest.from_json([{"key": "k", "path": "a.bin"}], url=(tmp_path / "m.json").as_uri()))
    r.get_sync("k")
    assert r.chain._top_pins is None
    assert r.chain.plan("k", None) is not None


def test_pins_of_a_nested_manifest_are_checked(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    kvmap.Manifest.from_json([{"key": "k", "path": "a.bin", "sha256": sha(V2)}], url=tmp_path / "inner.json").save(
        tmp_path / "inner.json"
    )
    kvmap.Manifest.from_json([{"prefix": "", "path": "inner.json|kvmap:"}], url=tmp_path / "outer.json").save(
        tmp_path / "outer.json"
    )
    with pytest.raises(ObjectChangedError):
        kvmap.Reader(tmp_path / "outer.json").get_sync("k")


# -- kvmap check --pin ------------------------------------------------------------------------------


def test_pin_manifest_fills_in_pins(bucket: Versioned, tmp_path: Path) -> None:
    first = bucket.put("data.bin", V1)
    (tmp_path / "a.bin").write_bytes(V2)
    entries = [
        {"key": "s3", "path": f"{bucket.root}data.bin", "offset": 1, "length": 3},
        {"key": "local", "path": (tmp_path / "a.bin").as_uri()},
        {"prefix": "p/", "path": f"{bucket.root}p/"},
        {"key": "inline", "data": "AA=="},
    ]
    m = kvmap.Manifest.from_json(entries, url=(tmp_path / "m.json").as_uri())
    pinned = pin_manifest(m, stores=bucket.stores, allow_all=True)
    got = pinned.to_json()["entries"]
    assert got[0] == {**entries[0], "etag": first["e_tag"], "version": first["version"], "sha256": sha(V1[1:4])}
    assert got[1] == {**entries[1], "sha256": sha(V2)}  # a local file: no etag (a copy changes it)
    assert got[2:] == entries[2:]
    bucket.put("data.bin", V2)
    r = kvmap.Reader(pinned, stores=bucket.stores, allow_all=True)
    assert bytes(r.get_sync("s3")) == V1[1:4]  # the pinned version, after the overwrite


def test_cli_check_pin(tmp_path: Path) -> None:
    from kvmap.cli import main

    (tmp_path / "a.bin").write_bytes(V1)
    kvmap.Manifest.from_json(
        [{"key": "k", "path": "a.bin", "offset": 1, "length": 4}, {"prefix": "p/", "path": "d/"}],
        url=tmp_path / "m.json",
    ).save(tmp_path / "m.json")
    assert main(["check", "--pin", str(tmp_path / "m.json"), "-o", str(tmp_path / "pinned.json")]) == 0
    pinned = kvmap.Manifest.load(tmp_path / "pinned.json")
    assert pinned.entries[0].pins == Pins(sha256=sha(V1[1:5]))
    assert pinned.entries[1].pins is None
    assert main(["check", "--pin", str(tmp_path / "m.json")]) == 0  # in place
    assert kvmap.Manifest.load(tmp_path / "m.json").entries[0].pins == Pins(sha256=sha(V1[1:5]))


# -- the columnar form (kvmap-parquet, spec 13) --------------------------------------------------------


def test_the_columnar_form_keeps_pins() -> None:
    from kvmap.fetch import drive
    from kvmap.formats.kvmap_parquet import load_kvmap_parquet, to_kvmap_parquet

    m = kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/x"}, {"key": "c", "path": "s3://b/x", "etag": "e"}])
    data = to_kvmap_parquet(m)
    back = drive(load_kvmap_parquet(m.url), lambda _name: data)
    assert back == m
    assert [e.pins for e in back.entries] == [None, Pins("e")]


def _saved(entries: list[dict[str, Any]], url: str, form: str, put: Any) -> str:
    """The manifest of ``entries`` at ``url`` + ``m.json`` or ``m.parquet`` (``form``), written
    with ``put(name, bytes)``; the manifest's URL."""
    from kvmap.formats.kvmap_parquet import to_kvmap_parquet

    name = "m.json" if form == "json" else "m.parquet"
    m = kvmap.Manifest.from_json(entries, url=url + name)
    put(name, m.dumps() if form == "json" else to_kvmap_parquet(m, block_rows=2))
    return url + name


FORMS = pytest.mark.parametrize("form", ["json", "parquet"])


@FORMS
def test_a_changed_file_is_refused_on_every_read_path(tmp_path: Path, form: str) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    entries = [
        {"key": "plain", "path": "a.bin"},
        {"key": "k", "path": "a.bin", "sha256": sha(V1)},
        {"key": "w", "path": "a.bin", "offset": 3, "length": 4, "sha256": sha(V1[3:7])},
        {"prefix": "p/", "path": "d/"},
    ]
    target = _saved(entries, tmp_path.as_uri() + "/", form, lambda name, data: (tmp_path / name).write_bytes(data))
    r = kvmap.Reader(target)
    assert bytes(r.get_sync("k")) == V1  # the map knows the key's answer now: the next read checks too
    assert bytes(r.get_sync("w", (1, 3))) == V1[4:6]
    assert [bytes(v) for v in r.get_many_sync(["plain", "k", "w"])] == [V1, V1, V1[3:7]]
    assert bytes(asyncio.run(r.get("k"))) == V1
    assert (r.chain.plan("k", None), r.chain.place("k")) == (None, None)  # pinned: the walk checks
    changed = V1[:3] + b"XXXX" + V1[7:]  # in place, the same size
    (tmp_path / "a.bin").write_bytes(changed)
    for reader in (r, kvmap.Reader(target)):  # the one that read them before, and a new one
        _refused_on_every_path(reader)
        assert bytes(reader.get_sync("plain")) == changed


def test_keys_of_a_pinned_columnar_map_known_to_pin_nothing_take_the_one_step_read(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    entries = [{"key": "plain", "path": "a.bin"}, {"key": "k", "path": "a.bin", "sha256": sha(V1)}]
    target = _saved(entries, tmp_path.as_uri() + "/", "parquet", lambda name, data: (tmp_path / name).write_bytes(data))
    r = kvmap.Reader(target)
    assert bytes(r.get_sync("plain")) == V1  # asks the map for the key's pins: none
    assert bytes(r.get_sync("k")) == V1
    assert r.chain.plan("plain", None) is not None  # known to pin nothing: one step
    assert (r.chain.plan("k", None), r.chain.place("k")) == (None, None)  # pinned: always the walk
    assert r.chain.plan("unasked", None) is None  # not known yet: the walk asks


def _refused_on_every_path(r: kvmap.Reader) -> None:
    """Every read of ``k`` and ``w`` (pinned by sha256) raises ObjectChangedError naming the key."""
    for read in (
        lambda: r.get_sync("k"),
        lambda: r.get_sync("w", (0, 1)),
        lambda: r.get_many_sync(["plain", "k"]),
        lambda: asyncio.run(r.get("w")),
        lambda: asyncio.run(r.get_many(["w"])),
    ):
        with pytest.raises(ObjectChangedError, match="SHA-256") as caught:
            read()
        assert caught.value.key in ("k", "w")


@FORMS
def test_a_changed_etag_is_refused_on_every_read_path(form: str) -> None:
    name = f"pins-{uuid.uuid4().hex[:8]}"
    store = kvmap.memory_store(name)
    etag = obstore.put(store, "x", V1)["e_tag"]
    entries = [
        {"key": "e", "path": "x", "etag": etag},
        {"key": "w", "path": "x", "offset": 1, "length": 3, "etag": etag.strip('"')},
        {"key": "plain", "path": "x"},
    ]
    r = kvmap.Reader(_saved(entries, f"memory://{name}/", form, lambda key, data: obstore.put(store, key, data)))
    assert bytes(r.get_sync("e")) == V1
    assert (r.size_sync("e"), r.size_sync("w")) == (len(V1), 3)
    assert [bytes(v) for v in r.get_many_sync(["w", "plain"])] == [V1[1:4], V1]
    obstore.put(store, "x", V2)
    for read in (
        lambda: r.get_sync("e"),
        lambda: r.get_sync("w", (0, 1)),
        lambda: r.size_sync("e"),
        lambda: r.size_sync("w"),
        lambda: r.get_many_sync(["plain", "w"]),
        lambda: asyncio.run(r.get("e")),
        lambda: asyncio.run(r.size("w")),
    ):
        with pytest.raises(ObjectChangedError, match="ETag") as caught:
            read()
        assert caught.value.entry in (0, 1)
    assert bytes(r.get_sync("plain")) == V2


@FORMS
def test_a_pinned_version_on_s3_is_read_after_an_overwrite(bucket: Versioned, form: str) -> None:
    first = bucket.put("data.bin", V1)
    bucket.put("data.bin", V2)
    entries = [
        {"key": "whole", "path": "data.bin", "version": first["version"]},
        {"key": "window", "path": "data.bin", "offset": 4, "length": 5, "version": first["version"]},
        {"key": "latest", "path": "data.bin"},
        {"key": "gone", "path": "data.bin", "version": "no-such-version"},
    ]
    target = _saved(entries, bucket.root, form, lambda key, data: obstore.put(bucket.store, key, data))
    r = kvmap.Reader(target, stores=bucket.stores)
    assert bytes(r.get_sync("whole")) == V1
    assert bytes(r.get_sync("window", (1, 3))) == V1[5:7]
    assert (r.size_sync("whole"), r.size_sync("window")) == (len(V1), 5)
    assert [bytes(v) for v in r.get_many_sync(["whole", "window", "latest"])] == [V1, V1[4:9], V2]
    for read in (lambda: r.get_sync("gone"), lambda: r.size_sync("gone"), lambda: r.get_many_sync(["latest", "gone"])):
        with pytest.raises(ObjectChangedError, match="does not exist"):
            read()


def test_pins_of_a_nested_columnar_manifest_are_checked(tmp_path: Path) -> None:
    from kvmap.formats.kvmap_parquet import to_kvmap_parquet

    (tmp_path / "a.bin").write_bytes(V1)
    inner = kvmap.Manifest.from_json(
        [{"key": "k", "path": "a.bin", "sha256": sha(V2)}, {"key": "ok", "path": "a.bin", "sha256": sha(V1)}],
        url=tmp_path / "inner.parquet",
    )
    (tmp_path / "inner.parquet").write_bytes(to_kvmap_parquet(inner))
    kvmap.Manifest.from_json([{"prefix": "", "path": "inner.parquet|kvmap:"}], url=tmp_path / "outer.json").save(
        tmp_path / "outer.json"
    )
    r = kvmap.Reader(tmp_path / "outer.json")
    assert bytes(r.get_sync("ok")) == V1
    with pytest.raises(ObjectChangedError):
        r.get_sync("k")
    with pytest.raises(ObjectChangedError):
        r.get_many_sync(["ok", "k"])


def test_a_columnar_manifest_without_pins_plans_as_before(tmp_path: Path) -> None:
    from kvmap.formats.kvmap_parquet import to_kvmap_parquet

    (tmp_path / "a.bin").write_bytes(V1)
    m = kvmap.Manifest.from_json([{"key": "k", "path": "a.bin"}], url=tmp_path / "m.parquet")
    (tmp_path / "m.parquet").write_bytes(to_kvmap_parquet(m))
    r = kvmap.Reader(tmp_path / "m.parquet")
    assert bytes(r.get_sync("k")) == V1
    assert r.chain._top_pins is None
    assert r.chain.plan("k", None) is not None


# -- Icechunk and conversion reports ---------------------------------------------------------------


def _local_etag(path: Path) -> str:
    """The ETag of a local file as obstore reports it (and kvmap's reads check it)."""
    from obstore.store import LocalStore

    etag: str = obstore.head(LocalStore(str(path.parent)), path.name)["e_tag"]
    return etag


def _zarr_array(key: str, n: int) -> dict[str, Any]:
    """The ``zarr.json`` entry of a 1-d uint8 array of ``n`` chunks of one byte."""
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [n],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0,
        "codecs": [{"name": "bytes"}],
    }
    return {"key": f"{key}/zarr.json", "json": meta}


def test_a_pinned_icechunk_reference_is_checked_on_read(tmp_path: Path) -> None:
    pytest.importorskip("icechunk")
    (tmp_path / "a.bin").write_bytes(V1)
    entries = [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}},
        _zarr_array("x", 2),
        {"key": "x/c/0", "path": "a.bin", "offset": 3, "length": 1, "etag": _local_etag(tmp_path / "a.bin")},
        {"key": "x/c/1", "path": "a.bin", "offset": 4, "length": 1},
    ]
    kvmap.Manifest.from_json(entries, url=tmp_path / "m.json").save(tmp_path / "m.json")
    kvmap.convert(tmp_path / "m.json", tmp_path / "repo.icechunk")
    kvmap.convert(tmp_path / "repo.icechunk", tmp_path / "back.json")
    r = kvmap.Reader(tmp_path / "back.json")
    assert bytes(r.get_sync("x/c/0")) == V1[3:4]
    (tmp_path / "a.bin").write_bytes(V2)  # another size: another ETag, whatever the clock says
    r = kvmap.Reader(tmp_path / "back.json")
    with pytest.raises(ObjectChangedError, match="ETag") as caught:
        r.get_sync("x/c/0")
    assert (caught.value.key, caught.value.entry) == ("x/c/0", 2)
    assert bytes(r.get_sync("x/c/1")) == V2[4:5]  # not pinned: not checked


def _pinned_entries(tmp_path: Path) -> list[dict[str, Any]]:
    """Four chunks of a.bin: c/0 pins all three, c/1 sha256 only, c/2 etag only; a later c/2 wins
    over the first (so its pin is written by no format of one reference per key), c/3 none."""
    (tmp_path / "a.bin").write_bytes(V1)
    etag = _local_etag(tmp_path / "a.bin")
    return [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}},
        _zarr_array("x", 4),
        {
            "key": "x/c/0",
            "path": "a.bin",
            "offset": 0,
            "length": 1,
            "etag": etag,
            "version": "1",
            "sha256": sha(V1[:1]),
        },
        {"key": "x/c/1", "path": "a.bin", "offset": 1, "length": 1, "sha256": sha(V1[1:2])},
        {"key": "x/c/2", "path": "a.bin", "offset": 2, "length": 1, "etag": etag},
        {"key": "x/c/2", "path": "a.bin", "offset": 5, "length": 1},
        {"key": "x/c/3", "path": "a.bin", "offset": 3, "length": 1},
    ]


@pytest.mark.parametrize(
    ("target_format", "dropped"),
    [
        ("kvmap", {}),
        ("kerchunk", {"etag": 1, "version": 1, "sha256": 2}),  # the shadowed etag pin is not written
        ("chunk-manifest", {"etag": 1, "version": 1, "sha256": 2}),
        ("icechunk", {"version": 1, "sha256": 2}),
    ],
)
def test_convert_counts_the_pins_the_output_cannot_hold(
    tmp_path: Path, target_format: str, dropped: dict[str, int]
) -> None:
    if target_format == "icechunk":
        pytest.importorskip("icechunk")
    entries = _pinned_entries(tmp_path)
    if target_format == "chunk-manifest":
        entries = entries[2:]  # it holds no inline values
    kvmap.Manifest.from_json(entries, url=tmp_path / "m.json").save(tmp_path / "m.json")
    done = kvmap.convert(tmp_path / "m.json", tmp_path / "out", target_format=target_format)
    assert done.dropped_pins == dropped
    assert kvmap.convert(tmp_path / "m.json", tmp_path / "copy.json").dropped_pins == {}


def test_flattening_keeps_the_pins_of_the_entry_a_key_ends_at(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(V1)
    etag = _local_etag(tmp_path / "a.bin")
    inner = [{"key": "j", "path": "a.bin", "offset": 10, "length": 20, "etag": etag, "sha256": sha(V1[10:30])}]
    kvmap.Manifest.from_json(inner, url=tmp_path / "inner.json").save(tmp_path / "inner.json")
    outer = [
        {"key": "whole", "path": "inner.json|kvmap:j"},
        {"key": "part", "path": "inner.json|kvmap:j", "offset": 2, "length": 3},  # a part of j's window
    ]
    kvmap.Manifest.from_json(outer, url=tmp_path / "outer.json").save(tmp_path / "outer.json")
    done = kvmap.convert(tmp_path / "outer.json", tmp_path / "flat.json", materialize=True)
    assert done.dropped_pins == {"sha256": 1}  # j's sha256 is of its window, not of part of it
    flat = {e.key: e for e in kvmap.Manifest.load(tmp_path / "flat.json").entries}
    assert flat["whole"].pins == Pins(etag=etag, sha256=sha(V1[10:30]))
    assert flat["part"].pins == Pins(etag=etag)
    r = kvmap.Reader(tmp_path / "flat.json")
    assert [bytes(r.get_sync(k)) for k in ("whole", "part")] == [V1[10:30], V1[12:15]]


def test_the_cli_notes_the_pins_it_drops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kvmap.cli import main

    kvmap.Manifest.from_json(_pinned_entries(tmp_path), url=tmp_path / "m.json").save(tmp_path / "m.json")
    assert main(["convert", str(tmp_path / "m.json"), str(tmp_path / "k.json"), "--to", "kerchunk", "--json"]) == 0
    out, err = capsys.readouterr()
    note = "kerchunk cannot hold pins: dropped 1 etag, 1 version, 2 sha256 pins"
    assert err == f"kvmap: {note}\n"
    record = json.loads(out)
    assert (record["dropped_pins"], record["note"]) == ({"etag": 1, "version": 1, "sha256": 2}, note)
    assert main(["convert", str(tmp_path / "m.json"), str(tmp_path / "copy.json")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{tmp_path / 'copy.json'}: 7 entries, kvmap -> kvmap")
