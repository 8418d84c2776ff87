"""Property tests: the compiled map against the last-to-first reference scan."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.keyrange import KeyRange
from kvmap.url import decode_remainder, encode_remainder
from tests import reference
from tests.strategies import manifest_and_keys, manifests


def as_tuple(r: kvmap.Resolution | None, entry: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if r is None:
        return None
    data: Any = r.data
    if entry is not None and "json" in entry:
        data = json.loads(r.data) if r.data is not None else None
    return (r.entry, r.url, r.offset, r.length, data)


# The resolve properties are plain functions too: tests/test_pure_python.py runs them again with
# kvmap's C fast path (kvmap._speedups) off.


def check_resolve_matches_reference(entries: list[dict[str, Any]], keys: list[str]) -> None:
    cm = kvmap.compile(entries)
    for key in keys:
        r = cm.resolve(key)
        assert as_tuple(r, entries[r.entry] if r else None) == reference.expected(entries, key), key


def check_resolve_many_equals_resolve(entries: list[dict[str, Any]], keys: list[str]) -> None:
    cm = kvmap.compile(entries)
    assert cm.resolve_many(keys) == [cm.resolve(k) for k in keys]
    assert cm.resolve_many(iter(keys)) == [cm.resolve(k) for k in keys]


def check_explain_lists_covering_entries_winner_first(entries: list[dict[str, Any]], keys: list[str]) -> None:
    cm = kvmap.compile(entries)
    for key in keys:
        ex = cm.explain(key)
        assert list(ex.entries) == reference.covering(entries, key)
        assert ex.winner == (ex.entries[0] if ex.entries else None)
        assert ex.resolution == cm.resolve(key)


def check_resolve_many_in_bulk(entries: list[dict[str, Any]], keys: list[str]) -> None:
    """Batches of at least 64 keys: the C path sorts them, the pure-Python one uses numpy."""
    # NUL-free batches of at least 64 keys take numpy's searchsorted (see _range_positions).
    keys = [k for k in keys if "\0" not in k] or ["a"]
    keys = keys * (64 // len(keys) + 1)
    cm = kvmap.compile(entries)
    assert cm.resolve_many(keys) == [cm.resolve(k) for k in keys]
    if cm._index is not None:
        return
    # The vectorised path was taken whenever it could be.
    to_search = [k for k in keys if cm._table is None or cm._table.find(k) < 0]
    usable = bool(cm._bounds) and not any(b.endswith("\0") for b in cm._bounds)
    if len(to_search) >= 64 and cm._bounds:
        assert cm._columns is not None
        assert isinstance(cm._columns.bounds, np.ndarray) == usable


@given(manifest_and_keys())
def test_resolve_matches_reference(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    check_resolve_matches_reference(*case)


@given(manifest_and_keys())
def test_resolve_many_equals_resolve(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    check_resolve_many_equals_resolve(*case)


@given(manifest_and_keys())
def test_pieces_are_sorted_disjoint_and_cover_exactly(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    entries, keys = case
    pieces = list(kvmap.compile(entries).pieces())
    for p in pieces:
        assert not KeyRange(p.min, p.max).is_empty()
    for a, b in itertools.pairwise(pieces):
        assert a.max is not None
        assert a.max <= b.min
    for key in keys:
        inside = [p for p in pieces if KeyRange(p.min, p.max).contains(key)]
        winners = reference.covering(entries, key)
        assert len(inside) == (1 if winners else 0), key
        if winners:
            assert inside[0].entry == winners[0]


@given(manifest_and_keys())
def test_explain_lists_covering_entries_winner_first(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    check_explain_lists_covering_entries_winner_first(*case)


@given(manifests)
def test_manifest_json_round_trip(entries: list[dict[str, Any]]) -> None:
    m = kvmap.Manifest.from_json({"kvmap": 1, "entries": entries}, url="s3://bucket/m.json")
    again = kvmap.Manifest.from_json(m.to_json(), url=m.url)
    assert again == m
    assert kvmap.Manifest.loads(m.dumps(), url=m.url) == m
    assert [e.to_json() for e in m.entries] == [e.to_json() for e in again.entries]
    canonical = kvmap.Manifest.from_json([e.to_json() for e in m.entries], url=m.url)
    assert list(canonical.entries) == list(m.entries)


@given(st.text())
def test_remainder_encoding_round_trips(text: str) -> None:
    encoded = encode_remainder(text)
    assert decode_remainder(encoded) == text
    # Nothing left that would change a URL's meaning, and every escape is %XX.
    assert re.fullmatch(r"(?:[A-Za-z0-9\-._~/]|%[0-9A-F]{2})*", encoded), encoded


@given(manifest_and_keys())
def test_resolve_many_in_bulk_equals_resolve(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    check_resolve_many_in_bulk(*case)


@settings(max_examples=300)
@given(manifest_and_keys(), manifests, st.data())
def test_bulk_references_resolve_as_the_same_entries_written_out(
    case: tuple[list[dict[str, Any]], list[str]], after: list[dict[str, Any]], data: st.DataObject
) -> None:
    """``Manifest.from_references`` (the importers' bulk path) between other entries compiles to
    what ``from_json`` of the same entries, in the same order, compiles to."""
    before, keys = case
    n = data.draw(st.integers(0, 6))
    refs = [
        {"key": data.draw(st.sampled_from([*keys, "k"])), "path": "s3://bucket/r", "offset": i, "length": 1}
        for i in range(n)
    ]
    if len({r["key"] for r in refs}) != len(refs):
        refs = list({r["key"]: r for r in refs}.values())  # an import's keys are distinct
    bulk = kvmap.Manifest.from_references(
        [r["key"] for r in refs],
        [r["path"] for r in refs],
        [r["offset"] for r in refs],
        [r["length"] for r in refs],
        before=before,
        after=after,
        url="s3://bucket/m.json",
    )
    plain = kvmap.Manifest.from_json([*before, *refs, *after], url="s3://bucket/m.json")
    a, b = kvmap.compile(bulk), kvmap.compile(plain)
    for key in [*keys, "k"]:
        assert a.resolve(key) == b.resolve(key), key
        assert a.explain(key) == b.explain(key), key
