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

Text is not the whole story on a local disk: ``file:///d/link/passwd`` lies
inside ``file:///d/`` as text, but if ``/d/link`` is a symbolic link to
``/etc`` the file read is ``/etc/passwd``. So a policy may be given
``realpath``, a function from a local absolute path to its real path (kvmap's
:class:`~kvmap.Reader` gives it :func:`kvmap.roots.local_realpath`). With it, a
``file://`` target that passed as text must also lie, by real path, inside the
real path of a directory that grants ``file://`` targets to its manifest: the
manifest's origin (the directory of its URL as given) or a ``file://`` allow
prefix. Links that stay inside are fine. This module itself does no I/O: without
``realpath`` (the default) decisions are made on text alone. ``allow_all`` for a
local manifest allows every ``file://`` target, wherever its links lead.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from kvmap.errors import PolicyError
from kvmap.url import PIPELINE_SEPARATOR, is_plain_name, split_name

__all__ = ["Policy", "allow_prefixes", "origin"]

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


def allow_prefixes(targets: Iterable[str], manifest: str | None) -> list[str]:
    """The allow prefixes a manifest at URL ``manifest`` needs to reach every URL of
    ``targets`` (root URLs: the text before any ``|``) that lies outside its origin, sorted:
    a remote target's bucket, container or host (``s3://bucket/``), a local target's
    directory, leaving out a directory inside another one listed. Targets that are not
    URLs kvmap can decide on are left out (the policy refuses them whatever is allowed).

    >>> allow_prefixes(["s3://a/x/0", "s3://a/y/1", "file:///d/e/f.nc", "file:///d/g.nc", "s3://own/x"], "s3://own/m.json")
    ['file:///d/', 's3://a/']
    """
    home = None if manifest is None else _origin_place(manifest)
    sites: set[str] = set()
    local: set[tuple[str, ...]] = set()
    for url in targets:
        place = _place(url.partition(PIPELINE_SEPARATOR)[0], directory=False)
        if isinstance(place, str) or (home is not None and place.within(home)):
            continue
        if place.scheme == _LOCAL:
            local.add(place.segments[:-1])
        else:
            keep = 1 if place.scheme in _BUCKET_IN_PATH else 0
            sites.add(_render_url(_Place(place.site, place.segments[:keep])))
    kept = [d for d in local if not any(d[: len(o)] == o and d != o for o in local)]
    return sorted(sites | {_render_url(_Place(f"{_LOCAL}://", d)) for d in kept})


def _render_url(place: _Place) -> str:
    """``place`` as a URL prefix one can pass back (its segments percent-encoded again)."""
    return "/".join((place.site, *(quote(seg, safe="!$&'()*+,;=:@") for seg in place.segments), ""))


@lru_cache(maxsize=1024)  # asked for every target a manifest names
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


#: A local absolute path to its real path: symbolic links resolved (for a path that does not
#: exist, its deepest existing parent resolved and the rest kept), or ``None`` if it has none.
RealPath = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why a target is not allowed: the reason of the :class:`~kvmap.PolicyError` to raise."""

    reason: str


class Policy:
    """The targets manifests may reach: each manifest's origin, ``allow`` prefixes, or all.

    ``allow`` holds ``/``-terminated URL prefixes (``s3://bucket/shared/``,
    ``file:///data/``). Raises ``ValueError`` for a prefix that does not end in
    ``/`` or is not an absolute URL. ``realpath`` (see the module) holds
    ``file://`` targets to real paths too; without it decisions are on text alone.
    """

    __slots__ = ("_allow", "allow", "allow_all", "realpath")

    def __init__(self, allow: Iterable[str] = (), *, allow_all: bool = False, realpath: RealPath | None = None) -> None:
        self.allow = tuple(allow)
        self.allow_all = allow_all
        self.realpath = realpath
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
        mine = (sorted(self.allow), self.allow_all, self.realpath)
        return mine == (sorted(other.allow), other.allow_all, other.realpath)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.allow)), self.allow_all, self.realpath))

    def __repr__(self) -> str:
        real = ""
        if self.realpath is not None:
            name = getattr(self.realpath, "__qualname__", None) or repr(self.realpath)
            real = f", realpath={getattr(self.realpath, '__module__', None) or '?'}.{name}"
        return f"Policy(allow={list(self.allow)!r}, allow_all={self.allow_all!r}{real})"

    def allowed_by(self, url: str, manifest: str | None) -> str | None:
        """What allows the root URL ``url`` named in ``manifest``: ``"origin"``, ``"caller"``,
        ``"allow_all"`` or the matching allow prefix; ``None`` if nothing does."""
        verdict = self._judge(url, manifest)
        return verdict[0] if isinstance(verdict, tuple) else None

    def check(
        self,
        url: str,
        *,
        manifest: str | None,
        entry: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> str | None:
        """Return if ``manifest`` (``None``: the caller) may send kvmap to root URL ``url``:
        the *confinement* of the decision, the real path of the directory that granted a
        ``file://`` target (``None``: none, as for every other scheme, the caller's own
        target and allow-all). I/O on the target must find it strictly inside that directory
        by real path when it is made (:mod:`kvmap.localfs` checks what it opened), so that a
        link swapped in after the decision cannot lead it out.

        Raises :class:`~kvmap.PolicyError` naming the URL, the manifest and the
        entry, and how to allow the target: with the allow prefix ``hint`` if given (the
        caller knows the entry's target root, which lets every key of the entry through),
        else the target's bucket, container or host (``s3://bucket/``, ``https://host/``) or,
        for a local file, its directory.
        """
        verdict = self._judge(url, manifest, hint)
        if isinstance(verdict, _Refusal):
            raise PolicyError(verdict.reason, key=key, manifest=manifest, entry=entry, url=url)
        return verdict[1]

    def siblings(self, url: str) -> Callable[[str], bool] | None:
        """A test ``same(name)`` for the URLs ``directory + name`` (``directory, _ =
        split_name(url)``): where it is true, the policy decides that URL (for any manifest)
        as it decides ``url`` — so a caller that has checked ``url`` may skip checking its
        siblings. ``None`` if there is no such test (``url``'s last segment is not a plain
        name, or it is a symbolic link).

        For a plain name (:func:`~kvmap.url.is_plain_name`), which prefixes and origins
        hold the URL does not depend on the name. Only the real path of a ``file://`` target
        does, and ``same`` asks ``realpath`` whether the name is its directory's real path
        joined with the name (one ``lstat`` with :class:`~kvmap.roots.RealPaths`); then,
        since an object must lie *strictly* inside a granting directory's real path, the
        name does not decide either.
        """
        _, name = split_name(url)
        if not is_plain_name(name):
            return None
        place = _place(url, directory=True)
        if isinstance(place, str):
            return None
        if place.scheme != _LOCAL or self.realpath is None:
            return is_plain_name
        directory = _path(place.segments).rstrip("/") + "/"
        real = self.realpath(directory)
        if real is None:
            return None
        base = real.rstrip("/") + "/"
        realpath = self.realpath

        def same(name: str) -> bool:
            return is_plain_name(name) and realpath(directory + name) == base + name

        return same if same(name) else None

    def _judge(self, url: str, manifest: str | None, hint: str | None = None) -> tuple[str, str | None] | _Refusal:
        """What allows ``url`` and the confinement of that decision (see :meth:`check`), or why not."""
        if manifest is None:
            return "caller", None
        place = _place(url, directory=False)
        if isinstance(place, str):
            return _Refusal(f"not allowed: {place}")
        home = _origin_place(manifest)
        granted = [(_render(prefix), prefix) for prefix in self._allow if place.within(prefix)]
        if home is not None and place.within(home):
            granted.append(("origin", home))
        local = place.scheme == _LOCAL
        if granted and (not local or self.realpath is None):
            return granted[0][0], None
        verdict = self._confine(place, granted, home) if granted else self._outside(place, home, hint)
        if isinstance(verdict, tuple):
            return verdict
        if self.allow_all and (not local or (home is not None and home.scheme == _LOCAL)):
            return "allow_all", None
        return verdict

    def _outside(self, place: _Place, home: _Place | None, hint: str | None) -> _Refusal:
        """The refusal of a target that no origin or prefix holds, as text."""
        if hint is None:
            # A prefix that lets the entry's other targets through too, not only this object's
            # directory (following that would lead from one refusal to the next).
            keep = len(place.segments) - 1 if place.scheme == _LOCAL else int(place.scheme in _BUCKET_IN_PATH)
            hint = _render(_Place(place.site, place.segments[:keep]))
        remote_to_file = place.scheme == _LOCAL and (home is None or home.scheme != _LOCAL)
        also = "" if remote_to_file else " (or allow_all=True / --allow-all for a manifest you trust)"
        return _Refusal(
            f"not allowed: outside the manifest's origin {'(none)' if home is None else _render(home)} and every "
            f"allow prefix; allow it with allow=[{hint!r}] or --allow {hint}{also}"
        )

    def _confine(
        self, place: _Place, granted: list[tuple[str, _Place]], home: _Place | None
    ) -> tuple[str, str] | _Refusal:
        """What allows the ``file://`` target ``place``, which the directories ``granted`` hold as
        text, by real paths: a directory that grants ``file://`` targets to its manifest (the
        origin, a ``file://`` prefix) whose real path holds the target's real path; and that
        real path, the confinement of the decision."""
        real = self._real(place.segments)
        if real is None:
            return _Refusal("not allowed: its real path (symbolic links resolved) cannot be determined")
        if real == tuple(s for s in place.segments if s):
            # No link on the way: each directory along the path, the granting one included, is its own
            # real path (a link that led back to the same text would be a loop, which cannot be opened).
            return granted[0][0], _path(tuple(s for s in granted[0][1].segments if s))
        held = {id(directory) for _, directory in granted}
        grants = granted + [(_render(p), p) for p in self._allow if p.scheme == _LOCAL and id(p) not in held]
        if home is not None and home.scheme == _LOCAL and id(home) not in held:
            grants.append(("origin", home))
        # An object lies strictly inside a directory (as `_Place.within` says of text): one whose real
        # path *is* a granting directory's would make the decision depend on its name, and so allow a
        # sibling outside (a link to the origin's parent, then its other children). A directory URL
        # (last segment empty: a listing) may be the granting directory itself.
        least = 0 if place.segments[-1:] == ("",) else 1
        seen = []
        for label, directory in grants:
            real_directory = self._real(directory.segments)
            if (
                real_directory is not None
                and len(real) >= len(real_directory) + least
                and real[: len(real_directory)] == real_directory
            ):
                return label, _path(real_directory)
            where = "the manifest's origin " + _render(home) if label == "origin" and home is not None else label
            seen.append(f"{where} (real path {'(none)' if real_directory is None else _path(real_directory)})")
        hint = _render(_Place(place.site, real[:-1]))
        also = (
            ""
            if home is None or home.scheme != _LOCAL
            else " (or allow_all=True / --allow-all for a manifest you trust)"
        )
        return _Refusal(
            f"not allowed: its real path {_path(real)} (symbolic links resolved) lies outside "
            f"{' and '.join(seen)}; allow it with allow=[{hint!r}] or --allow {hint}{also}"
        )

    def _real(self, segments: tuple[str, ...]) -> tuple[str, ...] | None:
        """The real path of the local path ``segments``, as segments; ``None`` if it has none."""
        assert self.realpath is not None
        real = self.realpath(_path(segments))
        return None if real is None else tuple(s for s in real.split("/") if s)


def _path(segments: tuple[str, ...]) -> str:
    return "/" + "/".join(segments)
