"""A manifest as the one reference per key that reference formats (kerchunk, chunk manifests,
Icechunk) can hold: what every exporter starts from.

>>> m = Manifest.from_json([{"key": "a", "path": "f.nc", "offset": 8, "length": 4},
...                         {"key": "b", "data": "aGk="}, {"key": "a", "path": "g.nc"},
...                         {"key": "c", "path": "x"}, {"key": "c", "path": None}], url="s3://b/m.json")
>>> refs = exact_refs(m, "kerchunk")
>>> refs["a"]
Ref(entry=2, url='s3://b/g.nc', offset=None, length=None, data=None)
>>> refs["b"], "c" in refs
(Ref(entry=1, url=None, offset=None, length=None, data=b'hi'), False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from kvmap._gcpause import paused_gc
from kvmap.entries import Entry
from kvmap.errors import ConvertError
from kvmap.manifest import Manifest
from kvmap.url import PIPELINE_SEPARATOR, resolve_target

__all__ = ["Ref", "exact_refs", "no_single_reference"]


class Ref(NamedTuple):
    """Where one key's value is: the object at the absolute ``url`` (a window of it when
    ``offset``/``length`` are set), or inline ``data``; ``entry`` is the manifest entry."""

    entry: int
    url: str | None
    offset: int | None
    length: int | None
    data: bytes | None


def exact_refs(manifest: Manifest, fmt: str) -> dict[str, Ref]:
    """Each key's winning reference, in entry order (later entries win; a whiteout removes
    the key), with every URL made absolute against ``manifest.url``.

    Raises :class:`~kvmap.ConvertError` naming the entry for what one reference per key
    cannot say: a prefix or range entry (``kvmap convert --materialize`` lists their keys
    first) and a target that is a URL pipeline (``--materialize`` follows it to its bytes).
    ``fmt`` names the format in the message.
    """
    with paused_gc():  # a million small tuples: collections on the way cost more than the work
        return _exact_refs(manifest, fmt)


def _exact_refs(manifest: Manifest, fmt: str) -> dict[str, Ref]:
    cols, entries = manifest.split()
    name = manifest.name or manifest.url
    absolute: dict[str, str] = {}

    def url_of(path: str, index: int) -> str:
        url = absolute.get(path)
        if url is None:
            if PIPELINE_SEPARATOR in path:
                raise ConvertError(
                    f"{fmt} cannot hold a target that is a URL pipeline ({path!r}); --materialize follows it",
                    manifest=name,
                    entry=index,
                    field="path",
                )
            url = absolute[path] = resolve_target(manifest.url, path)
        return url

    # The columns and the other entries are two index-ordered runs: merge them in index order,
    # so that the later of two entries for one key wins.
    ordered: list[tuple[int, int]] = [(i, -1) for i in cols.index] if entries else []
    if entries:
        ordered.extend((i, j) for j, (i, _) in enumerate(entries))
        ordered.sort()
    refs: dict[str, Ref] = {}
    offsets, lengths = cols.offset.tolist(), cols.length.tolist()
    if not entries:
        # The bulk of a large manifest: one tight pass, each distinct path resolved once.
        urls: dict[str, str | None] = dict.fromkeys(cols.distinct_paths)
        for index, path in zip(cols.index, cols.path, strict=True):
            if path is not None and urls[path] is None:
                urls[path] = url_of(path, index)
        pop = refs.pop
        for index, key, path, offset, length in zip(cols.index, cols.key, cols.path, offsets, lengths, strict=True):
            if path is None:
                pop(key, None)
            else:
                refs[key] = Ref(index, urls[path], None if offset < 0 else offset, None if length < 0 else length, None)
        return refs
    position = {index: pos for pos, index in enumerate(cols.index)}
    for index, j in ordered:
        if j < 0:
            pos = position[index]
            _put(refs, cols.key[pos], index, cols.path[pos], offsets[pos], lengths[pos], url_of)
            continue
        entry = entries[j][1]
        if entry.selector != "key":
            raise no_single_reference(entry, index, name, fmt)
        if entry.data is not None:
            refs.pop(entry.key, None)
            refs[entry.key] = Ref(index, None, None, None, entry.data)
        else:
            _put(refs, entry.key, index, entry.path, entry.offset, entry.length, url_of)
    return refs


def no_single_reference(entry: Entry, index: int, name: str | None, fmt: str) -> ConvertError:
    """The error for prefix or range entry ``entry`` (at ``index``), which ``fmt`` cannot hold."""
    return ConvertError(
        f"{fmt} holds one reference per key; a {entry.selector} entry has none "
        "(kvmap convert --materialize lists its keys)",
        manifest=name,
        entry=index,
        field=entry.selector if entry.selector == "prefix" else "min",
    )


def _put(
    refs: dict[str, Ref],
    key: str,
    index: int,
    path: str | None,
    offset: int | None,
    length: int | None,
    url_of: Callable[[str, int], str],
) -> None:
    refs.pop(key, None)  # a later entry also moves the key to its own place in the order
    if path is None:
        return
    refs[key] = Ref(
        index,
        url_of(path, index),
        None if offset is None or offset < 0 else offset,
        None if length is None or length < 0 else length,
        None,
    )
