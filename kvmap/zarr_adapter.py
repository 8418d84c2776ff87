"""kvmap's adapters for zarr's URL pipelines, registered as ``zarr.url_adapters`` entry points.

A URL pipeline (https://github.com/jbms/url-pipeline) chains sub-URLs with ``|``:
``s3://b/m.json|kvmap:`` is the manifest ``s3://b/m.json`` read as a zarr store. The
interface is the one of zarr-python's URL-pipeline pull request (#4192,
``zarr.abc.url_pipeline``): an adapter is a :class:`URLPipelineAdapter` with one
classmethod, ``open_pipeline_segment(segment, context)``, returning an
``AdapterResolution(store, path)``, and its entry-point name is the URL scheme it
handles — so only legal scheme names (RFC 3986: a letter, then letters, digits, ``+``,
``-``, ``.``): ``kvmap``, ``zarr-chunk-manifest``, ``kerchunk`` and ``kvstack``. (kvmap's
own pipelines also read ``zarr_chunk_manifest:``, the original proposal's spelling, but it
is no scheme name, so zarr cannot be asked for it.)

**No released zarr resolves URL pipelines** (3.1 and 3.4 do not): there, nothing imports
this module and these classes stand alone. Open a :class:`~kvmap.KVMapStore` instead —
``kvmap.open_zarr("s3://b/m.json")`` or
``xr.open_dataset("s3://b/m.json", engine="kvmap")`` — which reads the same pipelines.

Each adapter reads the whole pipeline to its left itself (``context.preceding_url``):
kvmap has its own I/O, so the intermediate stores are never made; every preceding
segment must be one kvmap knows (a root URL, ``zip:``, or a manifest adapter), else it
raises :class:`~kvmap.PipelineError`, so that no segment is silently ignored. The
segment's path is the residual path of the resolution: ``m.json|kvmap:group/sub`` is the
store of the whole manifest and the node ``group/sub`` in it. kvmap's options come through
``storage_options`` — ``allow``, ``allow_all``, ``stores``, ``max_depth``, ``cache_size``,
``local_blocking_limit``, ``max_manifest_bytes``, ``max_concurrency`` and ``read_only`` —
and ``mode="r"`` opens read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from kvmap.errors import PipelineError
from kvmap.formats import adapter_kind
from kvmap.pipeline import Adapter, Pipeline
from kvmap.places import path_url, place_url
from kvmap.url import PIPELINE_SEPARATOR

if TYPE_CHECKING:
    from kvmap.store import KVMapStore

    _Base = object
else:
    try:
        from zarr.abc.url_pipeline import URLPipelineAdapter as _Base
    except ImportError:  # a zarr without URL pipelines: plain classes, same interface
        _Base = object

__all__ = ["ChunkManifestAdapter", "KerchunkAdapter", "KvmapAdapter", "KvstackAdapter", "Resolution"]

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


class _Segment(Protocol):
    """What an adapter reads of a pipeline segment (zarr's ``PipelineSegment``)."""

    @property
    def scheme(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def query(self) -> str | None: ...
    @property
    def raw(self) -> str: ...


class _Context(Protocol):
    """What an adapter reads of its context (zarr's ``PipelineContext``)."""

    @property
    def preceding(self) -> tuple[_Segment, ...]: ...
    @property
    def mode(self) -> str | None: ...
    @property
    def storage_options(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class Resolution:
    """What an adapter resolves to where zarr has no ``AdapterResolution`` of its own (the
    same fields): the store, the residual ``path`` in it, and the ``zarr_format`` (``None``:
    not fixed by the pipeline)."""

    store: KVMapStore
    path: str = ""
    zarr_format: int | None = None


def _resolution(store: KVMapStore, path: str) -> Any:
    try:
        from zarr.abc.url_pipeline import AdapterResolution  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return Resolution(store, path)
    return AdapterResolution(store=store, path=path)


class KvmapAdapter(_Base):
    """``...|kvmap:PATH``: the manifest to the left as a zarr store, and the node ``PATH`` in it."""

    #: The URL scheme this adapter handles (its entry-point name).
    scheme: ClassVar[str] = "kvmap"

    @classmethod
    async def open_pipeline_segment(cls, segment: _Segment, context: _Context) -> Any:
        """An open :class:`~kvmap.KVMapStore` on the manifest ``context.preceding_url``
        names, read-only when ``context.mode`` is ``"r"`` (or ``storage_options`` says
        ``read_only``), and the segment's path (percent-decoded, without leading or trailing
        ``/``) as the residual path. The manifest is read here, so a missing one fails now.

        Raises :class:`~kvmap.PipelineError` for a segment at the pipeline's root (there is
        no manifest to its left), a query, a preceding segment kvmap does not know, or a
        ``storage_options`` key kvmap does not take; and what reading the manifest raises
        (:class:`~kvmap.TargetError`, :class:`~kvmap.PolicyError`...).
        """
        from kvmap.store import KVMapStore

        if not context.preceding:
            raise PipelineError(f"{segment.raw!r}: {cls.scheme}: reads the manifest to its left, and there is none")
        if segment.query is not None:
            raise PipelineError(f"{segment.raw!r}: {cls.scheme}: takes no query")
        options = dict(context.storage_options or {})
        read_only = bool(options.pop("read_only", False)) or context.mode == "r"
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise PipelineError(
                f"{cls.scheme}: unknown storage_options {sorted(unknown)}; kvmap takes {list(_OPTIONS)}"
            )
        steps = [_step(s) for s in context.preceding[1:]]
        text = PIPELINE_SEPARATOR.join([_root(context.preceding[0].raw), *steps, f"{cls.scheme}:{segment.body}"])
        pipe = Pipeline.parse(text)
        path = pipe.adapters[-1].path.strip("/")
        manifest = Pipeline(pipe.root, (*pipe.adapters[:-1], Adapter(cls.scheme))).format()
        store = KVMapStore(manifest, read_only=read_only, **options)
        await store._open()
        await store.reader.keymap()
        return _resolution(store, path)


class ChunkManifestAdapter(KvmapAdapter):
    """``...|zarr-chunk-manifest:``: a chunk manifest (``{"0.0": {"path", "offset", "length"}}``) as a store."""

    scheme = "zarr-chunk-manifest"


class KerchunkAdapter(KvmapAdapter):
    """``refs.json|kerchunk:`` or ``refs.parq|kerchunk:``: kerchunk references (JSON v0/v1 or a
    parquet directory) as a store."""

    scheme = "kerchunk"


class KvstackAdapter(KvmapAdapter):
    """``spec.json|kvstack:``: a tensorstore kvstack spec as a store."""

    scheme = "kvstack"


def _step(segment: _Segment) -> str:
    """A preceding adapter segment as kvmap pipeline text; refused if kvmap does not read it."""
    if segment.query is not None:
        raise PipelineError(f"{segment.raw!r}: kvmap reads pipeline segments without a query")
    adapter_kind(segment.scheme)  # raises PipelineError naming what kvmap knows
    return f"{segment.scheme}:{segment.body}"


def _root(url: str) -> str:
    # Pipelines write local roots as "file:/abs/path" (or plain paths); kvmap reads file:// URLs.
    if url.startswith("file:") and not url.startswith("file://"):
        return path_url(url.removeprefix("file:"))
    return place_url(url)
