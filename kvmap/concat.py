"""Virtual concatenation: one zarr array made of several arrays joined along an axis, no bytes copied.

:func:`concatenate` reads the sources' metadata and chunk listings and builds a manifest holding
the new array's metadata inline and one exact entry per existing source chunk, its key renumbered
along the axis and its target where the source chunk's bytes are (an object, a byte window of one,
or inline bytes). :func:`concatenate_datasets` does the same for every variable of several groups
along a named dimension, keeping the variables without that dimension (coordinates such as
``lat``) from the first group.

>>> import numpy as np, zarr, kvmap
>>> from kvmap.concat import concatenate
>>> home = zarr.storage.ObjectStore(kvmap.memory_store("concat-doctest"))
>>> for name, values in [("a", [1, 2]), ("b", [3, 4, 5])]:
...     zarr.create_array(home, name=name, shape=(len(values),), chunks=(2,), dtype="i2")[...] = values
>>> m = concatenate(["memory://concat-doctest/a/", "memory://concat-doctest/b/"], axis=0)
>>> [e.get("key") for e in m.to_json()["entries"]]
['zarr.json', 'c/0', 'c/1', 'c/2']
>>> zarr.open_array(kvmap.KVMapStore(m, read_only=True, allow=["memory://concat-doctest/"]))[...]
array([1, 2, 3, 4, 5], dtype=int16)
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeGuard

from kvmap.compose import metadata_entry
from kvmap.errors import KvmapError
from kvmap.manifest import Manifest
from kvmap.places import place_url
from kvmap.reader import Reader
from kvmap.url import PIPELINE_SEPARATOR

__all__ = ["ENCODING_ATTRIBUTES", "ConcatError", "Source", "concatenate", "concatenate_datasets"]

#: What a source may be: a directory path or URL of a native zarr array (or group), a pipeline
#: (``m.json|kvmap:var/``, ``refs.json|kerchunk:var/``), a :class:`~kvmap.Manifest` (its root),
#: or a :class:`~kvmap.Manifest` and a key prefix ending in ``/`` (``(m, "var/")``).
Source: TypeAlias = "str | os.PathLike[str] | Manifest | tuple[Manifest, str]"

#: Attributes that say what the stored numbers mean (CF conventions as xarray decodes them, and
#: zarr v2's dimension names): sources must agree on each (the same value, or all without it),
#: since joining numbers that mean different things would give wrong values, not fewer attributes.
ENCODING_ATTRIBUTES = (
    "_ARRAY_DIMENSIONS",
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
    "units",
    "calendar",
    "_Unsigned",
)

_V3, _ZARRAY, _ZATTRS, _ZGROUP = "zarr.json", ".zarray", ".zattrs", ".zgroup"
_METADATA_NAMES = frozenset((_V3, _ZARRAY, _ZATTRS, _ZGROUP, ".zmetadata"))
_SHARDING = "sharding_indexed"


class ConcatError(KvmapError, ValueError):
    """Sources that cannot be joined, or arguments that do not describe a join.

    ``source`` is the index of the offending source in the sequence given (``None`` when no
    single source is at fault, e.g. an axis out of range), ``reason`` why it was refused.
    """

    def __init__(self, reason: str, source: int | None = None, label: str | None = None) -> None:
        self.reason, self.source, self.label = reason, source, label
        where = "" if source is None else f"source {source}" + ("" if label is None else f" ({label})") + ": "
        super().__init__(where + reason)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason, self.source, self.label))


@dataclass(frozen=True)
class _Source:
    """A source opened for reading: its keys are ``prefix + key`` in ``reader``."""

    index: int
    label: str
    reader: Reader
    prefix: str


@dataclass
class _Array:
    """One source array's metadata, parsed."""

    source: _Source
    fmt: int
    doc: dict[str, Any]  # zarr.json (v3) or .zarray (v2)
    attrs: dict[str, Any]
    shape: list[int]
    chunks: list[int]
    encoding: tuple[str, str]  # ("default" | "v2", separator)
    sharded: bool = False
    comparable: dict[str, Any] = field(default_factory=dict)

    def dims(self) -> list[Any] | None:
        """The dimension names (v3 ``dimension_names``, v2 ``_ARRAY_DIMENSIONS``), or ``None``."""
        names = self.doc.get("dimension_names") if self.fmt == 3 else self.attrs.get("_ARRAY_DIMENSIONS")
        return list(names) if isinstance(names, list) else None


def concatenate(
    arrays: Sequence[Source],
    axis: int = 0,
    *,
    attributes: Mapping[str, Any] | None = None,
    url: str | None = None,
    name: str | None = None,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
) -> Manifest:
    """The manifest of one zarr array: ``arrays`` joined along ``axis``, as ``numpy.concatenate``.

    Each source (see :data:`Source`) is a zarr v3 or v2 array. The manifest holds the new
    metadata inline (``zarr.json``, or ``.zarray`` and ``.zattrs``) — the first source's, with the
    summed length along ``axis`` and the merged attributes — then one exact entry per chunk that
    exists in a source, its key renumbered along ``axis`` in the sources' chunk key encoding, its
    target where that chunk's bytes are after every hop of the source (a native array: the chunk
    object; a manifest or kerchunk references: the object and byte window, or the inline bytes,
    its key resolves to). No bytes are copied. A chunk a source lacks (it reads as the fill
    value) gets no entry, so it reads as the fill value in the result too; keys that are not
    chunks of the array's grid are left out.

    Sources must agree on everything but their length along ``axis``: zarr format, data type,
    chunk shape (for sharded arrays, the shard shape), codecs (v2: compressor, filters, order),
    fill value, chunk key encoding, dimension names and the :data:`ENCODING_ATTRIBUTES`; every
    source but the last must end on a chunk boundary along ``axis`` (for a sharded array, a shard
    boundary). The attributes are those equal in every source (others are dropped), or
    ``attributes`` when given. ``axis`` may be negative, as in numpy.

    The result's chunk targets are absolute URLs: a reader of the manifest needs ``allow`` for
    those outside the manifest's origin (``url``'s). ``name`` is what errors call the manifest.
    Sources are read through :class:`~kvmap.Reader` with ``allow``, ``allow_all`` and ``stores``.

    Raises :class:`ConcatError` (naming the source) for no sources, an ``axis`` that is not an
    integer or out of range, a source without zarr array metadata (a group, nothing there), with
    metadata it cannot join (a 0-d array, a chunk grid that is not regular, storage transformers),
    one that differs from the first source in anything above or in its shape off ``axis``, or
    one but the last that ends inside a chunk; ``TypeError`` for a source that is not a
    :data:`Source`; and what :class:`~kvmap.Reader` raises for reads
    (:class:`~kvmap.PolicyError`, :class:`~kvmap.TargetError`...).
    """
    options: dict[str, Any] = {"allow": allow, "allow_all": allow_all, "stores": stores}
    sources = [_open(i, a, options) for i, a in enumerate(_listed(arrays, "arrays"))]
    parts = [_read_array(s) for s in sources]
    joined = _Joined(parts, axis, attributes, "")
    return joined.manifest(url, name)


def concatenate_datasets(
    groups: Sequence[Source],
    dim: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    url: str | None = None,
    name: str | None = None,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
) -> Manifest:
    """The manifest of one zarr group: the arrays of ``groups`` joined along dimension ``dim``.

    Each group (a :data:`Source` naming a zarr group, all of one format) must hold the same
    arrays, directly below it. An array whose dimension names (v3 ``dimension_names``, v2
    ``_ARRAY_DIMENSIONS``, as xarray writes them) include ``dim`` is joined along that axis as
    :func:`concatenate` joins it, below its name; an array without ``dim`` (a coordinate such as
    ``lat``, a constant) is taken from the first group as it is (not compared with the others).
    The root group's metadata is inline, with the attributes equal in every group (or
    ``attributes``), and no consolidated metadata: open it with ``consolidated=False``.
    ``url``, ``name``, ``allow``, ``allow_all`` and ``stores`` as for :func:`concatenate`.

    Raises :class:`ConcatError` for no groups, a group that is not a zarr group, groups of
    different formats, a group holding a subgroup or arrays the first does not (or lacking
    some), no array with dimension ``dim``, and everything :func:`concatenate` refuses for an
    array (naming the group and the array); otherwise as :func:`concatenate`.
    """
    if not isinstance(dim, str):
        raise ConcatError(f"dim must be a dimension name (a string), not {dim!r}")
    options: dict[str, Any] = {"allow": allow, "allow_all": allow_all, "stores": stores}
    sources = [_open(i, g, options) for i, g in enumerate(_listed(groups, "groups"))]
    fmts, root_attrs, members = zip(*(_read_group(s) for s in sources), strict=True)
    for s, fmt in zip(sources, fmts, strict=True):
        if fmt != fmts[0]:
            raise ConcatError(f"it is a zarr v{fmt} group, but group 0 is zarr v{fmts[0]}", s.index, s.label)
    first = members[0]
    for s, found in zip(sources, members, strict=True):
        if sorted(found) != sorted(first):
            raise ConcatError(f"its arrays {sorted(found)} differ from group 0's {sorted(first)}", s.index, s.label)
    merged = dict(attributes) if attributes is not None else _common(list(root_attrs))
    if fmts[0] == 3:
        group = {"zarr_format": 3, "node_type": "group", "attributes": merged}
        head: list[dict[str, Any]] = [metadata_entry(_V3, group)]
    else:
        head = [metadata_entry(_ZGROUP, {"zarr_format": 2}), metadata_entry(_ZATTRS, merged)]
    refs: _Refs = _Refs()
    joined_any = False
    for member in sorted(first):
        parts = [found[member] for found in members]
        dims = parts[0].dims()
        if dims is not None and dim in dims:
            joined = _Joined(parts, dims.index(dim), None, member + "/")
            joined_any = True
        else:
            joined = _Joined(parts[:1], 0, None, member + "/")
        head += joined.metadata()
        joined.chunks(refs)
    if not joined_any:
        raise ConcatError(f"no array of group 0 has a dimension {dim!r}", 0, sources[0].label)
    return refs.manifest(head, url, name)


# -- opening sources ----------------------------------------------------------------------


def _listed(values: Sequence[Source], what: str) -> list[Source]:
    pair = isinstance(values, tuple) and len(values) == 2 and isinstance(values[0], Manifest)
    if isinstance(values, str | os.PathLike | Manifest) or pair:
        # A single source (or a (Manifest, prefix) pair) where a sequence of them was meant.
        raise TypeError(f"{what} must be a sequence of sources, not one {type(values).__name__}")
    listed = list(values)
    if not listed:
        raise ConcatError(f"no {what} to concatenate")
    return listed


def _open(index: int, source: Source, options: dict[str, Any]) -> _Source:
    """A reader and key prefix for ``source``. Raises ``TypeError`` for what is not a source."""
    if isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], Manifest) or not isinstance(source[1], str):
            raise TypeError(f"source {index}: a pair must be (Manifest, prefix), not {source!r}")
        manifest, prefix = source
        if prefix and not prefix.endswith("/"):
            raise ConcatError(f"prefix {prefix!r} must be empty or end in '/'", index, _named(manifest))
        return _Source(index, f"{_named(manifest)} {prefix!r}", Reader(manifest, **options), prefix)
    if isinstance(source, Manifest):
        return _Source(index, _named(source), Reader(source, **options), "")
    if not isinstance(source, str | os.PathLike):
        raise TypeError(f"source {index}: a source is a path, a URL, a pipeline or a Manifest, not {source!r}")
    place = place_url(source)
    if PIPELINE_SEPARATOR in place:
        return _Source(index, place, Reader(place, **options), "")
    # A native zarr node: a directory, read through a manifest of one prefix entry whose origin
    # is that directory (the caller named it, so it may be read; nothing outside it is reached).
    directory = place if place.endswith("/") else place + "/"
    manifest = Manifest.from_json({"kvmap": 1, "entries": [{"prefix": "", "path": directory}]}, url=directory)
    return _Source(index, directory, Reader(manifest, **options), "")


def _named(manifest: Manifest) -> str:
    return manifest.url or manifest.name or "<manifest>"


def _documents(source: _Source, names: Sequence[str]) -> dict[str, Any]:
    """The JSON documents ``names`` below the source (missing ones left out), read in one batch."""
    found = source.reader.get_many_sync([source.prefix + n for n in names])
    docs: dict[str, Any] = {}
    for n, data in zip(names, found, strict=True):
        if data is None:
            continue
        try:
            doc = json.loads(bytes(data))  # as zarr parses metadata: NaN and Infinity allowed
        except ValueError as exc:
            raise ConcatError(f"{n} is not JSON ({exc})", source.index, source.label) from None
        if not isinstance(doc, dict):
            raise ConcatError(f"{n} is a JSON {type(doc).__name__}, not an object", source.index, source.label)
        docs[n] = doc
    return docs


def _read_array(source: _Source, docs: dict[str, Any] | None = None) -> _Array:
    """The source's array metadata, checked to be joinable. Raises :class:`ConcatError`."""
    if docs is None:
        docs = _documents(source, (_V3, _ZARRAY, _ZATTRS))

    def refuse(reason: str) -> ConcatError:
        return ConcatError(reason, source.index, source.label)

    if _V3 in docs:  # a directory with both formats is read as zarr opens it by default: v3
        doc = docs[_V3]
        if doc.get("zarr_format") != 3:
            raise refuse(f"zarr.json is not zarr v3 metadata (zarr_format {doc.get('zarr_format')!r})")
        if doc.get("node_type") != "array":
            raise refuse(f"it is a zarr {doc.get('node_type')!r} node, not an array")
        grid = doc.get("chunk_grid")
        if not isinstance(grid, dict) or grid.get("name") != "regular":
            raise refuse(f"its chunk grid {grid!r} is not a regular one: only regular grids are joined")
        chunks = (grid.get("configuration") or {}).get("chunk_shape")
        if doc.get("storage_transformers"):
            raise refuse("it has storage transformers, which change where chunks are: they are not joined")
        cke = doc.get("chunk_key_encoding") or {"name": "default"}
        kind = cke.get("name") if isinstance(cke, dict) else None
        if kind not in ("default", "v2"):
            raise refuse(f"its chunk key encoding {cke!r} is not 'default' or 'v2'")
        separator = (cke.get("configuration") or {}).get("separator", "/" if kind == "default" else ".")
        codecs = doc.get("codecs")
        sharded = isinstance(codecs, list) and any(isinstance(c, dict) and c.get("name") == _SHARDING for c in codecs)
        comparable = {k: v for k, v in doc.items() if k not in ("shape", "attributes")}
        comparable["chunk_key_encoding"] = {"name": kind, "configuration": {"separator": separator}}
        names = doc.get("dimension_names")
        # Absent and all-null dimension names say the same: none.
        comparable["dimension_names"] = None if not names or all(n is None for n in names) else names
        attrs = doc.get("attributes") or {}
        fmt = 3
    elif _ZARRAY in docs:
        doc = docs[_ZARRAY]
        if doc.get("zarr_format") != 2:
            raise refuse(f".zarray is not zarr v2 metadata (zarr_format {doc.get('zarr_format')!r})")
        chunks, kind, sharded = doc.get("chunks"), "v2", False
        separator = doc.get("dimension_separator") or "."
        comparable = {k: v for k, v in doc.items() if k != "shape"}
        comparable["dimension_separator"] = separator
        attrs = docs.get(_ZATTRS, {})
        fmt = 2
    else:
        raise refuse(
            "no zarr array metadata there (no zarr.json or .zarray): it does not exist or is not an array "
            "(a manifest is named 'm.json|kvmap:PATH/', kerchunk references 'refs.json|kerchunk:PATH/')"
        )
    shape = doc.get("shape")
    if not _ints(shape, 0) or not _ints(chunks, 1) or len(chunks) != len(shape):
        raise refuse(f"its shape {shape!r} and chunk shape {chunks!r} are not lists of integers of one length")
    if not shape:
        raise refuse("it is a 0-d array: there is no axis to join along")
    if separator not in (".", "/"):
        raise refuse(f"its chunk key separator {separator!r} is not '.' or '/'")
    if not isinstance(attrs, dict):
        raise refuse(f"its attributes are a JSON {type(attrs).__name__}, not an object")
    return _Array(source, fmt, doc, attrs, list(shape), list(chunks), (kind, separator), sharded, comparable)


def _ints(value: Any, least: int) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(v) is int and v >= least for v in value)


def _read_group(source: _Source) -> tuple[int, dict[str, Any], dict[str, _Array]]:
    """The group's format, attributes and arrays (name -> metadata). Raises :class:`ConcatError`."""
    docs = _documents(source, (_V3, _ZGROUP, _ZATTRS))
    if _V3 in docs and docs[_V3].get("node_type") == "group" and docs[_V3].get("zarr_format") == 3:
        fmt, attrs = 3, docs[_V3].get("attributes") or {}
    elif _ZGROUP in docs and _V3 not in docs:
        fmt, attrs = 2, docs.get(_ZATTRS, {})
    else:
        raise ConcatError("no zarr group there (no group zarr.json or .zgroup)", source.index, source.label)
    names = [n for n in source.reader.list_dir_sync(source.prefix) if n not in _METADATA_NAMES]
    wanted = (_V3,) if fmt == 3 else (_ZARRAY, _ZGROUP, _ZATTRS)
    arrays: dict[str, _Array] = {}
    for n in names:
        member = _Source(source.index, f"{source.label} array {n!r}", source.reader, f"{source.prefix}{n}/")
        found = _documents(member, wanted)
        if not found or (fmt == 2 and _ZARRAY not in found and _ZGROUP not in found):
            continue  # no node of the group's format: zarr does not show it either
        if (found.get(_V3) or {}).get("node_type") == "group" or _ZGROUP in found:
            raise ConcatError(
                f"it holds a subgroup {n!r}: only groups of arrays are joined", source.index, source.label
            )
        arrays[n] = _read_array(member, found)
    return fmt, attrs, arrays


# -- joining ------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    # Equality of JSON values as JSON: NaN equals NaN, 1 and 1.0 differ as the documents do.
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _common(attrs: list[dict[str, Any]]) -> dict[str, Any]:
    """The attributes every one of ``attrs`` has with one value, in the first's order."""
    first = attrs[0]
    return {k: v for k, v in first.items() if all(k in a and _canonical(a[k]) == _canonical(v) for a in attrs[1:])}


class _Refs:
    """The chunk entries gathered: exact references in columns, inline chunks as entries."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.paths: list[str | None] = []
        self.offsets: list[int | None] = []
        self.lengths: list[int | None] = []
        self.inline: list[dict[str, Any]] = []

    def manifest(self, head: list[dict[str, Any]], url: str | None, name: str | None) -> Manifest:
        return Manifest.from_references(
            self.keys, self.paths, self.offsets, self.lengths, before=head, after=self.inline, url=url, name=name
        )


class _Joined:
    """Source arrays checked to join along ``axis``; their entries below ``prefix``."""

    def __init__(self, parts: list[_Array], axis: Any, attributes: Mapping[str, Any] | None, prefix: str) -> None:
        first = parts[0]
        ndim = len(first.shape)
        if type(axis) is not int:
            raise ConcatError(f"axis must be an integer, not {axis!r}")
        if not -ndim <= axis < ndim:
            raise ConcatError(f"axis {axis} is out of range for {ndim}-d arrays")
        self.parts, self.axis, self.prefix = parts, axis % ndim, prefix
        for part in parts[1:]:
            self._check_like(first, part)
        for part in parts[:-1]:
            length, step = part.shape[self.axis], part.chunks[self.axis]
            if length % step:
                what = "shard" if part.sharded else "chunk"
                raise self._refuse(
                    part,
                    f"it is {length} long along axis {self.axis}, not a multiple of its {what} length {step}: "
                    "only the last source may end inside a chunk",
                )
        for k in ENCODING_ATTRIBUTES:
            for part in parts[1:]:
                if (k in part.attrs) != (k in first.attrs) or _canonical(part.attrs.get(k)) != _canonical(
                    first.attrs.get(k)
                ):
                    raise self._refuse(
                        part,
                        f"its attribute {k!r} ({part.attrs.get(k, '<none>')!r}) differs from the first source's "
                        f"({first.attrs.get(k, '<none>')!r}): the values would mean different things",
                    )
        self.attrs = dict(attributes) if attributes is not None else _common([p.attrs for p in parts])

    @staticmethod
    def _refuse(part: _Array, reason: str) -> ConcatError:
        return ConcatError(reason, part.source.index, part.source.label)

    def _check_like(self, first: _Array, part: _Array) -> None:
        if part.fmt != first.fmt:
            raise self._refuse(part, f"it is a zarr v{part.fmt} array, but the first source is zarr v{first.fmt}")
        if len(part.shape) != len(first.shape):
            raise self._refuse(part, f"it is {len(part.shape)}-d, but the first source is {len(first.shape)}-d")
        for i, (n, m) in enumerate(zip(part.shape, first.shape, strict=True)):
            if i != self.axis and n != m:
                raise self._refuse(
                    part, f"its shape {part.shape} differs from the first source's {first.shape} off axis {self.axis}"
                )
        for k in sorted(set(first.comparable) | set(part.comparable)):
            mine, theirs = part.comparable.get(k), first.comparable.get(k)
            if _canonical(mine) != _canonical(theirs):
                raise self._refuse(part, f"its {k} {mine!r} differs from the first source's {theirs!r}")

    def metadata(self) -> list[dict[str, Any]]:
        """The inline metadata entries of the joined array."""
        first = self.parts[0]
        shape = list(first.shape)
        shape[self.axis] = sum(p.shape[self.axis] for p in self.parts)
        doc = {**first.doc, "shape": shape}
        if first.fmt == 3:
            return [metadata_entry(self.prefix + _V3, {**doc, "attributes": self.attrs})]
        return [metadata_entry(self.prefix + _ZARRAY, doc), metadata_entry(self.prefix + _ZATTRS, self.attrs)]

    def manifest(self, url: str | None, name: str | None) -> Manifest:
        refs = _Refs()
        self.chunks(refs)
        return refs.manifest(self.metadata(), url, name)

    def chunks(self, refs: _Refs) -> None:
        """Add one entry per existing source chunk, renumbered, to ``refs``."""
        shift = 0
        for part in self.parts:
            source = part.source
            kind, sep = part.encoding
            grid = [math.ceil(n / c) for n, c in zip(part.shape, part.chunks, strict=True)]
            # Only what can be a chunk key is listed: below "c<sep>" for the default encoding.
            listed = source.prefix + ("c" + sep if kind == "default" else "")
            for key in sorted(source.reader.list_prefix_sync(listed)):
                index = _chunk_index(key[len(source.prefix) :], kind, sep, grid)
                if index is None:
                    continue  # metadata, or a key outside the grid (zarr reads no such chunk)
                index[self.axis] += shift
                new = self.prefix + _chunk_key(index, kind, sep)
                where = source.reader.locate_sync(key)
                if where is None:
                    continue  # a whiteout: missing, so it stays missing
                if where.data is not None:
                    refs.inline.append({"key": new, "data": base64.b64encode(where.data).decode("ascii")})
                else:
                    refs.keys.append(new)
                    refs.paths.append(where.url)
                    refs.offsets.append(where.offset or None)
                    refs.lengths.append(where.length)
            shift += grid[self.axis]


def _chunk_index(key: str, kind: str, sep: str, grid: Sequence[int]) -> list[int] | None:
    """The grid index a chunk key names (``None``: not a chunk key of this grid)."""
    if kind == "default":
        if not key.startswith("c" + sep):
            return None
        key = key[2:]
    parts = key.split(sep)
    if len(parts) != len(grid):
        return None
    index = []
    for part, n in zip(parts, grid, strict=True):
        # Canonical decimals only: zarr never reads "01" or "+1" as chunk 1.
        if not (part.isascii() and part.isdigit()) or (len(part) > 1 and part[0] == "0") or int(part) >= n:
            return None
        index.append(int(part))
    return index


def _chunk_key(index: Sequence[int], kind: str, sep: str) -> str:
    body = sep.join(str(i) for i in index)
    return "c" + sep + body if kind == "default" else body
