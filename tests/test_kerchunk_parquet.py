"""Kerchunk parquet references in and out (kvmap.formats.kerchunk_parquet), against the real peers:
kerchunk writes the directories (``kerchunk.df.refs_to_dataframe``), fsspec reads them
(``ReferenceFileSystem`` / ``LazyReferenceMapper``, fastparquet), xarray reads the data."""

from __future__ import annotations

import base64
import json
import math
import os
import sys
from itertools import product
from pathlib import Path
from typing import Any

import fsspec
import kerchunk.df
import kerchunk.hdf
import numpy as np
import pytest
import xarray as xr
import zarr
from fsspec.implementations.reference import LazyReferenceMapper
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.errors import ConvertError, ManifestError, MissingDependencyError, SaveError
from kvmap.fetch import drive
from kvmap.formats.kerchunk_parquet import dump_kerchunk_parquet, from_kerchunk_parquet, load, write_kerchunk_parquet

pytestmark = [
    # pandas deprecates the fastparquet engine that fsspec's LazyReferenceMapper reads with.
    pytest.mark.filterwarnings("ignore:The 'fastparquet' engine is deprecated"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


# -- fixtures: a real netCDF file, its kerchunk references, directories kerchunk writes -----------------


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A netCDF4 file (in a directory whose name needs percent-encoding) with a 2-D and a 1-D
    chunked variable, a 0-d variable, small inlined coordinates and a nested group, and its
    kerchunk references (``SingleHdf5ToZarr``)."""
    folder = tmp_path_factory.mktemp("nc") / "data dir %41"
    folder.mkdir()
    path = folder / "a.nc"
    ds = xr.Dataset(
        {
            "t": (("x", "y"), np.arange(200.0).reshape(20, 10)),
            "big": (("z",), np.arange(1000, dtype="i4")),
            "s": ((), 3.5),
        },
        coords={"x": np.arange(20), "y": np.arange(10)},
    )
    ds.to_netcdf(path, engine="h5netcdf", encoding={"t": {"chunksizes": (5, 5)}, "big": {"chunksizes": (100,)}})
    sub = xr.Dataset({"u": (("p", "q"), np.arange(24.0).reshape(4, 6))})
    sub.to_netcdf(path, engine="h5netcdf", group="sub", mode="a", encoding={"u": {"chunksizes": (2, 3)}})
    refs = kerchunk.hdf.SingleHdf5ToZarr(str(path), inline_threshold=100).translate()
    return path, refs["refs"]


def kerchunk_dir(refs: dict[str, Any], directory: Path, record_size: int) -> Path:
    kerchunk.df.refs_to_dataframe(dict(refs), str(directory), record_size=record_size)
    return directory


def reference_fs(directory: Path | str) -> Any:
    return fsspec.filesystem("reference", fo=str(directory), remote_protocol="file", skip_instance_cache=True)


def fsspec_keys(directory: Path | str) -> list[str]:
    """Every key fsspec's LazyReferenceMapper can serve: metadata, .zmetadata and each array's grid."""
    mapper = LazyReferenceMapper(str(directory))
    keys = {".zmetadata", *mapper.zmetadata}
    for name in mapper.zmetadata:
        if name.endswith("/.zarray"):
            keys.update(mapper._keys_in_field(name[: -len("/.zarray")]))
    return sorted(keys)


def fsspec_bytes(fs: Any, key: str) -> bytes | None:
    """What fsspec's reference file system reads for ``key`` (``None``: nothing)."""
    try:
        value = fs.cat_file(key)
    except (FileNotFoundError, KeyError, TypeError):
        # TypeError: fsspec hands a missing row of a kerchunk-written file out as [nan].
        return None
    return value if isinstance(value, bytes) else None


def kvmap_reader(manifest: kvmap.Manifest) -> kvmap.Reader:
    return kvmap.Reader(manifest, allow_all=True)


def kvmap_bytes(reader: kvmap.Reader, key: str) -> bytes | None:
    value = reader.get_sync(key)
    return None if value is None else bytes(value)


def same_data(a: xr.Dataset, b: xr.Dataset) -> None:
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


# -- import: kerchunk's directories read as fsspec reads them ----------------------------------------


@pytest.mark.parametrize("record_size", [1, 3, 8, 100_000])
def test_import_matches_fsspec_key_by_key(
    source: tuple[Path, dict[str, Any]], tmp_path: Path, record_size: int
) -> None:
    _, refs = source
    directory = kerchunk_dir(refs, tmp_path / "refs", record_size)
    manifest = from_kerchunk_parquet(directory)
    fs = reference_fs(directory)
    reader = kvmap_reader(manifest)
    keys = fsspec_keys(directory)
    assert {"sub/u/0.0", "sub/u/.zarray", "s/0", "t/3.1", ".zmetadata"} <= set(keys)
    for key in keys:
        assert kvmap_bytes(reader, key) == fsspec_bytes(fs, key), key
    # Every key kvmap holds is one fsspec serves (nothing invented), and every reference is one entry.
    assert sorted({e.key for e in manifest.entries}) == keys


def test_import_entries_are_exact_windows_inline_and_relative_to_the_directory(
    source: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, refs = source
    directory = kerchunk_dir(refs, tmp_path / "refs", 4)
    manifest = from_kerchunk_parquet(directory)
    assert manifest.url == directory.as_uri() + "/"
    by_key = {e.key: e for e in manifest.entries}
    chunk = by_key["t/1.1"]
    assert (chunk.target, chunk.offset, chunk.length) == ("path", refs["t/1.1"][1], refs["t/1.1"][2])
    # The bare path kerchunk wrote is the local file, percent-encoded for kvmap ("data dir %41").
    assert chunk.path == "file://" + str(path).replace(" ", "%20").replace("%41", "%2541")
    assert by_key["s/0"].target == "data"  # inlined by kerchunk (raw)
    assert by_key["t/.zarray"].target == "data"
    assert json.loads(by_key["t/.zarray"].data or b"") == json.loads(refs["t/.zarray"])


def test_xarray_reads_the_imported_then_exported_directory(source: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, refs = source
    manifest = from_kerchunk_parquet(kerchunk_dir(refs, tmp_path / "refs", 3))
    out = tmp_path / "again"
    write_kerchunk_parquet(manifest, out, record_size=2)
    fs = reference_fs(out)
    with xr.open_dataset(path, engine="h5netcdf") as want:
        got = xr.open_zarr(fs.get_mapper(), consolidated=False, zarr_format=2)
        same_data(want, got)
    with xr.open_dataset(path, engine="h5netcdf", group="sub") as want:
        # (fsspec lists a nested group's arrays wrongly, so xarray cannot open the group: read the array.)
        u = zarr.open_array(fs.get_mapper("sub/u"), mode="r", zarr_format=2)
        np.testing.assert_array_equal(u[...], want.u.values)
    # .zmetadata is consolidated metadata to zarr: the default open works too.
    with xr.open_dataset(path, engine="h5netcdf") as want:
        same_data(want, xr.open_zarr(reference_fs(out).get_mapper(), zarr_format=2))


def kvmap_entries_from_kerchunk(refs: dict[str, Any]) -> list[dict[str, Any]]:
    """kerchunk JSON references as kvmap entries (the test's own small converter)."""
    entries: list[dict[str, Any]] = []
    for key, value in refs.items():
        if isinstance(value, str):
            data = base64.b64decode(value[7:]) if value.startswith("base64:") else value.encode()
            entries.append({"key": key, "data": base64.b64encode(data).decode()})
        elif len(value) == 1:
            entries.append({"key": key, "path": Path(value[0]).as_uri()})
        else:
            entries.append({"key": key, "path": Path(value[0]).as_uri(), "offset": value[1], "length": value[2]})
    return entries


@pytest.mark.parametrize("record_size", [1, 4, 10, 100_000])
def test_export_reads_back_in_fsspec_and_xarray(
    source: tuple[Path, dict[str, Any]], tmp_path: Path, record_size: int
) -> None:
    path, refs = source
    # The manifest sits next to the data (its origin: kvmap reads the file without an allow list).
    manifest = kvmap.Manifest.from_json(kvmap_entries_from_kerchunk(refs), url=(path.parent / "m.json").as_uri())
    out = tmp_path / "out"
    write_kerchunk_parquet(manifest, out, record_size=record_size)
    fs = reference_fs(out)
    reader = kvmap_reader(manifest)
    for key in fsspec_keys(out):
        if key != ".zmetadata":
            got, want = fsspec_bytes(fs, key), kvmap_bytes(reader, key)
            if key.rsplit("/", 1)[-1].startswith(".z"):
                assert got is not None, key
                assert want is not None, key
                assert json.loads(got) == json.loads(want), key
            else:
                assert got == want, key
    with xr.open_dataset(path, engine="h5netcdf") as original:
        same_data(original, xr.open_zarr(fs.get_mapper(), consolidated=False, zarr_format=2))
    # ... and the files kvmap writes import to the same references.
    again = kvmap.compile(from_kerchunk_parquet(out))
    for entry in manifest.entries:
        if not entry.key.rsplit("/", 1)[-1].startswith(".z"):
            found = again.resolve(entry.key)
            assert found is not None, entry.key
            assert (found.url, found.offset, found.length, found.data) == (
                entry.path,
                entry.offset,
                entry.length,
                entry.data,
            )


def test_exported_files_are_what_kerchunk_writes(source: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    _, refs = source
    files = dump_kerchunk_parquet(kvmap.Manifest.from_json(kvmap_entries_from_kerchunk(refs), url=None), record_size=3)
    theirs = kerchunk_dir(refs, tmp_path / "theirs", 3)
    assert sorted(files) == sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*") if p.is_file())
    header = json.loads(files[".zmetadata"])
    assert header["record_size"] == 3
    assert header["metadata"] == json.loads((theirs / ".zmetadata").read_bytes())["metadata"]
    (tmp_path / "f.parq").write_bytes(files["t/refs.0.parq"])
    meta = pq.read_metadata(tmp_path / "f.parq")
    assert meta.schema.names == ["path", "offset", "size", "raw"]
    assert meta.num_rows == 3  # padded to record_size, as kerchunk pads
    column = meta.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert column.statistics is None or not column.statistics.has_min_max


# -- missing chunks, files and rows --------------------------------------------------------------------


def test_missing_rows_and_files_are_absent(source: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, refs = source
    refs = dict(refs)
    del refs["t/1.1"]  # one row of a record that exists
    for i in range(3, 6):
        del refs[f"big/{i}"]  # with record_size 3: the whole of refs.1.parq is not written
    directory = kerchunk_dir(refs, tmp_path / "refs", 3)
    assert not (directory / "big" / "refs.1.parq").exists()
    manifest = from_kerchunk_parquet(directory)
    cm = kvmap.compile(manifest)
    for key in ("t/1.1", "big/3", "big/4", "big/5"):
        assert cm.resolve(key) is None
    reader, fs = kvmap_reader(manifest), reference_fs(directory)
    for key in fsspec_keys(directory):
        if cm.resolve(key) is not None:
            assert kvmap_bytes(reader, key) == fsspec_bytes(fs, key), key
    # kvmap's own files say "missing" in a way fsspec understands: xarray reads the fill value.
    out = tmp_path / "out"
    write_kerchunk_parquet(manifest, out, record_size=3)
    got = xr.open_zarr(reference_fs(out).get_mapper(), consolidated=False, zarr_format=2)
    with xr.open_dataset(path, engine="h5netcdf") as want:
        np.testing.assert_array_equal(got.big.values[:300], want.big.values[:300])
        np.testing.assert_array_equal(got.big.values[600:], want.big.values[600:])
        assert np.isnan(got.t.values[5:10, 5:10]).all()
        np.testing.assert_array_equal(got.t.values[:5], want.t.values[:5])


def test_short_file_rows_past_its_end_are_missing(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = {"a/.zarray": zarray([6], [1])}
    (tmp_path / ".zmetadata").write_text(json.dumps({"metadata": metadata, "record_size": 4}))
    (tmp_path / "a").mkdir()
    table = pa.table({"path": ["s3://b/x", None], "offset": [5, 0], "size": [1, 0], "raw": [None, b"r"]})
    pq.write_table(table, tmp_path / "a" / "refs.0.parq")
    cm = kvmap.compile(from_kerchunk_parquet(tmp_path))
    assert cm.resolve("a/0") == (cm.resolve("a/0").entry, "s3://b/x", 5, 1, None)  # type: ignore[union-attr]
    assert cm.resolve("a/1").data == b"r"  # type: ignore[union-attr]
    assert [cm.resolve(f"a/{i}") for i in range(2, 6)] == [None] * 4


# -- record sizes, 0-d arrays, nested groups, metadata precedence -----------------------------------


def zarray(shape: list[int], chunks: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "shape": shape,
        "chunks": chunks,
        "dtype": "<u1",
        "compressor": None,
        "fill_value": 0,
        "filters": None,
        "order": "C",
        "zarr_format": 2,
        **extra,
    }


def chunk_keys(name: str, grid: tuple[int, ...]) -> list[str]:
    if not grid:
        return [f"{name}/0"]
    return [f"{name}/{'.'.join(map(str, index))}" for index in product(*map(range, grid))]


@pytest.mark.parametrize(("record_size", "files"), [(1, 8), (4, 2), (8, 1), (3, 3), (100, 1)])
def test_record_sizes_place_every_chunk(tmp_path: Path, record_size: int, files: int) -> None:
    entries: list[dict[str, Any]] = [
        {"key": "g/v/.zarray", "json": zarray([4, 4], [1, 2])},
        {"key": "g/.zgroup", "json": {"zarr_format": 2}},
    ]
    keys = chunk_keys("g/v", (4, 2))
    entries += [{"key": k, "path": f"s3://b/{i}", "offset": i, "length": 1} for i, k in enumerate(keys)]
    manifest = kvmap.Manifest.from_json(entries, url=None)
    dumped = dump_kerchunk_parquet(manifest, record_size=record_size)
    assert len([n for n in dumped if n.startswith("g/v/refs.")]) == files
    write_kerchunk_parquet(manifest, tmp_path / "r", record_size=record_size)
    mapper = LazyReferenceMapper(str(tmp_path / "r"))
    for i, key in enumerate(keys):
        assert list(mapper[key]) == [f"s3://b/{i}", i, 1]
    cm = kvmap.compile(from_kerchunk_parquet(tmp_path / "r"))
    assert [cm.resolve(k).url for k in keys] == [f"s3://b/{i}" for i in range(8)]  # type: ignore[union-attr]


def test_zero_dimensional_and_empty_arrays(tmp_path: Path) -> None:
    entries = [
        {"key": "s/.zarray", "json": zarray([], [])},
        {"key": "s/0", "data": base64.b64encode(b"\x07").decode()},
        {"key": "e/.zarray", "json": zarray([0, 3], [2, 2])},  # an empty grid: no chunk, no file
        {"key": "w/.zarray", "json": zarray([3], [3])},
        {"key": "w/0", "path": "s3://b/whole"},  # a whole object
    ]
    files = dump_kerchunk_parquet(kvmap.Manifest.from_json(entries, url=None), record_size=5)
    assert sorted(files) == [".zmetadata", "s/refs.0.parq", "w/refs.0.parq"]
    write_kerchunk_parquet(kvmap.Manifest.from_json(entries, url=None), tmp_path / "r", record_size=5)
    mapper = LazyReferenceMapper(str(tmp_path / "r"))
    assert mapper["s/0"] == b"\x07"
    assert list(mapper["w/0"]) == ["s3://b/whole"]
    cm = kvmap.compile(drive(load("memory://refs/r"), files.get))
    assert cm.resolve("s/0").data == b"\x07"  # type: ignore[union-attr]
    assert cm.resolve("w/0")[1:4] == ("s3://b/whole", None, None)  # type: ignore[index]


def test_a_metadata_key_that_is_also_a_chunk_key_wins_as_in_fsspec(tmp_path: Path) -> None:
    metadata = {"a/.zarray": zarray([2], [1]), "a/1": {"not": "a chunk"}}
    (tmp_path / ".zmetadata").write_text(json.dumps({"metadata": metadata, "record_size": 10}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a").mkdir()
    pq.write_table(
        pa.table({"path": ["s3://b/0", "s3://b/1"], "offset": [0, 0], "size": [0, 0]}), tmp_path / "a" / "refs.0.parq"
    )
    mapper = LazyReferenceMapper(str(tmp_path))
    cm = kvmap.compile(from_kerchunk_parquet(tmp_path))
    assert cm.resolve("a/1").data == mapper["a/1"]  # type: ignore[union-attr]
    assert cm.resolve("a/0").url == "s3://b/0"  # type: ignore[union-attr]


# -- paths: fsspec reads them literally; kvmap decodes percent-escapes ------------------------------


def one_chunk_directory(paths: list[str | None], raws: list[bytes | None] | None = None) -> dict[str, bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(paths)
    metadata = {".zgroup": {"zarr_format": 2}, "a/.zarray": zarray([n], [1])}
    table = pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "offset": [7] * n,
            "size": [3] * n,
            "raw": pa.array(raws or [None] * n, pa.binary()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return {
        ".zmetadata": json.dumps({"metadata": metadata, "record_size": n}).encode(),
        "a/refs.0.parq": sink.getvalue().to_pybytes(),
    }


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/d/a b%20.nc", "file:///d/a%20b%2520.nc"),
        ("file:///d/x?.nc", "file:///d/x%3F.nc"),
        ("local:///d/x.nc", "file:///d/x.nc"),
        ("s3://bucket/k%41|#é", "s3://bucket/k%2541%7C%23%C3%A9"),
        ("s3a://bucket/k", "s3://bucket/k"),
        ("gcs://bucket/k y", "gs://bucket/k%20y"),
        ("abfs://container/k", "az://container/k"),
        ("https://host/x|y?q=1", "https://host/x%7Cy?q=1"),
        ("https://host/a%20b", "https://host/a%20b"),
        ("sub/x y:1.nc", "memory://refs/r/sub/x%20y%3A1.nc"),  # relative: inside the directory
        ("file://sub/x.nc", "memory://refs/r/sub/x.nc"),
        ("../x.nc", "memory://refs/x.nc"),
    ],
)
def test_paths_become_the_urls_of_the_objects_fsspec_reads(path: str, url: str) -> None:
    cm = kvmap.compile(drive(load("memory://refs/r"), one_chunk_directory([path]).get))
    assert cm.resolve("a/0")[1:4] == (url, 7, 3)  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("memory://x/y", "process-global"),
        ("simplecache::s3://b/x", "chained"),
        ("ftp://h/x", "does not read"),
        ("abfs://c@account.blob/k", "storage account"),
        ("~/x.nc", "home directory"),
        ("data:,abc", "data: URL"),
        ("", "is empty"),
    ],
)
def test_paths_kvmap_cannot_read_are_refused_naming_the_row(path: str, words: str) -> None:
    with pytest.raises(ManifestError, match=words) as info:
        drive(load("s3://b/refs"), one_chunk_directory(["s3://b/ok", path]).get)
    assert (info.value.manifest, info.value.entry, info.value.field) == ("s3://b/refs/a/refs.0.parq", 1, "path")
    assert "'a/1'" in info.value.reason


@pytest.mark.parametrize(
    ("url", "written"),
    [
        ("file:///d/a%20b%2520.nc", "file:///d/a b%20.nc"),
        ("s3://bucket/k%2541%7C%23%C3%A9", "s3://bucket/k%41|#é"),
        ("https://host/x%7Cy", "https://host/x%7Cy"),
        ("x.nc", "s3://b/refs/x.nc"),  # relative to the manifest: written absolute
    ],
)
def test_export_writes_paths_as_fsspec_reads_them(url: str, written: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries = [{"key": "a/.zarray", "json": zarray([1], [1])}, {"key": "a/0", "path": url, "offset": 1, "length": 2}]
    files = dump_kerchunk_parquet(kvmap.Manifest.from_json(entries, url="s3://b/refs/m.json"))
    table = pq.read_table(pa.BufferReader(files["a/refs.0.parq"]))
    assert table.column("path").to_pylist()[0] == written
    again = kvmap.compile(drive(load("s3://b/refs"), files.get)).resolve("a/0")
    assert again is not None
    assert again.url == (url if "://" in url else "s3://b/refs/x.nc")


def test_bare_absolute_export_round_trip_reads_the_file(tmp_path: Path) -> None:
    target = tmp_path / "d %41 é" / "x.bin"
    target.parent.mkdir()
    target.write_bytes(b"0123456789")
    url = target.as_uri()
    entries = [{"key": "a/.zarray", "json": zarray([1], [1])}, {"key": "a/0", "path": url, "offset": 2, "length": 3}]
    write_kerchunk_parquet(kvmap.Manifest.from_json(entries, url=None), tmp_path / "r")
    assert reference_fs(tmp_path / "r").cat_file("a/0") == b"234"
    assert kvmap_bytes(kvmap_reader(from_kerchunk_parquet(tmp_path / "r")), "a/0") == b"234"


def test_raw_values_starting_with_base64_are_decoded_as_fsspec_does(tmp_path: Path) -> None:
    payload = b"base64:" + base64.b64encode(b"\x00secret")
    files = one_chunk_directory([None, None], [payload, b"plain"])
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    fs = reference_fs(tmp_path)
    cm = kvmap.compile(from_kerchunk_parquet(tmp_path))
    assert cm.resolve("a/0").data == fs.cat_file("a/0") == b"\x00secret"  # type: ignore[union-attr]
    # Inline bytes that start with "base64:" are written so that fsspec reads them back unchanged.
    literal = b"base64:not encoded"
    entries = [
        {"key": "a/.zarray", "json": zarray([1], [1])},
        {"key": "a/0", "data": base64.b64encode(literal).decode()},
    ]
    write_kerchunk_parquet(kvmap.Manifest.from_json(entries, url=None), tmp_path / "out")
    assert reference_fs(tmp_path / "out").cat_file("a/0") == literal
    assert kvmap.compile(from_kerchunk_parquet(tmp_path / "out")).resolve("a/0").data == literal  # type: ignore[union-attr]


# -- errors name the document, the row and the column -------------------------------------------------


def test_no_zmetadata_is_not_such_a_directory(tmp_path: Path) -> None:
    assert drive(load("file:///x/refs"), {}.get) is None
    with pytest.raises(FileNotFoundError):
        from_kerchunk_parquet(tmp_path)


@pytest.mark.parametrize(
    ("zmetadata", "field", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"metadata": {}, "record_size": 0}', "record_size", "positive integer"),
        (b'{"metadata": [], "record_size": 5}', "metadata", "object"),
        (b'{"metadata": {"a/.zarray": {"shape": [2], "chunks": [0]}}, "record_size": 5}', "a/.zarray", "chunks"),
        (b'{"metadata": {"../a/.zarray": {"shape": [2], "chunks": [1]}}, "record_size": 5}', "../a/.zarray", "'..'"),
        (
            b'{"metadata": {"a/.zarray": {"shape": [2, 2], "chunks": [1, 1], "dimension_separator": "/"}},'
            b' "record_size": 5}',
            "a/.zarray",
            "dimension_separator",
        ),
    ],
)
def test_bad_zmetadata_is_reported(zmetadata: bytes, field: str | None, words: str) -> None:
    with pytest.raises(ManifestError, match=words) as info:
        drive(load("s3://b/refs"), {".zmetadata": zmetadata}.get)
    assert (info.value.manifest, info.value.entry, info.value.field) == ("s3://b/refs/.zmetadata", None, field)


def test_bad_rows_are_reported_with_file_row_and_column() -> None:
    files = one_chunk_directory(["s3://b/x", ""])
    with pytest.raises(ManifestError, match="'a/1': path '' is refused: is empty") as info:
        drive(load("s3://b/refs"), files.get)
    assert (info.value.manifest, info.value.entry, info.value.field) == ("s3://b/refs/a/refs.0.parq", 1, "path")
    with pytest.raises(ManifestError, match="relative path") as info:
        drive(load(None), one_chunk_directory(["s3://b/x", "y.nc"]).get)
    assert (info.value.manifest, info.value.entry, info.value.field) == ("<references>/a/refs.0.parq", 1, "path")
    with pytest.raises(ManifestError, match="not a readable parquet file") as info:
        drive(load("s3://b/refs"), {**files, "a/refs.0.parq": b"PAR1 garbage"}.get)
    assert info.value.manifest == "s3://b/refs/a/refs.0.parq"


def test_negative_and_missing_windows_are_reported() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    header = json.dumps({"metadata": {"a/.zarray": zarray([3], [1])}, "record_size": 3}).encode()
    for table, column, row in [
        (pa.table({"path": ["s3://x", "s3://x", None], "offset": [0, -4, 0], "size": [1, 1, 0]}), "offset", 1),
        (
            pa.table({"path": ["s3://x", None, "s3://x"], "offset": [0, 0, 0], "size": pa.array([1, 0, None])}),
            "size",
            2,
        ),
        (pa.table({"path": ["s3://x", None, None]}), "offset", 0),
    ]:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        with pytest.raises(ManifestError) as info:
            drive(load("s3://b/refs"), {".zmetadata": header, "a/refs.0.parq": sink.getvalue().to_pybytes()}.get)
        assert (info.value.entry, info.value.field) == (row, column)
        assert f"'a/{row}'" in info.value.reason


def test_missing_pyarrow_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # the import system then raises ImportError
    header = json.dumps({"metadata": {}, "record_size": 1}).encode()
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvmap\[parquet\]'"):
        drive(load("s3://b/refs"), {".zmetadata": header}.get)
    with pytest.raises(MissingDependencyError):
        dump_kerchunk_parquet(kvmap.Manifest.from_json([], url=None))


# -- export refusals name the entry -------------------------------------------------------------------

_ARRAY = {"key": "a/.zarray", "json": zarray([4, 4], [2, 2])}


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"prefix": "a/", "path": "s3://b/a/"}, "prefix", "materialize"),
        ({"min": "a/0", "max": "a/9", "path": "s3://b/a/"}, "min", "prefix or range"),
        ({"key": "zarr.json", "json": {"zarr_format": 3}}, "key", "zarr v3"),
        ({"key": "a/c/0/0", "path": "s3://b/x"}, "key", "zarr v3 chunk key"),
        ({"key": "v/c/0", "path": "s3://b/x"}, "key", "zarr v3 chunk key"),
        ({"key": "a/0/1", "path": "s3://b/x"}, "key", "'/'-separated"),
        ({"key": "a/2.0", "path": "s3://b/x"}, "key", "outside its array's chunk grid"),
        ({"key": "a/01.0", "path": "s3://b/x"}, "key", "not a chunk key"),
        ({"key": "a/0", "path": "s3://b/x"}, "key", "not a chunk key"),
        ({"key": "other/0", "path": "s3://b/x"}, "key", "neither metadata nor"),
        ({"key": "a/0.0", "path": "s3://b/x.zip|zip:m"}, "path", "pipeline"),
        ({"key": "a/0.0", "path": "s3://b/x", "offset": 0, "length": 0}, "length", "whole object"),
        ({"key": "a/0.0", "path": "s3://b/x", "length": 0}, "length", "whole object"),
        ({"key": "a/0.0", "path": "s3://b/x", "offset": 5}, "length", "needs the length"),
        ({"key": "a/0.0", "path": "s3+https://h/b/x", "offset": 1, "length": 1}, "path", "S3 endpoint"),
        ({"key": "a/0.0", "path": "memory://store/x"}, "path", "memory file system"),
        ({"key": "a/0.0", "path": "ftp://h/x"}, "path", "does not read"),
        ({"key": "a/.zattrs", "path": "s3://b/.zattrs"}, "path", "inline JSON"),
        ({"key": "a/.zattrs", "data": base64.b64encode(b"\xff").decode()}, "data", "not JSON"),
    ],
)
def test_export_refuses_what_the_layout_cannot_hold(entry: dict[str, Any], field: str, words: str) -> None:
    manifest = kvmap.Manifest.from_json([_ARRAY, {"key": "a/1.1", "path": "s3://b/ok"}, entry], url=None, name="m")
    with pytest.raises(ConvertError, match=words) as info:
        dump_kerchunk_parquet(manifest)
    assert (info.value.manifest, info.value.entry, info.value.field) == ("m", 2, field)
    if "key" in entry:
        assert repr(entry["key"]) in info.value.reason


def test_a_root_array_keeps_its_metadata_and_has_no_chunk_files() -> None:
    # fsspec finds chunks by their array's directory; a root array (".zarray" at the top) has none.
    root = {"key": ".zarray", "json": zarray([2], [1])}
    with pytest.raises(ConvertError, match="root array") as info:
        dump_kerchunk_parquet(kvmap.Manifest.from_json([root, {"key": "0", "path": "s3://b/x"}], url=None))
    assert (info.value.entry, info.value.field) == (1, "key")
    files = dump_kerchunk_parquet(kvmap.Manifest.from_json([root], url=None))
    assert sorted(files) == [".zmetadata"]
    cm = kvmap.compile(drive(load("s3://b/refs"), files.get))
    assert json.loads(cm.resolve(".zarray").data or b"")["shape"] == [2]  # type: ignore[union-attr]
    assert cm.resolve("0") is None


def test_export_keeps_the_last_entry_of_a_key_and_drops_whiteouts() -> None:
    entries = [
        _ARRAY,
        {"key": "a/0.0", "path": "s3://b/old", "offset": 1, "length": 1},
        {"key": "a/0.0", "path": "s3://b/new", "offset": 2, "length": 2},
        {"key": "a/1.1", "path": "s3://b/gone"},
        {"key": "a/1.1", "path": None},
        {"key": "a/0/0", "path": "s3://b/bad"},
        {"key": "a/0/0", "path": None},  # a refused key that a whiteout removes is fine
        {"key": ".zmetadata", "json": {"stale": True}},  # the directory's own file is rewritten
    ]
    files = dump_kerchunk_parquet(kvmap.Manifest.from_json(entries, url=None))
    cm = kvmap.compile(drive(load("s3://b/refs"), files.get))
    assert cm.resolve("a/0.0")[1:4] == ("s3://b/new", 2, 2)  # type: ignore[index]
    assert cm.resolve("a/1.1") is None
    assert "stale" not in json.loads(files[".zmetadata"])


def test_export_refuses_a_bad_record_size() -> None:
    with pytest.raises(ConvertError, match="record_size"):
        dump_kerchunk_parquet(kvmap.Manifest.from_json([], url=None), record_size=0)


# -- writing a directory -------------------------------------------------------------------------------


def test_write_refuses_a_directory_with_files_and_leaves_nothing_behind(tmp_path: Path) -> None:
    manifest = kvmap.Manifest.from_json([{"key": ".zgroup", "json": {"zarr_format": 2}}], url=None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(SaveError, match="not empty"):
        write_kerchunk_parquet(manifest, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["keep"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaveError, match="not a directory"):
        write_kerchunk_parquet(manifest, tmp_path / "file")
    with pytest.raises(SaveError):
        write_kerchunk_parquet(manifest, tmp_path / "no" / "parent")
    bad = kvmap.Manifest.from_json([{"prefix": "", "path": "s3://b/"}], url=None)
    with pytest.raises(ConvertError):
        write_kerchunk_parquet(bad, tmp_path / "new")
    (tmp_path / "empty").mkdir()
    write_kerchunk_parquet(manifest, tmp_path / "empty")  # an empty directory is replaced
    assert sorted(os.listdir(tmp_path)) == ["empty", "file", "full"]  # no temporary directory left
    assert os.listdir(tmp_path / "empty") == [".zmetadata"]


# -- the round trip: Manifest -> parquet -> Manifest resolves every key the same -----------------------


@st.composite
def reference_sets(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str], int]:
    """Random zarr v2 arrays (0-3 dimensions, nested or not) and a random subset of their chunks,
    each a window, a whole object or inline bytes; the entries, every key to check, a record size."""
    entries: list[dict[str, Any]] = [{"key": ".zgroup", "json": {"zarr_format": 2}}]
    keys = [".zgroup"]
    names = draw(st.lists(st.sampled_from(["a", "b", "g/c", "g/h/d"]), min_size=1, max_size=3, unique=True))
    for name in names:
        ndim = draw(st.integers(0, 3))
        shape = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
        chunks = [draw(st.integers(1, max(1, s))) for s in shape]
        entries.append({"key": f"{name}/.zarray", "json": zarray(shape, chunks)})
        entries.append({"key": f"{name}/.zattrs", "json": {"name": name, "slash": "x/y", "f": 0.1}})
        grid = tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))
        all_keys = chunk_keys(name, grid) if math.prod(grid) else []
        keys += [f"{name}/.zarray", f"{name}/.zattrs", *all_keys]
        for key in all_keys:
            kind = draw(st.sampled_from(["missing", "window", "whole", "inline", "json"]))
            url = draw(st.sampled_from(["s3://bkt/f.nc", "file:///d/a%20b.nc", "https://h/x.nc", "rel/x%25.nc"]))
            if kind == "window":
                entries.append(
                    {
                        "key": key,
                        "path": url,
                        "offset": draw(st.integers(0, 2**40)),
                        "length": draw(st.integers(1, 2**30)),
                    }
                )
            elif kind == "whole":
                entries.append({"key": key, "path": url})
            elif kind == "inline":
                data = draw(st.binary(max_size=8) | st.just(b"base64:QUJD"))
                entries.append({"key": key, "data": base64.b64encode(data).decode()})
            elif kind == "json":
                entries.append({"key": key, "json": draw(st.integers(-(2**53), 2**53) | st.text(max_size=3))})
    order = draw(st.permutations(range(len(entries))))
    return [entries[i] for i in order], keys, draw(st.integers(1, 10))


def resolved(cm: kvmap.CompiledMap, key: str) -> Any:
    found = cm.resolve(key)
    if found is None:
        return None
    if key.rsplit("/", 1)[-1].startswith(".z"):
        return ("json", json.loads(found.data or b""))  # metadata: compared by value (fsspec re-serializes)
    return (found.url, found.offset, found.length, found.data)


@settings(max_examples=60, deadline=None)
@given(reference_sets())
def test_round_trip_resolves_every_key_the_same(case: tuple[list[dict[str, Any]], list[str], int]) -> None:
    entries, keys, record_size = case
    manifest = kvmap.Manifest.from_json(entries, url="s3://bkt/refs/m.json")
    files = dump_kerchunk_parquet(manifest, record_size=record_size)
    again = drive(load("s3://bkt/refs"), files.get)
    before, after = kvmap.compile(manifest), kvmap.compile(again)
    for key in keys:
        assert resolved(after, key) == resolved(before, key), key


@settings(max_examples=15, deadline=None)
@given(reference_sets())
def test_fsspec_reads_every_exported_reference(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[list[dict[str, Any]], list[str], int]
) -> None:
    entries, keys, record_size = case
    manifest = kvmap.Manifest.from_json(entries, url="s3://bkt/refs/m.json")
    directory = tmp_path_factory.mktemp("r") / "refs"
    write_kerchunk_parquet(manifest, directory, record_size=record_size)
    mapper = LazyReferenceMapper(str(directory))
    cm = kvmap.compile(manifest)
    for key in keys:
        found = cm.resolve(key)
        if key.rsplit("/", 1)[-1].startswith(".z"):
            assert json.loads(mapper[key]) == json.loads(found.data or b""), key  # type: ignore[union-attr]
        elif found is None:
            with pytest.raises(KeyError):
                mapper[key]
        elif found.data is not None:
            got = mapper[key]
            assert (base64.b64decode(got[7:]) if got.startswith(b"base64:") else got) == found.data, key
        else:
            ref = [str(v) if i == 0 else int(v) for i, v in enumerate(mapper[key])]
            url = found.url.replace("%20", " ").replace("%25", "%")
            assert ref == ([url] if found.offset is None else [url, found.offset, found.length]), key
