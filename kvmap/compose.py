"""Composite zarr groups: :func:`compose` builds the manifest of a group whose members live elsewhere.

>>> import kvmap
>>> m = kvmap.compose({"temperature": "s3://a/t.zarr/", "precip": "file:///data/p.zarr/"},
...                   attributes={"title": "climate"})
>>> cm = kvmap.compile(m)
>>> cm.resolve("precip/c/0/1").url
'file:///data/p.zarr/c/0/1'
>>> cm.resolve("zarr.json").data
b'{"zarr_format":3,"node_type":"group","attributes":{"title":"climate"}}'

A zarr v2 group (``zarr_format=2``) has an inline ``.zgroup`` and ``.zattrs`` instead:

>>> v2 = kvmap.compile(kvmap.compose({"t": "s3://a/t.zarr/"}, zarr_format=2))
>>> v2.resolve(".zgroup").data, v2.resolve("zarr.json") is None
(b'{"zarr_format":2}', True)

Without ``zarr_format=None``, ``consolidated`` or ``root``, :func:`compose` reads nothing;
with them, it reads the members (and the root) through a :class:`~kvmap.Reader`, under the
same security policy a reader of the manifest is held to (``allow``, ``allow_all``, ``stores``).
"""

from __future__ import annotations

import base64
import json
import math
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kvmap.errors import ManifestError
from kvmap.manifest import Manifest
from kvmap.reader import Reader

__all__ = ["compose"]

_V3 = "zarr.json"
_ZGROUP, _ZATTRS, _ZARRAY, _ZMETADATA = ".zgroup", ".zattrs", ".zarray", ".zmetadata"
_V2_NODE_KEYS = (_ZARRAY, _ZGROUP, _ZATTRS)
#: Names a member may not have: they are the group's own metadata (either format), or not names.
_NOT_NAMES = frozenset((".", "..", _V3, _ZGROUP, _ZATTRS, _ZARRAY, _ZMETADATA))
#: What zarr-python writes for a group inside consolidated metadata (the flat form keeps each
#: node's descendants at the top level, so every group's own mapping is empty).
_EMPTY_CONSOLIDATED: dict[str, Any] = {"kind": "inline", "must_understand": False, "metadata": {}}


def compose(
    members: Mapping[str, str],
    *,
    attributes: Mapping[str, Any] | None = None,
    url: str | None = None,
    name: str | None = None,
    zarr_format: int | None = 3,
    consolidated: bool = False,
    root: str | None = None,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
) -> Manifest:
    """A manifest for a zarr group whose members are other zarr hierarchies.

    Each member ``name -> target`` is a prefix entry ``name/`` onto ``target``, the URL
    (or pipeline) of the member's root, ending in ``/`` (or in the ``:`` of a ``|kvmap:``
    pipeline). Relative targets (and ``root``) resolve against ``url``, the URL the
    manifest will be saved at. The group's root metadata — a zarr v3 ``zarr.json``
    (``zarr_format=3``, the default) or zarr v2 ``.zgroup`` and ``.zattrs``
    (``zarr_format=2``), with ``attributes`` — is inline in the manifest, before the members.

    ``zarr_format=None`` reads each member's metadata to find the format they share.
    ``consolidated=True`` reads the metadata of every node of every member (walking each
    group's children) and puts it in the root as zarr-python does — v3: a
    ``"consolidated_metadata"`` member of ``zarr.json``; v2: a ``.zmetadata`` document as
    zarr 2 writes it — so that zarr and xarray open the group without listing anything.
    It is a snapshot: compose again to refresh it after a member changes.

    ``root``, a directory URL ending in ``/``, makes the root metadata real objects there
    (an exact entry naming each whole object, after a prefix entry ``""`` onto ``root``
    that comes first, so it has the lowest precedence): keys no member covers read from
    and write to ``root``, so root attributes, ``zarr.consolidate_metadata`` and new
    variables (``xarray.Dataset.to_zarr(mode="a")``) go there. A root metadata object that
    is missing is written; an existing one is kept as it is — its attributes unless
    ``attributes`` is given, its consolidated metadata (a snapshot an earlier compose or
    ``zarr.consolidate_metadata`` made) unless ``consolidated`` is true, so compose with
    ``consolidated=True`` when the members change — and rewritten only where it differs.
    With ``consolidated``, nodes written below ``root`` are consolidated too.

    Reads and writes go through :class:`~kvmap.Reader` and :class:`~kvmap.KVMapStore`
    with ``allow``, ``allow_all`` and ``stores``, held to the manifest's security policy
    (its origin is ``url``'s). With ``zarr_format`` 3 or 2, ``consolidated=False`` and no
    ``root`` nothing is read.

    Raises :class:`~kvmap.ManifestError` (naming the manifest, the member's entry and
    field) for a member name that is empty, holds a ``/``, is ``.``, ``..`` or a zarr
    metadata name (``zarr.json``, ``.zgroup``, ``.zattrs``, ``.zarray``, ``.zmetadata``),
    or starts with ``__``; for a target that does not end in ``/`` or ``:`` (appending the
    member's keys to it would not give paths inside it), a ``root`` that does not end in
    ``/``, a ``zarr_format`` other than 2, 3 or ``None``; when reading, for a member with no
    zarr metadata (it does not exist), with metadata of the other format than
    ``zarr_format``, with unreadable metadata, for members of both formats (a v3 group does
    not show v2 children, nor a v2 group v3 ones), and for a ``root`` holding an array or
    metadata of the other format. Reads and writes raise what :class:`~kvmap.Reader` and
    :class:`~kvmap.KVMapStore` raise (:class:`~kvmap.PolicyError`,
    :class:`~kvmap.TargetError`, :class:`~kvmap.WriteError`...).
    """
    where = name if name is not None else url
    if zarr_format not in (2, 3, None):
        raise ManifestError(f"zarr_format must be 2, 3 or None, not {zarr_format!r}", manifest=where)
    if root is not None and (not isinstance(root, str) or not root.endswith("/")):
        raise ManifestError(
            f"root {root!r} must be a directory URL ending in '/'", manifest=where, entry=0, field="path"
        )
    pairs = list(members.items())
    attrs = None if attributes is None else dict(attributes)
    fmt = zarr_format if zarr_format is not None else 3
    if zarr_format is not None and not consolidated and root is None:
        # The pure case: no I/O, the manifest the arguments describe.
        return _manifest(_layout(fmt, pairs, None, _root_metadata(fmt, attrs or {}), where), url, name)

    group = _Composite(pairs, fmt, consolidated, attrs, url, name, where, root, allow, allow_all, stores)
    found = group.member_formats(fmt) if (zarr_format is None or consolidated) else {}
    existing = group.existing_root()
    fmt = group.agreed_format(zarr_format, found, existing)
    group.check_root(fmt, existing)
    effective = attrs if attrs is not None else _root_attributes(fmt, existing)
    metadata = _root_metadata(fmt, effective)
    if consolidated:
        nodes = group.walk(fmt, found)
        if fmt == 3:
            metadata[_V3] = {**metadata[_V3], "consolidated_metadata": _consolidated_v3(nodes)}
        else:
            metadata[_ZMETADATA] = _consolidated_v2(metadata, nodes)
    if root is not None:
        metadata = _kept(fmt, metadata, existing, attrs is not None, consolidated)
        group.write_root(metadata, existing)
    return _manifest(_layout(fmt, pairs, root, metadata, where), url, name)


class _Composite:
    """The reads (and root writes) of a :func:`compose` that needs I/O."""

    def __init__(
        self,
        pairs: list[tuple[str, str]],
        fmt: int,
        consolidated: bool,
        attrs: dict[str, Any] | None,
        url: str | None,
        name: str | None,
        where: str | None,
        root: str | None,
        allow: Collection[str],
        allow_all: bool,
        stores: Mapping[str, Mapping[str, Any]] | None,
    ) -> None:
        self.pairs, self.url, self.name, self.where, self.root = pairs, url, name, where, root
        self.options: dict[str, Any] = {"allow": allow, "allow_all": allow_all, "stores": stores}
        # The members are read through the composite itself, laid out for the format asked
        # (3 when it is to be found: entry numbers in errors are of that layout), so a member's
        # keys walk exactly as they will in the manifest; no read touches the root metadata.
        metadata = _root_metadata(fmt, attrs or {})
        if consolidated and fmt == 2:
            metadata[_ZMETADATA] = {}
        layout = _layout(fmt, pairs, root, metadata, where)
        self.reader = Reader(_manifest(layout, url, name), **self.options)
        self.offset = len(layout) - len(pairs)  # the entry index of the first member
        self._got: dict[str, bytes | None] = {}

    def get(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bytes of ``keys`` in the composite (``None``: missing), each read once, in one batch."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._got]
        if todo:
            found = self.reader.get_many_sync(todo)
            self._got.update((k, None if v is None else bytes(v)) for k, v in zip(todo, found, strict=True))
        return [self._got[k] for k in keys]

    def _doc(self, key: str, data: bytes | None, member: int | None) -> dict[str, Any] | None:
        """A metadata document, parsed as zarr parses it (NaN and Infinity allowed)."""
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError as exc:
            doc, why = None, f"not JSON ({exc})"
        else:
            why = f"a JSON {type(doc).__name__}, not an object"
        if not isinstance(doc, dict):
            entry = None if member is None else self.offset + member
            raise ManifestError(f"zarr metadata {key!r} is {why}", manifest=self.where, entry=entry, field="path")
        return doc

    def member_formats(self, wanted: int) -> dict[str, tuple[int, dict[str, dict[str, Any]]]]:
        """Each member's format and root metadata documents (key -> document), read in one batch.
        Raises :class:`ManifestError` for a member without zarr metadata."""
        keys = [f"{m}/{k}" for m, _ in self.pairs for k in (_V3, *_V2_NODE_KEYS)]
        data = iter(self.get(keys))
        found: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}
        for i, (member, target) in enumerate(self.pairs):
            docs: dict[str, dict[str, Any]] = {}
            for k in (_V3, *_V2_NODE_KEYS):
                doc = self._doc(f"{member}/{k}", next(data), i)
                if doc is not None:
                    docs[k] = doc
            v3, v2 = _V3 in docs, _ZARRAY in docs or _ZGROUP in docs
            if not v3 and not v2:
                raise ManifestError(
                    f"member {member!r}: no zarr metadata at {target!r} (no zarr.json, .zgroup or .zarray): "
                    "it does not exist or is not a zarr hierarchy",
                    manifest=self.where,
                    entry=self.offset + i,
                    field="path",
                )
            # A directory holding both formats is read the way zarr opens it: as asked, else v3.
            fmt = wanted if (v3 and v2) else (3 if v3 else 2)
            if fmt == 3:
                _check_v3(docs[_V3], f"member {member!r}", self.where, self.offset + i)
            found[member] = (fmt, docs)
        return found

    def _root_reader(self) -> Reader:
        # Only the root's own prefix entry (entry 0 in the manifest too): its keys as they are
        # below root, whether the manifest will name them with exact entries or not.
        assert self.root is not None
        return Reader(_manifest([{"prefix": "", "path": self.root}], self.url, self.name), **self.options)

    def existing_root(self) -> dict[str, dict[str, Any]]:
        """The root metadata documents that exist below ``root`` (none without a root)."""
        if self.root is None:
            return {}
        keys = [_V3, *_V2_NODE_KEYS, _ZMETADATA]
        reader = self._root_reader()
        found = reader.get_many_sync(keys)
        docs = {}
        for k, v in zip(keys, found, strict=True):
            doc = self._doc(k, None if v is None else bytes(v), None)
            if doc is not None:
                docs[k] = doc
        return docs

    def check_root(self, fmt: int, existing: Mapping[str, dict[str, Any]]) -> None:
        """Refuse a root that holds an array, or only metadata of the other format."""
        why = None
        if fmt == 3 and _V3 in existing:
            _check_v3(existing[_V3], f"root {self.root!r}", self.where, 0)
            if existing[_V3].get("node_type") != "group":
                why = "holds a zarr array, not a group"
        elif fmt == 3 and (_ZGROUP in existing or _ZARRAY in existing):
            why = "holds zarr v2 metadata (.zgroup or .zarray), but the group is zarr v3"
        elif fmt == 2 and _ZARRAY in existing:
            why = "holds a zarr v2 array (.zarray), not a group"
        elif fmt == 2 and _ZGROUP not in existing and _V3 in existing:
            why = "holds zarr v3 metadata (zarr.json), but the group is zarr v2"
        if why is not None:
            raise ManifestError(f"root {self.root!r} {why}", manifest=self.where, entry=0, field="path")

    def agreed_format(
        self, zarr_format: int | None, found: Mapping[str, tuple[int, Any]], existing: Mapping[str, dict[str, Any]]
    ) -> int:
        """The composite's format: ``zarr_format`` (every member read must have it), else the
        one every member has (a mix refused), else the root's, else 3."""
        index = {m: self.offset + i for i, (m, _) in enumerate(self.pairs)}
        if zarr_format is not None:
            for member, (fmt, _) in found.items():
                if fmt != zarr_format:
                    raise _format_error(member, fmt, zarr_format, self.where, index[member])
            return zarr_format
        first: tuple[str, int] | None = None
        for member, (fmt, _) in found.items():
            if first is None:
                first = (member, fmt)
            elif fmt != first[1]:
                raise ManifestError(
                    f"members {first[0]!r} (zarr v{first[1]}) and {member!r} (zarr v{fmt}) differ in format: "
                    "a zarr v3 group does not show v2 children, nor a v2 group v3 ones "
                    "(compose them in separate groups, or convert one)",
                    manifest=self.where,
                    entry=index[member],
                    field="path",
                )
        if first is not None:
            return first[1]
        return 2 if _V3 not in existing and _ZGROUP in existing else 3

    def walk(self, fmt: int, found: Mapping[str, tuple[int, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
        """Every node below the composite root, path -> metadata: v3, a node's ``zarr.json``
        document; v2, its documents (``.zarray``/``.zgroup``, ``.zattrs``) by name. Walks each
        group's children as zarr does (one listing per group, one batch of reads per level)."""
        nodes: dict[str, Any] = {}
        groups: list[str] = []
        for member, (_, docs) in found.items():
            if fmt == 3:
                nodes[member] = docs[_V3]
                is_group = docs[_V3].get("node_type") == "group"
            else:
                nodes[member] = {k: docs[k] for k in _V2_NODE_KEYS if k in docs}
                is_group = _ZARRAY not in docs
            if is_group:
                groups.append(member)
        # Nodes written below root (a variable added with to_zarr) that no member shadows.
        level = [n for n in self._root_children() if n not in found and n not in _NOT_NAMES]
        while level or groups:
            level += [f"{g}/{n}" for g in groups for n in self.reader.list_dir_sync(g + "/") if n not in _NOT_NAMES]
            groups = self._read_level(fmt, level, nodes)
            level = []
        return nodes

    def _read_level(self, fmt: int, paths: list[str], nodes: dict[str, Any]) -> list[str]:
        """Read the metadata of ``paths`` (one batch) into ``nodes``; the groups among them.
        A path without metadata of ``fmt`` is no node (zarr does not show it either)."""
        groups = []
        if fmt == 3:
            for path, data in zip(paths, self.get([f"{p}/{_V3}" for p in paths]), strict=True):
                doc = self._doc(f"{path}/{_V3}", data, None)
                if doc is not None and doc.get("zarr_format") == 3:
                    nodes[path] = doc
                    if doc.get("node_type") == "group":
                        groups.append(path)
            return groups
        read = iter(self.get([f"{p}/{k}" for p in paths for k in _V2_NODE_KEYS]))
        for path in paths:
            docs = {k: doc for k in _V2_NODE_KEYS if (doc := self._doc(f"{path}/{k}", next(read), None)) is not None}
            if _ZARRAY in docs or _ZGROUP in docs:
                nodes[path] = docs
                if _ZARRAY not in docs:
                    groups.append(path)
        return groups

    def _root_children(self) -> list[str]:
        return [] if self.root is None else self._root_reader().list_dir_sync("")

    def write_root(self, metadata: Mapping[str, Any], existing: Mapping[str, dict[str, Any]]) -> None:
        """Write each root metadata object that is missing or differs from ``metadata``."""
        from zarr.core.buffer import default_buffer_prototype

        from kvmap.store import KVMapStore

        assert self.root is not None
        changed = {k: v for k, v in metadata.items() if existing.get(k) != v}
        if not changed:
            return
        store = KVMapStore(_manifest([{"prefix": "", "path": self.root}], self.url, self.name), **self.options)
        make = default_buffer_prototype().buffer.from_bytes
        for key, doc in changed.items():
            # As zarr-python writes metadata: indented, NaN and Infinity as JSON extensions.
            store.set_sync(key, make(json.dumps(doc, indent=2, allow_nan=True).encode()))


def _manifest(entries: list[dict[str, Any]], url: str | None, name: str | None) -> Manifest:
    return Manifest.from_json({"kvmap": 1, "entries": entries}, url=url, name=name)


def _layout(
    fmt: int, pairs: Sequence[tuple[str, str]], root: str | None, metadata: Mapping[str, Any], where: str | None
) -> list[dict[str, Any]]:
    """The entries: the root metadata (inline, or a prefix onto ``root`` and an exact entry per
    object), then one prefix entry per member. Raises for a bad member name or target."""
    if root is None:
        head = [metadata_entry(k, v) for k, v in metadata.items()]
    else:
        head = [{"prefix": "", "path": root}, *({"key": k, "path": root + k} for k in metadata)]
    entries = list(head)
    for i, (member, target) in enumerate(pairs, start=len(head)):
        if (
            not isinstance(member, str)
            or not member
            or "/" in member
            or member in _NOT_NAMES
            or member.startswith("__")
        ):
            raise ManifestError(f"{member!r} is not a zarr member name", manifest=where, entry=i, field="prefix")
        if not isinstance(target, str) or not target.endswith(("/", ":")):
            raise ManifestError(
                f"member {member!r}: target {target!r} must end in '/' (a directory) or ':' (a pipeline)",
                manifest=where,
                entry=i,
                field="path",
            )
        entries.append({"prefix": f"{member}/", "path": target})
    return entries


def metadata_entry(key: str, doc: Any) -> dict[str, Any]:
    """An inline entry for a metadata document: ``json`` where it holds only finite numbers (a
    manifest's JSON values are exact JSON), else its text as zarr writes it (NaN, Infinity)."""
    if _finite(doc):
        return {"key": key, "json": doc}
    return {"key": key, "data": base64.b64encode(json.dumps(doc, allow_nan=True).encode()).decode("ascii")}


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def _root_metadata(fmt: int, attributes: Mapping[str, Any]) -> dict[str, Any]:
    if fmt == 3:
        return {_V3: {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}}
    return {_ZGROUP: {"zarr_format": 2}, _ZATTRS: dict(attributes)}


def _root_attributes(fmt: int, existing: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    if fmt == 3:
        found = existing.get(_V3, {}).get("attributes", {})
        return dict(found) if isinstance(found, dict) else {}
    return dict(existing.get(_ZATTRS, {}))


def _kept(
    fmt: int, metadata: dict[str, Any], existing: Mapping[str, dict[str, Any]], attributes: bool, consolidated: bool
) -> dict[str, Any]:
    """The root documents to have below ``root``: an existing one stays as it is (fields zarr
    or a person added included) except where ``attributes`` or ``consolidated`` set it."""
    if fmt == 3 and _V3 in existing:
        doc = dict(existing[_V3])
        if attributes:
            doc["attributes"] = metadata[_V3]["attributes"]
        if consolidated:
            doc["consolidated_metadata"] = metadata[_V3]["consolidated_metadata"]
        return {_V3: doc}
    kept = dict(metadata)
    if fmt == 2:
        if _ZGROUP in existing:
            kept[_ZGROUP] = existing[_ZGROUP]
        if _ZATTRS in existing and not attributes:
            kept[_ZATTRS] = existing[_ZATTRS]
    return kept


def _check_v3(doc: Mapping[str, Any], what: str, where: str | None, entry: int) -> None:
    if doc.get("zarr_format") != 3 or doc.get("node_type") not in ("group", "array"):
        raise ManifestError(
            f"{what}: zarr.json is not zarr v3 metadata (zarr_format {doc.get('zarr_format')!r}, "
            f"node_type {doc.get('node_type')!r})",
            manifest=where,
            entry=entry,
            field="path",
        )


def _format_error(member: str, fmt: int, wanted: int, where: str | None, entry: int) -> ManifestError:
    other = "v3" if wanted == 2 else "v2"
    return ManifestError(
        f"member {member!r} is a zarr v{fmt} hierarchy, but the group is zarr v{wanted}: a zarr v{wanted} group "
        f"does not show zarr {other} children (compose with zarr_format={fmt} or None, or convert the member)",
        manifest=where,
        entry=entry,
        field="path",
    )


def _sort_key(path: str) -> tuple[int, str]:
    # zarr-python's order: shallow nodes first, then by case-folded name.
    return (path.count("/"), unicodedata.normalize("NFKC", path).casefold())


def _consolidated_v3(nodes: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """zarr-python's inline consolidated metadata (flat form: every node at the top, by path)."""
    flat: dict[str, Any] = {}
    for path in sorted(nodes, key=_sort_key):
        doc = dict(nodes[path])
        if doc.get("node_type") == "group":
            doc["consolidated_metadata"] = dict(_EMPTY_CONSOLIDATED)
        flat[path] = doc
    return {"kind": "inline", "must_understand": False, "metadata": flat}


def _consolidated_v2(root: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A ``.zmetadata`` document as zarr 2 writes it: every metadata object by key."""
    metadata: dict[str, Any] = {_ZGROUP: root[_ZGROUP], _ZATTRS: root[_ZATTRS]}
    for path in sorted(nodes, key=_sort_key):
        for key in _V2_NODE_KEYS:
            if key in nodes[path]:
                metadata[f"{path}/{key}"] = nodes[path][key]
    return {"zarr_consolidated_format": 1, "metadata": metadata}
