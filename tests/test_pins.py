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


def test_columnar_form_refuses_pins_rather_than_drop_them() -> None:
    from kvmap.formats.kvmap_parquet import to_kvmap_parquet

    m = kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/x"}, {"key": "c", "path": "s3://b/x", "etag": "e"}])
    with pytest.raises(kvmap.ConvertError) as caught:
        to_kvmap_parquet(m)
    assert (caught.value.entry, caught.value.field) == (1, "etag")
