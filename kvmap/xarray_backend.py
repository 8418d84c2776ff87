"""kvmap's xarray backend: ``xr.open_dataset(target, engine="kvmap")``.

Registered as the ``xarray.backends`` entry point ``kvmap``. It opens a
:class:`~kvmap.KVMapStore` on ``target`` — a manifest path or URL, a URL pipeline
(``"s3://b/m.json|kvmap:"``, ``"refs.json|kerchunk:"``), a :class:`~kvmap.Manifest` or a
``KVMapStore`` itself — and hands it to xarray's zarr backend, so every option of
``engine="zarr"`` works the same (``group``, ``consolidated``, ``chunks``, decoders...).
kvmap's own options come as ``backend_kwargs`` (or keyword arguments): ``allow``,
``allow_all`` and ``stores``, as :class:`~kvmap.Reader` takes them; ``mode`` is zarr's
(``"r"``, the default, opens the store read-only).

Without ``engine``, xarray picks this backend for names ending in ``.kvmap.json`` or
``.kvmap.parquet``, for pipelines whose last adapter is ``kvmap:`` (or a chunk manifest's),
and for a :class:`~kvmap.Manifest` or a ``KVMapStore``.

>>> KvmapBackendEntrypoint().guess_can_open("s3://b/views/m.json|kvmap:")
True
>>> KvmapBackendEntrypoint().guess_can_open("data.nc")
False
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xarray.backends import BackendEntrypoint

from kvmap.errors import PipelineError
from kvmap.manifest import Manifest
from kvmap.pipeline import Pipeline

if TYPE_CHECKING:
    from xarray import Dataset, DataTree

    from kvmap.store import KVMapStore

__all__ = ["KvmapBackendEntrypoint"]

#: Names that say "a kvmap manifest" by their ending.
_SUFFIXES = (".kvmap.json", ".kvmap.parquet")
#: A pipeline ending in one of these adapters is a kvmap store (kerchunk's and others' own
#: engines may claim theirs).
_ADAPTERS = frozenset(("kvmap", "zarr-chunk-manifest", "zarr_chunk_manifest"))


class KvmapBackendEntrypoint(BackendEntrypoint):
    """Open kvmap manifests (composite zarr groups, patches, kerchunk references...) in xarray."""

    description = "Open kvmap manifests (composite zarr groups, references, pipelines) through zarr"
    supports_groups = True
    # Explicit, because the zarr backend's own options are forwarded as they are (so they
    # stay those of the installed xarray); xarray reads this for the decoders it passes.
    open_dataset_parameters = (
        "filename_or_obj",
        "mask_and_scale",
        "decode_times",
        "concat_characters",
        "decode_coords",
        "drop_variables",
        "use_cftime",
        "decode_timedelta",
        "group",
        "mode",
        "consolidated",
        "zarr_format",
        "allow",
        "allow_all",
        "stores",
    )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Whether ``filename_or_obj`` names a kvmap manifest (see the module); never reads."""
        if isinstance(filename_or_obj, Manifest) or _is_store(filename_or_obj):
            return True
        if isinstance(filename_or_obj, os.PathLike):
            return str(os.fspath(filename_or_obj)).lower().rstrip("/").endswith(_SUFFIXES)
        if not isinstance(filename_or_obj, str) or not filename_or_obj:
            return False
        try:
            pipe = Pipeline.parse(filename_or_obj)
        except PipelineError:
            return False
        if pipe.adapters:
            return pipe.adapters[-1].name in _ADAPTERS
        return pipe.root.lower().rstrip("/").endswith(_SUFFIXES)

    def open_dataset(  # type: ignore[override,unused-ignore]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        mode: str = "r",
        allow: Collection[str] = (),
        allow_all: bool = False,
        stores: Mapping[str, Mapping[str, Any]] | None = None,
        **zarr_options: Any,
    ) -> Dataset:
        """The dataset xarray's zarr backend opens on a :class:`~kvmap.KVMapStore` of
        ``filename_or_obj``; ``zarr_options`` are that backend's. Raises what opening the
        store raises (:class:`~kvmap.KvmapError` subclasses), ``TypeError`` for kvmap options
        given with a ready store, and what xarray's zarr backend raises."""
        from xarray.backends.zarr import ZarrBackendEntrypoint

        store: Any = _store(filename_or_obj, mode, allow, allow_all, stores)  # a zarr store: typed as a path
        return ZarrBackendEntrypoint().open_dataset(store, drop_variables=drop_variables, mode=mode, **zarr_options)

    def open_datatree(  # type: ignore[override,unused-ignore]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        mode: str = "r",
        allow: Collection[str] = (),
        allow_all: bool = False,
        stores: Mapping[str, Mapping[str, Any]] | None = None,
        **zarr_options: Any,
    ) -> DataTree:
        """:meth:`open_dataset` for every group: the tree xarray's zarr backend opens."""
        from xarray.backends.zarr import ZarrBackendEntrypoint

        store: Any = _store(filename_or_obj, mode, allow, allow_all, stores)  # a zarr store: typed as a path
        return ZarrBackendEntrypoint().open_datatree(store, drop_variables=drop_variables, mode=mode, **zarr_options)

    def open_groups_as_dict(  # type: ignore[override,unused-ignore]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        mode: str = "r",
        allow: Collection[str] = (),
        allow_all: bool = False,
        stores: Mapping[str, Mapping[str, Any]] | None = None,
        **zarr_options: Any,
    ) -> dict[str, Dataset]:
        """:meth:`open_dataset` for every group, by path."""
        from xarray.backends.zarr import ZarrBackendEntrypoint

        store: Any = _store(filename_or_obj, mode, allow, allow_all, stores)  # a zarr store: typed as a path
        return ZarrBackendEntrypoint().open_groups_as_dict(
            store, drop_variables=drop_variables, mode=mode, **zarr_options
        )


def _is_store(obj: object) -> bool:
    # Only a program that made a KVMapStore has imported it: no need to import zarr to ask.
    module = sys.modules.get("kvmap.store")
    return module is not None and isinstance(obj, module.KVMapStore)


def _store(
    target: Any,
    mode: str,
    allow: Collection[str],
    allow_all: bool,
    stores: Mapping[str, Mapping[str, Any]] | None,
) -> KVMapStore:
    from kvmap.store import KVMapStore

    if isinstance(target, KVMapStore):
        if allow or allow_all or stores:
            raise TypeError("kvmap: allow, allow_all and stores are a KVMapStore's own: give them when making it")
        return target
    return KVMapStore(target, read_only=mode == "r", allow=allow, allow_all=allow_all, stores=stores)
