"""Checking a manifest's targets before anything reads them: :func:`check`.

A read finds a dangling reference only when it gets there (spec 11.3: a missing object behind an
exact entry is an error *of that read*), and a redirect whose root does not exist reads as
missing data, silently. :func:`check` looks ahead, through every manifest a target reaches:

* every **exact target** (an exact entry that names an object, or a key of a chained manifest) is
  followed to its object, whose size is asked: the object must exist and hold the entry's byte
  window (``dangling``, ``past-end``), and the key must not resolve to nothing down its chain;
* every **redirect root** (the URL prefix of a prefix or range entry that wins somewhere) must hold
  something: an object under it, a member of its zip archive (``missing-root``);
* a redirect into a **chained manifest** (``inner.json|kvmap:``) must find that manifest, which is
  then checked the same way, for the keys the redirect can reach (the entries under its path).

Only what can be read is checked: an entry shadowed everywhere by later ones, a whiteout and an
inline value need no I/O. The security policy applies as it does to reads (``not-allowed``);
anything else that fails (a server error, an invalid chained manifest, a loop) is an ``error``.
Reads run concurrently, at most ``concurrency`` at once. Each problem is a :class:`Problem`
naming the manifest and entry to fix; the :class:`CheckReport` holds them all, sorted.

>>> import kvmap, obstore
>>> store = kvmap.memory_store("check-doc")
>>> _ = obstore.put(store, "data/a.bin", b"0123456789")
>>> m = kvmap.Manifest.from_json([
...     {"key": "a", "path": "data/a.bin", "offset": 2, "length": 5},
...     {"key": "b", "path": "data/a.bin", "offset": 8, "length": 5},
...     {"key": "c", "path": "data/gone.bin"},
...     {"prefix": "raw/", "path": "data/"},
...     {"prefix": "old/", "path": "archive/"}], url="memory://check-doc/m.json")
>>> report = check(m)
>>> report.ok, report.targets, report.roots
(False, 3, 2)
>>> for p in report.problems:
...     print(p.kind, p.entry, p.key, p.url)
past-end 1 b memory://check-doc/data/a.bin
dangling 2 c memory://check-doc/data/gone.bin
missing-root 4 None memory://check-doc/archive/
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import obstore
from obstore.store import LocalStore

from kvmap import backends
from kvmap.chain import DEFAULT_MAX_DEPTH, Read, ShortObjectError, describe
from kvmap.compiled import CompiledMap, compile
from kvmap.entries import PIN_FIELDS, Pins
from kvmap.errors import (
    DanglingReferenceError,
    KvmapError,
    ManifestError,
    PolicyError,
    ResolveError,
    TargetError,
    WindowError,
    located,
)
from kvmap.formats import adapter_kind
from kvmap.httpio import HTTPSource
from kvmap.keyrange import KeyRange, prefix_range, range_common_prefix_length
from kvmap.manifest import Manifest
from kvmap.pipeline import Pipeline
from kvmap.places import place_url
from kvmap.reader import Reader
from kvmap.url import PIPELINE_SEPARATOR, encode_remainder, resolve_target

__all__ = ["KINDS", "CheckReport", "Problem", "check", "check_async", "pin_manifest", "pin_manifest_async"]

#: The kinds of :class:`Problem`, in the order a report lists them for one entry.
KINDS = ("dangling", "past-end", "missing-root", "not-allowed", "error")

# How the walk words a chained manifest that is not there (kvmap.chain.Chain._missing).
_NO_MANIFEST = "manifest not found"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing :func:`check` found wrong.

    ``kind`` is one of :data:`KINDS`; ``manifest`` and ``entry`` are the manifest (its URL) and
    the index of the entry to fix — for a key of a chained manifest, the entry that decided the
    read, in whichever manifest of the chain it is; ``key`` is the key that was read (``None``
    for a redirect root): a key of the caller's target as the caller names it (below the path
    of its pipeline), a key of a chained manifest as that manifest names it; ``url`` the target that is
    missing or too short (``None`` when the failure has none); ``reason`` says what is wrong.
    """

    kind: str
    manifest: str | None
    entry: int | None
    key: str | None
    url: str | None
    reason: str

    def __str__(self) -> str:
        where = located(self.reason, key=self.key, manifest=self.manifest, entry=self.entry, url=self.url)
        return f"{self.kind}: {where}"

    def to_json(self) -> dict[str, Any]:
        """The problem as a JSON object: every field, ``None`` where it has no value (the same
        members for every problem)."""
        return {
            "kind": self.kind,
            "manifest": self.manifest,
            "entry": self.entry,
            "key": self.key,
            "url": self.url,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What :func:`check` found: ``problems`` (sorted by manifest, entry, kind, key; one problem
    found through several keys is listed once), and how much it checked: ``manifests`` read,
    exact ``targets`` followed and redirect ``roots`` looked under."""

    target: str
    problems: tuple[Problem, ...]
    manifests: int
    targets: int
    roots: int

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


def check(
    target: str | os.PathLike[str] | Manifest,
    *,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    concurrency: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check every exact target, byte window and redirect root that ``target`` reaches, through
    chained manifests (see the module).

    ``target`` is a manifest as :class:`~kvmap.Reader` takes it (a path, a URL, a pipeline ending
    in a manifest adapter, whose path limits the check to the keys under it, or a
    :class:`~kvmap.Manifest`); ``allow``/``allow_all``/``stores`` are the reader's. At most
    ``concurrency`` reads are in flight at once. ``progress(done, total)`` is called as targets
    and roots are checked (``total`` grows as chained manifests are found).

    What is wrong with the targets is reported, never raised. Raises what opening ``target``
    raises (:class:`~kvmap.TargetError` if it does not exist, :class:`~kvmap.ManifestError` if
    it is invalid), ``ValueError`` for a ``concurrency`` below 1, and ``RuntimeError`` when called
    from a running event loop (use :func:`check_async` there).
    """
    return asyncio.run(
        check_async(target, allow=allow, allow_all=allow_all, stores=stores, concurrency=concurrency, progress=progress)
    )


async def check_async(
    target: str | os.PathLike[str] | Manifest,
    *,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    concurrency: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """:func:`check`, awaited on the running event loop."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    options: dict[str, Any] = {"allow": tuple(allow), "allow_all": allow_all, "stores": stores}
    reader = Reader(target, **options)
    if isinstance(target, Manifest):
        shown = doc = target.url or target.name or "<manifest>"
        prefix, top = "", f"{doc}|kvmap:"
    else:
        shown = place_url(target)
        doc, prefix = _document(shown)
        top = shown if _chained(shown) else f"{shown}|kvmap:"  # as the reader reads it
    cm = await _compiled(reader)  # the caller's own target: what is wrong with it is raised
    run = _Run(options, concurrency, progress)
    try:
        async with asyncio.TaskGroup() as group:
            run.group = group
            group.create_task(run.manifest(reader, cm, doc, prefix, (top,)))
    except ExceptionGroup as failed:  # a failure that is not a problem of a target (a bug): its own error
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise
    return CheckReport(shown, run.sorted_problems(), run.manifests, run.targets, run.roots)


def _document(url: str) -> tuple[str, str]:
    """The document URL of the manifest a reader of ``url`` looks keys up in first, and the key
    prefix its last adapter gives (a target without a manifest adapter is read as ``|kvmap:``)."""
    pipe = Pipeline.parse(url)
    if pipe.adapters and adapter_kind(pipe.adapters[-1].name) == "manifest":
        return Pipeline(pipe.root, pipe.adapters[:-1]).format(), pipe.adapters[-1].path
    return pipe.format(), ""


async def _compiled(reader: Reader) -> CompiledMap:
    """The manifest ``reader`` looks keys up in first, in memory (a columnar one is read whole:
    a check visits every entry anyway)."""
    km = await reader.keymap()
    return km if isinstance(km, CompiledMap) else compile(await reader.manifest())


@dataclass(eq=False)
class _Run:
    """The state of one check: the readers' options, the bound on reads in flight, what was found."""

    options: dict[str, Any]
    concurrency: int
    progress: Callable[[int, int], None] | None
    group: asyncio.TaskGroup | None = None
    problems: list[Problem] = field(default_factory=list)
    manifests: int = 0
    targets: int = 0
    roots: int = 0
    done: int = 0
    total: int = 0
    opened: set[str] = field(default_factory=set)  # chained manifests (pipelines) checked or being checked
    limit: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.limit = asyncio.Semaphore(self.concurrency)

    async def manifest(self, reader: Reader, cm: CompiledMap, doc: str, prefix: str, path: tuple[str, ...]) -> None:
        """Check the keys under ``prefix`` of ``cm`` (the manifest at ``doc`` that ``reader``
        reads first): its exact targets and its redirect roots. ``path``: the chained manifests
        that led here, the caller's target first."""
        self.manifests += 1
        # Keys are read below the prefix; a problem names a chained manifest's key as that
        # manifest does (with the prefix), the caller's as the caller does (without).
        named = prefix if len(path) > 1 else ""
        objects, chained = _exact_targets(cm, prefix)
        roots = _roots(cm, prefix)
        self.total += sum(map(len, objects.values())) + len(chained) + len(roots)
        self._report()
        plain = [(entry, url) for entry, url in roots if not _chained(url)]
        # The plain roots are listed through a reader of a manifest of one prefix entry each, at
        # this manifest's URL: the policy decides on them as it does on this manifest's entries.
        lister = (
            None
            if not plain
            else Reader(
                Manifest.from_json(
                    [{"prefix": f"{entry}/", "path": url} for entry, url in plain],
                    url=None if cm.url is None else doc,  # a manifest without a URL has no origin
                    name=doc,
                ),
                **self.options,
            )
        )
        for windows in objects.values():
            # A permit for the object's first read; the task gives it back (see _object).
            await self.limit.acquire()
            assert self.group is not None
            read = [(k[len(prefix) :], e, end) for k, e, end in windows]
            self.group.create_task(self._object(reader, doc, read, named))
        for key in chained:
            await self._spawn(self._exact(reader, key[len(prefix) :], named))
        for entry, url in roots:
            if lister is not None and not _chained(url):
                await self._spawn(self._root(lister, doc, entry, url))
            else:
                # Not under a permit: it takes one only to read the chained manifest, and
                # then spawns that manifest's checks, which wait for permits of their own
                # (holding one meanwhile could take the last one: a deadlock).
                assert self.group is not None
                self.group.create_task(self._chained(reader, doc, entry, url, path))

    async def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (which reads, and waits for nothing else) as a task of the check once
        fewer than ``concurrency`` are in flight: a manifest of millions of keys never holds
        millions of tasks."""
        await self.limit.acquire()
        assert self.group is not None

        async def bounded() -> None:
            try:
                await work
            finally:
                self.limit.release()
                self._finished()

        self.group.create_task(bounded())

    def _finished(self) -> None:
        self.done += 1
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    async def _object(self, reader: Reader, doc: str, windows: list[tuple[str, int, int | None]], named: str) -> None:
        """Check the exact keys ``windows`` (key, entry, end of its window or ``None``) whose
        entries name one object, under the permit taken for this task: the key of the window
        that ends last is read first, and if it fits, every window fits (one size asked of an
        object that holds a million chunks); if the object does not exist, every key dangles.
        Otherwise each key is checked on its own, each under a permit of its own."""
        first = max(windows, key=lambda w: -1 if w[2] is None else w[2])
        try:
            try:
                await reader.size(first[0])
            finally:
                self.limit.release()
        except DanglingReferenceError as exc:
            for key, entry, _ in windows:
                where = exc.manifest or doc
                self.problems.append(Problem("dangling", where, entry, named + key, exc.url, exc.reason))
        except KvmapError:
            for key, _, _ in windows:
                await self._spawn(self._exact(reader, key, named))
            return
        self.targets += len(windows)
        self.done += len(windows)
        self._report()

    async def _exact(self, reader: Reader, key: str, named: str) -> None:
        """Check the exact key ``key`` of ``reader`` (``named + key`` in problems)."""
        self.targets += 1
        try:
            size = await reader.size(key)
            if size is not None:
                return
            # An exact entry whose chain ends in nothing: the last manifest's entry (or lack of
            # one) for the key is where to look.
            walked = await reader.explain(key)
        except KvmapError as exc:
            self.problems.append(_problem(exc, named + key))
            return
        last = walked.hops[-1]
        why = "no entry of it covers the key" if last.entry is None else "its entry there reads nothing"
        self.problems.append(
            Problem(
                "dangling",
                last.manifest,
                last.entry,
                named + key,
                last.url,
                f"the exact entry's chain ends in nothing ({why}); a whiteout says absent",
            )
        )

    async def _root(self, lister: Reader, doc: str, entry: int, url: str) -> None:
        self.roots += 1
        try:
            found = await lister.list_dir(f"{entry}/")
        except KvmapError as exc:
            # The listing's reader numbers its own entries: name this manifest's.
            self.problems.append(_problem(exc, None, manifest=doc, entry=entry, url=url))
            return
        if not found:
            self.problems.append(
                Problem("missing-root", doc, entry, None, url, "nothing exists under this redirect root")
            )

    async def _chained(self, reader: Reader, doc: str, entry: int, url: str, path: tuple[str, ...]) -> None:
        """The redirect root ``url`` of ``entry`` in ``doc`` that names a chained manifest: it
        must exist; then its keys under the redirect's path are checked too."""
        self.roots += 1
        try:
            opened = await self._open(reader, doc, entry, url, path)
        finally:
            self._finished()
        if opened is not None:
            child, cm = opened
            inner, prefix = _document(url)
            await self.manifest(child, cm, inner, prefix, (*path, url))

    async def _open(
        self, reader: Reader, doc: str, entry: int, url: str, path: tuple[str, ...]
    ) -> tuple[Reader, CompiledMap] | None:
        """A reader of the chained manifest ``url`` and its map, if it is to be checked: it is
        allowed, not checked yet, and holds entries under the redirect's path (else the problem
        is recorded, or it was checked already: ``None``)."""
        try:
            reader.policy.check(Pipeline.parse(url).root, manifest=doc, entry=entry)
        except KvmapError as exc:
            self.problems.append(_problem(exc, None, manifest=doc, entry=entry, url=url))
            return None
        if url in path:
            reason = "it leads back to a manifest up its chain: keys under it loop, or nest without end"
            self.problems.append(Problem("error", doc, entry, None, url, reason))
            return None
        if url in self.opened:
            return None  # checked already through another redirect
        self.opened.add(url)
        if len(path) > DEFAULT_MAX_DEPTH:
            reason = f"the chain of redirects is deeper than {DEFAULT_MAX_DEPTH} manifests"
            self.problems.append(Problem("error", doc, entry, None, url, reason))
            return None
        child = Reader(url, **self.options)
        _, prefix = _document(url)
        try:
            async with self.limit:
                cm = await _compiled(child)
        except KvmapError as exc:
            if isinstance(exc, TargetError) and exc.reason == _NO_MANIFEST:
                reason = "the chained manifest it names does not exist"
                self.problems.append(Problem("missing-root", doc, entry, None, url, reason))
            else:
                self.problems.append(_problem(exc, None, manifest=doc, entry=entry, url=url))
            return None
        if not cm.exact_keys(prefix) and not _roots(cm, prefix):
            reason = f"the chained manifest it names has no entry for keys under {prefix!r}"
            self.problems.append(Problem("missing-root", doc, entry, None, url, reason))
            return None
        return child, cm

    def sorted_problems(self) -> tuple[Problem, ...]:
        """The problems found, sorted, each one once (one dangling target of a chained manifest
        may be found through several keys and through the manifest itself)."""
        order = {kind: i for i, kind in enumerate(KINDS)}
        ranked = sorted(
            self.problems,
            key=lambda p: (
                p.manifest or "",
                -1 if p.entry is None else p.entry,
                order[p.kind],
                p.key or "",
                p.url or "",
            ),
        )
        seen: set[tuple[str, str | None, int | None, str | None, str]] = set()
        kept = []
        for p in ranked:
            ident = (p.kind, p.manifest, p.entry, p.url, p.reason)
            if ident not in seen:
                seen.add(ident)
                kept.append(p)
        return tuple(kept)


def _exact_targets(cm: CompiledMap, prefix: str) -> tuple[dict[str, list[tuple[str, int, int | None]]], list[str]]:
    """The keys under ``prefix`` whose winning exact entry names a target (inline values need
    no check): those naming an object, by object URL, as (key, entry, end of its window or
    ``None`` for none given), and those naming a pipeline (a chained manifest, a zip member)."""
    objects: dict[str, list[tuple[str, int, int | None]]] = {}
    chained: list[str] = []
    for key in cm.exact_keys(prefix):
        found = cm.resolve(key)
        if found is None or found.url is None:
            continue
        if PIPELINE_SEPARATOR in found.url:
            chained.append(key)
        else:
            end = None if found.length is None else (found.offset or 0) + found.length
            objects.setdefault(found.url, []).append((key, found.entry, end))
    return objects, chained


def _chained(url: str) -> bool:
    """Whether the target URL prefix ``url`` is a pipeline ending in a manifest adapter."""
    pipe = Pipeline.parse(url)
    return bool(pipe.adapters) and adapter_kind(pipe.adapters[-1].name) == "manifest"


def _roots(cm: CompiledMap, prefix: str) -> list[tuple[int, str]]:
    """The redirect roots of the prefix and range entries that win for some key under ``prefix``:
    ``(entry, URL prefix)``, in entry order. A root is the entry's target URL prefix, narrowed by
    the part of the keys it wins for under ``prefix`` that every one of them shares."""
    spans: dict[tuple[int, str, int], tuple[str, str | None]] = {}
    for piece in cm.range_targets(prefix_range(prefix)):
        ident = (piece.entry, piece.url, piece.strip)
        first = spans.get(ident)
        spans[ident] = (piece.min if first is None else first[0], piece.max)
    roots = []
    for (entry, url, strip), (lo, hi) in sorted(spans.items()):
        shared = lo[: range_common_prefix_length(lo, hi)] if not KeyRange(lo, hi).is_empty() else ""
        roots.append((entry, url + encode_remainder(shared[strip:])))
    return roots


def _problem(
    exc: KvmapError,
    key: str | None,
    *,
    manifest: str | None = None,
    entry: int | None = None,
    url: str | None = None,
) -> Problem:
    """The problem ``exc`` says there is (for ``key``); ``manifest``, ``entry`` and ``url`` name
    the redirect whose root it is about, when the error does not name its own (or names the
    check's own listing manifest)."""
    if isinstance(exc, ResolveError):
        if isinstance(exc, PolicyError):
            kind = "not-allowed"
        elif isinstance(exc, DanglingReferenceError):
            kind = "dangling"
        elif isinstance(exc, WindowError):
            kind = "past-end"
        else:
            kind = "error"
        if manifest is not None:
            return Problem(kind, manifest, entry, key, exc.url or url, exc.reason)
        return Problem(kind, exc.manifest, exc.entry, key, exc.url, exc.reason)
    if isinstance(exc, ManifestError):  # a chained manifest that is invalid: its own entry and field
        reason = exc.reason if exc.field is None else f"field {exc.field!r}: {exc.reason}"
        return Problem("error", exc.manifest, exc.entry, key, url, reason)
    return Problem("error", manifest, entry, key, url, str(exc))


# -- pinning ------------------------------------------------------------------------------------


def pin_manifest(
    target: str | os.PathLike[str] | Manifest,
    *,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    concurrency: int = 32,
) -> Manifest:
    """``target``'s manifest with every exact target pinned (spec 3.4): each exact entry that names
    one object (a URL without adapters) gets what the object is now.

    * an object store (S3, GCS, Azure, ``memory://``): its ``etag``, its ``version`` where the
      store reports one (S3 with bucket versioning: the ``versionId``), and the ``sha256`` of the
      entry's bytes (its window, or the whole object), all from one ``GET`` of those bytes, so
      the three describe the same version;
    * a local file (``file://``): the ``sha256`` only. A local ETag is the file's inode,
      modification time and size, which a copy, a restore or a ``cp -p`` to another disk changes
      while the bytes stay the same: the hash is the pin that survives moving the data;
    * ``http(s)://``: the ``sha256`` only (kvmap's HTTP client checks no ETag).

    Pins the entry already has are replaced by what is found now (re-pinning after a deliberate
    change). Entries, their order and every other member stay as they are; prefix, range,
    inline and whiteout entries, and exact entries whose path has adapters, are left unpinned.
    ``allow``/``allow_all``/``stores`` are the reader's (the security policy applies as to
    reads). Raises :class:`~kvmap.TargetError` naming the key, entry and URL if a target cannot be
    read (missing: :class:`~kvmap.DanglingReferenceError`), :class:`~kvmap.PolicyError` if
    one is not allowed, and what opening ``target`` raises; ``ValueError`` for a ``concurrency``
    below 1; ``RuntimeError`` from a running event loop (use :func:`pin_manifest_async`).
    """
    return asyncio.run(
        pin_manifest_async(target, allow=allow, allow_all=allow_all, stores=stores, concurrency=concurrency)
    )


async def pin_manifest_async(
    target: str | os.PathLike[str] | Manifest,
    *,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    concurrency: int = 32,
) -> Manifest:
    """:func:`pin_manifest`, awaited on the running event loop."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    reader = Reader(target, allow=allow, allow_all=allow_all, stores=stores)
    manifest = target if isinstance(target, Manifest) else await reader.manifest()
    doc = manifest.url or manifest.name or "<manifest>"
    entries = manifest.to_json()["entries"]
    limit = asyncio.Semaphore(concurrency)

    async def pin(index: int, entry: dict[str, Any]) -> None:
        path = entry["path"]
        url = resolve_target(manifest.url, path)
        # The reader's rules for what an entry may reach (the caller's manifest is trusted
        # no further than its reads would be).
        inside = reader.chain.check(url, doc, index, entry["key"])
        async with limit:
            found = await _pinned(reader, url, entry, inside, doc, index)
        for name in PIN_FIELDS:
            entry.pop(name, None)
        entry.update(found.to_json())

    async with asyncio.TaskGroup() as group:
        for index, entry in enumerate(entries):
            if "key" in entry and isinstance(entry.get("path"), str) and PIPELINE_SEPARATOR not in entry["path"]:
                group.create_task(pin(index, entry))
    return Manifest.from_json(entries, url=manifest.url, name=manifest.name)


async def _pinned(reader: Reader, url: str, entry: dict[str, Any], inside: str | None, doc: str, index: int) -> Pins:
    """The pins of the object at ``url`` now, for ``entry``'s window (see :func:`pin_manifest`)."""
    key, offset, length = entry["key"], entry.get("offset", 0), entry.get("length")
    where = {"key": key, "manifest": doc, "entry": index, "url": url}
    store, path = reader.roots.open(url)
    end = None if length is None else offset + length
    try:
        if isinstance(store, LocalStore | HTTPSource):
            read = Read(url, offset, end, inside=inside, need=end)
            if isinstance(store, LocalStore):
                data = await asyncio.to_thread(backends.read_local, "/" + path, read)
            else:
                data = await asyncio.to_thread(backends.read_http, store, path, read)
            etag = version = None
        else:
            options: Any = (
                {"range": (offset, end)} if end is not None else ({"range": {"offset": offset}} if offset else None)
            )
            if end == offset:
                options = {"head": True}
            result = await obstore.get_async(store, path, options=options)
            if end is not None and result.meta["size"] < end:
                raise ShortObjectError(result.meta["size"], end)
            data = b"" if end == offset else await result.bytes_async()
            etag, version = result.meta.get("e_tag"), result.meta.get("version")
    except FileNotFoundError:
        raise DanglingReferenceError(
            "dangling reference: the object its exact entry names does not exist", **where
        ) from None
    except ShortObjectError as exc:
        raise WindowError(f"object is shorter than the window its entry gives: {exc}", **where) from None
    except Exception as exc:
        raise TargetError(f"cannot pin it: {describe(exc)}", **where) from exc
    if data is None:
        raise DanglingReferenceError("dangling reference: the object its exact entry names does not exist", **where)
    if end is not None and len(data) < end - offset:
        raise WindowError("object is shorter than the window its entry gives", **where)
    return Pins(etag, version, hashlib.sha256(data).hexdigest())
