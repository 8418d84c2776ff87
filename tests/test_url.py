"""URL syntax: RFC 3986 reference resolution for every scheme, and remainder encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmap.url import decode_remainder, encode_remainder, is_absolute, join, resolve_target

# RFC 3986 section 5.4: every normal and abnormal example.
RFC_BASE = "http://a/b/c/d;p?q"
RFC_EXAMPLES = {
    "g:h": "g:h", "g": "http://a/b/c/g", "./g": "http://a/b/c/g", "g/": "http://a/b/c/g/", "/g": "http://a/g",
    "//g": "http://g", "?y": "http://a/b/c/d;p?y", "g?y": "http://a/b/c/g?y", "#s": "http://a/b/c/d;p?q#s",
    "g#s": "http://a/b/c/g#s", "g?y#s": "http://a/b/c/g?y#s", ";x": "http://a/b/c/;x", "g;x": "http://a/b/c/g;x",
    "g;x?y#s": "http://a/b/c/g;x?y#s", "": "http://a/b/c/d;p?q", ".": "http://a/b/c/", "./": "http://a/b/c/",
    "..": "http://a/b/", "../": "http://a/b/", "../g": "http://a/b/g", "../..": "http://a/", "../../": "http://a/",
    "../../g": "http://a/g", "../../../g": "http://a/g", "../../../../g": "http://a/g", "/./g": "http://a/g",
    "/../g": "http://a/g", "g.": "http://a/b/c/g.", ".g": "http://a/b/c/.g", "g..": "http://a/b/c/g..",
    "..g": "http://a/b/c/..g", "./../g": "http://a/b/g", "./g/.": "http://a/b/c/g/", "g/./h": "http://a/b/c/g/h",
    "g/../h": "http://a/b/c/h", "g;x=1/./y": "http://a/b/c/g;x=1/y", "g;x=1/../y": "http://a/b/c/y",
    "g?y/./x": "http://a/b/c/g?y/./x", "g?y/../x": "http://a/b/c/g?y/../x", "g#s/./x": "http://a/b/c/g#s/./x",
    "g#s/../x": "http://a/b/c/g#s/../x", "http:g": "http:g",
}  # fmt: skip


@pytest.mark.parametrize(("reference", "expected"), RFC_EXAMPLES.items())
def test_rfc3986_examples(reference: str, expected: str) -> None:
    assert join(RFC_BASE, reference) == expected


@pytest.mark.parametrize(
    ("base", "reference", "expected"),
    [
        ("s3://bucket/a/m.json", "../data/", "s3://bucket/data/"),
        ("s3://bucket/a/m.json", "/x/", "s3://bucket/x/"),
        ("s3://bucket/a/m.json", "//other/x", "s3://other/x"),
        ("gs://b/m.json", "c/", "gs://b/c/"),
        ("memory://store/x/y.json", "../../z", "memory://store/z"),
        ("file:///data/views/m.json", "../t.zarr/", "file:///data/t.zarr/"),
        ("s3://bucket", "x/", "s3://bucket/x/"),
    ],
)
def test_join_knows_every_scheme(base: str, reference: str, expected: str) -> None:
    assert join(base, reference) == expected


def test_only_the_pipeline_root_is_a_reference() -> None:
    base = "s3://bucket/views/m.json"
    assert resolve_target(base, "sub/m.json|kvmap:../x") == "s3://bucket/views/sub/m.json|kvmap:../x"
    assert resolve_target(base, "s3://o/m.json|zip:a/../b") == "s3://o/m.json|zip:a/../b"
    with pytest.raises(ValueError, match="relative"):
        resolve_target(None, "data/")


def test_is_absolute_follows_the_rfc_scheme_grammar() -> None:
    assert [is_absolute(s) for s in ("s3://b", "a+b.c-d:x", "1x:y", "x_y:z", "/p", "")] == [
        True, True, False, False, False, False,
    ]  # fmt: skip


def test_encode_examples() -> None:
    assert encode_remainder("a b%c|d#e?f") == "a%20b%25c%7Cd%23e%3Ff"
    assert encode_remainder("é/\U0001f600") == "%C3%A9/%F0%9F%98%80"
    assert encode_remainder("c/0.1-2_3~4") == "c/0.1-2_3~4"


@given(st.text())
def test_encode_decode_round_trip_for_arbitrary_text(text: str) -> None:
    assert decode_remainder(encode_remainder(text)) == text


@given(st.text(), st.text())
def test_encoding_preserves_concatenation(a: str, b: str) -> None:
    assert encode_remainder(a + b) == encode_remainder(a) + encode_remainder(b)
