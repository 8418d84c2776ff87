"""Listing the composite namespace of a manifest — without I/O.

A manifest's namespace holds the keys ``resolve`` would find *and* whose targets
exist: its exact keys with a value (listed as they are, without I/O), and, for
each range piece (prefix or range entry), the keys of its target that map back
into the piece and are not decided by an exact entry. A target is listed under
the translated prefix (the part of the piece's common prefix after ``strip``),
and each name found maps back to ``key[:strip] + name``.

Like :mod:`kvmap.chain`, the listings are generators that yield the I/O they need
— :class:`Read` for manifests and zip directories, :class:`List` for object
listings — and :mod:`kvmap.reader` drives them. A target may be a root URL (a
store's objects), a pipeline ending in a manifest adapter (that manifest's
namespace, listed the same way, recursively) or in ``zip:`` (the archive's
member names).

Results are sorted by code point: pieces are disjoint and in key order, and each
piece's keys are sorted.

>>> import kvmap
>>> from kvmap.chain import Chain, Walk
>>> cm = kvmap.compile(kvmap.Manifest.from_json([
...     {"prefix": "t/", "path": "memory://listing-doc/data/"},
...     {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}},
...     {"key": "t/c/1", "path": None}], url="memory://listing-doc/m.json"))
>>> walker = keys(Chain(), cm, cm.url, "")
>>> next(walker)     # the I/O this listing needs: the objects under data/
List(url='memory://listing-doc/data/', prefix='', delimiter=False, limit=None, inside=None)
>>> try:
...     walker.send(["c/0", "c/1", "zarr.json"])
... except StopIteration as done:
...     print(done.value)
['t/c/0', 't/zarr.json', 'zarr.json']
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

from kvmap.chain import Chain, Location, Read, Walk
from kvmap.compiled import CompiledMap, RangeTarget
from kvmap.errors import ChainError, PipelineError, ResolveError
from kvmap.formats import adapter_kind
from kvmap.keymap import KeyMap
from kvmap.keyrange import KeyRange, key_successor, prefix_range, range_common_prefix_length
from kvmap.pipeline import Pipeline
from kvmap.zipindex import ZipIndex

__all__ = ["List", "children", "keys"]


@dataclass(frozen=True, slots=True)
class List:
    """A listing the walk needs: the objects whose path is the store path of root URL
    ``url`` followed by ``prefix`` and anything after it.

    The driver answers with their names after ``url``'s path (each starting with
    ``prefix``), or, with ``delimiter``, a pair ``(directories, objects)`` of the
    immediate child names below ``prefix`` (which is then ``""`` or ends in ``/``,
    as does ``url``'s path). ``limit`` allows the driver to stop after that many
    names. A directory that does not exist lists as empty.
    """

    url: str
    prefix: str = ""
    delimiter: bool = False
    limit: int | None = None
    # For local files: list only what lies strictly inside this real directory, by real path
    # (a directory link that leads out lists nothing), as reading does (spec 12.1).
    inside: str | None = None


_Lister = Generator[Read | List, Any, Any]


def keys(chain: Chain, cm: KeyMap, doc: str, prefix: str, *, limit: int | None = None, depth: int = 0) -> _Lister:
    """The keys of the manifest ``cm`` (found at ``doc``) that start with ``prefix``, sorted.

    With ``limit``, the listing may stop once it has that many keys (it returns the
    first ones). Raises :class:`~kvmap.PolicyError` for a target the manifest may not
    reach, :class:`~kvmap.ChainError` past ``chain.max_depth`` nested manifests.
    """
    _deep(chain, doc, depth)
    found = yield from _exact_keys(chain, cm, prefix)
    for piece in (yield from _range_targets(chain, cm, prefix_range(prefix))):
        if limit is not None and len(found) >= limit:
            break
        found += yield from _piece_keys(chain, cm, doc, piece, limit, depth)
    found.sort()
    return found if limit is None else found[:limit]


def children(chain: Chain, cm: KeyMap, doc: str, directory: str, *, depth: int = 0) -> _Lister:
    """The immediate child names below ``directory`` (``""`` or ending in ``/``) in the
    manifest ``cm``'s namespace, sorted: ``name`` where some key is ``directory + name``
    or starts with ``directory + name + "/"``. Raises as :func:`keys` does."""
    _deep(chain, doc, depth)
    found = {_first_segment(k, directory) for k in (yield from _exact_keys(chain, cm, directory))}
    for piece in (yield from _range_targets(chain, cm, prefix_range(directory))):
        common = piece.min[: range_common_prefix_length(piece.min, piece.max)]
        below = common[len(directory) :]
        if "/" in below:  # the whole piece lies below one child: does it hold any key?
            child = below.split("/", 1)[0]
            if child not in found and (yield from _piece_keys(chain, cm, doc, piece, 1, depth)):
                found.add(child)
        elif piece.strip <= len(directory) and (piece.min, piece.max) == prefix_range(directory):
            # The piece is all of the directory: list one level of its target's directory.
            names = yield from _target_children(chain, doc, piece, directory[piece.strip :], depth)
            for name in names - found:
                if not (yield from _exact_keys(chain, cm, directory + name, whiteouts=True)) or (
                    yield from _holds_child(chain, cm, doc, piece, directory + name, depth)
                ):
                    found.add(name)
        else:  # part of the directory: list the piece's keys (exact, if slower)
            listed = yield from _piece_keys(chain, cm, doc, piece, None, depth)
            found.update(_first_segment(k, directory) for k in listed)
    return sorted(found)


def _holds_child(chain: Chain, cm: KeyMap, doc: str, piece: RangeTarget, child: str, depth: int) -> _Lister:
    """Whether ``piece`` holds the key ``child`` or a key below ``child + "/"`` — asked
    when exact entries (whiteouts) may hide what the target lists there."""
    for part in (KeyRange(child, key_successor(child)), prefix_range(child + "/")):
        sub = KeyRange(piece.min, piece.max).intersect(part)
        if sub.is_empty():
            continue
        if (yield from _piece_keys(chain, cm, doc, piece._replace(min=sub.min, max=sub.max), 1, depth)):
            return True
    return False


def _piece_keys(chain: Chain, cm: KeyMap, doc: str, piece: RangeTarget, limit: int | None, depth: int) -> _Lister:
    """The keys of one range piece whose targets exist and that no exact entry decides."""
    strip = piece.strip
    common = piece.min[: range_common_prefix_length(piece.min, piece.max)]
    head, rest = common[:strip], common[strip:]
    rng = KeyRange(piece.min, piece.max)
    # Asking for one more than needed lets a name that maps outside the piece be skipped.
    want = None if limit is None else limit + 1
    names = yield from _target_keys(chain, doc, piece.entry, piece.url, rest, want, depth)
    found = yield from _not_exact(chain, cm, [k for k in (head + n for n in names) if rng.contains(k)])
    if limit is not None and len(found) < limit and want is not None and len(names) >= want:
        # Everything that came back was filtered out: list it all (rare, and exact).
        names = yield from _target_keys(chain, doc, piece.entry, piece.url, rest, None, depth)
        found = yield from _not_exact(chain, cm, [k for k in (head + n for n in names) if rng.contains(k)])
    return found


# The map's answers, through the chain (kvmap.keymap: a map that reads as it goes reads its
# document there).


def _exact_keys(chain: Chain, cm: KeyMap, prefix: str, *, whiteouts: bool = False) -> _Lister:
    return (yield from chain.ask(cm, cm.exact_keys_io(prefix, whiteouts=whiteouts), Walk(None)))


def _range_targets(chain: Chain, cm: KeyMap, within: KeyRange) -> _Lister:
    return (yield from chain.ask(cm, cm.range_targets_io(within), Walk(None)))


def _not_exact(chain: Chain, cm: KeyMap, keys: list[str]) -> _Lister:
    """The ``keys`` that no exact entry of ``cm`` decides."""
    if isinstance(cm, CompiledMap):  # once per listed key: a map in memory is asked directly
        return [k for k in keys if not cm.is_exact(k)]
    walk = Walk(None)
    out = []
    for k in keys:
        if not (yield from chain.ask(cm, cm.is_exact_io(k), walk)):
            out.append(k)
    return out


class _Space(NamedTuple):
    """What a target URL prefix names: a store's objects under ``url`` (``kind`` "root"),
    the keys under ``path`` of a nested manifest ``cm`` found at ``doc``, or the members
    under ``path`` of a zip archive ``zip``; kind "none": nothing (it does not exist)."""

    kind: str
    url: str = ""
    path: str = ""
    cm: KeyMap | None = None
    doc: str = ""
    zip: ZipIndex | None = None
    inside: str | None = None


def _open(chain: Chain, doc: str, entry: int, url: str) -> Generator[Read, Any, _Space]:
    """The namespace the target URL prefix ``url`` of ``entry`` (in ``doc``) names.
    Raises :class:`~kvmap.PolicyError` if ``doc`` may not reach it."""
    walk = Walk(None)
    try:
        pipe = Pipeline.parse(url)
    except PipelineError as exc:
        raise PipelineError(f"{doc} entry {entry}: {exc}") from None
    inside = chain.check(pipe.root, doc, entry, None)
    if not pipe.adapters:
        return _Space("root", url, inside=inside)
    left = Pipeline(pipe.root, pipe.adapters[:-1])
    loc: Location | None = yield from chain.locate(left, walk, inside=inside)
    last = pipe.adapters[-1]
    if loc is not None and adapter_kind(last.name) == "zip":
        index = yield from chain.zip_index(loc, walk)
        return _Space("zip" if index is not None else "none", path=last.path, zip=index)
    if loc is not None:
        cm = yield from chain.manifest(loc, left.format(), last.name, walk, required=False)
        return _Space("manifest" if cm is not None else "none", path=last.path, cm=cm, doc=left.format())
    return _Space("none")


def _target_keys(chain: Chain, doc: str, entry: int, url: str, prefix: str, limit: int | None, depth: int) -> _Lister:
    """Names ``n`` starting with ``prefix`` such that ``url + n`` exists, sorted."""
    space = yield from _open(chain, doc, entry, url)
    if space.kind == "root":
        names: list[str] = yield from _listed(List(url, prefix, limit=limit, inside=space.inside), doc, entry)
        return sorted(names)
    if space.cm is not None:
        found = yield from keys(chain, space.cm, space.doc, space.path + prefix, limit=limit, depth=depth + 1)
        return [k[len(space.path) :] for k in found]
    if space.zip is not None:
        start = space.path + prefix
        return sorted(name[len(space.path) :] for name in space.zip.members if name.startswith(start))
    return []


def _target_children(chain: Chain, doc: str, piece: RangeTarget, directory: str, depth: int) -> _Lister:
    """The immediate child names below ``directory`` in the target of ``piece``."""
    space = yield from _open(chain, doc, piece.entry, piece.url)
    inner = space.path + directory
    if space.kind == "root" and piece.url.endswith("/"):
        # A target that is a whole directory maps directories onto directories: one level.
        dirs, objects = yield from _listed(
            List(piece.url, directory, delimiter=True, inside=space.inside), doc, piece.entry
        )
        return {*dirs, *objects}
    if space.cm is not None and (inner == "" or inner.endswith("/")):
        return set((yield from children(chain, space.cm, space.doc, inner, depth=depth + 1)))
    if space.kind == "none":
        return set()
    names = yield from _target_keys(chain, doc, piece.entry, piece.url, directory, None, depth)
    return {_first_segment(n, directory) for n in names}


def _listed(request: List, doc: str, entry: int) -> _Lister:
    """The answer to ``request``; a failure names the manifest and entry whose target it lists."""
    try:
        return (yield request)
    except ResolveError as exc:
        if exc.manifest is not None:
            raise
        raise type(exc)(exc.reason, key=exc.key, manifest=doc, entry=entry, url=exc.url) from exc


def _first_segment(key: str, directory: str) -> str:
    return key[len(directory) :].split("/", 1)[0]


def _deep(chain: Chain, doc: str, depth: int) -> None:
    if depth > chain.max_depth:
        raise ChainError(f"listing {doc}: manifests nest deeper than {chain.max_depth}")
