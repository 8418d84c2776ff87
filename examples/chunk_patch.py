"""A chunk patch: fix a few chunks of a zarr array without touching (or copying) the array.

An array has a bad chunk. The corrected values are written by zarr into a small array of
their own (same metadata, only that chunk), and a manifest serves the original everywhere
except that one key: a default prefix redirect plus an exact entry, later entries winning.
A second manifest retracts another chunk instead — a whiteout (``"path": null``), which zarr
reads as the fill value. The original array is never modified. Everything is made on the fly
in a temporary directory.

Run: ``python examples/chunk_patch.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import kvmap


def main() -> None:
    """Write an array with a bad chunk, patch it and retract another; print the values."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()  # real path: the URLs kvmap gives are of real paths

        def create(name: str) -> zarr.Array[Any]:
            return zarr.create_array(str(root / name), shape=(8,), chunks=(2,), dtype="f8", fill_value=np.nan)

        original = create("original.zarr")
        original[...] = [1.0, 2.0, -999.0, -999.0, 5.0, 6.0, 7.0, 8.0]  # chunk c/1 is bad
        corrections = create("corrections.zarr")  # the same metadata: its chunks fit the original
        corrections[2:4] = [3.0, 4.0]  # writes only chunk c/1

        patch = [
            {"prefix": "", "path": "original.zarr/"},  # the default: the original array
            {"key": "c/1", "path": "corrections.zarr/c/1"},  # wins over the prefix for that one key
        ]
        (root / "patched.json").write_text(json.dumps({"kvmap": 1, "entries": patch}))
        retracted = [*patch, {"key": "c/3", "path": None}]  # chunk c/3 no longer exists
        (root / "retracted.json").write_text(json.dumps({"kvmap": 1, "entries": retracted}))

        def read(name: str) -> list[float]:
            store = kvmap.KVMapStore(root / name, read_only=True)
            return np.asarray(zarr.open_array(store, mode="r")[...]).tolist()

        print(f"original:  {np.asarray(original[...]).tolist()}")
        print(f"patched:   {read('patched.json')}")
        print(f"retracted: {read('retracted.json')}  (c/3 whited out: the fill value)")
        print(f"original unchanged on disk: {np.asarray(zarr.open_array(str(root / 'original.zarr'))[2:4]).tolist()}")


if __name__ == "__main__":
    main()
