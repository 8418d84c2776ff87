"""kvmap's columnar manifest (``kvmap-parquet``): one parquet file that opens by reading its footer
and resolves a key by reading one block of it.

A JSON manifest of 10 million entries is a gigabyte to read and parse before the first key
resolves. This format holds the same entries already compiled: the disjoint pieces of the
namespace (spec section 7), sorted by key and cut into blocks (parquet row groups). Opening it reads
the footer (one suffix read, a second one if the footer is larger), which holds the first key of
every block; a lookup bisects those, reads the one block that can hold the key, and bisects in it.
:func:`to_kvmap_parquet` writes it (:func:`build_kvmap_parquet` from a JSON document it streams),
:func:`open_kvmap_parquet` opens it as a :class:`ColumnarMap` (a :class:`~kvmap.keymap.KeyMap`:
every answer is :class:`~kvmap.CompiledMap`'s for the same manifest) and :func:`load_kvmap_parquet`
reads every entry back as the :class:`~kvmap.Manifest`.

>>> m = Manifest.from_json([{"prefix": "", "path": "s3://bucket/array/"},
...                         {"key": "c/0", "path": "s3://bucket/patch.bin", "offset": 100, "length": 42}], url=None)
>>> data = to_kvmap_parquet(m)
>>> cm = drive(open_kvmap_parquet("s3://bucket/m.kvmap.parquet"), lambda _name: data)
>>> drive(cm.resolve_io("c/0"), lambda _name: data)
Resolution(entry=1, url='s3://bucket/patch.bin', offset=100, length=42, data=None)
>>> drive(cm.resolve_io("c/1"), lambda _name: data).url
's3://bucket/array/c/1'

Layout
------

One schema for every row group: ``key`` (string), ``end`` (string, null), ``kind`` (int16), ``entry``
(int64), ``strip`` (int32), ``path`` (string, dictionary-encoded, null), ``offset``, ``length``
(int64, null), ``data`` (binary, null). ``kind`` is ``type | target << 3 | flags``: the row's type
(the low 3 bits, below), its target (0 a ``path``, 1 a whiteout, 2 ``data``, 3 ``json``; the bytes of
the last two in ``data``, JSON as compact text) and, for definition rows, which members the entry
was written with (``1 << 5``: ``strip_prefix``, ``1 << 6``: ``min``; ``1 << 7``: the ``data`` text
is not the canonical base64 of its bytes and ``path`` holds it), so that the manifest read back
is the one written, member for member. Paths are kept as written: relative ones resolve against
the URL the file is opened at (spec 5.1).

Pins (spec 3.4) are three more columns, ``etag`` and ``version`` (string, dictionary-encoded, null)
and ``sha256`` (the digest's 32 bytes, ``fixed_size_binary(32)``, null), after those nine, set on
the exact and loser rows of pinned entries and null elsewhere. They are in the file only if an
entry has pins, and then the footer says layout version 2; a file without pins has the nine
columns and version 1, byte for byte what kvmap wrote before pins had columns, so it costs
nothing more to store or open and an older kvmap still reads it, while an older kvmap refuses a
pinned file by its version rather than read it without checking its pins. A reader refuses a
version it does not know (above 2), and a file whose columns are not those of its version.
Measured at 10**5 exact entries ``t/c/i/j/k`` over 100 files (irregular windows, each file's
ETag and version, a SHA-256 per window): 7.38 bytes per entry without pins, 9.32 with ``etag``
and ``version`` (their dictionary codes: the file of a key in key order is close to random),
39.40 with ``sha256`` alone and 41.33 with all three, the 32 random bytes of each digest; the
digest as 64 hex characters takes 2.1 bytes an entry more (zstd gets hex text down to about
4.3 bits a character) and twice the memory decoded, and ``etag`` and ``version`` without a
dictionary 1.0 byte each more. The three columns left null in a file without pins would cost
about 450 bytes a block (their pages and their metadata in the footer, read at every open) and
pyarrow's fixed cost of three more column chunks in every block decoded: so such a file has none.
:attr:`ColumnarMap.pinned` says whether a file has pins (from the footer's version: nothing is
read), :meth:`ColumnarMap.pins_io` what the entry deciding a key pins (from its block of pieces).

* **Row groups [0, P): the pieces**, sorted by key (a range row before an exact row of the same
  key), ``block_rows`` rows each. An exact row (type 0) is an exact entry that wins its key:
  ``key``, ``entry``, its target and window. A range row (type 1) is a piece of the prefix and
  range entries, as :class:`~kvmap.CompiledMap` compiles them (``_sweep``): ``[key, end)`` (``end``
  null: unbounded) won by ``entry``, which sends a key to ``path + key[strip:]``, or whites it out.
  Exact keys inside a range piece do not split it: they sit between its row and the next, and win.
  So the piece that holds a key is found in the block whose first key is the last at most the key:
  the last row at most the key is its exact entry (if it is that key), else the last range row up
  to it decides, if the key is below its ``end``. For that to hold in one block, a block that
  starts inside a range piece begins with a copy of it (type 2, a *continuation*, keyed at the
  block's first key).
* **Row groups [P, P + D): definitions of the prefix and range entries** (types 3 and 4), in entry
  order: their ``min``/``prefix``, ``max``, strip and target. They are few (a manifest's bulk is
  exact keys); :meth:`ColumnarMap.explain_io` reads them all, once.
* **Row groups [P + D, end): exact entries that lose** (type 5) to a later entry for the same key
  or to a later prefix or range entry covering it, sorted by ``(key, entry)``: what ``explain``
  lists besides the winner, and what the manifest read back needs. An exact entry that wins is
  defined by its piece row alone, so ten million distinct keys cost one row each.
* **The footer** holds parquet's metadata and, under the key ``kvmap``, JSON: the first key of
  every block of pieces (and its numbers of exact and range rows, and whether it starts with a
  continuation, so that listings skip blocks that cannot hold what they want), the first key of
  every block of losers, the number of definition blocks, the entry count, the first entry with a
  relative path, and what :meth:`ColumnarMap.target_roots` and
  :meth:`~ColumnarMap.pipeline_roots` answer without reading a block: each target root while there
  are at most 64, else references that stand for them as the policy sees them (``_Paths``: a
  directory for its files, a bucket or host for its remote objects), so that a file per chunk does
  not make a footer of ten million URLs. The index is kvmap's own
  JSON, not parquet statistics, which pyarrow drops for values over 4,096 bytes (keys may be
  longer); statistics are not written (``write_statistics=False``), nor the Arrow schema.

Encodings (measured at 10**6 exact entries ``t/c/i/j/k`` over 1,000 files, irregular windows: keys
in key order are not in file order, so offsets and lengths are close to random; zstd level 1):
``key`` and ``end`` ``DELTA_BYTE_ARRAY`` (sorted keys share prefixes: 10,259 → 1,576 bytes per
16,384 keys), ``entry``, ``offset``, ``length`` and ``strip`` ``DELTA_BINARY_PACKED`` (entries in key
order are nearly sorted: 18,023 → 2,258 bytes), ``path`` a dictionary per block, ``kind`` and ``data``
plain; everything zstd. That is 5.7 bytes per entry, of which offsets and lengths (the entropy of
irregular windows) are 4.6; parquet's defaults take 8.0, and dictionary-encoding every column 14.8.

Blocks: ``DEFAULT_BLOCK_ROWS`` = 32,768 rows (measured on the manifest above, 2 cores): a block is
about 180 KB, fetched in one request and decoded in about 4.5 ms (3.4 ms of it pyarrow's fixed cost
of reading 9 column chunks) into about 2 MB (61 bytes a row). Each block costs about 570 bytes of
footer (parquet's metadata of its column chunks and its index entry): 18 KB at 10**6 entries (one
read at open), 176 KB at 10**7 (two). At 16,384 rows the footer doubles for blocks decoded hardly
faster (3.6 ms: the cost is mostly per column chunk); at 65,536 a block is 350 KB and 2.5 times the
decoding. Decoded blocks are kept up to ``cache_bytes`` (``DEFAULT_CACHE_BYTES``, 64 MiB), least
recently used first out. A warm lookup takes about 7 µs (:meth:`kvmap.CompiledMap.resolve`: 2.5 µs;
through :func:`~kvmap.fetch.drive`, 4.7 µs). Opened at 10**7 entries the map holds 0.2 bytes an
entry; after 10,000 random lookups 7 (the cache, full, and the rest), past the one-off memory
pyarrow takes when it first reads.

Reading lazily: pyarrow reads files, not the request protocol (:mod:`kvmap.fetch`), so a block is
fetched as one range (its column chunks are contiguous in the file) and pyarrow is given the
footer's metadata and a file object that holds just those bytes (``_Sparse``; any other read is an
error, never zeros). A decoded block keeps its keys as one UTF-8 text with offsets (UTF-8 orders
as code points do), searched by bisecting every 32nd key in C and the rest in Python: a list of
``str`` would be twice the size, and the millions of objects that cold lookups make and drop
would leave the heap fragmented.

Building without holding the document: :func:`build_kvmap_parquet` streams a JSON manifest (or
kerchunk references) with ijson and writes the same file as :func:`to_kvmap_parquet` of the loaded
manifest, byte for byte. Exact entries are checked in batches by the manifest's own validation,
sorted in runs bounded by ``memory_bytes`` and spilled to Arrow IPC files, then merged (in rounds
of at most 32 runs) into the writer as it cuts blocks; prefix and range entries are held (they are
few), losers go to a file of their own until their blocks are written. At 10**6 entries (a 100 MB
document) a build holds about 40 MB besides the libraries, whatever ``memory_bytes`` is from 4 to
64 MiB (and 5 * 10**4 entries about as much), where loading the manifest and writing it takes
760 MB; it takes 11 s, the in-memory path 4 s.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import itertools
import operator
import os
import re
import sys
import tempfile
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from kvmap.compiled import Explanation, RangeTarget, Resolution, _check_key, _sweep
from kvmap.entries import Entry, Pins
from kvmap.errors import ManifestError, MissingDependencyError
from kvmap.fetch import Fetch, Loading, drive
from kvmap.formats._arrow import pyarrow
from kvmap.keyrange import KeyRange, prefix_range, prefix_successor
from kvmap.keytable import MAX_KEY_LENGTH
from kvmap.manifest import ExactColumns, Manifest, save_atomically
from kvmap.policy import allow_prefixes
from kvmap.url import (
    PIPELINE_SEPARATOR,
    REMAINDER_SAFE,
    encode_remainder,
    is_absolute,
    is_local_path,
    is_plain_name,
    resolve_target,
)

__all__ = [
    "DEFAULT_BLOCK_ROWS",
    "DEFAULT_BUILD_MEMORY",
    "DEFAULT_CACHE_BYTES",
    "ColumnarMap",
    "build_kvmap_parquet",
    "load_kvmap_parquet",
    "open_kvmap_parquet",
    "to_kvmap_parquet",
]

#: Rows of pieces per block (parquet row group): what one cold lookup fetches and decodes.
DEFAULT_BLOCK_ROWS = 32_768
#: How many bytes of decoded blocks a :class:`ColumnarMap` keeps (an estimate of their Python size).
DEFAULT_CACHE_BYTES = 32 << 20
#: How many keys' answers a :class:`ColumnarMap` remembers (about 250 bytes each): a key read
#: again (zarr reads the same chunks again) is answered without its block.
DEFAULT_KNOWN_KEYS = 65_536

_INSTALL = "pip install 'kvmap[parquet]'"
_MAGIC = b"PAR1"
_META_KEY = b"kvmap"
_FORMAT = "kvmap-parquet"
#: The layout version of a file without pins, and of one with them (the pin columns): a file is
#: written in the oldest layout that holds it, so a file without pins is what kvmap wrote before
#: pins had columns, and an older kvmap refuses a pinned file rather than read it unchecked.
_VERSION = 1
_VERSION_PINS = 2
_VERSIONS = (_VERSION, _VERSION_PINS)
#: The first read of an open: the footer of a manifest of a few million entries fits.
_TAIL_BYTES = 64 << 10

# Row types: kind & _TYPE_MASK.
_EXACT, _RANGE, _CONT, _PREFIX_DEF, _RANGE_DEF, _LOSER = range(6)
_TYPE_MASK = 7
# Targets: (kind >> _TARGET_SHIFT) & 3.
_PATH, _ABSENT, _DATA, _JSON = range(4)
_TARGET_SHIFT = 3
_TARGETS = {"path": _PATH, "absent": _ABSENT, "data": _DATA, "json": _JSON}
# Members an entry was written with, where the entry does not say (definition rows, data text).
_STRIP_GIVEN = 1 << 5
_MIN_GIVEN = 1 << 6
_DATA_TEXT = 1 << 7

_COLUMNS = ("key", "end", "kind", "entry", "strip", "path", "offset", "length", "data")
#: The columns a file of layout version 2 has after those (spec 3.4: what an exact entry pins).
_PIN_COLUMNS = ("etag", "version", "sha256")
#: The columns read as dictionaries: paths, ETags and versions repeat (a file's many windows).
_DICTIONARY_COLUMNS = ["path", "etag", "version"]
_ENCODINGS = {
    "key": "DELTA_BYTE_ARRAY",
    "end": "DELTA_BYTE_ARRAY",
    "entry": "DELTA_BINARY_PACKED",
    "strip": "DELTA_BINARY_PACKED",
    "offset": "DELTA_BINARY_PACKED",
    "length": "DELTA_BINARY_PACKED",
}
#: Sorted exact rows handed to the block builder at a time.
_CHUNK_ROWS = 1 << 16
#: Most entries a manifest may have: what kvmap compiles (CompiledMap's limit).
_MAX_ENTRIES = (1 << 31) - 1
#: Up to this many distinct target roots the footer lists each; past it, their directories.
_EXACT_ROOTS = 64
#: How many recent paths the build remembers, to skip the work for a path it has just seen.
_SEEN_PATHS = 1 << 16
#: The Python size of a str and a bytes object beyond its characters, for the cache's estimate.
_STR_OVERHEAD = sys.getsizeof("")
_BYTES_OVERHEAD = sys.getsizeof(b"")
#: A block's keys bisect first among every _SAMPLE-th of them (in C), then in Python among the rest.
_SAMPLE = 32


# -- optional dependency -----------------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any, Any]:
    return pyarrow("kvmap-parquet manifests")


def _schema(pa: Any, pinned: bool = False) -> Any:
    """The file's schema: with the pin columns (layout version 2) if ``pinned``."""
    fields = [
        pa.field("key", pa.string()),
        pa.field("end", pa.string()),
        pa.field("kind", pa.int16()),
        pa.field("entry", pa.int64()),
        pa.field("strip", pa.int32()),
        pa.field("path", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("length", pa.int64()),
        pa.field("data", pa.binary()),
    ]
    if pinned:
        fields += [
            pa.field("etag", pa.string()),
            pa.field("version", pa.string()),
            pa.field("sha256", pa.binary(32)),  # the digest's bytes: half its hex text, and as dense
        ]
    return pa.schema(fields)


def _pin_arrays(pa: Any, pins: Sequence[Pins | None]) -> list[Any]:
    """The ``etag``, ``version`` and ``sha256`` columns of rows with ``pins`` (``None``: none)."""
    if not any(p is not None for p in pins):
        n = len(pins)
        return [pa.nulls(n, pa.string()), pa.nulls(n, pa.string()), pa.nulls(n, pa.binary(32))]
    etag = [None if p is None else p.etag for p in pins]
    version = [None if p is None else p.version for p in pins]
    sha = [None if p is None or p.sha256 is None else bytes.fromhex(p.sha256) for p in pins]
    return [pa.array(etag, pa.string()), pa.array(version, pa.string()), pa.array(sha, pa.binary(32))]


# -- writing -------------------------------------------------------------------------------------------


def to_kvmap_parquet(manifest: Manifest, *, block_rows: int = DEFAULT_BLOCK_ROWS) -> bytes:
    """The bytes of the kvmap-parquet file of ``manifest``, ``block_rows`` rows of pieces per block.

    Opened (:func:`open_kvmap_parquet`) at ``manifest.url``, it answers every lookup as
    ``kvmap.compile(manifest)`` does; read back (:func:`load_kvmap_parquet`) it is a manifest equal
    to ``manifest``. Paths are kept as written. Raises :class:`~kvmap.ManifestError` for what kvmap
    does not compile (more than 2**31 - 1 entries, a winning exact key longer than 2,097,151 UTF-8
    bytes), ``ValueError`` for ``block_rows`` below 1, and
    :class:`~kvmap.MissingDependencyError` without pyarrow.

    >>> m = Manifest.from_json([{"key": "a", "path": "s3://b/a.bin"}], url=None)
    >>> data = to_kvmap_parquet(m)
    >>> data[:4], data[-4:]
    (b'PAR1', b'PAR1')
    >>> drive(load_kvmap_parquet(None), lambda _name: data) == m
    True
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, not {block_rows}")
    pa, pq, pc = _pyarrow()
    sink = pa.BufferOutputStream()
    ranges, exact = _split(manifest)
    plan = _RangePlan.build(ranges, lambda i: _raw(manifest, i))
    pinned = any(e.pins is not None for _, e in exact)
    table = _exact_table(pa, exact, manifest, pinned)
    paths = _Paths().update(_exact_paths(manifest, exact) | plan.paths)
    relative = _first_relative(manifest, exact, plan)
    with _Output(pa, pq, pc, sink, block_rows, plan, manifest.name, pinned=pinned) as out:
        # One sort of every exact entry by (key, entry), in C; the builder then takes it in slices.
        ordered = table.sort_by([("key", "ascending"), ("entry", "ascending")])
        schema = out.schema
        for start in range(0, ordered.num_rows, _CHUNK_ROWS):
            out.feed(ordered.slice(start, _CHUNK_ROWS).cast(schema))
        out.finish(len(manifest), paths, relative)
    return bytes(sink.getvalue().to_pybytes())


def _split(manifest: Manifest) -> tuple[list[tuple[int, Entry]], list[tuple[int, Entry]]]:
    """The prefix and range entries, and the exact entries that are not in the manifest's columns."""
    if len(manifest) > _MAX_ENTRIES:
        raise ManifestError(f"kvmap compiles at most {_MAX_ENTRIES} entries", manifest=manifest.name)
    _cols, entries = manifest.split()
    ranges = [(i, e) for i, e in entries if e.selector != "key"]
    exact = [(i, e) for i, e in entries if e.selector == "key"]
    return ranges, exact


def _raw(manifest: Manifest, i: int) -> dict[str, Any]:
    """Entry ``i`` as it was written (the members given), for what an :class:`Entry` does not say."""
    raw = manifest._raw[i]  # entries outside the exact columns are kept as their JSON objects
    return raw if isinstance(raw, dict) else manifest.entries[i].to_json()


class _RangePiece(NamedTuple):
    """A piece of the prefix and range entries: ``[min, max)`` won by ``entry``."""

    min: str
    max: str | None
    entry: int
    kind: int  # _RANGE | target << _TARGET_SHIFT
    strip: int
    path: str | None  # as written; None: a whiteout


class _RangePlan(NamedTuple):
    """What the prefix and range entries compile to, and their definition rows."""

    pieces: list[_RangePiece]
    bounds: npt.NDArray[np.object_]  # _sweep's bounds: the winner of key k is winners[bisect_right(bounds, k)]
    winners: npt.NDArray[np.int64]
    definitions: list[tuple[str, str | None, int, int, int, str | None]]  # key, end, kind, entry, strip, path
    paths: set[str]

    @classmethod
    def build(cls, ranges: list[tuple[int, Entry]], raw: Callable[[int], dict[str, Any]]) -> _RangePlan:
        """``raw(i)``: entry ``i`` as written (its JSON object)."""
        # Paths as written (the identity as "absolute"): the file resolves them when it is opened.
        bounds, winners, targets = _sweep(ranges, lambda path: path)
        by_index = dict(ranges)
        pieces = []
        for k in range(1, len(winners)):
            w = winners[k]
            if w < 0:
                continue  # no entry covers the keys there
            target = targets[k]
            strip = by_index[w].strip
            kind = _RANGE | (_ABSENT if target is None else _PATH) << _TARGET_SHIFT
            hi = bounds[k] if k < len(bounds) else None
            pieces.append(_RangePiece(bounds[k - 1], hi, w, kind, strip, None if target is None else target[1]))
        definitions = []
        for i, e in ranges:
            given = raw(i)
            kind = (_PREFIX_DEF if e.selector == "prefix" else _RANGE_DEF) | _TARGETS[e.target] << _TARGET_SHIFT
            if "strip_prefix" in given:
                kind |= _STRIP_GIVEN
            if "min" in given:
                kind |= _MIN_GIVEN
            end = e.range.max if e.selector == "range" else None
            definitions.append((e.range.min, end, kind, i, e.strip, e.path))
        bound_array = np.empty(len(bounds), dtype=object)
        bound_array[:] = bounds
        paths = {e.path for _, e in ranges if e.path is not None}
        return cls(pieces, bound_array, np.asarray(winners, dtype=np.int64), definitions, paths)


def _exact_table(pa: Any, exact: list[tuple[int, Entry]], manifest: Manifest, pinned: bool) -> Any:
    """Every exact entry as one Arrow table of the file's columns (unsorted), built from the
    manifest's columns without an object per entry (``path`` dictionary-encoded, ``key`` large);
    with the pin columns if ``pinned`` (the entries of the manifest's columns have no pins)."""
    cols, _ = manifest.split()
    n = len(cols.key)
    index = (
        np.arange(cols.index.start, cols.index.stop, dtype=np.int64)
        if isinstance(cols.index, range)
        else np.fromiter(cols.index, dtype=np.int64, count=n)
    )
    codes: dict[str | None, int] = {None: -1}
    for distinct in cols.distinct_paths:
        codes[distinct] = len(codes) - 1
    path_codes = np.fromiter(map(codes.__getitem__, cols.path), dtype=np.int32, count=n)
    kinds = np.where(path_codes < 0, _ABSENT << _TARGET_SHIFT, _PATH << _TARGET_SHIFT).astype(np.int16)
    offsets, lengths = cols.offset, cols.length
    more_keys, more_data = [], []
    more_index, more_codes, more_kinds, more_offsets, more_lengths = [], [], [], [], []
    for i, e in exact:
        target = _TARGETS[e.target]
        kind = target << _TARGET_SHIFT
        path = e.path
        if e.target == "data":
            assert e.data is not None
            given = _raw(manifest, i).get("data")
            if isinstance(given, str) and given != base64.b64encode(e.data).decode("ascii"):
                kind |= _DATA_TEXT  # the text as written, kept in the path column
                path = given
        more_keys.append(e.key)
        more_index.append(i)
        more_kinds.append(kind)
        more_codes.append(codes.setdefault(path, len(codes) - 1))
        more_offsets.append(-1 if e.offset is None else e.offset)
        more_lengths.append(-1 if e.length is None else e.length)
        more_data.append(e.data)
    if exact:
        index = np.concatenate((index, np.array(more_index, dtype=np.int64)))
        path_codes = np.concatenate((path_codes, np.array(more_codes, dtype=np.int32)))
        kinds = np.concatenate((kinds, np.array(more_kinds, dtype=np.int16)))
        offsets = np.concatenate((offsets, np.array(more_offsets, dtype=np.int64)))
        lengths = np.concatenate((lengths, np.array(more_lengths, dtype=np.int64)))
    total = len(index)
    keys = pa.concat_arrays([pa.array(cols.key, pa.large_string()), pa.array(more_keys, pa.large_string())])
    dictionary = pa.array([p for p in codes if p is not None], pa.string())
    paths = pa.DictionaryArray.from_arrays(pa.array(path_codes, mask=path_codes < 0), dictionary)
    data = pa.concat_arrays([pa.nulls(n, pa.binary()), pa.array(more_data, pa.binary())])
    columns = {
        "key": keys,
        "end": pa.nulls(total, pa.string()),
        "kind": pa.array(kinds),
        "entry": pa.array(index),
        "strip": pa.array(np.zeros(total, dtype=np.int32)),
        "path": paths,
        "offset": pa.array(offsets, mask=offsets < 0),
        "length": pa.array(lengths, mask=lengths < 0),
        "data": data,
    }
    if pinned:
        pin_arrays = _pin_arrays(pa, [None] * n + [e.pins for _, e in exact])
        columns.update(zip(_PIN_COLUMNS, pin_arrays, strict=True))
    return pa.table(columns)


def _exact_paths(manifest: Manifest, exact: list[tuple[int, Entry]]) -> set[str]:
    """The distinct paths of exact entries, winning or not (what the map may send kvmap to)."""
    cols, _ = manifest.split()
    return set(cols.distinct_paths) | {e.path for _, e in exact if e.path is not None}


def _root_is_relative(path: str) -> bool:
    root = path.partition(PIPELINE_SEPARATOR)[0]
    return not is_absolute(root) and not is_local_path(root)


def _first_relative(manifest: Manifest, exact: list[tuple[int, Entry]], plan: _RangePlan) -> int | None:
    """The first entry whose path is relative: what a file opened without a URL refuses (spec 5.1)."""
    cols, _ = manifest.split()
    found = [i for i, e in exact if e.path is not None and _root_is_relative(e.path)]
    found += [i for _k, _e, _kind, i, _s, p in plan.definitions if p is not None and _root_is_relative(p)]
    relative = {p for p in cols.distinct_paths if _root_is_relative(p)}
    if relative:
        found.append(next(i for i, p in zip(cols.index, cols.path, strict=True) if p in relative))
    return min(found, default=None)


def _directory(root: str) -> str:
    """``root`` with its last segment cut off (``s3://b/d/f.nc`` → ``s3://b/d/``) when that cannot
    change what :func:`kvmap.policy.allow_prefixes` makes of it, resolved against any base; else
    ``root``.

    That holds when the last segment is a plain name (:func:`~kvmap.url.is_plain_name`: no ``%``,
    not ``.`` or ``..``) and so is the one before it, which is not an authority, and there is no
    query or fragment: then the directory and the file resolve to URLs whose decoded segments are
    the same but the last, which the policy compares only as the name of an object in its directory
    (and the named parent keeps the first segment, which names the bucket of an ``s3+http`` URL).
    """
    if "?" in root or "#" in root:
        return root
    cut = root.rfind("/")
    if cut < 0 or not is_plain_name(root[cut + 1 :]):
        return root
    head = root[:cut]
    parent_cut = head.rfind("/")
    if not is_plain_name(head[parent_cut + 1 :]) or head[: parent_cut + 1].endswith("//"):
        return root
    return root[: cut + 1]


def _has_named_segment(prefix: str) -> bool:
    """Whether the directory URL or reference ``prefix`` has a non-empty path segment after its
    scheme and authority (``s3+http://h/`` has none: its first segment would be the bucket)."""
    rest = prefix
    if is_absolute(rest):
        rest = rest[rest.index(":") + 1 :]
    if rest.startswith("//"):
        slash = rest.find("/", 2)
        rest = "" if slash < 0 else rest[slash:]
    return rest.strip("/") != ""


def _no_dot_segments(text: str) -> bool:
    return not any(segment in (".", "..") for segment in text.split("/"))


def _site(reference: str) -> str | None:
    """The bucket or host prefix (``s3://b/``) that stands for the absolute remote URL ``reference``
    in the policy's eyes, or ``None``.

    :func:`~kvmap.policy.allow_prefixes` makes of a remote target its bucket or host, and a
    manifest's origin holds it when the target lies inside that prefix; so the prefix stands for
    the target if the target lies inside it (not ``s3://b`` itself), as the policy's own answers
    say. Local targets keep their directory, one-letter schemes are left alone (a local document
    reads them as drive paths).
    """
    scheme = reference.partition(":")[0].lower()
    if not is_absolute(reference) or len(scheme) < 2 or scheme == "file":
        return None
    site = allow_prefixes([reference], None)
    if len(site) != 1 or allow_prefixes([reference], site[0] + "m"):
        return None
    return site[0]


class _Paths:
    """What the footer says of the entries' paths, gathered one path at a time: the references
    that stand for the target roots and for the pipeline roots, resolved against any base.

    Target roots: few are listed each. Many (a file per chunk) are replaced by their directories
    (:func:`_directory`), remote ones by their bucket or host (:func:`_site`), and a directory by
    one above it that is listed too, when the rest of it has no dot segment:
    :func:`~kvmap.policy.allow_prefixes` keeps, of the local directories it needs, only those not
    inside another one, so both give the same prefixes; resolved against the same base, a
    reference below another resolves below it. So it holds the distinct roots while they are few,
    then their directories.

    Pipeline roots: a path with a ``|`` keeps its root and the bar. A path without one is a
    pipeline only when the document sits inside an adapter and the path is relative to it (then
    its root is the document's): one such path (the least) stands for all.
    """

    def __init__(self) -> None:
        self.roots: set[str] | None = set()  # None: too many, see directories
        self.directories: set[str] = set()
        self.pipelines: set[str] = set()
        self.inner: str | None = None
        self._seen: dict[str, None] = {}  # paths added lately: most repeat

    def add(self, path: str) -> None:
        if path in self._seen:
            return
        if len(self._seen) >= _SEEN_PATHS:
            self._seen.clear()
        self._seen[path] = None
        root, bar, _ = path.partition(PIPELINE_SEPARATOR)
        if bar:
            self.pipelines.add(root + bar)
        elif not is_absolute(root) and not root.startswith("//") and (self.inner is None or root < self.inner):
            self.inner = root
        if self.roots is None:
            self.directories.add(_directory(root))
            return
        self.roots.add(root)
        if len(self.roots) > _EXACT_ROOTS:
            self.directories = {_directory(r) for r in self.roots}
            self.roots = None

    def update(self, paths: Iterable[str]) -> _Paths:
        for path in paths:
            self.add(path)
        return self

    def root_references(self) -> list[str]:
        if self.roots is not None:
            return sorted(self.roots)
        out: list[str] = []
        above: str | None = None  # the last listed directory that may stand for those below it
        for rep in sorted({_site(d) or d for d in self.directories}):
            if above is not None and rep.startswith(above):
                if _no_dot_segments(rep[len(above) :]):
                    continue
                out.append(rep)  # below it in text, but its dot segments may climb out
                continue
            out.append(rep)
            plain = rep.endswith("/") and "?" not in rep and "#" not in rep and _no_dot_segments(rep)
            above = rep if plain and _has_named_segment(rep) else None
        return out

    def pipeline_references(self) -> list[str]:
        return sorted(self.pipelines) + ([] if self.inner is None else [self.inner])


def _small_table(pa: Any, schema: Any, rows: Sequence[tuple[str, str | None, int, int, int, str | None]]) -> Any:
    """A table of range or definition rows ``(key, end, kind, entry, strip, path)`` (no window, no
    data, no pins) of ``schema``."""
    n = len(rows)
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * 6
    arrays = [
        pa.array(columns[0], pa.string()),
        pa.array(columns[1], pa.string()),
        pa.array(columns[2], pa.int16()),
        pa.array(columns[3], pa.int64()),
        pa.array(columns[4], pa.int32()),
        pa.array(columns[5], pa.string()),
        pa.nulls(n, pa.int64()),
        pa.nulls(n, pa.int64()),
        pa.nulls(n, pa.binary()),
    ]
    arrays += [pa.nulls(n, field.type) for field in list(schema)[len(arrays) :]]
    return pa.table(arrays, schema=schema)


class _Output:
    """Writes a kvmap-parquet file: the sorted exact entries it is fed, merged with the range
    pieces into blocks as they come, then the definitions, the losers and the footer.

    :meth:`feed` takes every exact entry (winning or not), sorted by ``(key, entry)``, in tables of
    the file's schema (:func:`_schema`, with the pin columns if ``pinned``); it decides which win
    (the last of a key, unless a later prefix or range entry covers it) and holds one row back,
    since a key's last row is known only at the next. ``pinned`` also makes the footer say layout
    version 2.
    """

    def __init__(
        self,
        pa: Any,
        pq: Any,
        pc: Any,
        sink: Any,
        block_rows: int,
        plan: _RangePlan,
        name: str | None,
        losers: Callable[[Any], None] | None = None,
        *,
        pinned: bool = False,
    ) -> None:
        self.pa, self.pc, self.block_rows, self.plan, self.name = pa, pc, block_rows, plan, name
        self.losers: list[Any] = []
        self.on_losers = self.losers.append if losers is None else losers
        self.pinned = pinned
        self.schema = _schema(pa, pinned)
        self.writer = pq.ParquetWriter(
            sink,
            self.schema,
            compression="zstd",
            use_dictionary=_DICTIONARY_COLUMNS if pinned else ["path"],
            column_encoding=_ENCODINGS,
            write_statistics=False,
            store_schema=False,
        )
        self.held: Any = None  # the last row fed, undecided
        self.pending: list[Any] = []  # piece rows not yet in a block
        self.pending_rows = 0
        self.position = 0  # rows of pieces so far (written or pending)
        self.written = 0  # rows of pieces written in blocks
        self.next_piece = 0  # the next range piece to place
        self.placed: list[tuple[int, _RangePiece]] = []  # (position, piece) of every range row placed
        self.in_effect = -1  # index into placed: the last range row before the next block
        self.first: list[str] = []
        self.exact_rows: list[int] = []
        self.range_rows: list[int] = []
        self.cont: list[int] = []

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()

    # -- exact entries in --

    def feed(self, table: Any) -> None:
        """Take the next sorted exact rows (a table of the file's schema)."""
        if table.num_rows == 0:
            return
        if self.held is not None:
            table = self.pa.concat_tables([self.held, table])
        n = table.num_rows
        self.held = table.slice(n - 1)
        self._settle(table, n - 1)

    def _settle(self, table: Any, m: int) -> None:
        """Decide rows ``[0, m)`` of ``table``, whose row ``m`` (if there is one) follows them."""
        if m == 0:
            return
        pa, pc = self.pa, self.pc
        rows = table.slice(0, m)
        if table.num_rows > m:
            keys = table.column("key")
            same = pc.equal(keys.slice(0, m), keys.slice(1, m))
            lose = np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
        else:
            lose = np.zeros(m, dtype=bool)
        names: list[str] | None = None
        if len(self.plan.bounds):
            names = rows.column("key").to_pylist()
            found = np.empty(m, dtype=object)
            found[:] = names
            winner = self.plan.winners[np.searchsorted(self.plan.bounds, found, side="right")]
            lose |= winner > rows.column("entry").to_numpy()
        if lose.any():
            losing = rows.filter(pa.array(lose))
            kinds = losing.column("kind").to_numpy() & ~_TYPE_MASK | _LOSER
            self.on_losers(losing.set_column(_COLUMNS.index("kind"), "kind", pa.array(kinds, pa.int16())))
            keep = ~lose
            rows = rows.filter(pa.array(keep))
            if names is not None:
                names = [k for k, kept in zip(names, keep.tolist(), strict=True) if kept]
        self._check_lengths(rows)
        self._place(rows, names)

    def _check_lengths(self, rows: Any) -> None:
        """Refuse winning exact keys longer than kvmap keeps (CompiledMap's limit)."""
        if rows.num_rows == 0:
            return
        lengths = self.pc.binary_length(rows.column("key"))
        if self.pc.max(lengths).as_py() > MAX_KEY_LENGTH:
            at = int(np.argmax(lengths.to_numpy() > MAX_KEY_LENGTH))
            raise ManifestError(
                f"kvmap keeps exact keys of at most {MAX_KEY_LENGTH} UTF-8 bytes",
                manifest=self.name,
                entry=rows.column("entry")[at].as_py(),
                field="key",
            )

    def _place(self, rows: Any, names: list[str] | None) -> None:
        """Append winning exact rows, with the range pieces that start before or at their keys."""
        pieces = self.plan.pieces
        if names is None or not names or self.next_piece >= len(pieces):
            self._push(rows)
            return
        start = 0
        while self.next_piece < len(pieces) and pieces[self.next_piece].min <= names[-1]:
            piece = pieces[self.next_piece]
            at = bisect_left(names, piece.min, start)  # a range row goes before an exact row of its key
            self._push(rows.slice(start, at - start))
            self._push_piece(piece)
            start = at
            self.next_piece += 1
        self._push(rows.slice(start))

    def _push_piece(self, piece: _RangePiece) -> None:
        self.placed.append((self.position, piece))
        row = (piece.min, piece.max, piece.kind, piece.entry, piece.strip, piece.path)
        self._push(_small_table(self.pa, self.schema, [row]))

    def _push(self, rows: Any) -> None:
        if rows.num_rows == 0:
            return
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        self.position += rows.num_rows
        while self.pending_rows >= self.block_rows:
            self._cut()

    # -- blocks out --

    def _cut(self) -> None:
        """Write the next block of pending piece rows."""
        table = self.pa.concat_tables(self.pending) if len(self.pending) > 1 else self.pending[0]
        take = min(self.block_rows, table.num_rows)
        block, rest = table.slice(0, take), table.slice(take)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows -= take
        start = self.written
        self.written += take
        placed = self.placed
        while self.in_effect + 1 < len(placed) and placed[self.in_effect + 1][0] < start:
            self.in_effect += 1
        first = block.column("key")[0].as_py()
        cont = 0
        if self.in_effect >= 0:
            piece = placed[self.in_effect][1]
            if piece.max is None or piece.max > first:
                # The block starts inside this piece: it opens with a copy of it, at its first key.
                kind = piece.kind & ~_TYPE_MASK | _CONT
                row = (first, piece.max, kind, piece.entry, piece.strip, piece.path)
                block = self.pa.concat_tables([_small_table(self.pa, self.schema, [row]), block])
                cont = 1
        types = block.column("kind").to_numpy() & _TYPE_MASK
        self.first.append(first)
        self.exact_rows.append(int(np.count_nonzero(types == _EXACT)))
        self.range_rows.append(int(np.count_nonzero(types == _RANGE)))
        self.cont.append(cont)
        self._write(block)

    def _write(self, block: Any) -> None:
        self.writer.write_table(block.combine_chunks(), row_group_size=max(block.num_rows, 1))

    def _write_blocks(self, tables: Iterable[Any]) -> list[str]:
        """Write the rows of ``tables`` in blocks; their first keys."""
        firsts = []
        pending: list[Any] = []
        rows = 0
        for table in itertools.chain(tables, [None]):
            if table is not None:
                pending.append(table)
                rows += table.num_rows
            while rows >= self.block_rows or (table is None and rows):
                joined = self.pa.concat_tables(pending)
                block, rest = joined.slice(0, self.block_rows), joined.slice(self.block_rows)
                pending, rows = [rest], rest.num_rows
                firsts.append(block.column("key")[0].as_py())
                self._write(block)
        return firsts

    def finish(self, n_entries: int, paths: _Paths, relative: int | None, losers: Iterable[Any] | None = None) -> None:
        """Settle the last row, place the last range pieces, write the definitions, the losers
        (``losers``: tables of them sorted by ``(key, entry)``, else those fed) and the footer."""
        if self.held is not None:
            self._settle(self.held, 1)
            self.held = None
        for piece in self.plan.pieces[self.next_piece :]:
            self._push_piece(piece)
        self.next_piece = len(self.plan.pieces)
        while self.pending_rows:
            self._cut()
        definitions = self._write_blocks([_small_table(self.pa, self.schema, self.plan.definitions)])
        loser_first = self._write_blocks(self.losers if losers is None else losers)
        footer = {
            "format": _FORMAT,
            "version": _VERSION_PINS if self.pinned else _VERSION,
            "entries": n_entries,
            "pieces": {"first": self.first, "exact": self.exact_rows, "ranges": self.range_rows, "cont": self.cont},
            "definitions": len(definitions),
            "losers": {"first": loser_first},
            "roots": paths.root_references(),
            "pipelines": paths.pipeline_references(),
            "relative": relative,
        }
        self.writer.add_key_value_metadata({_META_KEY: orjson.dumps(footer)})


# -- reading: the footer ------------------------------------------------------------------------------


class _Footer(NamedTuple):
    metadata: Any  # pyarrow.parquet.FileMetaData
    info: dict[str, Any]
    size: int  # the file's size, as far as any read needs it


def _looks_like(tail: bytes) -> str:
    """What bytes that are not a parquet file look like, from their end."""
    if not tail:
        return "it is empty"
    stripped = tail.rstrip()
    if stripped.endswith((b"}", b"]")):
        return "it looks like JSON text (a kvmap JSON manifest is read by a name that does not end in .parquet)"
    if b"PK\x05\x06" in tail[-(65_535 + 22) :]:
        return "it looks like a zip archive"
    return "it does not end in the parquet magic 'PAR1'"


def _footer(pa: Any, pq: Any, tail: bytes, name: str | None) -> Loading[_Footer]:
    """Parse the footer from the last bytes of the file (at most ``_TAIL_BYTES``); reads the rest
    of the footer if it is longer."""
    if len(tail) < 12 or tail[-4:] != _MAGIC:
        raise ManifestError(f"not a kvmap-parquet manifest: {_looks_like(tail)}", manifest=name)
    need = int.from_bytes(tail[-8:-4], "little") + 8
    if need > len(tail):
        if len(tail) < _TAIL_BYTES:  # that was the whole file
            raise ManifestError("a damaged parquet file: its footer is longer than the file", manifest=name)
        more = yield Fetch("", (None, need))
        if more is None or len(more) < need:
            raise ManifestError("a damaged parquet file: its footer is longer than the file", manifest=name)
        tail = bytes(more)
    footer = tail[len(tail) - need :]
    try:
        metadata = pq.read_metadata(pa.BufferReader(_MAGIC + footer))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"not a readable parquet file: {exc}", manifest=name) from None
    text = (metadata.metadata or {}).get(_META_KEY)
    if text is None:
        names = set(metadata.schema.names)
        what = (
            "it is a file of kerchunk parquet references (read their directory with the kerchunk adapter)"
            if {"path", "offset", "size", "raw"} <= names
            else f"a parquet file without kvmap's footer metadata (columns {sorted(names)})"
        )
        raise ManifestError(f"not a kvmap-parquet manifest: {what}", manifest=name)
    info = _checked_info(text, metadata, name)
    return _Footer(metadata, info, _data_end(metadata) + need)


def _checked_info(text: bytes, metadata: Any, name: str | None) -> dict[str, Any]:
    """The footer's ``kvmap`` JSON, checked against the file's row groups."""

    def damaged(reason: str) -> ManifestError:
        return ManifestError(f"a damaged kvmap-parquet footer: {reason}", manifest=name)

    try:
        info = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise damaged("its 'kvmap' metadata is not JSON") from None
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise damaged("its 'kvmap' metadata does not describe a kvmap-parquet file")
    version = info.get("version")
    if type(version) is not int or version not in _VERSIONS:
        raise ManifestError(
            f"a kvmap-parquet manifest of layout version {version!r}: this kvmap reads versions "
            f"{_VERSION} and {_VERSION_PINS} (a newer kvmap wrote it, or it is damaged)",
            manifest=name,
        )
    try:
        pieces, losers = info["pieces"], info["losers"]
        counts = [len(pieces[k]) for k in ("first", "exact", "ranges", "cont")]
        total = counts[0] + int(info["definitions"]) + len(losers["first"])
        ok = len(set(counts)) == 1 and total == metadata.num_row_groups and isinstance(info["entries"], int)
        ok = ok and all(isinstance(k, str) for k in pieces["first"] + losers["first"])
        ok = ok and list(metadata.schema.names) == list(_columns(version == _VERSION_PINS))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise damaged("its index does not match its row groups")
    return info


def _columns(pinned: bool) -> tuple[str, ...]:
    """The names of the columns of a file with pins (layout version 2) or without."""
    return _COLUMNS + _PIN_COLUMNS if pinned else _COLUMNS


def _span(metadata: Any, group: int) -> tuple[int, int]:
    """The bytes ``[start, end)`` of row group ``group``'s column chunks (contiguous: one read).

    As pyarrow computes it: a chunk starts at its dictionary page if it has one before its data.
    """
    rg = metadata.row_group(group)
    lo, hi = None, 0
    for c in range(rg.num_columns):
        col = rg.column(c)
        start = col.data_page_offset
        if col.has_dictionary_page and col.dictionary_page_offset and col.dictionary_page_offset < start:
            start = col.dictionary_page_offset
        lo = start if lo is None else min(lo, start)
        hi = max(hi, start + col.total_compressed_size)
    return (4 if lo is None else lo), max(hi, 4)


def _data_end(metadata: Any) -> int:
    """Where the row groups end: the footer follows (pyarrow writes nothing between)."""
    if metadata.num_row_groups == 0:
        return 4
    return _span(metadata, metadata.num_row_groups - 1)[1]


class _Sparse(io.RawIOBase):
    """A file of ``size`` bytes of which only ``data``, at ``start``, is here: what pyarrow reads a
    block from. A read of any other byte raises: it would be a misread of the layout, never zeros."""

    def __init__(self, size: int, start: int, data: bytes) -> None:
        super().__init__()
        self._size, self._start, self._data, self._pos = size, start, data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(self._size - self._pos, 0))
        at = self._pos - self._start
        if n and (at < 0 or at + n > len(self._data)):
            raise OSError(f"kvmap-parquet: bytes {self._pos}..{self._pos + n} were not fetched")
        view[:n] = self._data[at : at + n]
        self._pos += n
        return n


# -- reading: blocks --------------------------------------------------------------------------------


class _Block:
    """One decoded row group, held in a few large buffers, not an object per row.

    The keys are their UTF-8 bytes, concatenated in ``text`` at ``starts`` (``n + 1`` offsets): UTF-8
    orders as code points do, so a key is found by bisecting byte strings. Integer columns are
    memoryviews of numpy arrays (indexing one gives an ``int``); ``-1`` stands for null. ``ends`` and
    ``data`` hold the few rows that have them. Made of large allocations, a block's memory goes back
    whole when the cache drops it: ten thousand short-lived ``str`` objects per block would leave
    the heap fragmented.
    """

    __slots__ = (
        "data",
        "ends",
        "entry",
        "kind",
        "length",
        "n",
        "nbytes",
        "offset",
        "path",
        "paths",
        "pins",
        "ranges",
        "sample",
        "starts",
        "strip",
        "text",
        "urls",
    )

    n: int
    text: bytes
    starts: memoryview
    sample: list[bytes]  # the key of every _SAMPLE-th row, bisected in C before the last steps
    kind: memoryview
    entry: memoryview
    strip: memoryview
    path: memoryview  # index into paths, -1: null
    paths: list[str]  # the block's dictionary of paths, as written
    urls: list[str | None]  # the same resolved, filled in as lookups need them
    offset: memoryview
    length: memoryview
    data: dict[int, bytes]
    ends: dict[int, str | None]  # row -> end of every range, continuation and range definition row
    ranges: list[int]  # the rows of range and continuation rows, in order
    # The etag, version (dictionaries) and sha256 columns of a file with pins, as Arrow arrays: a
    # Pins object is made for the one row asked about (a block of them would be megabytes).
    pins: tuple[Any, Any, Any] | None
    nbytes: int  # the memory it holds, about

    @classmethod
    def decode(cls, pa: Any, pc: Any, table: Any) -> _Block:
        self = object.__new__(cls)
        self.n = n = table.num_rows
        key = table.column("key").combine_chunks()
        buffers = key.buffers()
        offsets = (
            np.frombuffer(buffers[1], dtype=np.int32, count=n + 1, offset=4 * key.offset)
            if n
            else np.zeros(1, dtype=np.int32)
        )
        data_buffer = buffers[2]
        text = b"" if data_buffer is None else data_buffer.to_pybytes()
        self.text = text[offsets[0] : offsets[-1]]
        starts = (offsets - offsets[0]).astype(np.int32)
        bounds = starts.tolist()
        self.sample = [self.text[bounds[j] : bounds[j + 1]] for j in range(0, n, _SAMPLE)]
        kind = table.column("kind").to_numpy()
        columns: dict[str, npt.NDArray[Any]] = {"starts": starts, "kind": kind}
        for name in ("entry", "strip", "offset", "length"):
            columns[name] = np.ascontiguousarray(
                pc.fill_null(table.column(name), 0 if name in ("entry", "strip") else -1).to_numpy()
            )
        path = table.column("path").combine_chunks()
        if not pa.types.is_dictionary(path.type):
            path = path.dictionary_encode()
        columns["path"] = np.ascontiguousarray(pc.fill_null(path.indices, -1).to_numpy().astype(np.int32))
        self.paths = path.dictionary.to_pylist()
        self.urls = [None] * len(self.paths)
        for name, values in columns.items():
            setattr(self, name, memoryview(values.data))
        types = kind & _TYPE_MASK
        self.ranges = np.flatnonzero((types == _RANGE) | (types == _CONT)).tolist()
        ends = table.column("end")
        self.ends = dict.fromkeys(self.ranges)
        for r in np.flatnonzero(pc.is_valid(ends).to_numpy(zero_copy_only=False)).tolist():
            self.ends[r] = ends[r].as_py()
        data = table.column("data")
        valid = np.flatnonzero(pc.is_valid(data).to_numpy(zero_copy_only=False)).tolist()
        self.data = {r: data[r].as_py() for r in valid}
        self.pins = None
        pin_bytes = 0
        if table.num_columns > len(_COLUMNS):
            etag, version, sha = (table.column(name).combine_chunks() for name in _PIN_COLUMNS)
            self.pins = (etag, version, sha)
            pin_bytes = etag.nbytes + version.nbytes + sha.nbytes
        self.nbytes = (
            pin_bytes
            + len(self.text)
            + sum(a.nbytes for a in columns.values())
            + sum(2 * (_STR_OVERHEAD + len(p)) + 16 for p in self.paths)
            + sum(len(d) + 100 for d in self.data.values())
            + sum(200 + len(e or "") for e in self.ends.values())
            + sum(_BYTES_OVERHEAD + 8 + len(k) for k in self.sample)
            + 512
        )
        return self

    def pins_of(self, j: int) -> Pins | None:
        """What row ``j`` pins (``None``: nothing, or the file has no pin columns)."""
        if self.pins is None:
            return None
        etag, version, sha = (column[j].as_py() for column in self.pins)
        if etag is None and version is None and sha is None:
            return None
        return Pins(etag, version, None if sha is None else sha.hex())

    def key(self, j: int) -> str:
        """The key of row ``j``."""
        return self.text[self.starts[j] : self.starts[j + 1]].decode("utf-8")

    def _around(self, at: int) -> tuple[int, int]:
        """The rows that can hold the answer of a bisection whose sample bisection gave ``at``."""
        return max((at - 1) * _SAMPLE + 1, 0), min(at * _SAMPLE, self.n)

    def bisect_right(self, key: bytes, lo: int = 0) -> int:
        """How many rows (from ``lo``) have a key at most ``key`` (UTF-8): ``bisect.bisect_right``."""
        text, starts = self.text, self.starts
        low, hi = self._around(bisect_right(self.sample, key))
        lo = max(lo, low)
        while lo < hi:
            mid = (lo + hi) // 2
            if key < text[starts[mid] : starts[mid + 1]]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def bisect_left(self, key: bytes, lo: int = 0) -> int:
        """How many rows (from ``lo``) have a key below ``key`` (UTF-8): ``bisect.bisect_left``."""
        text, starts = self.text, self.starts
        low, hi = self._around(bisect_left(self.sample, key))
        lo = max(lo, low)
        hi = max(hi, lo)
        while lo < hi:
            mid = (lo + hi) // 2
            if text[starts[mid] : starts[mid + 1]] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def is_key(self, j: int, key: bytes) -> bool:
        return self.text[self.starts[j] : self.starts[j + 1]] == key


def _checked(key: str) -> bytes:
    """``key`` as UTF-8; :class:`~kvmap.InvalidKeyError` if it holds a lone surrogate."""
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        _check_key(key)  # raises the error CompiledMap raises
        raise


def _utf8(key: str) -> bytes:
    """``key`` as UTF-8 for comparing with a block's keys; a lone surrogate is encoded as the code
    point it is (``surrogatepass``), which orders it where code point order puts it."""
    return key.encode("utf-8", "surrogatepass")


class ColumnarMap:
    """A kvmap-parquet manifest opened lazily: a :class:`~kvmap.keymap.KeyMap` whose lookups read
    the blocks they need (:func:`open_kvmap_parquet` gives one).

    Every ``*_io`` method answers as the method of the same name without ``_io`` on
    ``kvmap.compile(manifest)`` does (``range_targets_io`` as a list), for the manifest the file was
    written from, with its relative paths resolved against ``url``. A lookup reads at most the one
    block of pieces that can hold its key (none when it is cached); ``resolve_many_io`` reads each
    block its keys need once; ``exact_keys_io`` and ``range_targets_io`` read the blocks of the
    range they list (those that can hold what they list); ``explain_io`` reads the definitions of
    the prefix and range entries too (once) and the losers of its key. Decoded blocks are kept up
    to ``cache_bytes``. Safe to use from several threads.

    A file with pins (spec 3.4) says so (:attr:`pinned`), and :meth:`pins_io` gives what the entry
    that decides a key pins: :class:`~kvmap.chain.Chain` asks it on every read of such a file
    (its one-step fast paths leave the keys of a pinned map to the walk, which checks the pins).
    """

    #: The document's URL, against which relative paths resolve (``None``: it has none).
    url: str | None
    #: What errors call the map.
    name: str | None
    #: How many entries the manifest has.
    n_entries: int
    #: Whether any entry has pins (spec 3.4; the file's layout version 2): then :meth:`pins_io`
    #: says what the entry that decides a key pins, and every read of such a key checks it.
    pinned: bool
    _metadata: Any  # pyarrow.parquet.FileMetaData
    _size: int
    _first: list[str]  # the first key of each block of pieces
    _exact_rows: list[int]  # per block of pieces: how many exact rows, range rows, and a continuation
    _range_rows: list[int]
    _cont: list[int]
    _n_definitions: int
    _loser_first: list[str]
    _loser_start: int
    _root_reps: list[str]
    _pipeline_reps: list[str]
    _roots: set[str] | None
    _pipelines: set[str] | None
    _definitions: list[tuple[int, KeyRange]] | None
    _cache: OrderedDict[int, _Block]
    _cached_bytes: int
    _cache_bytes: int
    _spans: dict[int, tuple[int, int]]
    _lock: threading.Lock
    _known: dict[str, tuple[Resolution | None, int]]  # key -> (resolution, deciding exact entry)
    _known_pins: dict[str, Pins | None]  # key -> what its deciding entry pins (pinned files only)

    def __init__(self) -> None:
        raise TypeError("use kvmap.formats.kvmap_parquet.open_kvmap_parquet")

    @classmethod
    def _open(cls, footer: _Footer, url: str | None, name: str | None, cache_bytes: int) -> ColumnarMap:
        self = object.__new__(cls)
        info = footer.info
        self.url, self.name, self.n_entries = url, name, int(info["entries"])
        self.pinned = info["version"] == _VERSION_PINS
        self._metadata, self._size = footer.metadata, footer.size
        pieces = info["pieces"]
        self._first = pieces["first"]
        self._exact_rows = pieces["exact"]
        self._range_rows = pieces["ranges"]
        self._cont = pieces["cont"]
        self._n_definitions = int(info["definitions"])
        self._loser_first = info["losers"]["first"]
        self._loser_start = len(self._first) + self._n_definitions
        self._root_reps = info["roots"]
        self._pipeline_reps = info["pipelines"]
        self._roots = None
        self._pipelines = None
        self._definitions = None
        self._cache = OrderedDict()
        self._cached_bytes = 0
        self._cache_bytes = cache_bytes
        self._spans = {}
        self._lock = threading.Lock()
        self._known = {}
        self._known_pins = {}
        return self

    def __repr__(self) -> str:
        return (
            f"<ColumnarMap {self.name or '(unnamed)'}: {self.n_entries} entries, "
            f"{len(self._first)} blocks of pieces, {len(self._cache)} decoded>"
        )

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a ColumnarMap reads its document as it goes: open the document again where it is needed")

    # -- blocks --

    def _block(self, group: int) -> Loading[_Block]:
        """Row group ``group``, decoded: from the cache, or read (one fetch) and kept."""
        with self._lock:
            block = self._cache.get(group)
            if block is not None:
                self._cache.move_to_end(group)
                return block
        block = yield from self._read(group)
        with self._lock:
            if group not in self._cache and block.nbytes <= self._cache_bytes:
                self._cache[group] = block
                self._cached_bytes += block.nbytes
                while self._cached_bytes > self._cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached_bytes -= old.nbytes
        return block

    def _read(self, group: int) -> Loading[_Block]:
        span = self._spans.get(group)
        if span is None:
            span = self._spans[group] = _span(self._metadata, group)
        lo, hi = span
        data = yield Fetch("", (lo, hi))
        if data is None or len(data) != hi - lo:
            raise ManifestError(
                f"block {group} (bytes {lo}..{hi}) cannot be read: the file is gone or shorter than "
                "its footer says (was it replaced since it was opened?)",
                manifest=self.name,
            )
        pa, pq, pc = _pyarrow()
        try:
            parquet = pq.ParquetFile(
                _Sparse(self._size, lo, bytes(data)),
                metadata=self._metadata,
                read_dictionary=_DICTIONARY_COLUMNS if self.pinned else ["path"],
            )
            table = parquet.read_row_group(group, use_threads=False)
            return _Block.decode(pa, pc, table)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ManifestError(f"block {group} cannot be read: {exc}", manifest=self.name) from None

    def _piece_block(self, key: str) -> int:
        """The block of pieces that holds ``key``'s piece, if any has one (-1: none can)."""
        return bisect_right(self._first, key) - 1

    def _url(self, block: _Block, code: int) -> str:
        url = block.urls[code]
        if url is None:
            url = block.urls[code] = resolve_target(self.url, block.paths[code])
        return url

    def _find(self, block: _Block, key: str, utf8: bytes) -> tuple[Resolution | None, int]:
        """``key``'s resolution in its block of pieces (``utf8``: the key as UTF-8), and the exact
        entry that decides it (-1: none)."""
        j = block.bisect_right(utf8) - 1
        if j < 0:
            return None, -1
        kind = block.kind[j]
        if kind & _TYPE_MASK == _EXACT and block.is_key(j, utf8):
            target = kind >> _TARGET_SHIFT & 3
            entry = block.entry[j]
            if target == _ABSENT:
                return None, entry
            if target == _PATH:
                offset, length = block.offset[j], block.length[j]
                url = self._url(block, block.path[j])
                return Resolution(
                    entry, url, None if offset < 0 else offset, None if length < 0 else length, None
                ), entry
            return Resolution(entry, None, None, None, block.data[j]), entry
        r = bisect_right(block.ranges, j) - 1
        if r < 0:
            return None, -1
        row = block.ranges[r]
        end = block.ends[row]
        if (end is not None and key >= end) or block.kind[row] >> _TARGET_SHIFT & 3 == _ABSENT:
            return None, -1
        rest = key[block.strip[row] :]
        if rest.strip(REMAINDER_SAFE):  # encode_remainder's own test: most keys skip the call
            rest = encode_remainder(rest)
        return Resolution(block.entry[row], self._url(block, block.path[row]) + rest, None, None, None), -1

    def _lookup(self, key: str) -> Loading[tuple[Resolution | None, int]]:
        found = self._known.get(key)
        if found is not None:
            return found
        utf8 = _checked(key)
        b = self._piece_block(key)
        if b < 0:
            return None, -1
        block = yield from self._block(b)
        found = self._find(block, key, utf8)
        self._remember(key, found)
        return found

    def _remember(self, key: str, found: tuple[Resolution | None, int]) -> None:
        self._bounded(self._known, key, found)

    def _bounded(self, known: dict[str, Any], key: str, found: Any) -> None:
        # Oldest out first: a bounded dict, not an LRU (a hit costs one dict lookup, nothing more).
        known[key] = found
        if len(known) > DEFAULT_KNOWN_KEYS:
            with self._lock:
                try:
                    while len(known) > DEFAULT_KNOWN_KEYS:
                        known.pop(next(iter(known)), None)
                except RuntimeError:  # another thread added a key meanwhile: trim next time
                    pass

    def known(self, key: str) -> tuple[Resolution | None, bool] | None:
        """What :meth:`resolve_io` and :meth:`is_exact_io` answer for ``key`` if it was looked up
        lately (the last :data:`DEFAULT_KNOWN_KEYS` keys), else ``None``: nothing is read."""
        found = self._known.get(key)
        return None if found is None else (found[0], found[1] >= 0)

    # -- the map interface --

    def resolve_io(self, key: str) -> Loading[Resolution | None]:
        """Where ``key``'s value is (:meth:`kvmap.CompiledMap.resolve`); reads its block if it is not
        cached. Raises :class:`~kvmap.InvalidKeyError` for a key with a lone surrogate."""
        found, _exact = yield from self._lookup(key)
        return found

    def resolve_many_io(self, keys: Sequence[str]) -> Loading[list[Resolution | None]]:
        """:meth:`resolve_io` of each key, in order; each block the keys need is read once."""
        keys = list(keys)
        utf8 = [_checked(key) for key in keys]  # every key is checked before anything is read
        by_block: dict[int, list[int]] = {}
        out: list[Resolution | None] = [None] * len(keys)
        known = self._known
        for i, key in enumerate(keys):
            found = known.get(key)
            if found is not None:
                out[i] = found[0]
            else:
                by_block.setdefault(self._piece_block(key), []).append(i)
        for b in sorted(by_block):
            if b < 0:
                continue
            block = yield from self._block(b)  # held here, whatever the cache keeps
            for i in by_block[b]:
                found = self._find(block, keys[i], utf8[i])
                self._remember(keys[i], found)
                out[i] = found[0]
        return out

    def pins_io(self, key: str) -> Loading[Pins | None]:
        """What the exact entry that decides ``key`` pins of its object (spec 3.4): its
        :class:`~kvmap.entries.Pins` as written, ``None`` if it pins nothing, if no exact entry
        decides ``key`` (a prefix or range entry, a whiteout, or nothing), or if the file has no
        pins (:attr:`pinned` false: nothing is read). The chain asks it of every read of a key of a
        pinned map (:meth:`kvmap.chain.Chain._entry_pins`). Reads the key's block of pieces if it
        is not cached, and nothing for a key asked lately (the last :data:`DEFAULT_KNOWN_KEYS`). Raises
        :class:`~kvmap.InvalidKeyError` for a key with a lone surrogate and
        :class:`~kvmap.ManifestError` for a block that cannot be read."""
        utf8 = _checked(key)
        if not self.pinned:
            return None
        with contextlib.suppress(KeyError):  # not asked lately, or trimmed meanwhile
            return self._known_pins[key]
        pins = None
        b = self._piece_block(key)
        if b >= 0:
            block = yield from self._block(b)
            j = block.bisect_right(utf8) - 1
            # As in _find: the last row at most the key is its exact entry if it is that key.
            if j >= 0 and block.kind[j] & _TYPE_MASK == _EXACT and block.is_key(j, utf8):
                pins = block.pins_of(j)
        self._bounded(self._known_pins, key, pins)
        return pins

    def known_pins(self, key: str) -> tuple[Pins | None] | None:
        """``(pins,)``, what :meth:`pins_io` would answer for ``key``, if it needs no read (a
        file without pins, or a key asked lately); ``None``: it would have to read. Never reads:
        the chain's one-step read takes a key whose entry is known to pin nothing."""
        if not self.pinned:
            return (None,)
        try:
            return (self._known_pins[key],)
        except KeyError:
            return None

    def is_exact_io(self, key: str) -> Loading[bool]:
        """Whether an exact entry (a value or a whiteout) decides ``key``
        (:meth:`kvmap.CompiledMap.is_exact`). Raises :class:`~kvmap.InvalidKeyError` for a key
        with a lone surrogate."""
        _found, exact = yield from self._lookup(key)
        return exact >= 0

    def explain_io(self, key: str) -> Loading[Explanation]:
        """Every entry that covers ``key``, winner first, and its resolution
        (:meth:`kvmap.CompiledMap.explain`): reads the key's block, the definitions of the prefix
        and range entries (once) and the losers of the key."""
        found, exact = yield from self._lookup(key)
        definitions = yield from self._range_definitions()
        covering = [i for i, rng in definitions if rng.contains(key)]
        covering += yield from self._losers(key)
        if exact >= 0:
            covering.append(exact)
        return Explanation(key, tuple(sorted(covering, reverse=True)), found)

    def exact_keys_io(self, prefix: str = "", *, whiteouts: bool = False) -> Loading[list[str]]:
        """The keys of winning exact entries that start with ``prefix``, sorted (with ``whiteouts``,
        whited-out ones too): :meth:`kvmap.CompiledMap.exact_keys`. Reads the blocks of the prefix
        that hold exact rows."""
        if not prefix.isascii():
            try:
                prefix.encode("utf-8")
            except UnicodeEncodeError:
                return []  # no key holds a lone surrogate
        end = prefix_successor(prefix)
        first = self._first
        lo = max(bisect_right(first, prefix) - 1, 0)
        hi = len(first) if end is None else bisect_left(first, end)
        found: list[str] = []
        for b in range(lo, hi):
            if not self._exact_rows[b]:
                continue
            block = yield from self._block(b)
            start = block.bisect_left(_utf8(prefix))
            stop = block.n if end is None else block.bisect_left(_utf8(end), start)
            kind = block.kind
            for j in range(start, stop):
                k = kind[j]
                if k & _TYPE_MASK == _EXACT and (whiteouts or k >> _TARGET_SHIFT & 3 != _ABSENT):
                    found.append(block.key(j))
        return found

    def range_targets_io(self, within: KeyRange) -> Loading[list[RangeTarget]]:
        """The range pieces with a URL target that meet ``within``, clipped to it, in key order:
        ``list(kvmap.CompiledMap.range_targets(within))``. Reads the block of ``within.min`` and
        the later ones of the range that start a piece."""
        out: list[RangeTarget] = []
        first = self._first
        b0 = max(bisect_right(first, within.min) - 1, 0)
        for b in range(b0, len(first)):
            if b > b0 and within.max is not None and first[b] >= within.max:
                break
            if not (self._range_rows[b] or (b == b0 and self._cont[b])):
                continue
            block = yield from self._block(b)
            rows = block.ranges
            start = 0
            if b == b0:
                # The piece in effect at within.min, then those that start after it.
                j = block.bisect_right(_utf8(within.min)) - 1
                start = bisect_right(rows, j)
                if start > 0:
                    self._range_target(block, rows[start - 1], within, out)
            for row in rows[start:]:
                if block.kind[row] & _TYPE_MASK == _CONT:
                    continue  # a piece that started in an earlier block: already there
                if within.max is not None and block.key(row) >= within.max:
                    return out
                self._range_target(block, row, within, out)
        return out

    def _range_target(self, block: _Block, row: int, within: KeyRange, out: list[RangeTarget]) -> None:
        clipped = KeyRange(block.key(row), block.ends[row]).intersect(within)
        if clipped.is_empty() or block.kind[row] >> _TARGET_SHIFT & 3 == _ABSENT:
            return
        out.append(
            RangeTarget(clipped.min, clipped.max, block.entry[row], self._url(block, block.path[row]), block.strip[row])
        )

    def target_roots(self) -> set[str]:
        """Root URLs, or directory URLs (ending in ``/``) that cover them, of every entry's target,
        winning or shadowed: :func:`kvmap.policy.allow_prefixes` makes the same of them as of
        :meth:`kvmap.CompiledMap.target_roots` (from the footer: no read)."""
        if self._roots is None:
            self._roots = {resolve_target(self.url, r).partition(PIPELINE_SEPARATOR)[0] for r in self._root_reps}
        return set(self._roots)

    def pipeline_roots(self) -> set[str]:
        """The root URLs of every pipeline an entry's target names: :meth:`kvmap.CompiledMap.pipeline_roots`
        (from the footer: no read)."""
        if self._pipelines is None:
            urls = (resolve_target(self.url, r) for r in self._pipeline_reps)
            self._pipelines = {u.partition(PIPELINE_SEPARATOR)[0] for u in urls if PIPELINE_SEPARATOR in u}
        return set(self._pipelines)

    # -- definitions --

    def _range_definitions(self) -> Loading[list[tuple[int, KeyRange]]]:
        """Every prefix and range entry as ``(index, its keys)``: read once, kept (they are few)."""
        if self._definitions is None:
            found: list[tuple[int, KeyRange]] = []
            start = len(self._first)
            for group in range(start, start + self._n_definitions):
                block = yield from self._read(group)
                for j in range(block.n):
                    key = block.key(j)
                    prefix = block.kind[j] & _TYPE_MASK == _PREFIX_DEF
                    found.append((block.entry[j], prefix_range(key) if prefix else KeyRange(key, block.ends.get(j))))
            self._definitions = found
        return self._definitions

    def _losers(self, key: str) -> Loading[list[int]]:
        """The exact entries for ``key`` that lose (to a later one, or to a prefix or range entry)."""
        first = self._loser_first
        lo = max(bisect_left(first, key) - 1, 0)
        hi = bisect_right(first, key)
        found: list[int] = []
        for b in range(lo, hi):
            block = yield from self._block(self._loser_start + b)
            utf8 = _utf8(key)
            found += [block.entry[j] for j in range(block.bisect_left(utf8), block.bisect_right(utf8))]
        return found


# -- opening and loading --------------------------------------------------------------------------


def open_kvmap_parquet(
    url: str | None, *, name: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> Loading[ColumnarMap | None]:
    """The opener of the kvmap-parquet file at ``url`` (the :mod:`kvmap.fetch` protocol): reads
    its footer — the last 64 KiB (``Fetch("", (None, 65536))``), and the rest of the footer if it is
    longer — and returns a :class:`ColumnarMap` that reads blocks as lookups need them, relative
    paths resolved against ``url``; ``None`` if the file does not exist (the first read answers
    ``None``). ``name`` is what errors call it (default ``url``); ``cache_bytes`` bounds the decoded
    blocks it keeps.

    Raises :class:`~kvmap.ManifestError` naming the manifest for bytes that are not a kvmap-parquet
    file (saying what they look like), for a damaged footer, and for a file with relative paths
    opened without a URL (spec 5.1: naming the first such entry); lookups raise it for a block
    that cannot be read. :class:`~kvmap.MissingDependencyError` without pyarrow.

    >>> drive(open_kvmap_parquet("s3://b/missing.kvmap.parquet"), {}.get) is None
    True
    >>> drive(open_kvmap_parquet("s3://b/m.kvmap.parquet"), lambda _name: b'{"kvmap": 1, "entries": []}')
    Traceback (most recent call last):
    ...
    kvmap.errors.ManifestError: s3://b/m.kvmap.parquet: not a kvmap-parquet manifest: it looks like JSON text ...
    """
    shown = url if name is None else name
    tail = yield Fetch("", (None, _TAIL_BYTES))
    if tail is None:
        return None
    pa, pq, _pc = _pyarrow()
    footer = yield from _footer(pa, pq, bytes(tail), shown)
    relative = footer.info.get("relative")
    if url is None and relative is not None:
        raise ManifestError(
            "is a relative reference, but the manifest has no URL to resolve it against",
            manifest=shown,
            entry=relative,
            field="path",
        )
    return ColumnarMap._open(footer, url, shown, cache_bytes)


def load_kvmap_parquet(url: str | None) -> Loading[Manifest | None]:
    """The loader of the kvmap-parquet file at ``url``: reads it whole and returns every entry as
    the :class:`~kvmap.Manifest` it was written from (equal to it: the same entries in the same
    order, written with the same members; paths as written, relative ones resolving against
    ``url``); ``None`` if it does not exist. Raises :class:`~kvmap.ManifestError` as
    :func:`open_kvmap_parquet` does, and for a file whose rows do not define every entry once.
    """
    data = yield Fetch()
    if data is None:
        return None
    return _manifest(bytes(data), url)


def _manifest(data: bytes, url: str | None) -> Manifest:
    pa, pq, pc = _pyarrow()
    footer = drive(_footer(pa, pq, data[-_TAIL_BYTES:], url), lambda _name: data)
    try:
        table = pq.ParquetFile(pa.BufferReader(data), metadata=footer.metadata, read_dictionary=["path"]).read(
            use_threads=False
        )  # pins are read as plain columns: each pinned entry becomes a JSON object anyway
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"not a readable parquet file: {exc}", manifest=url) from None
    types = table.column("kind").to_numpy() & _TYPE_MASK
    defining = table.filter(pa.array(np.isin(types, [_EXACT, _PREFIX_DEF, _RANGE_DEF, _LOSER])))
    n = int(footer.info["entries"])
    entry = defining.column("entry").to_numpy()
    if len(entry) != n or not np.array_equal(np.sort(entry), np.arange(n)):
        raise ManifestError("a damaged kvmap-parquet file: its rows do not define every entry once", manifest=url)
    order = np.argsort(entry, kind="stable")
    kind = defining.column("kind").to_numpy()[order]
    # The longest run of entries that the manifest's columns can hold (an exact key with a path or a
    # whiteout): built without a dict per entry; those before and after it are JSON objects.
    plain = ((kind & _TYPE_MASK) == _EXACT) | ((kind & _TYPE_MASK) == _LOSER)
    plain &= ((kind >> _TARGET_SHIFT & 3) == _PATH) | ((kind >> _TARGET_SHIFT & 3) == _ABSENT)
    if table.num_columns > len(_COLUMNS):  # the columns hold no pins: a pinned entry is an object
        for name in _PIN_COLUMNS:
            plain &= ~np.asarray(pc.is_valid(defining.column(name)).to_numpy(zero_copy_only=False), dtype=bool)[order]
    lo, hi = _longest_run(plain)
    rows = defining.take(pa.array(order))
    run = rows.slice(lo, hi - lo)
    before = _entry_objects(pa, pc, rows.slice(0, lo))
    after = _entry_objects(pa, pc, rows.slice(hi))
    if hi == lo:
        return Manifest.from_json(before + after, url=url, name=url)
    return Manifest.from_references(
        run.column("key").to_pylist(),
        _paths(pc, run.column("path")),
        run.column("offset").to_pylist(),
        run.column("length").to_pylist(),
        before=before,
        after=after,
        url=url,
        name=url,
    )


def _longest_run(mask: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """``(lo, hi)``: the longest run of ``True`` in ``mask`` (``(0, 0)`` if there is none)."""
    if not mask.any():
        return 0, 0
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    k = int(np.argmax(stops - starts))
    return int(starts[k]), int(stops[k])


def _paths(pc: Any, column: Any) -> list[str | None]:
    """A dictionary-encoded path column as a list, each distinct path one object."""
    path = column.combine_chunks()
    values = np.empty(len(path.dictionary) + 1, dtype=object)
    values[:-1] = path.dictionary.to_pylist()
    codes = pc.fill_null(path.indices, -1).to_numpy()
    result: list[str | None] = values[codes].tolist()  # -1 picks the trailing None
    return result


def _entry_objects(pa: Any, pc: Any, table: Any) -> list[dict[str, Any]]:
    """Definition and exact rows as the JSON objects of their entries, as they were written."""
    if table.num_rows == 0:
        return []
    columns = {name: table.column(name).to_pylist() for name in _COLUMNS if name != "path"}
    columns["path"] = _paths(pc, table.column("path"))
    pins: dict[str, list[Any]] = {}
    if table.num_columns > len(_COLUMNS):
        pins = {name: table.column(name).to_pylist() for name in _PIN_COLUMNS}
        pins["sha256"] = [None if d is None else d.hex() for d in pins["sha256"]]
    out = []
    for r, (key, end, kind, _entry, strip, path, offset, length, data) in enumerate(
        zip(*(columns[c] for c in _COLUMNS), strict=True)
    ):
        kind_type, target = kind & _TYPE_MASK, kind >> _TARGET_SHIFT & 3
        obj: dict[str, Any] = {}
        if kind_type == _PREFIX_DEF:
            obj["prefix"] = key
        elif kind_type == _RANGE_DEF:
            if kind & _MIN_GIVEN:
                obj["min"] = key
            if end is not None:
                obj["max"] = end
        else:
            obj["key"] = key
        if kind & _STRIP_GIVEN:
            obj["strip_prefix"] = strip
        if target in (_PATH, _ABSENT):
            obj["path"] = path
            if offset is not None:
                obj["offset"] = offset
            if length is not None:
                obj["length"] = length
            for name, values in pins.items():  # in the order Entry.to_json writes them
                if values[r] is not None:
                    obj[name] = values[r]
        elif target == _DATA:
            obj["data"] = path if kind & _DATA_TEXT else base64.b64encode(data).decode("ascii")
        else:
            obj["json"] = orjson.loads(data)
        out.append(obj)
    return out


# -- building from a JSON document without holding it -----------------------------------------------

#: About how many bytes a build may hold (:func:`build_kvmap_parquet`'s ``memory_bytes``).
DEFAULT_BUILD_MEMORY = 256 << 20
#: Sorted runs merged at once; more are merged in rounds first (each keeps a batch in memory).
_FAN_IN = 32
#: A kerchunk entry sorts as ``class << _ORDER_SHIFT | its place in its class`` (see _kerchunk).
_ORDER_SHIFT = 40
_ORDER_MASK = (1 << _ORDER_SHIFT) - 1
#: The Python and Arrow bytes a buffered exact row costs beyond its text, about (measured).
_ROW_BYTES = 260
#: Entries checked at a time, at most (by the manifest's own validation, which takes columns at C
#: speed): fewer for a small memory budget.
_BATCH = 8192
#: An escaped surrogate: yajl turns one that is not half of a pair into "?", so such a document
#: is read by ijson's Python parser (which keeps it, for the validator to refuse).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_STARTS = frozenset(("start_map", "start_array"))
_OBJECT_BUILDER: Any = None


class _EntryError(Exception):
    """Entry ``index`` (``obj``, its JSON object) is invalid: ``error`` says why (its index is the
    batch's); the reader says it of the entry as its format names entries."""

    def __init__(self, error: ManifestError, index: int, obj: Any) -> None:
        super().__init__(str(error))
        self.error, self.index, self.obj = error, index, obj

    def of_entry(self) -> ManifestError:
        """The error, of entry ``index``."""
        return ManifestError(self.error.reason, manifest=self.error.manifest, entry=self.index, field=self.error.field)


class _RereadError(Exception):
    """The C parser cannot read this document exactly: read it with ijson's Python parser."""


def _ijson(backend: str) -> tuple[Any, Any]:
    """``ijson`` and its parser ``backend`` (``yajl2_c`` or ``python``), or
    :class:`MissingDependencyError`."""
    try:
        ijson = importlib.import_module("ijson")
        return ijson, ijson.get_backend(backend)
    except ImportError as exc:
        raise MissingDependencyError(
            f"building a kvmap-parquet file needs ijson, which is not installed: {_INSTALL}"
        ) from exc


def _object_builder() -> Any:
    """ijson's builder of a value from its parse events (kerchunk's small members)."""
    global _OBJECT_BUILDER
    if _OBJECT_BUILDER is None:
        _OBJECT_BUILDER = importlib.import_module("ijson").ObjectBuilder
    return _OBJECT_BUILDER()


class _Scanned:
    """A binary file read through, raising :class:`_RereadError` at an escaped surrogate."""

    def __init__(self, f: Any) -> None:
        self._f, self._tail = f, b""

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._f.read(size)
        if _SURROGATE_ESCAPE.search(self._tail + data[:8]) or _SURROGATE_ESCAPE.search(data):
            raise _RereadError
        self._tail = data[-8:]
        return data

    def close(self) -> None:
        self._f.close()


class _Counted:
    """A binary file that reports how many bytes were read from it so far."""

    def __init__(self, f: Any, report: Callable[[int], None]) -> None:
        self._f, self._report, self._done = f, report, 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._f.read(size)
        self._done += len(data)
        self._report(self._done)
        return data

    def close(self) -> None:
        self._f.close()


class _Intake:
    """The entries of a document, taken in order: the exact ones into sorted runs on disk (each
    bounded by the memory budget), the prefix and range ones kept (they are few), what the footer
    says of the paths gathered."""

    def __init__(
        self, pa: Any, pc: Any, name: str, memory_bytes: int, work: str, rebase: Callable[[str], str] | None = None
    ) -> None:
        self.pa, self.pc, self.name, self.work = pa, pc, name, work
        self.rebase = rebase
        self._rebased: dict[str, str] = {}
        # Half the budget for buffered rows: sorting a run copies it once more in Arrow.
        self.budget = max(memory_bytes // 2, 1 << 16)
        # A batch (its JSON objects, then its rows) is a small part of the budget.
        self.batch_size = min(max(self.budget // 512, 64), _BATCH)
        # Runs carry the pin columns whether or not any entry has them (all null is a few bytes):
        # whether the file has them is known once the whole document has been read.
        self.schema = _schema(pa, True).set(0, pa.field("key", pa.large_string()))
        self.pinned = False  # whether an exact entry has pins
        self.runs: list[str] = []
        self.ranges: list[tuple[int, Entry]] = []
        self.raw: dict[int, dict[str, Any]] = {}
        self.paths = _Paths()
        self.relative: int | None = None  # the least order of an entry with a relative path
        self.count = 0
        self._relative: dict[str, bool] = {}
        self._interned: dict[str | None, str | None] = {}
        self._clear()
        self.batch: list[Any] = []
        self.batch_index = array("q")
        self.batch_order = array("q")

    def _clear(self) -> None:
        self.keys: list[str] = []
        self.order = array("q")
        self.kind = array("h")
        self.path: list[str | None] = []
        self.offset = array("q")
        self.length = array("q")
        self.data: dict[int, bytes] = {}
        self.pins: dict[int, Pins] = {}
        self.bytes = 0

    def add(self, index: int, obj: Any, order: int | None = None) -> None:
        """Take entry ``index`` (its JSON object); ``order`` is where it sorts (default ``index``).
        Entries are checked in batches (:meth:`flush`): an error (:class:`_EntryError`) may come a
        few thousand entries later, always of the first bad entry."""
        self.count += 1
        if self.count > _MAX_ENTRIES:
            raise ManifestError(f"kvmap compiles at most {_MAX_ENTRIES} entries", manifest=self.name)
        if self.rebase is not None and type(obj) is dict and type(path := obj.get("path")) is str:
            obj = self._rebase(obj, path)
        self.batch.append(obj)
        self.batch_index.append(index)
        self.batch_order.append(index if order is None else order)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def _rebase(self, obj: dict[str, Any], path: str) -> dict[str, Any]:
        """``obj`` with its path as :attr:`rebase` makes it (an invalid path is left for the
        validation to name)."""
        assert self.rebase is not None
        done = self._rebased.get(path)
        if done is None:
            if len(self._rebased) >= _SEEN_PATHS:
                self._rebased.clear()
            try:
                done = self._rebased[path] = self.rebase(path)
            except ValueError:
                done = path
        return obj if done == path else {**obj, "path": done}

    def flush(self) -> None:
        """Check the entries taken since the last flush and buffer them."""
        batch, indices, orders = self.batch, self.batch_index, self.batch_order
        if not batch:
            return
        self.batch, self.batch_index, self.batch_order = [], array("q"), array("q")
        try:
            # The manifest's own validation, whose column checks take the bulk at C speed; a
            # URL is given so that relative paths are valid (the build always has one).
            manifest = Manifest.from_json(batch, url="file:///", name=self.name)
        except ManifestError as exc:
            if exc.entry is None:
                raise
            raise _EntryError(exc, indices[exc.entry], batch[exc.entry]) from None
        cols, others = manifest.split()
        order = np.frombuffer(orders, dtype=np.int64)
        if len(cols.key):
            at = np.asarray(cols.index, dtype=np.int64)
            self._columns(cols, order[at] if len(at) != len(order) else order)
        for i, e in others:
            self._other(int(order[i]), e, batch[i])
        if self.bytes >= self.budget:
            self._spill()

    def _columns(self, cols: ExactColumns, order: npt.NDArray[np.int64]) -> None:
        """Buffer exact entries of the bulk shape (a path or a whiteout, an optional window)."""
        interned = self._interned
        if len(interned) >= _SEEN_PATHS:
            interned.clear()
        # One object per distinct path (most repeat), remembered for a while.
        paths = list(map(interned.setdefault, cols.path, cols.path))
        absent = np.fromiter(map(operator.is_, paths, itertools.repeat(None)), dtype=bool, count=len(paths))
        kinds = np.where(absent, _ABSENT << _TARGET_SHIFT, _PATH << _TARGET_SHIFT).astype(np.int16)
        first = len(self.keys)
        self.keys.extend(cols.key)
        self.path.extend(paths)
        self.order.frombytes(order.astype(np.int64).tobytes())
        self.kind.frombytes(kinds.tobytes())
        self.offset.frombytes(np.asarray(cols.offset, dtype=np.int64).tobytes())
        self.length.frombytes(np.asarray(cols.length, dtype=np.int64).tobytes())
        self.bytes += 3 * sum(map(len, self.keys[first:])) + _ROW_BYTES * len(paths)
        for path in cols.distinct_paths:
            self.paths.add(path)
            if self._is_relative(path):
                rows = np.flatnonzero(np.fromiter(map(operator.eq, paths, itertools.repeat(path)), dtype=bool))
                self._relative_at(int(np.min(order[rows])))

    def _other(self, order: int, entry: Entry, obj: Any) -> None:
        """Keep a prefix or range entry, or buffer an exact one that is not of the bulk shape."""
        if entry.path is not None:
            self.paths.add(entry.path)
            if self._is_relative(entry.path):
                self._relative_at(order)
        if entry.selector != "key":
            self.ranges.append((order, entry))
            self.raw[order] = obj
            return
        target, path, flags = _TARGETS[entry.target], entry.path, 0
        if entry.target == "data":
            assert entry.data is not None
            given = obj.get("data")
            if isinstance(given, str) and given != base64.b64encode(entry.data).decode("ascii"):
                flags, path = _DATA_TEXT, given  # the text as written, kept in the path column
        if entry.data is not None:
            self.data[len(self.keys)] = entry.data
        if entry.pins is not None:
            self.pins[len(self.keys)] = entry.pins
            self.pinned = True
            self.bytes += sum(map(len, entry.pins.to_json().values()))
        self.keys.append(entry.key)
        self.path.append(path)
        self.order.append(order)
        self.kind.append(target << _TARGET_SHIFT | flags)
        self.offset.append(-1 if entry.offset is None else entry.offset)
        self.length.append(-1 if entry.length is None else entry.length)
        self.bytes += 3 * len(entry.key) + len(entry.data or b"") + _ROW_BYTES

    def _is_relative(self, path: str) -> bool:
        relative = self._relative.get(path)
        if relative is None:
            if len(self._relative) >= _SEEN_PATHS:
                self._relative.clear()
            relative = self._relative[path] = _root_is_relative(path)
        return relative

    def _relative_at(self, order: int) -> None:
        if self.relative is None or order < self.relative:
            self.relative = order

    def _table(self) -> Any:
        """The buffered rows, sorted by ``(key, order)``."""
        pa, n = self.pa, len(self.keys)

        def ints(values: array[int]) -> npt.NDArray[np.int64]:
            return np.frombuffer(values, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)

        offset, length = ints(self.offset), ints(self.length)
        data = pa.array([self.data.get(i) for i in range(n)], pa.binary()) if self.data else pa.nulls(n, pa.binary())
        pins = _pin_arrays(pa, [self.pins.get(i) for i in range(n)] if self.pins else [None] * n)
        table = pa.table(
            [
                pa.array(self.keys, pa.large_string()),
                pa.nulls(n, pa.string()),
                pa.array(np.frombuffer(self.kind, dtype=np.int16) if n else np.zeros(0, np.int16)),
                pa.array(ints(self.order)),
                pa.array(np.zeros(n, dtype=np.int32)),
                pa.array(self.path, pa.string()),
                pa.array(offset, mask=offset < 0),
                pa.array(length, mask=length < 0),
                data,
                *pins,
            ],
            schema=self.schema,
        )
        self._clear()
        return table.sort_by([("key", "ascending"), ("entry", "ascending")])

    def _spill(self) -> None:
        table = self._table()
        path = os.path.join(self.work, f"run-{len(self.runs)}.arrow")
        _write_run(self.pa, path, self.schema, [table], max(256, min(1 << 16, table.num_rows // 64)))
        self.runs.append(path)

    def sorted_tables(self) -> Iterable[Any]:
        """Every exact row, sorted by ``(key, order)``, in tables."""
        if not self.runs:
            table = self._table()
            for start in range(0, table.num_rows, _CHUNK_ROWS):
                yield table.slice(start, _CHUNK_ROWS)
            return
        if self.keys:
            self._spill()
        runs, level = self.runs, 0
        while len(runs) > _FAN_IN:  # merge in rounds: each run being merged holds one batch
            level += 1
            merged = []
            for g in range(0, len(runs), _FAN_IN):
                path = os.path.join(self.work, f"merge-{level}-{g}.arrow")
                group = runs[g : g + _FAN_IN]
                _write_run(self.pa, path, self.schema, _merge(self.pa, self.pc, group), 1 << 14)
                for done in group:
                    os.unlink(done)
                merged.append(path)
            runs = merged
        yield from _merge(self.pa, self.pc, runs)


def _write_run(pa: Any, path: str, schema: Any, tables: Iterable[Any], batch_rows: int) -> None:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for table in tables:
            for batch in table.to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)


def _run_batches(pa: Any, path: str) -> Iterable[Any]:
    """The record batches of a run file, one at a time (read, not mapped: they count as memory)."""
    with pa.OSFile(path) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])


def _merge(pa: Any, pc: Any, runs: list[str]) -> Iterable[Any]:
    """The rows of sorted runs, merged, in sorted tables.

    Each round takes, from every run's current batch, the rows up to the least of their last rows
    (by ``(key, entry)``): no row still to come can sort before those, and the run that has that
    least last row gives its whole batch, so every round ends a batch.
    """
    sources = [iter(_run_batches(pa, path)) for path in runs]
    heads: list[Any] = [next(source, None) for source in sources]
    while True:
        live = [i for i, head in enumerate(heads) if head is not None]
        if not live:
            return
        if len(live) == 1:
            i = live[0]
            while heads[i] is not None:
                yield heads[i]
                heads[i] = next(sources[i], None)
            return
        bound = min((heads[i].column("key")[-1].as_py(), heads[i].column("entry")[-1].as_py()) for i in live)
        parts = []
        for i in live:
            head = heads[i]
            keys, entries = head.column("key"), head.column("entry")
            upto = pc.or_(pc.less(keys, bound[0]), pc.and_(pc.equal(keys, bound[0]), pc.less_equal(entries, bound[1])))
            n = pc.sum(upto).as_py() or 0
            if n:
                parts.append(head.slice(0, n))
            heads[i] = head.slice(n) if n < head.num_rows else next(sources[i], None)
        yield pa.concat_tables(parts).sort_by([("key", "ascending"), ("entry", "ascending")])


class _Spill:
    """Loser rows written to a file as they come, read back in order."""

    def __init__(self, pa: Any, path: str) -> None:
        self.pa, self.path = pa, path
        self.sink: Any = None
        self.writer: Any = None

    def write(self, table: Any) -> None:
        if self.writer is None:
            self.sink = self.pa.OSFile(self.path, "wb")
            self.writer = self.pa.ipc.new_file(self.sink, table.schema)
        self.writer.write_table(table)

    def tables(self) -> Iterable[Any]:
        if self.writer is None:
            return
        self.writer.close()
        self.sink.close()
        yield from _run_batches(self.pa, self.path)


def _read_kvmap(backend: Any, open_source: Callable[[], Any], intake: _Intake) -> None:
    """Stream the entries of the kvmap document into ``intake``, checking the document as
    :class:`~kvmap.Manifest` does and in its order: an object's own members first (a first pass
    that builds nothing), then each entry (the second pass, its entries built by ijson's C code)."""
    name = intake.name
    with open_source() as f:
        head = b""
        while not head and (chunk := f.read(1 << 16)):
            head = chunk.lstrip()[:1]
    if head != b"[":
        with open_source() as f:
            _check_document(backend, f, name)
    try:
        with open_source() as f:
            for index, obj in enumerate(backend.items(f, "item" if head == b"[" else "entries.item", use_float=True)):
                intake.add(index, obj)
        intake.flush()
    except _EntryError as exc:
        raise exc.of_entry() from None


def _check_document(backend: Any, f: Any, name: str) -> None:
    """Check the document's own members as :class:`~kvmap.Manifest` does (version, unknown members,
    ``entries`` an array); its entries are left to the second pass."""
    # Only the events of the top level and of the two members' own values are looked at.
    events = [(p, e, v) for p, e, v in backend.parse(f, use_float=True) if p in ("", "kvmap", "entries")]
    if not events or events[0][1] != "start_map":
        raise ManifestError("a manifest must be a JSON object or an array of entries", manifest=name)
    members: list[str] = []
    values: dict[str, tuple[str, Any]] = {}  # member -> the first event of its (last) value
    expect: Any = None
    for prefix, event, value in events[1:]:
        if prefix == "" and event == "map_key":
            members.append(value)
            expect = value
        elif expect is not None and prefix == expect:
            values[expect] = (event, value)
            expect = None
        elif prefix == "":
            expect = None
    if members.count("entries") > 1:  # a parsed document keeps the last; a stream would read both
        raise ManifestError("the member 'entries' appears twice", manifest=name, field="entries")
    version = values.get("kvmap")
    if version is None or version[0] in _STARTS or type(version[1]) is not int or version[1] != 1:
        found = "missing" if version is None else "a JSON container" if version[0] in _STARTS else repr(version[1])
        reason = f"unsupported manifest version {found[:80]}: this kvmap reads version 1"
        if version is None and ("refs" in members or "version" in members):
            reason = (
                "not a kvmap manifest (no member 'kvmap'); it looks like kerchunk references: "
                "build it with source_format='kerchunk'"
            )
        raise ManifestError(reason, manifest=name, field="kvmap")
    for member in members:
        if member not in ("kvmap", "entries"):
            raise ManifestError("unknown document member", manifest=name, field=member)
    if values.get("entries", ("", None))[0] != "start_array":
        raise ManifestError("'entries' must be an array of entries", manifest=name, field="entries")


def _read_kerchunk(backend: Any, open_source: Callable[[], Any], intake: _Intake) -> tuple[int, int]:
    """Stream kerchunk JSON references into ``intake`` as :func:`kvmap.formats.kerchunk.from_kerchunk`
    reads them (entries: the other values, then the ``[url, offset, length]`` references, each in
    document order, then the keys ``gen`` makes); the counts of the first two classes.

    Two passes over the file: the first takes the document's small members (``version``,
    ``templates``, ``gen``, which may come after ``refs``), the second the references. The keys that
    ``gen`` makes are held (at most ``max_keys``, as the importer allows). A key that appears twice
    in the references is refused (a parsed document would keep its first place and its last value).
    """
    from kvmap.formats.kerchunk import DEFAULT_MAX_KEYS, _kind, _Reader, _short

    name = intake.name
    wanted = ("version", "templates", "gen")
    small: dict[str, Any] = {}
    builders: dict[str, Any] = {}
    current: Any = None
    refs_members = 0
    refs_first: tuple[str, Any] | None = None  # the first event of the value of 'refs'
    with open_source() as f:
        # The top level's events and those that may be of the small members (a name's prefix),
        # looked at as they stream by: one event per reference is not kept (1e7 of them).
        # Which member an event belongs to is the last top-level name before it.
        events = (
            (p, e, v) for p, e, v in backend.parse(f, use_float=True) if not p or p == "refs" or p.startswith(wanted)
        )
        first = next(events, None)
        if first is None or first[1] != "start_map":
            kind = "empty" if first is None else "an array" if first[1] == "start_array" else _kind(first[2])
            raise ManifestError(f"a kerchunk reference document is a JSON object, not {kind}", manifest=name)
        for prefix, event, value in events:
            if not prefix:
                if event == "map_key":
                    current = value
                    if value in wanted:
                        builders[value] = _object_builder()  # a repeated member: the last counts
                    refs_members += value == "refs"
                continue
            if current in wanted:
                builders[current].event(event, value)
            elif current == "refs" and prefix == "refs" and refs_first is None:
                refs_first = (event, value)
    if refs_members > 1:  # a stream would read both; a parsed document keeps the last
        raise ManifestError("the member 'refs' appears twice", manifest=name, field="refs")
    small.update({member: builder.value for member, builder in builders.items()})
    if refs_first is not None:
        event, value = refs_first
        small["refs"] = {} if event == "start_map" else [] if event == "start_array" else value
    version = small.get("version")
    templates: Any = {}
    gens: Any = []
    refs_prefix = ""
    if small.get("version") is not None:  # as the importer reads it: "version": null is version 0
        if not (version == 1 and not isinstance(version, bool)):
            raise ManifestError(
                f"unknown kerchunk reference version {_short(version)} (kvmap reads 0, no 'version', and 1)",
                manifest=name,
                field="version",
            )
        refs, templates, gens = small.get("refs", {}), small.get("templates", {}), small.get("gen", [])
        shapes: tuple[tuple[str, Any, type], ...] = (
            ("refs", refs, dict),
            ("templates", templates, dict),
            ("gen", gens, list),
        )
        for field, value, shape in shapes:
            if not isinstance(value, shape):
                what = "a JSON object" if shape is dict else "a JSON array"
                raise ManifestError(f"'{field}' must be {what}, not {_kind(value)}", manifest=name, field=field)
        refs_prefix = "refs" if "refs" in small else ""

    class Reader(_Reader):
        """kerchunk's conversion of one reference at a time: errors name the reference's place."""

        at: tuple[Any, int] | None = None

        def position(self, key: Any) -> int | None:
            return self.at[1] if self.at is not None and self.at[0] == key else None

    reader = Reader(name, {}, templates, None)
    counts = [0, 0]
    urls: dict[Any, str] = {}
    # The importer's order: every reference converted (its errors first, in document order), then
    # the gen items, then the entries checked; so an entry's error waits for the conversions.
    problem: ManifestError | None = None
    if refs_prefix or small.get("version") is None:
        with open_source() as f:
            for position, (key, value) in enumerate(backend.kvitems(f, refs_prefix, use_float=True)):
                reader.at = (key, position)
                if len(urls) >= _SEEN_PATHS:
                    urls.clear()
                obj = reader.other(key, value, urls)
                if problem is not None:
                    continue
                cls = 1 if type(value) is list and len(value) == 3 else 0
                try:
                    intake.add(position, obj, cls << _ORDER_SHIFT | counts[cls])
                except _EntryError as exc:
                    problem = _reference_error(exc, name)
                counts[cls] += 1
        if problem is None:
            try:
                intake.flush()
            except _EntryError as exc:
                problem = _reference_error(exc, name)
    made: list[dict[str, Any]] = []
    starts = reader.generate(gens, made, DEFAULT_MAX_KEYS) if gens else []
    if problem is not None:
        raise problem
    try:
        for j, obj in enumerate(made):
            intake.add(j, obj, 2 << _ORDER_SHIFT | j)
        intake.flush()
    except _EntryError as exc:
        item = bisect_right(starts, exc.index) - 1
        at = {"path": "url"}.get(exc.error.field or "", exc.error.field)
        raise ManifestError(
            f"key {_short(exc.obj.get('key'))} made by gen item {item}: {exc.error.reason}",
            manifest=name,
            field=f"gen[{item}].{at}" if at else f"gen[{item}]",
        ) from None
    return counts[0], counts[1]


def _reference_error(exc: _EntryError, name: str) -> ManifestError:
    """An entry's error, said of the kerchunk reference that made it (as the importer says it)."""
    from kvmap.formats.kerchunk import _short

    return ManifestError(
        f"the reference of {_short(exc.obj.get('key'))}: {exc.error.reason}",
        manifest=name,
        entry=exc.index,
        field={"path": "url"}.get(exc.error.field or "", exc.error.field),
    )


def build_kvmap_parquet(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source_format: str = "kvmap",
    url: str | None = None,
    memory_bytes: int = DEFAULT_BUILD_MEMORY,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    progress: Callable[[int, int], None] | None = None,
    rebase: Callable[[str], str] | None = None,
) -> None:
    """Write the kvmap-parquet file of the JSON document ``source`` to ``out`` without holding the
    document: the same file as ``to_kvmap_parquet(Manifest.load(source))`` (``source_format``
    ``"kvmap"``) or ``to_kvmap_parquet(kvmap.formats.kerchunk.from_kerchunk(document, url))``
    (``"kerchunk"``: kerchunk JSON references), byte for byte.

    ``url`` is the document's URL (default: the file's ``file://`` URL, as :meth:`Manifest.load`
    gives); the file does not record it, since it keeps paths as written and they resolve against
    the URL it is opened at, so it changes nothing in the file. The document is streamed (ijson's C parser;
    its Python parser for the rare document that the C one cannot read exactly: one with an escaped
    surrogate, or an integer beyond 64 bits). Exact entries are sorted in runs of about
    ``memory_bytes / 2`` that go to temporary files (in the system's temporary directory) and are
    merged as the blocks are written; prefix and range entries are held (they are few: a
    manifest's bulk is exact keys), and so are the keys kerchunk's ``gen`` makes (at most
    ``kvmap.formats.kerchunk.DEFAULT_MAX_KEYS``). So a build holds about ``memory_bytes``, plus its
    prefix and range entries, plus the distinct directories of its targets when they are many.
    ``out`` is replaced atomically (:func:`kvmap.manifest.save_atomically`'s way) once the whole
    document has been read: an invalid one leaves it as it was.

    ``progress(done, total)`` is called as the build goes, in units of the source's bytes: the total
    is twice its size, reading the document counts the bytes read (from 0 again if it is read once
    more by the exact parser), writing the file the second half in proportion to the entries written.

    ``rebase`` rewrites each entry's path as it is read: what :func:`kvmap.convert` passes to write
    the file somewhere its relative paths would name other objects (:meth:`Manifest.rebased`).

    Raises :class:`~kvmap.ManifestError` as :meth:`Manifest.load` (or the kerchunk importer) does for
    the document (a ``kvmap`` document whose ``entries`` member appears twice, or kerchunk
    references that repeat a key, are refused too), ``OSError`` when ``source`` cannot be read,
    :class:`~kvmap.SaveError` when ``out`` cannot be written, ``ValueError`` for a bad argument and
    :class:`~kvmap.MissingDependencyError` without pyarrow or ijson.

    >>> import json, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     src = os.path.join(d, "m.json")
    ...     with open(src, "w") as f:
    ...         json.dump({"kvmap": 1, "entries": [{"key": "a", "path": "a.bin"}]}, f)
    ...     build_kvmap_parquet(src, os.path.join(d, "m.kvmap.parquet"))
    ...     with open(os.path.join(d, "m.kvmap.parquet"), "rb") as f:
    ...         f.read() == to_kvmap_parquet(Manifest.load(src))
    True
    """
    if source_format not in ("kvmap", "kerchunk"):
        raise ValueError(f"source_format is 'kvmap' or 'kerchunk', not {source_format!r}")
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, not {block_rows}")
    name = os.fspath(source)
    del url  # the file keeps paths as written: where it is opened decides what they resolve against
    size = os.path.getsize(os.path.expanduser(name)) if progress is not None else 0
    pa, pq, pc = _pyarrow()
    ijson, _ = _ijson("yajl2_c")
    with tempfile.TemporaryDirectory(prefix="kvmap-build-") as work:
        intake: _Intake | None = None
        counts = (0, 0)
        for backend_name in ("yajl2_c", "python"):
            _, backend = _ijson(backend_name)
            intake = _Intake(pa, pc, name, memory_bytes, tempfile.mkdtemp(dir=work), rebase)
            scanned = backend_name == "yajl2_c"

            def open_source(scanned: bool = scanned) -> Any:
                f: Any = open(os.path.expanduser(name), "rb")  # noqa: SIM115 (closed by its caller's with)
                if progress is not None:
                    f = _Counted(f, lambda done: progress(done, 2 * size))
                if scanned:
                    return contextlib.closing(_Scanned(f))
                return contextlib.closing(f) if progress is not None else f

            try:
                if source_format == "kvmap":
                    _read_kvmap(backend, open_source, intake)
                else:
                    counts = _read_kerchunk(backend, open_source, intake)
                break
            except _RereadError:
                continue
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                if scanned and "integer overflow" in str(exc):
                    continue  # yajl keeps 64-bit integers; a json value may hold up to 2**64 - 1
                raise ManifestError(f"not valid JSON: {exc}", manifest=name) from None
        assert intake is not None
        plan = _RangePlan.build(intake.ranges, intake.raw.__getitem__)
        relative = intake.relative
        if source_format == "kerchunk":
            starts = np.array([0, counts[0], counts[0] + counts[1]], dtype=np.int64)
            relative = None if relative is None else _kerchunk_index(np.array([relative]), starts)[0].item()
        # The plan's entries are final already (kerchunk has no prefix or range entries).
        spill = _Spill(pa, os.path.join(work, "losers.arrow"))

        def write(f: Any) -> None:
            with _Output(pa, pq, pc, f, block_rows, plan, name, losers=spill.write, pinned=intake.pinned) as output:
                schema = output.schema
                last: tuple[str, int] | None = None
                fed = 0
                for table in intake.sorted_tables():
                    if progress is not None:
                        fed += table.num_rows
                        progress(size + size * fed // max(intake.count, 1), 2 * size)
                    if source_format == "kerchunk":
                        last = _check_distinct(pc, table, last, name)
                        entry = _kerchunk_index(table.column("entry").to_numpy(), starts)
                        table = table.set_column(_COLUMNS.index("entry"), "entry", pa.array(entry))
                    output.feed(table.select(schema.names).cast(schema))  # without pins: no pin columns
                output.finish(intake.count, intake.paths, relative, spill.tables())
                if progress is not None:
                    progress(2 * size, 2 * size)

        save_atomically(out, write)


def _kerchunk_index(order: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Entry indices from kerchunk's sort orders: the start of each class plus the place in it."""
    result: npt.NDArray[np.int64] = starts[order >> _ORDER_SHIFT] + (order & _ORDER_MASK)
    return result


def _check_distinct(pc: Any, table: Any, last: tuple[str, int] | None, name: str) -> tuple[str, int] | None:
    """Refuse a key that two references have (sorted rows: they are next to each other); the last
    row's key and class, for the next table."""
    if table.num_rows == 0:
        return last
    keys = table.column("key").to_pylist()
    classes = (table.column("entry").to_numpy() >> _ORDER_SHIFT).tolist()
    previous = last
    for key, cls in zip(keys, classes, strict=True):
        if previous is not None and previous[0] == key and previous[1] < 2 and cls < 2:
            raise ManifestError(f"the key {key!r} appears twice in the references", manifest=name, field="refs")
        previous = (key, cls)
    return previous
