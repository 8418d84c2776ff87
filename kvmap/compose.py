"""Composite zarr groups: :func:`compose` builds the manifest of a group whose members live elsewhere.

>>> import kvmap
>>> m = kvmap.compose({"temperature": "s3://a/t.zarr/", "precip": "file:///data/p.zarr/"},
...                   attributes={"title": "climate"})
>>> cm = kvmap.compile(m)
>>> cm.resolve("precip/c/0/1").url
'file:///data/p.zarr/c/0/1'
>>> cm.resolve("zarr.json").data
b'{"zarr_format":3,"node_type":"group","attributes":{"title":"climate"}}'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvmap.errors import ManifestError
from kvmap.manifest import Manifest

__all__ = ["compose"]


def compose(
    members: Mapping[str, str],
    *,
    attributes: Mapping[str, Any] | None = None,
    url: str | None = None,
    name: str | None = None,
) -> Manifest:
    """A manifest for a zarr v3 group whose members are other zarr hierarchies.

    Its root ``zarr.json`` is inline (a group with ``attributes``), and each member
    ``name -> target`` is a prefix entry ``name/`` onto ``target``, the URL (or
    pipeline) of the member's root, ending in ``/`` (or in the ``:`` of a
    ``|kvmap:`` pipeline). Relative targets resolve against ``url``, the URL the
    manifest will be saved at.

    Raises :class:`~kvmap.ManifestError` for a member name that is empty, holds a
    ``/``, is ``.``, ``..`` or ``zarr.json``, or starts with ``__``, and for a
    target that does not end in ``/`` or ``:`` (appending the member's keys to it
    would not give paths inside it).
    """
    entries: list[dict[str, Any]] = [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes or {})}}
    ]
    for i, (member, target) in enumerate(members.items(), start=1):
        if not member or "/" in member or member in (".", "..", "zarr.json") or member.startswith("__"):
            raise ManifestError(f"{member!r} is not a zarr member name", manifest=name, entry=i, field="prefix")
        if not isinstance(target, str) or not target.endswith(("/", ":")):
            raise ManifestError(
                f"member {member!r}: target {target!r} must end in '/' (a directory) or ':' (a pipeline)",
                manifest=name,
                entry=i,
                field="path",
            )
        entries.append({"prefix": f"{member}/", "path": target})
    return Manifest.from_json({"kvmap": 1, "entries": entries}, url=url, name=name)
