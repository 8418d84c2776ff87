"""Key-range algebra: successors and the common prefix of a range, checked from their definitions."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from kvmap.keyrange import KeyRange, key_successor, prefix_range, prefix_successor, range_common_prefix_length
from tests.strategies import texts


@given(texts, texts)
def test_prefix_range_is_exactly_the_keys_with_the_prefix(prefix: str, key: str) -> None:
    assert prefix_range(prefix).contains(key) == key.startswith(prefix)
    assert prefix_range(prefix).contains(prefix + key)


@given(texts)
def test_prefix_successor_is_a_valid_key_or_unbounded(prefix: str) -> None:
    succ = prefix_successor(prefix)
    if succ is None:
        assert set(prefix) <= {"\U0010ffff"}
    else:
        succ.encode("utf-8")
        assert succ > prefix
        assert not succ.startswith(prefix)


@given(texts, texts)
def test_key_successor_bounds_a_single_key(key: str, other: str) -> None:
    assert KeyRange(key, key_successor(key)).contains(other) == (other == key)


@given(texts, st.none() | texts, st.lists(texts, max_size=20))
def test_common_prefix_length_is_shared_and_maximal(lo: str, hi: str | None, tails: list[str]) -> None:
    assume(hi is None or lo < hi)
    n = range_common_prefix_length(lo, hi)
    rng = KeyRange(lo, hi)
    # Shared: every key of the range we can find starts with lo[:n].
    for key in [lo, *(lo + t for t in tails), *(lo[:i] + t for i in range(len(lo) + 1) for t in tails)]:
        if rng.contains(key):
            assert key.startswith(lo[:n]), key
    # Maximal: the first key after those starting with lo[:n+1] is still in the range.
    if n < len(lo):
        witness = prefix_successor(lo[: n + 1])
        assert witness is not None
        assert rng.contains(witness)
        assert not witness.startswith(lo[: n + 1])


def test_documented_examples() -> None:
    cases = {("0.1", "0.9"): 2, ("c/3", "c/4"): 3, ("c/0", "c/10"): 2, ("a", "b"): 1, ("a", None): 0}
    assert {k: range_common_prefix_length(*k) for k in cases} == cases
    assert range_common_prefix_length("a\U0010ffff", "b") == 2
    assert range_common_prefix_length("\U0010ffffx", None) == 1


def test_intersect() -> None:
    assert KeyRange("a", "m").intersect(KeyRange("c", None)) == KeyRange("c", "m")
    assert KeyRange("a", None).intersect(KeyRange("b", None)) == KeyRange("b", None)
    assert KeyRange("a", "b").intersect(KeyRange("c", "d")).is_empty()
