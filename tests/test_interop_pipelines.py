"""Every format read in place through its pipeline adapter — `Reader`, `KVMapStore`, xarray and
every CLI command — and converted with `kvmap convert`, on real netCDF4/HDF5 files referenced by
kerchunk's own tools (issue 13 §2, §3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import kvmap

kerchunk_hdf = pytest.importorskip("kerchunk.hdf")


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], xr.Dataset]:
    """A netCDF4 file, and kerchunk's references to it (bare absolute paths, as kerchunk writes)."""
    d = tmp_path_factory.mktemp("nc data")
    ds = xr.Dataset(
        {"t": (("y", "x"), np.arange(48, dtype="f4").reshape(6, 8), {"units": "K"})},
        coords={"y": np.arange(6), "x": np.arange(8) * 0.5},
        attrs={"title": "interop"},
    )
    nc = d / "t.nc"
    ds.to_netcdf(nc, engine="h5netcdf", encoding={"t": {"chunksizes": (3, 4)}})
    made = kerchunk_hdf.SingleHdf5ToZarr(str(nc), inline_threshold=0).translate()
    (d / "refs.json").write_text(json.dumps(made))
    return d, made, ds


def _open(store: object) -> xr.Dataset:
    return xr.open_zarr(store, zarr_format=2, consolidated=False)  # type: ignore[arg-type]


def test_kerchunk_json_reads_in_place_through_every_door(refs: tuple[Path, dict[str, object], xr.Dataset]) -> None:
    d, made, ds = refs
    target = f"{d / 'refs.json'}|kerchunk:"
    reader = kvmap.Reader(target)
    chunk = next(k for k in made["refs"] if k.startswith("t/") and not k.endswith((".zarray", ".zattrs")))  # type: ignore[attr-defined]
    url, offset, length = made["refs"][chunk]  # type: ignore[index]
    with open(url, "rb") as f:
        f.seek(offset)
        assert reader.get_sync(chunk) == f.read(length)
    xr.testing.assert_identical(_open(kvmap.KVMapStore(target)).load(), ds)
    for cmd in (["cat", target, chunk], ["resolve", target, chunk], ["explain", target, chunk], ["validate", target]):
        run = subprocess.run([sys.executable, "-m", "kvmap", *cmd], capture_output=True, check=False)
        assert run.returncode == 0, run.stderr
    assert subprocess.run(
        [sys.executable, "-m", "kvmap", "cat", target, chunk], capture_output=True, check=True
    ).stdout == reader.get_sync(chunk)


def test_convert_round_trips_kerchunk_json_and_parquet(
    refs: tuple[Path, dict[str, object], xr.Dataset], tmp_path: Path
) -> None:
    d, _, ds = refs
    steps = [
        ([str(d / "refs.json"), str(tmp_path / "m.json")], "kerchunk -> kvmap"),
        ([str(tmp_path / "m.json"), str(tmp_path / "refs.parq")], "kvmap -> kerchunk-parquet"),
        (
            [str(tmp_path / "refs.parq"), str(tmp_path / "again.json"), "--to", "kerchunk"],
            "kerchunk-parquet -> kerchunk",
        ),
        ([str(tmp_path / "again.json"), str(tmp_path / "final.json"), "--from", "kerchunk"], "kerchunk -> kvmap"),
    ]
    for args, says in steps:
        run = subprocess.run(
            [sys.executable, "-m", "kvmap", "convert", *args], capture_output=True, text=True, check=False
        )
        assert run.returncode == 0, run.stderr
        assert says in run.stdout
        # The references point at a directory beside the output: convert names the prefix to allow.
        assert f"--allow {d.as_uri()}/" in run.stdout
    allow = [f"{d.as_uri()}/"]
    for out in ("m.json", "final.json"):
        xr.testing.assert_identical(_open(kvmap.KVMapStore(tmp_path / out, allow=allow)).load(), ds)
    xr.testing.assert_identical(_open(kvmap.KVMapStore(f"{tmp_path / 'refs.parq'}|kerchunk:", allow=allow)).load(), ds)
    a = kvmap.Reader(tmp_path / "m.json", allow=allow)
    b = kvmap.Reader(tmp_path / "final.json", allow=allow)
    keys = a.list_prefix_sync("")
    # The parquet form adds its consolidated metadata, .zmetadata, as fsspec serves it.
    assert keys == [k for k in b.list_prefix_sync("") if k != ".zmetadata"]
    assert len(keys) > 5
    assert a.get_many_sync(keys) == b.get_many_sync(keys)


def test_materialize_writes_one_reference_per_key_through_redirects(tmp_path: Path) -> None:
    (tmp_path / "data" / "arr").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "data" / "arr" / str(i)).write_bytes(bytes([i]) * (i + 1))
    inner = tmp_path / "data" / "inner.json"
    inner.write_text('{"kvmap": 1, "entries": [{"key": "z", "path": "arr/2", "offset": 1, "length": 2}]}')
    m = tmp_path / "data" / "m.json"
    m.write_text(
        '{"kvmap": 1, "entries": [{"prefix": "a/", "path": "arr/"}, {"key": "n", "path": "inner.json|kvmap:z"},'
        ' {"key": "a/1", "path": null}, {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}}]}'
    )
    out = tmp_path / "refs.json"
    refused = subprocess.run(
        [sys.executable, "-m", "kvmap", "convert", str(m), str(out), "--to", "kerchunk"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1
    assert "entry 0" in refused.stderr
    assert "--materialize" in refused.stderr
    assert not out.exists()
    done = kvmap.convert(m, out, target_format="kerchunk", materialize=True)
    assert done.entries == 4  # a/0, a/2, n, zarr.json: the whiteout and the redirect are gone
    written = json.loads(out.read_text())["refs"]
    assert written["a/0"] == [(tmp_path / "data" / "arr" / "0").as_uri()]
    assert written["n"] == [(tmp_path / "data" / "arr" / "2").as_uri(), 1, 2]
    assert "a/1" not in written
    assert json.loads(written["zarr.json"]) == {"zarr_format": 3, "node_type": "group"}
    back = kvmap.Reader(f"{out}|kerchunk:", allow=[f"{(tmp_path / 'data').as_uri()}/"])
    assert [back.get_sync(k) for k in ("a/0", "a/2", "n", "a/1")] == [b"\x00", b"\x02\x02\x02", b"\x02\x02", None]


def test_convert_to_kvstack_and_icechunk_by_name(
    refs: tuple[Path, dict[str, object], xr.Dataset], tmp_path: Path
) -> None:
    d, _, _ = refs
    done = kvmap.convert(d / "refs.json", tmp_path / "m.json")
    assert done.source_format == "kerchunk"
    with pytest.raises(kvmap.ConvertError, match="entry"):
        kvmap.convert(tmp_path / "m.json", tmp_path / "spec.json", target_format="kvstack")  # byte windows
    flat = tmp_path / "flat.json"
    kvmap.Manifest.from_json([{"prefix": "a/", "path": "x/"}], url=flat).save(flat)
    kvmap.convert(flat, tmp_path / "spec.json", target_format="kvstack")
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["driver"] == "kvstack"
    assert spec["layers"][-1]["strip_prefix"] == 2
    assert kvmap.convert(tmp_path / "spec.json", tmp_path / "back.json").source_format == "kvstack"
