"""Copy-on-write overlays: write any key of a composite namespace without touching the originals.

``KVMapStore(target, overlay=URL)`` reads the composite namespace of ``target`` (the *base*) with an
overlay's entries winning, and writes every key into the overlay. The base manifest and everything it
points at are never written.

Layout of an overlay at ``URL`` (a directory or prefix on a backend with create-if-absent writes:
``file://`` and local paths, ``memory://``, ``s3://``/``s3+http(s)://``, ``gs://``, ``az://``)::

    URL/objects/<sha256 hex>          the bytes of values larger than INLINE_LIMIT, content-addressed
    URL/commits/<20-digit number>.json  one commit: every entry (a snapshot) or what it changed (a delta)
    URL/latest                        a hint: the number of a recent commit (never trusted alone)
    URL/pending/<session>/<copy>-<n>.json  a write a copy of a store recorded for its session's owner

**Values.** A value of at most :data:`INLINE_LIMIT` bytes (zarr metadata documents, small chunks) is
held inline in the commit; a larger one is written at once to ``objects/<sha256>``. Content addressing
makes a write idempotent (a retried or repeated write rewrites the same bytes under the same name),
deduplicates equal chunks (zarr's fill-value chunks, repeated attributes), and is crash-safe: an object
is written whole (obstore puts are atomic) under a name no other value can have, so a commit can never
name a half-written or a different value. A deleted key is a *whiteout* entry.

**Commits.** Writes are pending (visible to this store only) until :meth:`Overlay.commit`;
``KVMapStore.close()`` commits too, and leaving a ``with store:`` block commits unless the block
raises (then the pending writes are dropped: nothing of the block becomes visible). A commit is a
*new* object ``commits/<n+1>.json`` created with obstore's ``mode="create"``, ``n`` the commit this
store's view was read from. If another writer created that number first (``AlreadyExistsError``), the
store reads the newest commit and rebases: if no key it wrote changed between its view and that
commit, it retries with the next number on top of it; otherwise it raises
:class:`OverlayConflictError` naming the keys, and keeps its pending writes. So of two commits that
touch one key exactly one succeeds, and two that touch disjoint keys both do — never a lost update.
("Changed" compares entries: a key set to the same object by both writers is still a conflict, since
an entry names the bytes; a key changed and changed back by others reads as unchanged.)

**The current state** is the highest-numbered commit. A commit is a *snapshot* (version 1: every
entry) or a *delta* (version 2: the entries it wrote, and ``since``, the snapshot it builds on, whose
later commits up to it are all deltas on it). A commit is a delta unless the deltas since the last
snapshot would number :data:`MAX_DELTAS` or repeat more than a quarter of the entries (at least
:data:`DELTA_MIN`): so a commit costs about what it changed, and an open reads one snapshot and at
most ``MAX_DELTAS`` deltas (concurrently: their numbers are known), about 1.25 times the entries at
most. An open finds the newest number from the ``latest`` hint (rewritten after each commit, best
effort), then ``HEAD`` requests probing forward from it (1, 2, 4... then a bisection; commit numbers
are contiguous). A lost or stale hint costs a few more ``HEAD`` requests; only a hint naming a
commit that was collected falls back to one listing of ``commits/``. A reader of version 1 refuses
a delta by its version (``kvmap_overlay: 2``) rather than read it as the whole list.

**The base's identity.** Every commit records the base it was made on: its URL (or the in-memory
manifest's URL or name), size, ETag and sha256 of its root object. Opening an overlay whose base has
changed (size, or sha256 when the ETag differs: a copied local file gets a new ETag but keeps its
bytes) raises :class:`OverlayBaseChangedError`, unless ``allow_base_change=True``: then the store opens,
and its next commit records the new base.

**Copies (dask workers).** A store made with ``overlay=`` owns a *session* (a random id); its pickles
carry the id, and a store unpickled from one is a *member*: it writes objects as the owner does,
records each write (the entry; a small value inline) in a new ``pending/<session>/`` object created
with ``mode="create"``, and never commits. The owner's :meth:`Overlay.commit` gathers the session's
records and commits them with its own pending writes as one commit, then deletes them. One copy's
writes are ordered (its later write of a key wins); two copies, or a copy and the owner, that wrote a
key differently make the commit raise :class:`OverlayConflictError` (nothing committed).

**Lookups and listings.** A key's overlay entry is found by two dict lookups (the pending writes,
then the commit's entries). Listings go through an index of the view: an
:class:`~kvmap.editable.EditableMap` of the overlay's entries, made by the first listing after a
load (about 1 s per 10**5 entries, most of it validating the entries) and then edited, not remade:
the writes since the last listing are applied to it in one batch when the next listing asks (a
write itself costs a dict update), and it merges its edits as its own bound says. A listing of a
directory then costs ``O(log n + k)`` for ``k`` keys below it, not a scan of every overlay entry
(``bench/bench_overlay.py``: ``list_dir`` of a 3-key group among 10**5 overlay entries, 15.8 ms
before, 30 µs now; the first listing, which makes the index, 1 s).

A crash before a commit leaves only unreferenced objects and records: :func:`collect_garbage`
removes them.
:func:`squash` writes base + overlay as one new standalone manifest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import datetime
import hashlib
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import HTTPStore

from kvmap.chain import ByteRange, clamp
from kvmap.editable import EditableMap
from kvmap.errors import (
    DanglingReferenceError,
    KvmapError,
    OverlayBaseChangedError,
    OverlayConflictError,
    OverlayCorruptError,
    OverlayError,
    OverlayLocationError,
    ResolveError,
    TargetError,
    WriteError,
)
from kvmap.httpio import HTTPSource
from kvmap.manifest import Manifest
from kvmap.pipeline import Pipeline
from kvmap.places import path_url, place_url

if TYPE_CHECKING:
    from obstore.store import ObjectStore

    from kvmap.reader import Data, Reader

__all__ = [
    "INLINE_LIMIT",
    "GarbageReport",
    "Overlay",
    "OverlayBaseChangedError",
    "OverlayConflictError",
    "OverlayCorruptError",
    "OverlayError",
    "OverlayLocationError",
    "collect_garbage",
    "squash",
]

#: Values of at most this many bytes are held inline in the commit (see docs/overlays.md for the
#: measurement: below it, a separate object costs more than the bytes it would keep out of a commit).
INLINE_LIMIT = 4096
FORMAT = 1  # a snapshot commit (every entry); readers of version 1 know only these
DELTA_FORMAT = 2  # a delta commit (the entries it changed); a version-1 reader refuses it by its version
#: A snapshot is written at least every this many commits (so an open reads at most this many documents).
MAX_DELTAS = 16
DELTA_MIN = 1024  # deltas may repeat this many entries in all before a snapshot, however small the list
_DIGITS = 20
_OBJECT = re.compile(r"\.\./objects/([0-9a-f]{64})\Z")
_COMMIT = re.compile(r"(\d{20})\.json\Z")
_RECORD = re.compile(r"([0-9a-f]{32})-(\d{20})\.json\Z")  # pending/<session>/<member>-<seq>.json
_SESSION = re.compile(r"[0-9a-f]{32}\Z")
_GATHER_THREADS = 16  # concurrent reads of a session's write records at commit


# -- entries ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Object:
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class _Inline:
    data: bytes


#: An overlay entry: an object, inline bytes, or ``None`` (a whiteout).
Entry = _Object | _Inline | None
_NO_ENTRY: Any = object()  # the overlay says nothing about the key: the base decides


def _entry_json(key: str, entry: Entry) -> dict[str, Any]:
    if entry is None:
        return {"key": key, "path": None}
    if isinstance(entry, _Inline):
        return {"key": key, "data": base64.b64encode(entry.data).decode("ascii")}
    # The length makes the entry assert the object's size: a reader finds a truncated object.
    return {"key": key, "path": f"../objects/{entry.sha256}", "length": entry.size}


def _parse_entry(raw: Any, url: str, index: int) -> tuple[str, Entry]:
    def bad(why: str) -> OverlayCorruptError:
        return OverlayCorruptError(f"{url}: entry {index}: {why}")

    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str):
        raise bad("not an object with a string key")
    key = raw["key"]
    members = set(raw) - {"key"}
    if members == {"path"} and raw["path"] is None:
        return key, None
    if members == {"data"} and isinstance(raw["data"], str):
        try:
            return key, _Inline(base64.b64decode(raw["data"], validate=True))
        except binascii.Error:
            raise bad("data is not base64") from None
    if members == {"path", "length"} and isinstance(raw["path"], str):
        m = _OBJECT.match(raw["path"])
        size = raw["length"]
        # Only names this module makes: a commit cannot send reads anywhere but objects/.
        if m is not None and type(size) is int and size >= 0:
            return key, _Object(m.group(1), size)
    raise bad("not an object, inline or whiteout entry of an overlay")


# -- the commit documents ---------------------------------------------------------------------------


@dataclass
class _State:
    number: int  # 0: no commit yet
    entries: dict[str, Entry]
    base: dict[str, Any] | None  # the identity recorded by the commit
    since: int = 0  # the snapshot this state was read from (== number: the commit is a snapshot)
    chain: int = 0  # entries written by the deltas since that snapshot


def _commit_name(number: int) -> str:
    return f"commits/{number:0{_DIGITS}d}.json"


@dataclass(frozen=True, slots=True)
class _Commit:
    """One commit document: a snapshot (``since == number``: every entry) or a delta (the entries
    it changed, on top of the commits ``since .. number - 1``, ``since`` a snapshot)."""

    number: int
    since: int
    entries: dict[str, Entry]
    base: dict[str, Any] | None


def _parse_commit(data: bytes, url: str, number: int) -> _Commit:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OverlayCorruptError(f"{url}: not JSON ({exc})") from None
    version = doc.get("kvmap_overlay") if isinstance(doc, dict) else None
    if version not in (FORMAT, DELTA_FORMAT) or doc.get("commit") != number:
        raise OverlayCorruptError(f"{url}: not commit {number} of a version-{FORMAT} or -{DELTA_FORMAT} kvmap overlay")
    since = doc.get("since", number) if version == DELTA_FORMAT else number
    raw = doc.get("entries") if version == FORMAT else doc.get("changes")
    base = doc.get("base")
    if not isinstance(raw, list) or not (base is None or isinstance(base, dict)):
        raise OverlayCorruptError(f"{url}: entries (changes) must be a list and base an object")
    if type(since) is not int or not 1 <= since <= number or (version == DELTA_FORMAT and since == number):
        raise OverlayCorruptError(f"{url}: a delta commit names the snapshot it builds on (since < commit)")
    return _Commit(number, since, dict(_parse_entry(e, url, i) for i, e in enumerate(raw)), base)


def _snapshot_due(state: _State, changes: int) -> bool:
    """Whether the commit after ``state`` writing ``changes`` entries is a snapshot: when there is
    none yet, when the deltas since the last one would be :data:`MAX_DELTAS`, or when they would
    repeat more entries than a quarter of the whole list (so opening reads at most about 1.25
    times the entries, in at most ``MAX_DELTAS + 1`` documents, and a commit costs its changes)."""
    if state.number == 0 or state.number - state.since + 1 > MAX_DELTAS:
        return True
    return state.chain + changes > max(DELTA_MIN, len(state.entries) // 4)


def _commit_bytes(new: _State, changes: Mapping[str, Entry], session: str | None = None) -> bytes:
    """The document of commit ``new`` (after a state with ``new.since``/``new.chain`` already
    decided: a snapshot if ``new.since == new.number``), which writes ``changes``."""
    snapshot = new.since == new.number
    doc: dict[str, Any] = {
        "kvmap_overlay": FORMAT if snapshot else DELTA_FORMAT,
        "commit": new.number,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "base": new.base,
        "changed": sorted(changes),
    }
    if session is not None:
        doc["session"] = session  # the session whose copies' records this commit holds
    if snapshot:
        doc["entries"] = [_entry_json(k, new.entries[k]) for k in sorted(new.entries)]
    else:
        doc["since"] = new.since
        doc["changes"] = [_entry_json(k, changes[k]) for k in sorted(changes)]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _next_state(state: _State, number: int, changes: Mapping[str, Entry], base: dict[str, Any] | None) -> _State:
    """The state after commit ``number`` writes ``changes`` on top of ``state``."""
    entries = {**state.entries, **changes}
    if _snapshot_due(state, len(changes)):
        return _State(number, entries, base, number, 0)
    return _State(number, entries, base, state.since, state.chain + len(changes))


# -- the write records of a session's copies --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    """One write record: writes (in order) that copy ``member`` of a session's store made."""

    name: str  # the object path, for deleting it
    member: str
    seq: int
    writes: list[tuple[str, Entry]]


def _record_name(session: str, member: str, seq: int) -> str:
    return f"pending/{session}/{member}-{seq:0{_DIGITS}d}.json"


def _record_bytes(session: str, member: str, seq: int, writes: Mapping[str, Entry]) -> bytes:
    doc = {
        "kvmap_overlay_pending": FORMAT,
        "session": session,
        "member": member,
        "seq": seq,
        "writer": f"{socket.gethostname()}:{os.getpid()}",  # for diagnostics only
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "entries": [_entry_json(k, e) for k, e in writes.items()],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _parse_record(data: bytes, url: str, name: str, session: str) -> _Record:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OverlayCorruptError(f"{url}: not JSON ({exc})") from None
    m = _RECORD.match(name.rpartition("/")[2])
    if (
        m is None
        or not isinstance(doc, dict)
        or doc.get("kvmap_overlay_pending") != FORMAT
        or doc.get("session") != session
        or doc.get("member") != m.group(1)
        or doc.get("seq") != int(m.group(2))
        or not isinstance(doc.get("entries"), list)
    ):
        raise OverlayCorruptError(f"{url}: not a version-{FORMAT} write record of session {session}")
    writes = [_parse_entry(e, url, i) for i, e in enumerate(doc["entries"])]
    return _Record(name, m.group(1), int(m.group(2)), writes)


def _merge_records(records: Iterable[_Record]) -> tuple[dict[str, Entry], list[str]]:
    """The session's writes from its records, and the keys its copies wrote differently.

    A copy's own writes are ordered (by its sequence numbers, then within a record): its last write
    of a key wins. Copies are not ordered against each other (they are different processes), so two
    copies' last writes of one key must agree; a key they wrote differently is a conflict.
    """
    per_member: dict[str, dict[str, Entry]] = {}
    for record in sorted(records, key=lambda r: (r.member, r.seq)):
        per_member.setdefault(record.member, {}).update(record.writes)
    merged: dict[str, Entry] = {}
    conflicts: set[str] = set()
    for writes in per_member.values():
        for key, entry in writes.items():
            if merged.get(key, entry) != entry:
                conflicts.add(key)
            merged[key] = entry
    return merged, sorted(conflicts)


class _Location:
    """The overlay's store and object-path prefix, and the commit-finding protocol on it."""

    def __init__(self, url: str, store: ObjectStore, prefix: str) -> None:
        self.url = url
        self.store = store
        self.prefix = prefix

    @classmethod
    def open(cls, overlay: str | os.PathLike[str], roots: Any) -> _Location:
        url = place_url(overlay)
        if "|" in url:
            raise OverlayLocationError(f"{url!r}: an overlay location is a directory URL, not a pipeline")
        if not url.endswith("/"):
            url += "/"
        try:
            store, prefix = roots.open_for_write(url + "latest")
        except KvmapError as exc:
            raise OverlayLocationError(f"{url!r}: {exc}") from None
        if isinstance(store, HTTPSource | HTTPStore):
            raise OverlayLocationError(
                f"{url!r}: plain HTTP cannot create an object only if it is absent, so no commit there "
                "could be safe (use a local directory, memory://, s3://, gs:// or az://)"
            )
        return cls(url, store, prefix.removesuffix("latest"))

    def path(self, name: str) -> str:
        return self.prefix + name

    def exists(self, number: int) -> bool:
        try:
            obstore.head(self.store, self.path(_commit_name(number)))
        except FileNotFoundError:
            return False
        return True

    def latest_number(self) -> int:
        """The number of the newest commit (0: none), from the hint and a few ``HEAD`` requests."""
        try:
            hint = int(bytes(obstore.get(self.store, self.path("latest")).bytes()))
        except (FileNotFoundError, ValueError):
            hint = 0
        if hint > 0 and not self.exists(hint):
            return self._listed_latest()  # the hinted commit was collected: no contiguity to probe
        low, step = hint, 1  # low exists (or is 0); numbers above it are contiguous
        while self.exists(low + step):
            low, step = low + step, step * 2
        high = low + step  # does not exist
        while high - low > 1:
            mid = (low + high) // 2
            if self.exists(mid):
                low = mid
            else:
                high = mid
        return low

    def _listed_latest(self) -> int:
        best = 0
        for batch in obstore.list(self.store, self.path("commits/")):
            for meta in batch:
                m = _COMMIT.match(meta["path"].rpartition("/")[2])
                if m is not None:
                    best = max(best, int(m.group(1)))
        return best

    def commit(self, number: int) -> _Commit:
        """Commit document ``number``; ``FileNotFoundError`` if it does not exist."""
        name = _commit_name(number)
        return _parse_commit(bytes(obstore.get(self.store, self.path(name)).bytes()), self.url + name, number)

    def read(self, number: int) -> _State:
        """The state as of commit ``number``: its snapshot and the deltas on it up to ``number``,
        read concurrently."""
        if number == 0:
            return _State(0, {}, None)
        top = self.commit(number)
        chain = [top]
        if top.since < number:
            numbers = range(top.since, number)
            with concurrent.futures.ThreadPoolExecutor(min(_GATHER_THREADS, len(numbers))) as pool:
                chain[:0] = pool.map(self.commit, numbers)
            for c in chain[1:]:
                if c.since != top.since:
                    raise OverlayCorruptError(f"{self.url}: commit {c.number} is not a delta on snapshot {top.since}")
            if chain[0].since != top.since:
                raise OverlayCorruptError(f"{self.url}: commit {top.since} is not a snapshot")
        entries: dict[str, Entry] = {}
        for c in chain:
            entries.update(c.entries)
        return _State(number, entries, top.base, top.since, sum(len(c.entries) for c in chain[1:]))

    def load(self) -> _State:
        """The newest commit. A commit that a collection removed between finding and reading it
        is looked for again."""
        for _ in range(8):
            try:
                return self.read(self.latest_number())
            except FileNotFoundError:
                continue
        raise OverlayCorruptError(f"{self.url}: the newest commit keeps disappearing")


# -- the base's identity ----------------------------------------------------------------------------


def _base_root(reader: Reader) -> str | None:
    target = reader.target
    return None if isinstance(target, Manifest) else Pipeline.parse(place_url(target)).root


def _base_identity(reader: Reader, recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The identity of ``reader``'s base: ``url``, ``size``, ``etag`` and ``sha256`` of its root object
    (for an in-memory manifest, of its document). The bytes are hashed only when the size and ETag
    do not already match ``recorded``."""
    target = reader.target
    if isinstance(target, Manifest):
        data = target.dumps()
        return {"url": target.url or target.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    root = _base_root(reader)
    assert root is not None
    store, path = reader.roots.open(root)
    ident: dict[str, Any] = {"url": place_url(target)}
    if isinstance(store, HTTPSource):
        got = store.get(path)
        if got is None:
            raise TargetError("the base manifest does not exist", url=root)
        data, etag = got, None
    else:
        meta = obstore.head(store, path)
        etag = meta.get("e_tag")
        if (
            recorded is not None
            and etag is not None
            and recorded.get("etag") == etag
            and recorded.get("size") == meta["size"]
            and recorded.get("url") == ident["url"]
        ):
            return dict(recorded)
        data = bytes(obstore.get(store, path).bytes())
    ident.update(size=len(data), etag=etag, sha256=hashlib.sha256(data).hexdigest())
    return ident


def _same_base(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    return all(recorded.get(k) == current.get(k) for k in ("url", "size", "sha256"))


# -- the overlay ------------------------------------------------------------------------------------


class Overlay:
    """The overlay of one :class:`~kvmap.KVMapStore`: its committed entries (as of its last load or
    commit), its pending writes, and the base :class:`~kvmap.Reader` that decides every other key.

    The state is read on first use. Raises :class:`OverlayLocationError` (at construction) for a
    location that cannot hold an overlay, and on first use :class:`OverlayBaseChangedError` if the
    base changed (unless ``allow_base_change``) and :class:`OverlayCorruptError` for a commit it
    cannot read.
    """

    def __init__(
        self,
        reader: Reader,
        url: str | os.PathLike[str],
        *,
        allow_base_change: bool = False,
        session: str | None = None,
    ) -> None:
        self.reader = reader
        self.location = _Location.open(url, reader.roots)
        self.url = self.location.url
        self.allow_base_change = allow_base_change
        if session is not None and not _SESSION.match(session):
            raise ValueError(f"{session!r} is not a session id (32 hex digits)")
        #: The session this overlay's writes belong to: chosen here for a new overlay (its *owner*),
        #: carried by its pickles, whose copies (*members*) record their writes for the owner.
        self.session = session or uuid.uuid4().hex
        #: ``True`` for a copy of another store's overlay (made with ``session=``): its writes are
        #: recorded under ``pending/<session>/`` and committed by the owner, never by the copy.
        self.member = session is not None
        self._member_id = uuid.uuid4().hex  # this copy's name in its records
        self._seq = 0
        self._mine: list[str] = []  # a member's records, for discard()
        self._shared = self.member  # whether a copy may have recorded writes (the owner was pickled)
        self._skip: set[str] = set()  # the owner's records already committed or discarded, not deleted
        self._state: _State | None = None
        self._base: dict[str, Any] | None = None  # the base identity the next commit records
        self._pending: dict[str, Entry] = {}
        # The view (the state's entries with the pending writes on top) as an editable map, and
        # the state it was made from, for listings: writes are edits of it, not copies of the view,
        # applied in a batch by the next listing (a write costs one dict update).
        self._index: tuple[_State, EditableMap] | None = None
        self._slots: dict[str, int] = {}  # the map's slot of each key written since it was made
        self._unindexed: dict[str, Entry] = {}  # writes not yet applied to the map
        self._merge_at: int | None = None  # the map's merge bound (None: EditableMap's measured default)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Overlay({self.url!r}, session={self.session!r}{', member' if self.member else ''})"

    def share(self) -> str:
        """The session id, for a copy of this overlay in another process (``Overlay(...,
        session=)``, as :class:`~kvmap.KVMapStore` unpickles); the owner's commits gather the
        copies' recorded writes from then on."""
        self._shared = True
        return self.session

    # -- state --------------------------------------------------------------------------------

    def _loaded(self) -> _State:
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._state is None:
                state = self.location.load()
                current = _base_identity(self.reader, state.base)
                if state.base is not None and not _same_base(state.base, current) and not self.allow_base_change:
                    raise OverlayBaseChangedError(
                        f"overlay {self.url}: its base changed since commit {state.number} "
                        f"(recorded {state.base}, now {current}); pass allow_base_change=True to open it",
                        state.base,
                        current,
                    )
                self._base = current
                self._state = state
            return self._state

    async def _loaded_async(self) -> _State:
        # The first load does blocking I/O: off the event loop.
        return self._state if self._state is not None else await asyncio.to_thread(self._loaded)

    @property
    def commit_number(self) -> int:
        """The number of the commit this overlay's view is based on (0: none)."""
        return self._loaded().number

    @property
    def pending(self) -> Mapping[str, Entry]:
        """This overlay's own writes not yet committed (a copy); for an owner, without the writes
        its copies recorded (:meth:`commit` gathers those)."""
        return dict(self._pending)

    def _entry(self, state: _State, key: str) -> Any:
        entry = self._pending.get(key, _NO_ENTRY)
        return state.entries.get(key, _NO_ENTRY) if entry is _NO_ENTRY else entry

    def _view(self, state: _State) -> EditableMap:
        """The view as a map (call with the lock held): made from ``state`` and the pending
        writes when ``state`` is not the one the current map was made from (a load, a rebase,
        a discard), else the map every write since has edited."""
        index = self._index
        if index is None or index[0] is not state:
            view = {**state.entries, **self._pending}
            docs = [_entry_json(k, view[k]) for k in sorted(view)]
            # A map of the overlay's own entries only: relative object paths resolve inside it.
            manifest = Manifest.from_json(docs, url=f"{self.url}commits/view.json", name=f"overlay {self.url}")
            index = self._index = (state, EditableMap(manifest, merge_at=self._merge_at))
            self._slots, self._unindexed = {}, {}
        em, slots = index[1], self._slots
        for key, entry in self._unindexed.items():
            slot = slots.get(key)
            if slot is None:
                # A committed key's first write shadows its entry: the later slot wins.
                slots[key] = em.append(_entry_json(key, entry))
            else:
                em.replace(slot, _entry_json(key, entry))
        self._unindexed.clear()
        return em

    def _listed(self, state: _State, prefix: str) -> tuple[list[str], list[str]]:
        """The overlay's keys below ``prefix`` that hold a value, and those whited out; sorted."""
        with self._lock:
            em = self._view(state)
            every = em.exact_keys(prefix, whiteouts=True)
            values = em.exact_keys(prefix)
        if len(values) == len(every):
            return values, []
        held = set(values)
        return values, [k for k in every if k not in held]

    # -- reads --------------------------------------------------------------------------------

    def _object_failed(self, key: str, sha: str, exc: BaseException) -> ResolveError:
        url = f"{self.url}objects/{sha}"
        if isinstance(exc, FileNotFoundError):
            return DanglingReferenceError("the overlay object is missing (collected too early?)", key=key, url=url)
        return TargetError(f"reading the overlay object failed: {type(exc).__name__}: {exc}", key=key, url=url)

    def _checked(self, key: str, entry: _Object, data: bytes) -> bytes:
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise TargetError(
                "the overlay object does not hold the bytes its name says", key=key, url=self.url + entry.sha256
            )
        return data

    async def get(self, key: str, byte_range: ByteRange | None) -> Data | None:
        """The value of ``key`` (within ``byte_range``) in the composite namespace, ``None`` if absent.
        Raises a :class:`~kvmap.TargetError` for an overlay object that is missing or damaged (a whole
        read checks its sha256), and what the base's reads raise."""
        entry = self._entry(await self._loaded_async(), key)
        if entry is _NO_ENTRY:
            return await self.reader.get(key, byte_range)
        answer = self._answer(entry, byte_range)
        if not isinstance(answer, tuple):
            return answer
        obj, path, start, end = answer
        try:
            if byte_range is None:
                got = await obstore.get_async(self.location.store, path)
                return self._checked(key, obj, bytes(await got.bytes_async()))
            return bytes(await obstore.get_range_async(self.location.store, path, start=start, end=end))
        except Exception as exc:
            if isinstance(exc, KvmapError):
                raise
            raise self._object_failed(key, obj.sha256, exc) from exc

    def get_sync(self, key: str, byte_range: ByteRange | None) -> Data | None:
        """:meth:`get` with blocking I/O."""
        entry = self._entry(self._loaded(), key)
        if entry is _NO_ENTRY:
            return self.reader.get_sync(key, byte_range)
        answer = self._answer(entry, byte_range)
        if not isinstance(answer, tuple):
            return answer
        obj, path, start, end = answer
        try:
            if byte_range is None:
                return self._checked(key, obj, bytes(obstore.get(self.location.store, path).bytes()))
            return bytes(obstore.get_range(self.location.store, path, start=start, end=end))
        except Exception as exc:
            if isinstance(exc, KvmapError):
                raise
            raise self._object_failed(key, obj.sha256, exc) from exc

    def _answer(self, entry: Any, byte_range: ByteRange | None) -> Data | tuple[Any, str, int, int] | None:
        """What an overlay entry gives without I/O (``None``: a whiteout; bytes: inline, or an
        empty range), else the read to make: ``(entry, object path, start, end)``."""
        if entry is None:
            return None
        if isinstance(entry, _Inline):
            start, end = clamp(byte_range, len(entry.data))
            return entry.data[start:end]
        start, end = clamp(byte_range, entry.size)
        if byte_range is not None and start == end:
            return b""
        return entry, self.location.path(f"objects/{entry.sha256}"), start, end

    async def get_many(self, keys: Sequence[str], byte_ranges: Sequence[ByteRange | None]) -> list[Data | None]:
        """:meth:`get` of many keys, in order; the base's keys in one batch of the base reader."""
        state = await self._loaded_async()
        out: list[Data | None] = [None] * len(keys)
        base = [i for i, k in enumerate(keys) if self._entry(state, k) is _NO_ENTRY]
        found = await self.reader.get_many([keys[i] for i in base], [byte_ranges[i] for i in base])
        for i, data in zip(base, found, strict=True):
            out[i] = data
        mine = [i for i, k in enumerate(keys) if self._entry(state, k) is not _NO_ENTRY]
        results = await asyncio.gather(*(self.get(keys[i], byte_ranges[i]) for i in mine))
        for i, data in zip(mine, results, strict=True):
            out[i] = data
        return out

    async def size(self, key: str) -> int | None:
        """The size of ``key``'s value, ``None`` if absent."""
        state = await self._loaded_async()
        entry = self._entry(state, key)
        if entry is _NO_ENTRY:
            return await self.reader.size(key)
        if entry is None:
            return None
        return len(entry.data) if isinstance(entry, _Inline) else entry.size

    async def list_prefix(self, prefix: str) -> list[str]:
        """The keys of the composite namespace that start with ``prefix``, sorted."""
        values, whiteouts = self._listed(await self._loaded_async(), prefix)
        keys = set(await self.reader.list_prefix(prefix))
        keys.difference_update(whiteouts)
        keys.update(values)
        return sorted(keys)

    async def list_dir(self, directory: str) -> list[str]:
        """The children of ``directory`` (``""`` or ending in ``/``), sorted."""
        state = await self._loaded_async()
        values, whiteouts = self._listed(state, directory)
        if whiteouts:
            # A whiteout can empty a directory of the base: only the full listing tells.
            keys = await self.list_prefix(directory)
            return sorted({k[len(directory) :].split("/", 1)[0] for k in keys})
        names = set(await self.reader.list_dir(directory))
        names.update(k[len(directory) :].split("/", 1)[0] for k in values)
        names.discard("")  # a key equal to the directory with its "/" is not a child
        return sorted(names)

    # -- writes -------------------------------------------------------------------------------

    def _write_failed(self, key: str, exc: BaseException) -> WriteError:
        return WriteError(f"writing to the overlay failed: {type(exc).__name__}: {exc}", key=key, url=self.url)

    async def set(self, key: str, data: Any) -> None:
        """Make ``key`` hold ``data`` (pending until :meth:`commit`). A large value is written to its
        object at once; a member also records the write. Raises :class:`~kvmap.WriteError` if a
        write fails (nothing changes)."""
        await self._loaded_async()
        value = bytes(data)
        entry = self._entry_for(value)
        if isinstance(entry, _Object):
            try:
                # Overwrite, not create: rewriting an existing object refreshes its age, which keeps
                # collect_garbage's grace period true for a value this writer is about to commit.
                await obstore.put_async(self.location.store, self.location.path(f"objects/{entry.sha256}"), value)
            except Exception as exc:
                raise self._write_failed(key, exc) from exc
        await self._note_async({key: entry})

    def set_sync(self, key: str, data: Any) -> None:
        """:meth:`set` with blocking I/O."""
        self._loaded()
        value = bytes(data)
        entry = self._entry_for(value)
        if isinstance(entry, _Object):
            try:
                obstore.put(self.location.store, self.location.path(f"objects/{entry.sha256}"), value)
            except Exception as exc:
                raise self._write_failed(key, exc) from exc
        self._note_sync({key: entry})

    async def delete(self, key: str) -> None:
        """Make ``key`` absent (a pending whiteout); no I/O after the first load, but a member's
        record of it."""
        await self._loaded_async()
        await self._note_async({key: None})

    def delete_sync(self, key: str) -> None:
        """:meth:`delete` without an event loop."""
        self._loaded()
        self._note_sync({key: None})

    async def delete_dir(self, prefix: str) -> None:
        """Whiteouts for every key of the composite namespace below ``prefix`` (``""``: every key)."""
        keys = await self.list_prefix(prefix)
        if keys:
            await self._note_async(dict.fromkeys(keys))

    @staticmethod
    def _entry_for(value: bytes) -> Entry:
        if len(value) <= INLINE_LIMIT:
            return _Inline(value)
        return _Object(hashlib.sha256(value).hexdigest(), len(value))

    def _next_record(self, writes: Mapping[str, Entry]) -> tuple[str, bytes]:
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = _record_name(self.session, self._member_id, seq)
        return name, _record_bytes(self.session, self._member_id, seq, writes)

    def _record_failed(self, writes: Mapping[str, Entry], exc: BaseException) -> WriteError:
        return WriteError(
            f"recording the write for the session's owner failed: {type(exc).__name__}: {exc}",
            key=next(iter(writes)),
            url=self.url,
        )

    async def _note_async(self, writes: dict[str, Entry]) -> None:
        if self.member:
            # Durable before the write returns: the task that wrote it may end, and its process
            # with it, before the owner commits. A new name each time, created, never overwritten.
            name, doc = self._next_record(writes)
            try:
                await obstore.put_async(self.location.store, self.location.path(name), doc, mode="create")
            except Exception as exc:
                raise self._record_failed(writes, exc) from exc
            self._mine.append(name)
        with self._lock:
            self._pending.update(writes)
            if self._index is not None:
                self._unindexed.update(writes)

    def _note_sync(self, writes: dict[str, Entry]) -> None:
        if self.member:
            name, doc = self._next_record(writes)
            try:
                obstore.put(self.location.store, self.location.path(name), doc, mode="create")
            except Exception as exc:
                raise self._record_failed(writes, exc) from exc
            self._mine.append(name)
        with self._lock:
            self._pending.update(writes)
            if self._index is not None:
                self._unindexed.update(writes)

    # -- the session's records ------------------------------------------------------------------

    def _record_paths(self) -> list[str]:
        """The object paths of the session's records (not yet committed or discarded by the owner)."""
        out: list[str] = []
        try:
            for batch in obstore.list(self.location.store, self.location.path(f"pending/{self.session}/")):
                for meta in batch:
                    path = meta["path"]
                    if _RECORD.match(path.rpartition("/")[2]) and path not in self._skip:
                        out.append(path)
        except Exception as exc:
            raise WriteError(
                f"listing the session's write records failed: {type(exc).__name__}: {exc}",
                url=f"{self.url}pending/{self.session}/",
            ) from exc
        return sorted(out)

    def _gather(self) -> list[_Record]:
        """The session's records, read concurrently."""
        paths = self._record_paths()
        prefix_len = len(self.location.prefix)

        def read(path: str) -> _Record:
            try:
                data = bytes(obstore.get(self.location.store, path).bytes())
            except Exception as exc:
                raise WriteError(
                    f"reading a write record of the session failed: {type(exc).__name__}: {exc}",
                    url=self.url + path[prefix_len:],
                ) from exc
            return _parse_record(data, self.url + path[prefix_len:], path, self.session)

        if len(paths) <= 1:
            return [read(p) for p in paths]
        with concurrent.futures.ThreadPoolExecutor(min(_GATHER_THREADS, len(paths))) as pool:
            return list(pool.map(read, paths))

    def _drop_records(self, paths: Iterable[str]) -> None:
        """Delete records (best effort): one that stays is never gathered again by this owner, and
        :func:`collect_garbage` removes it."""
        paths = list(paths)
        self._skip.update(paths)

        def drop(path: str) -> None:
            with contextlib.suppress(Exception):
                obstore.delete(self.location.store, path)
                self._skip.discard(path)

        if len(paths) <= 1:
            for path in paths:
                drop(path)
            return
        with concurrent.futures.ThreadPoolExecutor(min(_GATHER_THREADS, len(paths))) as pool:
            list(pool.map(drop, paths))

    # -- commits ------------------------------------------------------------------------------

    def discard(self) -> None:
        """Drop the pending writes (their objects stay, unreferenced, for :func:`collect_garbage`).

        An owner also drops the writes its copies recorded so far (deleting the session's records);
        a member drops its own records. Deleting is best effort: a record that stays is never
        committed by this owner (and :func:`collect_garbage` removes it)."""
        with self._lock:
            self._pending.clear()
            self._index = None
            if self.member:
                mine, self._mine = self._mine, []
                self._drop_records(self.location.path(name) for name in mine)
            elif self._shared:
                with contextlib.suppress(Exception):
                    self._drop_records(self._record_paths())

    def commit(self) -> int:
        """Make the pending writes visible to every store opened from now on; return the number of
        the commit. Afterwards this overlay's view is that commit (with nothing pending: the newest
        commit, read again).

        The pending writes are this overlay's own and, once it has been pickled (:meth:`share`),
        every write its copies recorded in the session so far: one commit holds them all, and the
        records are deleted after it.

        Raises :class:`OverlayConflictError` when another writer committed a change to one of the
        pending keys since this overlay's view, or when two copies of the session (or a copy and
        this overlay) wrote one key differently: then nothing is committed and the writes stay
        pending. Raises :class:`~kvmap.WriteError` when the commit cannot be written or a record
        cannot be read, and for a member (a copy commits nothing: its owner does).
        """
        if self.member:
            raise WriteError(
                "cannot commit from a copy of an overlay store (an unpickled one, e.g. on a dask "
                f"worker): its writes are recorded under pending/{self.session}/ for the store it was "
                "copied from, whose commit() commits them",
                url=self.url,
            )
        with self._lock:
            state = self._loaded()
            own = dict(self._pending)
            records = self._gather() if self._shared else []
            recorded, disagree = _merge_records(records)
            disagree = sorted({*disagree, *(k for k, e in recorded.items() if own.get(k, e) != e)})
            if disagree:
                shown = ", ".join(map(repr, disagree[:5])) + (", ..." if len(disagree) > 5 else "")
                raise OverlayConflictError(
                    f"{len(disagree)} key(s) were written differently by copies of this store in one "
                    f"session (different processes or tasks; no order between them): {shown}",
                    keys=disagree,
                    url=f"{self.url}pending/{self.session}/",
                )
            pending = {**recorded, **own}
            if not pending:
                # Nothing to write: the view moves to the newest commit, as after a commit.
                self._state = None
                return self._loaded().number
            while True:
                number = state.number + 1
                new = _next_state(state, number, pending, self._base)
                name = _commit_name(number)
                try:
                    doc = _commit_bytes(new, pending, self.session if records else None)
                    obstore.put(self.location.store, self.location.path(name), doc, mode="create")
                    break
                except AlreadyExistsError:
                    pass
                except Exception as exc:
                    raise WriteError(
                        f"writing the commit failed: {type(exc).__name__}: {exc}", url=self.url + name
                    ) from exc
                # Lost the race: rebase onto the newest commit, unless it changed one of our keys.
                newer = self.location.load()
                changed = sorted(
                    k for k in pending if newer.entries.get(k, _NO_ENTRY) != state.entries.get(k, _NO_ENTRY)
                )
                if changed:
                    shown = ", ".join(map(repr, changed[:5])) + (", ..." if len(changed) > 5 else "")
                    raise OverlayConflictError(
                        f"commit {newer.number} changed {len(changed)} key(s) this commit also writes: {shown}",
                        keys=changed,
                        url=self.url + _commit_name(newer.number),
                    )
                if newer.base is not None and not self.allow_base_change:
                    self._base = newer.base  # keep the identity the other writer checked
                state = newer
            if self._index is not None and self._index[0] is state and not recorded:
                # No rebase, no copies' writes: the map is the new state with what stays pending on top.
                self._index = (new, self._index[1])
            self._state = new
            # The records are in the commit: never gathered again (kept in _skip until deleted).
            self._drop_records(r.name for r in records)
            for key, entry in own.items():
                # A write made while the commit was in flight stays pending.
                if self._pending.get(key, _NO_ENTRY) is entry:
                    del self._pending[key]
            with contextlib.suppress(Exception):  # the hint is only a hint: probing finds the commit
                obstore.put(self.location.store, self.location.path("latest"), str(number).encode())
            return number

    def refresh(self) -> int:
        """Read the newest commit again (pending writes stay on top); return its number."""
        with self._lock:
            self._state = None
            return self._loaded().number


# -- squash and garbage collection ------------------------------------------------------------------


def _reader(target: str | os.PathLike[str] | Manifest, stores: Mapping[str, Mapping[str, Any]] | None) -> Reader:
    from kvmap.reader import Reader  # at call time: kvmap.reader imports this module's importers

    return Reader(target if isinstance(target, Manifest) else place_url(target), stores=stores, allow_all=True)


def squash(
    target: str | os.PathLike[str] | Manifest,
    overlay: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    allow_base_change: bool = False,
) -> Manifest:
    """Write base ``target`` with ``overlay``'s newest commit on top as one new standalone manifest at
    ``out`` (a local path, saved with :meth:`Manifest.save`, atomically; or an object-store URL, put
    whole), and return it. Its entries are the base manifest's, rebased for ``out``, followed by the
    overlay's (later entries win): exact entries onto the overlay's objects, inline values, whiteouts.
    The manifest no longer needs the overlay's commits, but still reads its objects: do not collect
    them while it is in use (:func:`collect_garbage` keeps only what commits reference).

    A base that is a pipeline into a nested manifest's key prefix is kept as one chained entry
    ``{"prefix": "", "path": TARGET}``. Raises :class:`OverlayBaseChangedError` if the base changed
    since the overlay was made (unless ``allow_base_change``), :class:`~kvmap.ManifestError` for a
    base target no path names from ``out``, and what saving raises (:class:`~kvmap.SaveError`).
    """
    reader = _reader(target, stores)
    layer = Overlay(reader, overlay, allow_base_change=allow_base_change)
    state = layer._loaded()
    out_text = os.fspath(out)
    local = "://" not in out_text or out_text.startswith("file://")
    out_url = path_url(out_text) if "://" not in out_text else out_text
    pipe = None if isinstance(target, Manifest) else Pipeline.parse(place_url(target))
    if pipe is not None and pipe.adapters and pipe.adapters[-1].path:
        entries: list[dict[str, Any]] = [{"prefix": "", "path": pipe.format()}]
    else:
        entries = list(reader.manifest_sync().rebased(out_url).to_json()["entries"])
    for key in sorted(state.entries):
        entry = state.entries[key]
        raw = _entry_json(key, entry)
        if isinstance(entry, _Object):
            raw["path"] = f"{layer.url}objects/{entry.sha256}"
        entries.append(raw)
    manifest = Manifest.from_json(entries, out_url)
    if local:
        manifest.save(out_text.removeprefix("file://") if out_text.startswith("file://") else out_text)
    else:
        store, path = reader.roots.open_for_write(out_url)
        obstore.put(store, path, manifest.dumps())
    return manifest


@dataclass
class GarbageReport:
    """What :func:`collect_garbage` removed: object names (sha256), commit numbers and write records
    (``<session>/<name>``), and how many objects it kept (referenced, or too young to judge)."""

    objects: list[str] = field(default_factory=list)
    commits: list[int] = field(default_factory=list)
    kept: int = 0
    pending: list[str] = field(default_factory=list)


def collect_garbage(
    overlay: str | os.PathLike[str],
    *,
    grace: datetime.timedelta = datetime.timedelta(hours=24),
    keep_commits: int | None = None,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
) -> GarbageReport:
    """Delete the objects of ``overlay`` that no kept commit references, and stale write records.

    A writer writes a large value's object before the commit that references it, so an object that
    no commit references yet may belong to a commit in flight. An object is deleted only if no kept
    commit references it, and it was last written no later than the newest commit and at least
    ``grace`` ago: a writer must commit within ``grace`` of its writes (re-writing a value refreshes
    its object's age). The write records of a session's copies (``pending/``) follow the same rule:
    a record last written no later than the newest commit and at least ``grace`` ago is deleted (its
    session's owner crashed, or committed and could not delete it); a younger one is kept, and so
    are the objects it names. ``keep_commits`` (default: all) keeps the newest that many commits and
    deletes older ones, oldest first; a store still reading an older commit may then find objects
    gone. Stores opened on the overlay after it see no difference. Raises what the listing raises.
    """
    from kvmap.roots import Roots

    location = _Location.open(overlay, Roots(stores))
    latest = location.latest_number()
    report = GarbageReport()
    first = 1 if keep_commits is None else max(1, latest - keep_commits + 1)
    referenced: set[str] = set()
    if first > 1:
        first = location.commit(first).since  # a kept delta keeps the snapshot and deltas it builds on
    for number in range(first, latest + 1):
        entries = location.commit(number).entries.values()  # every state from first on is a union of these
        referenced.update(e.sha256 for e in entries if isinstance(e, _Object))
    cutoff = datetime.datetime.now(datetime.UTC) - grace
    if latest:
        newest = obstore.head(location.store, location.path(_commit_name(latest)))["last_modified"]
        cutoff = min(cutoff, newest)
    # Records before objects: an object a kept record names is kept (it was written just before the
    # record, so it may be older than the cutoff while the record is not).
    pending_prefix = location.path("pending/")
    for batch in obstore.list(location.store, pending_prefix):
        for meta in batch:
            path = meta["path"]
            if meta["last_modified"] <= cutoff:
                obstore.delete(location.store, path)
                report.pending.append(path[len(pending_prefix) :])
                continue
            session = path[len(pending_prefix) :].partition("/")[0]
            with contextlib.suppress(OverlayCorruptError, FileNotFoundError):  # young: judged later
                data = bytes(obstore.get(location.store, path).bytes())
                record = _parse_record(data, location.url + path[len(location.prefix) :], path, session)
                referenced.update(e.sha256 for _, e in record.writes if isinstance(e, _Object))
    for batch in obstore.list(location.store, location.path("objects/")):
        for meta in batch:
            name = meta["path"].rpartition("/")[2]
            if name in referenced or meta["last_modified"] > cutoff:
                report.kept += 1
                continue
            obstore.delete(location.store, meta["path"])
            report.objects.append(name)
    if first > 1:
        old = []
        for batch in obstore.list(location.store, location.path("commits/")):
            for meta in batch:
                m = _COMMIT.match(meta["path"].rpartition("/")[2])
                if m is not None and int(m.group(1)) < first:
                    old.append(int(m.group(1)))
        for number in sorted(old):  # oldest first: the commits above a surviving one stay contiguous
            obstore.delete(location.store, location.path(_commit_name(number)))
            report.commits.append(number)
    return report
