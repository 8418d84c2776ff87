"""A composite zarr group: one group whose members are datasets stored in different places.

Two xarray datasets are written as zarr v3 groups to two directories (think: two buckets, or
two teams' stores). ``kvmap.compose`` builds a manifest for a group holding both — an inline
root ``zarr.json`` and one prefix redirect per member, nothing copied — and zarr and xarray
open it through ``kvmap.KVMapStore``. Everything is made on the fly in a temporary directory.

Needs xarray. Run: ``python examples/composite_group.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

import kvmap


def main() -> None:
    """Write two datasets, compose them, open the composite; print what it holds."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()  # real path: the URLs kvmap gives are of real paths
        time = np.arange(4)
        ocean = xr.Dataset({"sst": ("time", np.array([14.0, 14.5, 15.0, 15.5]), {"units": "degC"})}, {"time": time})
        air = xr.Dataset({"t2m": ("time", np.array([9.0, 11.0, 12.5, 10.0]), {"units": "degC"})}, {"time": time})
        # consolidated=False: zarr v3 has no consolidated metadata in its spec, and zarr warns.
        ocean.to_zarr(root / "bucket-a" / "ocean.zarr", zarr_format=3, consolidated=False)
        air.to_zarr(root / "bucket-b" / "atmosphere.zarr", zarr_format=3, consolidated=False)

        # Relative targets resolve against the manifest's own place (url=), where it is saved.
        manifest = kvmap.compose(
            {"ocean": "bucket-a/ocean.zarr/", "atmosphere": "bucket-b/atmosphere.zarr/"},
            attributes={"title": "ocean and atmosphere, one group"},
            url=str(root / "climate.json"),
        )
        manifest.save(root / "climate.json")

        store = kvmap.KVMapStore(root / "climate.json", read_only=True)
        group = zarr.open_group(store, mode="r")
        print(f"zarr: group {group.attrs['title']!r} with members {sorted(group.group_keys())}")
        for name, var in (("ocean", "sst"), ("atmosphere", "t2m")):
            ds = xr.open_zarr(store, group=name, consolidated=False)
            print(f"xarray: {name}/{var} = {ds[var].values.tolist()} {ds[var].attrs['units']}")
        both = xr.merge([xr.open_zarr(store, group=g, consolidated=False) for g in ("ocean", "atmosphere")])
        print(f"merged: mean sst - t2m = {float((both.sst - both.t2m).mean()):.2f} degC")


if __name__ == "__main__":
    main()
