"""dask on a kvmap store: a lazy array over a manifest, computed in parallel.

An array's chunks are spread over two directories — the first half in one, the second in
the other, neither a whole array — and a manifest puts them together with two range entries (keys ordered: chunks
``c/0``..``c/4`` from one place, ``c/5``.. from the other). ``dask.array.from_zarr`` builds a
lazy array over ``kvmap.KVMapStore``, and dask's threaded scheduler reads the chunks in
parallel (no cluster; a store also pickles by its configuration, for process-based
schedulers). Everything is made on the fly in a temporary directory.

Needs dask. Run: ``python examples/dask_array.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

import kvmap


def main() -> None:
    """Write one array's chunks to two places, join them with a manifest, sum it with dask."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()  # real path: the URLs kvmap gives are of real paths
        values = np.arange(100, dtype="i8")
        for place, half in (("disk-1", slice(0, 50)), ("disk-2", slice(50, 100))):
            # The same array metadata in both places; each holds only its half of the chunks.
            x = zarr.create_array(str(root / place / "x.zarr"), shape=(100,), chunks=(10,), dtype="i8", fill_value=0)
            x[half] = values[half]
        entries = [
            {"key": "zarr.json", "path": "disk-1/x.zarr/zarr.json"},
            {"min": "c/0", "max": "c/5", "path": "disk-1/x.zarr/c/"},  # c/0 .. c/4
            {"min": "c/5", "max": "c/:", "path": "disk-2/x.zarr/c/"},  # c/5 .. c/9 (":" sorts after "9")
        ]
        (root / "x.json").write_text(json.dumps({"kvmap": 1, "entries": entries}))

        store = kvmap.KVMapStore(root / "x.json", read_only=True)
        lazy = da.from_zarr(zarr.open_array(store, mode="r"))
        total = int(lazy.sum().compute(scheduler="threads"))
        if total != int(values.sum()):
            raise SystemExit(f"dask read a sum of {total}, not {int(values.sum())}")
        print(f"dask array {lazy.shape}, {lazy.numblocks[0]} chunks; sum = {total} (numpy: {int(values.sum())})")
        for key, r in zip(["c/4", "c/5"], kvmap.Reader(root / "x.json").resolve_sync(["c/4", "c/5"]), strict=True):
            assert r is not None
            assert r.url is not None
            print(f"{key} from {r.url[len(root.as_uri()) + 1 :]}")


if __name__ == "__main__":
    main()
