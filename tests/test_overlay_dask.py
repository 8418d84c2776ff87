"""dask ``to_zarr`` through an overlay store from a ``distributed.LocalCluster`` with worker processes.

The store travels to each worker by pickle; the copies there record their writes under
``pending/<session>/`` and the client's ``store.commit()`` commits every worker's writes at once
(docs/overlays.md, "dask and other copies of a store"). Real parts only: a virtual base dataset made of
byte windows into a raw file, a local overlay directory, a real cluster of two worker processes
(started once for the module).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from kvmap.overlay import OverlayConflictError
from kvmap.store import KVMapStore

ROWS, COLS, STEP = 64, 256, 8  # t: float32 chunks of 8 rows (8 KiB: objects); s: int16 (16 bytes: inline)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A virtual dataset: ``raw.bin`` holds ``t`` (64x256 float32) then ``s`` (64 int16); the manifest
    has the zarr metadata inline and each chunk as a byte window of the raw file."""
    t = np.arange(ROWS * COLS, dtype="<f4").reshape(ROWS, COLS)
    s = np.arange(ROWS, dtype="<i2") * 3
    raw = tmp_path / "raw.bin"
    raw.write_bytes(t.tobytes() + s.tobytes())

    def meta(shape: list[int], chunks: list[int], dtype: str, dims: list[str]) -> dict[str, Any]:
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": shape,
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "dimension_names": dims,
            "attributes": {},
        }

    entries: list[dict[str, Any]] = [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {"title": "raw"}}},
        {"key": "t/zarr.json", "json": meta([ROWS, COLS], [STEP, COLS], "float32", ["y", "x"])},
        {"key": "s/zarr.json", "json": meta([ROWS], [STEP], "int16", ["y"])},
    ]
    t_chunk, s_chunk = STEP * COLS * 4, STEP * 2
    for i in range(ROWS // STEP):
        entries.append({"key": f"t/c/{i}/0", "path": "raw.bin", "offset": i * t_chunk, "length": t_chunk})
        entries.append({"key": f"s/c/{i}", "path": "raw.bin", "offset": t.nbytes + i * s_chunk, "length": s_chunk})
    manifest = tmp_path / "virtual.json"
    manifest.write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return manifest, raw, {"t": t, "s": s}


def _patch(rows: slice, fill: float) -> xr.Dataset:
    n = rows.stop - rows.start
    t = np.full((n, COLS), fill, dtype="f4") + np.arange(COLS, dtype="f4")
    s = np.full(n, int(fill), dtype="i2")
    return xr.Dataset({"t": (("y", "x"), t), "s": (("y",), s)}).chunk({"y": STEP})


def _write(store: KVMapStore, rows: slice, fill: float) -> Any:
    """The delayed region write of rows ``rows`` (whole chunks) with values made of ``fill``."""
    return _patch(rows, fill).to_zarr(store, region={"y": rows}, compute=False, consolidated=False)


def _expect(values: dict[str, np.ndarray], *patches: tuple[slice, float]) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in values.items()}
    for rows, fill in patches:
        patch = _patch(rows, fill)
        out["t"][rows] = patch["t"].values
        out["s"][rows] = patch["s"].values
    return out


def _read(manifest: Path, overlay: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(KVMapStore(manifest, overlay=overlay), consolidated=False)
    return {k: ds[k].values for k in ("t", "s")}


def _records(overlay: Path, store: KVMapStore) -> list[dict[str, Any]]:
    assert store.overlay is not None
    directory = overlay / "pending" / store.overlay.session
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))] if directory.exists() else []


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_workers_writes_in_one_commit(
    client: Any, base: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    """Two region writes, each computed on one worker process, and a new variable (its metadata
    written by the client, its chunks by the workers): one commit holds them all."""
    manifest, raw, values = base
    checksums = (_sha(raw), _sha(manifest))
    overlay = tmp_path / "ov"
    store = KVMapStore(manifest, overlay=overlay)
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2
    pids = client.run(os.getpid)
    first, second = _write(store, slice(16, 40), 1000.0), _write(store, slice(40, 64), 2000.0)
    client.gather([client.compute(first, workers=[workers[0]]), client.compute(second, workers=[workers[1]])])
    added = xr.Dataset({"n": (("y",), np.arange(ROWS, dtype="i8") * 7)}, attrs={"title": "raw"}).chunk({"y": 16})
    added.to_zarr(store, mode="a", compute=False, consolidated=False).compute()  # the default: the client

    records = _records(overlay, store)
    writers = {int(r["writer"].rpartition(":")[2]) for r in records}
    assert writers == set(pids.values())  # both worker processes wrote, and only they
    written = {e["key"] for r in records for e in r["entries"]}
    assert written == {f"{v}/c/{i}{'/0' if v == 't' else ''}" for v in ("t", "s") for i in range(2, 8)} | {
        f"n/c/{i}" for i in range(4)
    }
    assert "n/zarr.json" in store.overlay.pending  # type: ignore[union-attr]  # the client's own write
    np.testing.assert_array_equal(_read(manifest, overlay)["t"], values["t"])  # nothing visible yet

    assert store.commit() == 1
    fresh = _read(manifest, overlay)
    expected = _expect(values, (slice(16, 40), 1000.0), (slice(40, 64), 2000.0))
    np.testing.assert_array_equal(fresh["t"], expected["t"])
    np.testing.assert_array_equal(fresh["s"], expected["s"])
    n = xr.open_zarr(KVMapStore(manifest, overlay=overlay), consolidated=False)["n"].values
    np.testing.assert_array_equal(n, np.arange(ROWS) * 7)
    assert _records(overlay, store) == []  # consumed: deleted after the commit
    commit = json.loads((overlay / "commits" / f"{1:020d}.json").read_text())
    assert commit["session"] == store.overlay.session  # type: ignore[union-attr]
    assert (_sha(raw), _sha(manifest)) == checksums  # the originals are never written
    np.testing.assert_array_equal(xr.open_zarr(KVMapStore(manifest), consolidated=False)["t"].values, values["t"])


def test_sessions_rebase_on_disjoint_keys_and_conflict_on_shared_ones(
    client: Any, base: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    manifest, raw, values = base
    checksum = _sha(raw)
    overlay = tmp_path / "ov"
    one, two = KVMapStore(manifest, overlay=overlay), KVMapStore(manifest, overlay=overlay)
    _write(one, slice(0, 16), 10.0).compute()
    _write(two, slice(48, 64), 20.0).compute()  # disjoint chunks
    assert one.commit() == 1
    assert two.commit() == 2  # lost the race for 1 and rebased onto it
    both = _expect(values, (slice(0, 16), 10.0), (slice(48, 64), 20.0))
    fresh = _read(manifest, overlay)
    np.testing.assert_array_equal(fresh["t"], both["t"])
    np.testing.assert_array_equal(fresh["s"], both["s"])

    three, four = KVMapStore(manifest, overlay=overlay), KVMapStore(manifest, overlay=overlay)
    _write(three, slice(8, 24), 30.0).compute()
    _write(four, slice(16, 32), 40.0).compute()  # shares chunk 2 (rows 16-23) with three
    assert three.commit() == 3
    with pytest.raises(OverlayConflictError) as caught:
        four.commit()
    assert caught.value.keys == ["s/c/2", "t/c/2/0"]
    after = _expect(values, (slice(0, 16), 10.0), (slice(48, 64), 20.0), (slice(8, 24), 30.0))
    np.testing.assert_array_equal(_read(manifest, overlay)["t"], after["t"])  # nothing of four's
    assert len(_records(overlay, four)) == 4  # its workers' records stay pending...
    four.overlay.discard()  # type: ignore[union-attr]
    assert _records(overlay, four) == []  # ...until discarded
    assert four.commit() == 3  # nothing left to commit
    np.testing.assert_array_equal(_read(manifest, overlay)["s"], after["s"])
    assert _sha(raw) == checksum
