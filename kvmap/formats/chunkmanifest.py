"""Chunk manifests (the zarr manifest storage transformer proposal) as kvmap manifests.

A chunk manifest maps each key to one reference::

    {"0.0.0": {"path": "s3://bucket/f.nc", "offset": 100, "length": 100}, ...}

It is read as the kvmap manifest of one exact-key entry per member, in document
order, so every rule of the kvmap format applies (relative paths resolve against
the manifest's URL; ``offset`` and ``length`` are optional). A kvmap document
(``{"kvmap": 1, ...}`` or a bare array) is accepted in its place.

Written out (:func:`to_chunk_manifest`), every path is absolute and every reference has its
window, as VirtualiZarr's ``ChunkManifest`` requires; a key whose value is inline bytes, or
a whole object without a known length, has no chunk-manifest form and is refused.

>>> m = chunk_manifest({"0.0": {"path": "f.nc", "offset": 8, "length": 4}}, url="s3://b/m.json")
>>> m.entries[0].key, m.entries[0].path
('0.0', 'f.nc')
>>> to_chunk_manifest(m)
{'0.0': {'path': 's3://b/f.nc', 'offset': 8, 'length': 4}}
"""

from __future__ import annotations

from typing import Any

from kvmap.errors import ConvertError, ManifestError
from kvmap.formats._refs import exact_refs
from kvmap.manifest import Manifest

__all__ = ["chunk_manifest", "to_chunk_manifest"]


def chunk_manifest(document: Any, url: str | None = None, *, name: str | None = None) -> Manifest:
    """The :class:`~kvmap.Manifest` for a parsed chunk-manifest (or kvmap) JSON document.

    Raises :class:`~kvmap.ManifestError` naming the reference (its position in
    the document) and the field at fault.
    """
    name = name if name is not None else url
    if isinstance(document, list) or (isinstance(document, dict) and "kvmap" in document):
        return Manifest.from_json(document, url, name=name)
    if not isinstance(document, dict):
        raise ManifestError("a chunk manifest is a JSON object of references", manifest=name)
    entries = []
    for i, (key, ref) in enumerate(document.items()):
        if not isinstance(ref, dict):
            raise ManifestError(f"the reference of {key!r} is not an object", manifest=name, entry=i)
        if "key" in ref:
            raise ManifestError("unknown field in a chunk reference", manifest=name, entry=i, field="key")
        if "path" not in ref:
            raise ManifestError(f"the reference of {key!r} has no path", manifest=name, entry=i, field="path")
        entries.append({"key": key, **ref})
    return Manifest.from_json(entries, url, name=name)


def to_chunk_manifest(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """The chunk-manifest document of ``manifest``: ``{key: {"path", "offset", "length"}}``
    with absolute paths, for its exact-key references (a whiteout leaves its key out).

    Raises :class:`~kvmap.ConvertError` naming the entry for inline bytes, a reference
    without a length (``kvmap convert --materialize`` measures whole objects), and whatever
    :func:`~kvmap.formats._refs.exact_refs` refuses (prefixes, ranges, pipelines). Pins
    (``etag``, ``version``, ``sha256``; spec 3.4) are dropped: a chunk manifest holds only
    ``path``, ``offset`` and ``length``.
    """
    out: dict[str, dict[str, Any]] = {}
    name = manifest.name or manifest.url
    for key, ref in exact_refs(manifest, "a chunk manifest").items():
        if ref.data is not None:
            raise ConvertError(
                "a chunk manifest cannot hold inline bytes", manifest=name, entry=ref.entry, field="data"
            )
        if ref.length is None:
            raise ConvertError(
                "a chunk manifest reference needs a length (--materialize measures whole objects)",
                manifest=name,
                entry=ref.entry,
                field="length",
            )
        out[key] = {"path": ref.url, "offset": ref.offset or 0, "length": ref.length}
    return out
