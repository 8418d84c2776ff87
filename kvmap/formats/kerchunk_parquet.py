"""Kerchunk parquet references (fsspec's ``LazyReferenceMapper`` layout) as kvmap manifests, and back.

The layout is a directory (zarr v2 only)::

    <dir>/.zmetadata              {"metadata": {".zgroup": {...}, "x/.zarray": {...}, ...}, "record_size": N}
    <dir>/<field>/refs.<r>.parq   the chunk references of array <field>, N rows per file

The chunk ``field/i.j.k`` of an array whose ``field/.zarray`` has ``shape`` and ``chunks`` is row
``n % N`` of file ``refs.{n // N}.parq``, where ``n`` is the C-order index of ``(i, j, k)`` in the
grid ``ceil(shape / chunks)`` (a 0-d array has the grid ``[1]`` and the one key ``field/0``). A row has
the columns ``path`` (string, null allowed), ``offset``, ``size`` (int64) and ``raw`` (bytes, null
allowed): ``raw`` set is the value itself; else ``path`` with ``offset = size = 0`` is the whole
object, ``path`` with a window is ``[path, offset, size]``; both null, a row past the end of a file
and every row of a file that does not exist, mean the chunk is missing.

>>> files = dump_kerchunk_parquet(Manifest.from_json([
...     {"key": ".zgroup", "json": {"zarr_format": 2}},
...     {"key": "x/.zarray", "json": {"shape": [4], "chunks": [2], "dtype": "<i4", "compressor": None,
...                                   "fill_value": 0, "filters": None, "order": "C", "zarr_format": 2}},
...     {"key": "x/0", "path": "s3://bucket/x.bin", "offset": 100, "length": 8}], url=None))
>>> sorted(files)
['.zmetadata', 'x/refs.0.parq']
>>> m = drive(load("s3://bucket/refs"), files.get)
>>> kvmap.compile(m).resolve("x/0")
Resolution(entry=..., url='s3://bucket/x.bin', offset=100, length=8, data=None)

Decisions (and why):

* **pyarrow, not fastparquet.** pyarrow reads a file from a buffer into Arrow columns without
  pandas (fastparquet builds a pandas DataFrame), keeps the dictionary of a categorical ``path``
  column (``read_dictionary``), so each distinct URL is converted once, and its compute kernels
  build the entries' text without a Python loop per reference; kvmap's own columnar format uses it
  too, so it is one optional dependency (``pip install 'kvmap[parquet]'``). Files are opened with
  ``pyarrow.parquet.ParquetFile``: ``read_table`` imports ``pyarrow.dataset`` and pandas (seconds).
* **Metadata bytes are fsspec's.** ``LazyReferenceMapper`` serves a metadata key as
  ``json.dumps(value).encode()`` with ``ujson`` when it is installed (kerchunk requires it), else
  the standard library's ``json``; the values come from parsing ``.zmetadata`` with the same module.
  :func:`load` does exactly that, so every key holds the bytes fsspec serves (``ujson`` escapes
  ``/`` as ``\\/``; the two parse to the same value). ``.zmetadata`` itself is a key too, holding
  the file's bytes, as fsspec serves it: zarr reads it as consolidated metadata (it ignores
  ``record_size``), so ``consolidated=True`` opens work as they do through fsspec.
* **Paths** map as kerchunk JSON's do (:mod:`kvmap.formats.kerchunk`, the same table): fsspec
  uses a path literally (``s3://b/a%20b`` is the S3 key ``a%20b``; ``/d/x.nc``, ``file:///d/x.nc``
  the local file ``/d/x.nc``) where kvmap percent-decodes (spec 11.2), so the object path of
  ``s3``/``s3a``, ``gs``/``gcs``, ``az``/``abfs(s)`` URLs and of local paths (which become
  ``file://`` URLs) is percent-encoded on import and decoded on export; ``http(s)`` URLs are kept,
  with what a URL cannot hold (space, ``|``, non-ASCII, a stray ``%``) encoded. Refused, naming the
  row: fsspec's ``memory://`` (its process-global file system, not kvmap's ``memory://NAME/``),
  chained (``a::b``) and other URLs kvmap does not read, ``data:``, ``~/...`` and empty paths.
* **Relative paths resolve against the directory.** fsspec resolves them against the working
  directory of the process that reads, which no document can rely on (kerchunk itself writes
  absolute URLs). kvmap's rule is that a relative reference resolves against the document: the
  manifest's ``url`` is the directory's URL with a trailing ``/``, so ``x.nc`` is the file inside
  the directory and ``../x.nc`` its sibling. Entries keep such paths relative (percent-encoded).
* **Missing rows are absent** (no entry): a row with neither ``raw`` nor ``path``, a row past the
  end of a short file, and every row of a record whose file does not exist. Rows past the array's
  grid (kerchunk pads every file to ``record_size`` rows) are ignored. A metadata key that is also
  a chunk key wins over the row, as in fsspec.
* **What fsspec cannot serve is not imported.** A root array (``.zarray`` at the top) has no chunk
  files (fsspec has no field name for it), so only its metadata is read. An array of two or more
  dimensions whose ``dimension_separator`` is ``/`` is refused: fsspec cannot find any of its chunks.
* **Export** (:func:`dump_kerchunk_parquet`) writes what kerchunk's writer writes, and what fsspec's
  reader (fastparquet through pandas) reads back with the right types: the four columns, zstd,
  dictionary-encoded ``path``, no statistics, ``offset``/``size`` required int64 with pandas
  metadata saying so (without it fastparquet reads them as floats, and fsspec then fails to seek),
  every file padded to ``record_size`` rows. Every path is absolute. Inline values starting with
  ``base64:`` are written base64-encoded behind that prefix, because fsspec decodes such values.
* **Writing a directory** (:func:`write_kerchunk_parquet`) never replaces one that has files in it:
  the files go to a new temporary sibling directory, which is renamed into place (replacing an
  empty directory, which ``rename`` does atomically); a non-empty directory is refused (remove it
  first), so a reader never sees a mix of two reference sets.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import importlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

import kvmap
from kvmap.entries import MAX_INT
from kvmap.errors import ConvertError, ManifestError, SaveError
from kvmap.fetch import Fetch, Loading, drive
from kvmap.formats._arrow import pyarrow
from kvmap.formats._fsspec_urls import RefusedError, fsspec_url, kvmap_url
from kvmap.manifest import Manifest
from kvmap.url import PIPELINE_SEPARATOR, is_absolute, resolve_target

__all__ = ["dump_kerchunk_parquet", "from_kerchunk_parquet", "load", "write_kerchunk_parquet"]

_COLUMNS = ("path", "offset", "size", "raw")
#: Rows of one record turned into entry text at a time (Arrow string arrays hold at most 2 GiB).
_SLICE_ROWS = 1 << 18
_CANONICAL_INDEX = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_B64_PREFIX = b"base64:"
#: The most chunks an array's grid may have (chunk numbers are int64 in the columnar code).
_MAX_CHUNKS = 2**62


# -- optional dependencies -------------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any, Any]:
    return pyarrow("kerchunk parquet references")


def _fsspec_json() -> ModuleType:
    """The JSON module fsspec's ``reference.py`` uses: ``ujson`` if it is installed, else ``json``."""
    try:
        return importlib.import_module("ujson")
    except ImportError:
        return json


# -- import ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Array:
    """An array of the reference set: its field (directory), grid and the chunks metadata shadows."""

    name: str  # the field: the array's key prefix and directory
    grid: tuple[int, ...]  # () for a 0-d array
    total: int  # chunks in the grid
    shadowed: set[int] = field(default_factory=set)  # chunk numbers that a metadata key decides

    def key(self, n: int) -> str:
        """The zarr key of chunk number ``n``."""
        if not self.grid:
            return f"{self.name}/0"
        index = []
        for g in reversed(self.grid):
            n, i = divmod(n, g)
            index.append(str(i))
        return f"{self.name}/{'.'.join(reversed(index))}"


class _Document:
    """Names the files of one reference directory in errors."""

    __slots__ = ("base",)

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/") if base != "/" else base

    def name(self, member: str) -> str:
        return f"{self.base}/{member}"

    def error(self, member: str, reason: str, *, row: int | None = None, column: str | None = None) -> ManifestError:
        return ManifestError(reason, manifest=self.name(member), entry=row, field=column)


def load(url: str | None, *, target: str | None = None) -> Loading[Manifest | None]:
    """The loader of a kerchunk parquet reference directory at ``url`` (the :mod:`kvmap.fetch`
    protocol): fetches ``.zmetadata`` (``None`` from the driver: not such a directory, and the loader
    returns ``None``), then ``{field}/refs.{r}.parq`` for every record ``r`` that each array's grid
    needs (``None``: all its rows are missing), and returns the :class:`~kvmap.Manifest`: an inline
    entry for every metadata key and for ``.zmetadata`` (the bytes fsspec serves), an exact entry
    for every chunk row (``path`` with the window ``offset``/``size``, or without a window when both
    are 0; inline ``data`` when ``raw`` is set), no entry for missing rows. Its ``url`` is ``url``
    with a trailing ``/``, against which relative paths resolve (module docstring).

    ``target`` (fsspec's ``ReferenceFileSystem(target=...)``, the URL of references whose URL is
    null, as in kerchunk JSON) is accepted for the same call as kerchunk JSON's loader and has no
    effect: in this layout a null ``path`` is a missing chunk (``LazyReferenceMapper`` raises
    ``KeyError`` for it before fsspec's ``target`` could apply).

    Raises :class:`~kvmap.ManifestError` naming the file (``url/.zmetadata``,
    ``url/field/refs.r.parq``), the row (``entry``) and the column or metadata key (``field``) at
    fault; :class:`~kvmap.MissingDependencyError` without pyarrow.

    >>> from kvmap.fetch import drive
    >>> drive(load("file:///nowhere/refs"), {}.get) is None
    True
    """
    del target  # see above: a null path is a missing chunk here
    return _load(url, url if url is not None else "<references>")


def _load(url: str | None, display: str) -> Loading[Manifest | None]:
    doc = _Document(display)
    header = yield Fetch(".zmetadata")
    if header is None:
        return None
    header = bytes(header)
    pa, pq, pc = _pyarrow()
    codec = _fsspec_json()
    metadata, record_size = _parse_header(header, codec, doc)
    arrays = _arrays(metadata, doc)
    base = None if url is None else (url if url.endswith("/") else url + "/")

    inline: list[bytes] = [orjson.dumps({"key": ".zmetadata", "data": base64.b64encode(header).decode("ascii")})]
    for key, value in metadata.items():
        _check_key(key, doc)
        if key == ".zmetadata":
            continue  # fsspec serves the file itself under this name
        try:
            served = codec.dumps(value).encode("utf-8")
        except (ValueError, TypeError, OverflowError) as exc:
            raise doc.error(".zmetadata", f"metadata value of {key!r} cannot be served: {exc}", column=key) from None
        inline.append(orjson.dumps({"key": key, "data": base64.b64encode(served).decode("ascii")}))

    bulk: list[memoryview] = []
    builder = _EntryText(pa, pc, base)
    for array in arrays:
        records = -(-array.total // record_size)
        for r in range(records):
            member = f"{array.name}/refs.{r}.parq"
            data = yield Fetch(member)
            if data is None:
                continue
            table = _read_table(pa, pq, data, doc, member)
            rows = min(table.num_rows, record_size, array.total - r * record_size)
            if rows <= 0:
                continue
            _record_entries(builder, array, table.slice(0, rows), r * record_size, doc, member, inline, bulk)

    # The bulk text (every entry starts with its ",") decoded typed into columns, the inline
    # entries before it: no dict per reference (Manifest.from_references).
    try:
        refs = _REFS.decode(b"".join([b"[", b"".join(bulk)[1:], b"]"])) if bulk else []
    except msgspec.ValidationError:
        refs = None  # a shape the columns do not hold: the general path below decides
    if refs is not None:
        keys, paths, offsets, lengths = (list(map(attrgetter(f), refs)) for f in ("key", "path", "offset", "length"))
        before = [orjson.loads(e) for e in inline]
        return Manifest.from_references(keys, paths, offsets, lengths, before=before, url=base, name=display)
    text = b"".join([b"[", b",".join(inline), *bulk, b"]"])
    return Manifest.loads(text, url=base, name=display)


class _Ref(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One bulk reference as the loader writes it."""

    key: str
    path: str | None
    offset: int | None = None
    length: int | None = None


_REFS = msgspec.json.Decoder(list[_Ref])


def _parse_header(header: bytes, codec: ModuleType, doc: _Document) -> tuple[dict[str, Any], int]:
    try:
        parsed = codec.loads(header)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise doc.error(".zmetadata", f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise doc.error(".zmetadata", "must be a JSON object with 'metadata' and 'record_size'")
    metadata = parsed.get("metadata")
    if not isinstance(metadata, dict):
        raise doc.error(".zmetadata", "'metadata' must be an object of metadata keys", column="metadata")
    record_size = parsed.get("record_size")
    if type(record_size) is not int or record_size < 1:
        raise doc.error(
            ".zmetadata", f"'record_size' must be a positive integer, not {record_size!r}", column="record_size"
        )
    return metadata, record_size


def _check_key(key: str, doc: _Document) -> None:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise doc.error(".zmetadata", "the metadata key holds a lone surrogate (not a key)", column=key) from None


def _grid(zarray: Any) -> tuple[tuple[int, ...], str | None]:
    """The chunk grid of a ``.zarray`` value, or ``((), reason)`` if it has none."""
    if not isinstance(zarray, dict):
        return (), "is not a JSON object"
    shape, chunks = zarray.get("shape"), zarray.get("chunks")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        return (), "has no 'shape' of non-negative integers"
    if not isinstance(chunks, list) or not all(type(c) is int and c > 0 for c in chunks):
        return (), "has no 'chunks' of positive integers"
    if len(shape) != len(chunks):
        return (), f"has a 'shape' of {len(shape)} dimensions and 'chunks' of {len(chunks)}"
    return tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True)), None


def _check_field(name: str) -> str | None:
    """Why ``name`` cannot be an array's directory (``None`` if it can)."""
    if any(part in ("", ".", "..") for part in name.split("/")) or "\x00" in name or "\\" in name:
        return "has an empty, '.' or '..' segment, a backslash or a NUL: it cannot name a directory"
    return None


def _arrays(metadata: dict[str, Any], doc: _Document) -> list[_Array]:
    """The arrays whose chunk files are read: every ``field/.zarray`` (not a root ``.zarray``)."""
    arrays: dict[str, _Array] = {}
    for key, value in metadata.items():
        if not key.endswith("/.zarray"):
            continue
        name = key[: -len("/.zarray")]
        problem = _check_field(name)
        if problem is not None:
            raise doc.error(".zmetadata", f"array {name!r} {problem}", column=key)
        grid, reason = _grid(value)
        if reason is not None:
            raise doc.error(".zmetadata", f"{key!r} {reason}", column=key)
        if len(grid) >= 2 and isinstance(value, dict) and value.get("dimension_separator", ".") not in (".", None):
            raise doc.error(
                ".zmetadata",
                f"{key!r} has dimension_separator {value['dimension_separator']!r}: the parquet layout holds "
                "only '.'-separated chunk keys (fsspec cannot read this array's chunks)",
                column=key,
            )
        total = math.prod(grid)
        if total > _MAX_CHUNKS:
            raise doc.error(".zmetadata", f"{key!r} has a grid of {total} chunks, more than kvmap indexes", column=key)
        arrays[name] = _Array(name, grid, total)
    for key in metadata:
        # A metadata key that is also a chunk key is served from the metadata (fsspec looks there first).
        field_name, _, chunk = key.rpartition("/")
        array = arrays.get(field_name)
        if array is not None:
            n = _chunk_number(chunk, array.grid)
            if n is not None:
                array.shadowed.add(n)
    return list(arrays.values())


def _chunk_number(chunk: str, grid: tuple[int, ...]) -> int | None:
    """The C-order number of the chunk named ``chunk`` (``"i.j.k"``) in ``grid``, if it is a canonical
    chunk name inside the grid; ``None`` otherwise."""
    if not grid:
        return 0 if chunk == "0" else None
    parts = chunk.split(".")
    if len(parts) != len(grid) or not all(_CANONICAL_INDEX.match(p) for p in parts):
        return None
    n = 0
    for part, g in zip(parts, grid, strict=True):
        i = int(part)
        if i >= g:
            return None
        n = n * g + i
    return n


def _read_table(pa: Any, pq: Any, data: bytes, doc: _Document, member: str) -> Any:
    try:
        # read_dictionary keeps a categorical path column's dictionary: each URL is converted once.
        parquet = pq.ParquetFile(pa.BufferReader(data), read_dictionary=["path"])
        present = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
        return parquet.read(columns=present, use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise doc.error(member, f"not a readable parquet file: {exc}") from None


class _EntryText:
    """Builds the JSON text of bulk exact entries, one Arrow string array per batch of rows."""

    def __init__(self, pa: Any, pc: Any, base: str | None) -> None:
        self.pa, self.pc, self.base = pa, pc, base
        self.urls: dict[str, str] = {}  # parquet path -> JSON text of the kvmap path
        self.tables: dict[str, list[Any]] = {}  # array -> per dimension, its indices as text

    def url_json(self, path: Any) -> str:
        """The JSON string of the kvmap path for the parquet ``path``; raises ``_PathError``."""
        found = self.urls.get(path)
        if found is not None:
            return found
        if not isinstance(path, str):
            raise _PathError("is null inside the column's dictionary")
        converted = _import_path(path)
        if self.base is None and not is_absolute(converted):
            raise _PathError("is a relative path, and the references have no URL to resolve it against")
        text = orjson.dumps(converted).decode("utf-8")
        self.urls[path] = text
        return text

    def key_parts(self, array: _Array, numbers: npt.NDArray[np.int64]) -> list[Any]:
        """The pieces of ``i.j.k`` for each chunk number: per dimension, that index's text (with the
        ``.`` after it but the last), taken from a table of each dimension's indices."""
        pa = self.pa
        if not array.grid:
            return ["0"]
        tables = self.tables.get(array.name)
        if tables is None:
            last = len(array.grid) - 1
            tables = self.tables[array.name] = [
                pa.array([f"{i}." if d < last else str(i) for i in range(g)], pa.string())
                for d, g in enumerate(array.grid)
            ]
        return [t.take(pa.array(i)) for t, i in zip(tables, np.unravel_index(numbers, array.grid), strict=True)]

    def text(self, *pieces: Any) -> memoryview:
        """The concatenation of ``pieces`` (Arrow arrays and strings), every row, as one buffer."""
        joined = self.pc.binary_join_element_wise(*pieces, "")
        if isinstance(joined, self.pa.ChunkedArray):
            joined = joined.combine_chunks()
        assert joined.null_count == 0
        if len(joined) == 0:
            return memoryview(b"")
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
        start, end = offsets[joined.offset], offsets[joined.offset + len(joined)]
        return memoryview(joined.buffers()[2])[start:end]


class _PathError(Exception):
    """A parquet path that kvmap cannot take, and why (turned into a ManifestError naming the row)."""


def _import_path(path: str) -> str:
    """The kvmap path (a URL or a relative reference) of the object fsspec reads at ``path``
    (the same table as kerchunk JSON's, :mod:`kvmap.formats._fsspec_urls`); raises ``_PathError``."""
    try:
        return kvmap_url(path)
    except RefusedError as exc:
        raise _PathError(f"is refused: {exc.reason}") from None


def _column(table: Any, name: str) -> Any:
    """The column ``name`` as one Arrow array, or ``None`` if the file has no such column."""
    if name not in table.column_names:
        return None
    return table.column(name).combine_chunks()


def _valid_mask(array: Any, rows: int) -> npt.NDArray[np.bool_]:
    if array is None:
        return np.zeros(rows, dtype=bool)
    if array.null_count == 0:
        return np.ones(rows, dtype=bool)
    return cast("npt.NDArray[np.bool_]", array.is_valid().to_numpy(zero_copy_only=False))


def _record_entries(
    builder: _EntryText,
    array: _Array,
    table: Any,
    first: int,
    doc: _Document,
    member: str,
    inline: list[bytes],
    bulk: list[memoryview],
) -> None:
    """Append the entries of one record (``table``, its chunk numbers from ``first``)."""
    pa, pc = builder.pa, builder.pc
    rows = table.num_rows
    raw = _column(table, "raw")
    path = _column(table, "path")
    has_raw = _valid_mask(raw, rows)
    has_path = _valid_mask(path, rows) & ~has_raw
    if array.shadowed:
        for n in array.shadowed:
            if first <= n < first + rows:
                has_raw[n - first] = has_path[n - first] = False

    if raw is not None and has_raw.any():
        if not (
            pa.types.is_binary(raw.type)
            or pa.types.is_large_binary(raw.type)
            or pa.types.is_string(raw.type)
            or pa.types.is_large_string(raw.type)
        ):
            raise doc.error(member, f"the raw column must hold bytes, not {raw.type}", column="raw")
        for row in np.flatnonzero(has_raw).tolist():
            cell = raw[row].as_py()
            data = cell.encode("utf-8") if isinstance(cell, str) else cell
            if data.startswith(_B64_PREFIX):
                # fsspec decodes a value that starts with "base64:" (ReferenceFileSystem._cat_common).
                try:
                    data = base64.b64decode(data[len(_B64_PREFIX) :])
                except (binascii.Error, ValueError) as exc:
                    key = array.key(first + row)
                    raise doc.error(
                        member, f"key {key!r}: invalid base64 after 'base64:' ({exc})", row=row, column="raw"
                    ) from None
            inline.append(orjson.dumps({"key": array.key(first + row), "data": base64.b64encode(data).decode()}))

    if not has_path.any():
        return
    assert path is not None
    if pa.types.is_dictionary(path.type):
        dictionary, indices = path.dictionary, path.indices
    elif pa.types.is_string(path.type) or pa.types.is_large_string(path.type):
        encoded = pc.dictionary_encode(path)
        dictionary, indices = encoded.dictionary, encoded.indices
    else:
        raise doc.error(member, f"the path column must hold strings, not {path.type}", column="path")
    if not (pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type)):
        raise doc.error(member, f"the path column must hold strings, not {dictionary.type}", column="path")
    selected = np.flatnonzero(has_path)
    codes = indices.to_numpy(zero_copy_only=False)[selected].astype(np.int64)
    offsets = _window_column(pa, table, "offset", selected, array, first, doc, member)
    sizes = _window_column(pa, table, "size", selected, array, first, doc, member)

    used = np.unique(codes)
    texts = [""] * len(dictionary)
    for code in used.tolist():
        value: Any = None
        try:
            value = dictionary[code].as_py()
            texts[code] = builder.url_json(value)
        except (_PathError, UnicodeDecodeError) as exc:
            row = int(selected[np.argmax(codes == code)])
            key = array.key(first + row)
            shown = "" if value is None else f" {value!r}"
            reason = str(exc) if isinstance(exc, _PathError) else "is not valid UTF-8"
            raise doc.error(member, f"key {key!r}: path{shown} {reason}", row=row, column="path") from None
    url_texts = pa.array(texts, pa.string())
    prefix = orjson.dumps(array.name + "/").decode("utf-8")[:-1]  # '"field/' without the closing quote
    whole = (offsets == 0) & (sizes == 0)
    for start in range(0, len(selected), _SLICE_ROWS):
        part = slice(start, start + _SLICE_ROWS)
        w = whole[part]
        for rows, windowed in ((np.flatnonzero(w), False), (np.flatnonzero(~w), True)):
            if not rows.size:
                continue
            rows += start
            key_text = builder.key_parts(array, selected[rows].astype(np.int64) + first)
            head = [',{"key":', prefix, *key_text, '","path":', url_texts.take(pa.array(codes[rows]))]
            if windowed:
                off, size = (pc.cast(pa.array(v[rows]), pa.string()) for v in (offsets, sizes))
                bulk.append(builder.text(*head, ',"offset":', off, ',"length":', size, "}"))
            else:
                bulk.append(builder.text(*head, "}"))


def _window_column(
    pa: Any,
    table: Any,
    name: str,
    selected: npt.NDArray[np.intp],
    array: _Array,
    first: int,
    doc: _Document,
    member: str,
) -> npt.NDArray[np.int64]:
    """``offset`` or ``size`` of the selected rows, checked: present, integers in ``0 .. 2**53-1``."""
    column = _column(table, name)
    if column is None:
        row = int(selected[0])
        raise doc.error(
            member, f"key {array.key(first + row)!r} has a path but the file has no {name} column", row=row, column=name
        )
    if not pa.types.is_integer(column.type):
        raise doc.error(member, f"the {name} column must hold integers, not {column.type}", column=name)
    if column.null_count:
        missing = np.flatnonzero(~column.is_valid().to_numpy(zero_copy_only=False)[selected])
        if missing.size:
            row = int(selected[missing[0]])
            raise doc.error(member, f"key {array.key(first + row)!r} has a path and no {name}", row=row, column=name)
        column = column.fill_null(0)
    values = column.to_numpy(zero_copy_only=False)[selected]
    bad = np.flatnonzero((values < 0) | (values > MAX_INT))
    if bad.size:
        row = int(selected[bad[0]])
        raise doc.error(
            member,
            f"key {array.key(first + row)!r}: {name} {int(values[bad[0]])} is not between 0 and 2**53-1",
            row=row,
            column=name,
        )
    return cast("npt.NDArray[np.int64]", values.astype(np.int64))


def from_kerchunk_parquet(directory: str | os.PathLike[str], url: str | None = None) -> Manifest:
    """The :class:`~kvmap.Manifest` of the kerchunk parquet reference directory ``directory`` on the
    local disk (:func:`load`, its files read from the directory). ``url`` is the directory's URL,
    against which relative paths resolve; by default its ``file://`` URL. Errors name the files by
    the directory's path as given.

    Raises :class:`FileNotFoundError` if the directory has no ``.zmetadata``; otherwise as :func:`load`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_kerchunk_parquet(Manifest.from_json([{"key": ".zgroup", "json": {"zarr_format": 2}}], url=None),
    ...                            os.path.join(d, "refs"))
    ...     kvmap.compile(from_kerchunk_parquet(os.path.join(d, "refs"))).resolve(".zgroup").data
    b'{"zarr_format":2}'
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if url is None:
        url = _directory_url(root)

    def read(name: str) -> bytes | None:
        try:
            with open(os.path.join(root, *name.split("/")), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    manifest = drive(_load(url, os.fspath(directory)), read)
    if manifest is None:
        path = os.path.join(root, ".zmetadata")
        raise FileNotFoundError(errno.ENOENT, "not a kerchunk parquet reference directory (no .zmetadata)", path)
    return manifest


def _directory_url(root: str) -> str:
    return Path(root).as_uri()


# -- export ----------------------------------------------------------------------------------------


def _is_meta(key: str) -> bool:
    """fsspec's rule for a metadata key (``LazyReferenceMapper._is_meta``)."""
    return key.startswith(".z") or "/.z" in key


@dataclass(slots=True)
class _OutArray:
    grid: tuple[int, ...]
    rows: dict[int, tuple[str, int, int] | bytes] = field(default_factory=dict)  # chunk number -> ref or raw


def dump_kerchunk_parquet(manifest: Manifest, *, record_size: int = 100_000) -> dict[str, bytes]:
    """The files of a kerchunk parquet reference directory holding ``manifest``: ``.zmetadata`` and
    every ``field/refs.r.parq`` with at least one reference (relative name -> bytes), which fsspec's
    ``LazyReferenceMapper``/``ReferenceFileSystem`` reads. Later entries with the same key win; a
    whiteout leaves the key out. Metadata keys (``.zarray``, ``.zgroup``, ``.zattrs``, at any depth)
    must be inline JSON; they go to ``.zmetadata`` (a ``.zmetadata`` key is the directory's own
    file: it is rewritten, not copied). Every other key must be a ``'.'``-separated chunk key inside
    the grid of its array's ``.zarray``; paths are made absolute against ``manifest.url`` and
    written as fsspec reads them (module docstring); inline values become ``raw``, whole objects
    ``offset = size = 0``.

    Raises :class:`~kvmap.ConvertError` naming the entry and field for what the layout cannot hold:
    a prefix or range entry (materialize it first), a zarr v3 key (``zarr.json``, ``c/`` chunk
    keys), a ``'/'``-separated or out-of-grid chunk key, a key of no array, metadata that is not
    inline JSON, a URL pipeline (``|``), a byte window without a length or a zero-length window at
    offset 0 (fsspec would read the whole object), and for a ``record_size`` below 1;
    :class:`~kvmap.MissingDependencyError` without pyarrow.

    >>> files = dump_kerchunk_parquet(Manifest.from_json([{"prefix": "x/", "path": "s3://b/x/"}], url=None))
    Traceback (most recent call last):
    ...
    kvmap.errors.ConvertError: <manifest>: entry 0: field 'prefix': ...
    """
    name = manifest.name
    if type(record_size) is not int or record_size < 1:
        raise ConvertError(f"record_size must be a positive integer, not {record_size!r}", manifest=name)
    pa, pq, _ = _pyarrow()
    entries: list[dict[str, Any]] = manifest.to_json()["entries"]
    keys: list[Any] = [e.get("key") for e in entries]
    if None in keys:
        i = keys.index(None)
        selector = "prefix" if "prefix" in entries[i] else "min" if "min" in entries[i] else "max"
        raise ConvertError(
            "a prefix or range entry cannot be written as kerchunk references: materialize it into exact keys first",
            manifest=name,
            entry=i,
            field=selector,
        )
    winners: dict[str, int] = dict(zip(keys, range(len(keys)), strict=True))  # the last entry of each key
    metadata: dict[str, Any] = {}
    chunk_entries: list[tuple[str, int]] = []
    for key, i in winners.items():
        entry = entries[i]
        if "path" in entry and entry["path"] is None:
            continue  # a whiteout: the key does not exist
        if key == "zarr.json" or key.endswith("/zarr.json"):
            raise ConvertError(
                f"key {key!r} is zarr v3 metadata: the parquet layout is zarr v2 only",
                manifest=name,
                entry=i,
                field="key",
            )
        if not _is_meta(key):
            chunk_entries.append((key, i))
        elif key != ".zmetadata":
            metadata[key] = _metadata_value(entry, key, i, name)

    arrays = _out_arrays(metadata, chunk_entries, entries, name)
    paths: dict[str, str] = {}
    for key, i in chunk_entries:
        field_name, _, chunk = key.rpartition("/")
        out = arrays[field_name]
        n = _chunk_number(chunk, out.grid)
        assert n is not None  # _out_arrays checked every chunk key
        out.rows[n] = _row(entries[i], key, i, name, manifest.url, paths)

    files: dict[str, bytes] = {".zmetadata": orjson.dumps({"metadata": metadata, "record_size": record_size})}
    for field_name, out in arrays.items():
        by_record: dict[int, list[int]] = {}
        for n in out.rows:
            by_record.setdefault(n // record_size, []).append(n)
        for r in sorted(by_record):
            files[f"{field_name}/refs.{r}.parq"] = _record_file(pa, pq, out, r, record_size, by_record[r])
    return files


def _metadata_value(entry: dict[str, Any], key: str, i: int, name: str | None) -> Any:
    if "json" in entry:
        return entry["json"]
    if "data" in entry:
        try:
            return orjson.loads(base64.b64decode(entry["data"]))
        except orjson.JSONDecodeError:
            raise ConvertError(
                f"metadata key {key!r} holds bytes that are not JSON: .zmetadata holds JSON values",
                manifest=name,
                entry=i,
                field="data",
            ) from None
    raise ConvertError(
        f"metadata key {key!r} names an object: .zmetadata holds inline JSON (read it in first)",
        manifest=name,
        entry=i,
        field="path",
    )


def _out_arrays(
    metadata: dict[str, Any], chunk_entries: list[tuple[str, int]], entries: list[dict[str, Any]], name: str | None
) -> dict[str, _OutArray]:
    """The arrays that the chunk keys belong to; refuse a key that is not a chunk of one of them."""
    zarrays = {k[: -len("/.zarray")]: v for k, v in metadata.items() if k.endswith("/.zarray")}
    grids: dict[str, tuple[int, ...] | str] = {}
    arrays: dict[str, _OutArray] = {}
    for key, i in chunk_entries:
        field_name, _, chunk = key.rpartition("/")
        grid = grids.get(field_name)
        if grid is None and field_name in zarrays:
            g, reason = _grid(zarrays[field_name])
            problem = _check_field(field_name)
            grid = grids[field_name] = g if reason is None and problem is None else (reason or problem or "")
        if isinstance(grid, tuple):
            if _chunk_number(chunk, grid) is not None:
                if field_name not in arrays:
                    arrays[field_name] = _OutArray(grid)
                continue
            reason = _chunk_key_problem(chunk, grid)
        elif isinstance(grid, str):
            raise ConvertError(
                f"key {key!r}: the metadata {field_name + '/.zarray'!r} {grid}", manifest=name, entry=i, field="key"
            )
        else:
            reason = _stray_key_problem(key, zarrays, metadata)
        raise ConvertError(f"key {key!r} {reason}", manifest=name, entry=i, field="key")
    return arrays


def _chunk_key_problem(chunk: str, grid: tuple[int, ...]) -> str:
    parts = chunk.split(".")
    if grid and len(parts) == len(grid) and all(_CANONICAL_INDEX.match(p) for p in parts):
        return f"is outside its array's chunk grid {list(grid)}"
    expected = "0" if not grid else ".".join(["i"] * len(grid))
    return f"is not a chunk key of its array (a chunk key here is {expected!r}, grid {list(grid)})"


def _stray_key_problem(key: str, zarrays: dict[str, Any], metadata: dict[str, Any]) -> str:
    """Why ``key``, which is neither metadata nor a chunk of an array named by its parent, is refused."""
    segments = key.split("/")
    if len(segments) == 1 and ".zarray" in metadata:
        return (
            "is a chunk of the root array: the parquet layout keeps chunks in their array's directory, and a "
            "root array has none"
        )
    for cut in range(len(segments) - 1, 0, -1):
        owner = "/".join(segments[:cut])
        if owner in zarrays:
            rest = segments[cut:]
            if rest[0] == "c":
                return "is a zarr v3 chunk key: the parquet layout is zarr v2 only"
            return (
                f"is a '/'-separated chunk key of array {owner!r}: the parquet layout holds only '.'-separated "
                "chunk keys"
            )
    if "c" in segments[:-1]:
        return "is a zarr v3 chunk key: the parquet layout is zarr v2 only"
    return "is neither metadata nor a chunk key of an array with a '.zarray' (the parquet layout holds only those)"


def _row(
    entry: dict[str, Any], key: str, i: int, name: str | None, base: str | None, paths: dict[str, str]
) -> tuple[str, int, int] | bytes:
    if "data" in entry:
        return _raw_value(base64.b64decode(entry["data"]))
    if "json" in entry:
        return _raw_value(orjson.dumps(entry["json"]))
    path: str = entry["path"]
    target = paths.get(path)
    if target is None:
        try:
            absolute = resolve_target(base, path)
        except ValueError:
            raise ConvertError(
                f"key {key!r}: relative path {path!r} and the manifest has no URL", manifest=name, entry=i, field="path"
            ) from None
        if PIPELINE_SEPARATOR in absolute:
            raise ConvertError(
                f"key {key!r}: {absolute!r} is a URL pipeline, which fsspec cannot read",
                manifest=name,
                entry=i,
                field="path",
            )
        try:
            target = paths[path] = _export_url(absolute)
        except (_PathError, ValueError) as exc:
            raise ConvertError(f"key {key!r}: {absolute!r} {exc}", manifest=name, entry=i, field="path") from None
    offset, length = entry.get("offset"), entry.get("length")
    if offset is None and length is None:
        return (target, 0, 0)
    if length is None:
        if offset == 0:
            return (target, 0, 0)
        raise ConvertError(
            f"key {key!r}: a window from offset {offset} to the end of the object has no kerchunk "
            "form (a reference needs the length)",
            manifest=name,
            entry=i,
            field="length",
        )
    offset = offset or 0
    if length == 0 and offset == 0:
        raise ConvertError(
            f"key {key!r}: the empty window [0, 0) would read as the whole object (offset = size = 0 "
            "means that in the parquet layout)",
            manifest=name,
            entry=i,
            field="length",
        )
    return (target, offset, length)


def _raw_value(data: bytes) -> bytes:
    # fsspec decodes a value that starts with "base64:", so such a value is written encoded.
    return _B64_PREFIX + base64.b64encode(data) if data.startswith(_B64_PREFIX) else data


def _export_url(url: str) -> str:
    """The fsspec URL of the absolute kvmap URL ``url`` (:func:`kvmap.formats._fsspec_urls.fsspec_url`);
    raises ``_PathError`` for what fsspec would read elsewhere."""
    try:
        return fsspec_url(url)
    except RefusedError as exc:
        raise _PathError(f"is refused: {exc.reason}") from None


def _pandas_metadata() -> bytes:
    """The ``pandas`` schema metadata fastparquet needs to read ``offset``/``size`` as int64."""
    columns = [
        {"name": "path", "field_name": "path", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        {"name": "offset", "field_name": "offset", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": "size", "field_name": "size", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
        {"name": "raw", "field_name": "raw", "pandas_type": "bytes", "numpy_type": "object", "metadata": None},
    ]
    return orjson.dumps(
        {
            "index_columns": [],
            "column_indexes": [],
            "columns": columns,
            "creator": {"library": "kvmap", "version": kvmap.__version__},
            "pandas_version": "2.2.0",
        }
    )


def _record_file(pa: Any, pq: Any, out: _OutArray, record: int, record_size: int, numbers: Iterable[int]) -> bytes:
    paths: list[str | None] = [None] * record_size
    offsets = np.zeros(record_size, dtype=np.int64)
    sizes = np.zeros(record_size, dtype=np.int64)
    raws: list[bytes | None] = [None] * record_size
    first = record * record_size
    for n in numbers:
        value = out.rows[n]
        row = n - first
        if isinstance(value, bytes):
            raws[row] = value
        else:
            paths[row], offsets[row], sizes[row] = value
    schema = pa.schema(
        [
            pa.field("path", pa.string()),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("raw", pa.binary()),
        ],
        metadata={b"pandas": _pandas_metadata()},
    )
    table = pa.table(
        [pa.array(paths, pa.string()), pa.array(offsets), pa.array(sizes), pa.array(raws, pa.binary())], schema=schema
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["path"], write_statistics=False)
    return cast(bytes, sink.getvalue().to_pybytes())


# -- writing a directory -----------------------------------------------------------------------------


def write_kerchunk_parquet(
    manifest: Manifest, directory: str | os.PathLike[str], *, record_size: int = 100_000
) -> None:
    """Write :func:`dump_kerchunk_parquet` of ``manifest`` as the directory ``directory``, atomically:
    the files go to a new temporary sibling directory (``.{name}.kvmap-{pid}-{hex}.tmp``), are
    flushed to disk, and the directory is renamed into place, so readers find no directory or the
    whole reference set. ``directory`` must not exist or be an empty directory (which the rename
    replaces); a directory with files in it is refused, never merged or replaced.

    Raises :class:`~kvmap.ConvertError` (before anything is written) as :func:`dump_kerchunk_parquet`
    does, and :class:`~kvmap.SaveError` (an ``OSError``) when ``directory`` exists and is not an
    empty directory, or the files cannot be written; then nothing is left behind. Pins
    (``etag``, ``version``, ``sha256``; spec 3.4) are dropped, as kerchunk JSON drops them.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_kerchunk_parquet(Manifest.from_json([{"key": ".zgroup", "json": {"zarr_format": 2}}], url=None),
    ...                            os.path.join(d, "refs"))
    ...     sorted(os.listdir(os.path.join(d, "refs")))
    ['.zmetadata']
    """
    files = dump_kerchunk_parquet(manifest, record_size=record_size)
    target = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    parent, name = os.path.split(target)
    _check_replaceable(target)
    tmp = os.path.join(parent, f".{name[:200]}.kvmap-{os.getpid()}-{secrets.token_hex(8)}.tmp")
    try:
        os.mkdir(tmp)
    except OSError as exc:
        raise _save_error(exc, target) from exc
    try:
        _write_tree(tmp, files)
        os.rename(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise SaveError(errno.EEXIST, "the directory is not empty (remove it first)", target) from exc
        raise _save_error(exc, target) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(parent)


def _check_replaceable(target: str) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _save_error(exc, target) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SaveError(errno.EEXIST, "exists and is not a directory", target)
    try:
        empty = not os.listdir(target)
    except OSError as exc:
        raise _save_error(exc, target) from exc
    if not empty:
        raise SaveError(errno.EEXIST, "the directory is not empty (remove it first)", target)


def _write_tree(root: str, files: dict[str, bytes]) -> None:
    directories = {root}
    for relative, data in files.items():
        path = os.path.join(root, *relative.split("/"))
        folder = os.path.dirname(path)
        if folder not in directories:
            os.makedirs(folder, exist_ok=True)
            directories.update(_ancestors(folder, root))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in sorted(directories, key=len, reverse=True):
        _fsync_directory(folder)


def _ancestors(folder: str, root: str) -> Iterator[str]:
    while len(folder) > len(root):
        yield folder
        folder = os.path.dirname(folder)


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_error(exc: OSError, target: str) -> SaveError:
    if exc.errno is None:
        return SaveError(f"cannot write the reference directory {target}: {exc}")
    return SaveError(exc.errno, f"cannot write the reference directory: {exc.strerror}", target)
