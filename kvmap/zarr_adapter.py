"""kvmap's adapters for zarr's URL pipelines (ZEP 8), registered as ``zarr.url_adapters`` entry points:
one per manifest-format adapter of :mod:`kvmap.formats` (``kvmap``, ``zarr_chunk_manifest``,
``kerchunk``, ``kvstack``).

With a zarr that resolves URL pipelines, ``zarr.open_group("s3://b/m.json|kvmap:")``
asks :class:`KvmapAdapter` for the store: a :class:`~kvmap.KVMapStore` on the
manifest to the left, with the adapter's path as a key prefix. The interface is
the one proposed for zarr-python (``zarr.abc.store_adapter.StoreAdapter``). On a
zarr without it the classes stand alone and nothing imports them, so older zarr
versions are unaffected.

kvmap's own options come through ``storage_options``: ``allow``, ``allow_all``,
``stores``, ``max_depth``, ``cache_size``, ``local_blocking_limit``, ``max_manifest_bytes``,
``max_concurrency`` and
``read_only``; ``mode="r"`` opens read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmap.places import path_url, place_url
from kvmap.store import KVMapStore

if TYPE_CHECKING:
    _Base = object
else:
    try:
        from zarr.abc.store_adapter import StoreAdapter as _Base
    except ImportError:  # a zarr without URL pipelines: plain classes, same methods
        _Base = object

__all__ = ["ChunkManifestAdapter", "KerchunkAdapter", "KvmapAdapter", "KvstackAdapter"]

_OPTIONS = (
    "allow",
    "allow_all",
    "stores",
    "max_depth",
    "cache_size",
    "local_blocking_limit",
    "max_manifest_bytes",
    "max_concurrency",
)


class KvmapAdapter(_Base):
    """``...|kvmap:PATH``: the manifest to the left, as a zarr store of its keys under ``PATH``."""

    adapter_name = "kvmap"

    @classmethod
    async def from_url_segment(cls, segment: Any, preceding_url: str, **kwargs: Any) -> KVMapStore:
        """An open :class:`~kvmap.KVMapStore` on ``preceding_url|kvmap:segment.path``.

        Raises ``TypeError`` for a ``storage_options`` key kvmap does not know.
        """
        options = dict(kwargs.get("storage_options") or {})
        read_only = bool(options.pop("read_only", False)) or kwargs.get("mode") == "r"
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"kvmap: unknown storage_options {sorted(unknown)}; kvmap takes {list(_OPTIONS)}")
        store = KVMapStore(
            f"{_root(preceding_url)}|{cls.adapter_name}:{segment.path or ''}", read_only=read_only, **options
        )
        await store._open()
        return store

    @classmethod
    def can_handle_scheme(cls, scheme: str) -> bool:
        """Whether ``scheme`` names this adapter."""
        return scheme == cls.adapter_name


class ChunkManifestAdapter(KvmapAdapter):
    """``...|zarr_chunk_manifest:``: a chunk manifest (``{"0.0": {"path", "offset", "length"}}``) as a store."""

    adapter_name = "zarr_chunk_manifest"

    @classmethod
    def can_handle_scheme(cls, scheme: str) -> bool:
        """Both spellings: ``zarr_chunk_manifest`` and ``zarr-chunk-manifest``."""
        return scheme in ("zarr_chunk_manifest", "zarr-chunk-manifest")


class KerchunkAdapter(KvmapAdapter):
    """``refs.json|kerchunk:`` or ``refs.parq|kerchunk:``: kerchunk references (JSON v0/v1 or a
    parquet directory) as a store."""

    adapter_name = "kerchunk"


class KvstackAdapter(KvmapAdapter):
    """``spec.json|kvstack:``: a tensorstore kvstack spec as a store."""

    adapter_name = "kvstack"


def _root(url: str) -> str:
    # zarr writes local roots as "file:/abs/path" or plain paths; kvmap reads file:// URLs.
    if url.startswith("file:") and not url.startswith("file://"):
        return path_url(url.removeprefix("file:"))
    return place_url(url)
