"""Following a key through URL pipelines and chained manifests to its bytes — without I/O.

The walk is written once, as generators that *yield* the reads they need
(:class:`Read`) and receive the answers: the bytes, ``None`` for an object that
does not exist, or an exception thrown in. :mod:`kvmap.reader` drives them with
obstore, synchronously or asynchronously; tests can drive them with anything.
So there is one implementation of the rules for both, and everything that is
cached (manifests, zip directories, policy decisions) costs no I/O at all.

The rules, in the order the walk meets them:

* A target is a pipeline ``ROOT|adapter:path|...``. The caller's own target is
  trusted; a target named by a manifest entry must pass the :class:`Policy`
  (which may look up the real path of a ``file://`` target through the
  ``realpath`` function its maker gave it; the walk itself reads nothing).
  A decision is cached per (target, manifest) until :meth:`Chain.forget`; so is
  one per directory, which a sibling target passes when the policy says the
  decision cannot differ (:meth:`Policy.siblings`: one ``lstat`` for a local file,
  instead of a whole decision per chunk of a redirected array).
* ``kvmap:`` / ``zarr_chunk_manifest:`` read the resource to their left as a
  manifest (fetched once, compiled, cached by location) and resolve their path
  in it; the winning entry's target is followed in turn, and its byte window,
  if any, is applied to what that target yields.
* ``zip:`` takes a member of the archive to its left: stored members are byte
  windows of the archive, deflated members are read and inflated.
* Absent means absent: no covering entry, a whiteout, or a missing object, member
  or nested manifest gives ``None``. A missing manifest that the caller named
  is an error. Every other failure raises.
* A walk of more than ``max_depth`` manifest hops, or one that comes back to a
  (manifest, key) it has seen, raises :class:`~kvmap.ChainError` showing the chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Generic, TypeVar

from kvmap.compiled import CompiledMap, Resolution, compile
from kvmap.entries import Pins
from kvmap.errors import (
    ChainError,
    DanglingReferenceError,
    ObjectChangedError,
    PipelineError,
    PolicyError,
    ResolveError,
    TargetError,
    WindowError,
)
from kvmap.fetch import Loading
from kvmap.formats import Fetch, Format, adapter_kind, for_adapter
from kvmap.keymap import KeyMap
from kvmap.manifest import Manifest
from kvmap.pipeline import Adapter, Pipeline
from kvmap.policy import Policy, allow_prefixes
from kvmap.url import PIPELINE_SEPARATOR, encode_remainder, split_name
from kvmap.zipindex import TAIL_SIZE, ZipFormatError, ZipIndex, check_crc, inflate, local_header_size

__all__ = [
    "ByteRange",
    "Chain",
    "ChangedObjectError",
    "EscapedError",
    "Hop",
    "LimitExceededError",
    "Location",
    "PinError",
    "Read",
    "ShortObjectError",
    "Walk",
]

#: A byte request: ``(start, end)`` half-open, ``(start, None)`` from ``start`` to
#: the end, ``(None, n)`` the last ``n`` bytes. ``None`` asks for everything.
ByteRange = tuple[int, int] | tuple[int, None] | tuple[None, int]

DEFAULT_MAX_DEPTH = 16
DEFAULT_CACHE_SIZE = 128
#: The largest manifest read by default: 2 GiB, above the largest JSON manifests kvmap is
#: benchmarked with (about 1 GB for 1e7 entries), far below a sparse or lying 1 TiB object.
DEFAULT_MAX_MANIFEST_BYTES = 2 << 30

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, 0.8 us a
# Read against 0.25, on every store.get. Hashed by value (batches group reads in sets and dicts);
# nothing changes a Read once made.
@dataclass(slots=True, unsafe_hash=True)
class Read:
    """One read the walk needs. The driver answers with bytes (for ``head``: the size as
    an ``int``), or ``None`` if the object does not exist, or throws the failure in."""

    url: str  # a root URL: no adapters
    start: int = 0
    end: int | None = None  # exclusive; None: to the end of the object
    suffix: int | None = None  # instead of start/end: the last ``suffix`` bytes
    head: bool = False  # instead of bytes: the object's size
    # The range lies inside a window of known length, so it is valid unless the object is
    # damaged; only such reads are batched into one coalesced request per object.
    within: bool = False
    # The most bytes the answer may hold (manifests): the driver refuses a larger object before
    # reading it, and stops reading one that turns out larger than it said.
    limit: int | None = None
    # A manifest or zip directory: concurrent first reads of it are shared by the driver.
    once: bool = False
    # The size the object must have at least (the end of the entry's window): the driver checks
    # it where the response tells the size, and raises ShortObjectError if it is less.
    need: int | None = None
    # The identity (ETag) the object must still have: a zip archive whose directory was read
    # from that version. The driver raises ChangedObjectError if it has another.
    tag: str | None = None
    # For ``head``: answer ``(size, tag)`` instead of the size (``tag`` None: the store has none).
    identify: bool = False
    # A local file must lie strictly inside this real directory, checked on what the driver
    # opened (kvmap.localfs), not only when the policy decided (Location.inside).
    inside: str | None = None
    # What the entry pins of the object (its etag and version; a sha256 is the walk's to check,
    # on the whole window): the driver reads that version where the store has versions, and
    # raises PinError if the response's metadata says another object answered.
    pins: Pins | None = None


class LimitExceededError(Exception):
    """Raised by a driver: the object is larger than ``Read.limit`` (nothing more was read)."""

    def __init__(self, limit: int, size: int | None) -> None:
        self.limit, self.size = limit, size
        super().__init__(f"object is larger than {limit:,} bytes" + ("" if size is None else f" ({size:,})"))


class EscapedError(Exception):
    """Raised by a driver: the object's real path lies outside ``Read.inside`` (a link swapped in
    since the policy allowed it); the walk reports it as a :class:`~kvmap.PolicyError`."""


class ChangedObjectError(Exception):
    """Raised by a driver: the object no longer has the identity ``Read.tag`` (it was replaced)."""


class PinError(Exception):
    """Raised by a driver: the object is not the one ``Read.pins`` names (another ETag or version,
    the pinned version does not exist, or the store cannot say which version it read)."""


class ShortObjectError(Exception):
    """Raised by a driver: the object is shorter than ``Read.need``."""

    def __init__(self, size: int, need: int) -> None:
        self.size, self.need = size, need
        super().__init__(f"object holds {size:,} bytes, the window needs {need:,}")


@dataclass(frozen=True, slots=True)
class Location:
    """Where bytes are: a window ``[offset, offset+length)`` of the object at root URL
    ``url`` (``length`` ``None``: to its end), or inline ``data``. ``tag``: the identity the
    object must still have (a zip archive's version whose directory placed the window);
    ``crc``: the CRC-32 the whole window must have (a stored zip member)."""

    url: str | None
    offset: int = 0
    length: int | None = None
    data: bytes | None = None
    # What reads of the location must hold to, not where it is: not part of its equality.
    tag: str | None = field(default=None, compare=False)
    crc: int | None = field(default=None, compare=False)
    # The real directory the object must lie strictly inside when it is read (the policy's
    # confinement of the decision that allowed it; None: none).
    inside: str | None = field(default=None, compare=False)
    # What the exact entry that named the object pins of it (spec 3.4): every read checks them.
    pins: Pins | None = field(default=None, compare=False)
    # The window ``(offset, length)`` a ``sha256`` pin is of: the pinning entry's, which an outer
    # entry's window may narrow afterwards (None: this location's own window).
    hashed: tuple[int, int | None] | None = field(default=None, compare=False)

    def window(self, offset: int | None, length: int | None) -> Location:
        """The sub-window ``[offset, offset+length)`` of this location (keeping its ``tag``, and
        its ``crc`` if it is the whole of it).

        Raises ``ValueError`` if it overruns a length this location knows.
        """
        offset = offset or 0
        if self.data is not None:
            end = len(self.data) if length is None else offset + length
            if end > len(self.data) or offset > len(self.data):
                raise ValueError(f"window [{offset}, {end}) overruns {len(self.data)} inline bytes")
            return Location(None, data=self.data[offset:end])
        if self.length is not None:
            if length is None:
                length = self.length - offset
            if offset + length > self.length or length < 0:
                raise ValueError(f"window [{offset}, {offset + length}) overruns the {self.length} bytes it lies in")
        whole = offset == 0 and length == self.length
        return replace(self, offset=self.offset + offset, length=length, crc=self.crc if whole else None)


@dataclass(frozen=True, slots=True)
class Hop:
    """One manifest lookup of a walk: in the manifest at ``manifest``, ``key`` won by
    ``entry`` (``None``: no entry covers the key), sending kvmap to ``url`` (``None``:
    inline bytes or absent) with the entry's window."""

    manifest: str
    key: str
    entry: int | None
    url: str | None
    offset: int | None = None
    length: int | None = None
    inline: bool = False

    def __str__(self) -> str:
        if self.entry is None:
            return f"{self.manifest} [{self.key!r}]: no entry (absent)"
        if self.inline:
            target = "inline bytes"
        elif self.url is None:
            target = "whiteout (absent)"
        else:
            target = self.url
            if self.offset is not None or self.length is not None:
                target += f" [offset {self.offset or 0}, length {'-' if self.length is None else self.length}]"
        return f"{self.manifest} [{self.key!r}]: entry {self.entry} -> {target}"


@dataclass(slots=True)
class Walk:
    """The state of one key's walk: its key (for errors) and the hops so far."""

    key: str | None
    hops: list[Hop] = field(default_factory=list)
    explain: bool = False  # record the entry of a whiteout too
    # The entry deciding what is read now is an exact one naming an object: a missing object,
    # archive, member or nested manifest there is a dangling reference, not an absent key.
    strict: bool = False


@dataclass(slots=True, eq=False)
class _Frame:
    """A pipeline being applied: ``res`` (``None``: the caller's target) named it from the
    manifest at ``via``, with ``suffix`` for its last adapter; ``doc`` is the document URL
    of what its adapters have reached so far, ``next`` the next adapter."""

    pipe: Pipeline
    res: Resolution | None
    suffix: str
    via: str | None
    strict: bool
    doc: str = ""
    next: int = 0
    pins: Pins | None = None  # what the entry that named the pipeline pins of its object

    def __post_init__(self) -> None:
        self.doc = self.pipe.root


class _Bounded(Generic[K, V]):
    """A mapping of at most ``size`` items that forgets the oldest first.

    Oldest, not least recently used: a hit stays a plain lookup (it is on every
    key's path), and a manifest evicted while still in use is simply read again
    once. An ``OrderedDict``, not a ``dict``: evicting a dict's first item over and
    over leaves deleted slots that every later ``next(iter(d))`` walks past (2 us a
    put once full, against 0.2 us).
    """

    __slots__ = ("_items", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items.pop(key, None)
        self._items[key] = value
        if len(self._items) > self.size:
            with contextlib.suppress(KeyError):  # threads (zarr's sync I/O) may evict at once
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def drop(self, which: Callable[[K], bool]) -> None:
        """Forget every item whose key ``which`` says."""
        for key in [k for k in list(self._items) if which(k)]:
            self._items.pop(key, None)


class Chain:
    """The walk's rules and caches. ``policy`` decides what manifests may reach;
    ``cache_size`` bounds the manifests (and, separately, zip directories) kept."""

    __slots__ = (
        "_deciding",
        "_decisions",
        "_folders",
        "_heads",
        "_located",
        "_maps",
        "_offsets",
        "_top",
        "_top_pins",
        "_zips",
        "max_depth",
        "max_manifest_bytes",
        "policy",
    )

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
    ) -> None:
        self.policy = policy if policy is not None else Policy()
        self.max_depth = max_depth
        self.max_manifest_bytes = max_manifest_bytes
        self._top: tuple[KeyMap, str, str, int] | None = None
        # The pins of the top map's entries (None: it has none), so that plan() takes pinned
        # entries to the walk at the cost of one test, and every other entry as before.
        self._top_pins: Any = None
        self._maps: _Bounded[tuple[str, Location, str], KeyMap] = _Bounded(cache_size)
        # Where each map that reads as it goes (not a CompiledMap) reads from: its document.
        self._located: weakref.WeakKeyDictionary[KeyMap, Location] = weakref.WeakKeyDictionary()
        self._zips: _Bounded[Location, tuple[ZipIndex, Location]] = _Bounded(cache_size)
        self._heads: _Bounded[Location, tuple[int, str]] = _Bounded(cache_size)  # an archive's size and identity
        self._offsets: _Bounded[tuple[Location, str], int] = _Bounded(cache_size * 64)
        # Decisions, as their confinement ("" for none), and per directory a test for the siblings
        # that are decided the same way (Policy.siblings), with that confinement.
        self._decisions: _Bounded[tuple[str, str], str] = _Bounded(cache_size * 64)
        self._deciding = threading.Lock()
        self._folders: _Bounded[tuple[str, str], tuple[Callable[[str], bool], str | None]] = _Bounded(cache_size * 64)

    @property
    def top(self) -> tuple[KeyMap, str, str, int] | None:
        """The caller's top manifest, once loaded: ``(map, document URL, key prefix, hops it took)``,
        what :meth:`plan` resolves in. Dropped by :meth:`forget` with every other cache."""
        return self._top

    @top.setter
    def top(self, value: tuple[KeyMap, str, str, int] | None) -> None:
        self._top = value
        self._top_pins = None if value is None else self._pins_of(value[0])

    # -- pins -------------------------------------------------------------------------

    def _pins_of(self, cm: KeyMap) -> Any:
        """What says the pins of ``cm``'s entries: a dict entry -> Pins (a compiled map's own),
        the map itself if it looks them up as it reads (``pins_io``, and ``known_pins`` for what it
        can say without reading), or ``None``: it has none."""
        if isinstance(cm, CompiledMap):
            return cm.pins
        if getattr(cm, "pinned", False):
            return cm
        return None

    def _entry_pins(self, cm: KeyMap, key: str, entry: int, walk: Walk) -> Generator[Read, Any, Pins | None]:
        """The pins of ``cm``'s entry ``entry``, which decides ``key`` (``None``: none)."""
        pinned = self._pins_of(cm)
        if pinned is None:
            return None
        if isinstance(pinned, dict):
            return pinned.get(entry)
        found: Pins | None = yield from self.ask(cm, cm.pins_io(key), walk)  # type: ignore[attr-defined]
        return found

    # -- the walk ---------------------------------------------------------------------

    def locate(
        self, target: Pipeline, walk: Walk, suffix: str = "", *, inside: str | None = None
    ) -> Generator[Read, Any, Location | None]:
        """Follow the caller's ``target`` (with ``suffix`` appended to its last adapter's
        path) to a :class:`Location`, or ``None`` if the key is absent. ``inside``: the
        confinement of the decision that allowed the target (:meth:`check`), if not the caller's."""
        return self._walk(target, None, walk, suffix, inside)

    def step(self, cm: KeyMap, doc: str, key: str, walk: Walk) -> Generator[Read, Any, Location | None]:
        """Resolve ``key`` in the compiled manifest ``cm`` found at ``doc``, and follow it."""
        return self._walk(None, (cm, doc, key), walk, "", None)

    def _walk(
        self,
        target: Pipeline | None,
        start: tuple[KeyMap, str, str] | None,
        walk: Walk,
        suffix: str,
        inside: str | None,
    ) -> Generator[Read, Any, Location | None]:
        # A loop over an explicit stack, not recursion: a chain of any length (up to max_depth)
        # walks in constant Python stack depth. Each frame is a pipeline being applied; a
        # manifest hop that names another pipeline suspends its own until that one ends.
        stack: list[_Frame] = []
        frame: _Frame | None = None
        loc: Location | None = None
        lookup = start
        if target is not None:
            frame = _Frame(target, None, suffix, None, False)
            loc = Location(target.root, inside=inside)
        while True:
            if lookup is not None:
                # One manifest hop: resolve, record, and either end here or start the target's pipeline.
                cm, doc, key = lookup
                lookup = None
                if isinstance(cm, CompiledMap):
                    res = cm.resolve(key)
                else:
                    res = yield from self.ask(cm, cm.resolve_io(key), walk)
                if res is None:
                    winner = (yield from self.ask(cm, cm.explain_io(key), walk)).winner if walk.explain else None
                    hop = Hop(doc, key, winner, None)
                else:
                    hop = Hop(doc, key, res.entry, res.url, res.offset, res.length, res.data is not None)
                self._enter(hop, walk)
                if res is None:
                    return None
                if res.data is not None:
                    loc = Location(None, data=res.data)
                    walk.strict = False
                    continue  # the rest of the current pipeline applies to the inline bytes
                else:
                    assert res.url is not None
                    try:
                        pipe = Pipeline.parse(res.url)
                    except PipelineError as exc:
                        raise PipelineError(f"{doc} entry {res.entry}: {exc}") from None
                    # An exact entry that names an object asserts that it exists (spec 11.3).
                    if isinstance(cm, CompiledMap):
                        exact = cm.is_exact(key)
                    else:
                        exact = yield from self.ask(cm, cm.is_exact_io(key), walk)
                    inside = self.check(pipe.root, doc, res.entry, walk.key, exact)
                    walk.strict = exact
                    pins = (yield from self._entry_pins(cm, key, res.entry, walk)) if exact else None
                    if frame is not None:
                        stack.append(frame)
                    frame = _Frame(pipe, res, "", doc, walk.strict, pins=pins)
                    loc = Location(pipe.root, inside=inside)
                    continue
            elif frame is not None and frame.next < len(frame.pipe.adapters):
                # The next adapter of the current pipeline.
                assert loc is not None
                pipe, i = frame.pipe, frame.next
                frame.next += 1
                adapter = pipe.adapters[i]
                last = i == len(pipe.adapters) - 1
                path = adapter.path + frame.suffix if last else adapter.path
                walk.strict = frame.strict
                if adapter_kind(adapter.name) == "zip":
                    loc = yield from self._zip_member(loc, path, walk)
                    if loc is None:
                        return None
                else:
                    required = frame.via is None or frame.strict
                    found = yield from self.manifest(loc, frame.doc, adapter.name, walk, required=required)
                    if found is None:
                        return None
                    lookup = (found, frame.doc, path)
                if not last:
                    frame.doc = f"{frame.doc}|{Adapter(adapter.name, path).format()}"
                continue
            # The current pipeline is done: apply its entry's window, resume the one that named it.
            if frame is not None and frame.res is not None and loc is not None:
                res = frame.res
                if res.offset is not None or res.length is not None:
                    try:
                        loc = loc.window(res.offset, res.length)
                    except ValueError as exc:
                        raise WindowError(
                            str(exc), key=walk.key, manifest=frame.via, entry=res.entry, url=res.url
                        ) from None
                if frame.pins is not None:
                    loc = replace(loc, pins=frame.pins, hashed=(loc.offset, loc.length))
            if not stack:
                return loc
            frame = stack.pop()

    def _first(self, key: str) -> tuple[Resolution | None, str, Callable[[], bool]] | None:
        """``key``'s answer in :attr:`top`, its document URL and a test of whether the answer is
        an exact entry's, if it takes no read, leaves depth to spare and is no pinned entry's;
        ``None``: take the walk."""
        top = self._top
        if top is None:
            return None
        cm, doc, path, hops = top
        if hops >= self.max_depth:
            return None
        if isinstance(cm, CompiledMap):
            res, exact = cm.resolve(path + key), partial(cm.is_exact, path + key)
        else:
            known = cm.known(path + key)
            if known is None:
                return None  # the map would have to read: the walk does that
            res, exact = known[0], partial(bool, known[1])
        pinned = self._top_pins
        if res is not None and pinned is not None:
            if isinstance(pinned, dict):
                if res.entry in pinned:
                    return None  # the walk checks what the entry pins
            else:
                told = pinned.known_pins(path + key)
                if told is None or told[0] is not None:
                    return None  # pinned, or not known to pin nothing: the walk asks and checks
        return res, doc, exact

    def plan(self, key: str, byte_range: ByteRange | None) -> tuple[Read | None, Any] | None:
        """The walk in one step, for its most common case: ``key`` resolved in :attr:`top` by an
        entry that names an object, read directly. ``(read, expected length or None)``; ``(None,
        answer)`` for an absent key or inline bytes; ``None``: take the walk (no top manifest
        yet, pipelines, open-ended ranges, empty ranges, depth). It applies the rules of
        :meth:`step` and :meth:`read` to the cases they decide in one hop; a property test
        holds the two to the same answers. A read that finds no object must be given back to
        the walk if :meth:`strict` says so (a dangling reference is an error)."""
        first = self._first(key)
        if first is None:
            return None
        res, doc, exact = first
        if res is None:
            return None, None
        if res.data is not None:
            start, end = clamp(byte_range, len(res.data))
            return None, res.data[start:end]
        url = res.url
        assert url is not None
        if not url or PIPELINE_SEPARATOR in url:
            return None
        inside = self.check(url, doc, res.entry, key, exact)
        if res.length is not None:
            start, end = clamp(byte_range, res.length)
            if end <= start:
                return None
            offset = res.offset or 0
            read = Read(url, offset + start, offset + end, within=True, need=offset + res.length, inside=inside)
            return read, end - start
        if res.offset or byte_range is not None:
            return None
        return Read(url, inside=inside), None

    def place(self, key: str) -> tuple[Location | None] | None:
        """:meth:`locate` in one step where :meth:`plan` would take one: ``(where key's bytes
        are, or None if absent)``; ``None``: take the walk. A property test holds the two to
        the same answers."""
        first = self._first(key)
        if first is None:
            return None
        res, doc, exact = first
        if res is None:
            return (None,)
        if res.data is not None:
            return (Location(None, data=res.data),)
        url = res.url
        assert url is not None
        if not url or PIPELINE_SEPARATOR in url:
            return None
        inside = self.check(url, doc, res.entry, key, exact)
        return (Location(url, res.offset or 0, res.length, inside=inside),)

    def strict(self, key: str) -> bool:
        """Whether a missing object for ``key``, read by :meth:`plan`, is a dangling reference."""
        top = self._top
        if top is None:
            return False
        if isinstance(top[0], CompiledMap):
            return top[0].is_exact(top[2] + key)
        known = top[0].known(top[2] + key)
        return known is None or known[1]  # not known (any more): the walk decides

    def _enter(self, hop: Hop, walk: Walk) -> None:
        for seen in walk.hops:
            if seen.manifest == hop.manifest and seen.key == hop.key:
                walk.hops.append(hop)
                raise ChainError(f"the chain loops:\n  {_render_chain(walk.hops)}", key=walk.key)
        walk.hops.append(hop)
        if len(walk.hops) > self.max_depth:
            raise ChainError(
                f"the chain is deeper than {self.max_depth} manifests:\n  {_render_chain(walk.hops)}", key=walk.key
            )

    def check(
        self,
        url: str,
        manifest: str,
        entry: int | None,
        key: str | None,
        exact: bool | Callable[[], bool] = True,
    ) -> str | None:
        """Raise :class:`~kvmap.PolicyError` (naming ``key``) unless entry ``entry`` of
        ``manifest`` may reach ``url``; return the decision's confinement (:meth:`Policy.check`),
        which every read of ``url`` carries to the moment of its I/O. ``exact``: whether the
        entry is an exact key's (or a test of it, asked only on a refusal), which decides the
        allow prefix a refusal suggests."""
        decided = (url, manifest)
        known = self._decisions.get(decided)
        if known is not None:
            return known or None
        directory, name = split_name(url)
        folder = (directory, manifest)
        sibling = self._folders.get(folder)
        if sibling is not None and sibling[0](name):
            inside = sibling[1]
        else:
            # One full decision at a time: threads that meet a new directory at once share it
            # (asyncio needs no lock: nothing here awaits).
            with self._deciding:
                sibling = self._folders.get(folder)
                if sibling is not None and sibling[0](name):
                    inside = sibling[1]
                else:
                    try:
                        inside = self.policy.check(url, manifest=manifest, entry=entry, key=key)
                    except PolicyError as exc:
                        raise self._refused(exc, url, manifest, exact if isinstance(exact, bool) else exact()) from None
                    if sibling is None:
                        same = self.policy.siblings(url)
                        if same is not None:
                            self._folders.put(folder, (same, inside))
        self._decisions.put(decided, inside or "")
        return inside

    def _refused(self, exc: PolicyError, url: str, manifest: str, exact: bool) -> PolicyError:
        """``exc``, suggesting for a prefix or range entry (not ``exact``) the allow prefix of its
        target root, where the maps of ``manifest`` say what it is; and saying too which allow
        prefixes every target of the manifest needs (so that allowing the one that failed is not
        the first of many errors)."""
        cms = [cm for (doc, _, _), cm in list(self._maps._items.items()) if doc == manifest]
        if self.top is not None and self.top[1] == manifest:
            cms.append(self.top[0])
        roots = {root for cm in cms for root in cm.target_roots()}
        needed = allow_prefixes(roots, manifest)
        # The entry's own target root: the longest directory some entry redirects to that holds
        # the URL (an exact target is no root: the policy suggests its bucket or directory).
        covering = [] if exact else [r for r in roots if r != url and r.endswith("/") and url.startswith(r)]
        if covering:
            try:
                self.policy.check(url, manifest=manifest, entry=exc.entry, key=exc.key, hint=max(covering, key=len))
            except PolicyError as better:
                exc = better
        if not needed or len(needed) > 8:
            return exc
        flags = " ".join(f"--allow {p}" for p in needed)
        reason = f"{exc.reason}; everything this manifest names outside its origin is under {flags}"
        return PolicyError(reason, key=exc.key, manifest=exc.manifest, entry=exc.entry, url=exc.url)

    # -- manifests --------------------------------------------------------------------

    def manifest(
        self, loc: Location, doc: str, adapter: str, walk: Walk, *, required: bool
    ) -> Generator[Read, Any, KeyMap | None]:
        """The manifest at ``loc`` (document URL ``doc``), read in the format the pipeline
        adapter ``adapter`` names (:mod:`kvmap.formats`), as a map (opened by the format's
        opener, which may read only part of it, or loaded whole and compiled), cached.
        ``None`` if it does not exist, unless ``required``."""
        fmt = for_adapter(adapter)
        # The document URL is part of the identity: equal bytes found at two places (inflated
        # zip members) resolve their relative paths differently.
        ident = (doc, loc, fmt.name)
        cached = self._maps.get(ident)
        if cached is not None:
            return cached
        found: KeyMap | Manifest | None
        if fmt.opener is not None:
            found = yield from self._serve(loc, fmt.opener(doc), walk)
            if found is None:
                self._missing(doc, walk, required=required)
        else:
            found = yield from self.load(loc, doc, fmt, walk, required=required)
        if found is None:
            return None
        cached = self._maps.get(ident)  # another walk of a batch may have opened it meanwhile
        if cached is not None:
            return cached
        cm = compile(found) if isinstance(found, Manifest) else found
        if not isinstance(cm, CompiledMap):
            self._located[cm] = loc
        self._maps.put(ident, cm)
        return cm

    def load(
        self, loc: Location, doc: str, fmt: Format, walk: Walk, *, required: bool
    ) -> Generator[Read, Any, Manifest | None]:
        """The manifest at ``loc`` (document URL ``doc``) read by ``fmt``'s loader, every read
        it asks for made through this chain (not cached). ``None`` if it does not exist,
        unless ``required``."""
        if fmt.loader is None:
            raise PipelineError(f"{doc}: kvmap does not read {fmt.description} through pipelines")
        manifest = yield from self._serve(loc, fmt.loader(doc), walk)
        if manifest is None:
            self._missing(doc, walk, required=required)
        return manifest

    def _missing(self, doc: str, walk: Walk, *, required: bool) -> None:
        if walk.strict:
            self._absent(walk, doc, "manifest")
        if required:
            raise TargetError("manifest not found", key=walk.key, url=doc)

    def ask(self, m: KeyMap, lookup: Loading[T], walk: Walk) -> Generator[Read, Any, T]:
        """The answer of ``lookup``, a lookup of the map ``m``: a map in memory answers at once;
        the reads of one this chain opened are made of its document, as every manifest read is."""
        loc = None if isinstance(m, CompiledMap) else self._located[m]
        return (yield from self._serve(loc, lookup, walk))

    def _serve(self, loc: Location | None, loading: Loading[T], walk: Walk) -> Generator[Read, Any, T]:
        """Run ``loading`` (a loader, an opener or a lookup) to its end, answering each of its
        fetches by reading the document at ``loc`` (``None``: a map in memory, which asks for nothing)."""
        try:
            request = next(loading)
            while True:
                assert loc is not None, "a map in memory asks for nothing"
                data = yield from self._fetched(loc, request, walk)
                request = loading.send(data)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _fetched(self, loc: Location, fetch: Fetch, walk: Walk) -> Generator[Read, Any, bytes | None]:
        """What a format loader asked for (:class:`~kvmap.formats.Fetch`) of the document at
        ``loc``: the document or an object below it (a directory document), whole or a range,
        read as manifests are (bounded, shared); ``None`` if it does not exist."""
        where = loc
        if fetch.name:
            if loc.url is None or loc.data is not None or loc.offset or loc.length is not None:
                return None  # a document inside an archive, or inline, has nothing below it
            if not _plain_relative(fetch.name):
                raise TargetError(f"a manifest format asked for {fetch.name!r} below it", key=walk.key, url=loc.url)
            where = Location(f"{loc.url.rstrip('/')}/{encode_remainder(fetch.name)}", inside=loc.inside)
        strict, walk.strict = walk.strict, False
        try:
            if fetch.byte_range is None:
                data = yield from self.read_all(where, walk, limit=self.max_manifest_bytes)
            else:
                data = yield from self.read(where, fetch.byte_range, walk, limit=self.max_manifest_bytes)
        finally:
            walk.strict = strict
        return None if data is None else bytes(data)

    def documents(self) -> set[str]:
        """The root URLs of the manifests and zip archives this chain has read, and of every
        pipeline their entries name: what writes through a store must never touch (spec 12.2)."""
        roots = {loc.url for (_, loc, _) in list(self._maps._items) if loc.url is not None}
        roots.update(loc.url for loc in list(self._zips._items) if loc.url is not None)
        for cm in list(self._maps._items.values()):
            roots.update(cm.pipeline_roots())
        if self.top is not None:
            roots.update(self.top[0].pipeline_roots())
            roots.add(self.top[1].partition(PIPELINE_SEPARATOR)[0])
        return roots

    def forget(self) -> None:
        """Drop every cached manifest, zip directory and policy decision (and the real paths
        the policy remembered)."""
        for cache in (self._maps, self._zips, self._heads, self._offsets, self._decisions, self._folders):
            cache._items.clear()
        self.top = None
        forget = getattr(self.policy.realpath, "forget", None)
        if forget is not None:
            forget()

    # -- zip archives -----------------------------------------------------------------

    def zip_index(self, archive: Location, walk: Walk) -> Generator[Read, Any, ZipIndex | None]:
        """The central directory of the zip archive at ``archive`` (cached); ``None`` if it does not exist."""
        found = yield from self._zip(archive, walk)
        return None if found is None else found[0]

    def _zip(self, archive: Location, walk: Walk) -> Generator[Read, Any, tuple[ZipIndex, Location] | None]:
        """The archive's directory (cached), and the archive's location tagged with the identity
        of the version it was read from: every read through it is of that version, or fails."""
        found = self._zips.get(archive)
        if found is None:
            try:
                found = yield from self._zip_index(archive, walk)
            finally:
                self._heads._items.pop(archive, None)
            if found is None:
                return None
            found = self._zips.get(archive) or found  # keep the first, if a batch read it twice
            self._zips.put(archive, found)
        return found

    def _zip_member(self, archive: Location, name: str, walk: Walk) -> Generator[Read, Any, Location | None]:
        found = yield from self._zip(archive, walk)
        where = f"{archive.url or '<inline>'}|zip:{name}"
        if found is None:
            return self._absent(walk, archive.url, "zip archive")
        # The cached identity, with this walk's own confinement (another walk may have loaded it).
        index, archive = found[0], replace(found[1], inside=archive.inside)
        member = index.members.get(name)
        if member is None:
            return self._absent(walk, where, "zip member")
        if member.encrypted or member.method not in (0, 8):
            why = "encrypted" if member.encrypted else f"compressed with method {member.method}"
            raise TargetError(f"zip member is {why}; kvmap reads stored and deflated members", key=walk.key, url=where)
        start = self._offsets.get((archive, name))
        if start is None:
            header = yield from self.read_all(self._window(archive, member.header_offset, 30, where, walk), walk)
            try:
                start = member.header_offset + local_header_size(bytes(header or b""))
            except ZipFormatError as exc:
                raise TargetError(str(exc), key=walk.key, url=where) from None
            self._offsets.put((archive, name), start)
        stored = self._window(archive, start, member.compressed_size, where, walk)
        if member.method == 0:
            if member.compressed_size != member.size:
                raise TargetError(
                    f"zip archive is damaged: stored member of {member.size} bytes takes {member.compressed_size}",
                    key=walk.key,
                    url=where,
                )
            if member.size == 0 and member.crc != 0:
                # An empty window is never fetched, so this is where its CRC-32 (that of b"") is checked.
                raise TargetError(
                    f"zip member is damaged: its CRC-32 is 00000000, its directory entry says {member.crc:08x}",
                    key=walk.key,
                    url=where,
                )
            # Its CRC-32 is checked whenever the whole member is read (a range of it cannot be).
            return replace(stored, crc=member.crc)
        raw = yield from self.read_all(stored, walk)
        try:
            # Bounded: never more than the size the directory declares (a small member cannot
            # inflate to gigabytes), and its CRC-32 checked.
            data = inflate(bytes(raw or b""), member.size, member.crc)
        except ZipFormatError as exc:
            raise TargetError(f"zip member does not inflate: {exc}", key=walk.key, url=where) from None
        return Location(None, data=data)

    def _zip_index(self, archive: Location, walk: Walk) -> Generator[Read, Any, tuple[ZipIndex, Location] | None]:
        size = archive.length
        if archive.data is not None:
            size = len(archive.data)
        else:
            # The archive's identity (and size) now: the directory, and every member read through
            # it, must come from this version (a replaced archive is read again, never mixed).
            assert archive.url is not None
            # Kept while the directory is read: a walk that comes after this HEAD but before the
            # directory is cached must not ask again (a concurrent first use reads it once).
            # Dropped once it is cached or has failed: a later walk asks afresh.
            meta = self._heads.get(archive)
            if meta is None:
                meta = yield from self._fetch(
                    Read(archive.url, head=True, identify=True, inside=archive.inside, once=True), walk
                )
                if meta is None:
                    return None
                self._heads.put(archive, meta)
            total, tag = meta
            archive = replace(archive, tag=tag)
            if size is None:
                size = int(total) - archive.offset
        tail_start = max(0, size - TAIL_SIZE)
        where = f"{archive.url or '<inline>'} (zip)"
        tail = yield from self.read_all(self._window(archive, tail_start, size - tail_start, where, walk), walk)
        if tail is None:
            return None
        tail = bytes(tail)
        try:
            cd_offset, cd_size = ZipIndex.locate(tail, size)
            if cd_offset >= tail_start:
                directory = tail[cd_offset - tail_start : cd_offset - tail_start + cd_size]
            else:
                got = yield from self.read_all(self._window(archive, cd_offset, cd_size, where, walk), walk)
                directory = bytes(got or b"")
            return ZipIndex.parse(cd_offset, directory), archive
        except (ZipFormatError, UnicodeDecodeError) as exc:
            raise TargetError(f"not a readable zip archive: {exc}", key=walk.key, url=where) from None

    @staticmethod
    def _window(loc: Location, offset: int, length: int, where: str, walk: Walk) -> Location:
        try:
            return loc.window(offset, length)
        except ValueError as exc:
            raise TargetError(f"zip archive is damaged: {exc}", key=walk.key, url=where) from None

    # -- reading ----------------------------------------------------------------------

    def read_all(self, loc: Location, walk: Walk, *, limit: int | None = None) -> Generator[Read, Any, Any]:
        """All bytes of ``loc`` — a manifest, an archive's directory or member: a read shared
        with concurrent first readers — or ``None`` if its object does not exist (the caller
        decides what that means). Raises :class:`~kvmap.TargetError` for more than ``limit`` bytes."""
        size = len(loc.data) if loc.data is not None else loc.length
        if limit is not None and size is not None and size > limit:
            raise _too_large(limit, size, walk, loc.url)
        strict, walk.strict = walk.strict, False
        try:
            return (yield from self.read(loc, None, walk, limit=limit, once=True))
        finally:
            walk.strict = strict

    def read(
        self, loc: Location, byte_range: ByteRange | None, walk: Walk, *, limit: int | None = None, once: bool = False
    ) -> Generator[Read, Any, Any]:
        """The bytes of ``byte_range`` within ``loc``, clamped to it as zarr's store contract
        says (a range past the end gives what there is). ``None`` if the object does not
        exist (a dangling reference, :class:`~kvmap.TargetError`, where ``walk.strict``).
        Raises :class:`~kvmap.TargetError` if the object is shorter than ``loc``, and
        :class:`~kvmap.ObjectChangedError` if it is not the one ``loc.pins`` names: a
        ``sha256`` pin reads the whole window (whatever part is asked for) and checks it."""
        if loc.data is not None:
            start, end = clamp(byte_range, len(loc.data))
            return loc.data[start:end]
        assert loc.url is not None
        if loc.pins is not None and loc.pins.sha256 is not None:
            return (yield from self._read_hashed(loc, byte_range, walk, limit=limit, once=once))
        length = loc.length
        if length is None and byte_range is not None and byte_range[0] is None and loc.offset:
            # A suffix of an open-ended window: the object's size says where it starts.
            size = yield from self._head(loc, walk)
            if size is None:
                return None
            length = max(0, size - loc.offset)
        if length is None and byte_range == (None, 0):
            # The last 0 bytes: nothing to transfer (servers refuse "bytes=-0" with 416), if it exists.
            size = yield from self._head(loc, walk)
            return None if size is None else b""
        if length is None:
            read = _open_ended(loc, byte_range)
        else:
            start, end = clamp(byte_range, length)
            if loc.length is None:
                read = Read(loc.url, loc.offset + start, loc.offset + end)
            else:
                read = Read(loc.url, loc.offset + start, loc.offset + end, within=True, need=loc.offset + loc.length)
        read.limit, read.once, read.tag, read.inside = limit, once, loc.tag, loc.inside
        if loc.pins is not None:
            # Pinned reads go one by one: a coalesced batch (get_ranges) reports no metadata.
            read.pins, read.within = loc.pins, False
        if read.end is not None and read.end <= read.start:
            # Nothing to transfer, but the object must exist and hold its window, as for any request.
            size = yield from self._head(loc, walk)
            if size is None:
                return None
            self._fits(loc, size, walk)
            return b""
        try:
            data = yield from self._fetch(read, walk)
        except TargetError as exc:
            if isinstance(exc.__cause__, ShortObjectError):
                raise self._short(loc, walk) from None
            if loc.length is not None:
                # A range of a window that the object cannot serve: is the object too short for it?
                size = yield from self._head(loc, walk)
                if size is not None:
                    self._fits(loc, size, walk)
                raise
            if length is not None:
                raise
            # An open-ended window does not know its end: a request starting at or past it fails
            # at some servers (416, "invalid range"). zarr's contract makes that empty bytes.
            size = yield from self._head(loc, walk)
            if size is None or size > read.start:
                raise
            return b""
        if data is None:
            return self._absent(walk, loc.url)
        if loc.length is not None and read.end is not None and len(data) < read.end - read.start:
            raise self._short(loc, walk)
        if loc.crc is not None and read.start == loc.offset and len(data) == loc.length:
            try:
                check_crc(data, loc.crc, f"the member at [{loc.offset}, {read.end})")
            except ZipFormatError as exc:
                raise TargetError(str(exc), key=walk.key, **_origin_of(walk), url=loc.url) from None
        return data

    def _read_hashed(
        self, loc: Location, byte_range: ByteRange | None, walk: Walk, *, limit: int | None, once: bool
    ) -> Generator[Read, Any, Any]:
        """:meth:`read` of a location whose entry pins the SHA-256 of its bytes: the whole pinned
        window read (its etag and version checked by the driver), hashed, then cut to the
        location's window (an outer entry's, inside the pinned one) and to ``byte_range``."""
        assert loc.pins is not None
        assert loc.pins.sha256 is not None
        rest = replace(loc.pins, sha256=None)
        span = loc.hashed or (loc.offset, loc.length)
        pinned = replace(loc, offset=span[0], length=span[1], pins=rest if rest.meta else None, hashed=None)
        whole = yield from self.read(pinned, None, walk, limit=limit, once=once)
        if whole is None:
            return None
        digest = hashlib.sha256(whole).hexdigest()
        if digest != loc.pins.sha256:
            raise ObjectChangedError(
                f"the object changed since the manifest was made: the SHA-256 of the entry's bytes is "
                f"{digest}, the entry pins {loc.pins.sha256}",
                key=walk.key,
                **_origin_of(walk),
                url=loc.url,
            )
        if (loc.offset, loc.length) != span:
            # Narrowed by an outer window: that window of the pinned bytes.
            inner = loc.offset - span[0]
            whole = whole[inner : None if loc.length is None else inner + loc.length]
            if loc.length is not None and len(whole) < loc.length:
                raise self._short(loc, walk)
        if byte_range is None:
            return whole
        start, end = clamp(byte_range, len(whole))
        return whole[start:end]

    def read_size(self, loc: Location, walk: Walk) -> Generator[Read, Any, int | None]:
        """The size of ``loc`` in bytes, from its object's size (``None``: no such object, or
        :class:`~kvmap.TargetError` where ``walk.strict``). Raises :class:`~kvmap.TargetError`
        if the object is shorter than ``loc``'s window."""
        if loc.data is not None:
            return len(loc.data)
        assert loc.url is not None
        size = yield from self._head(loc, walk)
        if size is None:
            return None
        if loc.length is None:
            return max(0, size - loc.offset)
        self._fits(loc, size, walk)
        return loc.length

    def _head(self, loc: Location, walk: Walk) -> Generator[Read, Any, int | None]:
        """The size of ``loc``'s object (with ``loc``'s identity and confinement); ``None`` if it
        does not exist (or a dangling reference error, where ``walk.strict``)."""
        assert loc.url is not None
        pins = loc.pins if loc.pins is not None and loc.pins.meta else None
        size = yield from self._fetch(Read(loc.url, head=True, tag=loc.tag, inside=loc.inside, pins=pins), walk)
        return self._absent(walk, loc.url) if size is None else int(size)

    def _fits(self, loc: Location, size: int, walk: Walk) -> None:
        if loc.length is not None and size < loc.offset + loc.length:
            raise self._short(loc, walk)

    @staticmethod
    def _short(loc: Location, walk: Walk) -> WindowError:
        return WindowError(
            f"object is shorter than the window [{loc.offset}, {loc.offset + (loc.length or 0)}) its entry gives",
            key=walk.key,
            **_origin_of(walk),
            url=loc.url,
        )

    @staticmethod
    def _absent(walk: Walk, url: str | None, what: str = "object") -> None:
        """``None`` (absent) — or, where the deciding entry is an exact one naming what is
        missing, a :class:`~kvmap.TargetError` for a dangling reference (spec 11.3)."""
        if walk.strict:
            raise DanglingReferenceError(
                f"dangling reference: the {what} its exact entry names does not exist "
                "(a whiteout says absent; a prefix redirect reads a missing object as absent)",
                key=walk.key,
                **_origin_of(walk),
                url=url,
            )
        return None

    def _fetch(self, read: Read, walk: Walk) -> Generator[Read, Any, Any]:
        try:
            return (yield read)
        except ResolveError:
            raise
        except LimitExceededError as exc:
            raise _too_large(exc.limit, exc.size, walk, read.url) from None
        except EscapedError as exc:
            raise PolicyError(
                f"not allowed: {exc} (symbolic links resolved when it was read)",
                key=walk.key,
                **_origin_of(walk),
                url=read.url,
            ) from None
        except PinError as exc:
            raise ObjectChangedError(
                f"the object changed since the manifest was made: {exc}",
                key=walk.key,
                **_origin_of(walk),
                url=read.url,
            ) from None
        except ChangedObjectError:
            # Its cached directory is of another version: forget it, so that the next read
            # reads the archive as it is now; this one fails rather than mix the two.
            self._zips.drop(lambda loc: loc.url == read.url)
            self._offsets.drop(lambda where: where[0].url == read.url)
            raise TargetError(
                "the zip archive was replaced since its directory was read; read the key again",
                key=walk.key,
                **_origin_of(walk),
                url=read.url,
            ) from None
        except Exception as exc:  # obstore's errors, and a URL the roots cannot open
            raise TargetError(describe(exc), key=walk.key, **_origin_of(walk), url=read.url) from exc


def _plain_relative(name: str) -> bool:
    """Whether ``name`` is a relative path of plain segments (no empty, ``.`` or ``..`` one,
    no control character): what a loader may name below its document."""
    return all(seg not in ("", ".", "..") for seg in name.split("/")) and name.isprintable()


def _too_large(limit: int, size: int | None, walk: Walk, url: str | None) -> TargetError:
    said = "" if size is None else f" ({size:,} bytes)"
    return TargetError(
        f"manifest is larger than the limit of {limit:,} bytes{said}; raise max_manifest_bytes to read it",
        key=walk.key,
        **_origin_of(walk),
        url=url,
    )


def describe(exc: BaseException) -> str:
    """A one-line account of an I/O failure: its type and first line (obstore appends a
    multi-line debug dump, kept on the chained exception), naming a timeout if it was one.

    >>> describe(OSError("error sending request\\n\\nDebug source:\\nTimedOut"))
    'OSError: error sending request (timed out)'
    """
    text = str(exc)
    first = text.split("\n", 1)[0].strip()
    if "timed out" not in first.lower() and any(w in text for w in ("TimedOut", "timed out", "Timeout")):
        first += " (timed out)"
    return f"{type(exc).__name__}: {first}"


def clamp(byte_range: ByteRange | None, length: int) -> tuple[int, int]:
    """``byte_range`` within ``length`` bytes, as ``(start, end)`` with ``0 <= start <= end <= length``.

    >>> clamp((2, 100), 10), clamp((None, 3), 10), clamp((12, None), 10)
    ((2, 10), (7, 10), (10, 10))
    """
    if byte_range is None:
        return 0, length
    start, end = byte_range
    if start is None:
        assert end is not None
        return max(0, length - end), length
    start = min(start, length)
    return start, (length if end is None else max(start, min(end, length)))


def _open_ended(loc: Location, byte_range: ByteRange | None) -> Read:
    assert loc.url is not None
    if byte_range is None:
        return Read(loc.url, loc.offset)
    start, end = byte_range
    if start is None:  # a suffix of a whole object (the offset is 0 here)
        return Read(loc.url, suffix=end)
    return Read(loc.url, loc.offset + start, None if end is None else loc.offset + max(start, end))


def _origin_of(walk: Walk) -> dict[str, Any]:
    if not walk.hops:
        return {"manifest": None, "entry": None}
    hop = walk.hops[-1]
    return {"manifest": hop.manifest, "entry": hop.entry}


def _render_chain(hops: list[Hop]) -> str:
    return "\n  ".join(str(h) for h in hops)
