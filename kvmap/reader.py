"""Reading keys to bytes on real storage, through obstore: :class:`Reader`.

A :class:`Reader` is opened on a manifest — a path, a URL, a pipeline ending in
``|kvmap:`` (or ``|zarr_chunk_manifest:``), or a :class:`~kvmap.Manifest` — and
turns keys into bytes, following chained manifests (:mod:`kvmap.chain`) under a
security :class:`~kvmap.Policy`. The async methods are the core; the ``*_sync``
methods do the same with obstore's blocking calls (no event loop), for scripts
and the CLI.

Batched reads (:meth:`Reader.get_many`) walk every key, then group the reads
by object: one ``get_ranges`` per object with several windows (obstore merges
nearby ones into one request), one ``get_range`` otherwise.

>>> import kvmap
>>> store = kvmap.memory_store("reader-doc")
>>> import obstore; _ = obstore.put(store, "data.bin", b"0123456789")
>>> m = kvmap.Manifest.from_json([{"key": "a", "path": "data.bin", "offset": 2, "length": 5},
...                               {"prefix": "raw/", "path": "./"}], url="memory://reader-doc/m.json")
>>> r = kvmap.Reader(m)
>>> bytes(r.get_sync("a")), bytes(r.get_sync("a", (1, 3))), bytes(r.get_sync("a", (None, 2)))
(b'23456', b'34', b'56')
>>> bytes(r.get_sync("raw/data.bin", (8, 100))), r.get_sync("raw/missing")
(b'89', None)
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import obstore

from kvmap.chain import DEFAULT_CACHE_SIZE, DEFAULT_MAX_DEPTH, ByteRange, Chain, Hop, Location, Read, Walk
from kvmap.compiled import CompiledMap, compile
from kvmap.manifest import Manifest
from kvmap.pipeline import Adapter, Pipeline
from kvmap.policy import Policy
from kvmap.roots import Roots
from kvmap.url import is_absolute

if TYPE_CHECKING:
    from typing import TypeAlias

    from obstore import Bytes

    #: What reads return: obstore's zero-copy ``Bytes``, or ``bytes`` for inline values.
    Data: TypeAlias = bytes | Bytes

__all__ = ["Explained", "Reader"]

T = TypeVar("T")
_Walker = Generator[Read, Any, T]


@dataclass(frozen=True, slots=True)
class Explained:
    """A key's whole walk: every manifest hop in order, and where it ends (``None``: absent)."""

    key: str
    hops: tuple[Hop, ...]
    location: Location | None


class Reader:
    """Keys of a manifest, read to bytes on real storage.

    ``target`` is a manifest: a local path, a URL (``s3://b/m.json``), a pipeline
    whose last adapter is ``kvmap:`` or ``zarr_chunk_manifest:`` (its path is a
    key prefix), or a :class:`~kvmap.Manifest` (relative targets need its
    ``url``). ``allow``/``allow_all`` widen the :class:`~kvmap.Policy`;
    ``stores`` maps ``/``-terminated URL prefixes to obstore store options
    (credentials, endpoints, client options); ``max_depth`` bounds the manifest
    hops of one key; ``cache_size`` the manifests kept.

    Missing things are ``None``; every failure raises a :class:`~kvmap.KvmapError`
    naming the key, the manifest entry and the URL.
    """

    __slots__ = ("_doc", "_map", "_pipe", "chain", "options", "roots", "target")

    def __init__(
        self,
        target: str | os.PathLike[str] | Manifest,
        *,
        allow: Collection[str] = (),
        allow_all: bool = False,
        stores: Mapping[str, Mapping[str, Any]] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.target = target
        self.options: dict[str, Any] = {
            "allow": tuple(allow),
            "allow_all": allow_all,
            "stores": {k: dict(v) for k, v in (stores or {}).items()},
            "max_depth": max_depth,
            "cache_size": cache_size,
        }
        self.chain = Chain(Policy(allow, allow_all=allow_all), max_depth=max_depth, cache_size=cache_size)
        self.roots = Roots(stores)
        self._map: CompiledMap | None = None
        self._pipe: Pipeline | None = None
        if isinstance(target, Manifest):
            self._map = compile(target)
            self._doc = target.url or target.name or "<manifest>"
        else:
            pipe = Pipeline.parse(manifest_url(target))
            if not pipe.adapters or pipe.adapters[-1].kind != "manifest":
                pipe = Pipeline(pipe.root, (*pipe.adapters, Adapter("kvmap")))
            self._pipe = pipe
            self._doc = pipe.format()

    def __repr__(self) -> str:
        return f"Reader({self._doc!r}, allow={list(self.options['allow'])!r}, allow_all={self.options['allow_all']})"

    def __reduce__(self) -> tuple[Any, ...]:
        # By configuration: caches and connections are rebuilt where it lands.
        return (_rebuild_reader, (self.target, self.options))

    @property
    def policy(self) -> Policy:
        """The security policy manifests are held to."""
        return self.chain.policy

    # -- the walks --------------------------------------------------------------------

    def _locate(self, key: str, walk: Walk) -> _Walker[Location | None]:
        if self._map is not None:
            return self.chain.step(self._map, self._doc, key, walk)
        assert self._pipe is not None
        return self.chain.locate(self._pipe, walk, key)

    def _get(self, key: str, byte_range: ByteRange | None) -> _Walker[Any]:
        walk = Walk(key)
        loc = yield from self._locate(key, walk)
        if loc is None:
            return None
        return (yield from self.chain.read(loc, byte_range, walk))

    def _get_all(self, keys: Sequence[str], byte_ranges: Sequence[ByteRange | None] | None) -> list[_Walker[Any]]:
        ranges = byte_ranges if byte_ranges is not None else [None] * len(keys)
        return [self._get(k, r) for k, r in zip(keys, ranges, strict=True)]

    def _explain(self, key: str) -> _Walker[Explained]:
        walk = Walk(key, explain=True)
        loc = yield from self._locate(key, walk)
        return Explained(key, tuple(walk.hops), loc)

    # -- async ------------------------------------------------------------------------

    async def get(self, key: str, byte_range: ByteRange | None = None) -> Data | None:
        """The bytes of ``key`` (within ``byte_range``), or ``None`` if it does not exist."""
        return await self._drive(self._get(key, byte_range))

    async def get_many(
        self, keys: Sequence[str], byte_ranges: Sequence[ByteRange | None] | None = None
    ) -> list[Data | None]:
        """``[await get(k, r) for k, r in ...]`` in input order, with the reads grouped by object."""
        return await self._drive_many(self._get_all(keys, byte_ranges))

    async def locate(self, key: str) -> Location | None:
        """Where ``key``'s bytes are, after every hop (``None``: absent); reads only manifests."""
        return await self._drive(self._locate(key, Walk(key)))

    async def explain(self, key: str) -> Explained:
        """Every manifest hop of ``key``'s walk, and where it ends."""
        return await self._drive(self._explain(key))

    async def _drive(self, walker: _Walker[T]) -> T:
        try:
            request = next(walker)
            while True:
                try:
                    answer = await self._read_async(request)
                except Exception as exc:  # handed to the walk, which names key and entry
                    request = walker.throw(exc)
                else:
                    request = walker.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _read_async(self, r: Read) -> Any:
        store, path = self.roots.open(r.url)
        try:
            if r.head:
                return (await obstore.head_async(store, path))["size"]
            if r.end is not None:
                return await obstore.get_range_async(store, path, start=r.start, end=r.end)
            result = await obstore.get_async(store, path, options=_get_options(r))
            return await result.bytes_async()
        except FileNotFoundError:
            return None

    async def _drive_many(self, walkers: list[_Walker[Any]]) -> list[Any]:
        results, pending = _start(walkers)
        while pending:
            groups = _group(pending)
            answers = await asyncio.gather(*(self._read_group_async(url, reads) for url, reads in groups.items()))
            _answer(pending, results, groups, answers)
        return results

    async def _read_group_async(self, url: str, reads: list[Read]) -> list[Any] | BaseException:
        try:
            if len(reads) == 1:
                return [await self._read_async(reads[0])]
            store, path = self.roots.open(url)
            try:
                starts, ends = [r.start for r in reads], [r.end for r in reads]
                return list(await obstore.get_ranges_async(store, path, starts=starts, ends=ends))  # type: ignore[arg-type]
            except FileNotFoundError:
                return [None] * len(reads)
        except Exception as exc:
            return exc

    # -- sync -------------------------------------------------------------------------

    def get_sync(self, key: str, byte_range: ByteRange | None = None) -> Data | None:
        """:meth:`get`, with blocking I/O."""
        return self._drive_sync(self._get(key, byte_range))  # type: ignore[no-any-return]

    def get_many_sync(
        self, keys: Sequence[str], byte_ranges: Sequence[ByteRange | None] | None = None
    ) -> list[Data | None]:
        """:meth:`get_many`, with blocking I/O."""
        results, pending = _start(self._get_all(keys, byte_ranges))
        while pending:
            groups = _group(pending)
            _answer(pending, results, groups, [self._read_group_sync(url, reads) for url, reads in groups.items()])
        return results

    def locate_sync(self, key: str) -> Location | None:
        """:meth:`locate`, with blocking I/O."""
        return self._drive_sync(self._locate(key, Walk(key)))

    def explain_sync(self, key: str) -> Explained:
        """:meth:`explain`, with blocking I/O."""
        return self._drive_sync(self._explain(key))

    def _drive_sync(self, walker: _Walker[T]) -> T:
        try:
            request = next(walker)
            while True:
                try:
                    answer = self._read_sync(request)
                except Exception as exc:
                    request = walker.throw(exc)
                else:
                    request = walker.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _read_sync(self, r: Read) -> Any:
        store, path = self.roots.open(r.url)
        try:
            if r.head:
                return obstore.head(store, path)["size"]
            if r.end is not None:
                return obstore.get_range(store, path, start=r.start, end=r.end)
            return obstore.get(store, path, options=_get_options(r)).bytes()
        except FileNotFoundError:
            return None

    def _read_group_sync(self, url: str, reads: list[Read]) -> list[Any] | BaseException:
        try:
            if len(reads) == 1:
                return [self._read_sync(reads[0])]
            store, path = self.roots.open(url)
            try:
                starts, ends = [r.start for r in reads], [r.end for r in reads]
                return list(obstore.get_ranges(store, path, starts=starts, ends=ends))  # type: ignore[arg-type]
            except FileNotFoundError:
                return [None] * len(reads)
        except Exception as exc:
            return exc


def manifest_url(target: str | os.PathLike[str]) -> str:
    """A manifest target as a URL: URLs and pipelines as they are, local paths as ``file://`` URLs.

    >>> manifest_url("s3://b/m.json|kvmap:")
    's3://b/m.json|kvmap:'
    """
    text = os.fspath(target)
    if is_absolute(text):
        return text
    root, sep, rest = text.partition("|")
    return Path(root).resolve().as_uri() + sep + rest


def _rebuild_reader(target: str | os.PathLike[str] | Manifest, options: dict[str, Any]) -> Reader:
    return Reader(target, **options)


def _get_options(r: Read) -> Any:
    if r.suffix is not None:
        return {"range": {"suffix": r.suffix}}
    if r.start:
        return {"range": {"offset": r.start}}
    return None


# -- batches: many walks, their reads grouped by object ------------------------------------

_Pending = dict[int, tuple[_Walker[Any], Read]]


def _start(walkers: list[_Walker[Any]]) -> tuple[list[Any], _Pending]:
    results: list[Any] = [None] * len(walkers)
    pending: _Pending = {}
    for i, walker in enumerate(walkers):
        try:
            pending[i] = (walker, next(walker))
        except StopIteration as stop:
            results[i] = stop.value
    return results, pending


def _group(pending: _Pending) -> dict[str, list[Read]]:
    """The distinct reads of a round, by URL. Reads that are not one bounded range
    (whole objects, suffixes, sizes) get a group of their own."""
    groups: dict[str, list[Read]] = defaultdict(list)
    seen: set[Read] = set()
    for _, read in pending.values():
        if read in seen:
            continue
        seen.add(read)
        if read.end is None or read.head:
            groups[_solo(read)].append(read)
        else:
            groups[read.url].append(read)
    return groups


def _solo(read: Read) -> str:
    # A group key that is not a URL, so that a lone read never joins a get_ranges.
    return f"\0{read!r}"


def _answer(
    pending: _Pending, results: list[Any], groups: dict[str, list[Read]], answers: Sequence[list[Any] | BaseException]
) -> None:
    """Send each pending walk the answer to its read; keep those that ask for more."""
    by_read: dict[Read, Any] = {}
    for reads, answer in zip(groups.values(), answers, strict=True):
        for j, read in enumerate(reads):
            by_read[read] = answer if isinstance(answer, BaseException) else answer[j]
    for i, (walker, read) in list(pending.items()):
        answer = by_read[read]
        try:
            if isinstance(answer, BaseException):
                pending[i] = (walker, walker.throw(answer))
            else:
                pending[i] = (walker, walker.send(answer))
        except StopIteration as stop:
            results[i] = stop.value
            del pending[i]
