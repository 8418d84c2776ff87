"""kvmap.formats.virtualizarr: VirtualiZarr virtual datasets as kvmap manifests.

Real netCDF4 files made by xarray, real VirtualiZarr parsing (2.5 on Python 3.11, 2.8+ on 3.12), and
three readers compared: kvmap's KVMapStore, VirtualiZarr's own ManifestStore, and xarray on the file.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.errors import ManifestError, MissingDependencyError
from kvmap.manifest import Manifest

vz = pytest.importorskip("virtualizarr")
h5netcdf = pytest.importorskip("h5netcdf")

from obspec_utils.registry import ObjectStoreRegistry  # noqa: E402  (after the skip: VirtualiZarr's dependency)
from obstore.store import LocalStore  # noqa: E402
from virtualizarr.manifests import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore  # noqa: E402
from virtualizarr.parsers import HDFParser  # noqa: E402
from zarr.core.metadata.v3 import ArrayV3Metadata  # noqa: E402

from kvmap.formats import virtualizarr as bridge  # noqa: E402
from kvmap.formats.virtualizarr import from_virtualizarr  # noqa: E402

pytestmark = [
    # zarr warns whenever it meets the numcodecs codecs (zlib, shuffle) of every HDF5 file.
    pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3 specification"),
]

REGISTRY = ObjectStoreRegistry({"file://": LocalStore()})
INLINED_CHUNKS = hasattr(vz.manifests.manifest, "INLINED_CHUNK_PATH")  # VirtualiZarr 2.6.1+


def _netcdf(path: Path) -> Path:
    """A netCDF4 file: a compressed 3-d variable, an uncompressed 2-d one, a packed one, CF times,
    a non-dimension coordinate and global attributes."""
    ds = xr.Dataset(
        {
            "temp": (("time", "lat", "lon"), np.arange(4 * 6 * 8, dtype="f4").reshape(4, 6, 8), {"units": "K"}),
            "mask": (("lat", "lon"), (np.arange(48).reshape(6, 8) % 3).astype("i2")),
            "packed": (("time",), np.array([1.5, 2.5, np.nan, 4.0])),
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=4),
            "lat": np.linspace(-50, 50, 6),
            "lon": np.linspace(0, 350, 8),
            "area": ("lat", np.linspace(1, 6, 6)),
        },
        attrs={"title": "test file", "version": 3},
    )
    encoding = {
        "temp": {"chunksizes": (2, 3, 4), "zlib": True, "shuffle": True},
        "mask": {"chunksizes": (3, 4)},
        "packed": {"dtype": "i2", "scale_factor": 0.5, "_FillValue": -999},
    }
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return path


def _sparse(path: Path) -> Path:
    """A netCDF4 file whose variable has chunks that were never written (HDF5 allocates none)."""
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"x": 6, "y": 4}
        v = f.create_variable("sparse", ("x", "y"), "f4", chunks=(2, 2), fillvalue=-1.0)
        v[0:2, 0:2] = 1.0
        v[4:6, 2:4] = 2.0
    return path


def _virtual(path: Path, **kwargs: Any) -> xr.Dataset:
    return vz.open_virtual_dataset(f"file://{path}", parser=HDFParser(), registry=REGISTRY, **kwargs)


def _store(path: Path) -> ManifestStore:
    return HDFParser()(url=f"file://{path}", registry=REGISTRY)


def _through_kvmap(manifest: Manifest, directory: Path, name: str = "m.json") -> xr.Dataset:
    target = directory / name
    manifest.save(target)
    return xr.open_zarr(kvmap.KVMapStore(target), consolidated=False).load()


def _original(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def _by_key(manifest: Manifest) -> dict[str, Any]:
    return {e.key: e for e in manifest.entries}


def _json_of(entry: Any) -> Any:
    """The value of a ``json`` entry."""
    assert entry.target == "json"
    return orjson.loads(entry.data)


# -- end to end: three readers agree ------------------------------------------------------------------


def test_virtual_dataset_reads_as_the_netcdf_file(tmp_path: Path) -> None:
    nc = _netcdf(tmp_path / "a.nc")
    vds = _virtual(nc)
    manifest = from_virtualizarr(vds, url=(tmp_path / "m.json").as_uri())
    got = _through_kvmap(manifest, tmp_path)
    xr.testing.assert_identical(got, _original(nc))
    # The references are VirtualiZarr's, one exact entry per chunk in zarr's key encoding.
    entries = _by_key(manifest)
    refs = vds["temp"].data.manifest.dict()
    assert len(refs) == 8
    for index, ref in refs.items():
        entry = entries["temp/c/" + index.replace(".", "/")]
        assert (entry.path, entry.offset, entry.length) == (ref["path"], ref["offset"], ref["length"])
    # The loaded dimension coordinates are inline chunks; metadata is inline JSON.
    assert entries["time/c/0"].target == "data"
    assert {entries[k].target for k in entries if k.endswith("zarr.json")} == {"json"}


def test_manifest_store_and_group_match_virtualizarrs_own_reading(tmp_path: Path) -> None:
    nc = _netcdf(tmp_path / "a.nc")
    store = _store(nc)
    from_store = from_virtualizarr(store, url=(tmp_path / "m.json").as_uri())
    from_group = from_virtualizarr(store._group, url=(tmp_path / "m.json").as_uri())
    assert from_store == from_group
    # Every chunk is virtual here, coordinates included.
    assert {e.target for e in from_store.entries} == {"json", "path"}
    with xr.open_zarr(store, consolidated=False, zarr_format=3) as theirs:
        xr.testing.assert_identical(_through_kvmap(from_store, tmp_path), theirs.load())
    xr.testing.assert_identical(_through_kvmap(from_store, tmp_path), _original(nc))


def test_missing_chunks_get_no_entry(tmp_path: Path) -> None:
    nc = _sparse(tmp_path / "s.nc")
    manifest = from_virtualizarr(_store(nc), url=(tmp_path / "m.json").as_uri())
    chunks = sorted(e.key for e in manifest.entries if e.target == "path")
    assert chunks == ["sparse/c/0/0", "sparse/c/2/1"]
    got = _through_kvmap(manifest, tmp_path)
    np.testing.assert_array_equal(got["sparse"].values, _original(nc)["sparse"].values)
    assert np.isnan(got["sparse"].values[2:4]).all()  # the fill value, masked as the file says


def test_loaded_variables_become_inline_chunks_with_the_original_codecs(tmp_path: Path) -> None:
    nc = _netcdf(tmp_path / "a.nc")
    vds = _virtual(nc, loadable_variables=["temp", "time", "lat", "lon", "area"])
    assert isinstance(vds["temp"].variable.data, np.ndarray)
    manifest = from_virtualizarr(vds, url=(tmp_path / "m.json").as_uri())
    entries = _by_key(manifest)
    assert {k for k in entries if k.startswith("temp/c/")} == {
        f"temp/c/{i}/{j}/{k}" for i in (0, 1) for j in (0, 1) for k in (0, 1)
    }
    assert all(e.target == "data" for k, e in entries.items() if k.startswith("temp/c/"))
    codecs = [c["name"] for c in _json_of(entries["temp/zarr.json"])["codecs"]]
    original = [c["name"] for c in _store(nc)._group.arrays["temp"].metadata.to_dict()["codecs"]]
    assert codecs == original == ["bytes", "numcodecs.shuffle", "numcodecs.zlib"]
    # CF encoding applied as xarray applies it: times as integers with units.
    assert _json_of(entries["time/zarr.json"])["attributes"]["units"].startswith("days since 2000-01-01")
    xr.testing.assert_identical(_through_kvmap(manifest, tmp_path), _original(nc))


def test_coordinates_are_kept_as_xarray_keeps_them(tmp_path: Path) -> None:
    nc = _netcdf(tmp_path / "a.nc")
    vds = _virtual(nc, loadable_variables=[])  # everything virtual, area a non-dimension coordinate
    assert "area" in vds.coords
    got = _through_kvmap(from_virtualizarr(vds, url=(tmp_path / "m.json").as_uri()), tmp_path)
    assert set(got.coords) == set(_original(nc).coords) == {"time", "lat", "lon", "area"}
    xr.testing.assert_identical(got, _original(nc))


def test_datatree_nodes_become_groups(tmp_path: Path) -> None:
    a = _virtual(_netcdf(tmp_path / "a.nc"))
    b = _virtual(_sparse(tmp_path / "s.nc"), loadable_variables=[])
    tree = xr.DataTree.from_dict({"/": a, "/sub": b})
    manifest = from_virtualizarr(tree, url=(tmp_path / "m.json").as_uri())
    keys = {e.key for e in manifest.entries}
    assert {"zarr.json", "sub/zarr.json", "sub/sparse/zarr.json", "sub/sparse/c/0/0"} <= keys
    manifest.save(tmp_path / "m.json")
    with xr.open_zarr(kvmap.KVMapStore(tmp_path / "m.json"), group="sub", consolidated=False) as sub:
        np.testing.assert_array_equal(sub["sparse"].values, _original(tmp_path / "s.nc")["sparse"].values)


@pytest.mark.skipif(not INLINED_CHUNKS, reason="inlined chunks are VirtualiZarr 2.6.1+")
def test_inlined_chunks_become_data_entries(tmp_path: Path) -> None:
    values = np.arange(4, dtype="<i4")
    manifest = ChunkManifest(
        {
            "0": {"path": "", "offset": 0, "length": 16, "data": values.tobytes()},
            "1": {"path": (tmp_path / "raw.bin").as_uri(), "offset": 4, "length": 16},
        }
    )
    (tmp_path / "raw.bin").write_bytes(b"\0" * 4 + (values + 4).tobytes())
    group = ManifestGroup(arrays={"v": ManifestArray(_metadata((8,), (4,), "int32"), manifest)})
    result = from_virtualizarr(group, url=(tmp_path / "m.json").as_uri())
    assert [e.key for e in result.entries] == ["zarr.json", "v/zarr.json", "v/c/1", "v/c/0"]  # one entry each
    entries = _by_key(result)
    assert entries["v/c/0"].target == "data"
    assert entries["v/c/0"].data == values.tobytes()
    assert (entries["v/c/1"].offset, entries["v/c/1"].length) == (4, 16)
    got = _through_kvmap(result, tmp_path)
    np.testing.assert_array_equal(got["v"].values, np.arange(8))


# -- chunk keys: every encoding, every grid -----------------------------------------------------------


def _metadata(
    shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str = "int32", encoding: Any = None
) -> ArrayV3Metadata:
    return ArrayV3Metadata.from_dict(
        {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": encoding or {"name": "default"},
            "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "dimension_names": [f"d{i}" for i in range(len(shape))],
        }
    )


URLS = ["s3://b/x.nc", "file:///d/y.nc", "https://h/z"]
ENCODINGS = [
    {"name": "default", "configuration": {"separator": "/"}},
    {"name": "default", "configuration": {"separator": "."}},
    {"name": "v2", "configuration": {"separator": "."}},
    {"name": "v2", "configuration": {"separator": "/"}},
]


@st.composite
def _grids(draw: st.DrawFn) -> tuple[ArrayV3Metadata, ChunkManifest, dict[tuple[int, ...], tuple[str, int, int]]]:
    grid = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
    chunks = tuple(draw(st.integers(1, 3)) for _ in grid)
    shape = tuple(g * c - draw(st.integers(0, c - 1)) for g, c in zip(grid, chunks, strict=True))
    metadata = _metadata(shape, chunks, encoding=draw(st.sampled_from(ENCODINGS)))
    size = int(np.prod(grid))
    present = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    urls = draw(st.lists(st.sampled_from(URLS), min_size=size, max_size=size))
    paths = np.array([u if p else "" for u, p in zip(urls, present, strict=True)], dtype=np.dtypes.StringDType())
    offsets = np.arange(size, dtype="u8") * 100
    lengths = np.arange(size, dtype="u8") + 1
    manifest = ChunkManifest.from_arrays(
        paths=paths.reshape(grid), offsets=offsets.reshape(grid), lengths=lengths.reshape(grid), validate_paths=False
    )
    expected = {
        tuple(int(i) for i in np.unravel_index(n, grid)): (str(paths[n]), int(offsets[n]), int(lengths[n]))
        for n in range(size)
        if present[n]
    }
    return metadata, manifest, expected


@settings(max_examples=150)
@given(_grids())
def test_chunk_keys_are_zarrs_for_every_encoding_and_grid(
    case: tuple[ArrayV3Metadata, ChunkManifest, dict[tuple[int, ...], tuple[str, int, int]]],
) -> None:
    metadata, chunks, expected = case
    result = from_virtualizarr(ManifestGroup(arrays={"v": ManifestArray(metadata, chunks)}))
    got = {e.key: (e.path, e.offset, e.length) for e in result.entries if e.target == "path"}
    assert got == {"v/" + metadata.encode_chunk_key(index): ref for index, ref in expected.items()}
    # The public dict() path (the fallback where the numpy arrays are missing) agrees.
    fallback = bridge._chunk_entries_from_dict("v/", metadata, chunks)
    assert {e["key"]: (e["path"], e["offset"], e["length"]) for e in fallback} == got


def test_a_large_grid_takes_the_columnar_path(tmp_path: Path) -> None:
    grid = (50, 40, 50)  # 100,000 chunks
    n = int(np.prod(grid))
    paths = np.full(n, (tmp_path / "big.bin").as_uri(), dtype=np.dtypes.StringDType())
    paths[::10] = ""
    chunks = ChunkManifest.from_arrays(
        paths=paths.reshape(grid),
        offsets=(np.arange(n, dtype="u8") * 4).reshape(grid),
        lengths=np.full(grid, 4, dtype="u8"),
        validate_paths=False,
    )
    metadata = _metadata((50, 40, 50), (1, 1, 1), "int32")
    result = from_virtualizarr(ManifestGroup(arrays={"v": ManifestArray(metadata, chunks)}))
    assert len(result) == 2 + n - n // 10
    cols, others = result.split()
    assert len(cols.index) == n - n // 10  # the chunks are columns, not Entry objects
    assert len(others) == 2
    last = result.entries[len(result) - 1]
    assert (last.key, last.offset) == ("v/c/49/39/49", (n - 1) * 4)
    (tmp_path / "big.bin").write_bytes(np.arange(n, dtype="<i4").tobytes())
    result.save(tmp_path / "m.json")
    array = zarr.open_array(kvmap.KVMapStore(tmp_path / "m.json"), path="v", mode="r")
    expected = np.arange(n, dtype="i4").reshape(grid)
    expected.reshape(-1)[::10] = 0  # missing chunks read as the fill value
    np.testing.assert_array_equal(array[49, 38:, :], expected[49, 38:, :])  # 100 chunks: zarr reads one at a time


# -- paths ---------------------------------------------------------------------------------------------


def _one_chunk(path: str) -> ManifestGroup:
    chunks = ChunkManifest.from_arrays(
        paths=np.array([path], dtype=np.dtypes.StringDType()),
        offsets=np.array([0], dtype="u8"),
        lengths=np.array([16], dtype="u8"),
        validate_paths=False,
    )
    return ManifestGroup(arrays={"v": ManifestArray(_metadata((4,), (4,)), chunks)})


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("s3://bucket/a/b.nc", "s3://bucket/a/b.nc"),
        ("file:///d/my%20file.nc", "file:///d/my%20file.nc"),  # an escape stays an escape
        ("file:///d/my file.nc", "file:///d/my%20file.nc"),
        ("file:///d/100%.nc", "file:///d/100%25.nc"),  # a % that starts no escape is a %
        ("file:///d/é.nc", "file:///d/%C3%A9.nc"),
        ("/d/my file%41.nc", "file:///d/my%20file%2541.nc"),  # a bare path is literal text
        ("https://h/x?v=1", "https://h/x?v=1"),
    ],
)
def test_paths_become_urls(path: str, url: str) -> None:
    entry = from_virtualizarr(_one_chunk(path)).entries[2]
    assert entry.path == url


def test_relative_paths_resolve_against_the_url() -> None:
    result = from_virtualizarr(_one_chunk("data/x.nc"), url="s3://bucket/views/m.json")
    assert result.entries[2].path == "data/x.nc"
    assert kvmap.compile(result).resolve("v/c/0").url == "s3://bucket/views/data/x.nc"
    with pytest.raises(ManifestError) as caught:
        from_virtualizarr(_one_chunk("data/x.nc"), name="refs")
    assert (caught.value.manifest, caught.value.entry, caught.value.field) == ("refs", 2, "path")


def test_a_file_name_with_a_space_reads_as_virtualizarr_reads_it(tmp_path: Path) -> None:
    nc = _netcdf(tmp_path / "my file.nc")
    store = HDFParser()(url=f"file://{nc}", registry=REGISTRY)  # a raw space: VirtualiZarr can read that
    manifest = from_virtualizarr(store, url=(tmp_path / "m.json").as_uri())
    assert {e.path for e in manifest.entries if e.target == "path"} == {nc.as_uri()}
    with xr.open_zarr(store, consolidated=False, zarr_format=3) as theirs:
        xr.testing.assert_identical(_through_kvmap(manifest, tmp_path), theirs.load())


# -- metadata ------------------------------------------------------------------------------------------


def test_metadata_that_is_not_strict_json_is_kept_as_bytes(tmp_path: Path) -> None:
    metadata = ArrayV3Metadata.from_dict({**_metadata((4,), (4,)).to_dict(), "attributes": {"missing": float("nan")}})
    group = ManifestGroup(arrays={"v": ManifestArray(metadata, _one_chunk("s3://b/x").arrays["v"].manifest)})
    entry = _by_key(from_virtualizarr(group))["v/zarr.json"]
    assert entry.target == "data"
    assert b'"missing": NaN' in entry.data  # zarr's own text
    vds = xr.Dataset({"v": (("d0",), np.zeros(4, "i4"), {"missing": float("nan"), "n": np.int64(3)})})
    got = _through_kvmap(from_virtualizarr(vds, url=(tmp_path / "m.json").as_uri()), tmp_path)
    assert np.isnan(got["v"].attrs["missing"])
    assert got["v"].attrs["n"] == 3


def test_group_attributes_and_nested_groups(tmp_path: Path) -> None:
    inner = ManifestGroup(arrays={"v": _one_chunk("s3://b/x").arrays["v"]}, attributes={"level": 2})
    outer = ManifestGroup(groups={"g": inner}, attributes={"title": "t", "values": [1, 2]})
    result = _by_key(from_virtualizarr(outer))
    assert list(result) == ["zarr.json", "g/zarr.json", "g/v/zarr.json", "g/v/c/0"]
    assert _json_of(result["zarr.json"])["attributes"] == {"title": "t", "values": [1, 2]}
    assert _json_of(result["g/zarr.json"])["attributes"] == {"level": 2}
    assert _json_of(result["g/v/zarr.json"])["dimension_names"] == ["d0"]


def test_virtual_variables_get_back_their_dims_and_attributes(tmp_path: Path) -> None:
    vds = _virtual(_netcdf(tmp_path / "a.nc"), loadable_variables=[])
    assert vds["temp"].data.metadata.attributes == {}  # VirtualiZarr moved them into the Variable
    meta = _json_of(_by_key(from_virtualizarr(vds))["temp/zarr.json"])
    assert meta["dimension_names"] == ["time", "lat", "lon"]
    assert meta["attributes"]["units"] == "K"
    packed = _json_of(_by_key(from_virtualizarr(vds))["packed/zarr.json"])["attributes"]
    assert (packed["scale_factor"], packed["_FillValue"]) == (0.5, -999)


def test_fill_value_from_the_encoding_is_written_as_xarray_writes_it(tmp_path: Path) -> None:
    vds = _virtual(_netcdf(tmp_path / "a.nc"), loadable_variables=[])
    var = vds["temp"].variable.copy()
    var.attrs = {k: v for k, v in var.attrs.items() if k != "_FillValue"}
    var.encoding = {"_FillValue": np.nan}
    meta = _json_of(_by_key(from_virtualizarr(xr.Dataset({"temp": var})))["temp/zarr.json"])
    assert meta["attributes"]["_FillValue"] == base64.b64encode(np.float64(np.nan).tobytes()).decode()


# -- errors --------------------------------------------------------------------------------------------


def test_other_objects_are_refused() -> None:
    with pytest.raises(ManifestError, match="not dict") as caught:
        from_virtualizarr({"a": 1}, name="doc")
    assert caught.value.manifest == "doc"


def test_a_chunk_grid_that_does_not_match_the_metadata_is_refused() -> None:
    chunks = ChunkManifest({"0": {"path": "s3://b/x", "offset": 0, "length": 4}}, shape=(3,))
    with pytest.raises(ManifestError, match=r"grid of \(3,\) chunks.*grid of \(2,\)") as caught:
        from_virtualizarr(ManifestGroup(arrays={"v": ManifestArray(_metadata((4,), (2,)), chunks)}), name="doc")
    assert caught.value.manifest == "doc"


def test_a_loaded_variable_xarray_cannot_encode_is_refused() -> None:
    ds = xr.Dataset({"v": (("x",), np.array([{"a": 1}], dtype=object))})
    with pytest.raises(ManifestError, match="loaded variable 'v' cannot be encoded"):
        from_virtualizarr(ds)


def test_without_virtualizarr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "virtualizarr", None)
    monkeypatch.setitem(sys.modules, "virtualizarr.manifests", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvmap\[virtualizarr\]'"):
        from_virtualizarr(xr.Dataset())
