"""kvmap.formats.icechunk: kvmap manifests into Icechunk repositories and back.

Real Icechunk (1.1 on Python 3.11, 2.x on 3.12+), real netCDF4 files made by xarray, byte windows from
kerchunk's HDF5 scanner and from the VirtualiZarr bridge; what Icechunk serves is compared with xarray
reading the files themselves, and (Icechunk 2.0.5+) the manifest read back with the one written.
"""

from __future__ import annotations

import base64
import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.core.sync import sync

import kvmap
from kvmap.errors import ConvertError, ManifestError, MissingDependencyError
from kvmap.manifest import Manifest
from tests.servers import S3Server

ic = pytest.importorskip("icechunk")

from kvmap.formats.icechunk import (  # noqa: E402  (after the skip)
    from_icechunk,
    from_icechunk_repo,
    read_icechunk_repo,
    to_icechunk,
    to_icechunk_repo,
    virtual_chunk_prefixes,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3 specification"),
]

#: Icechunk 2.0.5+ says where each virtual chunk is; 1.x cannot.
READS_REFS = hasattr(ic.IcechunkStore, "array_chunk_iterator")
needs_refs = pytest.mark.skipif(not READS_REFS, reason="reading virtual references needs Icechunk 2.0.5+")


def _authorized(prefixes: list[str]) -> Any:
    """What readers pass as ``authorize_virtual_chunk_access`` for local containers (Icechunk 2.x
    wants an explicit sentinel, 1.x ``None``)."""
    return {p: getattr(ic.credentials, "LocalFileSystemAccess", None) for p in prefixes}


def _open(location: Path, prefixes: list[str], branch: str = "main") -> Any:
    storage = ic.local_filesystem_storage(str(location))
    repo = ic.Repository.open(storage, authorize_virtual_chunk_access=_authorized(prefixes))
    return repo.readonly_session(branch).store


def _original(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def _netcdf(path: Path) -> Path:
    ds = xr.Dataset(
        {
            "temp": (("time", "lat", "lon"), np.arange(4 * 6 * 8, dtype="f4").reshape(4, 6, 8), {"units": "K"}),
            "count": (("lat", "lon"), np.arange(48, dtype="i4").reshape(6, 8)),
        },
        coords={"time": np.arange(4), "lat": np.linspace(-50, 50, 6), "lon": np.linspace(0, 350, 8)},
        attrs={"title": "icechunk test"},
    )
    encoding = {"temp": {"chunksizes": (2, 3, 4), "zlib": True, "shuffle": True}, "count": {"chunksizes": (3, 4)}}
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return path


GROUP = {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {}}}


def _array(name: str, shape: list[int], chunks: list[int], dtype: str = "int32", **extra: Any) -> dict[str, Any]:
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "dimension_names": [f"d{i}" for i in range(len(shape))],
        **extra,
    }
    return {"key": f"{name}/zarr.json", "json": meta}


# -- round trips ---------------------------------------------------------------------------------------


def test_a_virtualizarr_manifest_round_trips(tmp_path: Path) -> None:
    vz = pytest.importorskip("virtualizarr")
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import LocalStore
    from virtualizarr.parsers import HDFParser

    from kvmap.formats.virtualizarr import from_virtualizarr

    (tmp_path / "data").mkdir()
    nc = _netcdf(tmp_path / "data" / "a.nc")
    vds = vz.open_virtual_dataset(
        f"file://{nc}", parser=HDFParser(), registry=ObjectStoreRegistry({"file://": LocalStore()})
    )
    manifest = from_virtualizarr(vds, url=(tmp_path / "m.json").as_uri())
    prefixes = virtual_chunk_prefixes(manifest)
    assert prefixes == [(tmp_path / "data").as_uri() + "/"]
    snapshot = to_icechunk_repo(manifest, tmp_path / "repo")
    assert isinstance(snapshot, str)
    store = _open(tmp_path / "repo", prefixes)
    with xr.open_zarr(store, consolidated=False) as ds:
        xr.testing.assert_identical(ds.load(), _original(nc))
    # Named by its path: its references are read from its files on Icechunk 1.x too.
    back = from_icechunk_repo(tmp_path / "repo", url=(tmp_path / "back.json").as_uri())
    windows = {e.key: (e.path, e.offset, e.length) for e in manifest.entries if e.target == "path"}
    assert {e.key: (e.path, e.offset, e.length) for e in back.entries if e.target == "path"} == windows
    inline = {e.key: e.data for e in manifest.entries if e.target == "data"}
    assert {e.key: e.data for e in back.entries if e.target == "data"} == inline
    back.save(tmp_path / "back.json")
    with xr.open_zarr(kvmap.KVMapStore(tmp_path / "back.json"), consolidated=False) as ds:
        xr.testing.assert_identical(ds.load(), _original(nc))


def test_kerchunk_windows_imported_by_hand(tmp_path: Path) -> None:
    """Windows found by another scanner (kerchunk), metadata written by hand: independent of the
    VirtualiZarr bridge."""
    kerchunk_hdf = pytest.importorskip("kerchunk.hdf")
    nc = _netcdf(tmp_path / "a.nc")
    refs = kerchunk_hdf.SingleHdf5ToZarr(str(nc), inline_threshold=0).translate()["refs"]
    entries: list[dict[str, Any]] = [GROUP, _array("count", [6, 8], [3, 4], dimension_names=["lat", "lon"])]
    for key, ref in refs.items():
        if key.startswith("count/") and not key.rpartition("/")[2].startswith("."):
            index = key.partition("/")[2].split(".")
            entries.append({"key": "count/c/" + "/".join(index), "path": ref[0], "offset": ref[1], "length": ref[2]})
    assert len(entries) == 2 + 4
    manifest = Manifest.from_json(entries, name="kerchunk")
    assert virtual_chunk_prefixes(manifest) == [tmp_path.as_uri() + "/"]
    to_icechunk_repo(manifest, tmp_path / "repo")
    store = _open(tmp_path / "repo", virtual_chunk_prefixes(manifest))
    np.testing.assert_array_equal(zarr.open_array(store, path="count", mode="r")[:], _original(nc)["count"].values)
    back = from_icechunk_repo(tmp_path / "repo")
    got = sorted((e.key, e.path, e.offset, e.length) for e in back.entries if e.target == "path")
    assert got == sorted((e["key"], nc.as_uri(), e["offset"], e["length"]) for e in entries[2:])


def test_native_and_inline_chunks_read_back_as_data(tmp_path: Path) -> None:
    """No virtual chunks: this works on Icechunk 1.x too (chunk_coordinates, then the bytes)."""
    small = np.arange(4, dtype="<i4").tobytes()  # Icechunk keeps it inline
    large = np.arange(4096, dtype="<i4").tobytes()  # a native chunk object
    entries = [
        GROUP,
        {"key": "g/zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {"a": 1}}},
        _array("g/small", [8], [4]),
        {"key": "g/small/c/1", "data": _b64(small)},
        _array("big", [4096], [4096]),
        {"key": "big/c/0", "data": _b64(large)},
        _array("scalar", [], []),
        {"key": "scalar/c", "data": _b64(b"\x07\0\0\0")},
    ]
    manifest = Manifest.from_json(entries)
    assert virtual_chunk_prefixes(manifest) == []
    to_icechunk_repo(manifest, tmp_path / "repo")
    back = from_icechunk_repo(tmp_path / "repo")
    got = {e.key: e.data for e in back.entries if e.target == "data"}
    assert got == {"g/small/c/1": small, "big/c/0": large, "scalar/c": b"\x07\0\0\0"}
    assert [e.key for e in back.entries if e.key.endswith("zarr.json")] == [
        "zarr.json", "big/zarr.json", "g/zarr.json", "g/small/zarr.json", "scalar/zarr.json",
    ]  # fmt: skip
    back.save(tmp_path / "back.json")
    group = zarr.open_group(kvmap.KVMapStore(tmp_path / "back.json"), mode="r")
    assert group["g"].attrs["a"] == 1
    np.testing.assert_array_equal(group["g/small"][:], [0, 0, 0, 0, 0, 1, 2, 3])
    assert group["scalar"][()] == 7


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- writing: windows, lengths, whiteouts, batches -----------------------------------------------------


def _chunk_files(directory: Path, n: int) -> list[Path]:
    """``n`` files, each one whole chunk of 4 int32 (chunk i holds 4i..4i+3)."""
    directory.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / f"chunk {i}%.bin"  # a space and a % in each name
        path.write_bytes(np.arange(4 * i, 4 * i + 4, dtype="<i4").tobytes())
        paths.append(path)
    return paths


def test_whole_objects_need_their_lengths(tmp_path: Path) -> None:
    files = _chunk_files(tmp_path / "chunks", 3)
    entries = [GROUP, _array("x", [12], [4])] + [
        {"key": f"x/c/{i}", "path": f"chunks/{p.name.replace(' ', '%20').replace('%.', '%25.')}"}
        for i, p in enumerate(files)
    ]
    manifest = Manifest.from_json(entries, url=(tmp_path / "m.json").as_uri(), name="m.json")
    with pytest.raises(ConvertError, match="`lengths` has no length for 'x/c/0'") as caught:
        to_icechunk_repo(manifest, tmp_path / "repo")
    assert (caught.value.manifest, caught.value.entry, caught.value.field) == ("m.json", 2, "length")
    assert not (tmp_path / "repo").exists()  # checked before the repository is made
    to_icechunk_repo(manifest, tmp_path / "repo", lengths={f"x/c/{i}": p.stat().st_size for i, p in enumerate(files)})
    store = _open(tmp_path / "repo", virtual_chunk_prefixes(manifest))
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], np.arange(12))
    # kvmap reads the same bytes from the same URLs.
    manifest.save(tmp_path / "m.json")
    np.testing.assert_array_equal(zarr.open_array(kvmap.KVMapStore(tmp_path / "m.json"), path="x")[:], np.arange(12))


def test_offsets_without_a_length_take_the_rest_from_lengths(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"HEADER" + np.arange(4, dtype="<i4").tobytes())
    manifest = Manifest.from_json(
        [GROUP, _array("x", [4], [4]), {"key": "x/c/0", "path": (tmp_path / "f.bin").as_uri(), "offset": 6}]
    )
    with pytest.raises(ConvertError, match="from byte 6 to its end"):
        to_icechunk_repo(manifest, tmp_path / "repo")
    to_icechunk_repo(manifest, tmp_path / "repo", lengths={"x/c/0": 16})
    store = _open(tmp_path / "repo", virtual_chunk_prefixes(manifest))
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], np.arange(4))


def test_later_entries_win_and_whiteouts_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(np.arange(12, dtype="<i4").tobytes())
    url = (tmp_path / "f.bin").as_uri()
    manifest = Manifest.from_json(
        [
            GROUP,
            _array("x", [12], [4]),
            {"key": "x/c/0", "path": url, "offset": 0, "length": 16},
            {"key": "x/c/1", "path": url, "offset": 16, "length": 16},
            {"key": "x/c/2", "path": url, "offset": 32, "length": 16},
            {"key": "x/c/0", "path": url, "offset": 32, "length": 16},  # wins over entry 2
            {"key": "x/c/1", "path": None},  # a whiteout
            {"key": "gone/zarr.json", "json": {"zarr_format": 3, "node_type": "group"}},
            {"key": "gone/zarr.json", "path": None},
        ]
    )
    to_icechunk_repo(manifest, tmp_path / "repo")
    store = _open(tmp_path / "repo", virtual_chunk_prefixes(manifest))
    np.testing.assert_array_equal(
        zarr.open_array(store, path="x", mode="r")[:], [8, 9, 10, 11, 0, 0, 0, 0, 8, 9, 10, 11]
    )
    assert sorted(zarr.open_group(store, mode="r").keys()) == ["x"]
    assert sorted(e.key for e in from_icechunk_repo(tmp_path / "repo").entries) == [
        "x/c/0", "x/c/2", "x/zarr.json", "zarr.json",
    ]  # fmt: skip


def test_keys_of_several_arrays_in_any_order(tmp_path: Path) -> None:
    values = {name: np.arange(8, dtype="<i4") * (n + 1) for n, name in enumerate(["a", "ab", "g/a"])}
    for name, v in values.items():
        (tmp_path / f"{name.replace('/', '_')}.bin").write_bytes(v.tobytes())
    chunks = [
        {
            "key": f"{name}/c/{i}",
            "path": (tmp_path / f"{name.replace('/', '_')}.bin").as_uri(),
            "offset": 16 * i,
            "length": 16,
        }
        for i in (0, 1)
        for name in values
    ]  # interleaved: a/c/0, ab/c/0, g/a/c/0, a/c/1, ...
    group = {"key": "g/zarr.json", "json": {"zarr_format": 3, "node_type": "group"}}
    manifest = Manifest.from_json([GROUP, group, *(_array(name, [8], [4]) for name in values), *chunks])
    to_icechunk_repo(manifest, tmp_path / "repo")
    store = _open(tmp_path / "repo", virtual_chunk_prefixes(manifest))
    for name, v in values.items():
        np.testing.assert_array_equal(zarr.open_array(store, path=name, mode="r")[:], v)


@pytest.mark.parametrize("dense", [True, False])
def test_a_hundred_thousand_references(tmp_path: Path, dense: bool) -> None:
    """One batched call per array (``set_virtual_refs_arr`` when the chunks fill their bounding
    box, ``set_virtual_refs`` otherwise), and the references read back exactly."""
    n = 100_000
    url = (tmp_path / "big.bin").as_uri()
    (tmp_path / "big.bin").write_bytes(np.arange(n, dtype="<i4").tobytes())
    step = 1 if dense else 7  # sparse: every 7th chunk of a grid 7 times larger
    grid = n * step
    entries = [GROUP, _array("v", [grid], [1])] + [
        {"key": f"v/c/{i * step}", "path": url, "offset": 4 * i, "length": 4} for i in range(n)
    ]
    manifest = Manifest.from_json(entries)
    to_icechunk_repo(manifest, tmp_path / "repo")
    array = zarr.open_array(_open(tmp_path / "repo", virtual_chunk_prefixes(manifest)), path="v", mode="r")
    assert array[(n - 1) * step] == n - 1
    assert array[step * 12345] == 12345
    if dense is False:
        assert array[1] == 0  # no reference: the fill value
    back = from_icechunk_repo(tmp_path / "repo")
    cols, _ = back.split()
    assert len(cols.index) == n
    assert back.entries[len(back) - 1].to_json() == {
        "key": f"v/c/{(n - 1) * step}", "path": url, "offset": 4 * (n - 1), "length": 4,
    }  # fmt: skip


def test_relative_paths_and_odd_names_resolve_as_kvmap_resolves_them(tmp_path: Path) -> None:
    files = _chunk_files(tmp_path / "d", 2)
    relative = [f"../d/{p.name.replace(' ', '%20').replace('%.', '%25.')}" for p in files]
    entries = [GROUP, _array("x", [8], [4])] + [
        {"key": f"x/c/{i}", "path": r, "offset": 0, "length": 16} for i, r in enumerate(relative)
    ]
    manifest = Manifest.from_json(entries, url=(tmp_path / "views" / "m.json").as_uri())
    assert virtual_chunk_prefixes(manifest) == [(tmp_path / "d").as_uri() + "/"]
    to_icechunk_repo(manifest, tmp_path / "repo")
    store = _open(tmp_path / "repo", virtual_chunk_prefixes(manifest))
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], np.arange(8))
    back = from_icechunk_repo(tmp_path / "repo")
    assert [e.path for e in back.entries if e.target == "path"] == [p.as_uri() for p in files]
    # The same entries in a manifest elsewhere name other objects, here ones Icechunk cannot reach.
    elsewhere = Manifest.from_json(entries, url="memory://store/views/m.json")
    with pytest.raises(ConvertError, match=r"'memory://store/d/chunk%200%25\.bin'"):
        virtual_chunk_prefixes(elsewhere)


def test_to_icechunk_into_a_session_and_a_branch(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(np.arange(4, dtype="<i4").tobytes())
    url = (tmp_path / "f.bin").as_uri()
    window = {"key": "x/c/0", "path": url, "offset": 0, "length": 16}
    manifest = Manifest.from_json([GROUP, _array("x", [4], [4]), window])
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    with pytest.raises(ConvertError, match="no virtual chunk container") as caught:
        to_icechunk(manifest, session)
    assert (caught.value.entry, caught.value.field) == (2, "path")
    assert not session.has_uncommitted_changes  # refused before the first write
    with pytest.raises(ConvertError, match="read-only"):
        to_icechunk(manifest, repo.readonly_session("main").store)
    with pytest.raises(ConvertError, match="not dict"):
        to_icechunk(manifest, {})
    snapshot = to_icechunk_repo(manifest, tmp_path / "repo2", branch="dev", message="from kvmap")
    repo2 = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "repo2")))
    assert repo2.lookup_branch("dev") == snapshot
    assert next(iter(repo2.ancestry(branch="dev"))).message == "from kvmap"
    assert repo2.lookup_branch("main") != snapshot
    assert not sync(_open(tmp_path / "repo2", [], "main").exists("zarr.json"))  # main is as it was: empty
    store = _open(tmp_path / "repo2", virtual_chunk_prefixes(manifest), "dev")
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], np.arange(4))


def test_an_empty_manifest_commits_nothing(tmp_path: Path) -> None:
    snapshot = to_icechunk_repo(Manifest.from_json([]), tmp_path / "repo")
    repo = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "repo")))
    assert snapshot == repo.lookup_branch("main")
    assert len(list(repo.ancestry(branch="main"))) == 1
    assert len(from_icechunk_repo(tmp_path / "repo")) == 0
    with pytest.raises(ConvertError, match="cannot create the Icechunk repository"):
        to_icechunk_repo(Manifest.from_json([GROUP]), (tmp_path / "repo").as_uri())  # one is there


def test_a_session_with_changes_reads_each_chunk_once(tmp_path: Path) -> None:
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(2,), chunks=(1,), dtype="u1", compressors=None)[:] = 7
    session.commit("first")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="x")[1] = 3  # Icechunk 1.x lists this chunk twice
    got = sorted((e.key, e.data) for e in from_icechunk(session).entries if e.target == "data")
    assert got == [("x/c/0", b"\x07"), ("x/c/1", b"\x03")]


def _s3_environment(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the environment's S3 settings (which Icechunk and kvmap's file reads take) at the server."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": S3Server.ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3Server.SECRET_ACCESS_KEY,
        "AWS_REGION": S3Server.REGION,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)


def test_an_s3_url_location_takes_its_settings_from_the_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.create_bucket("kvmap-icechunk-env")
    _s3_environment(s3_server, monkeypatch)
    group = {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {"where": "s3"}}}
    to_icechunk_repo(Manifest.from_json([group]), "s3://kvmap-icechunk-env/some/repo")
    assert from_icechunk_repo("s3://kvmap-icechunk-env/some/repo").to_json()["entries"] == [group]


def test_s3_repository_and_s3_references(s3_server: S3Server) -> None:
    """The repository and the referenced object on the loopback S3 server: an ``icechunk.Storage``
    location and a container store given in ``containers``."""
    s3_server.create_bucket("kvmap-icechunk")
    s3_server.put("kvmap-icechunk", "data/raw.bin", np.arange(8, dtype="<i4").tobytes())
    endpoint = {"region": S3Server.REGION, "endpoint_url": s3_server.endpoint, "allow_http": True}
    storage = ic.s3_storage(
        bucket="kvmap-icechunk",
        prefix="repo",
        access_key_id=S3Server.ACCESS_KEY_ID,
        secret_access_key=S3Server.SECRET_ACCESS_KEY,
        force_path_style=True,
        **endpoint,
    )
    url = "s3://kvmap-icechunk/data/raw.bin"
    manifest = Manifest.from_json(
        [GROUP, _array("x", [8], [4])]
        + [{"key": f"x/c/{i}", "path": url, "offset": 16 * i, "length": 16} for i in range(2)]
    )
    assert virtual_chunk_prefixes(manifest) == ["s3://kvmap-icechunk/"]
    container = ic.s3_store(s3_compatible=True, force_path_style=True, **endpoint)
    to_icechunk_repo(manifest, storage, containers={"s3://kvmap-icechunk/": container})
    credentials = ic.s3_static_credentials(
        access_key_id=S3Server.ACCESS_KEY_ID, secret_access_key=S3Server.SECRET_ACCESS_KEY
    )
    repo = ic.Repository.open(
        storage, authorize_virtual_chunk_access=ic.containers_credentials({"s3://kvmap-icechunk/": credentials})
    )
    np.testing.assert_array_equal(zarr.open_array(repo.readonly_session("main").store, path="x")[:], np.arange(8))
    if READS_REFS:
        assert [e.to_json() for e in from_icechunk_repo(storage).entries][2:] == manifest.to_json()["entries"][2:]


# -- refusals ------------------------------------------------------------------------------------------


REFUSED = [
    ({"prefix": "x/c/", "path": "file:///d/"}, "prefix", "materialize"),
    ({"min": "x/c/0", "max": "x/c/9", "path": "file:///d/"}, "min", "materialize"),
    ({"key": "x/c/0", "path": "file:///d/a.zip|zip:c/0"}, "path", "URL pipeline"),
    ({"key": "y/zarr.json", "path": "file:///d/zarr.json"}, "path", "must be inline"),
    ({"key": "x/.zarray", "json": {}}, "key", "zarr v2 metadata"),
    ({"key": "stray.txt", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),
    ({"key": "x/c/4", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),  # outside the grid
    ({"key": "x/c/0/1", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),  # one index too many
    ({"key": "x/c/01", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),  # not zarr's spelling
    ({"key": "x/c/+1", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),
    ({"key": "x/c/-1", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),
    ({"key": "x/c/9", "path": "file:///d/a", "offset": 0, "length": 4}, "key", "neither zarr.json nor a chunk key"),
    ({"key": "x/y/zarr.json", "json": _array("y", [4], [2])["json"]}, "key", "lies inside array 'x'"),
    ({"key": "x/0", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),  # v2 spelling, default encoding
    ({"key": "nope/c/0", "data": "AA=="}, "key", "neither zarr.json nor a chunk key"),  # no such array
    ({"key": "x/c/0", "data": ""}, "data", "empty"),
    ({"key": "x/c/0", "path": "file:///d/a", "offset": 0, "length": 0}, "length", "empty"),
    ({"key": "x/c/0", "path": "memory://s/a", "offset": 0, "length": 4}, "path", "no Icechunk virtual chunk container"),
    ({"key": "x/c/0", "path": "s3+http://h:9/b/a", "offset": 0, "length": 4}, "path", "no Icechunk virtual"),
    ({"key": "y/zarr.json", "json": {"zarr_format": 2}}, "json", "not zarr v3 metadata"),
    ({"key": "y/zarr.json", "json": {**_array("y", [4], [2])["json"], "chunk_grid": {"name": "x"}}}, "json", "regular"),
    ({"key": "y/zarr.json", "json": {**_array("y", [4], [2])["json"], "chunk_key_encoding": "v2"}}, "json", "encoding"),
]  # fmt: skip


@pytest.mark.parametrize(("entry", "field", "reason"), REFUSED)
def test_what_icechunk_cannot_hold_is_refused_naming_the_entry(
    tmp_path: Path, entry: dict[str, Any], field: str, reason: str
) -> None:
    manifest = Manifest.from_json([GROUP, _array("x", [16], [4]), entry], name="doc.json")
    with pytest.raises(ConvertError, match=reason) as caught:
        to_icechunk_repo(manifest, tmp_path / "repo")
    assert (caught.value.manifest, caught.value.entry, caught.value.field) == ("doc.json", 2, field)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    "encoding",
    [
        {"name": "v2", "configuration": {"separator": "."}},
        {"name": "v2", "configuration": {"separator": "/"}},
        {"name": "default", "configuration": {"separator": "."}},
    ],
)
def test_chunk_key_encodings_icechunk_cannot_serve_are_refused(tmp_path: Path, encoding: dict[str, Any]) -> None:
    manifest = Manifest.from_json([GROUP, _array("x", [4], [4], chunk_key_encoding=encoding)])
    with pytest.raises(ConvertError, match="'default' chunk key encoding with separator '/' only") as caught:
        to_icechunk_repo(manifest, tmp_path / "repo")
    assert (caught.value.entry, caught.value.field) == (1, "json")
    # Icechunk's own store refuses these keys: the refusal is not kvmap's choice.
    session = ic.Repository.create(ic.in_memory_storage()).writable_session("main")
    array = zarr.create_array(session.store, name="x", shape=(2,), chunks=(1,), dtype="i4", chunk_key_encoding={
        "name": encoding["name"], "separator": encoding["configuration"]["separator"]})  # fmt: skip
    with pytest.raises(ic.IcechunkError, match="invalid zarr key format"):
        array[:] = 1


# -- containers ----------------------------------------------------------------------------------------


_segment = st.sampled_from(["a", "b", "a b", "x%20y", "é"])
_location = st.tuples(st.sampled_from(["file", "s3", "gs", "https"]), st.lists(_segment, min_size=1, max_size=4))


@settings(max_examples=200)
@given(st.lists(_location, min_size=1, max_size=8))
def test_prefixes_cover_every_location_and_nest_in_none(locations: list[tuple[str, list[str]]]) -> None:
    urls = [
        f"file:///{'/'.join(parts)}"
        if scheme == "file"
        else f"{scheme}://{parts[0].replace(' ', '-')}/{'/'.join(parts)}"
        for scheme, parts in locations
    ]
    entries = [GROUP, _array("x", [len(urls)], [1])] + [
        {"key": f"x/c/{i}", "path": u, "offset": 0, "length": 1} for i, u in enumerate(urls)
    ]
    prefixes = virtual_chunk_prefixes(Manifest.from_json(entries))
    assert prefixes == sorted(prefixes)
    for url in urls:
        assert sum(url.startswith(p) for p in prefixes) == 1  # covered, by exactly one
    for p in prefixes:
        assert p.endswith("/")
        assert any(u.startswith(p) for u in urls)  # none needless
        if not p.startswith("file:"):
            assert p.count("/") == 3  # one bucket or host
        else:
            # the directory of some location itself: no wider than the data needs
            assert any(u.rpartition("/")[0] + "/" == p for u in urls)


def test_prefixes_of_local_directories() -> None:
    urls = ["file:///data/2024/a.nc", "file:///data/b.nc", "file:///other/c.nc", "s3://bkt/k/d.nc", "https://h:8/e"]
    entries = [GROUP, _array("x", [5], [1])] + [
        {"key": f"x/c/{i}", "path": u, "offset": 0, "length": 1} for i, u in enumerate(urls)
    ]
    assert virtual_chunk_prefixes(Manifest.from_json(entries)) == [
        "file:///data/", "file:///other/", "https://h:8/", "s3://bkt/",
    ]  # fmt: skip


def test_an_azure_container_needs_its_store(tmp_path: Path) -> None:
    manifest = Manifest.from_json(
        [GROUP, _array("x", [4], [4]), {"key": "x/c/0", "path": "az://container/a.bin", "offset": 0, "length": 16}]
    )
    assert virtual_chunk_prefixes(manifest) == ["az://container/"]
    with pytest.raises(ConvertError, match=r"containers=\{'az://container/'"):
        to_icechunk_repo(manifest, tmp_path / "repo")


# -- reading: errors -----------------------------------------------------------------------------------


def _one_window(path: Path) -> Manifest:
    path.write_bytes(bytes(16))
    return Manifest.from_json(
        [GROUP, _array("x", [4], [4]), {"key": "x/c/0", "path": path.as_uri(), "offset": 0, "length": 16}]
    )


@pytest.mark.skipif(READS_REFS, reason="Icechunk 1.x only")
def test_icechunk_1_cannot_read_virtual_references(tmp_path: Path) -> None:
    to_icechunk_repo(_one_window(tmp_path / "f.bin"), tmp_path / "repo")
    session = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "repo"))).readonly_session("main")
    with pytest.raises(MissingDependencyError, match=rf"Icechunk {ic.__version__} cannot say where") as caught:
        from_icechunk(session)
    assert "Python 3.12" in str(caught.value)
    assert "pip install 'icechunk>=2.0.5'" in str(caught.value)


def test_from_icechunk_refuses_other_things(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not dict"):
        from_icechunk({})
    with pytest.raises(ManifestError, match="cannot open the Icechunk repository"):
        from_icechunk_repo(tmp_path / "nothing-here")
    with pytest.raises(ManifestError, match=r"pass an icechunk\.Storage"):
        from_icechunk_repo("memory://x")


@needs_refs
def test_from_icechunk_reads_a_writable_session_too(tmp_path: Path) -> None:
    manifest = _one_window(tmp_path / "f.bin")
    config = ic.RepositoryConfig.default()
    for prefix in virtual_chunk_prefixes(manifest):
        config.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, ic.local_filesystem_store(str(tmp_path))))
    session = ic.Repository.create(ic.in_memory_storage(), config=config).writable_session("main")
    to_icechunk(manifest, session.store)
    assert from_icechunk(session.store, name="s").to_json() == manifest.to_json()


def test_without_icechunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "icechunk", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvmap\[icechunk\]'"):
        to_icechunk(Manifest.from_json([]), None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvmap\[icechunk\]'"):
        from_icechunk_repo("repo")


# -- checksums: etag pins ------------------------------------------------------------------------------


def _local_etag(path: Path) -> str:
    """The ETag of a local file as obstore reports it (and kvmap checks it)."""
    import obstore
    from obstore.store import LocalStore

    etag: str = obstore.head(LocalStore(str(path.parent)), path.name)["e_tag"]
    return etag


def _pinned(tmp_path: Path) -> list[dict[str, Any]]:
    """A group with a 2-d array of 2 x 3 chunks, each a window of one of two files; chunks (0, *)
    pin the ETag of their file, (0, 0) its version and sha256 too, (1, *) pin nothing."""
    import hashlib

    entries: list[dict[str, Any]] = [GROUP, _array("t", [4, 6], [2, 2])]
    for row in (0, 1):
        path = tmp_path / "data" / f"row {row}.bin"  # a space: the URL has %20
        path.parent.mkdir(exist_ok=True)
        data = np.arange(12 * row, 12 * row + 12, dtype="<i4").tobytes() * 2
        path.write_bytes(data)
        for col in range(3):
            entry = {"key": f"t/c/{row}/{col}", "path": path.as_uri(), "offset": 16 * col, "length": 16}
            if row == 0:
                entry["etag"] = _local_etag(path)
            if (row, col) == (0, 0):
                entry["version"] = "v1"
                entry["sha256"] = hashlib.sha256(data[:16]).hexdigest()
            entries.append(entry)
    return entries


def test_etag_pins_round_trip_through_icechunk(tmp_path: Path) -> None:
    entries = _pinned(tmp_path)
    kvmap.Manifest.from_json(entries, url=tmp_path / "m.json").save(tmp_path / "m.json")
    there = kvmap.convert(tmp_path / "m.json", tmp_path / "repo.icechunk")
    assert there.target_format == "icechunk"
    assert there.dropped_pins == {"version": 1, "sha256": 1}  # Icechunk holds the etag only
    back = kvmap.convert(tmp_path / "repo.icechunk", tmp_path / "back.json")
    assert (back.source_format, back.dropped_pins) == ("icechunk", {})
    got = {e.key: e.to_json() for e in kvmap.Manifest.load(tmp_path / "back.json").entries}
    for entry in entries[2:]:
        # Every window and every etag pin as it was; version and sha256 are gone.
        expected = {k: v for k, v in entry.items() if k not in ("version", "sha256")}
        assert got[entry["key"]] == expected
    assert [got[e["key"]].get("etag") for e in entries[2:]] == [e.get("etag") for e in entries[2:]]
    assert sum("etag" in e for e in got.values()) == 3


def test_etag_checksums_of_a_repository_made_by_icechunk(tmp_path: Path) -> None:
    """References written with Icechunk's own API: an etag checksum becomes a pin, a last_updated_at
    checksum (a time) is read without one and counted, a reference without a checksum has none."""
    import datetime

    (tmp_path / "f.bin").write_bytes(np.arange(12, dtype="<i4").tobytes())
    url = (tmp_path / "f.bin").as_uri()
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(
        ic.VirtualChunkContainer(tmp_path.as_uri() + "/", ic.local_filesystem_store(str(tmp_path)))
    )
    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "repo")), config=config)
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="x", shape=(12,), chunks=(4,), dtype="<i4", compressors=None, fill_value=0)
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    specs = [
        ic.VirtualChunkSpec([0], url, 0, 16, etag_checksum='"an-etag"'),
        ic.VirtualChunkSpec([1], url, 16, 16, last_updated_at_checksum=when),
        ic.VirtualChunkSpec([2], url, 32, 16),
    ]
    assert not session.store.set_virtual_refs("x", specs, validate_containers=True)
    session.commit("by hand")
    read = read_icechunk_repo(tmp_path / "repo")
    assert read.unkept == 1
    chunks = {e.key: e.to_json() for e in read.manifest.entries if e.target == "path"}
    assert chunks == {
        "x/c/0": {"key": "x/c/0", "path": url, "offset": 0, "length": 16, "etag": '"an-etag"'},
        "x/c/1": {"key": "x/c/1", "path": url, "offset": 16, "length": 16},
        "x/c/2": {"key": "x/c/2", "path": url, "offset": 32, "length": 16},
    }
    assert from_icechunk_repo((tmp_path / "repo").as_uri()).to_json() == read.manifest.to_json()
    done = kvmap.convert(tmp_path / "repo", tmp_path / "back.json", source_format="icechunk")
    assert done.dropped_pins == {"last_updated_at": 1}


def test_etag_checksums_of_an_s3_repository(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository named by an s3:// URL: its files are read with obstore, settings from the
    environment as Icechunk's; the references' objects on S3 too, with S3's own ETags."""
    import obstore

    bucket = "kvmap-icechunk-pins"
    s3_server.create_bucket(bucket)
    _s3_environment(s3_server, monkeypatch)
    store = s3_server.store(bucket)
    etags = [
        obstore.put(store, f"data/{i}.bin", np.arange(4 * i, 4 * i + 4, dtype="<i4").tobytes())["e_tag"]
        for i in range(2)
    ]
    assert all(etags)
    chunks = [
        {"key": f"x/c/{i}", "path": f"s3://{bucket}/data/{i}.bin", "offset": 0, "length": 16, "etag": etags[i]}
        for i in range(2)
    ]
    manifest = Manifest.from_json([GROUP, _array("x", [8], [4]), *chunks])
    container = ic.s3_store(
        region=S3Server.REGION,
        endpoint_url=s3_server.endpoint,
        allow_http=True,
        s3_compatible=True,
        force_path_style=True,
    )
    to_icechunk_repo(manifest, f"s3://{bucket}/repo", containers={f"s3://{bucket}/": container})
    back = from_icechunk_repo(f"s3://{bucket}/repo")
    assert [e.to_json() for e in back.entries][2:] == chunks


def _files_of(repo: Path) -> tuple[str, dict[str, bytes]]:
    """The snapshot id of the tip of ``main`` and the repository's snapshot and manifest files."""
    snapshot = ic.Repository.open(ic.local_filesystem_storage(str(repo))).lookup_branch("main")
    files = {f"{d}/{p.name}": p.read_bytes() for d in ("snapshots", "manifests") for p in (repo / d).iterdir()}
    return snapshot, files


def _uncompressed(data: bytes) -> bytes:
    """An Icechunk file's flatbuffer, decompressed, behind the same header saying "no compression"."""
    from numcodecs import Zstd

    return data[:38] + b"\0" + bytes(Zstd().decode(data[39:]))


@pytest.fixture(scope="module")
def pinned_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, bytes]]:
    tmp_path = tmp_path_factory.mktemp("pinned")
    to_icechunk_repo(Manifest.from_json(_pinned(tmp_path)), tmp_path / "repo")
    snapshot, files = _files_of(tmp_path / "repo")
    return snapshot, {name: _uncompressed(data) for name, data in files.items()}


def test_damaged_files_are_manifest_errors_naming_the_file(tmp_path: Path) -> None:
    from kvmap.formats.icechunk import _repository_files, _stored_refs

    to_icechunk_repo(_one_window(tmp_path / "f.bin"), tmp_path / "repo")
    snapshot, files = _files_of(tmp_path / "repo")
    assert list(_stored_refs(files.__getitem__, snapshot, "doc")["x"]) == [(0,)]
    [manifest] = [name for name in files if name.startswith("manifests/")]
    cases = {
        b"not Icechunk at all": "does not start with Icechunk's header",
        files[manifest][:36] + b"\x09\x02\x01": "spec version 9; kvmap reads versions 1 and 2",
        files[manifest][:36] + b"\x01\x01\x01" + files[manifest][39:]: "is of file type 1, not 2",
        files[manifest][:36] + b"\x01\x02\x07": "algorithm 7",
        files[manifest][:39] + b"\x28\xb5\x2f\xfd garbage": "does not decompress",
        files[manifest][:38] + b"\0" + b"\xff" * 8: "is not what Icechunk writes",
    }
    for damaged, reason in cases.items():
        with pytest.raises(ManifestError, match=reason) as caught:
            _stored_refs({**files, manifest: damaged}.__getitem__, snapshot, "doc")
        assert manifest in str(caught.value)
        assert caught.value.manifest == "doc"
    read = _repository_files(ic, tmp_path / "elsewhere", "doc")
    assert read is not None
    with pytest.raises(ManifestError, match=rf"cannot read the Icechunk repository's file .*snapshots/{snapshot}"):
        _stored_refs(read, snapshot, "doc")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_files_read_or_raise_manifest_errors(
    pinned_files: tuple[str, dict[str, bytes]], data: st.DataObject
) -> None:
    """Whatever a damaged snapshot or manifest file holds, reading it gives references or a
    ManifestError: never another exception, a hang, or a read outside the file."""
    import tempfile

    from kvmap.formats.icechunk import _repository_files, _stored_refs

    snapshot, files = pinned_files
    name = data.draw(st.sampled_from(sorted(files)))
    body = bytearray(files[name])
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(39, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(39, len(body))))
    with tempfile.TemporaryDirectory() as repo:  # the repository's files, one of them damaged
        for each, data in files.items():
            Path(repo, each).parent.mkdir(exist_ok=True)
            Path(repo, each).write_bytes(bytes(body[:cut]) if each == name else data)
        read = _repository_files(ic, repo, None)
        assert read is not None
        with contextlib.suppress(ManifestError):
            _stored_refs(read, snapshot, None)
