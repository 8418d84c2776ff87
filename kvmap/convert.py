"""``kvmap convert``: a manifest from one format to another, through the format registry.

The input is read through a :class:`~kvmap.Reader`, so it may be a path or any URL kvmap
reads, and the policy applies to everything it follows. Its format is ``source_format``
(a :data:`kvmap.formats.FORMATS` name), the one its pipeline's last adapter names
(``refs.json|kerchunk:``), or what its content looks like (:mod:`kvmap.detect`: a
directory holding ``.zmetadata`` is kerchunk parquet; a parquet file is a columnar kvmap
manifest; an Icechunk repository is one).
The output's format is ``target_format``, or what its name ends in (``.parq`` →
kerchunk parquet, ``.kvmap.parquet`` → a columnar kvmap manifest, ``.icechunk`` → an
Icechunk repository), else kvmap's own.

Reference formats (kerchunk, kerchunk parquet, chunk manifests, Icechunk) hold one
reference per key. On the way there, an exact entry whose target is a URL pipeline
(``a.zip|zip:c/0``, ``m.json|kvmap:k``) is followed to its final object and window, and
kept if that is exact (a stored zip member, or an entry of a nested manifest), refused
naming the entry if not (a deflated member). Prefix and range entries are refused naming
the entry, unless ``materialize``: then the composite namespace is listed and every key
gets its own reference (what it resolves to now). Formats that need a length for every
reference (chunk manifests, Icechunk) get the size of whole objects, asked for
concurrently.

The output names the same objects from where it is written: relative targets are rewritten
for its location when it is not in the input's directory (:meth:`kvmap.Manifest.rebased`:
targets below the output's directory stay relative, others become absolute URLs).

Local outputs are written atomically (:func:`kvmap.manifest.save_atomically`; a directory
output is built beside its place and renamed into it); remote ones are written object
by object, each object whole. The result says which allow prefixes the written manifest
needs to be read (:func:`kvmap.policy.allow_prefixes`).

**Pins** (spec 3.4: an exact entry's ``etag``, ``version``, ``sha256``). kvmap JSON and
kvmap-parquet hold all three, Icechunk only ``etag`` (as a virtual reference's
``etag_checksum``), kerchunk, kerchunk parquet, chunk manifests and kvstack none
(:data:`KEPT_PINS`). A pin the output cannot hold is dropped — the output still names the same
bytes, but nothing checks them any more — and the result says how many of each were dropped
(:attr:`Converted.dropped_pins`), counted on the entries written: in a format of one reference
per key, the entry that wins each key. Flattening keeps the pins of the entry a key ends at,
but for a ``sha256`` of a window that an outer entry narrows (the pin is of the whole window,
not of the part written): that one is dropped and counted. An Icechunk input's
``last_updated_at`` checksums have no pin form and are counted as dropped too
(:mod:`kvmap.formats.icechunk`). ``kvmap convert`` prints the counts as a note on standard
error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from kvmap.chain import Location
from kvmap.compiled import CompiledMap, compile
from kvmap.detect import looks_like
from kvmap.entries import PIN_FIELDS, Pins
from kvmap.errors import ConvertError, ManifestError, SaveError
from kvmap.formats import (
    ADAPTERS,
    FORMATS,
    Fetch,
    Format,
    columnar_manifest,
    for_adapter,
    for_suffix,
    load_kerchunk,
)
from kvmap.formats._refs import no_single_reference
from kvmap.formats.kvmap_parquet import DEFAULT_BUILD_MEMORY
from kvmap.manifest import Manifest, parse_json, save_atomically
from kvmap.pipeline import Pipeline
from kvmap.places import place_url
from kvmap.policy import allow_prefixes
from kvmap.reader import Reader
from kvmap.url import PIPELINE_SEPARATOR, rebase, resolve_target

__all__ = ["KEPT_PINS", "LAST_UPDATED_AT", "Converted", "convert", "read_manifest"]

#: Output formats that hold one reference per key (what materializing and flattening serve).
_REFERENCE_FORMATS = frozenset(("kerchunk", "kerchunk-parquet", "chunk-manifest", "icechunk"))
#: Output formats whose every reference needs a length.
_NEED_LENGTHS = frozenset(("chunk-manifest", "icechunk"))
_CONCURRENCY = 32
#: A local JSON document larger than this share of the memory budget is streamed when a
#: columnar manifest is built from it: loading one whole holds about seven times its size.
_STREAM_RATIO = 1 / 8
_FIRST_MEMBER = re.compile(rb'\{\s*("(?:[^"\\]|\\.)*")\s*:')
_ZARR_METADATA = frozenset((".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json"))

#: The pin members (spec 3.4) each output format holds; a format not named holds none
#: (kerchunk, kerchunk parquet, chunk manifests and kvstack have no place for them).
#: kvmap-parquet's writer keeps every pin (layout version 2 when there are pins).
KEPT_PINS: Mapping[str, frozenset[str]] = {
    "kvmap": frozenset(PIN_FIELDS),
    "kvmap-parquet": frozenset(PIN_FIELDS),
    "icechunk": frozenset(("etag",)),  # a virtual reference's etag_checksum
}
#: The member of :attr:`Converted.dropped_pins` that counts an Icechunk input's
#: ``last_updated_at`` checksums, which no kvmap pin can say.
LAST_UPDATED_AT = "last_updated_at"


@dataclass(frozen=True, slots=True)
class Converted:
    """What :func:`convert` did: the formats read and written, the references written
    (``entries``), the ``allow`` prefixes a reader of the output needs, and ``dropped_pins``:
    pin member (``etag``, ``version``, ``sha256``) -> how many entries of the output lost that
    pin, because the output format cannot hold it (:data:`KEPT_PINS`) or flattening could not
    keep it (see the module), plus :data:`LAST_UPDATED_AT` -> how many ``last_updated_at``
    checksums of an Icechunk input were not kept. Only members with a count are present:
    empty when nothing was dropped."""

    source_format: str
    target_format: str
    entries: int
    allow: list[str]
    dropped_pins: dict[str, int] = field(default_factory=dict)


def _load_detected(
    url: str | None, target: str | None, chosen: list[str]
) -> Generator[Fetch, bytes | None, Manifest | None]:
    """A loader that reads whatever format the document is in (see the module), and appends
    the format's name to ``chosen``."""
    from kvmap.formats import kerchunk, kerchunk_parquet
    from kvmap.formats.chunkmanifest import chunk_manifest
    from kvmap.formats.kvstack import from_kvstack

    if url is None or not url.lower().endswith(".json"):
        found = yield from kerchunk_parquet.load(url, target=target)
        if found is not None:
            chosen.append("kerchunk-parquet")
            return found
    text = yield Fetch()
    if text is None:
        return None
    columnar = columnar_manifest(bytes(text), url)
    if columnar is not None:
        chosen.append("kvmap-parquet")
        return columnar
    document = parse_json(text, url)
    kind = looks_like(document)
    chosen.append(kind or "kvmap")
    if kind == "kerchunk":
        return kerchunk.from_kerchunk(document, url, name=url, target=target)
    if kind == "chunk-manifest":
        return chunk_manifest(document, url, name=url)
    if kind == "kvstack":
        return from_kvstack(document, url, name=url)
    return Manifest.from_json(document, url, name=url)  # kvmap, or its error naming what it is not


def _with_target(fmt: Format, target: str | None) -> Format:
    """``fmt``, its loader given ``target`` (the URL of kerchunk references whose URL is null)."""
    if target is None or fmt.name not in ("kerchunk", "kerchunk-parquet"):
        return fmt
    return replace(fmt, loader=partial(load_kerchunk, target=target))


def _is_icechunk_repo(place: str | os.PathLike[str]) -> bool:
    url = place_url(place)
    if not url.startswith("file://") or PIPELINE_SEPARATOR in url:
        return False
    path = Path(_local_path(url))
    # Icechunk's layout version 1 keeps branches under refs/, version 2 (Icechunk 2) in one repo object.
    return path.is_dir() and (path / "snapshots").is_dir() and ((path / "refs").is_dir() or (path / "repo").is_file())


def _local_path(url: str) -> str:
    from urllib.parse import unquote

    return unquote(url.removeprefix("file://"))


def read_manifest(
    source: str | os.PathLike[str] | Manifest,
    source_format: str | None = None,
    *,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    target: str | None = None,
) -> tuple[Manifest, str]:
    """The manifest at ``source`` in ``source_format`` (or the one detected; see the module)
    and the format's name. ``target``: the URL of kerchunk references whose URL is
    ``null``. Raises :class:`~kvmap.ManifestError` for a bad document,
    :class:`~kvmap.TargetError` if it cannot be read, ``ValueError`` for an unknown format."""
    manifest, name, _ = _read_manifest(
        source, source_format, allow=allow, allow_all=allow_all, stores=stores, target=target
    )
    return manifest, name


def _read_manifest(
    source: str | os.PathLike[str] | Manifest,
    source_format: str | None,
    *,
    allow: Collection[str],
    allow_all: bool,
    stores: Mapping[str, Mapping[str, Any]] | None,
    target: str | None,
) -> tuple[Manifest, str, int]:
    """:func:`read_manifest`, and how many checksums of the input no pin could say (an
    Icechunk input's ``last_updated_at`` checksums; 0 for every other format)."""
    if isinstance(source, Manifest):
        return source, "kvmap", 0
    if source_format is not None and source_format not in FORMATS:
        raise ValueError(f"unknown format {source_format!r} (kvmap knows {', '.join(sorted(FORMATS))})")
    if source_format == "icechunk" or (source_format is None and _is_icechunk_repo(source)):
        from kvmap.formats.icechunk import read_icechunk_repo

        read = read_icechunk_repo(source)
        return read.manifest, "icechunk", read.unkept
    url = place_url(source)
    pipe = Pipeline.parse(url)
    reader = Reader(url, allow=allow, allow_all=allow_all, stores=stores)
    if source_format is not None:
        fmt = FORMATS[source_format]
    elif pipe.adapters and pipe.adapters[-1].name in ADAPTERS:
        fmt = for_adapter(pipe.adapters[-1].name)
    else:
        chosen: list[str] = []
        fmt = Format(
            "detected", "a manifest in any format kvmap reads", loader=lambda u: _load_detected(u, target, chosen)
        )
        return reader.manifest_sync(fmt), chosen[-1], 0
    return reader.manifest_sync(_with_target(fmt, target)), fmt.name, 0


def convert(
    source: str | os.PathLike[str] | Manifest,
    destination: str | os.PathLike[str],
    *,
    source_format: str | None = None,
    target_format: str | None = None,
    materialize: bool = False,
    allow: Collection[str] = (),
    allow_all: bool = False,
    stores: Mapping[str, Mapping[str, Any]] | None = None,
    target: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    memory_bytes: int = DEFAULT_BUILD_MEMORY,
) -> Converted:
    """Convert the manifest at ``source`` to ``destination`` (see the module).

    ``progress(done, total)`` is called while references are followed, and while a columnar
    manifest is built from a large document (see the module). ``memory_bytes``: about the most
    that building one holds. The result counts the pins the output could not keep
    (:attr:`Converted.dropped_pins`; a format that keeps them all is known to drop none without
    reading the input, so a streamed build reads it once). Raises
    :class:`~kvmap.ConvertError` naming the entry the output format cannot hold,
    :class:`~kvmap.ManifestError` for bad input, :class:`~kvmap.ResolveError` when a target
    cannot be read or is not allowed, :class:`~kvmap.SaveError` when the output cannot be
    written (then nothing of it was written locally), ``ValueError`` for an unknown format.
    """
    out_url = place_url(destination)
    if target_format is None:
        found = for_suffix(out_url)
        target_format = found.name if found is not None else "kvmap"
    if target_format not in FORMATS:
        raise ValueError(f"unknown format {target_format!r} (kvmap knows {', '.join(sorted(FORMATS))})")
    # Streamed, the input is read once, by the builder: only a format that keeps every pin
    # (so drops none, which needs no count) may be built that way.
    keeps_all = KEPT_PINS.get(target_format, frozenset()) >= frozenset(PIN_FIELDS)
    if target_format == "kvmap-parquet" and keeps_all and not materialize and target is None:
        built = _streamed(source, source_format, out_url, memory_bytes, progress)
        if built is not None:
            return built
    manifest, read_as, unkept = _read_manifest(
        source, source_format, allow=allow, allow_all=allow_all, stores=stores, target=target
    )
    reader = Reader(manifest, allow=allow, allow_all=allow_all, stores=stores)
    lengths: dict[str, int] = {}
    narrowed = 0
    if materialize or target_format in _REFERENCE_FORMATS:
        manifest, lengths, narrowed = asyncio.run(
            _references(reader, manifest, materialize, target_format in _NEED_LENGTHS, progress)
        )
    # What it names from where it is written (relative targets rewritten if it moves).
    manifest = manifest.rebased(out_url)
    if target_format == "icechunk":
        from kvmap.formats.icechunk import to_icechunk_repo

        to_icechunk_repo(manifest, _local_or(out_url), lengths=lengths)
    else:
        writer = FORMATS[target_format].writer
        assert writer is not None
        _write(writer(manifest), out_url, stores)
    cm = compile(manifest)
    needed = allow_prefixes(cm.target_roots(), out_url)
    dropped = _dropped_pins(manifest, cm, target_format)
    if narrowed:
        dropped["sha256"] = dropped.get("sha256", 0) + narrowed
    if unkept:
        dropped[LAST_UPDATED_AT] = unkept
    return Converted(read_as, target_format, len(manifest), needed, dropped)


def _dropped_pins(manifest: Manifest, cm: CompiledMap, target_format: str) -> dict[str, int]:
    """Pin member -> how many entries that ``target_format`` writes of ``manifest`` (compiled:
    ``cm``) have that pin and the format cannot hold it (only members with a count)."""
    kept = KEPT_PINS.get(target_format, frozenset())
    lost = [member for member in PIN_FIELDS if member not in kept]
    if not lost:
        return {}
    one_per_key = target_format in _REFERENCE_FORMATS
    counts = dict.fromkeys(lost, 0)
    # Pinned entries are never in the bulk columns: the others are all there is to look at.
    for index, entry in manifest.split()[1]:
        pins = entry.pins
        if pins is None:
            continue
        if one_per_key and entry.key is not None:
            won = cm.resolve(entry.key)
            if won is None or won.entry != index:
                continue  # shadowed by a later entry: a reference format writes the winner only
        for member in lost:
            if getattr(pins, member) is not None:
                counts[member] += 1
    return {member: n for member, n in counts.items() if n}


# -- columnar manifests of large documents, streamed -----------------------------------------


def _streamed(
    source: str | os.PathLike[str] | Manifest,
    source_format: str | None,
    out_url: str,
    memory_bytes: int,
    progress: Callable[[int, int], None] | None,
) -> Converted | None:
    """The conversion of a large local kvmap or kerchunk JSON document to a local columnar
    manifest, streamed (:func:`kvmap.formats.kvmap_parquet.build_kvmap_parquet`); ``None`` if
    ``source`` is not one (then it is read whole)."""
    if isinstance(source, Manifest):
        return None
    url = place_url(source)
    if not (url.startswith("file://") and out_url.startswith("file://")) or PIPELINE_SEPARATOR in url + out_url:
        return None
    path = _local_path(url)
    try:
        size = os.path.getsize(path)
    except OSError:
        return None  # the reader says what is wrong with it
    if size < memory_bytes * _STREAM_RATIO:
        return None
    kind = source_format or _json_kind(path)
    if kind not in ("kvmap", "kerchunk"):
        return None
    from kvmap.formats.kvmap_parquet import build_kvmap_parquet

    out = _local_path(out_url)
    moved = None if url.rpartition("/")[0] == out_url.rpartition("/")[0] else partial(rebase, old=url, new=out_url)
    build_kvmap_parquet(path, out, source_format=kind, memory_bytes=memory_bytes, progress=progress, rebase=moved)
    cm = Reader(out_url, allow_all=True).keymap_sync()  # reads the footer: the map's own file
    # kvmap-parquet keeps every pin (convert streams only then): nothing was dropped.
    return Converted(kind, "kvmap-parquet", cm.n_entries, allow_prefixes(cm.target_roots(), out_url), {})


def _json_kind(path: str) -> str | None:
    """``"kvmap"`` or ``"kerchunk"``: which JSON document the file at ``path`` is, by its first
    member's name (the first key of kerchunk version 0 references is a zarr key); ``None``:
    neither, or not clear from that (then the document is read whole and detected)."""
    with open(path, "rb") as f:
        head = f.read(1 << 12).lstrip()
    if head.startswith(b"["):
        return "kvmap"  # a bare list of entries
    first = _FIRST_MEMBER.match(head)
    if first is None:
        return None
    try:
        name = json.loads(first.group(1))
    except ValueError:
        return None
    if name in ("kvmap", "entries"):
        return "kvmap"
    if name in ("version", "refs", "gen", "templates") or name.rpartition("/")[2] in _ZARR_METADATA:
        return "kerchunk"
    return None


def _local_or(url: str) -> str:
    return _local_path(url) if url.startswith("file://") else url


# -- references: flattening pipelines, materializing prefixes -------------------------------


async def _references(
    reader: Reader,
    manifest: Manifest,
    materialize: bool,
    need_lengths: bool,
    progress: Callable[[int, int], None] | None,
) -> tuple[Manifest, dict[str, int], int]:
    """``manifest`` as one exact entry per key (see the module), the sizes of the keys whose
    entry is a whole object, when ``need_lengths``, and how many ``sha256`` pins flattening
    could not keep (of windows that an outer entry narrows)."""
    cols, entries = manifest.split()
    name = manifest.name or manifest.url
    simple = all(e.selector == "key" and (e.path is None or PIPELINE_SEPARATOR not in e.path) for _, e in entries)
    narrowed = 0
    if simple and PIPELINE_SEPARATOR not in "".join(p for p in cols.path if p):
        out = manifest  # nothing to follow
    else:
        if not materialize:
            for index, entry in entries:
                if entry.selector != "key":
                    raise no_single_reference(entry, index, name, "a reference format")
        keys = await reader.list_prefix("")
        out, narrowed = await _followed(reader, manifest, keys, progress)
    lengths: dict[str, int] = {}
    if need_lengths:
        lengths = await _sizes(reader, out)
        if lengths:
            out = _with_lengths(out, lengths)
    return out, lengths, narrowed


def _with_lengths(manifest: Manifest, lengths: Mapping[str, int]) -> Manifest:
    """``manifest`` with the exact entries of the keys in ``lengths`` given that length."""
    entries = manifest.to_json()["entries"]
    for entry in entries:
        key = entry.get("key")
        if key in lengths and entry.get("path") is not None and "length" not in entry:
            entry["length"] = lengths[key]
    return Manifest.from_json(entries, manifest.url, name=manifest.name)


async def _followed(
    reader: Reader, manifest: Manifest, keys: list[str], progress: Callable[[int, int], None] | None
) -> tuple[Manifest, int]:
    """The manifest of one exact entry per key in ``keys``: where each resolves now, with the
    pins of the entry it ends at; and how many ``sha256`` pins it could not keep."""
    gate = asyncio.Semaphore(_CONCURRENCY)
    done = 0
    narrowed = 0

    async def one(key: str) -> dict[str, Any] | None:
        nonlocal done, narrowed
        async with gate:
            walked = await reader.explain(key)
        done += 1
        if progress is not None:
            progress(done, len(keys))
        loc = walked.location
        if loc is None:
            return None
        entry = _entry(key, loc, walked.hops[-1].inline if walked.hops else False, walked, manifest)
        pins, lost = _pins_of(loc, walked.hops[-1] if walked.hops else None)
        narrowed += lost
        if pins is not None:
            entry.update(pins.to_json())
        return entry

    found = await asyncio.gather(*(one(k) for k in keys))
    return Manifest.from_json([e for e in found if e is not None], manifest.url, name=manifest.name), narrowed


def _pins_of(loc: Location, last: Any) -> tuple[Pins | None, int]:
    """The pins a flattened entry of ``loc`` keeps (those of the entry the walk ended at, its
    ``last`` hop) and whether a ``sha256`` was dropped (1) or not (0): it is of that entry's
    window, so it stays only if ``loc`` is that window, not a part an outer entry cut."""
    pins = loc.pins
    if pins is None or loc.url is None:
        return None, 0
    if pins.sha256 is None or (last is not None and (last.offset or 0, last.length) == (loc.offset, loc.length)):
        return pins, 0
    rest = replace(pins, sha256=None)
    return (rest if rest.meta else None), 1


def _entry(key: str, loc: Location, inline: bool, walked: Any, manifest: Manifest) -> dict[str, Any]:
    import base64

    if loc.data is not None:
        if not inline:
            hop = walked.hops[0] if walked.hops else None
            raise ConvertError(
                f"key {key!r} is a deflated zip member: its bytes are no window of any object",
                manifest=manifest.name or manifest.url,
                entry=None if hop is None else hop.entry,
                field="path",
            )
        return {"key": key, "data": base64.b64encode(bytes(loc.data)).decode("ascii")}
    entry: dict[str, Any] = {"key": key, "path": loc.url}
    if loc.offset or loc.length is not None:
        entry["offset"] = loc.offset
        if loc.length is not None:
            entry["length"] = loc.length
    return entry


async def _sizes(reader: Reader, manifest: Manifest) -> dict[str, int]:
    """The size of every key whose exact entry is a whole object (no length), concurrently."""
    cols, entries = manifest.split()
    whole = [k for k, p, n in zip(cols.key, cols.path, cols.length.tolist(), strict=True) if p is not None and n < 0]
    whole += [e.key for _, e in entries if e.selector == "key" and e.path is not None and e.length is None]
    if not whole:
        return {}
    sized = Reader(manifest, **{k: v for k, v in reader.options.items() if k in ("allow", "allow_all", "stores")})
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(key: str) -> int | None:
        async with gate:
            return await sized.size(key)

    found = await asyncio.gather(*(one(k) for k in whole))
    name = manifest.name or manifest.url
    out = {}
    for key, size in zip(whole, found, strict=True):
        if size is None:
            raise ManifestError(f"key {key!r} names an object that does not exist", manifest=name, field="path")
        out[key] = size
    return out


# -- writing --------------------------------------------------------------------------------


def _write(files: dict[str, bytes], url: str, stores: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Write ``files`` (``""``: the output itself; other names: inside the directory it is)."""
    if url.startswith("file://") and PIPELINE_SEPARATOR not in url:
        path = _local_path(url)
        if set(files) == {""}:
            save_atomically(path, files[""])
            return
        try:
            _write_directory(path, files)
        except OSError as exc:
            raise SaveError(exc.errno or 0, f"cannot write {path}: {exc.strerror or exc}", path) from exc
        return
    from kvmap.roots import Roots

    roots = Roots(stores)
    for name, data in files.items():
        where = url if not name else resolve_target(url.rstrip("/") + "/", name)
        store, key = roots.open_for_write(where)
        store.put(key, data)


def _write_directory(path: str, files: dict[str, bytes]) -> None:
    """Build the directory beside ``path`` and rename it into place; an existing directory
    there is replaced only after the new one is complete (it is moved aside, then removed)."""
    target = Path(os.path.abspath(os.path.expanduser(path)))
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.kvmap-", dir=target.parent))
    try:
        for name, data in files.items():
            out = build / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.kvmap-old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(build, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
