"""Reading keys to bytes on real storage: :class:`Reader`.

A :class:`Reader` is opened on a manifest — a path, a URL, a pipeline ending in
``|kvmap:`` (or ``|zarr_chunk_manifest:``), or a :class:`~kvmap.Manifest` — and
turns keys into bytes, following chained manifests (:mod:`kvmap.chain`) under a
security :class:`~kvmap.Policy`. The async methods are the core; the ``*_sync``
methods do the same with blocking calls (no event loop), for scripts and the CLI.
Each read goes to the store of its URL (:mod:`kvmap.backends`): local files
through :mod:`kvmap.localfs`, which checks the policy's confinement on what it
opened; ``http(s)://`` through :mod:`kvmap.httpio`, which never follows a
redirect; object stores and memory through obstore.

The async methods read local files and memory stores of at most
``local_blocking_limit`` bytes (default 128 KiB) with *blocking* calls, on the
event loop's thread. An awaited call hands the request to a thread pool and
wakes the loop when it is done; for a read of a file in the page cache those
thread switches cost more than the read, so a blocking read takes a fraction of
the time when reads come one at a time, and no more with 10 in flight up to
128 KiB. Above that, awaited reads in flight overlap on threads and win
(bench/bench_local_read.py). A local read that is slow (a cold disk, a network
file system) holds the loop up while it lasts; set the limit to 0 to await every
read. With a limit above 0, asking a local object's size (``head``) and opening
one to read it whole are blocking calls whatever its size; only the transfer of
more than the limit is awaited. Network stores are always awaited.

Batched reads (:meth:`Reader.get_many`) walk every key, then group the reads
by object: one ``get_ranges`` per object with several windows (obstore merges
nearby ones into one request; a local file is opened once), one read otherwise.
A manifest or zip directory that several walks ask for at once is read once.

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
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.store import LocalStore

from kvmap import backends, listing, localfs
from kvmap.chain import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MANIFEST_BYTES,
    ByteRange,
    Chain,
    Hop,
    Location,
    Read,
    Walk,
    describe,
)
from kvmap.compiled import CompiledMap, Resolution, compile
from kvmap.errors import PolicyError, TargetError, WriteError
from kvmap.formats import Format, adapter_kind, for_adapter
from kvmap.keymap import KeyMap
from kvmap.listing import List
from kvmap.manifest import Manifest
from kvmap.pipeline import Adapter, Pipeline
from kvmap.places import place_url
from kvmap.policy import Policy
from kvmap.roots import RealPaths, Roots

if TYPE_CHECKING:
    from typing import TypeAlias

    from obstore import Bytes, ListResult, ObjectMeta
    from obstore.store import ObjectStore

    #: What reads return: obstore's zero-copy ``Bytes``, or ``bytes`` for inline values.
    Data: TypeAlias = bytes | Bytes

__all__ = ["Explained", "Reader", "Write"]

T = TypeVar("T")
#: The default ``max_concurrency``: requests of one batch in flight at once.
DEFAULT_MAX_CONCURRENCY = 32
#: The default ``local_blocking_limit``: 128 KiB.
DEFAULT_LOCAL_BLOCKING_LIMIT = 128 << 10


class _Failed:
    """What get()'s fast path read when its read raised: handed to the walk, which reports it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_Walker = Generator[Read, Any, T]
_Lister = Generator[Read | List, Any, T]  # listings also ask for object listings


@dataclass(frozen=True, slots=True)
class Explained:
    """A key's whole walk: every manifest hop in order, and where it ends (``None``: absent).
    ``exact``: the entry deciding the location is an exact one naming an object."""

    key: str
    hops: tuple[Hop, ...]
    location: Location | None
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Write:
    """A write (or ``delete``) of ``key`` to the object at root URL ``url``, which entry
    ``entry`` of ``manifest`` sent it to."""

    key: str
    manifest: str | None
    entry: int | None
    url: str
    delete: bool = False
    inside: str | None = None  # for a local file: the policy's confinement, checked as it is written


class Reader:
    """Keys of a manifest, read to bytes on real storage.

    ``target`` is a manifest: a local path, a URL (``s3://b/m.json``), a pipeline
    whose last adapter is ``kvmap:`` or ``zarr_chunk_manifest:`` (its path is a
    key prefix), or a :class:`~kvmap.Manifest` (relative targets need its
    ``url``). ``allow``/``allow_all`` widen the :class:`~kvmap.Policy`;
    ``stores`` maps ``/``-terminated URL prefixes to obstore store options
    (credentials, endpoints, client options); ``max_depth`` bounds the manifest
    hops of one key; ``cache_size`` the manifests kept; ``local_blocking_limit``
    the largest local read the async methods make with a blocking call (see the
    module; 0: none); ``max_manifest_bytes`` the largest manifest (or zip directory) read,
    refused before it is read and while it is read (default 2 GiB); ``max_concurrency`` the
    requests one batch (:meth:`get_many`) has in flight at once (default 32). Raises
    ``ValueError`` for a negative ``local_blocking_limit`` or a ``max_concurrency`` below 1.

    Missing things are ``None``; every failure raises a :class:`~kvmap.KvmapError`
    naming the key, the manifest entry and the URL.
    """

    __slots__ = (
        "_blocking",
        "_doc",
        "_flights",
        "_lock",
        "_map",
        "_pipe",
        "_tasks",
        "chain",
        "options",
        "roots",
        "target",
    )

    def __init__(
        self,
        target: str | os.PathLike[str] | Manifest,
        *,
        allow: Collection[str] = (),
        allow_all: bool = False,
        stores: Mapping[str, Mapping[str, Any]] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        cache_size: int = DEFAULT_CACHE_SIZE,
        local_blocking_limit: int = DEFAULT_LOCAL_BLOCKING_LIMIT,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if local_blocking_limit < 0:
            raise ValueError(f"local_blocking_limit must be >= 0, not {local_blocking_limit}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        self.target = target
        self.options: dict[str, Any] = {
            "allow": tuple(allow),
            "allow_all": allow_all,
            "stores": {k: dict(v) for k, v in (stores or {}).items()},
            "max_depth": max_depth,
            "cache_size": cache_size,
            "local_blocking_limit": local_blocking_limit,
            "max_manifest_bytes": max_manifest_bytes,
            "max_concurrency": max_concurrency,
        }
        self._blocking = local_blocking_limit
        # file:// targets are held to real paths: a symbolic link cannot lead out of what allows them.
        policy = Policy(allow, allow_all=allow_all, realpath=RealPaths())
        self.chain = Chain(policy, max_depth=max_depth, cache_size=cache_size, max_manifest_bytes=max_manifest_bytes)
        self.roots = Roots(stores)
        # Reads in flight that concurrent walks share (Read.once): tasks per event loop, and
        # flights for threads.
        self._tasks: dict[tuple[Read, asyncio.AbstractEventLoop], asyncio.Task[Any]] = {}
        self._flights: dict[Read, _Flight] = {}
        self._lock = threading.Lock()
        self._map: CompiledMap | None = None
        self._pipe: Pipeline | None = None
        if isinstance(target, Manifest):
            self._map = compile(target)
            self._doc = target.url or target.name or "<manifest>"
        else:
            pipe = Pipeline.parse(place_url(target))
            if not pipe.adapters or adapter_kind(pipe.adapters[-1].name) != "manifest":
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
        return Explained(key, tuple(walk.hops), loc, walk.strict)

    def _size(self, key: str) -> _Walker[int | None]:
        walk = Walk(key)
        loc = yield from self._locate(key, walk)
        if loc is None:
            return None
        return (yield from self.chain.read_size(loc, walk))

    def _resolve(self, keys: Sequence[str]) -> _Lister[list[Resolution | None]]:
        cm, _, path, _ = yield from self._namespace()
        return (yield from self.chain.ask(cm, cm.resolve_many_io([path + k for k in keys]), Walk(None)))

    def _namespace(self) -> _Lister[tuple[KeyMap, str, str, int]]:
        """The top manifest, its document URL, the key prefix the target gives in it, and the
        manifest hops it took to reach it."""
        if self._map is not None:
            return self._map, self._doc, "", 0
        assert self._pipe is not None
        left = Pipeline(self._pipe.root, self._pipe.adapters[:-1])
        walk = Walk(None)
        loc = yield from self.chain.locate(left, walk)
        last = self._pipe.adapters[-1]
        cm = (
            None
            if loc is None
            else (yield from self.chain.manifest(loc, left.format(), last.name, walk, required=True))
        )
        if cm is None:
            raise TargetError("manifest not found", url=self._doc)
        return cm, left.format(), last.path, len(walk.hops)

    def _load(self, fmt: Format | None) -> _Lister[tuple[Manifest, str]]:
        """The target's manifest document, read in ``fmt`` (``None``: as its last adapter
        says), and the key prefix the target gives in it."""
        if self._map is not None:
            assert isinstance(self.target, Manifest)
            return self.target, ""
        assert self._pipe is not None
        left = Pipeline(self._pipe.root, self._pipe.adapters[:-1])
        last = self._pipe.adapters[-1]
        walk = Walk(None)
        loc = yield from self.chain.locate(left, walk)
        found = None
        if loc is not None:
            fmt = fmt if fmt is not None else for_adapter(last.name)
            found = yield from self.chain.load(loc, left.format(), fmt, walk, required=True)
        if found is None:
            raise TargetError("manifest not found", url=self._doc)
        return found, last.path

    def _list(self, prefix: str) -> _Lister[list[str]]:
        cm, doc, path, _ = yield from self._namespace()
        found: list[str] = yield from listing.keys(self.chain, cm, doc, path + prefix)
        return [k[len(path) :] for k in found]

    def _list_dir(self, directory: str) -> _Lister[list[str]]:
        cm, doc, path, _ = yield from self._namespace()
        inner = path + directory
        if inner == "" or inner.endswith("/"):
            names: list[str] = yield from listing.children(self.chain, cm, doc, inner)
            return names
        found: list[str] = yield from listing.keys(self.chain, cm, doc, inner)
        return sorted({k[len(inner) :].split("/", 1)[0] for k in found})

    # -- async ------------------------------------------------------------------------

    async def manifest(self, fmt: Format | None = None) -> Manifest:
        """The target's own manifest (the document its last adapter reads), as it is written:
        read in ``fmt`` if given (a :data:`kvmap.formats.FORMATS` entry), otherwise in the
        format its last adapter names. Raises :class:`~kvmap.TargetError` if it does not exist."""
        found, _ = await self._drive(self._load(fmt))
        return found

    async def get(self, key: str, byte_range: ByteRange | None = None) -> Data | None:
        """The bytes of ``key`` (within ``byte_range``), or ``None`` if it does not exist."""
        chain = self.chain
        if chain._top is None:  # the slot: a property call costs on every get
            await self.keymap()
        plan = chain.plan(key, byte_range)
        if plan is not None:
            read, want = plan
            if read is None:
                return want  # type: ignore[no-any-return]
            try:
                data: Any = await self._read_async(read)
            except Exception as exc:
                data = _Failed(exc)
            if _answers(data, want, chain, key):
                return data  # type: ignore[no-any-return]
            # The walk decides what the answer means (and names key, entry and URL in an error),
            # given what was read: the read is not made again.
            return await self._drive(self._get(key, byte_range), (read, data))
        return await self._drive(self._get(key, byte_range))

    async def get_many(
        self, keys: Sequence[str], byte_ranges: Sequence[ByteRange | None] | None = None
    ) -> list[Data | None]:
        """``[await get(k, r) for k, r in ...]`` in input order, with the reads grouped by object."""
        return await self._drive_many(self._get_all(keys, byte_ranges))

    async def resolve(self, keys: Sequence[str]) -> list[Resolution | None]:
        """What each key resolves to in the target's own manifest (its first hop, not
        followed), in input order; reads only what that manifest needs (a columnar one:
        the blocks holding the keys)."""
        return await self._drive(self._resolve(keys))

    async def keymap(self) -> KeyMap:
        """The map the target's keys are looked up in first (its manifest; of a pipeline such
        as ``m.json|kvmap:sub/``, the last manifest, in which keys get the prefix ``sub/``): a
        :class:`~kvmap.CompiledMap`, or a map that reads as lookups need, such as a columnar
        manifest's. Opened once, kept until ``reader.chain.forget()``. Raises
        :class:`~kvmap.TargetError` if the manifest does not exist."""
        chain = self.chain
        if chain.top is None:
            chain.top = await self._drive(self._namespace())
        return chain.top[0]

    async def locate(self, key: str) -> Location | None:
        """Where ``key``'s bytes are, after every hop (``None``: absent); reads only manifests."""
        chain = self.chain
        if chain.top is None:
            await self.keymap()
        placed = chain.place(key)
        if placed is not None:
            return placed[0]
        return await self._drive(self._locate(key, Walk(key)))

    async def explain(self, key: str) -> Explained:
        """Every manifest hop of ``key``'s walk, and where it ends."""
        return await self._drive(self._explain(key))

    async def size(self, key: str) -> int | None:
        """The size in bytes of ``key``'s value, or ``None`` if it does not exist."""
        return await self._drive(self._size(key))

    async def list_prefix(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix`` and exists, sorted (:mod:`kvmap.listing`)."""
        return await self._drive(self._list(prefix))

    async def list_dir(self, directory: str = "") -> list[str]:
        """The immediate child names below ``directory`` (``""`` or ending in ``/``), sorted."""
        return await self._drive(self._list_dir(directory))

    async def _drive(self, walker: _Lister[T], known: tuple[Read, Any] | None = None) -> T:
        """Run ``walker``, answering its requests; ``known``: a read already made and its answer
        (or :class:`_Failed`), given to the walk when it asks for that read."""
        try:
            request = next(walker)
            while True:
                try:
                    if known is not None and request == known[0]:
                        answer, known = known[1], None
                        if isinstance(answer, _Failed):
                            raise answer.error
                    else:
                        answer = await self._read_async(request)
                except Exception as exc:  # handed to the walk, which names key and entry
                    request = walker.throw(exc)
                else:
                    request = walker.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _read_async(self, r: Read | List) -> Any:
        if isinstance(r, List):
            return await self._list_async(r)
        if r.once:
            return await self._shared_async(r)
        store, path = self.roots.open(r.url)
        # The most this read may take with a blocking call (module docstring): local stores only.
        return await backends.read_async(store, path, r, self._blocking if isinstance(store, backends.NEAR) else 0)

    async def _shared_async(self, r: Read) -> Any:
        """``r`` read once for every walk that asks for it while it is in flight (a manifest's
        first readers): one task per (read, event loop), awaited by each."""
        loop = asyncio.get_running_loop()
        flight = (r, loop)
        task = self._tasks.get(flight)
        if task is None:
            store, path = self.roots.open(r.url)
            near = self._blocking if isinstance(store, backends.NEAR) else 0
            task = loop.create_task(backends.read_async(store, path, r, near))
            self._tasks[flight] = task
            task.add_done_callback(lambda _: self._tasks.pop(flight, None))
        return await asyncio.shield(task)

    async def _drive_many(self, walkers: list[_Walker[Any]]) -> list[Any]:
        results, pending = _start(walkers)
        # At most max_concurrency requests of one batch in flight: a batch of 10,000 keys in as
        # many objects must not open 10,000 connections at once.
        limit = asyncio.Semaphore(self.options["max_concurrency"])

        async def bounded(url: str, reads: list[Read]) -> list[Any] | BaseException:
            async with limit:
                return await self._read_group_async(url, reads)

        while pending:
            groups = _group(pending)
            answers = await asyncio.gather(*(bounded(url, reads) for url, reads in groups.items()))
            _answer(pending, results, groups, answers)
        return results

    async def _read_group_async(self, url: str, reads: list[Read]) -> list[Any] | BaseException:
        try:
            if len(reads) == 1:
                return [await self._read_async(reads[0])]
            store, path = self.roots.open(url)
            near = self._blocking if isinstance(store, backends.NEAR) else 0
            return await backends.read_ranges_async(store, path, reads, near)
        except FileNotFoundError as exc:
            try:
                backends.missing(store, exc)
            except backends.MissingBucketError as bucket:
                return bucket
            return [None] * len(reads)
        except BaseException as exc:
            if not _failed(exc):
                raise
            if len(reads) == 1:
                return exc
        # One bad range fails the whole coalesced request: give each read its own answer.
        return list(await asyncio.gather(*(self._read_async(r) for r in reads), return_exceptions=True))

    # -- sync -------------------------------------------------------------------------

    def manifest_sync(self, fmt: Format | None = None) -> Manifest:
        """:meth:`manifest`, with blocking I/O."""
        found, _ = self._drive_sync(self._load(fmt))
        return found

    def get_sync(self, key: str, byte_range: ByteRange | None = None) -> Data | None:
        """:meth:`get`, with blocking I/O."""
        chain = self.chain
        if chain._top is None:  # the slot: a property call costs on every get
            self.keymap_sync()
        plan = chain.plan(key, byte_range)
        if plan is not None:
            read, want = plan
            if read is None:
                return want  # type: ignore[no-any-return]
            try:
                data = self._read_sync(read)
            except Exception as exc:
                data = _Failed(exc)
            if _answers(data, want, chain, key):
                return data  # type: ignore[no-any-return]
            return self._drive_sync(self._get(key, byte_range), (read, data))  # type: ignore[no-any-return]
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

    def resolve_sync(self, keys: Sequence[str]) -> list[Resolution | None]:
        """:meth:`resolve`, with blocking I/O."""
        return self._drive_sync(self._resolve(keys))

    def keymap_sync(self) -> KeyMap:
        """:meth:`keymap`, with blocking I/O."""
        chain = self.chain
        if chain.top is None:
            chain.top = self._drive_sync(self._namespace())
        return chain.top[0]

    def locate_sync(self, key: str) -> Location | None:
        """:meth:`locate`, with blocking I/O."""
        chain = self.chain
        if chain.top is None:
            self.keymap_sync()
        placed = chain.place(key)
        if placed is not None:
            return placed[0]
        return self._drive_sync(self._locate(key, Walk(key)))

    def explain_sync(self, key: str) -> Explained:
        """:meth:`explain`, with blocking I/O."""
        return self._drive_sync(self._explain(key))

    def size_sync(self, key: str) -> int | None:
        """:meth:`size`, with blocking I/O."""
        return self._drive_sync(self._size(key))

    def list_prefix_sync(self, prefix: str = "") -> list[str]:
        """:meth:`list_prefix`, with blocking I/O."""
        return self._drive_sync(self._list(prefix))

    def list_dir_sync(self, directory: str = "") -> list[str]:
        """:meth:`list_dir`, with blocking I/O."""
        return self._drive_sync(self._list_dir(directory))

    def _drive_sync(self, walker: _Lister[T], known: tuple[Read, Any] | None = None) -> T:
        """:meth:`_drive`, with blocking I/O."""
        try:
            request = next(walker)
            while True:
                try:
                    if known is not None and request == known[0]:
                        answer, known = known[1], None
                        if isinstance(answer, _Failed):
                            raise answer.error
                    else:
                        answer = self._read_sync(request)
                except Exception as exc:
                    request = walker.throw(exc)
                else:
                    request = walker.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _read_sync(self, r: Read | List) -> Any:
        if isinstance(r, List):
            return self._list_sync(r)
        if r.once:
            return self._shared_sync(r)
        store, path = self.roots.open(r.url)
        return backends.read_sync(store, path, r)

    def _shared_sync(self, r: Read) -> Any:
        """``r`` read once for every thread that asks for it while it is in flight."""
        with self._lock:
            flight = self._flights.get(r)
            leader = flight is None
            if flight is None:
                flight = self._flights[r] = _Flight()
        if leader:
            try:
                store, path = self.roots.open(r.url)
                flight.answer = backends.read_sync(store, path, r)
            except BaseException as exc:
                flight.error = exc
            finally:
                with self._lock:
                    del self._flights[r]
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.answer

    def _read_group_sync(self, url: str, reads: list[Read]) -> list[Any] | BaseException:
        try:
            if len(reads) == 1:
                return [self._read_sync(reads[0])]
            store, path = self.roots.open(url)
            return backends.read_ranges_sync(store, path, reads)
        except FileNotFoundError as exc:
            try:
                backends.missing(store, exc)
            except backends.MissingBucketError as bucket:
                return bucket
            return [None] * len(reads)
        except BaseException as exc:
            if not _failed(exc):
                raise
            if len(reads) == 1:
                return exc
        # One bad range fails the whole coalesced request: give each read its own answer.
        return [_answer_of(self._read_sync, r) for r in reads]

    # -- writes -----------------------------------------------------------------------

    def is_document(self, explained: Explained) -> bool:
        """Whether ``explained`` ends on the object of a manifest or zip archive this reader
        reads through (:meth:`Chain.documents`): compared as (store, path), by real path for
        local files, so that no spelling or link of the URL escapes the comparison."""
        loc = explained.location
        if loc is None or loc.url is None:
            return False
        mine = self._place(loc.url)
        return mine is not None and any(self._place(url) == mine for url in self.chain.documents())

    def _place(self, url: str) -> tuple[int, str] | None:
        try:
            store, path = self.roots.open(url)
        except Exception:
            return None
        if isinstance(store, LocalStore):
            path = os.path.realpath("/" + path)
        return id(store), path

    def _check_name(self, w: Write, path: str) -> None:
        if not backends.names_object(path):
            raise WriteError(
                "cannot write: no object has this name (it ends in '/' or has an empty segment); "
                "a store would write another object",
                key=w.key,
                manifest=w.manifest,
                entry=w.entry,
                url=w.url,
            )

    async def write(self, w: Write, data: Any) -> None:
        """Put ``data`` at ``w.url`` (``w.delete``: delete it; a missing object is no error).
        A local file is written by :mod:`kvmap.localfs`: into a temporary file in its directory,
        renamed over it, with the directory checked inside ``w.inside`` on what was opened.
        Raises :class:`~kvmap.WriteError` naming key, entry and URL if it fails."""
        store, path = self._open_for_write(w)
        if isinstance(store, LocalStore):
            await asyncio.to_thread(self._write_local, w, path, data)
            return
        try:
            try:
                if w.delete:
                    await obstore.delete_async(store, path)
                else:
                    await obstore.put_async(store, path, data)
            except FileNotFoundError as exc:
                backends.missing(store, exc)  # a missing bucket is an error, for deletes too
                if not w.delete:  # deleting a missing object is not (local stores raise it)
                    raise
        except Exception as exc:
            raise _write_failed(w, exc) from exc

    def write_sync(self, w: Write, data: Any) -> None:
        """:meth:`write`, with blocking I/O."""
        store, path = self._open_for_write(w)
        if isinstance(store, LocalStore):
            self._write_local(w, path, data)
            return
        try:
            try:
                if w.delete:
                    obstore.delete(store, path)
                else:
                    obstore.put(store, path, data)
            except FileNotFoundError as exc:
                backends.missing(store, exc)
                if not w.delete:
                    raise
        except Exception as exc:
            raise _write_failed(w, exc) from exc

    @staticmethod
    def _write_local(w: Write, path: str, data: Any) -> None:
        try:
            if w.delete:
                localfs.delete("/" + path, inside=w.inside)
            else:
                localfs.write("/" + path, data, inside=w.inside)
        except localfs.EscapeError as exc:
            raise PolicyError(
                f"not allowed: {exc} (symbolic links resolved when it was written)",
                key=w.key,
                manifest=w.manifest,
                entry=w.entry,
                url=w.url,
            ) from None
        except Exception as exc:
            raise _write_failed(w, exc) from exc

    def _open_for_write(self, w: Write) -> tuple[ObjectStore, str]:
        try:
            store, path = self.roots.open_for_write(w.url)
        except Exception as exc:
            raise _write_failed(w, exc) from exc
        self._check_name(w, path)
        return store, path

    # -- listings ---------------------------------------------------------------------

    async def _list_async(self, r: List) -> Any:
        store, base, full = self._list_where(r)
        if not _listable(full):
            return ([], []) if r.delimiter else []
        if isinstance(store, LocalStore):
            return await asyncio.to_thread(_list_local, r, base, full)
        try:
            if r.delimiter:
                return _one_level(await obstore.list_with_delimiter_async(store, full or None), full)
            names: list[str] = []
            async for batch in obstore.list(store, _directory(full), chunk_size=_chunk(r)):
                names += _names(batch, base, full)
                if r.limit is not None and len(names) >= r.limit:
                    break
            return names
        except Exception as exc:
            raise TargetError(f"listing failed: {describe(exc)}", url=r.url) from exc

    def _list_sync(self, r: List) -> Any:
        store, base, full = self._list_where(r)
        if not _listable(full):
            return ([], []) if r.delimiter else []
        if isinstance(store, LocalStore):
            return _list_local(r, base, full)
        try:
            if r.delimiter:
                return _one_level(obstore.list_with_delimiter(store, full or None), full)
            names: list[str] = []
            for batch in obstore.list(store, _directory(full), chunk_size=_chunk(r)):
                names += _names(batch, base, full)
                if r.limit is not None and len(names) >= r.limit:
                    break
            return names
        except Exception as exc:
            raise TargetError(f"listing failed: {describe(exc)}", url=r.url) from exc

    def _list_where(self, r: List) -> tuple[ObjectStore, str, str]:
        try:
            store, base = self.roots.open(r.url, directory=True)
        except Exception as exc:
            raise TargetError(f"cannot list: {exc}", url=r.url) from exc
        return store, base, base + r.prefix


class _Flight:
    """A read that one thread makes for every thread that waits on ``done``."""

    __slots__ = ("answer", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Any = None
        self.error: BaseException | None = None


def _write_failed(w: Write, exc: BaseException) -> WriteError:
    verb = "delete" if w.delete else "write"
    return WriteError(f"{verb} failed: {describe(exc)}", key=w.key, manifest=w.manifest, entry=w.entry, url=w.url)


def _answers(data: Any, want: int | None, chain: Chain, key: str) -> bool:
    """Whether what get()'s fast path read answers the key: the bytes it expected, or no object
    where that means absent (not a dangling reference, which the walk reports)."""
    if data is None:
        return not chain.strict(key)
    return not isinstance(data, _Failed) and (want is None or len(data) == want)


def _failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed read: an ``Exception``, or the panic obstore 0.12's
    ``get_ranges`` raises (a ``BaseException``) when a range starts past a damaged object's end."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _answer_of(read: Callable[[Read], Any], r: Read) -> Any:
    try:
        return read(r)
    except Exception as exc:
        return exc


def _list_local(r: List, base: str, full: str) -> Any:
    """:class:`List` of a local directory, through :mod:`kvmap.localfs`: links that lead outside
    ``r.inside`` list nothing, and a directory that holds no file is not listed."""
    folder = full[: full.rfind("/") + 1]
    try:
        if r.delimiter:
            return localfs.list_dir("/" + full, inside=r.inside)
        names = localfs.list_keys("/" + folder, full[len(folder) :], inside=r.inside, limit=r.limit)
    except localfs.EscapeError as exc:
        if r.prefix:  # below the target, a directory link that leads out holds none of its keys
            return ([], []) if r.delimiter else []
        raise PolicyError(f"not allowed: {exc} (symbolic links resolved when it was listed)", url=r.url) from None
    except Exception as exc:
        raise TargetError(f"listing failed: {describe(exc)}", url=r.url) from exc
    return [(folder + n)[len(base) :] for n in names]


def _listable(path: str) -> bool:
    """Whether an object path can start with ``path``: object paths have no empty, ``.`` or ``..``
    segments and no control characters (obstore's rules; a listing of such a prefix is empty)."""
    if not path.isprintable() and any(c < " " or c == "\x7f" for c in path):
        return False
    return all(s not in ("", ".", "..") for s in path[: path.rfind("/")].split("/")) if "/" in path else True


def _directory(path: str) -> str | None:
    # obstore lists whole path segments: list the deepest directory, then filter.
    return path[: path.rfind("/") + 1] or None


def _chunk(r: List) -> int:
    return 1000 if r.limit is None else max(1, min(r.limit, 1000))


def _names(batch: Sequence[ObjectMeta], base: str, full: str) -> list[str]:
    return [m["path"][len(base) :] for m in batch if m["path"].startswith(full)]


def _one_level(result: ListResult[Sequence[ObjectMeta]], full: str) -> tuple[list[str], list[str]]:
    dirs = [p[len(full) :].rstrip("/") for p in result["common_prefixes"] if p.startswith(full)]
    objects = [m["path"][len(full) :] for m in result["objects"] if m["path"].startswith(full)]
    return [d for d in dirs if d], [o for o in objects if o]


def _rebuild_reader(target: str | os.PathLike[str] | Manifest, options: dict[str, Any]) -> Reader:
    return Reader(target, **options)


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
    """The distinct reads of a round, by URL. Reads that are not a range inside a window of
    known length (whole objects, suffixes, sizes, ranges of redirected objects, which may
    start past the end) get a group of their own."""
    groups: dict[str, list[Read]] = defaultdict(list)
    seen: set[Read] = set()
    for _, read in pending.values():
        if read in seen:
            continue
        seen.add(read)
        if not read.within:
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
