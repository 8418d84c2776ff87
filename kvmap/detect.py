"""What a parsed JSON document looks like: which manifest format it is written in.

One home for the rules that tell formats apart by content, used by ``kvmap convert`` (to
pick the reader when ``--from`` is not given) and by the error a kvmap reader gives for a
document that is not a kvmap manifest (to say what it is and how to read it). Pure: no
I/O, no imports of the formats themselves.

>>> looks_like({"version": 1, "refs": {".zgroup": "{}"}})
'kerchunk'
>>> looks_like({"0.0": {"path": "s3://b/f.nc", "offset": 0, "length": 8}})
'chunk-manifest'
>>> looks_like({"kvmap": 1, "entries": []}), looks_like({"driver": "kvstack", "layers": []})
('kvmap', 'kvstack')
>>> looks_like({"a": 1}) is None
True
"""

from __future__ import annotations

from itertools import islice
from typing import Any

__all__ = ["HINTS", "hint", "looks_like"]

#: How to read a document of each format that is not kvmap's own, for error messages.
HINTS: dict[str, str] = {
    "kerchunk": "kerchunk references: read them with the pipeline 'refs.json|kerchunk:', or convert "
    "them with 'kvmap convert refs.json out.json'",
    "chunk-manifest": "a chunk manifest: read it with the pipeline 'm.json|zarr_chunk_manifest:', or convert "
    "it with 'kvmap convert m.json out.json'",
    "kvstack": "a tensorstore kvstack spec: read it with the pipeline 'spec.json|kvstack:', or convert "
    "it with 'kvmap convert spec.json out.json'",
}

# A key of zarr metadata: what every kerchunk v0 document of a zarr hierarchy holds.
_METADATA = (".zgroup", ".zarray", ".zattrs", ".zmetadata", "zarr.json")
_SAMPLE = 64  # members looked at: detection must not cost a pass over 1e7 references


def looks_like(document: Any) -> str | None:
    """The format ``document`` is written in — ``"kvmap"``, ``"kerchunk"``,
    ``"chunk-manifest"`` or ``"kvstack"`` — or ``None`` if it looks like none of them.
    Looks at the document's shape and at most a few dozen of its members."""
    if isinstance(document, list):
        return "kvmap"
    if not isinstance(document, dict):
        return None
    if "kvmap" in document:
        return "kvmap"
    if document.get("driver") == "kvstack" and isinstance(document.get("layers"), list):
        return "kvstack"
    refs = document.get("refs")
    if document.get("version") == 1 and isinstance(refs, dict):
        return "kerchunk"
    sample = list(islice(document.items(), _SAMPLE))
    if not sample or not all(isinstance(k, str) for k, _ in sample):
        return None
    if all(isinstance(v, dict) and "path" in v for _, v in sample):
        return "chunk-manifest"
    if all(_kerchunk_value(v) for _, v in sample) and (
        any(k.rpartition("/")[2] in _METADATA for k, _ in sample) or any(isinstance(v, list) for _, v in sample)
    ):
        return "kerchunk"
    return None


def _kerchunk_value(value: Any) -> bool:
    if isinstance(value, (str, dict)):
        return True
    return isinstance(value, list) and len(value) in (1, 3) and (value[0] is None or isinstance(value[0], str))


def hint(document: Any) -> str | None:
    """For a document that is not a kvmap manifest: what it looks like and how to read it."""
    found = looks_like(document)
    return HINTS.get(found) if found is not None else None
