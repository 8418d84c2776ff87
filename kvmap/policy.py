"""Which URLs a manifest may send kvmap to: the answer to the confused deputy.

A manifest is data, often someone else's, while kvmap reads with the caller's
credentials. So a target named by a manifest must lie within the manifest's own
*origin* or under a prefix the caller allowed; the caller's own URL is always
allowed. The origin of a manifest is

* ``file://``: the directory that holds the manifest (and everything below it);
* ``s3+http(s)://host:port/bucket/``: that bucket on that endpoint;
* every other scheme: ``scheme://authority/`` — one bucket, container, host or
  named memory store.

Decisions are made on the root URL of a target (the text before the first
``|``), after relative resolution and percent-decoding: a decoded ``.`` or
``..`` segment is refused outright (``%2E%2E`` and ``a%2F..`` included), so a
prefix, once matched, cannot be climbed out of. ``allow_all`` trusts every
manifest, except that a manifest which is not itself a local file may still
reach ``file://`` targets only through an explicit ``file://`` allow prefix.

>>> p = Policy(allow=["s3://shared/"])
>>> p.check("s3://bucket/data/c/0", manifest="s3://bucket/m.json")
>>> p.check("s3://shared/x", manifest="s3://bucket/m.json")
>>> p.check("file:///etc/passwd", manifest="s3://bucket/m.json")
Traceback (most recent call last):
...
kvmap.errors.PolicyError: s3://bucket/m.json -> file:///etc/passwd: not allowed: ...
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from kvmap.errors import PolicyError
from kvmap.url import PIPELINE_SEPARATOR

__all__ = ["Policy", "origin"]

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)", re.S)
_LOCAL = "file"
# Schemes whose first path segment names the bucket rather than the authority.
_BUCKET_IN_PATH = frozenset(("s3+http", "s3+https"))


@dataclass(frozen=True, slots=True)
class _Place:
    """A URL reduced to what the policy compares: ``scheme://authority`` and decoded path segments."""

    site: str
    segments: tuple[str, ...]

    @property
    def scheme(self) -> str:
        return self.site.partition(":")[0]

    def within(self, directory: _Place) -> bool:
        """Whether this object lies inside ``directory`` (not merely shares its name)."""
        n = len(directory.segments)
        return self.site == directory.site and len(self.segments) > n and self.segments[:n] == directory.segments


def _place(url: str, *, directory: bool) -> _Place | str:
    """Reduce ``url`` (a root URL, without adapters) to a :class:`_Place`, or say why it cannot be.

    With ``directory``, the last segment is dropped unless it is empty (a
    ``/``-terminated URL names a directory, anything else an object in one).
    """
    m = _URL.match(url)
    if m is None or m.end() != len(url.partition("?")[0].partition("#")[0]):
        return "not an absolute URL with an authority (scheme://...)"
    scheme, authority, path = m.group(1).lower(), m.group(2), m.group(3)
    if scheme in ("http", "https", "s3+http", "s3+https"):
        authority = authority.lower()
    try:
        decoded = unquote(path, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return "its path does not decode as UTF-8"
    segments = decoded.split("/")[1:] if decoded else []
    if any(s in (".", "..") for s in segments):
        return "it has a '.' or '..' path segment (after percent-decoding)"
    if directory:
        segments = segments[:-1]
    return _Place(f"{scheme}://{authority}", tuple(segments))


def origin(manifest: str) -> str | None:
    """The origin of a manifest at URL ``manifest`` (a pipeline's root decides), as a URL prefix.

    >>> origin("file:///data/views/m.json"), origin("s3://bucket/a/m.json")
    ('file:///data/views/', 's3://bucket/')
    >>> origin("s3+http://127.0.0.1:9000/bucket/m.json|zip:x")
    's3+http://127.0.0.1:9000/bucket/'
    """
    place = _origin_place(manifest)
    return None if place is None else _render(place)


def _origin_place(manifest: str) -> _Place | None:
    place = _place(manifest.partition(PIPELINE_SEPARATOR)[0], directory=True)
    if isinstance(place, str):
        return None
    if place.scheme == _LOCAL:
        return place
    keep = 1 if place.scheme in _BUCKET_IN_PATH else 0
    return _Place(place.site, place.segments[:keep])


def _render(place: _Place) -> str:
    return "/".join((place.site, *place.segments, ""))


class Policy:
    """The targets manifests may reach: each manifest's origin, ``allow`` prefixes, or all.

    ``allow`` holds ``/``-terminated URL prefixes (``s3://bucket/shared/``,
    ``file:///data/``). Raises ``ValueError`` for a prefix that does not end in
    ``/`` or is not an absolute URL.
    """

    __slots__ = ("_allow", "allow", "allow_all")

    def __init__(self, allow: Iterable[str] = (), *, allow_all: bool = False) -> None:
        self.allow = tuple(allow)
        self.allow_all = allow_all
        places = []
        for prefix in self.allow:
            place = _place(prefix, directory=True) if prefix.endswith("/") else "it does not end in '/'"
            if isinstance(place, str):
                raise ValueError(f"allow prefix {prefix!r}: {place}")
            places.append(place)
        # Longest first, so that the prefix reported for a target is the most specific.
        self._allow = sorted(places, key=lambda p: len(p.segments), reverse=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Policy):
            return NotImplemented
        return (sorted(self.allow), self.allow_all) == (sorted(other.allow), other.allow_all)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.allow)), self.allow_all))

    def __repr__(self) -> str:
        return f"Policy(allow={list(self.allow)!r}, allow_all={self.allow_all!r})"

    def allowed_by(self, url: str, manifest: str | None) -> str | None:
        """What allows the root URL ``url`` named in ``manifest``: ``"origin"``, ``"caller"``,
        ``"allow_all"`` or the matching allow prefix; ``None`` if nothing does."""
        if manifest is None:
            return "caller"
        place = _place(url, directory=False)
        if isinstance(place, str):
            return None
        for prefix in self._allow:
            if place.within(prefix):
                return _render(prefix)
        home = _origin_place(manifest)
        if home is not None and place.within(home):
            return "origin"
        if self.allow_all and (place.scheme != _LOCAL or (home is not None and home.scheme == _LOCAL)):
            return "allow_all"
        return None

    def check(self, url: str, *, manifest: str | None, entry: int | None = None, key: str | None = None) -> None:
        """Return if ``manifest`` (``None``: the caller) may send kvmap to root URL ``url``.

        Raises :class:`~kvmap.PolicyError` naming the URL, the manifest and the
        entry, and how to allow the target.
        """
        if self.allowed_by(url, manifest) is not None:
            return
        place = _place(url, directory=True)
        if isinstance(place, str):
            raise PolicyError(f"not allowed: {place}", key=key, manifest=manifest, entry=entry, url=url)
        home = origin(manifest) if manifest is not None else None
        hint = _render(place)
        remote_to_file = place.scheme == _LOCAL and (home is None or not home.startswith("file:"))
        also = "" if remote_to_file else " (or allow_all=True / --allow-all for a manifest you trust)"
        raise PolicyError(
            f"not allowed: outside the manifest's origin {home or '(none)'} and every allow prefix; "
            f"allow it with allow=[{hint!r}] or --allow {hint}{also}",
            key=key,
            manifest=manifest,
            entry=entry,
            url=url,
        )
