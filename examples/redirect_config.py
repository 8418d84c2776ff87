"""A redirect config: symlink-like names for data that moves, kept in one small manifest.

Two releases of a dataset live in versioned directories. A config manifest gives them
stable names — ``stable/`` and ``latest/`` are prefix redirects, like symlinks to
directories — and readers open a name, never a version: ``channels.json|kvmap:stable/`` is
the manifest's namespace under ``stable/``, as a zarr store. Promoting a release is one
saved manifest; no data is copied or moved, and the next reader sees the new target.
Everything is made on the fly in a temporary directory.

Run: ``python examples/redirect_config.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import zarr

import kvmap


def main() -> None:
    """Write two releases, name them in a config, promote one; print what each name reads."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()  # real path: the URLs kvmap gives are of real paths
        for version, offset in (("v1", 0.0), ("v2", 100.0)):
            a = zarr.create_array(str(root / "releases" / f"{version}.zarr"), shape=(4,), chunks=(2,), dtype="f8")
            a[...] = np.arange(4) + offset
            a.attrs["version"] = version

        config = root / "channels.json"

        def publish(stable: str, latest: str) -> None:
            entries = [
                {"prefix": "stable/", "path": f"releases/{stable}.zarr/"},
                {"prefix": "latest/", "path": f"releases/{latest}.zarr/"},
            ]
            kvmap.Manifest.from_json({"kvmap": 1, "entries": entries}, url=str(config)).save(config)

        def show(when: str) -> None:
            for name in ("stable", "latest"):
                # The pipeline's path (stable/) is a key prefix: the store sees that directory only.
                a = zarr.open_array(kvmap.KVMapStore(f"{config}|kvmap:{name}/", read_only=True), mode="r")
                print(f"{when:<17} {name:<6} -> {a.attrs['version']}: {np.asarray(a[...]).tolist()}")

        publish(stable="v1", latest="v2")
        show("before promotion:")
        publish(stable="v2", latest="v2")  # promote v2: rewrite two lines, move no data
        show("after promotion:")
        r = kvmap.Reader(config).resolve_sync(["stable/c/1"])[0]
        assert r is not None
        assert r.url is not None
        print(f"stable/c/1 resolves to {r.url[len(config.parent.as_uri()) + 1 :]}")


if __name__ == "__main__":
    main()
