"""One test per defect: the peer's (tensorstore kvstack 0.1.86, D1-D7) and our own."""

from __future__ import annotations

import sys

import pytest

import kvmap
from kvmap.keyrange import KeyRange


def test_d1_disjoint_entries_in_ascending_order_do_not_stretch_over_the_gap() -> None:
    cm = kvmap.compile([{"key": "x", "path": "s3://b/x"}, {"key": "y", "path": "s3://b/y"}])
    assert cm.resolve("xk") is None
    assert cm.resolve("x") == kvmap.Resolution(0, "s3://b/x", None, None, None)
    assert cm.resolve("y") == kvmap.Resolution(1, "s3://b/y", None, None, None)
    cm = kvmap.compile([{"prefix": "c/", "path": "s3://b/c/"}, {"key": "zarr.json", "path": "s3://b/z"}])
    assert cm.resolve("d") is None
    assert cm.resolve("c/0").url == "s3://b/c/0"


def test_d2_default_strip_of_a_range_is_the_common_prefix() -> None:
    cm = kvmap.compile([{"min": "c/0", "max": "c/10", "path": "s3://b/"}])
    assert [cm.resolve(k).url for k in ("c/0", "c/1", "c/09")] == ["s3://b/0", "s3://b/1", "s3://b/09"]
    assert cm.resolve("c/10") is None


def test_d3_pieces_are_never_inverted() -> None:
    entries = [
        {"key": "x", "path": "s3://b/x"},
        {"min": "a", "max": "z", "path": "s3://b/"},
        {"key": "y", "path": "s3://b/y"},
        {"prefix": "x", "path": None},
    ]
    for p in kvmap.compile(entries).pieces():
        assert not KeyRange(p.min, p.max).is_empty()


def test_d4_zero_entries_is_an_empty_namespace() -> None:
    for doc in ([], {"kvmap": 1, "entries": []}):
        cm = kvmap.compile(kvmap.Manifest.from_json(doc))
        assert cm.resolve("") is None
        assert cm.resolve("a") is None
        assert cm.resolve_many(["a", "b"]) == [None, None]
        assert list(cm.pieces()) == []


def test_d5_listing_many_pieces_does_not_recurse() -> None:
    n = 20_000
    entries = [{"prefix": f"g{i:06d}/", "path": f"s3://b/{i}/"} for i in range(n)]
    entries += [{"key": f"g{i:06d}/zarr.json", "path": None} for i in range(0, n, 2)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # a recursive listing would need a frame per piece
    try:
        pieces = list(kvmap.compile(entries).pieces())
    finally:
        sys.setrecursionlimit(limit)
    # Every other prefix is split around its whited-out zarr.json: 3 pieces, else 1.
    assert len(pieces) == n // 2 * 3 + n // 2


def test_d7_piece_bounds_are_valid_unicode() -> None:
    entries = [{"prefix": "a\ud7ff", "path": "s3://b/"}, {"prefix": "\U0010ffff", "path": "s3://c/"}]
    for p in kvmap.compile(entries).pieces():
        for bound in (p.min, p.max):
            if bound is not None:
                bound.encode("utf-8")  # raises on a surrogate
    assert kvmap.compile(entries).resolve("a\ud7ff\U0010ffff").url == "s3://b/%F4%8F%BF%BF"


# -- found by our own property tests -------------------------------------------------


def test_explain_lists_an_entry_once_when_it_loses_twice() -> None:
    # Entry 0 loses to a duplicate key (entry 1) and to a later prefix (entry 2).
    entries = [{"key": "", "path": "s3://b/"}, {"key": "", "path": "s3://b/"}, {"prefix": "", "path": None}]
    assert kvmap.compile(entries).explain("").entries == (2, 1, 0)


def test_canonical_json_of_a_range_from_empty_min_keeps_a_bound() -> None:
    entry = kvmap.Entry.from_json({"min": "", "path": None}, 0)
    assert entry.to_json() == {"min": "", "path": None}
    assert kvmap.Entry.from_json(entry.to_json(), 0) == entry


class _SameHash(str):
    """Keys whose hashes all collide, to exercise the table's collision handling."""

    def __hash__(self) -> int:
        return 42


def test_distinct_keys_with_equal_hashes_and_duplicates_resolve_by_position() -> None:
    keys = [_SameHash(c) for c in "abcab"]
    entries = [{"key": k, "path": f"s3://b/{i}"} for i, k in enumerate(keys)]
    cm = kvmap.compile(entries)
    assert [cm.resolve(_SameHash(c)).entry for c in "abc"] == [3, 4, 2]
    assert cm.resolve(_SameHash("d")) is None
    assert cm.resolve_many([_SameHash(c) for c in "abcd"]) == [cm.resolve(_SameHash(c)) for c in "abcd"]
    assert cm.explain(_SameHash("a")).entries == (3, 0)


def test_explicit_null_offset_is_an_error_in_a_large_manifest_too() -> None:
    # The columnar validation once read "offset": null as "no offset".
    for entries in ([{"key": "", "path": "s3://b/", "offset": None}], [{"key": "a", "path": "s3://b/"}] * 3):
        entries = [dict(e) for e in entries]
        entries[-1]["offset"] = None
        with pytest.raises(kvmap.ManifestError) as info:
            kvmap.Manifest.from_json(entries)
        assert (info.value.entry, info.value.field) == (len(entries) - 1, "offset")


def test_unhashable_path_in_a_large_manifest_is_a_manifest_error() -> None:
    # Found by fuzz/fuzz_manifest.py: the columnar validation hashed paths before checking their type.
    doc = b'[{"key": "a", "path": "s3://b/a"}, {"key": "arr", "path": []}, {"key": "o", "path": {}}]'
    with pytest.raises(kvmap.ManifestError) as info:
        kvmap.Manifest.loads(doc)
    assert (info.value.entry, info.value.field) == (1, "path")


def test_a_key_with_a_lone_surrogate_is_rejected_wherever_it_would_resolve() -> None:
    # It used to resolve "absent" unless a URL had to be built from it.
    maps = [
        kvmap.compile([]),
        kvmap.compile([{"prefix": "a/", "path": "s3://b/"}]),
        kvmap.compile([{"key": "x", "path": "s3://b/x"}]),
        kvmap.compile([{"key": "x", "path": "s3://b/x"}, {"prefix": "a/", "path": None}]),
    ]
    for cm in maps:
        for bad in ("a/\udcff", "\ud800", "x\udfff"):
            with pytest.raises(kvmap.InvalidKeyError):
                cm.resolve(bad)
            with pytest.raises(kvmap.InvalidKeyError):
                cm.resolve_many(["x", bad])
            with pytest.raises(kvmap.InvalidKeyError):
                cm.explain(bad)


def test_invalid_utf8_in_a_member_name_is_a_manifest_error() -> None:
    # Found by fuzz/fuzz_manifest.py: the typed decoder raised UnicodeDecodeError past the fallback.
    for doc in (b'{"kvmap": 1, "entries": [{"pr\xb5efix": "c/", "path": "s3://b/"}]}', b'[{"key\xff": "a"}]'):
        with pytest.raises(kvmap.ManifestError) as info:
            kvmap.Manifest.loads(doc)
        assert "not valid JSON" in info.value.reason


def test_exact_keys_longer_than_the_table_keeps_are_manifest_errors() -> None:
    # Spec section 9: a limit of this implementation, reported rather than misbehaving.
    from kvmap.keytable import MAX_KEY_LENGTH

    ok = "é" * (MAX_KEY_LENGTH // 2)  # two UTF-8 bytes each: at the limit, rounded down
    assert kvmap.compile([{"key": ok, "path": "s3://b/x"}]).resolve(ok).url == "s3://b/x"
    with pytest.raises(kvmap.ManifestError) as info:
        kvmap.compile([{"key": "a", "path": "s3://b/a"}, {"key": "é" * (MAX_KEY_LENGTH // 2 + 1), "path": None}])
    assert (info.value.entry, info.value.field) == (1, "key")


def test_bulk_references_after_other_entries_keep_their_entry_numbers() -> None:
    # Manifest.from_references(before=...) numbered its bulk entries from 0 in the compiled map
    # (found by the columnar map's tests): kerchunk imports, whose metadata goes first, reported
    # wrong entries, and a prefix in `before` could win over a later exact key.
    before = [{"key": "z", "json": 1}, {"prefix": "", "path": "s3://b/x/"}]
    m = kvmap.Manifest.from_references(["k0", "k1"], ["s3://b/f", None], [0, None], [4, None], before=before, url=None)
    cm = kvmap.compile(m)
    assert cm.resolve("k0") == kvmap.Resolution(2, "s3://b/f", 0, 4, None)
    assert cm.resolve("k1") is None
    assert cm.explain("k1").entries == (3, 1)
    assert cm.resolve("other").entry == 1
