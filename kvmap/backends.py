"""One read of the walk (:class:`~kvmap.chain.Read`) against the store that holds its object.

:mod:`kvmap.reader` drives the walk; this module answers one request: through
obstore for object stores and memory. The answer is what the walk expects — bytes
(obstore's ``Bytes``), a size for ``head``, ``None`` for a missing object — or an
exception, which the walk reports with the key, the entry and the URL.

Two rules of the walk are enforced here, where the response is:

* ``Read.limit`` (manifests): an object larger than the limit is refused before its
  body is read (:class:`LimitExceededError`), from the size the response declares (the
  transport reads no more than that).
* ``Read.need`` (byte windows): the object must hold the whole window of the entry,
  whatever part of it is asked for. A single read learns the object's size from the
  same response; a coalesced batch asks for it once per object (``head``).

And one of the store: a missing *bucket* (or container) is not a missing object. S3
names ``NoSuchBucket`` in the body of a GET's 404, which obstore passes on; a HEAD's 404
has no body, so a missing object found by ``head`` in a bucketed store is followed by a
one-item listing of the bucket, once per store (:class:`MissingBucketError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import PreconditionError
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from kvmap.chain import ChangedObjectError, LimitExceededError, Read, ShortObjectError

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = [
    "NEAR",
    "MissingBucketError",
    "get_options",
    "missing",
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
    return options or None


def _checked(result: Any, r: Read) -> Any:
    """The ``GetResult`` of ``r``, refused before its body is read if the object is over
    ``r.limit`` or short of ``r.need``."""
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


def read_sync(store: ObjectStore, path: str, r: Read) -> Any:
    """The answer to ``r`` for the object at ``path`` in ``store``, with blocking calls."""
    if r.head:
        try:
            return _head(obstore.head(store, path), r)
        except FileNotFoundError as exc:
            return _head_missing(store, exc)
    try:
        if r.end is not None and r.need is None and r.tag is None:
            return obstore.get_range(store, path, start=r.start, end=r.end)
        return _checked(obstore.get(store, path, options=get_options(r)), r).bytes()
    except FileNotFoundError as exc:
        return missing(store, exc)
    except PreconditionError as exc:
        raise ChangedObjectError(str(exc).split("\n", 1)[0]) from exc


async def read_async(store: ObjectStore, path: str, r: Read, near: int) -> Any:
    """:func:`read_sync`, awaited; a read of at most ``near`` bytes of a local or memory store
    is a blocking call (kvmap.reader says why), and so are its ``head`` and open."""
    if r.head:
        try:
            return _head(obstore.head(store, path) if near else await obstore.head_async(store, path), r)
        except FileNotFoundError as exc:
            return _head_missing(store, exc)
    try:
        if r.end is not None and r.need is None and r.tag is None:
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
        return missing(store, exc)
    except PreconditionError as exc:
        raise ChangedObjectError(str(exc).split("\n", 1)[0]) from exc


def read_ranges_sync(store: ObjectStore, path: str, reads: Sequence[Read]) -> list[Any]:
    """The answers to several window reads of one object, in one coalesced request."""
    starts, ends = [r.start for r in reads], [r.end for r in reads]
    found = list(obstore.get_ranges(store, path, starts=starts, ends=ends))  # type: ignore[arg-type]
    _fits_all(obstore.head(store, path), reads)
    return found


async def read_ranges_async(store: ObjectStore, path: str, reads: Sequence[Read], near: int) -> list[Any]:
    """:func:`read_ranges_sync`, awaited (a blocking call for at most ``near`` bytes in all)."""
    starts, ends = [r.start for r in reads], [r.end for r in reads]
    if near and sum(ends) - sum(starts) <= near:  # type: ignore[arg-type]
        return read_ranges_sync(store, path, reads)
    found = await obstore.get_ranges_async(store, path, starts=starts, ends=ends)  # type: ignore[arg-type]
    # After the ranges, not beside them: an object replaced between the two is then seen as changed.
    meta = await obstore.head_async(store, path)
    _fits_all(meta, reads)
    return list(found)


def _fits_all(meta: Any, reads: Sequence[Read]) -> None:
    """Check what one ``head`` says of the object against every read of a batch (a coalesced
    ``get_ranges`` reports no size or identity of its own)."""
    for r in reads:
        _head(meta, r)
