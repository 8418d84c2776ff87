"""kvmap's C fast path (kvmap/_speedups.c) against the pure-Python resolver it stands in for.

Skipped where the extension is not built. The property tests and conformance vectors run through it
too (whenever it is built); tests/test_pure_python.py runs them without it.
"""

from __future__ import annotations

import gc
import sys
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap import compiled
from kvmap.url import REMAINDER_SAFE, encode_remainder
from tests.strategies import manifest_and_keys

speedups = pytest.importorskip("kvmap._speedups")
if compiled._RangeIndex is None:
    pytest.skip("KVMAP_PURE_PYTHON is set: maps compile without the C path", allow_module_level=True)

# Characters that make the search's edge cases: shared prefixes longer than its words (7 UTF-8
# bytes each), NUL (it pads the words), and 1- to 4-byte UTF-8 forms.
ALPHABET = "ab/\x00\x7f\x80\xff\u0100\u07ff\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff"
TEXT = st.one_of(st.text(alphabet="ab", max_size=20), st.text(alphabet=ALPHABET, max_size=12), st.text(max_size=8))
# Keys never hold one (resolve rejects them first), but the search orders them right all the same.
SURROGATES = ["\ud800", "a\udfff", "\udbff\udfff", "\ud7ff\ud800"]
LONG = "temperature/c/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/"  # past the last level of words


@contextmanager
def without_c_path() -> Iterator[None]:
    """Maps compiled inside resolve range pieces in pure Python."""
    saved = compiled._RangeIndex
    compiled._RangeIndex = None
    try:
        yield
    finally:
        compiled._RangeIndex = saved


@pytest.fixture
def pure() -> Iterator[None]:
    """Maps compiled inside resolve in pure Python."""
    with without_c_path():
        yield


def index(bounds: list[str], targets: list[Any] | None = None) -> Any:
    if targets is None:
        targets = [None] + [(i, f"s3://b/{i}/", 0) for i in range(len(bounds))]
    return speedups.RangeIndex(bounds, targets, kvmap.Resolution, encode_remainder, compiled._check_key, REMAINDER_SAFE)


def test_compile_uses_the_c_path() -> None:
    cm = kvmap.compile([{"prefix": "a/", "path": "s3://b/"}])
    assert isinstance(cm._index, speedups.RangeIndex)
    assert cm.resolve == cm._index.resolve


@given(st.lists(TEXT, unique=True), st.lists(TEXT, max_size=20))
def test_position_is_bisect_right(bounds: list[str], keys: list[str]) -> None:
    bounds.sort()
    idx = index(bounds)
    probes = keys + bounds + [b + "\x00" for b in bounds] + [b[:-1] for b in bounds if b] + ["", *SURROGATES]
    for key in probes:
        assert idx.position(key) == bisect_right(bounds, key), key


@given(st.lists(st.text(alphabet="ab", max_size=4), unique=True), st.lists(st.text(alphabet="ab", max_size=6)))
def test_position_past_the_last_level_of_words(tails: list[str], keys: list[str]) -> None:
    bounds = sorted(LONG + t for t in tails)
    idx = index(bounds)
    for key in [LONG + k for k in keys] + bounds + [LONG[:-1], LONG, LONG + "\x00"]:
        assert idx.position(key) == bisect_right(bounds, key), key


def test_levels_grow_only_where_runs_of_bounds_share_words() -> None:
    assert index([]).levels == 1
    assert index(["a", "b"]).levels == 1
    assert index(["abcdefgh", "abcdefgi"]).levels == 2
    assert index([LONG + "a", LONG + "b"]).levels == 6  # the most; the rest is compared as str


@given(manifest_and_keys())
def test_the_same_answers_as_pure_python(case: tuple[list[dict[str, Any]], list[str]]) -> None:
    entries, keys = case
    fast = kvmap.compile(entries)
    with without_c_path():
        slow = kvmap.compile(entries)
    assert fast._index is not None
    assert slow._index is None
    expected = [slow.resolve(k) for k in keys]
    assert [fast.resolve(k) for k in keys] == expected
    assert fast.resolve_many(keys) == slow.resolve_many(keys) == expected
    many = keys * (64 // max(1, len(keys)) + 1)  # the sorted batch path
    assert fast.resolve_many(many) == slow.resolve_many(many)


def test_the_same_answers_as_pure_python_on_a_larger_map() -> None:
    # URL prefixes longer than a piece record holds, not ASCII, entries past the small ints, keys longer
    # than the batch path copies, keys to escape, keys outside every piece, batches of every size.
    entries: list[dict[str, Any]] = []
    for i in range(400):
        url = [f"s3://b/{i}/", f"https://example.com/a/rather/long/path/to/dataset-{i}.zarr/", f"s3://é/{i}/"][i % 3]
        if i % 4 == 0:
            entries.append({"prefix": f"g{i:04d}/", "path": url})
        elif i % 4 == 1:
            entries.append({"min": f"g{i:04d}/a", "max": f"g{i:04d}/m", "path": url, "strip_prefix": i % 3})
        elif i % 4 == 2:
            entries.append({"prefix": f"g{i:04d}/é", "path": None})
        else:
            entries.append({"prefix": f"g{i // 2:04d}", "path": url, "strip_prefix": 1})
    tails = ["c/0", "c/0 1", "é/x", "a%|#?", "\x00", "", "a" * 2000, "z/\U0001f600", "m"]
    keys = [f"g{i:04d}{sep}{tail}" for i in range(0, 420, 7) for sep in ("/", "", "_") for tail in tails]
    fast = kvmap.compile(entries)
    with without_c_path():
        slow = kvmap.compile(entries)
    expected = [slow.resolve(k) for k in keys]
    assert any(r is not None and len(r.url) > 60 for r in expected)
    assert any(r is not None and r.entry > 300 for r in expected)
    assert [fast.resolve(k) for k in keys] == expected
    for size in (1, 63, 64, 65, 1000, len(keys)):
        assert fast.resolve_many(keys[:size]) == expected[:size]
    assert fast.resolve_many(keys[::-1]) == expected[::-1]


def test_a_strip_past_the_end_of_the_key_leaves_the_url_prefix() -> None:
    idx = index(["a"], [None, (0, "s3://b/", 5)])
    assert idx.resolve("ab") == kvmap.Resolution(0, "s3://b/", None, None, None)
    assert idx.resolve("aé") == kvmap.Resolution(0, "s3://b/", None, None, None)
    assert idx.resolve_many(["ab"] * 64) == [kvmap.Resolution(0, "s3://b/", None, None, None)] * 64


def test_answers_are_resolutions() -> None:
    cm = kvmap.compile([{"prefix": "c/", "path": "s3://b/é/", "strip_prefix": 0}, {"min": "x", "path": "s3://x/"}])
    for r in [cm.resolve("c/0 1"), *cm.resolve_many(["c/é"] * 100)]:
        assert type(r) is kvmap.Resolution
        assert r == tuple(r)
        assert hash(r) == hash(tuple(r))
        assert (r.offset, r.length, r.data) == (None, None, None)
    assert cm.resolve("c/0 1") == kvmap.Resolution(0, "s3://b/é/c/0%201", None, None, None)
    assert cm.resolve("c/é") == kvmap.Resolution(0, "s3://b/é/c/%C3%A9", None, None, None)
    assert cm.resolve("x") == kvmap.Resolution(1, "s3://x/x", None, None, None)
    assert cm.resolve("b") is None


def test_answers_stay_out_of_the_cyclic_collector() -> None:
    cm = kvmap.compile([{"prefix": "c/", "path": "s3://b/"}])
    r = cm.resolve("c/0")
    assert r is not None
    assert not gc.is_tracked(r)
    assert not any(gc.is_tracked(r) for r in cm.resolve_many(["c/0"] * 100))


def test_references_are_counted() -> None:
    url = "".join(["s3://bucket/", "g/"])  # an object of its own, counted alone
    idx = index(["c/", "c0"], [None, (0, url, 2), None])
    key = "".join(["c/", "0/1"])
    before = sys.getrefcount(url), sys.getrefcount(key), sys.getrefcount(kvmap.Resolution)
    for _ in range(3):
        results = [idx.resolve(key), idx.resolve("c/"), idx.resolve("b"), *idx.resolve_many([key, "c/", "b"] * 50)]
        assert results[1] is not None
        assert results[1].url is url  # nothing to append: the prefix itself
        del results
    assert (sys.getrefcount(url), sys.getrefcount(key), sys.getrefcount(kvmap.Resolution)) == before


def test_bad_keys_raise() -> None:
    cm = kvmap.compile([{"prefix": "", "path": "s3://b/"}])
    with pytest.raises(TypeError):
        cm.resolve(b"a")  # type: ignore[arg-type]
    with pytest.raises(kvmap.InvalidKeyError, match="lone surrogate"):
        cm.resolve("a\udcff")
    with pytest.raises(kvmap.InvalidKeyError, match="lone surrogate"):
        cm.resolve_many(["a"] * 100 + ["\ud800"])


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="one more item"):
        index(["a"], [None])
    with pytest.raises(ValueError, match="strictly increasing"):
        index(["b", "a"])
    with pytest.raises(TypeError, match="a target is None or"):
        index(["a"], [None, (0, 5, 0)])
    with pytest.raises(TypeError, match="tuple subclass"):
        speedups.RangeIndex([], [None], dict, encode_remainder, compiled._check_key, REMAINDER_SAFE)
    with pytest.raises(ValueError, match="ASCII"):
        speedups.RangeIndex([], [None], kvmap.Resolution, encode_remainder, compiled._check_key, "é")


def test_pure_python_fixture(pure: None) -> None:
    assert kvmap.compile([{"prefix": "", "path": "s3://b/"}])._index is None
