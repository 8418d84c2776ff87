"""Compile manifest entries into disjoint key ranges and resolve keys.

:func:`compile` turns an ordered list of entries — later ones win — into

* a :class:`~kvmap.keytable.KeyTable` of the exact keys that win (whiteouts
  included), looked up first, and
* a gap-free, sorted list of boundaries over the prefix and range entries:
  ``bisect_right(bounds, key)`` picks the segment, and a parallel list says which
  entry wins there (or that none does). Adjacent segments with the same winner are
  merged, so these are the disjoint pieces of the composite namespace.

An exact key wins over every earlier entry and loses to every later one: at
compile time an exact key that a later prefix or range entry covers is moved out
of the table, so at resolve time a table hit is always the winner.

Where the optional C extension ``kvmap._speedups`` is built, the range pieces
are also compiled into its ``RangeIndex``, which does the bisect and builds the
answer in C (same results; ``KVMAP_PURE_PYTHON=1`` turns it off).

>>> cm = compile([{"prefix": "", "path": "s3://bucket/array/"},
...               {"key": "c/0/0", "path": "s3://bucket/patch.bin", "offset": 100, "length": 42}])
>>> cm.resolve("c/0/0")
Resolution(entry=1, url='s3://bucket/patch.bin', offset=100, length=42, data=None)
>>> cm.resolve("c/0/1").url
's3://bucket/array/c/0/1'
>>> cm.explain("c/0/0").entries
(1, 0)
"""

from __future__ import annotations

import heapq
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from itertools import repeat
from operator import add, getitem
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from kvmap._gcpause import paused_gc
from kvmap.entries import Entry, Pins
from kvmap.errors import InvalidKeyError, ManifestError
from kvmap.keymap import InMemory
from kvmap.keyrange import KeyRange, key_successor, prefix_successor
from kvmap.keytable import MAX_KEY_LENGTH, KeyTable, KeyTooLongError
from kvmap.manifest import Manifest
from kvmap.url import PIPELINE_SEPARATOR, REMAINDER_SAFE, encode_remainder, resolve_target

if TYPE_CHECKING:
    from kvmap._speedups import RangeIndex

__all__ = ["CompiledMap", "Explanation", "Piece", "RangeTarget", "Resolution", "compile"]

# Exact-key payload word 1 is ``entry << 32 | code``: code 0 is a whiteout,
# 1 .. _INLINE-1 is 1 + an index into the URL list, _INLINE + i is inline data i.
_INLINE = 1 << 31
_CODE_MASK = (1 << 32) - 1
_new = tuple.__new__
_NONES = repeat(None)
# resolve_many searches range bounds with numpy for batches of at least this
# many keys, when the fixed-width arrays take at most this many bytes.
_VECTOR_MIN = 64
_VECTOR_BYTES = 256 << 20


class Resolution(NamedTuple):
    """Where a key's value is: a URL (with an optional byte window) or inline bytes.

    ``entry`` is the index of the winning manifest entry. Exactly one of ``url``
    and ``data`` is not ``None``; ``offset``/``length`` are ``None`` when the
    entry does not set them.
    """

    entry: int
    url: str | None
    offset: int | None
    length: int | None
    data: bytes | None


class Piece(NamedTuple):
    """A maximal key range ``[min, max)`` over which one entry wins (``max=None``: unbounded)."""

    min: str
    max: str | None
    entry: int


class RangeTarget(NamedTuple):
    """Keys ``[min, max)`` of one range piece, which go to ``url + key[strip:]`` (entry ``entry``)."""

    min: str
    max: str | None
    entry: int
    url: str
    strip: int


class Explanation(NamedTuple):
    """Every entry that covers ``key``, winner first, and what the key resolves to."""

    key: str
    entries: tuple[int, ...]
    resolution: Resolution | None

    @property
    def winner(self) -> int | None:
        """The winning entry index (``None`` if no entry covers the key)."""
        return self.entries[0] if self.entries else None


_RangeTarget = tuple[int, str, int] | None  # (entry, URL prefix, strip), None: absent


class _PieceColumns(NamedTuple):
    """The range pieces as columns, for resolve_many (entry -1: no value there)."""

    bounds: npt.NDArray[np.str_] | None  # None: searchsorted would not be exact
    entry: npt.NDArray[np.int64]
    prefix: npt.NDArray[np.object_]
    strip: npt.NDArray[np.int64]


def compile(source: Manifest | Sequence[Mapping[str, Any]]) -> CompiledMap:
    """Compile a manifest (or a list of JSON entries) into a :class:`CompiledMap`.

    Raises :class:`~kvmap.ManifestError` for invalid entries, including a
    relative path when the manifest has no URL.
    """
    manifest = source if isinstance(source, Manifest) else Manifest.from_json(list(source))
    with paused_gc():
        return CompiledMap._build(manifest)


class CompiledMap(InMemory):
    """The compiled, immutable form of a manifest: resolve keys, list pieces, explain.

    Valid only in the process that built it (the exact-key table uses the
    process's string hash); to move a map between processes, move its manifest.
    """

    __slots__ = (
        "_bounds",
        "_columns",
        "_index",
        "_inline",
        "_range_urls",
        "_ranges",
        "_shadowed",
        "_sorted_keys",
        "_table",
        "_targets",
        "_urls",
        "_winners",
        "n_entries",
        "name",
        "pins",
        "resolve",
        "url",
    )

    url: str | None
    name: str | None
    n_entries: int
    #: The pins of the entries that carry them (spec 3.4), by entry index; ``None``: none does.
    #: Every read through the map checks them.
    pins: dict[int, Pins] | None
    #: ``resolve(key) -> Resolution | None`` — ``None`` when no entry covers the
    #: key or the winner is a whiteout. Raises :class:`~kvmap.InvalidKeyError` if
    #: the key holds a lone surrogate (keys are strings of Unicode scalar values).
    resolve: Callable[[str], Resolution | None]
    _table: KeyTable | None
    _urls: list[str]
    _inline: list[bytes]
    _bounds: list[str]
    _targets: list[_RangeTarget]
    _winners: list[int]
    _ranges: list[tuple[int, KeyRange]]
    _range_urls: set[str]
    _shadowed: dict[str, list[int]]
    _columns: _PieceColumns | None
    _index: RangeIndex[Resolution] | None  # the compiled range search, when kvmap._speedups is there
    _sorted_keys: tuple[list[str], list[str]] | None  # every exact key, and those with a value

    def __init__(self) -> None:
        raise TypeError("use kvmap.compile(manifest)")

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            "a CompiledMap is valid only in the process that built it (it uses the process's string hash); "
            "pickle its Manifest and compile that where it is needed"
        )

    @classmethod
    def _build(cls, manifest: Manifest) -> CompiledMap:
        if len(manifest) >= _INLINE:  # entry indices share an int64 word with a 32-bit code
            raise ManifestError(f"kvmap compiles at most {_INLINE - 1} entries", manifest=manifest.name)
        self = object.__new__(cls)
        self.url, self.name, self.n_entries = manifest.url, manifest.name, len(manifest)
        base = manifest.url
        resolved: dict[str, str] = {}

        def absolute(path: str) -> str:
            # Validation has already rejected relative paths without a base URL.
            url = resolved.get(path)
            if url is None:
                url = resolved[path] = resolve_target(base, path)
            return url

        _cols, entries = manifest.split()
        # Pinned entries never take the bulk columns (their members are not the bulk shape).
        self.pins = {i: e.pins for i, e in entries if e.pins is not None} or None
        ranges = [(i, e) for i, e in entries if e.selector != "key"]
        self._ranges = [(i, e.range) for i, e in ranges]
        # Every range entry's target, winning or shadowed: what the manifest may read through.
        self._range_urls = {absolute(e.path) for _, e in ranges if e.path is not None}
        self._bounds, self._winners, self._targets = _sweep(ranges, absolute)
        self._index = None
        if _RangeIndex is not None:
            self._index = _RangeIndex(
                self._bounds, self._targets, Resolution, encode_remainder, _check_key, REMAINDER_SAFE
            )
        self._columns = None
        self._sorted_keys = None
        self._shadowed = {}
        self._build_table(manifest, absolute)
        self.resolve = self._make_resolver()
        return self

    def _build_table(self, manifest: Manifest, absolute: Callable[[str], str]) -> None:
        cols, entries = manifest.split()
        others = [(i, e) for i, e in entries if e.selector == "key"]
        index = (
            np.arange(cols.index.start, cols.index.stop, dtype=np.int64)
            if isinstance(cols.index, range)
            else np.fromiter(cols.index, dtype=np.int64, count=len(cols.index))
        )
        keys: Sequence[str] = cols.key
        # One URL list entry per distinct absolute URL; paths map to codes once.
        url_code: dict[str, int] = {}
        path_code: dict[str | None, int] = {None: 0}
        for path in cols.distinct_paths:
            path_code[path] = url_code.setdefault(absolute(path), len(url_code) + 1)
        codes = np.fromiter(map(path_code.__getitem__, cols.path), dtype=np.int64, count=len(keys))
        offsets, lengths = cols.offset, cols.length
        inline: list[bytes] = []
        if others:
            keys = list(keys)
            extra_codes, extra_off, extra_len = [], [], []
            for _i, e in others:
                keys.append(e.key)
                if e.target == "path":
                    assert e.path is not None
                    extra_codes.append(url_code.setdefault(absolute(e.path), len(url_code) + 1))
                elif e.target == "absent":
                    extra_codes.append(0)
                else:
                    assert e.data is not None
                    extra_codes.append(_INLINE + len(inline))
                    inline.append(e.data)
                extra_off.append(-1 if e.offset is None else e.offset)
                extra_len.append(-1 if e.length is None else e.length)
            index = np.concatenate((index, np.array([i for i, _ in others], dtype=np.int64)))
            codes = np.concatenate((codes, np.array(extra_codes, dtype=np.int64)))
            offsets = np.concatenate((offsets, np.array(extra_off, dtype=np.int64)))
            lengths = np.concatenate((lengths, np.array(extra_len, dtype=np.int64)))
        if len(url_code) >= _INLINE - 1:
            raise ManifestError(f"kvmap compiles at most {_INLINE - 2} distinct URLs", manifest=self.name)
        self._urls = ["", *url_code]  # code c -> self._urls[c]
        self._inline = inline
        if not keys:
            self._table = None
            return
        hashes = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
        keep = self._drop_losers(keys, index, hashes)
        if keep is not None:
            keys = [keys[k] for k in keep.tolist()]
            index, codes, offsets, lengths, hashes = (a[keep] for a in (index, codes, offsets, lengths, hashes))
        payload = np.stack((index << 32 | codes, offsets, lengths), axis=1)
        try:
            self._table = KeyTable.build(keys, payload, hashes=hashes)
        except KeyTooLongError as exc:
            raise ManifestError(
                f"kvmap keeps exact keys of at most {MAX_KEY_LENGTH} UTF-8 bytes",
                manifest=self.name,
                entry=int(index[exc.position]),
                field="key",
            ) from None

    def _drop_losers(
        self, keys: Sequence[str], index: npt.NDArray[np.int64], hashes: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64] | None:
        """Positions of the exact entries that win, or ``None`` if all do.

        An exact entry loses to a later entry for the same key and to a later
        prefix/range entry covering it; losers are kept in ``_shadowed`` for
        :meth:`explain`.
        """
        losers: set[int] = set()
        if len(keys) > 1 and (np.diff(np.sort(hashes)) == 0).any():
            # Runs of equal hashes: duplicates of one key, or (rarely) a collision.
            # Ordered by (hash, entry), a repeat of a key beats the one before it.
            order = np.lexsort((index, hashes))
            sorted_hashes = hashes[order]
            same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
            latest: dict[str, int] = {}
            for k in np.unique(np.concatenate((same, same + 1))).tolist():
                pos = int(order[k])
                prev = latest.get(keys[pos])
                if prev is not None:
                    losers.add(prev)
                latest[keys[pos]] = pos
        if self._ranges:
            # Only an exact entry older than some range entry can be shadowed by one.
            candidates = np.flatnonzero(index < max(i for i, _ in self._ranges))
            if candidates.size:
                searched = map(keys.__getitem__, candidates.tolist())
                position = np.fromiter(map(bisect_right, repeat(self._bounds), searched), np.int64, candidates.size)
                losers.update(candidates[np.asarray(self._winners)[position] > index[candidates]].tolist())
        if not losers:
            return None
        for pos in losers:
            self._shadowed.setdefault(keys[pos], []).append(int(index[pos]))
        keep = np.ones(len(keys), dtype=bool)
        keep[list(losers)] = False
        return np.flatnonzero(keep)

    def _make_resolver(self) -> Callable[[str], Resolution | None]:
        # A closure over locals: each name is a cell load, not an attribute
        # lookup on self, which is a measurable share of a ~1 µs resolve.
        bounds, targets, urls, inline = self._bounds, self._targets, self._urls, self._inline
        find = self._table.find if self._table is not None else None
        table = self._table.table if self._table is not None else None
        safe = REMAINDER_SAFE

        def resolve_range_python(key: str) -> Resolution | None:
            if not key.isascii():
                _check_key(key)
            target = targets[bisect_right(bounds, key)]
            if target is None:
                return None
            rest = key[target[2] :]
            if rest.strip(safe):  # encode_remainder's own test, inlined: most keys skip the call
                rest = encode_remainder(rest)
            return _new(Resolution, (target[0], target[1] + rest, None, None, None))

        # The same in C (kvmap/_speedups.c), when it is built.
        resolve_range = resolve_range_python if self._index is None else self._index.resolve

        if find is None or table is None:
            return resolve_range

        def resolve(key: str) -> Resolution | None:
            try:
                i = find(key)
            except UnicodeEncodeError:
                raise _invalid_key(key) from None
            if i >= 0:
                meta = table[i + 1]
                code = meta & _CODE_MASK
                if code == 0:
                    return None
                if code < _INLINE:
                    offset = table[i + 2]
                    length = table[i + 3]
                    return _new(
                        Resolution,
                        (meta >> 32, urls[code], None if offset < 0 else offset, None if length < 0 else length, None),
                    )
                return _new(Resolution, (meta >> 32, None, None, None, inline[code - _INLINE]))
            if bounds:
                return resolve_range(key)
            return None

        return resolve

    def resolve_many(self, keys: Iterable[str]) -> list[Resolution | None]:
        """``[self.resolve(k) for k in keys]``, computed in bulk (vectorised probing).

        Raises :class:`~kvmap.InvalidKeyError` if any key holds a lone surrogate.
        """
        keys = keys if isinstance(keys, list) else list(keys)
        if self._table is None and self._index is not None:
            with paused_gc():  # one C call, which checks the keys itself
                return self._index.resolve_many(keys)
        joined = "".join(keys)  # one join serves the checks below and the table's encoding
        if not joined.isascii():
            for key in keys:
                _check_key(key)
        with paused_gc():
            return self._resolve_many(keys, joined)

    def _resolve_many(self, keys: list[str], joined: str) -> list[Resolution | None]:
        # Results are placed by numpy scatter into one object array.
        out = np.full(len(keys), None, dtype=object)
        rest = np.arange(len(keys)) if self._table is None else self._resolve_exact_many(keys, joined, out)
        if self._bounds and rest.size:
            self._resolve_ranges_many(keys, rest, joined if rest.size == len(keys) else None, out)
        results: list[Resolution | None] = out.tolist()
        return results

    def _resolve_exact_many(self, keys: list[str], joined: str, out: npt.NDArray[np.object_]) -> npt.NDArray[np.intp]:
        """Place the resolutions of keys in the exact-key table; return the positions of the others."""
        assert self._table is not None
        slots = self._table.find_many(keys, joined)
        array = self._table._array
        hit = np.flatnonzero(slots >= 0)
        meta = array[slots[hit] + 1]
        live = (meta & _CODE_MASK) != 0  # whiteouts stay None
        hit, meta = hit[live], meta[live]
        at = slots[hit]
        code = meta & _CODE_MASK
        # Columns of Python objects, built in numpy, zipped into tuples in C.
        url = np.array([*self._urls, None], dtype=object)[np.where(code < _INLINE, code, len(self._urls))]
        data: Any = _NONES
        if self._inline:
            data = np.array([*self._inline, None], dtype=object)[
                np.where(code >= _INLINE, code - _INLINE, len(self._inline))
            ].tolist()
        columns = zip(
            (meta >> 32).tolist(), url.tolist(), _nullable(array[at + 2]), _nullable(array[at + 3]), data, strict=False
        )
        out[hit] = np.fromiter(map(partial(_new, Resolution), columns), dtype=object, count=hit.size)
        return np.flatnonzero(slots < 0)

    def _resolve_ranges_many(
        self, keys: list[str], which: npt.NDArray[np.intp], joined: str | None, out: npt.NDArray[np.object_]
    ) -> None:
        """Place the resolutions of ``keys[k]`` for ``k`` in ``which`` from the range pieces.

        ``joined`` may pass ``"".join`` of exactly those keys, if the caller has it.
        """
        searched = [keys[k] for k in which.tolist()]
        if self._index is not None:  # one C loop
            resolved = self._index.resolve_many(searched)
            out[which] = np.fromiter(resolved, dtype=object, count=len(resolved))
            return
        pieces = self._piece_columns()
        if joined is None:
            joined = "".join(searched)
        # Made only of unescaped characters (so no NUL either): the common case.
        plain = not joined.strip(REMAINDER_SAFE)
        order, position, needles = self._range_positions(searched, plain or "\0" not in joined)
        found = np.flatnonzero(pieces.entry[position] >= 0)
        at = position[found]
        rows = which[order[found]]
        tails: list[str]
        if needles is not None:  # the sorted keys, contiguous: slice them there
            tails = np.strings.slice(needles[found], pieces.strip[at], None).tolist()
        else:
            chosen = [searched[i] for i in order[found].tolist()]
            tails = list(map(getitem, chosen, map(slice, pieces.strip[at].tolist(), _NONES)))
        if not plain:
            tails = list(map(encode_remainder, tails))
        urls = map(add, pieces.prefix[at].tolist(), tails)
        columns = zip(pieces.entry[at].tolist(), urls, _NONES, _NONES, _NONES, strict=False)
        out[rows] = np.fromiter(map(partial(_new, Resolution), columns), dtype=object, count=rows.size)

    def _range_positions(
        self, keys: list[str], nul_free: bool
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.str_] | None]:
        """``(order, position, needles)``: ``position[i] == bisect_right(self._bounds, keys[order[i]])``.

        With numpy the keys are searched in sorted order (``needles``, a
        fixed-width array): each search starts from the last, and the pieces are
        then visited in memory order. NumPy's ``U`` strings are NUL-padded, so they
        order like Python strings only when no string ends in NUL (``nul_free``
        says no key holds one); and their width is the longest string's, so very
        long keys would cost too much memory. Either case, and small batches, take
        the plain bisect (``needles`` None).
        """
        if (
            len(keys) >= _VECTOR_MIN
            and (bounds := self._piece_columns().bounds) is not None
            and nul_free
            and max(map(len, keys)) * len(keys) * 4 <= _VECTOR_BYTES
        ):
            needles = np.array(keys)
            order = np.argsort(needles)
            needles = needles[order]
            return order, np.searchsorted(bounds, needles, side="right"), needles
        position = np.fromiter(map(bisect_right, repeat(self._bounds), keys), dtype=np.int64, count=len(keys))
        return np.arange(len(keys)), position, None

    def _piece_columns(self) -> _PieceColumns:
        """Per-piece columns for bulk resolution, built on first use."""
        if self._columns is None:
            bounds = self._bounds
            usable = not any(b.endswith("\0") for b in bounds)
            usable = usable and max(map(len, bounds), default=0) * len(bounds) * 4 <= _VECTOR_BYTES
            targets = self._targets
            self._columns = _PieceColumns(
                bounds=np.array(bounds) if usable else None,
                entry=np.array([-1 if t is None else t[0] for t in targets], dtype=np.int64),
                prefix=np.array(["" if t is None else t[1] for t in targets], dtype=object),
                strip=np.array([0 if t is None else t[2] for t in targets], dtype=np.int64),
            )
        return self._columns

    def pieces(self) -> Iterator[Piece]:
        """The disjoint, non-empty key ranges that some entry covers, in key order.

        Each exact key is its own piece ``[K, K + "\\0")``; whiteouts are pieces
        too (their entry is the whiteout). Keys no entry covers lie in no piece.
        """
        exact = sorted(self._exact_winners())
        bounds, winners = self._bounds, self._winners
        ranges = [
            Piece(bounds[k - 1], bounds[k] if k < len(bounds) else None, winners[k])
            for k in range(1, len(winners))
            if winners[k] >= 0
        ]
        yield from _merge_pieces(exact, ranges)

    def exact_keys(self, prefix: str = "", *, whiteouts: bool = False) -> list[str]:
        """The keys of exact entries starting with ``prefix``, sorted: those with a value,
        or with ``whiteouts`` every one. The first call sorts them once (kept for later calls).
        """
        cached = self._sorted_keys
        if cached is None:
            table = self._table
            every = [] if table is None else sorted(table.items())
            live = [k for k, i in every if table is not None and table.table[i + 1] & _CODE_MASK]
            cached = self._sorted_keys = ([k for k, _ in every], live)
        keys = cached[0] if whiteouts else cached[1]
        lo = bisect_left(keys, prefix)
        hi = len(keys) if (end := prefix_successor(prefix)) is None else bisect_left(keys, end, lo)
        return keys[lo:hi]

    def is_exact(self, key: str) -> bool:
        """Whether an exact entry (a value or a whiteout) wins for ``key``: no range entry decides it."""
        return self._table is not None and self._table.find(key) >= 0

    def range_targets(self, within: KeyRange) -> Iterator[RangeTarget]:
        """The range pieces with a URL target that meet ``within``, clipped to it, in key order.

        Exact keys inside a piece are not cut out: they win over it (see :meth:`is_exact`).
        """
        bounds, targets = self._bounds, self._targets
        k = bisect_right(bounds, within.min)
        while k < len(targets):
            lo = within.min if k == 0 else max(within.min, bounds[k - 1])
            hi = bounds[k] if k < len(bounds) else None
            clipped = KeyRange(lo, hi).intersect(within)
            if clipped.is_empty():
                break
            target = targets[k]
            if target is not None:
                yield RangeTarget(clipped.min, clipped.max, *target)
            k += 1

    def pipeline_roots(self) -> set[str]:
        """The root URLs of every pipeline that an entry's target names (``a.zip`` of
        ``a.zip|zip:m``), whether the entry wins anywhere or not: the manifests and archives
        the map may read through."""
        urls = (url for group in (self._urls, self._range_urls) for url in group)
        return {url.partition(PIPELINE_SEPARATOR)[0] for url in urls if PIPELINE_SEPARATOR in url}

    def target_roots(self) -> set[str]:
        """The root URL (before any ``|``) of every entry's target, winning or shadowed: every
        exact target and every prefix or range target's URL prefix — what the map may send
        kvmap to, for the policy (:func:`kvmap.policy.allow_prefixes`)."""
        roots = {url.partition(PIPELINE_SEPARATOR)[0] for url in self._urls if url}
        return roots | {url.partition(PIPELINE_SEPARATOR)[0] for url in self._range_urls}

    def _exact_winners(self) -> Iterator[tuple[str, int]]:
        if self._table is None:
            return
        array = self._table._array
        for key, i in self._table.items():
            yield key, int(array[i + 1]) >> 32

    def explain(self, key: str) -> Explanation:
        """Every entry covering ``key`` in precedence order (winner first), and the resolution."""
        resolution = self.resolve(key)  # first: it rejects invalid keys
        covering = [i for i, rng in self._ranges if rng.contains(key)]
        covering += self._shadowed.get(key, [])
        if self._table is not None:
            i = self._table.find(key)
            if i >= 0:
                covering.append(self._table.table[i + 1] >> 32)
        return Explanation(key, tuple(sorted(covering, reverse=True)), resolution)

    def __repr__(self) -> str:
        exact = len(self._table) if self._table is not None else 0
        ranges = sum(1 for w in self._winners if w >= 0)
        return f"<CompiledMap {self.name or '(unnamed)'}: {exact} exact keys, {ranges} range pieces>"


def _nullable(column: npt.NDArray[np.int64]) -> list[int | None]:
    """The column as Python ints, with the -1 sentinel as ``None``."""
    if column.size == 0 or int(np.min(column)) >= 0:
        values: list[int | None] = column.tolist()
        return values
    objects = column.astype(object)
    objects[column < 0] = None
    return objects.tolist()  # type: ignore[no-any-return]


def _sweep(
    ranges: list[tuple[int, Entry]], absolute: Callable[[str], str]
) -> tuple[list[str], list[int], list[_RangeTarget]]:
    """Disjoint pieces of prefix/range entries: ``(bounds, winners, targets)``.

    ``winners[bisect_right(bounds, key)]`` is the winning entry (-1: none), and
    ``targets`` at the same position what resolve needs (``None``: absent).
    """
    if not ranges:
        return [], [-1], [None]
    by_index = dict(ranges)
    bounds, winners = _piece_winners([(i, e.range) for i, e in ranges])
    bounds = _contiguous(bounds)
    chosen = [by_index.get(w) for w in winners]
    urls = _contiguous([absolute(c.path) if c is not None and c.path is not None else "" for c in chosen])
    targets: list[_RangeTarget] = [
        None if c is None or c.path is None else (w, url, c.strip)
        for w, c, url in zip(winners, chosen, urls, strict=True)
    ]
    return bounds, winners, targets


def _piece_winners(ranges: Sequence[tuple[int, KeyRange]]) -> tuple[list[str], list[int]]:
    """Disjoint pieces of numbered key ranges: ``winners[bisect_right(bounds, key)]`` is the
    highest-numbered range containing ``key`` (-1: none); adjacent pieces have different winners."""
    starts: dict[str, list[int]] = {}
    ends: dict[str, list[int]] = {}
    for i, rng in ranges:
        starts.setdefault(rng.min, []).append(i)
        if rng.max is not None:
            ends.setdefault(rng.max, []).append(i)
    active: list[int] = []  # max-heap of entry indices, negated
    ended: set[int] = set()
    bounds: list[str] = []
    winners: list[int] = [-1]
    for point in sorted(starts.keys() | ends.keys()):
        ended.update(ends.get(point, ()))
        for i in starts.get(point, ()):
            heapq.heappush(active, -i)
        while active and -active[0] in ended:
            heapq.heappop(active)
        winner = -active[0] if active else -1
        if winner != winners[-1]:
            bounds.append(point)
            winners.append(winner)
    return bounds, winners


def _load_speedups() -> type[RangeIndex[Any]] | None:
    """kvmap._speedups' RangeIndex, or ``None`` when it is not built or ``KVMAP_PURE_PYTHON`` is set."""
    if os.environ.get("KVMAP_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from kvmap import _speedups
    except ImportError:
        return None
    return _speedups.RangeIndex


#: The compiled range search (``kvmap/_speedups.c``), or ``None``: maps compiled while it is
#: ``None`` resolve in pure Python (the tests set it so to check both ways).
_RangeIndex = _load_speedups()


def _invalid_key(key: str) -> InvalidKeyError:
    return InvalidKeyError(f"key {key!r} holds a lone surrogate: keys are strings of Unicode scalar values")


def _check_key(key: str) -> None:
    """Raise :class:`InvalidKeyError` unless ``key`` can be written as UTF-8."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid_key(key) from None


def _contiguous(strings: list[str]) -> list[str]:
    """Equal strings, allocated one after another in list order.

    The last steps of a binary search compare neighbouring bounds, and
    ``resolve_many`` reads the pieces' URL prefixes in key order; when the objects
    are scattered (allocated in manifest order) each read is a cache miss, when
    they are adjacent the reads share cache lines.
    """
    joined = "".join(strings)
    out = []
    pos = 0
    for s in strings:
        out.append(joined[pos : pos + len(s)])
        pos += len(s)
    return out


def _merge_pieces(exact: list[tuple[str, int]], ranges: list[Piece]) -> Iterator[Piece]:
    """Merge sorted exact-key pieces into sorted range pieces, splitting the ranges."""
    k = 0
    for piece in ranges:
        lo = piece.min
        while k < len(exact) and (piece.max is None or exact[k][0] < piece.max):
            key, entry = exact[k]
            if key >= lo:
                if key > lo:
                    yield Piece(lo, key, piece.entry)
                lo = key_successor(key)
            yield Piece(key, key_successor(key), entry)
            k += 1
        if piece.max is None or lo < piece.max:
            yield Piece(lo, piece.max, piece.entry)
    for key, entry in exact[k:]:
        yield Piece(key, key_successor(key), entry)
