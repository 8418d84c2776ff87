"""The manifest document: load, validate, save.

A manifest is ``{"kvmap": 1, "entries": [...]}`` (or, as first proposed, a bare
array of entries). :class:`Manifest` holds a validated document and the URL it
was read from, against which relative target paths resolve.

Validation has two paths that must agree. :meth:`Entry.from_json` is the
definition, applied to entries one by one in order, so the first bad entry is the
one reported. A columnar fast path checks the bulk shape of large manifests —
exact keys with a path and an optional byte window — whole columns at a time; if
it finds anything it cannot vouch for, the entry-by-entry pass decides. For
JSON text, a typed msgspec decode of the bulk shape comes first: it parses and
type-checks such a document in one C pass, and anything else falls back to an
untyped decode that keeps integers exact, so text and Python objects meet the
same rules.

>>> m = Manifest.from_json([{"prefix": "", "path": "../data/"}], url="s3://bucket/views/m.json")
>>> len(m), m.entries[0].selector
(1, 'prefix')
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Annotated, Any, BinaryIO, Literal, overload

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

from kvmap._gcpause import paused_gc
from kvmap.detect import hint
from kvmap.entries import MAX_INT, Entry
from kvmap.entries import MAX_JSON_DEPTH as _JSON_DEPTH
from kvmap.errors import ManifestError, SaveError
from kvmap.places import path_url, place_url, working_directory_url
from kvmap.url import PIPELINE_SEPARATOR, is_absolute, is_local_path, rebase

if sys.platform != "win32":
    import fcntl

__all__ = ["FORMAT_VERSION", "HERE", "Base", "ExactColumns", "Manifest", "parse_json", "save_atomically"]


class _Here(enum.Enum):
    """The default ``url`` of a manifest built in Python: the working directory."""

    HERE = "the working directory"

    def __repr__(self) -> str:
        return "HERE"


HERE = _Here.HERE
#: What a manifest's ``url`` may be given as: a URL, a path, ``None`` (no URL) or :data:`HERE`.
Base = str | os.PathLike[str] | None | _Here

#: The value of the document's ``"kvmap"`` member this version understands.
FORMAT_VERSION = 1

_DOCUMENT_FIELDS = frozenset(("kvmap", "entries"))
_FAST_FIELDS = frozenset(("key", "path", "offset", "length"))


@dataclass(frozen=True, slots=True)
class ExactColumns:
    """Exact-key entries with a path (or null: a whiteout) and an optional window, as columns:
    the bulk of a large manifest, kept this way so that compiling and converting it never
    makes an object per entry. ``index`` is each one's entry index; paths are as written."""

    index: Sequence[int]
    key: Sequence[str]
    path: Sequence[str | None]
    offset: npt.NDArray[np.int64]  # -1: not set
    length: npt.NDArray[np.int64]  # -1: not set
    distinct_paths: set[str]  # the non-null paths, each once


_NO_EXACT = ExactColumns(range(0), [], [], np.zeros(0, np.int64), np.zeros(0, np.int64), set())
_BULK_FIELDS = ("key", "path", "offset", "length")
_Window = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]


class _BulkEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The bulk shape: an exact key with a path (or null) and an optional window."""

    key: str
    path: str | None
    offset: _Window | msgspec.UnsetType = msgspec.UNSET
    length: _Window | msgspec.UnsetType = msgspec.UNSET


class _BulkDocument(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    kvmap: Literal[1]
    entries: list[_BulkEntry]


_BULK_OBJECT = msgspec.json.Decoder(_BulkDocument)
_BULK_ARRAY = msgspec.json.Decoder(list[_BulkEntry])
_STRUCT_JSON = msgspec.json.Encoder()


class _EntriesView(Sequence[Entry]):
    """The entries of a manifest as :class:`Entry` objects, made on access."""

    __slots__ = ("_manifest",)

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    def __len__(self) -> int:
        return len(self._manifest._raw)

    @overload
    def __getitem__(self, i: int) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: int | slice) -> Entry | list[Entry]:
        m = self._manifest
        if isinstance(i, slice):
            return [Entry.from_json(_as_object(m._raw[j]), j, m.name) for j in range(*i.indices(len(m._raw)))]
        j = range(len(m._raw))[i]
        return Entry.from_json(_as_object(m._raw[j]), j, m.name)


@dataclass(frozen=True, slots=True)
class _ExactRows:
    """Exact-key references as given (windows: ``msgspec.UNSET`` where not set)."""

    key: list[Any]
    path: list[Any]
    offset: list[Any]
    length: list[Any]

    def row(self, pos: int) -> dict[str, Any]:
        entry = {"key": self.key[pos], "path": self.path[pos]}
        if self.offset[pos] is not msgspec.UNSET:
            entry["offset"] = self.offset[pos]
        if self.length[pos] is not msgspec.UNSET:
            entry["length"] = self.length[pos]
        return entry


class _Rows(Sequence[Any]):
    """A manifest's entries as JSON objects: ``head`` (a list), then exact-key references kept
    as columns, each made into its object only when it is asked for, then ``tail``."""

    __slots__ = ("_cols", "_head", "_tail")

    def __init__(self, head: list[Any], cols: ExactColumns | _ExactRows, tail: list[Any]) -> None:
        self._head, self._cols, self._tail = head, cols, tail

    def __len__(self) -> int:
        return len(self._head) + len(self._cols.key) + len(self._tail)

    @overload
    def __getitem__(self, j: int) -> Any: ...
    @overload
    def __getitem__(self, j: slice) -> list[Any]: ...
    def __getitem__(self, j: int | slice) -> Any:
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        j = range(len(self))[j]
        k, n = len(self._head), len(self._cols.key)
        if j < k:
            return self._head[j]
        return self._row(j - k) if j < k + n else self._tail[j - k - n]

    def __iter__(self) -> Iterator[Any]:
        yield from self._head
        yield from map(self._row, range(len(self._cols.key)))
        yield from self._tail

    def _row(self, pos: int) -> dict[str, Any]:
        cols = self._cols
        if isinstance(cols, _ExactRows):
            return cols.row(pos)
        entry: dict[str, Any] = {"key": cols.key[pos], "path": cols.path[pos]}
        offset, length = int(cols.offset[pos]), int(cols.length[pos])
        if offset >= 0:
            entry["offset"] = offset
        if length >= 0:
            entry["length"] = length
        return entry


class Manifest:
    """A validated kvmap manifest document.

    ``url`` is the absolute URL of the document (``None`` if it has none);
    relative target paths resolve against it. ``name`` is what errors call the
    document: the path it was loaded from, else its URL.
    """

    __slots__ = ("_exact", "_others", "_raw", "name", "url")

    url: str | None
    name: str | None
    _raw: list[Any]
    _exact: ExactColumns
    _others: list[tuple[int, Entry]]

    def __init__(self) -> None:
        raise TypeError("use Manifest.from_json, Manifest.loads or Manifest.load")

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_json(cls, document: Any, url: Base = HERE, *, name: str | None = None) -> Manifest:
        """Validate a parsed JSON document (object or bare entry array).

        ``url`` is the document's URL or path (:func:`~kvmap.places.place_url`); left out, it
        is the working directory at this call (``file://.../``), which relative targets then
        resolve against and which is the manifest's origin (kept when the manifest is pickled);
        ``None``: the document has no URL, so a relative target is an error (spec 5.1).
        Raises :class:`ManifestError` naming the manifest, the entry index and the field of
        the first problem.
        """
        url, name = _base(url, name)
        entries = _document_entries(document, name)
        with paused_gc():
            # Copy the entry objects so that later changes by the caller cannot
            # make a validated manifest invalid: a ``json`` value whole (it may nest).
            entries = [_copied(e) if type(e) is dict else e for e in entries]
            return cls._validated(entries, url, name)

    @classmethod
    def loads(cls, text: str | bytes, url: Base = HERE, *, name: str | None = None) -> Manifest:
        """Parse and validate a manifest from JSON text (``url`` as for :meth:`from_json`).

        Numbers keep their exact value: the text is held to the same rules as the
        Python objects :meth:`from_json` takes (an integer beyond 64 bits in a
        ``json`` value is refused, not rounded). Raises :class:`ManifestError` for
        text that is not JSON or a document that is not valid, naming the manifest,
        and the entry index and field of the first problem.
        """
        url, name = _base(url, name)
        with paused_gc():
            bulk = _decode_bulk(text)
            if bulk is not None:
                manifest = cls._from_bulk(bulk, url, name)
                if manifest is not None:
                    return manifest
            document = parse_json(text, name)
            return cls._validated(_document_entries(document, name), url, name)

    @classmethod
    def from_references(
        cls,
        keys: Sequence[str],
        paths: Sequence[str | None],
        offsets: Sequence[int | None] | None = None,
        lengths: Sequence[int | None] | None = None,
        *,
        before: Sequence[Any] = (),
        after: Sequence[Any] = (),
        url: Base = HERE,
        name: str | None = None,
    ) -> Manifest:
        """The manifest of the entries ``before`` (JSON entry objects of any kind), then one
        exact-key entry per reference: ``keys[i]`` → ``paths[i]`` (``None``: a whiteout) with
        the window ``offsets[i]``/``lengths[i]`` (``None``: not set), then the entries
        ``after``. Equal to
        :meth:`from_json` of those entries as dicts, without a dict per reference: what
        importers of large reference sets (kerchunk, parquet) build. ``url`` and errors as
        for :meth:`from_json`; ``ValueError`` for columns of different lengths.

        >>> m = Manifest.from_references(["c/0", "c/1"], ["f.nc", "f.nc"], [0, 8], [8, 8],
        ...                              before=[{"key": "zarr.json", "json": {}}], url="s3://b/m.json")
        >>> len(m), m.entries[2].to_json()
        (3, {'key': 'c/1', 'path': 'f.nc', 'offset': 8, 'length': 8})
        """
        url, name = _base(url, name)
        n = len(keys)
        offs, lens = (_unset_for_none(v, n) for v in (offsets, lengths))
        if not len(paths) == len(offs) == len(lens) == n:
            raise ValueError("keys, paths, offsets and lengths must have one value per reference")
        with paused_gc():
            head = [_copied(e) if type(e) is dict else e for e in before]
            tail = [_copied(e) if type(e) is dict else e for e in after]
            k = len(head)
            cols = _checked_columns(range(k, k + n), list(keys), list(paths), offs, lens, url, typed=False)
            others = None
            if cols is not None:
                indices = [*range(k), *range(k + n, k + n + len(tail))]
                try:
                    checked = _validate_one_by_one([*head, *tail], name, url)
                    others = list(zip(indices, checked, strict=True))
                except ManifestError:
                    others = None  # the definition reports it, at its index
            if cols is None or others is None:
                rows = _Rows(head, _ExactRows(list(keys), list(paths), offs, lens), tail)
                return cls._validated(list(rows), url, name)
            self = object.__new__(cls)
            self.url, self.name = url, name
            self._raw = _Rows(head, cols, tail)  # type: ignore[assignment]
            self._exact, self._others = cols, others
            return self

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read and validate a manifest file; its URL is the file's ``file://`` URL.

        Raises :class:`ManifestError` for an invalid document and ``OSError``
        when the file cannot be read.
        """
        name = os.fspath(path)
        with open(os.path.expanduser(name), "rb") as f:
            text = f.read()
        return cls.loads(text, url=path_url(name), name=name)

    @classmethod
    def _from_bulk(cls, entries: list[_BulkEntry], url: str | None, name: str | None) -> Manifest | None:
        """A manifest of typed bulk entries, or ``None`` if they need the general path."""
        if url is not None and not is_absolute(url):
            raise ValueError(f"a manifest URL must be absolute, not {url!r}")
        keys, paths, offsets, lengths = (list(map(attrgetter(field), entries)) for field in _BULK_FIELDS)
        columns = _checked_columns(range(len(entries)), keys, paths, offsets, lengths, url, typed=True)
        if columns is None:
            return None
        self = object.__new__(cls)
        self.url, self.name = url, name
        self._raw, self._exact, self._others = entries, columns, []
        return self

    @classmethod
    def _checked(cls, raw: list[Any], known: Mapping[int, Entry], url: str | None, name: str | None) -> Manifest:
        """The manifest of ``raw`` where ``known[i]``, when present, is already the validated entry
        of ``raw[i]`` for this ``url`` (an edited manifest rebuilt, every entry validated when it
        was given): plain exact-key entries take columns again, the others keep their known
        entries instead of being validated anew."""
        self = object.__new__(cls)
        self.url, self.name, self._raw = url, name, raw
        exact = _columns_if_valid(raw, url)
        columned = set() if exact is None else set(exact.index)
        self._exact = _NO_EXACT if exact is None else exact
        self._others = [
            (i, known[i] if i in known else Entry.from_json(_as_object(obj), i, name))
            for i, obj in enumerate(raw)
            if i not in columned
        ]
        return self

    @classmethod
    def _validated(cls, raw: list[Any], url: str | None, name: str | None) -> Manifest:
        if url is not None and not is_absolute(url):
            raise ValueError(f"a manifest URL must be absolute, not {url!r}")
        self = object.__new__(cls)
        self.url = url
        self.name = name
        self._raw = raw
        self._exact, self._others = _validate_entries(raw, self.name, url)
        return self

    # -- access ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._raw)

    def split(self) -> tuple[ExactColumns, Sequence[tuple[int, Entry]]]:
        """The entries in two parts that together hold each once: the plain exact-key entries
        with a path or a whiteout, as columns, and every other entry as ``(index, Entry)`` in
        index order. Which entries take the columns is not part of the promise (a
        manifest built one entry at a time may hold them all as entries)."""
        return self._exact, self._others

    @property
    def entries(self) -> Sequence[Entry]:
        """The entries, in document (= precedence) order."""
        return _EntriesView(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.url == other.url and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Manifest {self.name or '(unnamed)'} with {len(self._raw)} entries>"

    # -- output -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The document as JSON-ready Python objects (entries as they were given)."""
        entries = msgspec.to_builtins(self._raw) if _is_bulk(self._raw) else list(self._raw)
        return {"kvmap": FORMAT_VERSION, "entries": entries}

    def dumps(self) -> bytes:
        """The document as UTF-8 JSON text, one entry per line (diff-friendly).

        Entries read by the typed bulk decoder are written with their members in
        canonical order (key, path, offset, length); others as they were given.
        """
        if not self._raw:
            return b'{"kvmap": 1, "entries": []}\n'
        body = b",\n".join(map(_STRUCT_JSON.encode if _is_bulk(self._raw) else orjson.dumps, self._raw))
        return b'{"kvmap": 1, "entries": [\n' + body + b"\n]}\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the document to ``path`` atomically.

        The text goes to a temporary file in the same directory, is written and
        flushed to disk (``fsync``), and is then renamed over ``path``, after which
        the directory is flushed too: readers see the old document or the new one
        whole, never a part and never no file, even if the process is killed
        (``SIGKILL``) at any moment. Concurrent saves to one path (threads or
        processes) each use their own temporary file; the last rename wins.

        The temporary file is ``.{name}.kvmap-{pid}-{16 hex digits}.tmp`` (``name``
        the last component of ``path``, shortened to 200 bytes), created new and
        exclusively with the permissions of any new file (``0o666`` less the
        umask; the old file's mode and owner are not carried over), and held under
        an exclusive ``flock`` from its creation until after the rename. A save
        killed half-way leaves its one temporary file behind; each successful save
        then removes those of ``path``'s name whose writer is gone: its pid is no
        process on this host *and* the lock can be taken (locks die with their
        process). So a live save's file on this host is never removed, and one
        of another pid namespace or host sharing the directory is kept by its
        lock (where the file system has ``flock``; where it has none, stale files
        are left, as on Windows). That costs one listing of the directory per save.

        ``path`` itself is replaced: if it is a symbolic link, the link is
        replaced by the new file and what it pointed to is left as it was.

        Raises :class:`~kvmap.SaveError` (a :class:`~kvmap.KvmapError` and an
        ``OSError``) when the file cannot be written, e.g. a missing directory or a
        ``path`` that is a directory; then the temporary file is removed and the
        old file, if any, is unchanged.

        Relative targets name what they named at the manifest's :attr:`url`: saved at a
        ``path`` in another directory, the document written is :meth:`rebased` to that path's
        ``file://`` URL (targets below the new directory stay relative, others become absolute
        URLs), so it reads the same objects from where it is saved (:class:`ManifestError`
        for a target that no path names from there).
        """
        try:
            where: str | None = path_url(os.fspath(path))
        except ValueError:  # no URL for the path (a NUL character): the save refuses it, naming it
            where = None
        save_atomically(path, (self if where is None else self.rebased(where)).dumps())

    def _first_unrebased(self, new: str | None) -> None:
        """Raise :class:`ManifestError` for the first entry whose target no path names from ``new``."""
        for index, entry in enumerate(self.entries):
            if entry.path is not None:
                try:
                    rebase(entry.path, self.url, new)
                except ValueError as exc:
                    raise ManifestError(str(exc), manifest=self.name, entry=index, field="path") from None

    def rebased(self, url: Base) -> Manifest:
        """This manifest as a document at ``url`` (:func:`~kvmap.places.place_url`): each target
        rewritten (:func:`kvmap.url.rebase`) so that, resolved against ``url``, it names what it
        names now; the manifest itself (``url`` set) where no target changes, the usual case of
        one directory. Only the paths change: entries, windows and entry numbers stay. Raises
        :class:`ManifestError` naming the entry for a target no path names from ``url``
        (:func:`kvmap.url.rebase`).

        >>> m = Manifest.from_json([{"key": "a", "path": "data/a.bin"}], url="file:///d/m.json")
        >>> m.rebased("file:///d/sub/m.json").entries[0].path
        'file:///d/data/a.bin'
        >>> m.rebased("file:///d/n.json").entries[0].path
        'data/a.bin'
        """
        new, _ = _base(url, None)
        if new == self.url:
            return self
        cols, others = self._exact, self._others
        paths = set(cols.distinct_paths) | {e.path for _, e in others if e.path is not None}
        changed: dict[str, str] = {}
        for p in paths:
            try:
                q = rebase(p, self.url, new)
            except ValueError:
                self._first_unrebased(new)
                raise
            if q != p:
                changed[p] = q
        if not changed:
            same = object.__new__(Manifest)
            same.url, same.name = new, self.name
            same._raw, same._exact, same._others = self._raw, self._exact, self._others
            return same
        entries = [
            {**e, "path": changed[e["path"]]} if isinstance(e.get("path"), str) and e["path"] in changed else e
            for e in self.to_json()["entries"]
        ]
        return Manifest.from_json(entries, new, name=self.name)


def save_atomically(path: str | os.PathLike[str], data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` to the local file ``path`` atomically, as :meth:`Manifest.save` says
    (temporary file, ``fsync``, rename, directory ``fsync``, stale temporaries removed).
    ``data`` may be the bytes, or a function that writes them to the file it is given (an
    output written as it is made, never held whole). Raises :class:`~kvmap.SaveError`; then
    the old file, if any, is unchanged."""
    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    directory, name = os.path.split(target)
    try:
        fd, tmp = _create_temp(directory, name)
    except ValueError as exc:  # e.g. a NUL character in the path
        raise SaveError(errno.EINVAL, f"cannot save the manifest: {exc}", target) from exc
    except OSError as exc:
        raise _save_error(exc, target) from exc
    try:
        try:
            if callable(data):
                with os.fdopen(fd, "wb", closefd=False) as f:
                    data(f)
            else:
                _write_all(fd, data)
            os.fsync(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # only ever this save's own name
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the lock: after the rename or the unlink
    except OSError as exc:
        raise _save_error(exc, target) from exc
    _fsync_directory(directory)
    _remove_stale_temps(directory, name)


#: Of the saved file's name, at most this many bytes go into its temporary name
#: (which adds at most 40 to them, within the usual limit of 255).
_TEMP_NAME_BYTES = 200
_TEMP_TAIL = re.compile(r"([1-9][0-9]{0,9})-[0-9a-f]{16}\.tmp")


def _temp_prefix(name: str) -> str:
    """``.{name}.kvmap-``: the temporary names of saves to ``name`` start so."""
    while len(os.fsencode(name)) > _TEMP_NAME_BYTES:
        name = name[:-1]
    return f".{name}.kvmap-"


def _create_temp(directory: str, name: str) -> tuple[int, str]:
    """A new temporary file for saving to ``name``, locked: its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    prefix = _temp_prefix(name)
    for _ in range(100):
        tmp = os.path.join(directory, f"{prefix}{os.getpid()}-{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as to any new file
        except FileExistsError:
            continue
        if sys.platform != "win32":
            try:
                # Blocking: a cleaner (of another pid namespace) may hold it for a moment.
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass  # no locks on this file system: cleaners cannot lock it either, so keep it
            except BaseException:
                os.close(fd)
                os.unlink(tmp)
                raise
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _save_error(exc: OSError, target: str) -> SaveError:
    if exc.errno is None:
        return SaveError(f"cannot save the manifest to {target}: {exc}")
    return SaveError(exc.errno, f"cannot save the manifest: {exc.strerror}", target)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(directory: str, name: str) -> None:
    """Remove the temporary files that killed saves to ``name`` left (best effort)."""
    if sys.platform == "win32":
        return  # no flock, and os.kill(pid, 0) would end the process
    prefix = _temp_prefix(name)
    try:
        with os.scandir(directory) as listing:
            candidates = [entry.name for entry in listing if entry.name.startswith(prefix)]
    except OSError:
        return
    for candidate in candidates:
        match = _TEMP_TAIL.fullmatch(candidate, len(prefix))
        if match is not None and not _pid_alive(int(match[1])):
            with contextlib.suppress(OSError):
                _remove_if_unlocked(os.path.join(directory, candidate))


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` may be a live process on this host (``True`` when unsure)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # PermissionError: it exists (another user's)
    return True


def _remove_if_unlocked(path: str) -> None:
    """Unlink the temporary file ``path`` if no process holds its lock."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # held by a live save (or no locks here: then it cannot be told apart)
        now = os.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
            os.unlink(path)
    finally:
        os.close(fd)


def _base(url: Base, name: str | None) -> tuple[str | None, str | None]:
    """The document URL ``url`` stands for, and the name errors call the document (a URL
    the caller gave; not the working directory it defaulted to)."""
    if url is HERE:
        return working_directory_url(), name
    if url is None:
        return None, name
    if isinstance(url, str) and is_absolute(url) and not is_local_path(url):
        return url, name if name is not None else url
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"a manifest URL is a URL or a path, not {type(url).__name__}")
    return place_url(url), name if name is not None else os.fspath(url)


def _document_entries(document: Any, name: str | None) -> list[Any]:
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise ManifestError("a manifest must be a JSON object or an array of entries", manifest=name)
    version = document.get("kvmap")
    if type(version) is not int or version != FORMAT_VERSION:
        found = "missing" if "kvmap" not in document else _short_repr(version)
        looks = hint(document) if "kvmap" not in document else None
        reason = f"unsupported manifest version {found}: this kvmap reads version {FORMAT_VERSION}"
        raise ManifestError(
            reason if looks is None else f"not a kvmap manifest (no member 'kvmap'); it looks like {looks}",
            manifest=name,
            field="kvmap",
        )
    for member in document:
        if member not in _DOCUMENT_FIELDS:
            raise ManifestError("unknown document member", manifest=name, field=member)
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise ManifestError("'entries' must be an array of entries", manifest=name, field="entries")
    return entries


def _short_repr(value: object) -> str:
    """``repr(value)`` for an error message, at most 80 characters, whatever the value (a
    10,000-digit integer or a list nested 1,000 deep has a repr that raises)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _copied(entry: dict[str, Any]) -> dict[str, Any]:
    copy = dict(entry)
    value = copy.get("json")
    if isinstance(value, (list, dict)):
        copy["json"] = _deep_copy(value)
    return copy


def _deep_copy(value: Any, depth: int = 0) -> Any:
    """``value``'s lists and dicts copied; deeper than any valid ``json`` value is left as it is
    (validation then refuses it)."""
    if depth > _JSON_DEPTH:
        return value
    if type(value) is list:
        return [_deep_copy(v, depth + 1) for v in value]
    if type(value) is dict:
        return {k: _deep_copy(v, depth + 1) for k, v in value.items()}
    return value


def parse_json(text: str | bytes, name: str | None) -> Any:
    """The JSON value of ``text``, its integers exact; :class:`ManifestError` if it is not JSON.

    orjson reads an integer beyond 64 bits as a float (``2**64`` comes back as
    ``1.8446744073709552e+19``), which would let text pass that the same value as a
    Python object does not; msgspec keeps such integers as ``int``, so the one
    validator sees them. What msgspec refuses, orjson then parses or explains: the
    error messages stay orjson's, and the two refuse the same texts (the only
    difference known is nesting about 1,000 deep, which no valid document has).
    """
    try:
        return msgspec.json.decode(text)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        pass
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"not valid JSON: {exc}", manifest=name) from None


def _decode_bulk(text: str | bytes) -> list[_BulkEntry] | None:
    """The entries, if the whole document has the bulk shape and valid types; else ``None``."""
    head = text.lstrip()[:1]
    try:
        if head in ("[", b"["):
            return _BULK_ARRAY.decode(text)
        if head in ("{", b"{"):
            return _BULK_OBJECT.decode(text).entries
    except (msgspec.MsgspecError, ValueError, RecursionError):
        # Includes UnicodeDecodeError (invalid UTF-8 in a member name): the
        # general path says what is wrong with such a document.
        pass
    return None


def _is_bulk(raw: list[Any]) -> bool:
    return bool(raw) and type(raw[0]) is _BulkEntry


def _as_object(entry: Any) -> Any:
    """An entry as its JSON object (typed bulk entries become dicts)."""
    return msgspec.to_builtins(entry) if type(entry) is _BulkEntry else entry


def _relative_path_error(name: str | None, index: int) -> ManifestError:
    return ManifestError(
        "is a relative reference, but the manifest has no URL to resolve it against",
        manifest=name,
        entry=index,
        field="path",
    )


def _root_is_relative(path: str) -> bool:
    root = path.partition(PIPELINE_SEPARATOR)[0]
    return not is_absolute(root) and not is_local_path(root)


def _validate_one_by_one(raw: list[Any], name: str | None, url: str | None) -> list[Entry]:
    """The definition of validity: each entry in order; raise at the first bad one."""
    out = []
    for i, obj in enumerate(raw):
        entry = Entry.from_json(obj, i, name)
        if url is None and entry.path is not None and _root_is_relative(entry.path):
            raise _relative_path_error(name, i)
        out.append(entry)
    return out


def _validate_entries(
    raw: list[Any], name: str | None, url: str | None
) -> tuple[ExactColumns, list[tuple[int, Entry]]]:
    """Split valid entries into exact-key columns and the rest; raise on the first bad entry."""
    exact = _columns_if_valid(raw, url)
    if exact is not None:
        rest = () if len(exact.index) == len(raw) else sorted(set(range(len(raw))) - set(exact.index))
        try:
            others = [(i, Entry.from_json(raw[i], i, name)) for i in rest]
        except ManifestError:
            others = None  # the entry-by-entry pass reports the lowest bad index, which may be a fast one
        relative = url is None and any(e.path is not None and _root_is_relative(e.path) for _, e in others or ())
        if others is not None and not relative:
            return exact, others
    # The column checks are conservative (a str subclass, say, is "suspect"): the
    # definition decides, and what it accepts is kept as Entry objects.
    return _NO_EXACT, list(enumerate(_validate_one_by_one(raw, name, url)))


def _columns_if_valid(raw: list[Any], url: str | None) -> ExactColumns | None:
    """Columns of the valid plain exact-key entries, or ``None`` if any of them is suspect."""
    if not raw:
        return _NO_EXACT
    if set(map(type, raw)) != {dict}:
        return None
    rows: list[dict[str, Any]] = raw
    index: Sequence[int] = range(len(raw))
    offsets: list[Any]
    lengths: list[Any]
    try:
        # The bulk shape, every entry exactly {key, path, offset, length}: a KeyError
        # or a member count above 4n sends anything else to the general path.
        keys, paths, offsets, lengths = (list(map(itemgetter(name), raw)) for name in _BULK_FIELDS)
        if sum(map(len, raw)) != 4 * len(raw):
            raise KeyError
    except KeyError:
        if not _uniform_exact(raw):
            distinct = set(map(tuple, raw))
            fast_shapes = {s for s in distinct if "key" in s and "path" in s and _FAST_FIELDS.issuperset(s)}
            if not fast_shapes:
                return _NO_EXACT
            index = [i for i, s in enumerate(map(tuple, raw)) if s in fast_shapes]
            rows = [raw[i] for i in index]
        keys = list(map(itemgetter("key"), rows))
        paths = list(map(itemgetter("path"), rows))
        offsets = _optional_column(rows, "offset")
        lengths = _optional_column(rows, "length")
    return _checked_columns(index, keys, paths, offsets, lengths, url, typed=False)


def _checked_columns(
    index: Sequence[int],
    keys: list[Any],
    paths: list[Any],
    offsets: list[Any],
    lengths: list[Any],
    url: str | None,
    *,
    typed: bool,
) -> ExactColumns | None:
    """The columns, if every value is valid; ``None`` if any is suspect.

    ``typed``: the values come from a typed decode of JSON text, so their types,
    their ranges and their Unicode are checked already.
    """
    if not typed and not set(map(type, paths)) <= {str, type(None)}:
        return None  # before set(paths): a list or object is not even hashable
    distinct_paths = set(paths)
    has_null_path = None in distinct_paths
    distinct_paths.discard(None)
    if not typed and not (_all_text(keys) and _all_text(distinct_paths)):
        return None
    if url is None and any(_root_is_relative(p) for p in distinct_paths):
        return None
    offset_array, length_array = _window_array(offsets, typed), _window_array(lengths, typed)
    if offset_array is None or length_array is None:
        return None
    if has_null_path and any(
        p is None and (o >= 0 or n >= 0)
        for p, o, n in zip(paths, offset_array.tolist(), length_array.tolist(), strict=True)
    ):
        return None
    return ExactColumns(index, keys, paths, offset_array, length_array, distinct_paths)


def _unset_for_none(values: Sequence[int | None] | None, n: int) -> list[Any]:
    """``values`` as a list, ``msgspec.UNSET`` where a value is ``None`` (all, for ``None``)."""
    if values is None:
        return [msgspec.UNSET] * n
    if None not in values:  # one C-speed scan; the usual case has every window
        return list(values)
    return [msgspec.UNSET if v is None else v for v in values]


def _window_array(values: list[Any], typed: bool = False) -> npt.NDArray[np.int64] | None:
    """Window values as int64 with -1 for "not set" (``UNSET``); ``None`` if any is invalid."""
    types = set(map(type, values))  # excludes null, booleans and floats in one pass
    if not types <= {int, msgspec.UnsetType}:
        return None
    if msgspec.UnsetType in types:
        present = [v for v in values if v is not msgspec.UNSET]
        if not typed and present and (min(present) < 0 or max(present) > MAX_INT):
            return None
        values = [-1 if v is msgspec.UNSET else v for v in values]
    try:
        array = np.array(values, dtype=np.int64)
    except OverflowError:
        return None
    if not typed and msgspec.UnsetType not in types and array.size and (np.min(array) < 0 or np.max(array) > MAX_INT):
        return None
    return array


def _uniform_exact(raw: list[dict[str, Any]]) -> bool:
    """Whether every entry has ``key``, ``path`` and nothing but ``offset``/``length`` besides.

    Counting members instead of collecting each entry's member names avoids a
    tuple per entry: when every entry has key and path, the member counts add up
    to ``2n + #offset + #length`` exactly when no entry has any other member.
    """
    n = len(raw)
    has = {name: sum(map(dict.__contains__, raw, repeat(name))) for name in _FAST_FIELDS}
    return has["key"] == n and has["path"] == n and sum(map(len, raw)) == 2 * n + has["offset"] + has["length"]


def _optional_column(rows: list[dict[str, Any]], name: str) -> list[Any]:
    """The member's values, with ``msgspec.UNSET`` where an entry does not have it."""
    count = sum(map(dict.__contains__, rows, repeat(name)))
    if count == 0:
        return [msgspec.UNSET] * len(rows)
    return list(map(itemgetter(name), rows)) if count == len(rows) else [e.get(name, msgspec.UNSET) for e in rows]


def _all_text(values: Collection[Any]) -> bool:
    """Whether every value is a ``str`` of Unicode scalar values (no lone surrogates)."""
    if not values:
        return True
    if set(map(type, values)) != {str}:
        return False
    if all(map(str.isascii, values)):
        return True
    try:
        for v in values:
            v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
