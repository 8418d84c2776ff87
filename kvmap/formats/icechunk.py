"""kvmap manifests into Icechunk repositories, and Icechunk snapshots as kvmap manifests.

Icechunk (1.1 on Python 3.11, 2.x on 3.12+) is a transactional zarr v3 store. Its chunks are
*native* (objects in the repository), *inline* (small values in its manifests) or *virtual*:
a byte window of an object elsewhere, read through a *virtual chunk container* — a URL prefix
with the object-store settings to read it — that the repository's configuration must hold and
that each reader must authorize. :func:`to_icechunk` writes a manifest into a writable session's
store, :func:`to_icechunk_repo` makes a repository for it (containers included) and commits;
:func:`from_icechunk` and :func:`from_icechunk_repo` read a snapshot back into a manifest.

>>> import icechunk
>>> m = Manifest.from_json([
...     {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}},
...     {"key": "x/zarr.json", "json": {"zarr_format": 3, "node_type": "array", "shape": [4],
...         "data_type": "uint8", "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
...         "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": [{"name": "bytes"}]}},
...     {"key": "x/c/0", "data": "AQI="},
...     {"key": "x/c/1", "path": "s3://bucket/data.bin", "offset": 100, "length": 2}])
>>> virtual_chunk_prefixes(m)
['s3://bucket/']
>>> storage = icechunk.in_memory_storage()
>>> snapshot = to_icechunk_repo(m, storage)
>>> import zarr
>>> store = icechunk.Repository.open(storage).readonly_session("main").store
>>> zarr.open_array(store, path="x", mode="r")[:2].tolist()
[1, 2]

:func:`from_icechunk_repo` gives back the same four entries (``x/c/0`` as ``data``, ``x/c/1``
as the same window of ``s3://bucket/data.bin``): of a repository named by a path or URL with
any Icechunk, of this ``storage`` (an ``icechunk.Storage``) on Icechunk 2.0.5+ only (see
below).

Decisions:

**Writing** (:func:`to_icechunk`). Each key's winning entry (later entries win; a whiteout
writes nothing, so the key is absent — in a store that already has it, it is left as it was)
is written as follows. The whole manifest is checked before the first write, so a manifest
kvmap refuses leaves the store untouched (a write Icechunk itself then refuses leaves the
earlier ones in the session, which the caller discards).

* ``zarr.json`` keys (zarr v3 metadata, which Icechunk keeps in its snapshots) must be inline
  (``json``/``data``) and are written with ``store.set``, parents first. Zarr v2 metadata
  (``.zarray``, ``.zgroup``, ``.zattrs``, ``.zmetadata``) is refused: Icechunk stores zarr v3.
* Every other key must be a chunk key of an array whose ``zarr.json`` the manifest holds
  (``a/c/0/1``), inside its (regular) chunk grid. Icechunk serves only zarr's ``default``
  chunk key encoding with separator ``/`` (its store refuses ``a/0.1``, ``a/c.0.1``...), so an
  array with another encoding is refused. Icechunk itself would take ``a/c/0/1`` for a 1-d
  array ``a`` as chunk 0, and ``c/01`` as chunk 1; both are refused here.
* Inline values become native chunks (``store.set``).
* Exact entries with a path become virtual references (``set_virtual_refs_arr`` on Icechunk
  2.0.2+, over the bounding box of the array's chunks when it is dense enough, else
  ``set_virtual_refs``), one call per array, not one per chunk. A byte window gives the
  location's offset and length. An entry naming a whole object, or a
  window with an offset but no length, needs the length of its value: ``lengths[key]``, which
  the caller measured (the size of the object minus the offset); without it the entry is
  refused. An entry's ``etag`` pin (spec 3.4) becomes the reference's ``etag_checksum``, which
  Icechunk checks when it reads the chunk (those arrays are written with ``set_virtual_refs``);
  ``version`` and ``sha256`` pins have no Icechunk form and are dropped (and so are not
  checked by Icechunk; ``kvmap convert`` counts them in its report,
  :attr:`kvmap.convert.Converted.dropped_pins`). Without pins no checksums are written, so
  Icechunk does not check that the objects are unchanged. Reading the repository back gives
  the ``etag`` pins again (**Reading**, *Checksums*).
* A value of length zero is refused: no chunk decodes from zero bytes, and Icechunk 2 refuses
  them too.
* Prefix and range entries and URL pipelines have no Icechunk form: :class:`~kvmap.ConvertError`
  naming the entry (``kvmap convert --materialize`` lists their keys, or follows the pipeline,
  first).

Relative paths are resolved against ``manifest.url`` (a bare absolute OS path is a ``file://``
URL). Icechunk takes a location as a URL (``%XX`` decoded, ``..`` kept), as kvmap does, so the
resolved URL is its location unchanged.

**Containers** (:func:`virtual_chunk_prefixes`). One prefix per bucket, container or host
(``s3://bucket/``, ``gs://bucket/``, ``az://container/``, ``https://host/``), and for local files
each directory that holds referenced files, less those inside another (``file:///data/``
covers ``file:///data/2024/``): a reader then authorizes exactly the directories the data is in,
not the whole disk. Other schemes (``memory://``, ``s3+http://``, ...) have no Icechunk container
and are refused. :func:`to_icechunk_repo` gives each prefix the store its scheme needs
(``local_filesystem_store`` of the directory, ``s3_store()``, ``gcs_store()``, ``http_store()``);
``containers`` overrides or adds ``{prefix: store config}`` (an S3 region or endpoint, Azure,
which needs an account name kvmap URLs do not hold).

**Repository locations.** A local path or ``file://`` URL is a
``local_filesystem_storage``; ``s3://bucket/prefix`` is ``s3_storage(..., from_env=True)`` and
``gs://bucket/prefix`` ``gcs_storage(..., from_env=True)`` (credentials, region and endpoint from
the environment); an ``icechunk.Storage`` object is used as it is — the way to give any other
setting. Other URLs are refused.

**Reading** (:func:`from_icechunk`). Every group and array of the snapshot gives its
``zarr.json`` (as stored, inline) and every chunk of every array one entry: a virtual chunk the
exact entry ``{"key", "path", "offset", "length"}`` of its location (and ``etag``, from its
checksum: below), an inline chunk a ``data``
entry, and a native chunk a ``data`` entry holding its bytes (read through the store). Native
chunks are copied rather than referenced as ``<repository>/chunks/<id>``: that layout is
Icechunk's private business (not in its Python API before 2.x), a repository's chunk objects
may be deleted by its garbage collection once no retained snapshot needs them, and the
repository may sit behind credentials or a storage (in memory) that no URL reaches — a copy
stays valid as long as the manifest exists. Missing chunks get no entry.

*Checksums.* A virtual reference may carry one checksum of the object it names, which Icechunk
checks when it reads the chunk: an ETag (``etag_checksum``) or a modification time
(``last_updated_at_checksum``: the object must not have changed after it; stored as seconds
since the epoch). An ETag checksum becomes the entry's ``etag`` pin (spec 3.4), so kvmap checks
it on every read just as Icechunk does, and a manifest converted to Icechunk and back keeps its
``etag`` pins. A modification time has no pin of kvmap's (a pin names the object, and an ETag
or a version of it, not a time): such a reference is read without a pin — it is the same
window of the same URL, not checked against a later change — and :func:`read_icechunk_repo`
counts these references (``kvmap convert`` reports them among the pins it dropped) rather than
refusing the repository, whose other references are still good.

Icechunk's Python API does not give checksums (``array_chunk_iterator`` leaves them out), so
:func:`from_icechunk_repo` reads them from the repository's own files — its snapshot and
manifest files, whose layout Icechunk publishes (spec versions 1 and 2) — when the repository
is named by a local path or a ``file``, ``s3`` or ``gs`` URL (objects read with obstore, its
settings from the environment, as Icechunk's are). Of a repository given as an
``icechunk.Storage``, or a store or session (:func:`from_icechunk`), kvmap cannot reach the
files: virtual references are read without their checksums.

Icechunk 1.x (Python 3.11) cannot say where a virtual chunk is: its Python API offers
``Session.all_virtual_chunk_locations()`` (the URLs a snapshot references, not which chunk is
where), ``Session.chunk_coordinates()`` and ``chunk_type()`` (which chunks exist, of which
kind) and ``store.get`` (a chunk's bytes) — no offset or length. So on 1.x virtual references
are read from the repository's files as above (their location, offset, length and checksum),
and a snapshot with virtual chunks whose files kvmap cannot reach (an ``icechunk.Storage``, a
store or session) raises :class:`~kvmap.MissingDependencyError` asking for Icechunk 2.0.5+
(which needs Python 3.12+).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import math
import numbers
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import numpy as np
import orjson

from kvmap._gcpause import paused_gc
from kvmap.errors import ConvertError, ManifestError, MissingDependencyError
from kvmap.formats._refs import Ref, exact_refs
from kvmap.manifest import Manifest

__all__ = [
    "IcechunkRead",
    "from_icechunk",
    "from_icechunk_repo",
    "read_icechunk_repo",
    "to_icechunk",
    "to_icechunk_repo",
    "virtual_chunk_prefixes",
]

_INSTALL = "pip install 'kvmap[icechunk]'"
_V2_METADATA = (".zarray", ".zgroup", ".zattrs", ".zmetadata")

#: URL schemes whose containers cover one bucket, container or host: ``scheme://authority/``.
_AUTHORITY_SCHEMES = frozenset(("s3", "gs", "gcs", "az", "azure", "abfs", "http", "https"))

#: Native chunks read at once; virtual references per ``set_virtual_refs`` call.
_READ_BATCH = 256
_SPEC_BATCH = 100_000

#: ``array_chunk_iterator`` kinds (``icechunk.ChunkType`` values, Icechunk 2.0.5+).
_NATIVE, _VIRTUAL, _INLINE = 1, 2, 3


def _icechunk() -> Any:
    try:
        import icechunk
    except ImportError as exc:
        raise MissingDependencyError(f"the Icechunk bridge needs Icechunk: {_INSTALL}") from exc
    return icechunk


# -- writing ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Array:
    """An array of the manifest: where its chunk keys start and how they are spelled."""

    path: str  # "" for the root array, else "a/b"
    grid: tuple[int, ...]
    native: list[tuple[str, bytes]] = field(default_factory=list)
    coords: list[tuple[int, ...]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)
    etags: dict[int, str] = field(default_factory=dict)  # position -> the entry's etag pin

    @property
    def prefix(self) -> str:
        return self.path + "/" if self.path else ""

    @property
    def node(self) -> str:
        """The array's path as Icechunk names nodes: ``/a/b``."""
        return "/" + self.path

    def decode(self, remainder: str) -> tuple[int, ...] | None:
        """The grid index that the chunk key ``prefix + remainder`` spells as zarr spells it
        (``c/1/0``: no ``01``, ``+1`` or `` 1``), not checked against the grid; else ``None``."""
        if not self.grid:
            return () if remainder == "c" else None
        if not remainder.startswith("c/"):
            return None
        parts = remainder[2:].split("/")
        if len(parts) != len(self.grid):
            return None
        try:
            index = tuple(map(int, parts))
        except ValueError:
            return None
        return index if "/".join(map(str, index)) == remainder[2:] else None

    def inside(self, index: tuple[int, ...]) -> bool:
        """Whether the grid holds ``index``."""
        return all(0 <= i < n for i, n in zip(index, self.grid, strict=True))

    def key_template(self) -> str:
        """A ``str.format`` template of the array's chunk keys, one ``{}`` per dimension."""
        return self.prefix.replace("{", "{{").replace("}", "}}") + "/".join(["c", *(["{}"] * len(self.grid))])


@dataclass(slots=True)
class _Plan:
    """What :func:`to_icechunk` writes, checked: metadata in order, then each array's chunks."""

    metadata: list[tuple[str, bytes]]
    arrays: list[_Array]
    locations: dict[str, int]  # each virtual chunk's URL, and an entry that names it


def to_icechunk(manifest: Manifest, store: Any, *, lengths: Mapping[str, int] | None = None) -> None:
    """Write the zarr hierarchy of ``manifest`` into an Icechunk store (or session), writable.

    Metadata and inline values are stored in Icechunk, byte windows become virtual references
    (the module says how, and what is refused); whole-object entries take their length from
    ``lengths`` (key -> byte length of the value). Nothing is committed: the caller commits the
    session. Every virtual location must lie in a virtual chunk container of the session's
    configuration (:func:`virtual_chunk_prefixes` says which prefixes are needed).

    Raises :class:`~kvmap.ConvertError` naming the entry for what Icechunk cannot hold or the
    configuration does not cover — before anything is written — or for a write Icechunk refuses;
    :class:`~kvmap.MissingDependencyError` without Icechunk.

    >>> import icechunk, zarr
    >>> session = icechunk.Repository.create(icechunk.in_memory_storage()).writable_session("main")
    >>> to_icechunk(Manifest.from_json([{"key": "zarr.json", "json": {"zarr_format": 3,
    ...     "node_type": "group", "attributes": {"title": "t"}}}]), session.store)
    >>> zarr.open_group(session.store, mode="r").attrs["title"], session.has_uncommitted_changes
    ('t', True)
    """
    ic = _icechunk()
    store = _writable_store(ic, store, manifest)
    plan = _plan(manifest, lengths)
    _check_containers(plan, store, manifest)
    _write(ic, plan, store, manifest)


def virtual_chunk_prefixes(manifest: Manifest) -> list[str]:
    """The URL prefixes that Icechunk virtual chunk containers need, to hold the virtual
    chunks of ``manifest`` (sorted; see the module: **Containers**).

    Raises :class:`~kvmap.ConvertError` naming the entry for a location no Icechunk container
    can cover, and for every entry :func:`to_icechunk` refuses (but for a missing length: the
    prefixes do not depend on it).

    >>> array = {"zarr_format": 3, "node_type": "array", "shape": [2], "data_type": "uint8",
    ...     "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
    ...     "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": [{"name": "bytes"}]}
    >>> virtual_chunk_prefixes(Manifest.from_json([{"key": "a/zarr.json", "json": array},
    ...     {"key": "a/c/0", "path": "/data/2024/x.nc", "offset": 8, "length": 1},
    ...     {"key": "a/c/1", "path": "/data/y.nc", "offset": 8, "length": 1}]))
    ['file:///data/']
    """
    return _prefixes(_plan(manifest, None, lengths_needed=False), manifest)


def to_icechunk_repo(
    manifest: Manifest,
    location: str | os.PathLike[str] | Any,
    *,
    lengths: Mapping[str, int] | None = None,
    message: str = "kvmap convert",
    branch: str = "main",
    containers: Mapping[str, Any] | None = None,
) -> str:
    """Create an Icechunk repository at ``location`` holding ``manifest``; return the snapshot id.

    ``location`` is a local path, a ``file://``, ``s3://`` or ``gs://`` URL, or an
    ``icechunk.Storage`` (see the module: **Repository locations**); a repository must not
    exist there. Its configuration gets one virtual chunk container per prefix of
    :func:`virtual_chunk_prefixes`, with the store config of ``containers[prefix]`` or the
    default of its scheme, plus any other prefix in ``containers``. The manifest is written as
    :func:`to_icechunk` writes it and committed to ``branch`` (made from the first snapshot if
    it is not ``main``) with ``message``. A manifest that writes nothing commits nothing: the
    id is that of the repository's first snapshot.

    Raises :class:`~kvmap.ConvertError` for what :func:`to_icechunk` refuses (checked before
    the repository is created), a location it cannot use, a prefix without a store config, or
    an Icechunk failure (a repository already there, say); :class:`~kvmap.MissingDependencyError`
    without Icechunk.

    >>> import icechunk
    >>> storage = icechunk.in_memory_storage()
    >>> snapshot = to_icechunk_repo(Manifest.from_json([{"key": "zarr.json", "json": {"zarr_format": 3,
    ...     "node_type": "group"}}]), storage, message="a group")
    >>> icechunk.Repository.open(storage).lookup_branch("main") == snapshot
    True
    """
    ic = _icechunk()
    name = manifest.name or manifest.url
    plan = _plan(manifest, lengths)
    prefixes = _prefixes(plan, manifest)
    storage = _storage(ic, location, name, ConvertError)
    config = ic.RepositoryConfig.default()
    extra = dict(containers or {})
    for prefix in [*prefixes, *(p for p in extra if p not in prefixes)]:
        store_config = extra[prefix] if prefix in extra else _default_store(ic, prefix, name)
        try:
            config.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, store_config))
        except (ic.IcechunkError, ValueError, TypeError) as exc:
            reason = f"Icechunk refuses a virtual chunk container for {prefix!r}: {exc}"
            raise ConvertError(reason, manifest=name) from None
    try:
        repo = ic.Repository.create(storage, config=config)
        if branch != "main":
            repo.create_branch(branch, repo.lookup_branch("main"))
        session = repo.writable_session(branch)
    except (ic.IcechunkError, ValueError) as exc:
        raise ConvertError(f"cannot create the Icechunk repository at {location!r}: {exc}", manifest=name) from None
    _check_containers(plan, session.store, manifest)
    _write(ic, plan, session.store, manifest)
    if not session.has_uncommitted_changes:
        return str(repo.lookup_branch(branch))
    try:
        return str(session.commit(message))
    except (ic.IcechunkError, ValueError) as exc:
        raise ConvertError(f"Icechunk refused the commit: {exc}", manifest=name) from None


def _writable_store(ic: Any, store: Any, manifest: Manifest) -> Any:
    if isinstance(store, ic.Session):
        store = store.store
    if not isinstance(store, ic.IcechunkStore):
        raise ConvertError(
            f"to_icechunk writes into an Icechunk store or session, not {type(store).__name__}",
            manifest=manifest.name or manifest.url,
        )
    if store.read_only:
        raise ConvertError(
            "the Icechunk store is read-only: write into repo.writable_session(branch).store",
            manifest=manifest.name or manifest.url,
        )
    return store


def _plan(manifest: Manifest, lengths: Mapping[str, int] | None, *, lengths_needed: bool = True) -> _Plan:
    """Check every entry and sort the winning references into metadata and chunks."""
    name = manifest.name or manifest.url
    with paused_gc():
        refs = exact_refs(manifest, "Icechunk")
        # Pinned entries are never in the bulk columns: the others are all there is to look at.
        etags = {i: e.pins.etag for i, e in manifest.split()[1] if e.pins is not None and e.pins.etag is not None}
        metadata: list[tuple[str, bytes]] = []
        arrays: dict[str, _Array] = {}
        for key, ref in refs.items():
            leaf = key.rpartition("/")[2]
            if leaf in _V2_METADATA:
                raise ConvertError(
                    f"key {key!r} is zarr v2 metadata; Icechunk stores zarr v3 hierarchies only",
                    manifest=name,
                    entry=ref.entry,
                    field="key",
                )
            if leaf != "zarr.json":
                continue
            if ref.data is None:
                raise ConvertError(
                    f"metadata key {key!r} names {ref.url!r}; Icechunk keeps metadata in its snapshots, "
                    "so it must be inline (kvmap convert --materialize reads it)",
                    manifest=name,
                    entry=ref.entry,
                    field="path",
                )
            metadata.append((key, ref.data))
            described = _array_of(key[: -len("zarr.json")].rstrip("/"), _parse_metadata(ref.data), name, ref.entry)
            if described is not None:
                arrays[described.prefix] = described
        metadata.sort(key=lambda item: (item[0].count("/"), item[0]))
        _refuse_nested(arrays, refs, name)
        locations: dict[str, int] = {}
        array: _Array | None = None
        for key, ref in refs.items():
            if key.endswith("zarr.json") and (len(key) == 9 or key[-10] == "/"):
                continue
            # Keys come array by array: try the last one first.
            if array is None or not key.startswith(array.prefix):
                array = _array_for(key, arrays)
            index = None if array is None else array.decode(key[len(array.prefix) :])
            if array is None or index is None or (ref.data is not None and not array.inside(index)):
                raise _stray(key, ref, name)
            if ref.data is not None:
                if not ref.data:
                    raise _empty(key, ref, name, "data")
                array.native.append((key, ref.data))
                continue
            assert ref.url is not None
            offset = ref.offset or 0
            length = ref.length
            if length is None:
                length = _given_length(key, ref, lengths, name) if lengths_needed else 1
            if length == 0:
                raise _empty(key, ref, name, "length")
            if etags and ref.entry in etags:
                array.etags[len(array.coords)] = etags[ref.entry]
            array.coords.append(index)
            array.locations.append(ref.url)
            array.offsets.append(offset)
            array.lengths.append(length)
            array.entries.append(ref.entry)
            locations.setdefault(ref.url, ref.entry)
        for array in arrays.values():
            _check_grid(array, refs, name)
    return _Plan(metadata, list(arrays.values()), locations)


def _stray(key: str, ref: Ref, name: str | None) -> ConvertError:
    return ConvertError(
        f"key {key!r} is neither zarr.json nor a chunk key of an array in the manifest "
        "(spelled as zarr spells it, inside the chunk grid); Icechunk holds nothing else",
        manifest=name,
        entry=ref.entry,
        field="key",
    )


def _check_grid(array: _Array, refs: Mapping[str, Ref], name: str | None) -> None:
    """Refuse the first virtual chunk of ``array`` outside its grid (all checked at once)."""
    if not array.coords or not array.grid:
        return
    coords = np.array(array.coords, dtype=np.int64)
    outside = ~((coords >= 0) & (coords < np.array(array.grid))).all(axis=1)
    if outside.any():
        first = int(np.argmax(outside))
        key = array.key_template().format(*array.coords[first])
        raise _stray(key, refs[key], name)


def _refuse_nested(arrays: Mapping[str, _Array], refs: Mapping[str, Ref], name: str | None) -> None:
    """Refuse an array below another (zarr has none; it would make chunk keys ambiguous)."""
    prefixes = sorted(arrays)
    for outer, inner in itertools.pairwise(prefixes):
        if inner.startswith(outer):
            key = inner + "zarr.json"
            raise ConvertError(
                f"array {inner[:-1]!r} lies inside array {outer[:-1] or '/'!r}; zarr arrays hold no nodes",
                manifest=name,
                entry=refs[key].entry,
                field="key",
            )


def _empty(key: str, ref: Ref, name: str | None, field_name: str) -> ConvertError:
    return ConvertError(
        f"the value of {key!r} is empty; no zarr chunk decodes from zero bytes and Icechunk refuses them",
        manifest=name,
        entry=ref.entry,
        field=field_name,
    )


def _given_length(key: str, ref: Ref, lengths: Mapping[str, int] | None, name: str | None) -> int:
    value = None if lengths is None else lengths.get(key)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    whole = "the whole object" if ref.offset is None else f"{ref.url!r} from byte {ref.offset} to its end"
    reason = (
        f"Icechunk needs the length of each virtual chunk; the entry of {key!r} names {whole}, "
        f"and `lengths` has no length for {key!r}"
        if value is None
        else f"lengths[{key!r}] must be a non-negative integer, not {value!r}"
    )
    raise ConvertError(reason, manifest=name, entry=ref.entry, field="length")


def _array_of(path: str, meta: Any, name: str | None, entry: int | None) -> _Array | None:
    """The array a parsed ``zarr.json`` describes (``None`` for a group); refuse what is not
    zarr v3 metadata, or an array whose chunks Icechunk could not address."""
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") not in ("array", "group"):
        raise ConvertError(
            f"{path + '/zarr.json' if path else 'zarr.json'} is not zarr v3 metadata of a group or an array",
            manifest=name,
            entry=entry,
            field=None if entry is None else "json",
        )
    if meta["node_type"] == "group":
        return None

    def refuse(what: str) -> ConvertError:
        return ConvertError(
            f"array {path or '/'!r}: {what}", manifest=name, entry=entry, field=None if entry is None else "json"
        )

    shape = meta.get("shape")
    grid = meta.get("chunk_grid")
    if not (isinstance(grid, dict) and grid.get("name") == "regular" and isinstance(grid.get("configuration"), dict)):
        raise refuse("Icechunk needs a regular chunk grid")
    chunk_shape = grid["configuration"].get("chunk_shape")
    if not (
        isinstance(shape, list)
        and isinstance(chunk_shape, list)
        and len(shape) == len(chunk_shape)
        and all(type(s) is int and s >= 0 for s in shape)
        and all(type(c) is int and c > 0 for c in chunk_shape)
    ):
        raise refuse("its shape and chunk shape are not lists of integers of one length")
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    if isinstance(encoding, str):
        encoding = {"name": encoding}
    configuration = encoding.get("configuration") if isinstance(encoding, dict) else None
    separator = (configuration if isinstance(configuration, dict) else {}).get("separator", "/")
    if not isinstance(encoding, dict) or encoding.get("name") != "default" or separator != "/":
        raise refuse(f"Icechunk serves the 'default' chunk key encoding with separator '/' only, not {encoding!r}")
    return _Array(path, tuple(math.ceil(s / c) for s, c in zip(shape, chunk_shape, strict=True)))


def _array_for(key: str, arrays: Mapping[str, _Array]) -> _Array | None:
    """The array whose prefix ``key`` starts with (at most one: none lies inside another)."""
    array = arrays.get("")
    if array is not None:
        return array
    cut = key.find("/")
    while cut >= 0:
        array = arrays.get(key[: cut + 1])
        if array is not None:
            return array
        cut = key.find("/", cut + 1)
    return None


def _prefixes(plan: _Plan, manifest: Manifest) -> list[str]:
    name = manifest.name or manifest.url
    found = set()
    for url, entry in plan.locations.items():
        prefix = _prefix(url)
        if prefix is None:
            raise ConvertError(
                f"no Icechunk virtual chunk container can hold {url!r} "
                "(Icechunk reads file, s3, gs, az and http(s) URLs)",
                manifest=name,
                entry=entry,
                field="path",
            )
        found.add(prefix)
    out: list[str] = []
    for prefix in sorted(found):  # a directory sorts before those inside it
        if not out or not prefix.startswith(out[-1]):
            out.append(prefix)
    return out


def _prefix(url: str) -> str | None:
    """The container prefix of one location (``None``: no Icechunk container can hold it)."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        path = re.split(r"[?#]", rest, maxsplit=1)[0]
        return f"file://{path[: path.rfind('/') + 1]}" if path.startswith("/") else None  # no host
    if scheme in _AUTHORITY_SCHEMES:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        return f"{scheme}://{authority}/" if authority else None
    return None


def _default_store(ic: Any, prefix: str, name: str | None) -> Any:
    scheme = prefix.partition("://")[0]
    if scheme == "file":
        return ic.local_filesystem_store(url2pathname(urlsplit(prefix).path))
    if scheme == "s3":
        return ic.s3_store()
    if scheme in ("gs", "gcs"):
        return ic.gcs_store()
    if scheme in ("http", "https"):
        return ic.http_store()
    raise ConvertError(
        f"kvmap has no default Icechunk store for {prefix!r} (an Azure store needs its account): "
        f"give one in containers={{{prefix!r}: icechunk.azure_store(account=...)}}",
        manifest=name,
    )


def _storage(ic: Any, location: Any, name: str | None, error: type[ManifestError]) -> Any:
    """The ``icechunk.Storage`` of a repository location (see the module)."""
    if isinstance(location, ic.Storage):
        return location
    if isinstance(location, os.PathLike):
        return ic.local_filesystem_storage(os.path.abspath(os.fspath(location)))
    if not isinstance(location, str) or not location:
        raise error(
            f"an Icechunk repository location is a path, a URL or an icechunk.Storage, not {location!r}", manifest=name
        )
    parts = urlsplit(location)
    scheme = parts.scheme.lower() if "://" in location else ""  # C:\\x is a path
    if not scheme:
        return ic.local_filesystem_storage(os.path.abspath(os.path.expanduser(location)))
    if scheme == "file":
        return ic.local_filesystem_storage(url2pathname(parts.path))
    if scheme in ("s3", "gs", "gcs") and parts.netloc:
        make = ic.s3_storage if scheme == "s3" else ic.gcs_storage
        return make(bucket=parts.netloc, prefix=unquote(parts.path).strip("/") or None, from_env=True)
    raise error(
        f"kvmap opens Icechunk repositories at local paths and file, s3 and gs URLs, not {location!r}: "
        "pass an icechunk.Storage for any other",
        manifest=name,
    )


def _check_containers(plan: _Plan, store: Any, manifest: Manifest) -> None:
    """Refuse, before any write, a location that no container of the session covers."""
    if not plan.locations:
        return
    containers = store.session.config.virtual_chunk_containers or {}
    prefixes = tuple(containers)
    for url, entry in plan.locations.items():
        if not url.startswith(prefixes):
            needed = _prefix(url)
            raise ConvertError(
                f"no virtual chunk container of the repository covers {url!r}"
                + (f" (add one for {needed!r})" if needed else ""),
                manifest=manifest.name or manifest.url,
                entry=entry,
                field="path",
            )


def _write(ic: Any, plan: _Plan, store: Any, manifest: Manifest) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    name = manifest.name or manifest.url
    buffer = default_buffer_prototype().buffer

    async def put(items: Sequence[tuple[str, bytes]]) -> None:
        for start in range(0, len(items), _READ_BATCH):
            batch = items[start : start + _READ_BATCH]
            await asyncio.gather(*(store.set(key, buffer.from_bytes(value)) for key, value in batch))

    def refused(what: str, exc: BaseException, entry: int | None = None) -> ConvertError:
        return ConvertError(f"Icechunk refused {what}: {exc}", manifest=name, entry=entry)

    for key, value in plan.metadata:
        try:
            sync(store.set(key, buffer.from_bytes(value)))
        except (ic.IcechunkError, ValueError) as exc:
            raise refused(f"the metadata {key!r}", exc) from None
    for array in plan.arrays:
        try:
            sync(put(array.native))
        except (ic.IcechunkError, ValueError) as exc:
            raise refused(f"a chunk of array {array.node!r}", exc) from None
        if array.coords:
            try:
                failed = _set_virtual(ic, store, array)
            except (ic.IcechunkError, ValueError) as exc:
                raise refused(f"the virtual chunks of array {array.node!r}", exc) from None
            if failed:
                where = {c: e for c, e in zip(array.coords, array.entries, strict=True)}
                index = tuple(int(i) for i in failed[0])
                raise ConvertError(
                    f"Icechunk refused the virtual chunk {index} of array {array.node!r}: "
                    "no virtual chunk container covers its location",
                    manifest=name,
                    entry=where.get(index),
                    field="path",
                )


def _set_virtual(ic: Any, store: Any, array: _Array) -> list[Any]:
    """Write the array's virtual references; return the indices Icechunk refused."""
    n = len(array.coords)
    if array.grid and hasattr(store, "set_virtual_refs_arr") and not array.etags:
        coords = np.array(array.coords, dtype=np.int64).reshape(n, len(array.grid))
        low, high = coords.min(axis=0), coords.max(axis=0) + 1
        box = tuple(int(s) for s in high - low)
        size = math.prod(box)
        if size <= 4 * n + 1024:  # dense enough: whole columns beat one object per reference
            flat = np.ravel_multi_index(tuple((coords - low).T), box)
            locations = [""] * size  # "": no reference (Icechunk skips it)
            for i, url in zip(flat.tolist(), array.locations, strict=True):
                locations[i] = url
            offsets = np.zeros(size, dtype=np.uint64)
            lengths = np.zeros(size, dtype=np.uint64)
            offsets[flat] = array.offsets
            lengths[flat] = array.lengths
            origin = tuple(int(i) for i in low)
            shift = {"arr_offset": origin} if any(origin) else {}  # (only where the box does not start at 0)
            failed = store.set_virtual_refs_arr(
                array.node, box, locations, offsets, lengths, validate_containers=True, **shift
            )
            return list(failed or [])
    failed_all: list[Any] = []
    for start in range(0, n, _SPEC_BATCH):
        specs = [
            ic.VirtualChunkSpec(list(index), url, offset, length, etag_checksum=array.etags.get(k))
            for k, index, url, offset, length in zip(
                range(start, start + _SPEC_BATCH),
                array.coords[start : start + _SPEC_BATCH],
                array.locations[start : start + _SPEC_BATCH],
                array.offsets[start : start + _SPEC_BATCH],
                array.lengths[start : start + _SPEC_BATCH],
                strict=False,
            )
        ]
        failed_all.extend(store.set_virtual_refs(array.node, specs, validate_containers=True) or [])
    return failed_all


# -- reading ---------------------------------------------------------------------------------------


def from_icechunk(
    store_or_session: Any, *, url: str | None = None, name: str | None = None, batch_size: int = 100_000
) -> Manifest:
    """The kvmap manifest of the Icechunk snapshot an ``IcechunkStore`` or ``Session`` shows.

    Each group and array gives its ``zarr.json`` (inline) and each chunk one entry (see the
    module: **Reading**). ``url`` is the manifest's URL and ``name`` what errors call it;
    chunk references are read ``batch_size`` at a time. A store or session does not say where
    its repository is, so the checksums of virtual references are not read (no ``etag``
    pins): :func:`from_icechunk_repo` reads them.

    Raises :class:`~kvmap.MissingDependencyError` without Icechunk, or with Icechunk 1.x for a
    snapshot that has virtual chunks; :class:`~kvmap.ManifestError` for something that is not
    an Icechunk store or session, or metadata that is not zarr v3.

    >>> import icechunk, zarr
    >>> session = icechunk.Repository.create(icechunk.in_memory_storage()).writable_session("main")
    >>> zarr.create_array(session.store, name="x", shape=(2,), chunks=(1,), dtype="u1", compressors=None)[:] = 7
    >>> [e.to_json() for e in from_icechunk(session).entries if e.target == "data"]
    [{'key': 'x/c/0', 'data': 'Bw=='}, {'key': 'x/c/1', 'data': 'Bw=='}]
    """
    return _from_session(store_or_session, url, name, batch_size, None).manifest


@dataclass(frozen=True, slots=True)
class IcechunkRead:
    """A snapshot read as a manifest (:func:`read_icechunk_repo`), and ``unkept``: how many of
    its virtual references carry a ``last_updated_at`` checksum, which no kvmap pin can say
    (their entries have no pin)."""

    manifest: Manifest
    unkept: int = 0


def from_icechunk_repo(
    location: str | os.PathLike[str] | Any,
    *,
    branch: str = "main",
    tag: str | None = None,
    snapshot_id: str | None = None,
    url: str | None = None,
    name: str | None = None,
) -> Manifest:
    """The kvmap manifest of a snapshot of the Icechunk repository at ``location``.

    ``location`` is as for :func:`to_icechunk_repo`. The snapshot is ``snapshot_id`` if given,
    else the one ``tag`` names, else the tip of ``branch``. No virtual chunk container needs
    authorizing: references are read, not the data they name. ``url`` and ``name`` are as for
    :func:`from_icechunk`. For a local path or a ``file``, ``s3`` or ``gs`` URL, virtual
    references are read from the repository's files, with their checksums: an ETag checksum
    becomes the entry's ``etag`` pin, a ``last_updated_at`` one is not kept (see the module:
    **Reading**; :func:`read_icechunk_repo` counts them).

    Raises :class:`~kvmap.ManifestError` when the repository or snapshot cannot be opened, or
    its files cannot be read or are not Icechunk's, and what :func:`from_icechunk` raises
    (but for Icechunk 1.x and virtual chunks, when it reads the repository's files).

    >>> import icechunk
    >>> storage = icechunk.in_memory_storage()
    >>> group = {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {"v": 1}}}
    >>> _ = to_icechunk_repo(Manifest.from_json([group]), storage)
    >>> from_icechunk_repo(storage).entries[0].to_json() == group
    True
    """
    return read_icechunk_repo(location, branch=branch, tag=tag, snapshot_id=snapshot_id, url=url, name=name).manifest


def read_icechunk_repo(
    location: str | os.PathLike[str] | Any,
    *,
    branch: str = "main",
    tag: str | None = None,
    snapshot_id: str | None = None,
    url: str | None = None,
    name: str | None = None,
) -> IcechunkRead:
    """:func:`from_icechunk_repo`, and how many ``last_updated_at`` checksums it did not keep
    (:class:`IcechunkRead`); raises what :func:`from_icechunk_repo` raises."""
    ic = _icechunk()
    doc = name if name is not None else (url or (location if isinstance(location, str) else None))
    storage = _storage(ic, location, doc, ManifestError)
    try:
        repo = ic.Repository.open(storage)
        if snapshot_id is not None:
            session = repo.readonly_session(snapshot_id=snapshot_id)
        elif tag is not None:
            session = repo.readonly_session(tag=tag)
        else:
            session = repo.readonly_session(branch=branch)
    except (ic.IcechunkError, ValueError) as exc:
        raise ManifestError(f"cannot open the Icechunk repository at {location!r}: {exc}", manifest=doc) from None
    # A read-only session shows its snapshot as the files hold it: they may be read alongside.
    return _from_session(session, url, doc, 100_000, _repository_files(ic, location, doc))


def _from_session(
    store_or_session: Any,
    url: str | None,
    name: str | None,
    batch_size: int,
    files: Callable[[str], bytes] | None,
) -> IcechunkRead:
    """The manifest of the snapshot a store or session shows; ``files`` reads the repository's
    own files (``snapshots/ID``), ``None``: they cannot be reached."""
    ic = _icechunk()
    doc = name if name is not None else url
    if isinstance(store_or_session, ic.Session):
        session, store = store_or_session, store_or_session.store
    elif isinstance(store_or_session, ic.IcechunkStore):
        session, store = store_or_session.session, store_or_session
    else:
        raise ManifestError(
            f"from_icechunk reads an Icechunk store or session, not {type(store_or_session).__name__}", manifest=doc
        )
    iterate = hasattr(store, "array_chunk_iterator")
    try:
        locations = session.all_virtual_chunk_locations()
    except (ic.IcechunkError, ValueError) as exc:
        raise ManifestError(f"Icechunk cannot read the snapshot's manifests: {exc}", manifest=doc) from None
    stored = None
    if locations and files is not None:
        stored = _stored_refs(files, session.snapshot_id, doc)
    if locations and not iterate and stored is None:
        raise MissingDependencyError(
            f"this Icechunk snapshot has virtual chunks (in {sorted(set(locations))[0]!r}...), and "
            f"Icechunk {ic.__version__} cannot say where each one is (its Python API lists only the "
            "URLs a snapshot references); from_icechunk_repo reads them from a repository named by its "
            "path or URL, and Icechunk 2.0.5 or later from a session, which needs Python 3.12 or later: "
            "pip install 'icechunk>=2.0.5'"
        )
    from zarr.core.sync import sync

    with paused_gc():
        entries, unkept = sync(_snapshot_entries(session, store, doc, batch_size, iterate, stored))
        return IcechunkRead(Manifest.from_json(entries, url, name=doc), unkept)


async def _snapshot_entries(
    session: Any,
    store: Any,
    doc: str | None,
    batch_size: int,
    iterate: bool,
    stored: dict[str, dict[tuple[int, ...], _Stored]] | None,
) -> tuple[list[Any], int]:
    """The entries of the snapshot, and how many ``last_updated_at`` checksums they leave out.
    ``stored``: its virtual references as the repository's files hold them (``None``: not read;
    then, with Icechunk 1.x, it has none)."""
    from zarr.core.buffer import default_buffer_prototype

    prototype = default_buffer_prototype()
    entries: list[dict[str, Any]] = []
    unkept = 0

    async def read(key: str) -> bytes:
        value = await store.get(key, prototype)
        if value is None:  # listed a moment ago: a snapshot does not change
            raise ManifestError(f"Icechunk lists {key!r} but has no value for it", manifest=doc)
        data: bytes = value.to_bytes()
        return data

    async def native(keys: list[str]) -> None:
        for start in range(0, len(keys), _READ_BATCH):
            batch = keys[start : start + _READ_BATCH]
            for key, data in zip(batch, await asyncio.gather(*map(read, batch)), strict=True):
                entries.append({"key": key, "data": base64.b64encode(data).decode("ascii")})

    def checksum(entry: dict[str, Any], ref: _Stored | None) -> dict[str, Any]:
        """``entry`` with the pin of ``ref``'s checksum (an ETag); a modification time has none."""
        nonlocal unkept
        if ref is not None:
            if ref.etag is not None:
                entry["etag"] = ref.etag
            elif ref.last_modified is not None:
                unkept += 1
        return entry

    if not await store.exists("zarr.json"):
        return entries, unkept  # an empty repository (or one whose root was deleted)
    pending = [""]
    while pending:
        path = pending.pop(0)
        prefix = path + "/" if path else ""
        text = await read(prefix + "zarr.json")
        entries.append({"key": prefix + "zarr.json", **_metadata_value(text)})
        array = _array_of(path, _parse_metadata(text), doc, None)
        if array is None:  # a group
            children = sorted([child async for child in store.list_dir(prefix) if child != "zarr.json"])
            pending[:0] = [prefix + child for child in children]
            continue
        template = array.key_template()
        refs = stored.get(array.path, {}) if stored is not None else {}
        if iterate:
            async for coords, kinds, paths, offsets, lengths, inlined in store.array_chunk_iterator(
                array.node, batch_size
            ):
                if not len(kinds):
                    continue
                rows = np.asarray(coords).reshape(len(kinds), len(array.grid))
                columns = rows.T.tolist()
                keys = list(map(template.format, *columns)) if columns else [template] * len(kinds)
                indices = list(map(tuple, rows.tolist())) if refs else None
                offset_list, length_list = np.asarray(offsets).tolist(), np.asarray(lengths).tolist()
                fetch = []
                for i, kind in enumerate(np.asarray(kinds).tolist()):
                    if kind == _VIRTUAL:
                        entry = {"key": keys[i], "path": paths[i], "offset": offset_list[i], "length": length_list[i]}
                        entries.append(checksum(entry, None if indices is None else refs.get(indices[i])))
                    elif kind == _INLINE:
                        entries.append({"key": keys[i], "data": base64.b64encode(inlined[i]).decode("ascii")})
                    else:  # native: its bytes (see the module)
                        fetch.append(keys[i])
                await native(fetch)
        else:  # Icechunk 1.x: virtual chunks from the files (stored), the others' bytes
            # 1.x lists a chunk changed in a writable session twice (the change and the base).
            listed = dict.fromkeys([tuple(index) async for index in session.chunk_coordinates(array.node, batch_size)])
            for index, ref in refs.items():
                if index not in listed:
                    continue
                if ref.location is None or "://" not in ref.location:
                    raise ManifestError(
                        f"the virtual chunk {index} of array {array.node!r} has no absolute location in "
                        "the repository's manifest file",
                        manifest=doc,
                    )
                key = template.format(*index)
                entries.append(
                    checksum({"key": key, "path": ref.location, "offset": ref.offset, "length": ref.length}, ref)
                )
            await native([template.format(*index) for index in listed if index not in refs])
    return entries, unkept


def _parse_metadata(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        import json

        try:
            return json.loads(text)  # zarr writes NaN attributes as NaN
        except ValueError:
            return None


def _metadata_value(text: bytes) -> dict[str, Any]:
    """A ``zarr.json`` as an entry target: ``json`` if its text is strict JSON, else its bytes."""
    try:
        return {"json": orjson.loads(text)}
    except orjson.JSONDecodeError:
        return {"data": base64.b64encode(text).decode("ascii")}


# -- Icechunk's own files: what a virtual reference checks -------------------------------------
#
# Icechunk's Python API does not show a virtual reference's checksum (``array_chunk_iterator``
# leaves it out, and 1.x shows no reference at all), so kvmap reads the repository's snapshot
# and manifest files, whose layout Icechunk publishes (its spec, versions 1 and 2, and the
# flatbuffers IDL ``snapshot.fbs`` and ``manifest.fbs``). Only the fields below are read, and
# their places are the same in both versions. Icechunk itself has decompressed the same files
# by the time kvmap reads them (opening the snapshot, listing its chunks), so they add no input
# kvmap would not otherwise take.

_MAGIC = "ICE\N{ICE CUBE}CHUNK".encode()
_HEADER_LEN = 39  # the magic (12 bytes), the implementation's name (24), spec version, file type, compression
_SPEC_VERSIONS = (1, 2)
_SNAPSHOT_FILE, _MANIFEST_FILE = 1, 2
_FILE_NAMES = {_SNAPSHOT_FILE: "snapshot", _MANIFEST_FILE: "manifest"}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # object ids in file names: base 32, Crockford's digits
_U8, _U16, _I32, _U32, _U64 = (struct.Struct(f) for f in ("<B", "<H", "<i", "<I", "<Q"))

# Field slots (declaration order; a union takes two: its type, then its value).
_SNAPSHOT_NODES = 2
_NODE_ID, _NODE_PATH, _NODE_DATA_TYPE, _NODE_DATA = 0, 1, 3, 4
_NODE_ARRAY = 1  # NodeData's union tag of ArrayNodeData
_ARRAY_MANIFESTS = 2
_MANIFEST_REF_ID, _MANIFEST_REF_EXTENTS = 0, 1
_MANIFEST_ARRAYS = 1
_ARRAY_MANIFEST_NODE, _ARRAY_MANIFEST_REFS = 0, 1
_REF_INDEX, _REF_OFFSET, _REF_LENGTH, _REF_LOCATION = 0, 2, 3, 5
_REF_ETAG, _REF_LAST_MODIFIED, _REF_COMPRESSED_LOCATION = 6, 7, 8


class _Stored(NamedTuple):
    """A virtual chunk reference as the repository's manifest file holds it. ``location`` is
    ``None`` where the file holds it compressed (spec 2; Icechunk's API gives it then)."""

    location: str | None
    offset: int
    length: int
    etag: str | None  # the object's ETag, which Icechunk checks when it reads the chunk
    last_modified: int | None  # or: the time (seconds since the epoch) it must not be modified after


def _u(fmt: struct.Struct, buf: bytes, pos: int) -> int:
    if pos < 0:  # unpack_from counts a negative position from the end
        raise ValueError(f"position {pos}")
    value: int = fmt.unpack_from(buf, pos)[0]
    return value


class _Table:
    """A flatbuffers table: the one at ``pos`` of ``buf`` (wire format: flatbuffers.dev/internals)."""

    __slots__ = ("buf", "fields", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - _u(_I32, buf, pos)
        size = _u(_U16, buf, vtable)
        # Each field's offset in the table (0: absent, so it has its default), read at once.
        self.fields: tuple[int, ...] = struct.unpack_from(f"<{max(size - 4, 0) // 2}H", buf, vtable + 4)

    @classmethod
    def root(cls, buf: bytes) -> _Table:
        return cls(buf, _u(_U32, buf, 0))

    def _at(self, slot: int) -> int:
        """Where field ``slot`` is (0: absent)."""
        fields = self.fields
        offset = fields[slot] if slot < len(fields) else 0
        return self.pos + offset if offset else 0

    def scalar(self, slot: int, fmt: struct.Struct) -> int:
        at = self._at(slot)
        return _u(fmt, self.buf, at) if at else 0

    def _vector(self, slot: int) -> tuple[int, int] | None:
        """Where the elements of vector (or string) field ``slot`` start, and how many there are."""
        at = self._at(slot)
        if not at:
            return None
        start = at + _u(_U32, self.buf, at)
        return start + 4, _u(_U32, self.buf, start)

    def string(self, slot: int) -> str | None:
        found = self._vector(slot)
        if found is None:
            return None
        start, n = found
        if start + n > len(self.buf):
            raise ValueError("a string past the end")
        return self.buf[start : start + n].decode("utf-8")

    def fixed(self, slot: int, size: int) -> bytes | None:
        """Struct field ``slot`` (stored in the table) of ``size`` bytes, as bytes."""
        at = self._at(slot)
        if not at:
            return None
        if at + size > len(self.buf):
            raise ValueError("a struct past the end")
        return self.buf[at : at + size]

    def structs(self, slot: int, fmt: struct.Struct) -> list[tuple[Any, ...]]:
        found = self._vector(slot)
        if found is None:
            return []
        start, n = found
        return [fmt.unpack_from(self.buf, start + fmt.size * i) for i in range(n)]

    def table(self, slot: int) -> _Table | None:
        at = self._at(slot)
        return _Table(self.buf, at + _u(_U32, self.buf, at)) if at else None

    def tables(self, slot: int) -> list[_Table]:
        found = self._vector(slot)
        if found is None:
            return []
        start, n = found
        buf = self.buf
        offsets = struct.unpack_from(f"<{n}I", buf, start)
        return [_Table(buf, start + 4 * i + offset) for i, offset in enumerate(offsets)]


_EXTENT = struct.Struct("<II")  # ChunkIndexRange: from (inclusive), to (exclusive)


def _object_id(raw: bytes) -> str:
    """An Icechunk object id as its file names spell it (Crockford's base 32, no padding)."""
    bits = len(raw) * 8
    digits = -(-bits // 5)
    value = int.from_bytes(raw, "big") << (digits * 5 - bits)
    return "".join(_CROCKFORD[(value >> (5 * (digits - 1 - i))) & 31] for i in range(digits))


def _file_body(data: bytes, kind: int, name: str, doc: str | None) -> bytes:
    """The flatbuffer an Icechunk file holds (after its header, decompressed)."""

    def bad(reason: str) -> ManifestError:
        return ManifestError(f"the Icechunk {_FILE_NAMES[kind]} file {name!r} {reason}", manifest=doc)

    if len(data) < _HEADER_LEN or not data.startswith(_MAGIC):
        raise bad("does not start with Icechunk's header")
    version, found, compression = data[_HEADER_LEN - 3 : _HEADER_LEN]
    if version not in _SPEC_VERSIONS:
        raise bad(f"is of Icechunk spec version {version}; kvmap reads versions 1 and 2")
    if found != kind:
        raise bad(f"is of file type {found}, not {kind}")
    body = data[_HEADER_LEN:]
    if compression == 0:
        return body
    if compression != 1:
        raise bad(f"is compressed with algorithm {compression}, which kvmap does not know (1 is zstd)")
    from numcodecs import Zstd  # type: ignore[import-untyped,unused-ignore]  # (zarr's own dependency)

    try:
        return bytes(Zstd().decode(body))
    except RuntimeError as exc:
        raise bad(f"does not decompress: {exc}") from None


def _stored_refs(
    read: Callable[[str], bytes], snapshot_id: str, doc: str | None
) -> dict[str, dict[tuple[int, ...], _Stored]]:
    """The virtual references of the snapshot ``snapshot_id``, read from the repository's files
    (``read(name)``: the bytes of ``snapshots/ID``, ``manifests/ID``): array path (``""``, ``a/b``)
    -> chunk index -> reference, in the order of the files. Only the references inside each
    manifest's extents for the array count (a manifest may hold others).

    Raises :class:`~kvmap.ManifestError` for a file that cannot be read or is not what
    Icechunk writes."""
    out: dict[str, dict[tuple[int, ...], _Stored]] = {}
    name = f"snapshots/{snapshot_id}"
    try:
        snapshot = _Table.root(_file_body(read(name), _SNAPSHOT_FILE, name, doc))
        wanted: dict[str, list[tuple[bytes, str, list[tuple[Any, ...]]]]] = {}  # manifest id -> its arrays
        for node in snapshot.tables(_SNAPSHOT_NODES):
            if node.scalar(_NODE_DATA_TYPE, _U8) != _NODE_ARRAY:
                continue
            node_id, path, data = node.fixed(_NODE_ID, 8), node.string(_NODE_PATH), node.table(_NODE_DATA)
            if node_id is None or path is None or data is None:
                raise ValueError("an array node without its id, path or data")
            for pointer in data.tables(_ARRAY_MANIFESTS):
                raw_id = pointer.fixed(_MANIFEST_REF_ID, 12)
                if raw_id is None:
                    raise ValueError("a manifest reference without its id")
                extents = pointer.structs(_MANIFEST_REF_EXTENTS, _EXTENT)
                wanted.setdefault(_object_id(raw_id), []).append((node_id, path.strip("/"), extents))
        for manifest_id, arrays in wanted.items():
            name = f"manifests/{manifest_id}"
            manifest = _Table.root(_file_body(read(name), _MANIFEST_FILE, name, doc))
            by_node = {}
            for array in manifest.tables(_MANIFEST_ARRAYS):
                of = array.fixed(_ARRAY_MANIFEST_NODE, 8)
                if of is None:
                    raise ValueError("an array manifest without its node id")
                by_node[of] = array
            for node_id, path, extents in arrays:
                refs = out.setdefault(path, {})
                found = by_node.get(node_id)
                if found is not None:
                    refs.update(_virtual_refs(found, extents))
    except (ValueError, struct.error, IndexError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"the Icechunk file {name!r} is not what Icechunk writes: {exc}", manifest=doc) from None
    return out


def _virtual_refs(array: _Table, extents: Sequence[tuple[int, int]]) -> dict[tuple[int, ...], _Stored]:
    """The virtual references of an ``ArrayManifest`` table whose index lies inside ``extents``.

    Raises ``ValueError`` or ``struct.error`` for what is not a flatbuffer of Icechunk's."""
    # A manifest may hold millions of references: each is decoded here in one pass, its vtable
    # read at once, rather than through _Table (which costs a few times as much).
    buf = array.buf
    found = array._vector(_ARRAY_MANIFEST_REFS)
    if found is None:
        return {}
    start, n = found
    i32, u16, u32, u64 = _I32.unpack_from, _U16.unpack_from, _U32.unpack_from, _U64.unpack_from
    ndim = len(extents)
    index_of = struct.Struct(f"<{ndim}I").unpack_from
    end = len(buf)
    slots = _REF_COMPRESSED_LOCATION + 1

    def text(at: int) -> str:
        begin = at + u32(buf, at)[0]
        size = u32(buf, begin)[0]
        if begin + 4 + size > end:
            raise ValueError("a string past the end")
        return str(buf[begin + 4 : begin + 4 + size], "utf-8")

    vtables: dict[int, Callable[[bytes, int], tuple[int, ...]]] = {}
    out: dict[tuple[int, ...], _Stored] = {}
    for i, relative in enumerate(struct.unpack_from(f"<{n}I", buf, start)):
        pos = start + 4 * i + relative
        vtable = pos - i32(buf, pos)[0]
        if vtable < 0:
            raise ValueError(f"a vtable at {vtable}")
        count = max(u16(buf, vtable)[0] - 4, 0) // 2
        read_fields = vtables.get(count)
        if read_fields is None:
            read_fields = vtables[count] = struct.Struct(f"<{count}H").unpack_from
        fields = read_fields(buf, vtable + 4)
        if count < slots:
            fields += (0,) * (slots - count)
        if not fields[_REF_LOCATION] and not fields[_REF_COMPRESSED_LOCATION]:
            continue  # a native or inline chunk
        if not fields[_REF_INDEX]:
            raise ValueError("a chunk reference without its index")
        at = pos + fields[_REF_INDEX]
        vector = at + u32(buf, at)[0]
        if u32(buf, vector)[0] != ndim:
            continue  # not a chunk of this grid
        index = index_of(buf, vector + 4)
        inside = True
        for x, (low, high) in zip(index, extents, strict=True):
            if not low <= x < high:
                inside = False
                break
        if not inside:
            continue
        field_at = fields[_REF_OFFSET]
        offset = u64(buf, pos + field_at)[0] if field_at else 0
        field_at = fields[_REF_LENGTH]
        length = u64(buf, pos + field_at)[0] if field_at else 0
        field_at = fields[_REF_LOCATION]
        location = text(pos + field_at) if field_at else None
        field_at = fields[_REF_ETAG]
        etag = text(pos + field_at) if field_at else None
        field_at = fields[_REF_LAST_MODIFIED]
        modified = (u32(buf, pos + field_at)[0] if field_at else 0) or None  # 0: none, as Icechunk reads it
        out[index] = _Stored(location, offset, length, etag, modified)
    return out


def _repository_files(ic: Any, location: Any, doc: str | None) -> Callable[[str], bytes] | None:
    """How to read the objects of the repository at ``location`` by name (``snapshots/ID``):
    the files of a local directory, or the objects under an ``s3://`` or ``gs://`` URL (through
    obstore, its settings from the environment, as Icechunk takes the repository's); ``None``
    for an ``icechunk.Storage``, whose objects kvmap cannot reach."""
    if isinstance(location, ic.Storage):
        return None
    if isinstance(location, os.PathLike):
        return partial(_read_file, os.path.abspath(os.fspath(location)), doc)
    parts = urlsplit(location)
    scheme = parts.scheme.lower() if "://" in location else ""
    if not scheme:
        return partial(_read_file, os.path.abspath(os.path.expanduser(location)), doc)
    if scheme == "file":
        return partial(_read_file, url2pathname(parts.path), doc)
    if scheme in ("s3", "gs", "gcs"):
        from kvmap.roots import Roots

        base = f"{'s3' if scheme == 's3' else 'gs'}://{parts.netloc}{parts.path.rstrip('/')}"
        return partial(_read_object, Roots(), base, doc)
    return None  # _storage refused it already


def _read_file(root: str, doc: str | None, name: str) -> bytes:
    path = os.path.join(root, *name.split("/"))
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ManifestError(
            f"cannot read the Icechunk repository's file {path}: {exc.strerror or exc}", manifest=doc
        ) from None


def _read_object(roots: Any, base: str, doc: str | None, name: str) -> bytes:
    import obstore
    from obstore.exceptions import BaseError

    from kvmap.errors import PipelineError

    url = f"{base}/{name}"
    try:
        store, path = roots.open(url)
        return bytes(obstore.get(store, path).bytes())
    except (OSError, BaseError, PipelineError) as exc:
        raise ManifestError(f"cannot read the Icechunk repository's object {url}: {exc}", manifest=doc) from None
