"""URL syntax kvmap needs before any I/O: relative references and key remainders.

* :func:`join` resolves a reference against a base URL exactly as RFC 3986
  section 5.2 says, for every scheme (``urllib.parse.urljoin`` only knows a fixed
  list of schemes and leaves ``s3://b/a/`` + ``../x`` unresolved).
* :func:`encode_remainder` turns the part of a key that a prefix or range entry
  appends to its target into URL text that decodes back to exactly that part.

>>> join("s3://bucket/a/m.json", "../data/")
's3://bucket/data/'
>>> encode_remainder("c/0 1|é")
'c/0%201%7C%C3%A9'
>>> decode_remainder("c/0%201%7C%C3%A9")
'c/0 1|é'
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from kvmap.errors import InvalidKeyError

__all__ = [
    "PIPELINE_SEPARATOR",
    "REMAINDER_SAFE",
    "decode_remainder",
    "encode_remainder",
    "is_absolute",
    "is_plain_name",
    "join",
    "rebase",
    "relative_reference",
    "resolve_target",
    "split_name",
]

PIPELINE_SEPARATOR = "|"

#: Characters a key remainder keeps as they are: RFC 3986 "unreserved" and "/".
#: ``not text.strip(REMAINDER_SAFE)`` is a C-speed test that ``text`` needs no escaping.
REMAINDER_SAFE = "-./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"

# RFC 3986 appendix B, with the scheme restricted to RFC 3986 section 3.1.
_URI = re.compile(r"^(?:([A-Za-z][A-Za-z0-9+.\-]*):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$", re.S)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def encode_remainder(remainder: str) -> str:
    """Percent-encode ``remainder`` for appending to a target URL.

    Every UTF-8 byte outside :data:`REMAINDER_SAFE` becomes ``%XX`` (upper-case
    hex). Raises :class:`~kvmap.InvalidKeyError` if the text holds a lone
    surrogate, which has no UTF-8 form.
    """
    # str.strip with the safe set empties a string made only of safe characters:
    # a C-speed test that skips quote() for the common, all-safe key.
    if not remainder.strip(REMAINDER_SAFE):
        return remainder
    try:
        return quote(remainder, safe="/", encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"key text {remainder!r} is not valid Unicode: {exc.reason}") from None


def decode_remainder(text: str) -> str:
    """Invert :func:`encode_remainder` (strict UTF-8 percent-decoding)."""
    return unquote(text, encoding="utf-8", errors="strict")


def is_plain_name(name: str) -> bool:
    """Whether ``name``, the text after a URL's last ``/``, is its own decoded last path
    segment: non-empty, not ``.`` or ``..``, and without ``%``, ``?`` or ``#``. Then a
    URL's directory (the text up to its last ``/``) decides everything about it but the
    name, which caches per directory rely on.

    >>> is_plain_name("0.1"), is_plain_name("a%2Fb"), is_plain_name("..")
    (True, False, False)
    """
    return name not in ("", ".", "..") and "%" not in name and "?" not in name and "#" not in name


def split_name(url: str) -> tuple[str, str]:
    """``url`` as (its directory: the text up to and including its last ``/``, the name after it).

    >>> split_name("file:///d/a/0.1"), split_name("s3://b/")
    (('file:///d/a/', '0.1'), ('s3://b/', ''))
    """
    cut = url.rfind("/") + 1
    return url[:cut], url[cut:]


# A drive letter, then a separator: a Windows path, not a one-letter URL scheme (no such
# scheme is registered).
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


def is_absolute(reference: str) -> bool:
    """Whether ``reference`` starts with an RFC 3986 scheme (``s3:``, ``file:``...)."""
    return _SCHEME.match(reference) is not None


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 section 5.2.4, written over a list of output segments.
    out: list[str] = []
    i = 0
    while i < len(path):
        if path.startswith("../", i):
            i += 3
        elif path.startswith("./", i) or path.startswith("/./", i):
            i += 2
        elif path[i:] == "/.":
            path, i = "/", 0
        elif path.startswith("/../", i) or path[i:] == "/..":
            if path[i:] == "/..":
                path, i = "/", 0
            else:
                i += 3
            if out:
                out.pop()
        elif path[i:] in (".", ".."):
            i = len(path)
        else:
            j = path.find("/", i + 1)
            if j < 0:
                j = len(path)
            out.append(path[i:j])
            i = j
    return "".join(out)


def _merge(base_authority: str | None, base_path: str, ref_path: str) -> str:
    if base_authority is not None and base_path == "":
        return "/" + ref_path
    return base_path[: base_path.rfind("/") + 1] + ref_path


def join(base: str, reference: str) -> str:
    """Resolve ``reference`` against the absolute URL ``base`` (RFC 3986 section 5.2).

    Raises ``ValueError`` if ``base`` has no scheme.

    >>> join("memory://store/x/y.json", "//other/z")
    'memory://other/z'
    """
    b = _URI.match(base)
    r = _URI.match(reference)
    assert b is not None
    assert r is not None
    b_scheme, b_auth, b_path, b_query, _ = b.groups()
    if b_scheme is None:
        raise ValueError(f"base URL {base!r} is not absolute")
    scheme, auth, path, query, frag = r.groups()
    if scheme is not None:
        path = _remove_dot_segments(path)
    elif auth is not None:
        scheme, path = b_scheme, _remove_dot_segments(path)
    else:
        scheme, auth = b_scheme, b_auth
        if path == "":
            path = b_path
            if query is None:
                query = b_query
        elif path.startswith("/"):
            path = _remove_dot_segments(path)
        else:
            path = _remove_dot_segments(_merge(b_auth, b_path, path))
    out = scheme + ":"
    if auth is not None:
        out += "//" + auth
    out += path
    if query is not None:
        out += "?" + query
    if frag is not None:
        out += "#" + frag
    return out


def is_local_path(reference: str) -> bool:
    """Whether ``reference`` is an absolute OS path: ``/x`` (not ``//host``) or a drive path
    (``C:\\x``, ``C:/x``). In a document whose URL is ``file://``, or that has none, such a
    path names that local file (spec 5.1).

    >>> is_local_path("/data/x.nc"), is_local_path("C:/d/x.nc"), is_local_path("//h/x"), is_local_path("x")
    (True, True, False, False)
    """
    return (reference.startswith("/") and not reference.startswith("//")) or _DRIVE.match(reference) is not None


def _local_base(base: str | None) -> bool:
    return base is None or base[:5].lower() == "file:"


def resolve_target(base: str | None, path: str) -> str:
    """Make a manifest entry's ``path`` absolute.

    Only the root of a URL pipeline (the text before the first ``|``) is a
    reference; the adapters after it are kept verbatim. When the document itself
    sits inside an adapter (``base`` is a pipeline such as ``file:///a.zip|zip:d/m.json``),
    a relative reference names a sibling in that adapter's namespace (``c/0`` ->
    ``file:///a.zip|zip:d/c/0``) and cannot climb out of it; a network-path
    reference (``//host/x``) resolves against the pipeline's root. Where ``base`` is a
    ``file://`` URL or ``None``, an absolute OS path (:func:`is_local_path`) names that
    local file: ``/x`` as the reference it is against ``file:///``, a drive path as
    ``file:///C:/x``. Raises ``ValueError`` when the root is relative and there is no ``base``.

    >>> resolve_target("file:///a.zip|zip:d/m.json", "../c/0")
    'file:///a.zip|zip:c/0'
    >>> resolve_target(None, "/data/x.nc"), resolve_target("file:///m.json", "D:/x/y.nc")
    ('file:///data/x.nc', 'file:///D:/x/y.nc')
    """
    root, sep, rest = path.partition(PIPELINE_SEPARATOR)
    if _DRIVE.match(root) and _local_base(base):
        return "file:///" + root.replace("\\", "/") + sep + rest
    if is_absolute(root):
        return path
    if base is None:
        if is_local_path(root):
            return join("file:///", root) + sep + rest
        raise ValueError("relative reference, but the manifest has no URL to resolve it against")
    head, bar, last = base.rpartition(PIPELINE_SEPARATOR)
    if not bar:
        return join(base, root) + sep + rest
    if root.startswith("//"):
        return join(base.partition(PIPELINE_SEPARATOR)[0], root) + sep + rest
    name, _, inner = last.partition(":")
    # Resolve inside the adapter as if its path hung from the root of a URL (never as an
    # authority: "x://d" would make the first segment a host that ".." cannot climb).
    lead = "" if inner.startswith("/") else "/"
    inside = join("x:" + lead + inner, root)[len("x:") + len(lead) :]
    return f"{head}{bar}{name}:{inside}{sep}{rest}"


def rebase(path: str, old: str | None, new: str | None) -> str:
    """The entry path that names, in a document at ``new``, what ``path`` names in one at ``old``
    (what saving a manifest somewhere else needs): ``path`` itself where it means the same
    there (an absolute URL, or both places in one directory), else a relative reference when the
    target lies below ``new``'s directory (so the two can move together), else the absolute URL
    of the target (always, for a ``new`` of ``None``: a document without a URL).
    ``resolve_target(new, rebase(path, old, new)) == resolve_target(old, path)``. Raises
    ``ValueError`` as :func:`resolve_target` does for a relative ``path`` and no ``old``, and for a
    target no path names from ``new`` (a one-letter scheme, which a local document reads as a
    drive).

    >>> rebase("data/c/0", "file:///a/m.json", "file:///a/n.json")
    'data/c/0'
    >>> rebase("data/c/0", "file:///a/m.json", "file:///a/b/m.json")
    'file:///a/data/c/0'
    >>> rebase("b/c/0", "file:///a/m.json", "file:///a/b/m.json")
    'c/0'
    >>> rebase("inner.json|kvmap:x", "s3://b/m.json", "file:///d/m.json")
    's3://b/inner.json|kvmap:x'
    """
    target = resolve_target(old, path)
    try:
        if resolve_target(new, path) == target:
            return path
    except ValueError:
        pass
    relative = None if new is None else relative_reference(target, new)
    if relative is not None:
        return relative
    if resolve_target(new, target) != target:
        raise ValueError(f"{path!r} names {target!r}, which no path names from {new or 'a document without a URL'}")
    return target


def relative_reference(target: str, base: str) -> str | None:
    """A relative reference that names the absolute URL (or pipeline) ``target`` in a document at
    ``base``, if ``target``'s root lies below ``base``'s directory; else ``None``.
    ``resolve_target(base, relative_reference(target, base)) == target``.

    >>> relative_reference("file:///d/site/a.zarr/", "file:///d/m.json")
    'site/a.zarr/'
    >>> relative_reference("file:///d/a:b/", "file:///d/m.json"), relative_reference("s3://b/x", "file:///d/m.json")
    ('./a:b/', None)
    """
    root, sep, rest = target.partition(PIPELINE_SEPARATOR)
    if PIPELINE_SEPARATOR in base or "?" in root or "#" in root:
        return None
    directory = base[: base.rfind("/") + 1]
    if not root.startswith(directory):
        return None
    relative = root[len(directory) :]
    # "" would name the document; a first segment with ":" would read as a scheme.
    if not relative or ":" in relative.partition("/")[0] or relative.startswith("/"):
        relative = "./" + relative
    found = relative + sep + rest
    return found if resolve_target(base, found) == target else None
