"""Migrate kerchunk references to a kvmap manifest, and read the data with zarr.

An HDF5 file is indexed with kerchunk (``SingleHdf5ToZarr``: one reference per chunk into the
file), the references are converted with ``kvmap.convert``, and zarr reads the chunks straight
out of the HDF5 file through ``kvmap.KVMapStore`` — no fsspec, the same values as h5py.
Everything is made on the fly in a temporary directory.

Needs h5py and kerchunk. Run: ``python examples/kerchunk_migration.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import h5py
import numpy as np
import zarr
from kerchunk.hdf import SingleHdf5ToZarr

import kvmap


def main() -> None:
    """Index an HDF5 file with kerchunk, convert, read it back; print what was read."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()  # real path: the URLs kvmap gives are of real paths
        values = np.arange(24, dtype="f4").reshape(4, 6) + 270.5
        with h5py.File(root / "obs.h5", "w") as f:
            f.create_dataset("temperature", data=values, chunks=(2, 3)).attrs["units"] = "K"

        # inline_threshold=0: every chunk stays a reference into obs.h5 (none copied inline).
        refs = SingleHdf5ToZarr(str(root / "obs.h5"), inline_threshold=0).translate()
        (root / "refs.json").write_text(json.dumps(refs))
        done = kvmap.convert(root / "refs.json", root / "obs.kvmap.json")  # the input format is detected
        print(f"converted: {done.entries} entries, {done.source_format} -> {done.target_format}")

        # Kerchunk describes zarr v2 metadata (.zgroup/.zarray), so zarr opens it as v2.
        store = kvmap.KVMapStore(root / "obs.kvmap.json", read_only=True)
        group = zarr.open_group(store, mode="r", zarr_format=2)
        t = group["temperature"]
        assert isinstance(t, zarr.Array)
        read = np.asarray(t[...])
        if not np.array_equal(read, values):
            raise SystemExit("zarr through kvmap did not read what h5py wrote")
        print(f"temperature {read.shape} [{t.attrs['units']}], row 0: {read[0].tolist()}")
        r = kvmap.Reader(root / "obs.kvmap.json").resolve_sync(["temperature/0.1"])[0]
        assert r is not None
        assert r.url is not None
        print(f"temperature/0.1 -> {r.url.rpartition('/')[2]} [offset {r.offset}, length {r.length}]")
        print("OK: the kvmap manifest reads the same values as h5py")


if __name__ == "__main__":
    main()
