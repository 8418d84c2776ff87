"""fsspec's URLs and kvmap's, both ways: the one table kerchunk JSON and kerchunk parquet share.

A kerchunk reference names an object as fsspec reads it; kvmap must read the same object. fsspec
takes the path of ``file``, ``s3``, ``gs`` and ``az`` URLs literally, where kvmap's URLs are
percent-encoded (RFC 3986), so paths are encoded on the way in and decoded on the way out;
``http(s)`` URLs are URLs already. What kvmap cannot read as fsspec does — fsspec's process-global
``memory://``, chained ``a::b`` URLs, ``data:`` URLs, home directories, unknown protocols — is
refused with the reason, never mapped onto something else. The table itself is in
:mod:`kvmap.formats.kerchunk`'s module documentation.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["RefusedError", "fsspec_url", "kvmap_url"]

# Characters a URL path keeps as they are: unreserved, sub-delims, ":", "@" and "/".
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
_PATH_SAFE_ALL = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" + _PATH_SAFE
_HTTP_SAFE = _PATH_SAFE + "?#[]%"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_BUCKET = re.compile(r"[A-Za-z0-9._\-]+\Z")
_KVMAP_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(/[^?#]*)?\Z", re.S)


class RefusedError(Exception):
    """A value or URL kvmap cannot take, and why (``reason``); the caller names where it is
    (``field``: the member it is in, when the raiser knows)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def kvmap_url(url: str) -> str:
    """The kvmap URL (or relative reference) of the object fsspec reads at ``url``; raises
    :class:`RefusedError` for what kvmap cannot read as fsspec does."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        if len(protocol) > 1:  # fsspec: a one-letter protocol is a Windows drive
            return _protocol_url(protocol, rest)
    if url.startswith("data:"):
        raise RefusedError("data: URLs are not read by kvmap: store the bytes inline instead")
    for prefix in ("file:", "local:"):  # fsspec's local file system strips these
        if url.startswith(prefix):
            url = url[len(prefix) :]
            break
    return _local(url)


def _protocol_url(protocol: str, rest: str) -> str:
    scheme = protocol.lower()
    if scheme in ("file", "local"):
        return _local(rest)
    if scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"):
        bucket, slash, key = rest.partition("/")
        if scheme in ("abfs", "abfss", "az") and "@" in bucket:
            raise RefusedError(
                "names the storage account in the URL; kvmap takes the account from the caller's store "
                f"options: write az://{bucket.partition('@')[0]}/{key}"
            )
        if not _BUCKET.match(bucket):
            raise RefusedError(f"{bucket!r} is not a bucket or container name kvmap can address")
        out = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(scheme, scheme)
        return f"{out}://{bucket}{slash}{_quote(key, _PATH_SAFE)}"
    if scheme in ("http", "https"):
        # A URL already: only what a URL cannot hold is encoded (space, |, non-ASCII, a stray %).
        if rest.strip(_PATH_SAFE_ALL + "?#[]%"):
            rest = _quote(_BAD_ESCAPE.sub("%25", rest), _HTTP_SAFE)
        elif "%" in rest:
            rest = _BAD_ESCAPE.sub("%25", rest)
        return f"{scheme}://{rest}"
    if scheme == "memory":
        raise RefusedError(
            "fsspec's memory:// is its process-global MemoryFileSystem, which kvmap cannot reach "
            "(kvmap's memory://NAME/ is a store of its own): put the objects in files or an object store"
        )
    if scheme == "adl":
        raise RefusedError("adl:// is Azure Data Lake Gen1, which kvmap does not read (az:// is Blob storage)")
    if "::" in protocol:
        raise RefusedError("is a chained fsspec URL (a::b), which kvmap does not read; reference the objects directly")
    raise RefusedError(f"kvmap does not read {protocol}:// URLs (it reads s3, gs, az, http(s) and local files)")


def _local(path: str) -> str:
    """A local path as fsspec's local file system reads it, as a kvmap reference."""
    if path.startswith("~"):
        raise RefusedError("a path in the user's home directory (~) means another file for every user")
    if path == "":
        raise RefusedError("is empty")
    stripped = path.rstrip("/")  # fsspec's local file system drops a trailing /
    path = stripped or path[:1]
    if path.startswith("/"):
        return "file://" + _quote(path, _PATH_SAFE)
    # A relative path: ":" is escaped, or its first segment would read as a scheme.
    return _quote(path, _PATH_SAFE.replace(":", ""))


def _quote(path: str, safe: str) -> str:
    """``path`` percent-encoded so that kvmap's decoding gives it back (a cheap test first)."""
    if not path.strip(_PATH_SAFE_ALL) and (":" in safe or ":" not in path):
        return path
    try:
        return quote(path, safe=safe, encoding="utf-8", errors="strict")
    except UnicodeEncodeError:
        raise RefusedError("holds a lone surrogate (not valid Unicode)") from None


def fsspec_url(url: str) -> str:
    """The fsspec URL of the absolute kvmap URL ``url`` (no pipeline): its object path
    percent-decoded, ``http(s)`` as it is; raises :class:`RefusedError` for what fsspec would
    read elsewhere or not at all."""
    m = _KVMAP_URL.match(url)
    if m is None:
        raise RefusedError("is not a URL fsspec and kvmap read alike (scheme://authority/path, no query)")
    scheme, authority, object_path = m.group(1).lower(), m.group(2), m.group(3) or ""
    if scheme in ("http", "https"):
        return url
    if scheme == "memory":
        raise RefusedError("kvmap's memory:// stores are not fsspec's memory file system")
    if scheme in ("s3+http", "s3+https"):
        raise RefusedError(
            "fsspec cannot name an S3 endpoint in a URL: rewrite it as s3:// and give fsspec the endpoint"
        )
    if scheme not in ("file", "s3", "gs", "az"):
        raise RefusedError(f"kvmap does not read {scheme}:// URLs, so it cannot say what fsspec should read")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise RefusedError("a file URL names no host")
        authority = ""
    try:
        decoded = unquote(object_path, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise RefusedError("the path does not decode as UTF-8") from None
    return f"{scheme}://{authority}{decoded}"
