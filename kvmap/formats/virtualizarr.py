"""VirtualiZarr virtual datasets as kvmap manifests: :func:`from_virtualizarr`.

VirtualiZarr (2.5 on Python 3.11, 2.8 on 3.12+) describes a zarr v3 hierarchy whose chunks are
byte ranges of other files (netCDF4/HDF5, TIFF, FITS...): a ``ManifestStore`` wraps a
``ManifestGroup`` of ``ManifestArray`` objects, each a zarr ``ArrayV3Metadata`` and a
``ChunkManifest`` (a grid of ``path``/``offset``/``length``). :func:`from_virtualizarr` turns one
into the kvmap manifest of the same hierarchy, which :class:`~kvmap.KVMapStore` serves to zarr:

* ``zarr.json`` of every group and array, inline (a ``json`` entry; a ``data`` entry holding
  zarr's exact text when that text is not strict JSON, e.g. an attribute that is NaN);
* one exact entry ``{"key", "path", "offset", "length"}`` per chunk, its key in the array's
  chunk key encoding (``temp/c/0/1`` for the default encoding, ``temp/0.1`` for ``v2``);
* inlined chunks (VirtualiZarr 2.6.1+: path ``"__inlined__"`` with the bytes in memory) as
  ``data`` entries; missing chunks (path ``""``) get no entry, so zarr reads the fill value.

Decisions:

**Inputs.** A ``ManifestStore``, a ``ManifestGroup``, an ``xarray.Dataset`` of virtual variables
(what ``virtualizarr.open_virtual_dataset`` returns) or an ``xarray.DataTree`` of them (one group
per node). A ``ManifestStore`` keeps its group in the private ``_group`` (VirtualiZarr has no
public accessor in 2.5.1 or 2.8.0; its own ``to_virtual_dataset`` reads it too).

**Virtual datasets** are written as xarray's ``to_zarr`` and VirtualiZarr's Icechunk writer write
them. A ``ManifestArray`` inside a Dataset has its attributes and dimension names stripped into
the ``xarray.Variable``, so its ``zarr.json`` gets them back: ``dimension_names`` = the variable's
dims, ``attributes`` = its attrs plus the encoding keys VirtualiZarr's Icechunk writer keeps
(``_FillValue``, ``missing_value``, ``scale_factor``, ``add_offset``) where the attrs lack them.
Which variables are coordinates is said the way xarray says it
(``xarray.conventions.encode_dataset_coordinates``: a ``coordinates`` attribute on the data
variables, or on the group for coordinates no variable names) — VirtualiZarr's Icechunk writer
instead lists every coordinate in one group attribute; ``xarray.open_zarr`` reads both.

**Loaded variables** (numpy or dask data, e.g. the dimension coordinates ``open_virtual_dataset``
loads by default) become inline ``data`` chunks: each is written by ``xarray.Dataset.to_zarr``
(zarr v3) into an in-memory zarr store and its keys are copied, so the CF encoding (times,
``_FillValue``, ``scale_factor``) and the codecs in the variable's ``encoding`` (those of the
original array, for variables VirtualiZarr loaded) are applied exactly as xarray applies them.
Chunks zarr does not write (all fill value) are absent, as in any zarr store.

**Paths.** VirtualiZarr paths are absolute URIs. They are taken as URLs, as Icechunk (and
VirtualiZarr's Icechunk writer) take them: ``%XX`` is an escape. Characters a URL cannot hold
are percent-encoded (a space, non-ASCII text, a ``%`` that starts no escape), which does not
change what the URL names. A bare absolute path (``/data/x.nc``, possible with
``ChunkManifest.from_arrays(validate_paths=False)``) becomes its ``file://`` URL, its text
percent-encoded (``Path.as_uri()``). Deviation found: VirtualiZarr's own ``ManifestStore`` reads
the path of a URI literally (obstore is given ``urlparse(url).path`` undecoded), yet it turns a
bare path into a percent-encoded URI, so it cannot read ``/data/my file.nc`` (it looks for
``my%20file.nc``), while kvmap and Icechunk read ``my file.nc``. A relative path (only possible
by skipping VirtualiZarr's validation) stays relative and resolves against ``url``.

**Speed.** Chunk grids are read as VirtualiZarr's numpy arrays (``_paths``, ``_offsets``,
``_lengths``, ``_inlined``; the public ``ChunkManifest.dict()`` walks the grid element by element
and is the fallback where they are missing), keys come from one format string per array
(checked against zarr's own ``encode_chunk_key``), and the entries take
:meth:`Manifest.from_json`'s columnar fast path.

>>> from virtualizarr.manifests import ChunkManifest, ManifestArray, ManifestGroup
>>> from zarr.core.metadata.v3 import ArrayV3Metadata
>>> meta = ArrayV3Metadata.from_dict({"zarr_format": 3, "node_type": "array", "shape": [4],
...     "data_type": "int32", "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
...     "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
...     "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "dimension_names": ["x"]})
>>> chunks = ChunkManifest({"1": {"path": "s3://bucket/f.nc", "offset": 100, "length": 8}}, shape=(2,))
>>> m = from_virtualizarr(ManifestGroup(arrays={"x": ManifestArray(meta, chunks)}, attributes={"title": "t"}))
>>> [e.key for e in m.entries]
['zarr.json', 'x/zarr.json', 'x/c/1']
>>> m.entries[2].path, m.entries[2].offset, m.entries[2].length
('s3://bucket/f.nc', 100, 8)
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from kvmap._gcpause import paused_gc
from kvmap.errors import ManifestError, MissingDependencyError
from kvmap.manifest import Manifest
from kvmap.url import is_absolute

__all__ = ["from_virtualizarr"]

#: ChunkManifest path sentinels: a missing chunk, and (VirtualiZarr 2.6.1+) an inlined one.
_MISSING = ""
_INLINED = "__inlined__"

#: Encoding keys VirtualiZarr's Icechunk writer copies into a virtual variable's attributes.
_ENCODING_KEYS = ("_FillValue", "missing_value", "scale_factor", "add_offset")

_INSTALL = "pip install 'kvmap[virtualizarr]'"

# Characters kept as they are in a URL: RFC 3986 reserved and unreserved, and "%" (escapes).
_URL_SAFE = ":/?#[]@!$&'()*+,;=%-._~"
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def from_virtualizarr(obj: Any, *, url: str | None = None, name: str | None = None) -> Manifest:
    """The kvmap manifest of the zarr v3 hierarchy that ``obj`` describes.

    ``obj`` is a VirtualiZarr ``ManifestStore`` or ``ManifestGroup``, or an ``xarray.Dataset``
    (``DataTree``) whose variables wrap ``ManifestArray`` objects or loaded data. ``url`` is the
    manifest's URL (relative paths resolve against it; the VirtualiZarr paths are absolute) and
    ``name`` what errors call the document (default: ``url``); ``url`` is taken as
    :meth:`Manifest.from_json` takes it, but ``None`` (no URL) is the default here. The module
    docstring says what the entries are.

    Raises :class:`~kvmap.MissingDependencyError` without VirtualiZarr, and
    :class:`~kvmap.ManifestError` naming the array or variable for what has no zarr v3 form
    (another type of ``obj``, a chunk grid that does not match the array's metadata, a loaded
    variable xarray cannot encode) or a reference kvmap refuses (naming the entry).
    """
    doc = name if name is not None else url
    vz = _virtualizarr()
    entries: list[dict[str, Any]] = []
    with paused_gc():  # a million entry dicts and no cycles: the collector would only slow it
        _collect(obj, vz, entries, doc)
        return Manifest.from_json(entries, url, name=doc)


def _collect(obj: Any, vz: Any, entries: list[dict[str, Any]], doc: str | None) -> None:
    """Append the entries of ``obj`` (see :func:`from_virtualizarr`) to ``entries``."""
    if isinstance(obj, vz.ManifestStore):
        group = getattr(obj, "_group", None)
        if not isinstance(group, vz.ManifestGroup):
            raise ManifestError("this VirtualiZarr ManifestStore does not show its ManifestGroup", manifest=doc)
        _group_entries(group, "", entries, doc)
    elif isinstance(obj, vz.ManifestGroup):
        _group_entries(obj, "", entries, doc)
    else:
        import xarray as xr

        if isinstance(obj, xr.Dataset):
            _dataset_entries(obj, "", entries, doc)
        elif isinstance(obj, xr.DataTree):
            for node in obj.subtree:
                path = node.relative_to(obj)
                _dataset_entries(node.to_dataset(inherit=False), "" if path == "." else path + "/", entries, doc)
        else:
            raise ManifestError(
                "from_virtualizarr takes a VirtualiZarr ManifestStore or ManifestGroup, or an xarray "
                f"Dataset or DataTree of virtual variables, not {type(obj).__name__}",
                manifest=doc,
            )


def _virtualizarr() -> Any:
    try:
        import virtualizarr.manifests as vz
    except ImportError as exc:
        raise MissingDependencyError(f"reading VirtualiZarr objects needs VirtualiZarr: {_INSTALL}") from exc
    return vz


# -- groups and arrays ------------------------------------------------------------------------------


def _group_entries(group: Any, prefix: str, entries: list[dict[str, Any]], doc: str | None) -> None:
    entries.append(_metadata_entry(prefix + "zarr.json", group.metadata))
    for array_name, array in group.arrays.items():
        _array_entries(f"{prefix}{array_name}/", array.metadata, array.manifest, entries, doc)
    for group_name, subgroup in group.groups.items():
        _group_entries(subgroup, f"{prefix}{group_name}/", entries, doc)


def _array_entries(prefix: str, metadata: Any, manifest: Any, entries: list[dict[str, Any]], doc: str | None) -> None:
    entries.append(_metadata_entry(prefix + "zarr.json", metadata))
    entries.extend(_chunk_entries(prefix, metadata, manifest, doc))


def _metadata_entry(key: str, metadata: Any) -> dict[str, Any]:
    """``zarr.json`` of a zarr metadata object, as zarr writes it: a ``json`` entry, or the exact
    text as ``data`` where it is not strict JSON (zarr writes a NaN attribute as ``NaN``)."""
    from zarr.core.buffer import default_buffer_prototype

    text = metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    try:
        return {"key": key, "json": orjson.loads(text)}
    except orjson.JSONDecodeError:
        return {"key": key, "data": base64.b64encode(text).decode("ascii")}


def _grid_shape(metadata: Any) -> tuple[int, ...] | None:
    """The chunk grid of a regular grid's array (``None`` for other grids)."""
    chunk_shape = getattr(metadata.chunk_grid, "chunk_shape", None)
    if chunk_shape is None:
        return None
    return tuple(math.ceil(s / c) if c else 0 for s, c in zip(metadata.shape, chunk_shape, strict=True))


def _chunk_entries(prefix: str, metadata: Any, manifest: Any, doc: str | None) -> list[dict[str, Any]]:
    """One entry per present chunk of ``manifest``, keyed by ``metadata``'s chunk key encoding."""
    grid = tuple(manifest.shape_chunk_grid)
    expected = _grid_shape(metadata)
    if expected is not None and expected != grid:
        raise ManifestError(
            f"the chunk manifest of array {prefix[:-1]!r} is a grid of {grid} chunks, "
            f"but its metadata makes a grid of {expected}",
            manifest=doc,
        )
    paths = getattr(manifest, "_paths", None)
    offsets = getattr(manifest, "_offsets", None)
    lengths = getattr(manifest, "_lengths", None)
    if not all(isinstance(a, np.ndarray) and a.shape == grid for a in (paths, offsets, lengths)):
        return _chunk_entries_from_dict(prefix, metadata, manifest)
    assert paths is not None
    assert offsets is not None
    assert lengths is not None
    flat = paths.reshape(-1)
    present = np.flatnonzero((flat != _MISSING) & (flat != _INLINED))
    coords = np.unravel_index(present, grid) if grid else ()
    keys = _chunk_keys(prefix, metadata, coords, len(present))
    out = [
        {"key": k, "path": p, "offset": o, "length": n}
        for k, p, o, n in zip(
            keys,
            _urls(flat[present].tolist()),
            offsets.reshape(-1)[present].tolist(),
            lengths.reshape(-1)[present].tolist(),
            strict=True,
        )
    ]
    inlined: Mapping[tuple[int, ...], bytes] = getattr(manifest, "_inlined", None) or {}
    for index in sorted(inlined):
        key = prefix + metadata.encode_chunk_key(tuple(int(i) for i in index))
        out.append({"key": key, "data": base64.b64encode(inlined[index]).decode("ascii")})
    return out


def _chunk_entries_from_dict(prefix: str, metadata: Any, manifest: Any) -> list[dict[str, Any]]:
    """The same entries through the public ``ChunkManifest.dict()`` (keys ``"i.j.k"``, and for a
    0-d array ``""``; VirtualiZarr 2.6.1+ puts inlined bytes in ``"data"``)."""
    out = []
    items = list(manifest.dict().items())
    urls = _urls([ref["path"] for _, ref in items if "data" not in ref])
    for key, ref in items:
        index = tuple(int(i) for i in key.split(".")) if manifest.shape_chunk_grid else ()
        chunk_key = prefix + metadata.encode_chunk_key(index)
        if "data" in ref:
            out.append({"key": chunk_key, "data": base64.b64encode(ref["data"]).decode("ascii")})
        else:
            out.append(
                {"key": chunk_key, "path": urls.pop(0), "offset": int(ref["offset"]), "length": int(ref["length"])}
            )
    return out


def _chunk_keys(prefix: str, metadata: Any, coords: tuple[Any, ...], n: int) -> list[str]:
    """``prefix`` + the chunk key of each grid position (``coords``: one index array per
    dimension): one format string for zarr's two encodings, zarr's own encoder otherwise."""
    if not coords:
        return [prefix + metadata.encode_chunk_key(())] * n
    encoding = metadata.chunk_key_encoding
    name, separator = getattr(encoding, "name", None), getattr(encoding, "separator", None)
    columns = [c.tolist() for c in coords]
    if n and name in ("default", "v2") and separator in ("/", "."):
        head = prefix + ("c" + separator if name == "default" else "")
        template = head.replace("{", "{{").replace("}", "}}") + separator.join(["{}"] * len(coords))
        out: list[str] = list(map(template.format, *columns))
        # zarr defines the encoding: a key it would spell otherwise sends us its way.
        if out[0] == prefix + metadata.encode_chunk_key(tuple(c[0] for c in columns)):
            return out
    return [prefix + metadata.encode_chunk_key(index) for index in zip(*columns, strict=True)]


def _urls(paths: list[str]) -> list[str]:
    """The kvmap URL of each VirtualiZarr chunk path (see the module: **Paths**)."""
    mapped = {p: _url(p) for p in set(paths)}
    if all(k == v for k, v in mapped.items()):
        return paths
    return [mapped[p] for p in paths]


def _url(path: str) -> str:
    if is_absolute(path):
        return quote(_LONE_PERCENT.sub("%25", path), safe=_URL_SAFE, encoding="utf-8", errors="strict")
    if path.startswith("/") and not path.startswith("//"):
        return PurePosixPath(path).as_uri()
    return path


# -- xarray datasets ---------------------------------------------------------------------------------


def _dataset_entries(ds: Any, prefix: str, entries: list[dict[str, Any]], doc: str | None) -> None:
    """The group ``prefix`` holding the variables of the virtual dataset ``ds``."""
    from virtualizarr.manifests import ManifestArray
    from xarray.conventions import encode_dataset_coordinates
    from zarr.core.group import GroupMetadata

    variables, attrs = encode_dataset_coordinates(ds)
    try:
        group = GroupMetadata(attributes={str(k): _attribute(v) for k, v in attrs.items()})
        entries.append(_metadata_entry(prefix + "zarr.json", group))
    except (TypeError, ValueError) as exc:
        reason = f"the attributes of group {prefix or '/'!r} have no JSON form: {exc}"
        raise ManifestError(reason, manifest=doc) from None
    for var_name, var in variables.items():
        if not isinstance(var_name, str) or not var_name or "/" in var_name:
            raise ManifestError(f"variable name {var_name!r} is not a zarr array name", manifest=doc)
        if isinstance(var.data, ManifestArray):
            try:
                metadata = _variable_metadata(var)
            except (TypeError, ValueError) as exc:
                raise ManifestError(
                    f"variable {prefix}{var_name!r} has no zarr v3 metadata: {exc}", manifest=doc
                ) from None
            _array_entries(f"{prefix}{var_name}/", metadata, var.data.manifest, entries, doc)
        else:
            entries.extend(_loaded_entries(f"{prefix}{var_name}", var, doc))


def _variable_metadata(var: Any) -> Any:
    """The ``ArrayV3Metadata`` of a virtual variable: its ManifestArray's, with the dims and
    attributes xarray holds (see the module: **Virtual datasets**)."""
    from zarr.core.metadata.v3 import ArrayV3Metadata

    metadata = var.data.metadata
    attributes = dict(metadata.attributes or {})
    attributes.update({str(k): _attribute(v) for k, v in var.attrs.items()})
    for key in _ENCODING_KEYS:
        if key in var.encoding and key not in attributes:
            attributes[key] = _encoded_attribute(key, var.encoding[key], var.data.dtype)
    d = metadata.to_dict()
    d["attributes"] = attributes
    d["dimension_names"] = [str(dim) for dim in var.dims]
    return ArrayV3Metadata.from_dict(d)


def _encoded_attribute(key: str, value: Any, dtype: np.dtype[Any]) -> Any:
    """An encoding value as an attribute; ``_FillValue`` the way xarray writes it for zarr v3."""
    coder = None
    if key == "_FillValue":
        import xarray.backends.zarr as xz

        coder = getattr(xz, "FillValueCoder", None)
    if coder is not None:
        try:
            return coder.encode(value, dtype)
        except (TypeError, ValueError):
            pass
    return _attribute(value)


def _attribute(value: Any) -> Any:
    """An attribute value as JSON-ready Python (numpy arrays and scalars too), as xarray writes it."""
    import xarray.backends.zarr as xz

    encode: Any = xz.encode_zarr_attr_value  # untyped in xarray
    return encode(value)


def _loaded_entries(path: str, var: Any, doc: str | None) -> list[dict[str, Any]]:
    """The keys of the loaded variable ``var`` as ``to_zarr`` writes the array ``path``."""
    import xarray as xr
    from zarr.storage import MemoryStore

    written: dict[str, Any] = {}
    name = path.rpartition("/")[2]
    try:
        xr.Dataset({name: var}).to_zarr(MemoryStore(written), zarr_format=3, consolidated=False, mode="w")
    except (TypeError, ValueError, NotImplementedError, KeyError) as exc:
        raise ManifestError(f"loaded variable {path!r} cannot be encoded as zarr: {exc}", manifest=doc) from None
    head = path[: -len(name)]
    out = []
    for key in sorted(written, key=lambda k: (k.rpartition("/")[2] != "zarr.json", k)):
        if key == "zarr.json":
            continue  # the group, written by the caller
        data = written[key].to_bytes()
        if key.endswith("zarr.json"):
            try:
                out.append({"key": head + key, "json": orjson.loads(data)})
                continue
            except orjson.JSONDecodeError:
                pass
        out.append({"key": head + key, "data": base64.b64encode(data).decode("ascii")})
    return out
