"""The one exception tree of kvmap.

Every error kvmap raises on purpose is a :class:`KvmapError`. Errors about a
manifest document also say *where*: the manifest (its URL or path), the entry
index and the field, so that a person can go straight to the offending line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ChainError",
    "ConvertError",
    "DanglingReferenceError",
    "InvalidKeyError",
    "KvmapError",
    "ManifestError",
    "MissingDependencyError",
    "ObjectChangedError",
    "OverlayBaseChangedError",
    "OverlayConflictError",
    "OverlayCorruptError",
    "OverlayError",
    "OverlayLocationError",
    "PipelineError",
    "PolicyError",
    "ResolveError",
    "SaveError",
    "TargetError",
    "WindowError",
    "WriteError",
]


class KvmapError(Exception):
    """Base class of every error kvmap raises on purpose."""


class ManifestError(KvmapError, ValueError):
    """A manifest document breaks a rule of the specification.

    ``manifest`` is the document's URL or path (``None`` for an in-memory
    document without one), ``entry`` the index of the offending entry (``None``
    for document-level problems) and ``field`` the offending member name
    (``None`` when no single member is at fault, e.g. an entry without a
    selector).
    """

    def __init__(
        self,
        reason: str,
        *,
        manifest: str | None = None,
        entry: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.manifest = manifest
        self.entry = entry
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = [self.manifest if self.manifest is not None else "<manifest>"]
        if self.entry is not None:
            where.append(f"entry {self.entry}")
        if self.field is not None:
            where.append(f"field {_shown(self.field)}")
        return f"{': '.join(where)}: {self.reason}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructor arguments need an explicit reduce to pickle.
        return (_rebuild_manifest_error, (type(self), self.reason, self.manifest, self.entry, self.field))


class ConvertError(ManifestError):
    """A manifest cannot be written in another format: an entry it cannot express there (a
    prefix in kerchunk, a byte window in kvstack...). Names the manifest, the entry and the field."""


class MissingDependencyError(KvmapError, ImportError):
    """A format or bridge needs an optional dependency that is not installed; the message
    says what to install."""


def _shown(name: object) -> str:
    """``repr(name)`` of a member name, at most 80 characters, whatever it is (a document from
    Python may name a member with a 10,000-digit integer, whose repr raises)."""
    try:
        text = repr(name)
    except (ValueError, RecursionError):
        return f"<a {type(name).__name__} too large to show>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _rebuild_manifest_error(
    cls: type[ManifestError], reason: str, manifest: str | None, entry: int | None, field: str | None
) -> ManifestError:
    return cls(reason, manifest=manifest, entry=entry, field=field)


class InvalidKeyError(KvmapError, ValueError):
    """A key cannot be turned into a target URL (it holds a lone surrogate)."""


class PipelineError(KvmapError, ValueError):
    """A URL pipeline is malformed or names an adapter kvmap does not know."""


class ResolveError(KvmapError):
    """Following a key to its bytes failed. Says where: the key, the manifest and
    entry that sent kvmap there (``None`` for the caller's own target) and the URL.

    Subclasses tell why; every one is raised, never turned into "absent".
    """

    def __init__(
        self,
        reason: str,
        *,
        key: str | None = None,
        manifest: str | None = None,
        entry: int | None = None,
        url: str | None = None,
    ) -> None:
        self.reason = reason
        self.key = key
        self.manifest = manifest
        self.entry = entry
        self.url = url
        super().__init__(self._render())

    def _render(self) -> str:
        return located(self.reason, key=self.key, manifest=self.manifest, entry=self.entry, url=self.url)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_resolve_error, (type(self), self.reason, self.key, self.manifest, self.entry, self.url))


def _rebuild_resolve_error(
    cls: type[ResolveError], reason: str, key: str | None, manifest: str | None, entry: int | None, url: str | None
) -> ResolveError:
    return cls(reason, key=key, manifest=manifest, entry=entry, url=url)


class TargetError(ResolveError):
    """Reading a target failed: permission, network, server error, timeout, or an
    object shorter than its entry's byte window."""


class WindowError(TargetError):
    """An entry's byte window does not fit what it lies in: the object (or the inline bytes, or
    the window of an outer entry) is shorter than the window. A manifest error found by reading."""


class DanglingReferenceError(TargetError):
    """An exact entry names an object, zip archive, member or nested manifest that does not
    exist: a manifest error found by reading, never "absent" (a whiteout says that)."""


class PolicyError(ResolveError, PermissionError):
    """A manifest points at a URL that the caller's security policy does not allow."""


class ChainError(ResolveError):
    """Chained manifests loop back on themselves or nest deeper than the limit."""


class SaveError(KvmapError, OSError):
    """Saving a manifest failed; the file at the path, if any, is as it was.

    An ``OSError`` too, with the ``errno`` and ``filename`` of the failure.
    """


class WriteError(ResolveError):
    """A write or delete cannot go through: the key's entry is not a redirect that
    names a whole object (a byte window, inline bytes, a whiteout, or no entry)."""


def located(
    reason: str,
    *,
    key: str | None = None,
    manifest: str | None = None,
    entry: int | None = None,
    url: str | None = None,
) -> str:
    """``reason`` after where it happened: ``key 'k' -> MANIFEST entry N -> URL: reason`` (the
    parts that are known), as resolve errors and ``kvmap check`` problems say it."""
    where = []
    if key is not None:
        where.append(f"key {key!r}")
    if manifest is not None:
        where.append(manifest if entry is None else f"{manifest} entry {entry}")
    if url is not None:
        where.append(url)
    return f"{' -> '.join(where)}: {reason}" if where else reason


class OverlayError(KvmapError):
    """Base class of the overlay's own errors."""


class OverlayLocationError(OverlayError, ValueError):
    """The overlay location cannot hold an overlay: it is not a directory URL, or its backend cannot
    create an object only if it is absent (plain ``http(s)://``), so no commit could be safe."""


class OverlayCorruptError(OverlayError):
    """A commit document of the overlay is not one :func:`Overlay` writes (named by its URL)."""


class OverlayBaseChangedError(OverlayError):
    """The overlay's base is not the one its commits were made on (``allow_base_change=True`` opens
    it anyway). ``recorded`` and ``current`` are the two identities."""

    def __init__(self, reason: str, recorded: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        self.recorded = dict(recorded)
        self.current = dict(current)
        super().__init__(reason)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.args[0], self.recorded, self.current))


class OverlayConflictError(OverlayError, WriteError):
    """A commit lost the race to another commit that changed some of the same keys (``keys``, sorted).
    Nothing was committed; the pending writes are kept (:meth:`Overlay.discard` drops them)."""

    def __init__(self, reason: str, *, keys: Sequence[str] = (), url: str | None = None) -> None:
        self.keys = list(keys)
        ResolveError.__init__(self, reason, key=self.keys[0] if self.keys else None, url=url)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_conflict, (self.reason, self.keys, self.url))


def _rebuild_conflict(reason: str, keys: list[str], url: str | None) -> OverlayConflictError:
    return OverlayConflictError(reason, keys=keys, url=url)


class ObjectChangedError(TargetError):
    """An exact entry pins what it refers to (``etag``, ``version``, ``sha256``; spec 3.4) and the
    read found something else: the object changed since the manifest was made (or the pinned
    version is gone, or the store cannot show which version it served). No bytes are returned."""
