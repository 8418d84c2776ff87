"""Chunk manifests (the zarr manifest storage transformer proposal) as kvmap manifests.

A chunk manifest maps each key to one reference::

    {"0.0.0": {"path": "s3://bucket/f.nc", "offset": 100, "length": 100}, ...}

It is read as the kvmap manifest of one exact-key entry per member, in document
order, so every rule of the kvmap format applies (relative paths resolve against
the manifest's URL; ``offset`` and ``length`` are optional). A kvmap document
(``{"kvmap": 1, ...}`` or a bare array) is accepted in its place.

>>> m = chunk_manifest({"0.0": {"path": "f.nc", "offset": 8, "length": 4}}, url="s3://b/m.json")
>>> m.entries[0].key, m.entries[0].path
('0.0', 'f.nc')
"""

from __future__ import annotations

from typing import Any

from kvmap.errors import ManifestError
from kvmap.manifest import Manifest

__all__ = ["chunk_manifest"]


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
