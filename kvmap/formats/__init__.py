"""The registry of manifest formats: each one's name, its pipeline adapters, its loader and writer.

Every place that reads or writes a manifest asks this registry — the walk (a pipeline
adapter such as ``refs.json|kerchunk:`` names a format), listing, the CLI and
``kvmap convert`` — so adding a format is one module under ``kvmap/formats/`` and one
entry in :data:`FORMATS`. A loader follows the request protocol of
:mod:`kvmap.fetch`: it is given the document's URL and yields the reads it needs
(the document itself, ranges of it, or objects below it), so a directory of parquet
references is read file by file and a large file could be read in part. Optional
libraries are imported only when a format that needs them is used.

>>> sorted(FORMATS)
['chunk-manifest', 'icechunk', 'kerchunk', 'kerchunk-parquet', 'kvmap', 'kvmap-parquet', 'kvstack']
>>> for_adapter("kerchunk").name, adapter_kind("zip"), adapter_kind("zarr_chunk_manifest")
('kerchunk', 'zip', 'manifest')
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from kvmap.errors import PipelineError
from kvmap.fetch import Fetch, drive
from kvmap.manifest import Manifest, parse_json

if TYPE_CHECKING:
    from kvmap.keymap import KeyMap

__all__ = [
    "ADAPTERS",
    "FORMATS",
    "ZIP",
    "Fetch",
    "Format",
    "adapter_kind",
    "columnar_manifest",
    "drive",
    "for_adapter",
    "for_suffix",
    "load_kerchunk",
]

#: The pipeline adapter that takes a member of a zip archive (not a manifest format).
ZIP = "zip"

_PARQUET_MAGIC = b"PAR1"
#: How a columnar manifest's name ends (``big.parquet``, ``m.kvmap.parquet``).
_COLUMNAR_SUFFIX = ".parquet"

#: What a loader is given (the document's URL, ``None`` if it has none) and what it is.
Loader = Callable[[str | None], Generator[Fetch, bytes | None, Manifest | None]]
#: An opener: like a loader, but it may give a map that reads its document as lookups need
#: it (:class:`kvmap.keymap.KeyMap`) instead of a whole manifest. The walk uses it where
#: a format has one.
Opener = Callable[[str | None], Generator[Fetch, bytes | None, "KeyMap | Manifest | None"]]
#: A writer: the manifest as files, name -> bytes; ``""`` is the file itself, other names
#: are files inside the directory the output is (kerchunk parquet).
Writer = Callable[[Manifest], dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class Format:
    """A manifest format: ``name`` (what ``kvmap convert --from/--to`` call it), the pipeline
    ``adapters`` that read it, the file name ``suffixes`` that mean it on output, its
    ``loader`` (``None``: not read through pipelines), ``writer`` (``None``: written by
    its own command path, as an Icechunk repository is) and ``opener`` (``None``: the walk
    loads the whole manifest and compiles it)."""

    name: str
    description: str
    adapters: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    loader: Loader | None = None
    writer: Writer | None = None
    opener: Opener | None = None


# -- loaders and writers (thin: each format's rules live in its own module) -------------------


def _load_kvmap(url: str | None) -> Generator[Fetch, bytes | None, Manifest | None]:
    if _columnar_name(url):
        from kvmap.formats.kvmap_parquet import load_kvmap_parquet

        return (yield from load_kvmap_parquet(url))
    text = yield Fetch()
    if text is None:
        return None
    columnar = columnar_manifest(bytes(text), url)  # a columnar manifest under another name
    return columnar if columnar is not None else Manifest.loads(bytes(text), url=url, name=url)


def columnar_manifest(data: bytes, url: str | None) -> Manifest | None:
    """The manifest of ``data`` if it is a columnar kvmap manifest (its bytes begin ``PAR1``),
    read from memory; ``None`` if it is not one."""
    if data[:4] != _PARQUET_MAGIC:
        return None
    from kvmap.formats.kvmap_parquet import load_kvmap_parquet

    return drive(load_kvmap_parquet(url), lambda _name: data)


def _open_kvmap(url: str | None) -> Generator[Fetch, bytes | None, KeyMap | Manifest | None]:
    # A columnar manifest is known by its name, so that opening it reads its footer only;
    # anything else is read whole (and still taken as columnar if its bytes say so).
    if _columnar_name(url):
        from kvmap.formats.kvmap_parquet import open_kvmap_parquet

        return (yield from open_kvmap_parquet(url, name=url))
    return (yield from _load_kvmap(url))


def _columnar_name(url: str | None) -> bool:
    return url is not None and url.partition("?")[0].lower().endswith(_COLUMNAR_SUFFIX)


def _write_kvmap_parquet(manifest: Manifest) -> dict[str, bytes]:
    from kvmap.formats.kvmap_parquet import to_kvmap_parquet

    return {"": to_kvmap_parquet(manifest)}


def _load_chunk_manifest(url: str | None) -> Generator[Fetch, bytes | None, Manifest | None]:
    from kvmap.formats.chunkmanifest import chunk_manifest

    text = yield Fetch()
    if text is None:
        return None
    # Integers kept exact, as a kvmap document's are (orjson would read 2**64 as a float).
    return chunk_manifest(parse_json(bytes(text), url), url=url, name=url)


def load_kerchunk(url: str | None, *, target: str | None = None) -> Generator[Fetch, bytes | None, Manifest | None]:
    """The loader of kerchunk references, JSON or a parquet directory (``target``: the URL of
    references whose URL is null)."""
    from kvmap.formats import kerchunk, kerchunk_parquet

    # A parquet reference set is a directory holding .zmetadata; a .json name is never one, so
    # it costs no extra request.
    if url is None or not url.lower().endswith(".json"):
        found = yield from kerchunk_parquet.load(url, target=target)
        if found is not None:
            return found
    return (yield from kerchunk.load(url, target=target))


def _load_kvstack(url: str | None) -> Generator[Fetch, bytes | None, Manifest | None]:
    from kvmap.formats.kvstack import from_kvstack

    text = yield Fetch()
    return None if text is None else from_kvstack(parse_json(bytes(text), url), url, name=url)


def _write_kvmap(manifest: Manifest) -> dict[str, bytes]:
    return {"": manifest.dumps()}


def _write_chunk_manifest(manifest: Manifest) -> dict[str, bytes]:
    from kvmap.formats.chunkmanifest import to_chunk_manifest

    return {"": orjson.dumps(to_chunk_manifest(manifest), option=orjson.OPT_APPEND_NEWLINE)}


def _write_kerchunk(manifest: Manifest) -> dict[str, bytes]:
    from kvmap.formats.kerchunk import dumps_kerchunk

    return {"": dumps_kerchunk(manifest)}


def _write_kerchunk_parquet(manifest: Manifest) -> dict[str, bytes]:
    from kvmap.formats.kerchunk_parquet import dump_kerchunk_parquet

    return dump_kerchunk_parquet(manifest)


def _write_kvstack(manifest: Manifest) -> dict[str, bytes]:
    from kvmap.formats.kvstack import to_kvstack

    return {"": orjson.dumps(to_kvstack(manifest), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)}


#: Every format kvmap reads or writes, by name.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("kvmap", "kvmap manifest (JSON)", ("kvmap",), (".json",), _load_kvmap, _write_kvmap, _open_kvmap),
        # Read through the kvmap adapter (big.parquet|kvmap:), which tells the two forms apart.
        Format(
            "kvmap-parquet",
            "kvmap manifest, columnar (parquet; opened lazily)",
            (),
            (".kvmap.parquet",),
            _load_kvmap,
            _write_kvmap_parquet,
            _open_kvmap,
        ),
        Format(
            "chunk-manifest",
            "chunk manifest {key: {path, offset, length}} (zarr manifest storage transformer)",
            ("zarr_chunk_manifest", "zarr-chunk-manifest"),
            (),
            _load_chunk_manifest,
            _write_chunk_manifest,
        ),
        # One adapter for both kerchunk forms: the loader tells JSON from a parquet directory.
        Format("kerchunk", "kerchunk references, JSON (v0 or v1)", ("kerchunk",), (), load_kerchunk, _write_kerchunk),
        Format(
            "kerchunk-parquet",
            "kerchunk references, parquet directory (fsspec's LazyReferenceMapper)",
            (),
            (".parq", ".parquet"),
            load_kerchunk,
            _write_kerchunk_parquet,
        ),
        Format("kvstack", "tensorstore kvstack spec (JSON)", ("kvstack",), (), _load_kvstack, _write_kvstack),
        Format("icechunk", "Icechunk repository (virtual references)", (), (".icechunk",)),
    )
}

#: Pipeline adapter name -> the format it reads.
ADAPTERS: dict[str, Format] = {a: f for f in FORMATS.values() for a in f.adapters}


def _known_adapters() -> str:
    return ", ".join(sorted([ZIP, *ADAPTERS]))


def for_adapter(name: str) -> Format:
    """The format the pipeline adapter ``name`` reads. Raises :class:`~kvmap.PipelineError`
    for an adapter that is no manifest format (``zip`` included)."""
    found = ADAPTERS.get(name)
    if found is None:
        raise PipelineError(f"unknown URL adapter {name!r} (kvmap knows {_known_adapters()})")
    return found


def adapter_kind(name: str) -> str:
    """``"zip"`` or ``"manifest"``: what the pipeline adapter ``name`` does. Raises
    :class:`~kvmap.PipelineError` for an adapter kvmap does not know."""
    if name == ZIP:
        return "zip"
    for_adapter(name)
    return "manifest"


def for_suffix(name: str) -> Format | None:
    """The format an output file name means by its ending (``.parq`` → kerchunk parquet,
    ``.json`` → kvmap), or ``None``."""
    lowered = name.lower().rstrip("/")
    for f in FORMATS.values():
        if any(lowered.endswith(s) for s in f.suffixes):
            return f
    return None
