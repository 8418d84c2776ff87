"""One read of the walk (:class:`~kvmap.chain.Read`) against the store that holds its object.

:mod:`kvmap.reader` drives the walk; this module answers one request: through
:mod:`kvmap.localfs` for local files (each read checked, on what it opened, to lie
inside ``Read.inside``: the policy holds at the moment of I/O, not only when it was
decided) and through obstore for object stores and memory. The answer is what the
walk expects — bytes, a size for ``head``, ``None`` for a missing object — or an
exception, which the walk reports with the key, the entry and the URL.

Two rules of the walk are enforced here, where the response is:

* ``Read.limit`` (manifests): an object larger than the limit is refused before its
  body is read (:class:`LimitExceededError`), from the size the response declares (the
  transport reads no more than that).
* ``Read.need`` (byte windows): the object must hold the whole window of the entry,
  whatever part of it is asked for. A single read learns the object's size from the
  same response; a coalesced batch asks for it once per object (``head``).

Pins (``Read.pins``: what an exact entry pins of its object, spec 3.4) are checked against the
metadata of the response that carries the bytes, since no store enforces all of them (obstore's
LocalStore and MemoryStore ignore ``version``, HTTP ``If-Match``): a pinned version is asked for
(S3 ``versionId``) and must be the one the response names, a pinned ETag must be the response's;
a store that reports no version (memory, local files) or no ETag cannot serve such a pin, and a
pinned version that does not exist is an error (:class:`~kvmap.chain.PinError`), never absent.
Pinned reads are single ``get`` requests (``get_range(s)`` return no metadata); the ``sha256``
pin is the walk's to check. A local file's ETag is its identity (inode, mtime, size), which a copy
does not keep: ``kvmap check --pin`` pins local files by ``sha256`` alone.

And one of the store: a missing *bucket* (or container) is not a missing object. S3
names ``NoSuchBucket`` in the body of a GET's 404, which obstore passes on; a HEAD's 404
has no body, so a missing object found by ``head`` in a bucketed store is followed by a
one-item listing of the bucket, once per store (:class:`MissingBucketError`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import PreconditionError
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from kvmap import httpio, localfs
from kvmap.chain import ChangedObjectError, EscapedError, LimitExceededError, PinError, Read, ShortObjectError
from kvmap.entries import Pins, same_etag
from kvmap.httpio import HTTPSource

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = [
    "NEAR",
    "MissingBucketError",
    "check_pins",
    "get_options",
    "missing",
    "names_object",
    "read_async",
    "read_ranges_async",
    "read_ranges_sync",
    "read_sync",
]

#: Stores whose reads may be blocking calls on the event loop's thread (see kvmap.reader).
NEAR = (LocalStore, MemoryStore)


#: Stores whose objects live in a bucket or container that may itself be missing.
_BUCKETED = (S3Store, GCSStore, AzureStore)
#: What S3, GCS and Azure say of a missing bucket or container in an error body.
_NO_BUCKET = ("NoSuchBucket", "The specified bucket does not exist", "ContainerNotFound")
#: Bucketed stores known to have their bucket: id -> store (kept, so that the id is not reused).
_HAVE_BUCKET: dict[int, ObjectStore] = {}


class MissingBucketError(Exception):
    """The bucket or container of an object does not exist: an error, never an absent key."""


def missing(store: ObjectStore, exc: FileNotFoundError) -> None:
    """``None`` for an object that does not exist; raises :class:`MissingBucketError` if the
    "not found" ``exc`` was for its bucket."""
    text = str(exc)
    if any(word in text for word in _NO_BUCKET):
        raise MissingBucketError(f"the bucket does not exist: {text.splitlines()[0]}") from exc
    return None


def _head_missing(store: ObjectStore, exc: FileNotFoundError) -> None:
    missing(store, exc)
    if isinstance(store, _BUCKETED) and id(store) not in _HAVE_BUCKET:
        try:
            obstore.list(store, None, chunk_size=1).collect()
        except Exception as probe:
            if any(word in str(probe) for word in _NO_BUCKET):
                raise MissingBucketError(f"the bucket does not exist: {str(probe).splitlines()[0]}") from probe
            raise
        if len(_HAVE_BUCKET) >= 4096:
            _HAVE_BUCKET.clear()
        _HAVE_BUCKET[id(store)] = store
    return None


def get_options(r: Read) -> Any:
    """obstore's ``GetOptions`` for ``r``: its range, and its identity as ``if_match``."""
    options: dict[str, Any] = {}
    if r.end is not None:
        options["range"] = (r.start, r.end)
    elif r.suffix is not None:
        options["range"] = {"suffix": r.suffix}
    elif r.start:
        options["range"] = {"offset": r.start}
    if r.tag is not None:
        options["if_match"] = r.tag
    if r.pins is not None and r.pins.version is not None:
        options["version"] = r.pins.version
    return options or None


def check_pins(pins: Pins, etag: str | None, version: str | None) -> None:
    """Raise :class:`~kvmap.chain.PinError` unless an object with ETag ``etag`` and version
    ``version`` (``None``: the store reports none) is the one ``pins`` names."""
    if pins.version is not None:
        if version is None:
            raise PinError(
                f"the entry pins version {pins.version!r}, and this store reports no object versions to check it by"
            )
        if version != pins.version:
            raise PinError(f"the store served version {version!r}, the entry pins {pins.version!r}")
    if pins.etag is not None:
        if etag is None:
            raise PinError(f"the entry pins ETag {pins.etag}, and this store reports no ETag to check it by")
        if not same_etag(etag, pins.etag):
            raise PinError(f"its ETag is {etag}, the entry pins {pins.etag}")


def _pinned_missing(store: ObjectStore, exc: FileNotFoundError, r: Read) -> None:
    """A "not found" for a pinned read: a missing bucket, or (a version pinned) a missing version,
    which is an error; else ``None`` (the walk says a missing object is a dangling reference)."""
    missing(store, exc)
    if r.pins is not None and r.pins.version is not None:
        raise PinError(f"the pinned version {r.pins.version!r} does not exist (deleted, or never of this object)")
    return None


def _checked(result: Any, r: Read) -> Any:
    """The ``GetResult`` of ``r``, refused before its body is read if the object is over
    ``r.limit``, short of ``r.need`` or not the one ``r.pins`` names."""
    if r.pins is not None:
        check_pins(r.pins, result.meta.get("e_tag"), result.meta.get("version"))
    if r.limit is not None:
        start, end = result.range
        if end - start > r.limit:
            raise LimitExceededError(r.limit, end - start)
    _fits(result.meta["size"], r)
    return result


def _fits(size: int, r: Read) -> None:
    if r.need is not None and size < r.need:
        raise ShortObjectError(size, r.need)


def _head(meta: Any, r: Read) -> Any:
    if r.tag is not None and meta.get("e_tag") != r.tag:
        raise ChangedObjectError(f"the object's ETag is {meta.get('e_tag')}, not {r.tag}")
    _fits(meta["size"], r)
    return (meta["size"], meta.get("e_tag")) if r.identify else meta["size"]


def local_tag(st: os.stat_result) -> str:
    """A local file's identity, as obstore's ``LocalStore`` spells its ETag (inode, modification
    time in microseconds, size): what a zip archive's cached directory is tied to."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns // 1000:x}-{st.st_size:x}"'


def _local_checks(r: Read, st: os.stat_result) -> None:
    if r.pins is not None:
        # A local file has no versions: a version pin cannot be served (check_pins says so).
        check_pins(r.pins, local_tag(st), None)
    if r.tag is not None and local_tag(st) != r.tag:
        raise ChangedObjectError(f"the file's identity is {local_tag(st)}, not {r.tag}")
    _fits(st.st_size, r)


def read_local(path: str, r: Read) -> Any:
    """The answer to ``r`` for the local file at absolute ``path``, through :mod:`kvmap.localfs`."""
    try:
        if r.head:
            st = localfs.status(path, inside=r.inside)
            if st is None:
                return None
            _local_checks(r, st)
            return (st.st_size, local_tag(st)) if r.identify else st.st_size
        check = None if r.need is None and r.tag is None and r.pins is None else partial(_local_checks, r)
        return localfs.read(path, r.start, r.end, r.suffix, inside=r.inside, limit=r.limit, check=check)
    except localfs.TooLarge as exc:
        raise LimitExceededError(exc.limit, exc.size) from None
    except localfs.EscapeError as exc:
        raise EscapedError(str(exc)) from None


class _NotNearError(Exception):
    """A local read found to transfer more than may be read on the event loop's thread."""


def _near_checks(r: Read, near: int, st: os.stat_result) -> None:
    if r.tag is not None or r.need is not None or r.pins is not None:
        _local_checks(r, st)
    start = max(0, st.st_size - r.suffix) if r.suffix is not None else r.start
    end = st.st_size if r.end is None else min(r.end, st.st_size)
    if end - start > near:
        raise _NotNearError


async def read_local_async(path: str, r: Read, near: int) -> Any:
    """:func:`read_local`, awaited: on the event loop's thread when it transfers at most ``near``
    bytes (its open and ``fstat`` decide), on a worker thread otherwise."""
    if near and (r.head or (r.end is not None and r.end - r.start <= near)):
        return read_local(path, r)
    if near:
        try:
            return localfs.read(
                path, r.start, r.end, r.suffix, inside=r.inside, limit=r.limit, check=partial(_near_checks, r, near)
            )
        except _NotNearError:
            pass
        except localfs.TooLarge as exc:
            raise LimitExceededError(exc.limit, exc.size) from None
        except localfs.EscapeError as exc:
            raise EscapedError(str(exc)) from None
    return await asyncio.to_thread(read_local, path, r)


def read_local_ranges(path: str, reads: Sequence[Read]) -> list[Any]:
    """The answers to several window reads of one local file, from one opened descriptor."""
    starts, ends = [r.start for r in reads], [r.end or 0 for r in reads]

    def checks(st: os.stat_result) -> None:
        for r in reads:
            _local_checks(r, st)

    try:
        found = localfs.read_ranges(path, starts, ends, inside=reads[0].inside, check=checks)
    except localfs.EscapeError as exc:
        raise EscapedError(str(exc)) from None
    return [None] * len(reads) if found is None else list(found)


def read_http(source: HTTPSource, path: str, r: Read) -> Any:
    """The answer to ``r`` through kvmap's own HTTP client (:mod:`kvmap.httpio`: a redirect is
    an error, never followed). HTTP gives no identity kvmap checks (``tag``: none), and a
    range's answer does not say the object's size: a window is checked by the length of
    what comes back, and by a ``head`` where a range of it fails. An ETag or version pin cannot
    be checked here: :class:`~kvmap.chain.PinError` (a ``sha256`` pin can, by the walk)."""
    _http_pins(r)
    if r.head:
        size = source.head(path)
        if size is None:
            return None
        _fits(size, r)
        return (size, None) if r.identify else size
    try:
        return source.get(path, r.start, r.end, r.suffix, limit=r.limit)
    except httpio.TooLarge as exc:
        raise LimitExceededError(exc.limit, exc.size) from None


async def read_http_async(source: HTTPSource, path: str, r: Read) -> Any:
    """:func:`read_http`, awaited."""
    _http_pins(r)
    if r.head:
        size = await source.head_async(path)
        if size is None:
            return None
        _fits(size, r)
        return (size, None) if r.identify else size
    try:
        return await source.get_async(path, r.start, r.end, r.suffix, limit=r.limit)
    except httpio.TooLarge as exc:
        raise LimitExceededError(exc.limit, exc.size) from None


def _http_pins(r: Read) -> None:
    if r.pins is not None and r.pins.meta:
        check_pins(r.pins, None, None)


def _head_options(r: Read) -> Any:
    """``GetOptions`` of a ``head`` request of ``r``'s pinned version."""
    return {"head": True, **(get_options(r) or {})}


def _pinned_head(store: ObjectStore, path: str, r: Read) -> Any:
    """The metadata of ``path`` for a pinned ``head``: of the pinned version (a ``head`` request
    with its ``versionId``; obstore's ``head`` takes no options), its pins checked."""
    assert r.pins is not None
    meta = obstore.get(store, path, options=_head_options(r)).meta if r.pins.version else obstore.head(store, path)
    check_pins(r.pins, meta.get("e_tag"), meta.get("version"))
    return meta


async def _pinned_head_async(store: ObjectStore, path: str, r: Read) -> Any:
    assert r.pins is not None
    if r.pins.version:
        meta = (await obstore.get_async(store, path, options=_head_options(r))).meta
    else:
        meta = await obstore.head_async(store, path)
    check_pins(r.pins, meta.get("e_tag"), meta.get("version"))
    return meta


def names_object(path: str) -> bool:
    """Whether ``path`` can name an object: object stores drop a trailing ``/`` (so ``t/a/`` would
    be the object ``t/a``, and ``t/`` the object ``t``, outside the directory) and have no empty
    segments; kvmap's local files keep the same rule, so every store answers alike."""
    return bool(path) and not path.endswith("/") and "//" not in path


def read_sync(store: ObjectStore, path: str, r: Read) -> Any:
    """The answer to ``r`` for the object at ``path`` in ``store``, with blocking calls.
    A path that names no object (:func:`names_object`) has none: ``None``."""
    if not names_object(path) and not isinstance(store, HTTPSource):
        return None
    if isinstance(store, LocalStore):
        return read_local("/" + path, r)
    if isinstance(store, HTTPSource):
        return read_http(store, path, r)
    if r.head:
        try:
            return _head(obstore.head(store, path) if r.pins is None else _pinned_head(store, path, r), r)
        except FileNotFoundError as exc:
            return _head_missing(store, exc) if r.pins is None else _pinned_missing(store, exc, r)
    try:
        if r.end is not None and r.need is None and r.tag is None and r.pins is None:
            return obstore.get_range(store, path, start=r.start, end=r.end)
        return _checked(obstore.get(store, path, options=get_options(r)), r).bytes()
    except FileNotFoundError as exc:
        return missing(store, exc) if r.pins is None else _pinned_missing(store, exc, r)
    except PreconditionError as exc:
        raise ChangedObjectError(str(exc).split("\n", 1)[0]) from exc


async def read_async(store: ObjectStore, path: str, r: Read, near: int) -> Any:
    """:func:`read_sync`, awaited; a read of at most ``near`` bytes of a local or memory store
    is a blocking call (kvmap.reader says why), and so are its ``head`` and open."""
    if not names_object(path) and not isinstance(store, HTTPSource):
        return None
    if isinstance(store, LocalStore):
        return await read_local_async("/" + path, r, near)
    if isinstance(store, HTTPSource):
        return await read_http_async(store, path, r)
    if r.head:
        try:
            if r.pins is not None:
                return _head(_pinned_head(store, path, r) if near else await _pinned_head_async(store, path, r), r)
            return _head(obstore.head(store, path) if near else await obstore.head_async(store, path), r)
        except FileNotFoundError as exc:
            return _head_missing(store, exc) if r.pins is None else _pinned_missing(store, exc, r)
    try:
        if r.end is not None and r.need is None and r.tag is None and r.pins is None:
            if near and r.end - r.start <= near:
                return obstore.get_range(store, path, start=r.start, end=r.end)
            return await obstore.get_range_async(store, path, start=r.start, end=r.end)
        if near:
            # Opening a local object is cheap; its size decides how to read it.
            result = _checked(obstore.get(store, path, options=get_options(r)), r)
            start, end = result.range
            if end - start <= near:
                return result.bytes()
        else:
            result = _checked(await obstore.get_async(store, path, options=get_options(r)), r)
        return await result.bytes_async()
    except FileNotFoundError as exc:
        return missing(store, exc) if r.pins is None else _pinned_missing(store, exc, r)
    except PreconditionError as exc:
        raise ChangedObjectError(str(exc).split("\n", 1)[0]) from exc


def read_ranges_sync(store: ObjectStore, path: str, reads: Sequence[Read]) -> list[Any]:
    """The answers to several window reads of one object, in one coalesced request."""
    if not names_object(path) and not isinstance(store, HTTPSource):
        return [None] * len(reads)
    if isinstance(store, LocalStore):
        return read_local_ranges("/" + path, reads)
    if isinstance(store, HTTPSource):
        return _http_ranges(store, path, reads)
    starts, ends = [r.start for r in reads], [r.end for r in reads]
    found = list(obstore.get_ranges(store, path, starts=starts, ends=ends))  # type: ignore[arg-type]
    _fits_all(obstore.head(store, path), reads)
    return found


async def read_ranges_async(store: ObjectStore, path: str, reads: Sequence[Read], near: int) -> list[Any]:
    """:func:`read_ranges_sync`, awaited (a blocking call for at most ``near`` bytes in all)."""
    starts, ends = [r.start for r in reads], [r.end for r in reads]
    if (near and sum(ends) - sum(starts) <= near) or not names_object(path):  # type: ignore[arg-type]
        return read_ranges_sync(store, path, reads)
    if isinstance(store, LocalStore):
        return await asyncio.to_thread(read_local_ranges, "/" + path, reads)
    if isinstance(store, HTTPSource):
        return await asyncio.to_thread(_http_ranges, store, path, reads)
    found = await obstore.get_ranges_async(store, path, starts=starts, ends=ends)  # type: ignore[arg-type]
    # After the ranges, not beside them: an object replaced between the two is then seen as changed.
    meta = await obstore.head_async(store, path)
    _fits_all(meta, reads)
    return list(found)


def _http_ranges(source: HTTPSource, path: str, reads: Sequence[Read]) -> list[Any]:
    try:
        return source.get_ranges(path, [r.start for r in reads], [r.end or 0 for r in reads])  # windows: ends known
    except httpio.HTTPReadError as exc:
        if exc.status in (404, 410):
            return [None] * len(reads)
        raise


def _fits_all(meta: Any, reads: Sequence[Read]) -> None:
    """Check what one ``head`` says of the object against every read of a batch (a coalesced
    ``get_ranges`` reports no size or identity of its own)."""
    for r in reads:
        _head(meta, r)
