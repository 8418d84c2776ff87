"""Opening a manifest with zarr: :func:`open_zarr`.

With released zarr (3.1, 3.4), a string such as ``"s3://b/m.json|kvmap:"`` is no store zarr
knows; :func:`open_zarr` opens a :class:`~kvmap.KVMapStore` on it (or on a path, URL or
:class:`~kvmap.Manifest`) and hands that to ``zarr.open``.

>>> import kvmap, numpy as np, zarr
>>> a = zarr.create_array(zarr.storage.ObjectStore(kvmap.memory_store("open-doc")), name="t",
...                       shape=(4,), dtype="i2", fill_value=0)
>>> a[...] = np.arange(4)
>>> group = kvmap.compose({"temperature": "memory://open-doc/t/"})
>>> g = kvmap.open_zarr(group, allow=["memory://open-doc/"])
>>> g["temperature"][...], g.store.read_only
(array([0, 1, 2, 3], dtype=int16), True)
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from kvmap.manifest import Manifest

if TYPE_CHECKING:
    from zarr import Array, Group

__all__ = ["open_zarr"]


def open_zarr(
    target: str | os.PathLike[str] | Manifest,
    *,
    mode: str = "r",
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    **zarr_kwargs: Any,
) -> Array[Any] | Group:
    """The zarr group or array at the root of ``target`` (or at ``path=``, one of
    ``zarr_kwargs``), opened by ``zarr.open(store, mode=mode, **zarr_kwargs)`` on
    ``KVMapStore(target, read_only=mode == "r", allow=allow, allow_all=allow_all,
    stores=stores)``.

    ``target`` is what a :class:`~kvmap.KVMapStore` opens: a manifest path or URL, a URL
    pipeline (``"s3://b/a.zip|zip:m.json|kvmap:"``, ``"refs.json|kerchunk:"``) or a
    :class:`~kvmap.Manifest`. ``mode`` is zarr's: ``"r"`` (the default) opens read-only;
    others write through the manifest's redirects (see :class:`~kvmap.KVMapStore`).

    Raises what opening the store and zarr raise: :class:`~kvmap.KvmapError` subclasses for
    the manifest (:class:`~kvmap.TargetError` when it does not exist,
    :class:`~kvmap.PolicyError`...), ``FileNotFoundError`` from zarr when no node is there.
    """
    import zarr

    from kvmap.store import KVMapStore

    store = KVMapStore(target, read_only=mode == "r", allow=allow, allow_all=allow_all, stores=stores)
    return zarr.open(store, mode=mode, **zarr_kwargs)  # type: ignore[arg-type]
