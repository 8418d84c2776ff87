"""kvmap without its C fast path: the resolve properties and the conformance vectors again.

Wherever ``kvmap._speedups`` is built, the rest of the suite tests maps that resolve range pieces
through it. Here maps are compiled with it off (``kvmap.compiled._RangeIndex = None``, as on a machine
without a compiler, or with ``KVMAP_PURE_PYTHON=1``), with a quarter of the examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings

import kvmap
from tests import test_conformance, test_properties, test_regressions
from tests.strategies import manifest_and_keys
from tests.test_speedups import without_c_path

FEWER = settings(max_examples=max(50, settings.default.max_examples // 4))

Case = tuple[list[dict[str, Any]], list[str]]


@pytest.fixture(autouse=True, scope="module")
def pure_python() -> Iterator[None]:
    with without_c_path():
        yield


def test_maps_are_compiled_without_the_c_path() -> None:
    cm = kvmap.compile([{"prefix": "a/", "path": "s3://b/"}])
    assert cm._index is None
    assert cm.resolve("a/x y") == kvmap.Resolution(0, "s3://b/x%20y", None, None, None)


@FEWER
@given(manifest_and_keys())
def test_resolve_matches_reference(case: Case) -> None:
    test_properties.check_resolve_matches_reference(*case)


@FEWER
@given(manifest_and_keys())
def test_resolve_many_equals_resolve(case: Case) -> None:
    test_properties.check_resolve_many_equals_resolve(*case)


@FEWER
@given(manifest_and_keys())
def test_explain_lists_covering_entries_winner_first(case: Case) -> None:
    test_properties.check_explain_lists_covering_entries_winner_first(*case)


@FEWER
@given(manifest_and_keys())
def test_resolve_many_in_bulk_equals_resolve(case: Case) -> None:
    test_properties.check_resolve_many_in_bulk(*case)


@pytest.mark.parametrize("case", test_conformance.CASES)
def test_vector(case: dict[str, Any]) -> None:
    test_conformance.test_vector(case)


def test_a_key_with_a_lone_surrogate_is_rejected_wherever_it_would_resolve() -> None:
    test_regressions.test_a_key_with_a_lone_surrogate_is_rejected_wherever_it_would_resolve()
