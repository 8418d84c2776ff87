"""kvmap.concat: virtual concatenation of zarr arrays, read back through zarr and xarray.

Every source is a real zarr array written to a local directory (or kerchunk references and
manifests pointing at one); the result is read with zarr.open_array on a KVMapStore.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.concat import ConcatError, concatenate, concatenate_datasets
from kvmap.places import place_url


def _write(path: Path, data: np.ndarray, chunks: tuple[int, ...], fmt: int, **kw: Any) -> str:
    """A zarr array at ``path`` holding ``data`` (chunks equal to the fill value are not written)."""
    a = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=fmt, **kw)
    a[...] = data
    return str(path) + "/"


def _read(m: kvmap.Manifest, root: Path) -> np.ndarray:
    store = kvmap.KVMapStore(m, read_only=True, allow=[place_url(str(root) + "/")])
    return np.asarray(zarr.open_array(store, mode="r")[...])


def _chunk_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")]


def _kerchunk(array_dir: Path, refs_path: Path, var: str, inline_first: bool) -> str:
    """kerchunk references to a zarr v2 array: its chunks appended into one file, each named by a
    byte window of it (the first inline, base64, when ``inline_first``)."""
    blob = refs_path.with_suffix(".bin")
    refs: dict[str, Any] = {}
    offset = 0
    with open(blob, "wb") as out:
        for i, p in enumerate(sorted(_chunk_files(array_dir))):
            key = f"{var}/{p.relative_to(array_dir).as_posix()}"
            data = p.read_bytes()
            if inline_first and i == 0:
                refs[key] = "base64:" + base64.b64encode(data).decode()
                continue
            out.write(data)
            refs[key] = [blob.name, offset, len(data)]
            offset += len(data)
    for name in (".zarray", ".zattrs"):
        if (array_dir / name).exists():
            refs[f"{var}/{name}"] = (array_dir / name).read_text()
    refs_path.write_text(json.dumps({"version": 1, "refs": refs}))
    return f"{refs_path}|kerchunk:{var}/"


@st.composite
def _cases(draw: st.DrawFn) -> dict[str, Any]:
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    chunks = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    base = draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim))
    n = draw(st.integers(1, 4))
    lengths = [draw(st.integers(0, 2)) * chunks[axis % ndim] for _ in range(n - 1)] + [draw(st.integers(0, 6))]
    fmt = draw(st.sampled_from([2, 3]))
    separator = draw(st.sampled_from(["/", "."]))
    v3_encoding = draw(st.sampled_from(["default", "v2"]))
    kinds = draw(st.lists(st.sampled_from(["native", "manifest", "pipeline", "kerchunk"]), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    return dict(
        ndim=ndim,
        axis=axis,
        chunks=chunks,
        base=base,
        lengths=lengths,
        fmt=fmt,
        separator=separator,
        v3_encoding=v3_encoding,
        kinds=kinds,
        seed=seed,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_reading_the_concatenation_equals_numpy_concatenate(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(case["seed"])
    axis, fmt, sep = case["axis"], case["fmt"], case["separator"]
    kw: dict[str, Any] = {"fill_value": 0}
    if fmt == 2:
        kw["chunk_key_encoding"] = {"name": "v2", "separator": sep}
    else:
        kw["chunk_key_encoding"] = {"name": case["v3_encoding"], "separator": sep}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(os.path.realpath(tmp))
        datas, sources, chunk_count = [], [], 0
        for i, (length, kind) in enumerate(zip(case["lengths"], case["kinds"], strict=True)):
            shape = list(case["base"])
            shape[axis] = length
            # Mostly zeros (the fill value): some chunks are never written and must stay missing.
            data = (rng.integers(0, 3, size=shape) * (rng.random(shape) < 0.4)).astype("i2")
            datas.append(data)
            path = root / f"s{i}.zarr"
            directory = _write(path, data, case["chunks"], fmt, **kw)
            chunk_count += len(_chunk_files(path))
            if kind == "kerchunk" and fmt == 2:
                sources.append(_kerchunk(path, root / f"s{i}.json", "v", inline_first=i % 2 == 0))
            elif kind == "manifest":
                m = kvmap.compose({"v": f"s{i}.zarr/"}, url=place_url(str(root / f"m{i}.json")))
                sources.append((m, "v/"))
            elif kind == "pipeline":
                m = kvmap.compose({"v": f"s{i}.zarr/"}, url=place_url(str(root / f"m{i}.json")))
                m.save(root / f"m{i}.json")
                sources.append(f"{root}/m{i}.json|kvmap:v/")
            else:
                sources.append(directory)
        m = concatenate(sources, axis=axis)
        entries = m.to_json()["entries"]
        metadata = 1 if fmt == 3 else 2
        assert len(entries) == metadata + chunk_count  # one entry per existing chunk: none for missing ones
        np.testing.assert_array_equal(_read(m, root), np.concatenate(datas, axis=axis))


def test_v3_keys_are_renumbered_and_point_at_the_chunk_objects(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.zarr", np.arange(8, dtype="f4").reshape(4, 2), (2, 2), 3)
    b = _write(tmp_path / "b.zarr", np.arange(6, dtype="f4").reshape(3, 2), (2, 2), 3)
    m = concatenate([a, Path(b)], axis=0)
    got = {e["key"]: e for e in m.to_json()["entries"]}
    assert sorted(got) == ["c/0/0", "c/1/0", "c/2/0", "c/3/0", "zarr.json"]
    assert got["c/3/0"] == {"key": "c/3/0", "path": place_url(str(tmp_path / "b.zarr" / "c" / "1" / "0"))}
    assert got["zarr.json"]["json"]["shape"] == [7, 2]
    np.testing.assert_array_equal(_read(m, tmp_path)[4:], np.arange(6).reshape(3, 2))


def test_v2_dimension_separator_is_kept(tmp_path: Path) -> None:
    kw = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    a = _write(tmp_path / "a.zarr", np.ones((2, 3), "u1"), (2, 3), 2, **kw)
    b = _write(tmp_path / "b.zarr", np.zeros((2, 3), "u1") + 2, (2, 3), 2, **kw)
    m = concatenate([a, b], axis=-1)
    keys = [e["key"] for e in m.to_json()["entries"]]
    assert keys == [".zarray", ".zattrs", "0/0", "0/1"]
    assert _read(m, tmp_path).tolist() == [[1, 1, 1, 2, 2, 2]] * 2


def test_kerchunk_windows_and_inline_chunks_are_carried_over(tmp_path: Path) -> None:
    a = tmp_path / "a.zarr"
    _write(a, np.arange(4, dtype="i4"), (2,), 2)
    refs = _kerchunk(a, tmp_path / "refs.json", "x", inline_first=True)
    b = _write(tmp_path / "b.zarr", np.arange(3, dtype="i4") + 10, (2,), 2)
    m = concatenate([refs, b])
    got = {e["key"]: e for e in m.to_json()["entries"]}
    assert "data" in got["0"]  # inline in the references: inline in the result
    assert got["1"]["path"] == place_url(str(tmp_path / "refs.bin"))
    assert got["1"]["length"] == (a / "1").stat().st_size
    assert got["2"]["path"].endswith("/b.zarr/0")
    assert _read(m, tmp_path).tolist() == [0, 1, 2, 3, 10, 11, 12]


def test_sharded_sources_must_end_on_a_shard_boundary(tmp_path: Path) -> None:
    def sharded(name: str, n: int) -> str:
        a = zarr.create_array(str(tmp_path / name), shape=(n,), chunks=(2,), shards=(4,), dtype="i8")
        a[...] = np.arange(n)
        return str(tmp_path / name) + "/"

    ok = concatenate([sharded("a.zarr", 8), sharded("b.zarr", 5)])
    assert _read(ok, tmp_path).tolist() == [*range(8), *range(5)]
    assert [e.get("key") for e in ok.to_json()["entries"]] == ["zarr.json", "c/0", "c/1", "c/2", "c/3"]
    with pytest.raises(ConcatError, match=r"source 0 .*6 long along axis 0, not a multiple of its shard length 4"):
        concatenate([sharded("c.zarr", 6), sharded("d.zarr", 4)])


def _refused(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], match: str, source: int | None = 1, **kw: Any
) -> None:
    def make(name: str, spec: dict[str, Any]) -> str:
        spec = {"shape": (4, 2), "chunks": (2, 2), "dtype": "i4", **spec}
        fmt = spec.pop("zarr_format", 3)
        zarr.create_array(str(tmp_path / name), zarr_format=fmt, **spec)[...] = 1
        return str(tmp_path / name) + "/"

    with pytest.raises(ConcatError, match=match) as info:
        concatenate([make("a.zarr", first), make("b.zarr", second)], **kw)
    assert info.value.source == source


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        ({}, {"dtype": "i8"}, r"source 1 \(file://.*/b.zarr/\): its data_type 'int64' differs .* 'int32'"),
        ({}, {"chunks": (1, 2)}, "its chunk_grid"),
        ({}, {"fill_value": 7}, "its fill_value 7 differs from the first source's 0"),
        ({}, {"compressors": None}, "its codecs"),
        ({}, {"dimension_names": ["t", "x"]}, "its dimension_names"),
        ({}, {"chunk_key_encoding": {"name": "default", "separator": "."}}, "its chunk_key_encoding"),
        ({}, {"zarr_format": 2}, "zarr v2 array, but the first source is zarr v3"),
        ({}, {"shape": (4, 3)}, r"its shape \[4, 3\] differs from the first source's \[4, 2\] off axis 0"),
        ({}, {"attributes": {"units": "K"}}, "its attribute 'units' .* the values would mean different things"),
        ({"zarr_format": 2}, {"zarr_format": 2, "order": "F"}, "its order 'F' differs"),
        ({"zarr_format": 2}, {"zarr_format": 2, "compressors": None}, "its compressor None differs"),
    ],
)
def test_sources_that_differ_are_refused_naming_the_source(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], match: str
) -> None:
    _refused(tmp_path, first, second, match)


def test_only_the_last_source_may_end_inside_a_chunk(tmp_path: Path) -> None:
    match = "source 0 .*3 long along axis 0, not a multiple of its chunk length 2: only the last source"
    _refused(tmp_path, {"shape": (3, 2)}, {}, match, source=0)


@pytest.mark.parametrize("axis", [2, -3, 1.0, True])
def test_a_bad_axis_is_refused(tmp_path: Path, axis: Any) -> None:
    _refused(tmp_path, {}, {}, "axis", source=None, axis=axis)


def test_what_is_not_an_array_is_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.zarr", np.ones(2), (2,), 3)
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(ConcatError, match=r"source 1 .*: it is a zarr 'group' node, not an array"):
        concatenate([a, str(tmp_path / "g.zarr")])
    with pytest.raises(ConcatError, match=r"source 1 .*no zarr array metadata there.*'m\.json\|kvmap:PATH/'"):
        concatenate([a, str(tmp_path / "nothing")])
    with pytest.raises(ConcatError, match="no arrays to concatenate"):
        concatenate([])
    with pytest.raises(TypeError, match="a sequence of sources"):
        concatenate(a)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source 1"):
        concatenate([a, 3])  # type: ignore[list-item]


def test_attributes_equal_in_every_source_are_kept(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.zarr", np.ones(2), (2,), 3, attributes={"title": "x", "source": "a", "units": "K"})
    b = _write(tmp_path / "b.zarr", np.ones(2), (2,), 3, attributes={"title": "x", "source": "b", "units": "K"})
    merged = concatenate([a, b]).to_json()["entries"][0]["json"]["attributes"]
    assert merged == {"title": "x", "units": "K"}
    given_ = concatenate([a, b], attributes={"title": "joined"}).to_json()["entries"][0]["json"]["attributes"]
    assert given_ == {"title": "joined"}


def test_nan_fill_values_compare_equal_and_stay_readable(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.zarr", np.array([1.0, np.nan]), (2,), 2, fill_value=np.nan)
    b = _write(tmp_path / "b.zarr", np.array([np.nan, 2.0]), (2,), 2, fill_value=np.nan)
    np.testing.assert_array_equal(_read(concatenate([a, b]), tmp_path), [1.0, np.nan, np.nan, 2.0])


def test_the_error_pickles() -> None:
    e = pickle.loads(pickle.dumps(ConcatError("why", 2, "s3://b/x/")))
    assert (str(e), e.source, e.label) == ("source 2 (s3://b/x/): why", 2, "s3://b/x/")


def test_a_policy_outside_the_origin_of_a_manifest_source_holds(tmp_path: Path) -> None:
    _write(tmp_path / "data" / "a.zarr", np.ones(2), (2,), 3)
    m = kvmap.Manifest.from_json(
        {"kvmap": 1, "entries": [{"prefix": "v/", "path": place_url(str(tmp_path / "data" / "a.zarr")) + "/"}]},
        url=place_url(str(tmp_path / "views" / "m.json")),
    )
    with pytest.raises(kvmap.PolicyError):
        concatenate([(m, "v/")])
    ok = concatenate([(m, "v/")], allow=[place_url(str(tmp_path)) + "/"])
    assert _read(ok, tmp_path).tolist() == [1.0, 1.0]


# -- datasets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [2, 3])
def test_xarray_opens_a_concatenated_dataset_with_its_coordinates(tmp_path: Path, fmt: int) -> None:
    xr = pytest.importorskip("xarray")
    lat = np.array([10.0, 20.0, 30.0])
    parts = []
    for i, n in enumerate([4, 4, 3]):
        time = np.arange(n) + 4 * i
        parts.append(
            xr.Dataset(
                {
                    "t": (("time", "lat"), np.arange(n * 3, dtype="f4").reshape(n, 3) + 100 * i, {"units": "K"}),
                    "p": (("lat", "time"), np.ones((3, n)) * i),
                    "elevation": ("lat", lat * 2),
                },
                coords={"time": time, "lat": lat},
                attrs={"title": "run", "part": i},
            )
        )
    encoding = {"t": {"chunks": (2, 3)}, "p": {"chunks": (3, 2)}, "time": {"chunks": (2,)}}
    paths = []
    for i, ds in enumerate(parts):
        path = tmp_path / f"part{i}.zarr"
        ds.to_zarr(str(path), zarr_format=fmt, consolidated=False, encoding=encoding)
        paths.append(str(path) + "/")
    m = concatenate_datasets(paths, dim="time")
    store = kvmap.KVMapStore(m, read_only=True, allow=[place_url(str(tmp_path)) + "/"])
    got = xr.open_zarr(store, consolidated=False)
    want = xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override")
    want.attrs = {"title": "run"}  # "part" differs between the groups: dropped
    xr.testing.assert_identical(got.compute(), want)


def test_datasets_that_differ_are_refused(tmp_path: Path) -> None:
    g1, g2 = zarr.open_group(str(tmp_path / "g1"), mode="w"), zarr.open_group(str(tmp_path / "g2"), mode="w")
    g1.create_array("x", shape=(2,), chunks=(2,), dtype="i1", dimension_names=["time"])
    g2.create_array("y", shape=(2,), chunks=(2,), dtype="i1", dimension_names=["time"])
    with pytest.raises(ConcatError, match=r"source 1 .*its arrays \['y'\] differ from group 0's \['x'\]"):
        concatenate_datasets([str(tmp_path / "g1"), str(tmp_path / "g2")], dim="time")
    with pytest.raises(ConcatError, match="no array of group 0 has a dimension 'depth'"):
        concatenate_datasets([str(tmp_path / "g1"), str(tmp_path / "g1")], dim="depth")
    g1.create_group("sub")
    with pytest.raises(ConcatError, match="it holds a subgroup 'sub'"):
        concatenate_datasets([str(tmp_path / "g1")], dim="time")
