"""Editable maps: a compiled map that takes edits without a full recompile.

An :class:`EditableMap` keeps a :class:`~kvmap.CompiledMap` of the manifest as it was at the
last merge (the *base*) and a small ordered *delta* of the edits since (sortedcontainers):

* the exact keys that edits touched — the keys of exact entries appended or written by
  :meth:`~EditableMap.replace`, and of base exact entries replaced or removed — in a
  ``SortedDict`` (key -> the edited slots holding an exact entry for it, ascending);
* the *dirty region*: the union of the key ranges of every prefix/range entry edited (old
  and new), as disjoint intervals in a ``SortedDict`` (start -> end), and the edited
  prefix/range entries themselves, swept into disjoint pieces when first needed;
* the tombstones (a ``SortedList`` of removed entry numbers).

A key outside the delta — neither a touched exact key nor inside the dirty region — has the
base's answer: its base winner was not edited, and no new entry covers it. That costs one
dict lookup and one bisect more than the base (none at all with no edits pending: then
``resolve`` *is* the base's). A key inside the delta is decided by precedence among the
entries covering it: the highest edited live entry covering it, against the highest base
entry covering it that was not edited (from the base's :meth:`~kvmap.CompiledMap.explain`,
which is linear in the number of prefix/range entries of the base — the reason the delta
is kept small). When the edits since the last merge exceed :attr:`EditableMap.merge_at`
(by default ``max(MERGE_MIN, entries // MERGE_FRACTION)``, set by measuring:
``bench/bench_edits.py``), the delta is merged: the base is recompiled from the edited
entries and the delta emptied.

**Entry identity.** An entry's number is its *slot*, fixed when it is created: the initial
manifest's entries are slots ``0 .. n-1``, :meth:`~EditableMap.append` takes the next slot,
:meth:`~EditableMap.replace` keeps the slot, and :meth:`~EditableMap.remove` leaves a
*tombstone* there, so the numbers of later entries never shift — explanations, resolutions
(``Resolution.entry``), overlays and conformance vectors that name an entry by its number go
on naming the same entry, across merges too (a merge compiles each tombstone as a copy of the
next live entry, which that entry always shadows, so the compiled numbers are the slots).
A slot number is never reused. Only :meth:`~EditableMap.manifest` renumbers: the manifest it
exports has no tombstones, so entry ``i`` becomes ``i - (tombstones below i)``
(:meth:`~EditableMap.exported_index`); compiling that manifest resolves every key as the
editable map does, with entry numbers translated so. ``EditableMap(m.manifest())`` starts
over with compact numbers.

>>> import kvmap
>>> from kvmap.editable import EditableMap
>>> em = EditableMap(kvmap.Manifest.from_json([{"prefix": "", "path": "s3://b/a/"},
...                                            {"key": "k", "path": "s3://b/old"}]))
>>> em.append({"key": "k", "path": "s3://b/new"})
2
>>> em.resolve("k").url, em.resolve("x").url
('s3://b/new', 's3://b/a/x')
>>> em.remove(1)
>>> em.explain("k").entries, em.exported_index(2)
((2, 0), 1)
>>> em.manifest().to_json()["entries"][1]
{'key': 'k', 'path': 's3://b/new'}
"""

from __future__ import annotations

import copy
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sortedcontainers import SortedDict, SortedList  # type: ignore[import-untyped]

from kvmap.compiled import CompiledMap, Explanation, RangeTarget, Resolution, _check_key, _piece_winners, compile
from kvmap.entries import Entry
from kvmap.errors import ManifestError
from kvmap.keymap import InMemory
from kvmap.keyrange import KeyRange, prefix_successor
from kvmap.keytable import MAX_KEY_LENGTH
from kvmap.manifest import Manifest
from kvmap.url import PIPELINE_SEPARATOR, encode_remainder, is_absolute, is_local_path, resolve_target

__all__ = ["MERGE_FRACTION", "MERGE_MIN", "EditableMap"]

#: The delta is merged once more entries than ``max(MERGE_MIN, entries // MERGE_FRACTION)``
#: were edited since the last merge (``bench/bench_edits.py`` measures the trade-off: a merge
#: costs about a compile of the whole map, an edited key about 3-6x a plain lookup).
MERGE_MIN = 4096
MERGE_FRACTION = 32

_End = str | None  # an interval's end; None: unbounded


def _end_max(a: _End, b: _End) -> _End:
    return None if a is None or b is None else max(a, b)


class EditableMap(InMemory):
    """A compiled map of a manifest that takes edits in place (see the module documentation).

    Implements :class:`~kvmap.keymap.KeyMap` (it answers without reads). Not safe for
    edits from several threads at once.
    """

    #: ``resolve(key) -> Resolution | None``, as :attr:`CompiledMap.resolve <kvmap.CompiledMap.resolve>`
    #: (entries numbered by slot).
    resolve: Callable[[str], Resolution | None]

    def __init__(self, manifest: Manifest, *, merge_at: int | None = None) -> None:
        """``merge_at``: merge once more than this many entries were edited since the last
        merge (``None``: the measured default; a merge can also be asked for with :meth:`merge`)."""
        self.url: str | None = manifest.url
        self.name: str | None = manifest.name
        self._merge_at = merge_at
        self._n = len(manifest)  # slots, tombstones included
        self._dead = SortedList()  # every tombstone, ascending
        self._dead_set: set[int] = set()
        self._absolute_cache: dict[str, str] = {}
        self._rebase(manifest, compile(manifest), self._n)

    # -- state ------------------------------------------------------------------------------

    def _rebase(self, manifest: Manifest, base: CompiledMap, slots: int) -> None:
        """Make ``base`` (compiled from ``manifest``, slot-numbered) the base; empty the delta."""
        self._base_manifest = manifest
        self._base = base
        self._nb = len(manifest)  # base slots: trailing tombstones are left out of it
        self._delta: dict[int, Entry] = {}  # edited slots with a live entry: the entry
        self._delta_json: dict[int, dict[str, Any]] = {}
        self._edited: set[int] = set()  # slots edited since the merge (removals too)
        self._exact = SortedDict()  # touched exact key -> ascending edited slots with an exact entry for it
        self._ranges: dict[int, Entry] = {}  # edited slots with a live prefix/range entry
        self._region = SortedDict()  # dirty region: disjoint intervals start -> end
        self._region_lists: tuple[list[str], list[_End]] | None = ([], [])
        self._range_sweep: tuple[list[str], list[int]] | None = ([], [-1])
        self._base_ranges: list[tuple[int, Entry]] | None = None
        self._base_exact_keys: list[str] | None = None
        self.resolve = base.resolve

    @property
    def n_entries(self) -> int:
        """How many entry numbers are in use: live entries and tombstones (explanations number from 0)."""
        return self._n

    def __len__(self) -> int:
        """The number of live entries (what :meth:`manifest` exports)."""
        return self._n - len(self._dead)

    @property
    def merge_at(self) -> int:
        """Edited entries beyond which the delta is merged into the compiled index."""
        if self._merge_at is not None:
            return self._merge_at
        return max(MERGE_MIN, self._nb // MERGE_FRACTION)

    @property
    def pending(self) -> int:
        """Entries edited since the last merge."""
        return len(self._edited)

    def entry(self, index: int) -> Entry | None:
        """The entry in slot ``index`` (``None``: a tombstone); ``IndexError`` beyond the last slot."""
        if not 0 <= index < self._n:
            raise IndexError(f"no entry {index}: the map has entries 0 to {self._n - 1}")
        if index in self._delta:
            return self._delta[index]
        if index in self._dead_set or index >= self._nb:
            return None
        return self._base_manifest.entries[index]

    def exported_index(self, index: int) -> int | None:
        """The number of entry ``index`` in :meth:`manifest` (``None`` for a tombstone)."""
        if not 0 <= index < self._n:
            raise IndexError(f"no entry {index}: the map has entries 0 to {self._n - 1}")
        if index in self._dead_set:
            return None
        return index - int(self._dead.bisect_left(index))

    # -- edits --------------------------------------------------------------------------------

    def append(self, entry_json: Mapping[str, Any]) -> int:
        """Add an entry after every other (it wins over them); return its number."""
        entry, obj = self._validated(entry_json, self._n)
        index = self._n
        self._n += 1
        self._put(index, None, entry, obj)
        return index

    def replace(self, index: int, entry_json: Mapping[str, Any]) -> None:
        """Put a new entry in slot ``index``, keeping its number (and so its precedence).

        ``IndexError`` for a slot that does not exist or was removed.
        """
        old = self._live(index)
        entry, obj = self._validated(entry_json, index)
        self._put(index, old, entry, obj)

    def remove(self, index: int) -> None:
        """Remove entry ``index``, leaving a tombstone: no other entry's number changes.

        ``IndexError`` for a slot that does not exist or was removed already.
        """
        old = self._live(index)
        self._put(index, old, None, None)

    def _live(self, index: int) -> Entry:
        if type(index) is not int:
            raise TypeError(f"an entry number is an int, not {type(index).__name__}")
        entry = self.entry(index)
        if entry is None:
            raise IndexError(f"entry {index} was removed")
        return entry

    def _validated(self, obj: Mapping[str, Any], index: int) -> tuple[Entry, dict[str, Any]]:
        """The entry and a private copy of its JSON object, validated as a manifest entry at ``index``."""
        if not isinstance(obj, Mapping):
            raise ManifestError(f"an entry must be a JSON object, not {type(obj).__name__}", manifest=self.name)
        entry = Entry.from_json(dict(obj) if type(obj) is not dict else obj, index, self.name)
        if self.url is None and entry.path is not None:
            root = entry.path.partition(PIPELINE_SEPARATOR)[0]
            if not is_absolute(root) and not is_local_path(root):
                raise ManifestError(
                    "is a relative reference, but the manifest has no URL to resolve it against",
                    manifest=self.name,
                    entry=index,
                    field="path",
                )
        if entry.selector == "key" and len(entry.key.encode("utf-8")) > MAX_KEY_LENGTH:
            raise ManifestError(
                f"kvmap keeps exact keys of at most {MAX_KEY_LENGTH} UTF-8 bytes",
                manifest=self.name,
                entry=index,
                field="key",
            )
        value = obj.get("json")
        own = {k: (copy.deepcopy(v) if k == "json" and isinstance(value, list | dict) else v) for k, v in obj.items()}
        return entry, own

    def _put(self, index: int, old: Entry | None, new: Entry | None, obj: dict[str, Any] | None) -> None:
        """Slot ``index`` goes from ``old`` to ``new`` (``None``: nothing / a tombstone)."""
        if old is not None:
            self._forget(index, old)
        self._edited.add(index)
        if new is None:
            self._delta.pop(index, None)
            self._delta_json.pop(index, None)
            self._dead.add(index)
            self._dead_set.add(index)
        else:
            assert obj is not None
            self._delta[index] = new
            self._delta_json[index] = obj
            if new.selector == "key":
                insort(self._exact.setdefault(new.key, []), index)
            else:
                self._ranges[index] = new
                self._range_sweep = None
                self._dirty(new.range)
        if len(self._edited) > self.merge_at:
            self.merge()
        else:
            self.resolve = self._make_resolver()

    def _forget(self, index: int, old: Entry) -> None:
        """Mark the keys ``old`` (in slot ``index``) covered as dirty and drop it from the delta."""
        if old.selector == "key":
            slots = self._exact.setdefault(old.key, [])
            if index in slots:
                slots.remove(index)
        else:
            if self._ranges.pop(index, None) is not None:
                self._range_sweep = None
            self._dirty(old.range)

    def _dirty(self, rng: KeyRange) -> None:
        """Add ``rng`` to the dirty region, merging the intervals it meets."""
        region = self._region
        lo, hi = rng.min, rng.max
        k = region.bisect_right(lo)
        if k > 0:
            start, end = region.peekitem(k - 1)
            if end is None or end >= lo:
                if end is None or (hi is not None and end >= hi):
                    return  # inside an interval already
                lo, hi = start, _end_max(end, hi)
        doomed = list(region.irange(lo, hi, inclusive=(True, True))) if hi is not None else list(region.irange(lo))
        for start in doomed:
            hi = _end_max(hi, region.pop(start))
        region[lo] = hi
        self._region_lists = None

    # -- merging and export -----------------------------------------------------------------

    def merge(self) -> None:
        """Merge the delta into the compiled index: recompile the edited entries (slot-numbered)."""
        if not self._edited:
            return
        manifest = self._columnar_build() or self._general_build()
        self._rebase(manifest, compile(manifest), self._n)

    def _general_build(self) -> Manifest:
        """The merged base manifest from every entry's JSON object."""
        raw = self._base_manifest.to_json()["entries"]
        slots: list[Any] = [*raw[: self._nb], *([None] * (self._n - self._nb))]
        known = dict(self._base_manifest.split()[1])  # the entries the base holds as entries
        for i, obj in self._delta_json.items():
            slots[i], known[i] = obj, self._delta[i]
        for i in self._dead:
            slots[i] = None
            known.pop(i, None)
        # A tombstone compiles as a copy of the next live entry: that entry covers the same
        # keys and wins over it, so the copy never decides a key, and numbers stay slots.
        following = None
        for i in range(len(slots) - 1, -1, -1):
            if slots[i] is None:
                slots[i] = following
                if following is not None and i + 1 in known:
                    known[i] = known[i + 1]
            else:
                following = slots[i]
        end = len(slots)
        while end and slots[end - 1] is None:
            end -= 1
        # Every entry was validated when it was given: the rebuilt manifest is not validated again.
        return Manifest._checked(slots[:end], known, self.url, self.name)

    def _columnar_build(self) -> Manifest | None:
        """The merged base manifest as :meth:`_general_build` makes it, built from columns when the
        base is all plain exact-key references (the bulk shape): no JSON object per entry.
        ``None`` for any other base."""
        cols, others = self._base_manifest.split()
        if others or cols.index != range(self._nb):
            return None
        extra = self._n - self._nb
        keys: list[Any] = [*cols.key, *([None] * extra)]
        paths: list[Any] = [*cols.path, *([None] * extra)]
        offsets, lengths = ([*_nullable(a), *([None] * extra)] for a in (cols.offset, cols.length))
        objects: dict[int, dict[str, Any]] = {}  # slots that are not plain references

        def put(i: int, obj: dict[str, Any]) -> None:
            if "key" in obj and "path" in obj and _PLAIN.issuperset(obj):
                keys[i], paths[i] = obj["key"], obj["path"]
                offsets[i], lengths[i] = obj.get("offset"), obj.get("length")
            else:
                objects[i] = obj

        for i, obj in self._delta_json.items():
            put(i, obj)
        # A tombstone compiles as a copy of the next live entry: that entry covers the same
        # keys and wins over it, so the copy never decides a key, and numbers stay slots.
        dead = self._dead_set
        end = self._n
        while end and end - 1 in dead:
            end -= 1
        for i in reversed(self._dead):
            if i >= end:
                continue
            j = i + 1
            while j in dead:
                j += 1
            if j in objects:
                objects[i] = objects[j]
            else:
                keys[i], paths[i], offsets[i], lengths[i] = keys[j], paths[j], offsets[j], lengths[j]
        split = min(objects, default=end)  # plain references up to here, entry objects after
        after = [
            objects[i] if i in objects else _row(keys[i], paths[i], offsets[i], lengths[i]) for i in range(split, end)
        ]
        return Manifest.from_references(
            keys[:split], paths[:split], offsets[:split], lengths[:split], after=after, url=self.url, name=self.name
        )

    def manifest(self) -> Manifest:
        """The edited manifest: the live entries in order (tombstones dropped, so entry ``i`` of
        the map is entry :meth:`exported_index(i) <exported_index>` of it), as they were given."""
        if not self._edited and not self._dead:
            return self._base_manifest
        raw = self._base_manifest.to_json()["entries"]
        out: list[Any] = []
        delta, dead = self._delta_json, self._dead_set
        for i in range(self._n):
            if i in delta:
                out.append(delta[i])
            elif i not in dead and i < self._nb:
                out.append(raw[i])
        return Manifest.from_json(out, url=self.url, name=self.name)

    # -- resolving ------------------------------------------------------------------------------

    def _region_bounds(self) -> tuple[list[str], list[_End]]:
        if self._region_lists is None:
            self._region_lists = (list(self._region.keys()), list(self._region.values()))
        return self._region_lists

    def _make_resolver(self) -> Callable[[str], Resolution | None]:
        base_resolve = self._base.resolve
        exact = self._exact
        starts, ends = self._region_bounds()
        slow = self._slow_resolve
        if not starts:
            if not exact:
                return base_resolve

            def resolve_exact(key: str) -> Resolution | None:
                if key in exact:
                    return slow(key)
                return base_resolve(key)

            return resolve_exact

        def resolve(key: str) -> Resolution | None:
            if key in exact:
                return slow(key)
            j = bisect_right(starts, key) - 1
            if j >= 0 and ((end := ends[j]) is None or key < end):
                return slow(key)
            return base_resolve(key)

        return resolve

    def _in_delta(self, key: str) -> bool:
        if key in self._exact:
            return True
        starts, ends = self._region_bounds()
        j = bisect_right(starts, key) - 1
        return j >= 0 and ((end := ends[j]) is None or key < end)

    def _slow_resolve(self, key: str) -> Resolution | None:
        return self._decide(key)[1]

    def _decide(self, key: str) -> tuple[int, Resolution | None]:
        """The winning slot for a key in the delta (-1: none) and the key's resolution."""
        if not key.isascii():
            _check_key(key)
        top = -1
        slots = self._exact.get(key)
        if slots:
            top = slots[-1]
        bounds, winners = self._delta_piece_winners()
        ranged = winners[bisect_right(bounds, key)]
        top = max(top, ranged)
        if top >= self._nb:  # an appended entry wins over every base entry
            return top, self._answer(top, self._delta[top], key)
        explained = self._base.explain(key)
        edited, dead = self._edited, self._dead_set
        best = next((b for b in explained.entries if b not in edited and b not in dead), -1)
        if top > best:
            return top, self._answer(top, self._delta[top], key)
        if best < 0:
            return -1, None
        if best == explained.winner:
            return best, explained.resolution
        return best, self._answer(best, self._base_manifest.entries[best], key)

    def _delta_piece_winners(self) -> tuple[list[str], list[int]]:
        if self._range_sweep is None:
            self._range_sweep = _piece_winners([(i, e.range) for i, e in self._ranges.items()])
        return self._range_sweep

    def _absolute(self, path: str) -> str:
        url = self._absolute_cache.get(path)
        if url is None:
            url = self._absolute_cache[path] = resolve_target(self.url, path)
        return url

    def _answer(self, index: int, entry: Entry, key: str) -> Resolution | None:
        """What ``entry`` (number ``index``) resolves ``key`` to, if it wins."""
        if entry.target == "absent":
            return None
        if entry.selector == "key":
            if entry.target == "path":
                assert entry.path is not None
                return Resolution(index, self._absolute(entry.path), entry.offset, entry.length, None)
            return Resolution(index, None, None, None, entry.data)
        assert entry.path is not None
        return Resolution(index, self._absolute(entry.path) + encode_remainder(key[entry.strip :]), None, None, None)

    def resolve_many(self, keys: Iterable[str]) -> list[Resolution | None]:
        """``[self.resolve(k) for k in keys]``, in bulk: the base resolves them all, then the
        keys in the delta are decided again. Raises :class:`~kvmap.InvalidKeyError` as resolve does."""
        keys = keys if isinstance(keys, list) else list(keys)
        out = self._base.resolve_many(keys)
        if self.resolve is self._base.resolve:
            return out
        exact = self._exact
        starts, ends = self._region_bounds()
        slow = self._slow_resolve
        for k, key in enumerate(keys):
            if key in exact:
                out[k] = slow(key)
            elif starts:
                j = bisect_right(starts, key) - 1
                if j >= 0 and ((end := ends[j]) is None or key < end):
                    out[k] = slow(key)
        return out

    def explain(self, key: str) -> Explanation:
        """Every live entry covering ``key``, winner first, and the resolution (slot numbers)."""
        resolution = self.resolve(key)  # first: it rejects invalid keys
        edited, dead = self._edited, self._dead_set
        covering = [b for b in self._base.explain(key).entries if b not in edited and b not in dead]
        covering += self._exact.get(key, ())
        covering += [i for i, e in self._ranges.items() if e.range.contains(key)]
        return Explanation(key, tuple(sorted(covering, reverse=True)), resolution)

    def is_exact(self, key: str) -> bool:
        """Whether an exact entry (a value or a whiteout) wins for ``key``."""
        if not self._in_delta(key):
            return self._base.is_exact(key)
        winner = self._decide(key)[0]
        if winner < 0:
            return False
        entry = self.entry(winner)
        return entry is not None and entry.selector == "key"

    def exact_keys(self, prefix: str = "", *, whiteouts: bool = False) -> list[str]:
        """The keys of winning exact entries that start with ``prefix``, sorted (with
        ``whiteouts``, whited-out ones too)."""
        base = self._base
        if self.resolve is base.resolve:
            return base.exact_keys(prefix, whiteouts=whiteouts)
        end = prefix_successor(prefix)
        candidates = set(self._exact.irange(prefix, end, inclusive=(True, False)))
        if self._region:  # an edited range may uncover exact keys the base's ranges shadowed
            every = self._all_base_exact_keys()
            lo = bisect_left(every, prefix)
            hi = len(every) if end is None else bisect_left(every, end)
            candidates.update(k for k in every[lo:hi] if self._in_delta(k))
        live = set(base.exact_keys(prefix))
        out = [k for k in base.exact_keys(prefix, whiteouts=True) if k not in candidates and (whiteouts or k in live)]
        for key in candidates:
            winner, resolution = self._decide(key)
            entry = self.entry(winner) if winner >= 0 else None
            if entry is not None and entry.selector == "key" and (whiteouts or resolution is not None):
                out.append(key)
        out.sort()
        return out

    def _all_base_exact_keys(self) -> list[str]:
        """Every exact key of the base manifest (winning or shadowed), sorted; made once per base."""
        if self._base_exact_keys is None:
            cols, others = self._base_manifest.split()
            keys = set(cols.key)
            keys.update(e.key for _, e in others if e.selector == "key")
            self._base_exact_keys = sorted(keys)
        return self._base_exact_keys

    def _live_base_ranges(self) -> Iterator[tuple[int, Entry]]:
        if self._base_ranges is None:
            _, others = self._base_manifest.split()
            self._base_ranges = [(i, e) for i, e in others if e.selector != "key"]
        edited, dead = self._edited, self._dead_set
        return ((i, e) for i, e in self._base_ranges if i not in edited and i not in dead)

    def range_targets(self, within: KeyRange) -> Iterator[RangeTarget]:
        """The range pieces with a URL target that meet ``within``, clipped to it, in key order
        (exact keys inside a piece are not cut out: see :meth:`is_exact`)."""
        if not self._region_meets(within):
            yield from self._base.range_targets(within)
            return
        entries = {i: e for i, e in (*self._live_base_ranges(), *self._ranges.items())}
        meeting = [(i, e.range) for i, e in entries.items() if not e.range.intersect(within).is_empty()]
        bounds, winners = _piece_winners(meeting)
        for k, winner in enumerate(winners):
            if winner < 0:
                continue
            entry = entries[winner]
            if entry.path is None:
                continue
            clipped = KeyRange(bounds[k - 1] if k else "", bounds[k] if k < len(bounds) else None).intersect(within)
            if not clipped.is_empty():
                yield RangeTarget(clipped.min, clipped.max, winner, self._absolute(entry.path), entry.strip)

    def _region_meets(self, within: KeyRange) -> bool:
        starts, ends = self._region_bounds()
        return any(not KeyRange(s, e).intersect(within).is_empty() for s, e in zip(starts, ends, strict=True))

    def target_roots(self) -> set[str]:
        """The root URL of every entry's target since the last merge (entries removed since count
        until the next merge: a superset, which a policy check may only find stricter)."""
        return self._base.target_roots() | self._roots(lambda url: True)

    def pipeline_roots(self) -> set[str]:
        """The root URLs of every pipeline an entry names (removed entries count until the next merge)."""
        return self._base.pipeline_roots() | self._roots(lambda url: PIPELINE_SEPARATOR in url)

    def _roots(self, keep: Callable[[str], bool]) -> set[str]:
        urls = (self._absolute(e.path) for e in self._delta.values() if e.path is not None)
        return {url.partition(PIPELINE_SEPARATOR)[0] for url in urls if keep(url)}

    def __repr__(self) -> str:
        return (
            f"<EditableMap {self.name or '(unnamed)'}: {len(self)} entries, "
            f"{len(self._dead)} tombstones, {self.pending} edits pending>"
        )


_PLAIN = frozenset(("key", "path", "offset", "length"))


def _nullable(column: Any) -> list[int | None]:
    """An int64 column as Python ints, with the -1 sentinel ("not set") as ``None``."""
    values = column.astype(object)
    values[column < 0] = None
    out: list[int | None] = values.tolist()
    return out


def _row(key: str, path: str | None, offset: int | None, length: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "path": path}
    if offset is not None:
        row["offset"] = offset
    if length is not None:
        row["length"] = length
    return row
