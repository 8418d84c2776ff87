"""Root URLs onto obstore stores: which store, which object path.

========================================  =============================================
URL                                       store, object path
========================================  =============================================
``file:///abs/path``                      ``LocalStore("/")``, ``abs/path``
``memory://NAME/path``                    the process's named ``MemoryStore`` NAME, ``path``
``s3://bucket/key``                       ``S3Store(bucket)``, ``key``
``s3+http(s)://host:port/bucket/key``     ``S3Store(bucket, endpoint=http(s)://host:port)``, ``key``
``gs://bucket/key``                       ``GCSStore(bucket)``, ``key``
``az://container/key``                    ``AzureStore(container)``, ``key``
``http(s)://host/path``                   :class:`~kvmap.httpio.HTTPSource` for reads (it never
                                          follows a redirect), ``HTTPStore`` for writes; ``path``
========================================  =============================================

Object paths are the URL's path percent-decoded. Stores are made lazily, one per
(scheme, authority, bucket, caller options), and cached. Credentials and client
options come only from the caller — ``options`` maps ``/``-terminated URL prefixes
to keyword arguments of the obstore store constructor (``config``,
``client_options``, ``retry_config``, ``credential_provider``), longest prefix
winning — never from a manifest.

:func:`local_realpath` is the filesystem half of the security policy: the real
path of a ``file://`` target, which :class:`~kvmap.Policy` holds to the real path
of the directory that allows it.

>>> roots = Roots()
>>> store, path = roots.open("memory://doc/a%20b/c")
>>> path
'a b/c'
>>> memory_store("doc") is store
True
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

from obstore.store import AzureStore, GCSStore, HTTPStore, LocalStore, MemoryStore, S3Store

from kvmap.errors import PipelineError
from kvmap.httpio import HTTPSource
from kvmap.url import is_plain_name, split_name

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore

__all__ = ["RealPaths", "Roots", "local_realpath", "memory_store"]

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(/[^?#]*)?\Z", re.S)
_SCHEMES = ("file", "memory", "s3", "s3+http", "s3+https", "gs", "az", "http", "https")
_MEMORY: dict[str, MemoryStore] = {}
_MEMORY_LOCK = threading.Lock()
# Bound on the URL -> (store, path) memo: it pays off for the few URLs that hold
# many windows, and must not grow with every distinct chunk URL.
_MEMO_SIZE = 4096


def memory_store(name: str) -> MemoryStore:
    """The process's in-memory store called ``name`` (``memory://NAME/``), made on first use."""
    with _MEMORY_LOCK:
        store = _MEMORY.get(name)
        if store is None:
            store = _MEMORY[name] = MemoryStore()
        return store


def local_realpath(path: str) -> str | None:
    """The real path of the local absolute path ``path``: every symbolic link resolved, as opening
    it would. For a path that does not exist, its deepest existing parent is resolved and the rest
    kept; a dangling link is followed to where it points. ``None`` for a path the system cannot
    take (a NUL byte). A link loop is left as it is (opening it fails).

    >>> local_realpath("/nonexistent-kvmap/a//b/")
    '/nonexistent-kvmap/a/b'
    """
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


class RealPaths:
    """:func:`local_realpath` with the real paths of directories remembered (at most ``size``).

    A target's real path is its directory's (remembered) joined with its name, unless the
    name is itself a link; so a prefix redirect over many files costs one ``lstat`` per
    file, not one per path component. Like the policy decisions it serves, what it
    remembers is not re-checked until :meth:`forget`. All instances are equal: they give
    the same answers.
    """

    __slots__ = ("_dirs", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._dirs: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        parent, _, name = path.rpartition("/")
        if name in ("", ".", "..") or not parent:
            return local_realpath(path)
        try:
            if os.path.islink(path):
                return local_realpath(path)
        except ValueError:  # a NUL byte
            return None
        real = self._dirs.get(parent)
        if real is None:
            real = local_realpath(parent)
            if real is None:
                return None
            if len(self._dirs) >= self.size:
                self._dirs.clear()
            self._dirs[parent] = real
        return f"{real.rstrip('/')}/{name}"

    def forget(self) -> None:
        """Drop every remembered directory."""
        self._dirs.clear()

    def __repr__(self) -> str:
        return "RealPaths()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RealPaths)

    def __hash__(self) -> int:
        return hash(RealPaths)


class Roots:
    """Opens root URLs as (obstore store, object path), with caller options per URL prefix.

    Raises ``ValueError`` if an options prefix does not end in ``/``.
    """

    __slots__ = ("_folders", "_memo", "_prefixes", "_stores", "options")

    def __init__(self, options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.options: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (options or {}).items()}
        for prefix in self.options:
            if not prefix.endswith("/"):
                raise ValueError(f"store options prefix {prefix!r} must end in '/'")
        self._prefixes = sorted(self.options, key=len, reverse=True)
        self._stores: dict[tuple[str, str, str, str | None, bool], ObjectStore] = {}
        self._memo: dict[str, tuple[ObjectStore, str]] = {}
        self._folders: dict[str, tuple[ObjectStore, str]] = {}  # directory URL -> (store, its path)

    def open(self, url: str, *, directory: bool = False) -> tuple[ObjectStore, str]:
        """The store holding the object at root URL ``url``, and its path in that store.
        With ``directory``, ``url`` may name a store's root (path ``""``), to list it. For
        ``http(s)://`` the "store" is an :class:`~kvmap.httpio.HTTPSource`, kvmap's own client
        that never follows a redirect (obstore's ``HTTPStore`` follows them anywhere).

        Raises :class:`~kvmap.PipelineError` for an unsupported scheme, a
        malformed URL or one that names no object.
        """
        found = self._memo.get(url)
        if found is not None and (found[1] or directory):
            return found
        directory_url, name = split_name(url)
        plain = is_plain_name(name)
        if plain:
            # A sibling of a URL opened before (a redirected array's next chunk): same store,
            # and the path is the directory's path and the name (is_plain_name).
            folder = self._folders.get(directory_url)
            if folder is not None:
                return folder[0], folder[1] + name
        m = _URL.match(url)
        if m is None:
            raise PipelineError(f"{url!r} is not a URL kvmap can read (scheme://authority/path, no query)")
        scheme, authority, path = m.group(1).lower(), m.group(2), m.group(3) or ""
        if scheme not in _SCHEMES:
            raise PipelineError(f"{url!r}: kvmap reads {', '.join(_SCHEMES)} URLs, not {scheme}://")
        try:
            path = unquote(path, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise PipelineError(f"{url!r}: the path does not decode as UTF-8") from None
        path = path[1:]
        bucket = ""
        if scheme in ("s3+http", "s3+https"):
            bucket, _, path = path.partition("/")
        elif scheme == "file" and authority not in ("", "localhost"):
            raise PipelineError(f"{url!r}: a file URL names no host (file:///path)")
        if (not path and not directory) or (not bucket and scheme in ("s3+http", "s3+https")):
            raise PipelineError(f"{url!r} names no object")
        store = self._store(url, scheme, authority, bucket)
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[url] = (store, path)
        if plain and path.endswith(name):  # not when the name is a bucket (s3+http://host/bucket)
            if len(self._folders) >= _MEMO_SIZE:
                self._folders.clear()
            self._folders[directory_url] = (store, path[: len(path) - len(name)])
        return store, path

    def open_for_write(self, url: str) -> tuple[ObjectStore, str]:
        """:meth:`open` for a write: the same, but an obstore ``HTTPStore`` for ``http(s)://``
        (a PUT answered with a redirect fails there; it is not followed)."""
        store, path = self.open(url)
        if isinstance(store, HTTPSource):
            m = _URL.match(url)
            assert m is not None
            store = self._store(url, m.group(1).lower(), m.group(2), "", write=True)
        return store, path

    def _store(self, url: str, scheme: str, authority: str, bucket: str, *, write: bool = False) -> ObjectStore:
        prefix = next((p for p in self._prefixes if url.startswith(p)), None)
        ident = (scheme, authority, bucket, prefix, write)
        store = self._stores.get(ident)
        if store is None:
            options = dict(self.options.get(prefix or "", {}))
            if scheme in ("http", "https") and not write:
                client = dict(options.get("client_options", {}))
                if scheme == "http":
                    client.setdefault("allow_http", True)  # the URL says plain http
                source = HTTPSource(
                    f"{scheme}://{authority}/", client_options=client, retry_config=options.get("retry_config")
                )
                store = cast("ObjectStore", source)
            else:
                store = self._make(scheme, authority, bucket, options)
            self._stores[ident] = store
        return store

    @staticmethod
    def _make(scheme: str, authority: str, bucket: str, options: dict[str, Any]) -> ObjectStore:
        if scheme == "file":
            return LocalStore("/")
        if scheme == "memory":
            return memory_store(authority)
        if scheme == "s3":
            return S3Store(authority, **options)
        if scheme in ("s3+http", "s3+https"):
            client = cast("ClientConfig", dict(options.pop("client_options", {})))
            if scheme == "s3+http":
                client.setdefault("allow_http", True)
            endpoint = f"{scheme.removeprefix('s3+')}://{authority}"
            if "virtual_hosted_style_request" not in {*options, *options.get("config", {})}:
                # The URL puts the bucket in the path, so address it there.
                options["virtual_hosted_style_request"] = False
            return S3Store(bucket, endpoint=endpoint, client_options=client, **options)
        if scheme == "gs":
            return GCSStore(authority, **options)
        if scheme == "az":
            return AzureStore(authority, **options)
        client = cast("ClientConfig", dict(options.pop("client_options", {})))
        if scheme == "http":
            client.setdefault("allow_http", True)
        return HTTPStore.from_url(f"{scheme}://{authority}/", client_options=client, **options)
