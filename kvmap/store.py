"""A manifest as a zarr v3 store: :class:`KVMapStore`.

Reads go through a :class:`~kvmap.Reader` (chained manifests, the security
policy, batched and coalesced reads through obstore). Listings list the
composite namespace (:mod:`kvmap.listing`). Writes follow redirects like
symlinks: a key whose entry is a prefix or range redirect — or an exact key
naming a whole object — is written to, or deleted from, the object its URL
names; any other key refuses the write with a :class:`~kvmap.WriteError`.

>>> import json, kvmap, obstore, zarr
>>> _ = obstore.put(kvmap.memory_store("store-doc"), "t/zarr.json",
...                 json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"units": "K"}}).encode())
>>> m = kvmap.Manifest.from_json([{"prefix": "", "path": "memory://store-doc/t/"}], url="memory://store-doc/m.json")
>>> store = kvmap.KVMapStore(m)
>>> zarr.open_group(store, mode="r").attrs["units"]
'K'
>>> _ = zarr.create_array(store, name="x", shape=(4,), chunks=(2,), dtype="i4", fill_value=7)
>>> sorted(meta["path"] for meta in obstore.list(kvmap.memory_store("store-doc"), "t/").collect())
['t/x/zarr.json', 't/zarr.json']
>>> sorted(zarr.open_group(store).array_keys())
['x']
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from kvmap.chain import DEFAULT_CACHE_SIZE, DEFAULT_MAX_DEPTH, DEFAULT_MAX_MANIFEST_BYTES, ByteRange
from kvmap.errors import DanglingReferenceError, WriteError
from kvmap.manifest import Manifest
from kvmap.places import place_url
from kvmap.reader import (
    DEFAULT_LOCAL_BLOCKING_LIMIT,
    DEFAULT_MAX_CONCURRENCY,
    Explained,
    Reader,
    Write,
)

if TYPE_CHECKING:
    from kvmap.overlay import Overlay

__all__ = ["KVMapStore"]


class KVMapStore(Store):
    """The composite namespace of a manifest, as a zarr v3 store.

    ``target`` is what :class:`~kvmap.Reader` opens: a manifest path or URL, a
    pipeline ending in ``|kvmap:`` (its path is a key prefix), or a
    :class:`~kvmap.Manifest`. ``allow``, ``allow_all``, ``stores``, ``max_depth``,
    ``cache_size``, ``local_blocking_limit``, ``max_manifest_bytes`` and ``max_concurrency``
    are the Reader's. The store pickles by this configuration and equals its unpickled copy.

    Missing keys read as ``None``; every failure raises a :class:`~kvmap.KvmapError`
    (zarr would otherwise fill the chunk with its fill value). Writes to a key
    whose entry cannot take them raise :class:`~kvmap.WriteError`; in read-only
    mode every write raises ``ValueError``, as zarr's stores do.

    With ``overlay`` (a directory URL or path; see :mod:`kvmap.overlay` and docs/overlays.md), the
    store is copy-on-write: reads see the overlay's entries over the target's namespace, every key
    is writable, writes go to the overlay only and become visible to other stores on :meth:`commit`
    (also on :meth:`close`, and on leaving a ``with`` block that does not raise).
    ``allow_base_change`` opens an overlay whose base changed since its last commit. An unpickled
    copy of an overlay store (a dask worker's) records its writes for the original, whose
    :meth:`commit` commits them; the copy itself never commits.
    """

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(
        self,
        target: str | os.PathLike[str] | Manifest,
        *,
        read_only: bool = False,
        allow: Collection[str] = (),
        allow_all: bool = False,
        stores: Mapping[str, Mapping[str, Any]] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        cache_size: int = DEFAULT_CACHE_SIZE,
        local_blocking_limit: int = DEFAULT_LOCAL_BLOCKING_LIMIT,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        overlay: str | os.PathLike[str] | None = None,
        allow_base_change: bool = False,
    ) -> None:
        super().__init__(read_only=read_only)
        if not isinstance(target, Manifest):
            target = place_url(target)  # absolute: the store means the same thing anywhere
        self.reader = Reader(
            target,
            allow=allow,
            allow_all=allow_all,
            stores=stores,
            max_depth=max_depth,
            cache_size=cache_size,
            local_blocking_limit=local_blocking_limit,
            max_manifest_bytes=max_manifest_bytes,
            max_concurrency=max_concurrency,
        )
        self._overlay: Overlay | None = None
        if overlay is not None:
            self._overlay = _make_overlay(self.reader, overlay, allow_base_change)

    @property
    def target(self) -> str | Manifest:
        """The manifest this store serves: its URL (or pipeline), or the :class:`~kvmap.Manifest`."""
        return self.reader.target  # type: ignore[return-value]

    def _config(self) -> tuple[Any, ...]:
        options = self.reader.options
        layer = self._overlay
        overlay = None if layer is None else (layer.url, layer.allow_base_change)
        return (self.reader.target, sorted(options.items(), key=lambda kv: kv[0]), overlay)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, KVMapStore)
            and self.read_only == other.read_only
            and type(self.target) is type(other.target)
            and self._config() == other._config()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"KVMapStore({self.reader._doc!r}, read_only={self.read_only})"

    def __str__(self) -> str:
        return f"kvmap://{self.reader._doc}"

    def __getstate__(self) -> dict[str, Any]:
        # The Reader pickles by configuration; caches and connections are rebuilt. An overlay pickles
        # by its location and session: the copy records its writes for this store's commit().
        layer = self._overlay
        overlay = None if layer is None else (layer.url, layer.allow_base_change, layer.share())
        return {"reader": self.reader, "read_only": self._read_only, "is_open": self._is_open, "overlay": overlay}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.reader = state["reader"]
        self._read_only = state["read_only"]
        self._is_open = state["is_open"]
        # The copy is a member of the original's session: pending writes stay with the original,
        # and the copy's writes are recorded for the original to commit (docs/overlays.md, dask).
        overlay = state.get("overlay")
        self._overlay = None if overlay is None else _make_overlay(self.reader, *overlay)

    def with_read_only(self, read_only: bool = False) -> Self:
        """The same store (sharing its caches and connections), read-only or not; not yet open."""
        other = object.__new__(type(self))
        Store.__init__(other, read_only=read_only)
        other.reader = self.reader
        other._overlay = self._overlay  # the same pending writes
        return other

    # -- reads ------------------------------------------------------------------------

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        """The value of ``key`` (within ``byte_range``), or ``None`` if it does not exist."""
        if self._overlay is not None:
            data = await self._overlay.get(key, _byte_range(byte_range))
        else:
            data = await self.reader.get(key, _byte_range(byte_range))
        return None if data is None else prototype.buffer.from_bytes(data)  # type: ignore[arg-type]

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """:meth:`get` without an event loop."""
        if self._overlay is not None:
            data = self._overlay.get_sync(key, _byte_range(byte_range))
        else:
            data = self.reader.get_sync(key, _byte_range(byte_range))
        proto = prototype or default_buffer_prototype()
        return None if data is None else proto.buffer.from_bytes(data)  # type: ignore[arg-type]

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """The values of ``key_ranges`` in input order (``None``: missing). Reads of one
        object are grouped and coalesced into as few requests as obstore can make."""
        pairs = list(key_ranges)
        found = await (self._overlay or self.reader).get_many([k for k, _ in pairs], [_byte_range(r) for _, r in pairs])
        make = prototype.buffer.from_bytes
        return [None if d is None else make(d) for d in found]  # type: ignore[arg-type]

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        **_coalescing: int,
    ) -> AsyncIterator[Sequence[tuple[int, Buffer | None]]]:
        """Many byte ranges of ``key``, as one batch ``[(index, buffer), ...]`` (zarr >= 3.4).

        kvmap reads them in one grouped request per object, which obstore coalesces;
        zarr's coalescing options are accepted and left to obstore. Raises a
        ``BaseExceptionGroup`` holding ``FileNotFoundError`` if ``key`` does not exist.
        """
        found = await (self._overlay or self.reader).get_many(
            [key] * len(byte_ranges), [_byte_range(r) for r in byte_ranges]
        )
        if any(d is None for d in found):
            raise BaseExceptionGroup("chunk read failed", [FileNotFoundError(key)])
        make = prototype.buffer.from_bytes
        yield [(i, make(d)) for i, d in enumerate(found)]  # type: ignore[arg-type]

    async def exists(self, key: str) -> bool:
        """Whether ``key`` has a value (its target object exists)."""
        return await (self._overlay or self.reader).size(key) is not None

    async def getsize(self, key: str) -> int:
        """The size of ``key``'s value in bytes. Raises ``FileNotFoundError`` if it does not exist."""
        size = await (self._overlay or self.reader).size(key)
        if size is None:
            raise FileNotFoundError(key)
        return size

    # -- listing ----------------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        """Every key of the composite namespace, sorted (see :mod:`kvmap.listing`)."""
        for key in await (self._overlay or self.reader).list_prefix(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """The keys that start with ``prefix``, sorted."""
        for key in await (self._overlay or self.reader).list_prefix(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The immediate children of directory ``prefix`` (with or without its ``/``), sorted."""
        directory = prefix if prefix == "" or prefix.endswith("/") else prefix + "/"
        for name in await (self._overlay or self.reader).list_dir(directory):
            yield name

    # -- writes -----------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        """Write ``value`` to the object ``key`` redirects to.

        Raises ``ValueError`` if the store is read-only, :class:`~kvmap.WriteError`
        if ``key``'s entry cannot take writes, if the object is a manifest or archive the
        store reads through, or if the write fails (the old bytes stay as they were).
        """
        self._check_writable()
        if self._overlay is not None:
            return await self._overlay.set(key, value.as_buffer_like())
        write = self._writable(await _explained(self.reader.explain(key)))
        await self.reader.write(write, value.as_buffer_like())

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set` without an event loop."""
        self._check_writable()
        if self._overlay is not None:
            return self._overlay.set_sync(key, value.as_buffer_like())
        self.reader.write_sync(self._writable(_explained_sync(self.reader.explain_sync, key)), value.as_buffer_like())

    async def delete(self, key: str) -> None:
        """Delete the object ``key`` redirects to (nothing if there is none).

        Raises as :meth:`set` does, and :class:`~kvmap.WriteError` if the key's entry is an
        exact one naming a whole object: the manifest would be left naming a missing object,
        a dangling reference (map the key with a prefix redirect to make it deletable).
        """
        self._check_writable()
        if self._overlay is not None:
            return await self._overlay.delete(key)
        await self.reader.write(self._writable(await _explained(self.reader.explain(key)), delete=True), None)

    def delete_sync(self, key: str) -> None:
        """:meth:`delete` without an event loop."""
        self._check_writable()
        if self._overlay is not None:
            return self._overlay.delete_sync(key)
        self.reader.write_sync(self._writable(_explained_sync(self.reader.explain_sync, key), delete=True), None)

    async def delete_dir(self, prefix: str) -> None:
        """Delete every key below ``prefix`` (``""``: all, as :meth:`clear` does), except the
        manifests and archives the store reads through, which a store never writes (spec 12.2):
        ``zarr.open_group(store, mode="w")`` over a redirect onto the manifest's own directory
        keeps the manifest. Raises as :meth:`delete` does for any other key."""
        self._check_writable()
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if self._overlay is not None:
            return await self._overlay.delete_dir(prefix)
        for key in await self.reader.list_prefix(prefix):
            explained = await self.reader.explain(key)
            if self.reader.is_document(explained):
                continue
            await self.reader.write(self._writable(explained, delete=True), None)

    # -- overlay commits (kvmap.overlay) ---------------------------------------------------

    @property
    def overlay(self) -> Overlay | None:
        """The store's :class:`~kvmap.overlay.Overlay`, or ``None`` without one."""
        return self._overlay

    def commit(self) -> int:
        """Commit the overlay's pending writes, with those its pickled copies (dask workers) recorded
        (:meth:`kvmap.overlay.Overlay.commit`: returns the commit number; raises
        :class:`~kvmap.overlay.OverlayConflictError` on a conflict). Raises
        :class:`~kvmap.WriteError` for a store without an overlay and for an unpickled copy (its
        original commits), ``ValueError`` if read-only."""
        self._check_writable()
        if self._overlay is None:
            raise WriteError("cannot commit: the store has no overlay (writes go straight to their targets)")
        return self._overlay.commit()

    def close(self) -> None:
        """Close the store; with an overlay, commit its pending writes first (and raise as
        :meth:`commit` does, the store left open). An unpickled copy commits nothing: its writes
        are already recorded for the original (xarray closes the store on a dask worker)."""
        if self._overlay is not None and not self.read_only and not self._overlay.member:
            self._overlay.commit()
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A block that raises commits nothing of its writes: they are dropped, not left pending.
        if exc_type is not None and self._overlay is not None and not self.read_only:
            self._overlay.discard()
        super().__exit__(exc_type, exc, tb)

    def _writable(self, explained: Explained, *, delete: bool = False) -> Write:
        """Where a write (or ``delete``) of ``explained.key`` goes, or a :class:`WriteError`."""
        key, loc = explained.key, explained.location
        hop = explained.hops[-1] if explained.hops else None
        where: dict[str, Any] = {"key": key}
        if hop is not None:
            where.update(manifest=hop.manifest, entry=hop.entry, url=hop.url)
        if loc is None:
            if hop is None or hop.entry is None:
                why = "no entry covers the key (map it with an entry, e.g. a prefix redirect, to write it)"
            elif hop.url is None and not hop.inline:
                why = "the entry is a whiteout"
            else:
                why = "the manifest its entry points into does not exist"
            raise WriteError(f"cannot write: {why}", **where)
        if loc.data is not None:
            why = "the entry holds inline bytes" if hop is not None and hop.inline else "the value is a zip member"
            raise WriteError(f"cannot write: {why}", **where)
        if loc.offset or loc.length is not None:
            raise WriteError("cannot write: the value is a byte window of a larger object", **where)
        assert loc.url is not None
        if self.reader.is_document(explained):
            raise WriteError(
                "cannot write: the object is a manifest or archive this store reads through "
                "(manifests are never written)",
                **where,
            )
        if delete and explained.exact:
            raise WriteError(
                "cannot delete: the key's exact entry names this object, and would name a missing one "
                "(map the key with a prefix redirect to delete it, or write a whiteout into the manifest)",
                **where,
            )
        return Write(key, hop.manifest if hop else None, hop.entry if hop else None, loc.url, delete, loc.inside)


def _make_overlay(
    reader: Reader, url: str | os.PathLike[str], allow_base_change: bool, session: str | None = None
) -> Overlay:
    from kvmap.overlay import Overlay  # at call time: only overlay stores need it

    return Overlay(reader, url, allow_base_change=allow_base_change, session=session)


async def _explained(walk: Awaitable[Explained]) -> Explained:
    """The walk of a key to write: a dangling reference on the way (a nested manifest or zip
    archive its exact entry names is missing) refuses the write, as spec 12.2 says."""
    try:
        return await walk
    except DanglingReferenceError as exc:
        raise _refused(exc) from exc


def _explained_sync(explain: Callable[[str], Explained], key: str) -> Explained:
    try:
        return explain(key)
    except DanglingReferenceError as exc:
        raise _refused(exc) from exc


def _refused(exc: DanglingReferenceError) -> WriteError:
    return WriteError(f"cannot write: {exc.reason}", key=exc.key, manifest=exc.manifest, entry=exc.entry, url=exc.url)


def _byte_range(request: ByteRequest | None) -> ByteRange | None:
    """zarr's byte request as kvmap's ``(start, end)`` form."""
    if request is None:
        return None
    if isinstance(request, RangeByteRequest):
        return (request.start, request.end)
    if isinstance(request, OffsetByteRequest):
        return (request.offset, None)
    if isinstance(request, SuffixByteRequest):
        return (None, request.suffix)
    raise TypeError(f"Unexpected byte_range, got {request!r}")
