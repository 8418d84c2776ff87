"""Numbers in inline ``json`` values: one rule for JSON text and for Python objects.

An integer outside -2**63 .. 2**64-1 and a NaN or infinite number are refused (field ``json``),
never rounded to a float (what orjson does to such an integer in text) or written as ``null``
(what orjson does to NaN); everything else round-trips exactly.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.entries import JSON_INT_MAX, JSON_INT_MIN
from kvmap.manifest import Manifest


def _document(value: Any, before: int = 3) -> dict[str, Any]:
    """A document whose entry ``before`` holds ``value``, after plain exact-key entries."""
    entries: list[dict[str, Any]] = [{"key": f"k{i}", "path": f"s3://b/{i}"} for i in range(before)]
    return {"kvmap": 1, "entries": [*entries, {"key": "j", "json": value}]}


def _nested(value: Any) -> Any:
    return {"zarr_format": 3, "attributes": {"a": [1, {"deep": [[value]]}], "b/c~": value}}


def _from_text(document: Any) -> Manifest:
    # Python's json writes integers of any size exactly, as JSON text allows.
    return Manifest.loads(json.dumps(document), name="m.json")


def _from_objects(document: Any) -> Manifest:
    return Manifest.from_json(document, name="m.json")


def _inline(cm: kvmap.CompiledMap, key: str) -> bytes:
    r = cm.resolve(key)
    assert r is not None
    assert r.data is not None
    return r.data


PATHS = [pytest.param(_from_text, id="text"), pytest.param(_from_objects, id="objects")]


@pytest.mark.parametrize("load", PATHS)
@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**100, -(2**64), 10**60], ids=str)
def test_integers_beyond_64_bits_are_refused(load: Any, value: int) -> None:
    for where, inside in [("", value), (" at /attributes/a/1/deep/0/0", _nested(value))]:
        with pytest.raises(kvmap.ManifestError) as info:
            load(_document(inside))
        assert (info.value.manifest, info.value.entry, info.value.field) == ("m.json", 3, "json")
        assert info.value.reason == f"integer {value}{where} is outside the 64-bit range kvmap keeps exactly"


def test_the_message_is_the_one_the_brief_gives() -> None:
    with pytest.raises(kvmap.ManifestError) as info:
        Manifest.loads('{"kvmap": 1, "entries": [{"key": "a", "json": 18446744073709551616}]}', name="m.json")
    assert str(info.value) == (
        "m.json: entry 0: field 'json': integer 18446744073709551616 is outside the 64-bit range kvmap keeps exactly"
    )


@pytest.mark.parametrize("load", PATHS)
@pytest.mark.parametrize("value", [2**63, 2**64 - 1, -(2**63), 2**63 - 1, 2**53 + 1, 0, -1])
def test_integers_within_64_bits_are_kept_exactly(load: Any, value: int) -> None:
    manifest = load(_document(_nested(value)))
    entry = manifest.entries[3]
    assert entry.data == json.dumps(_nested(value), separators=(",", ":")).encode()
    assert entry.to_json()["json"] == _nested(value)
    assert json.loads(_inline(kvmap.compile(manifest), "j")) == _nested(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_from_python_are_refused_not_written_as_null(value: float) -> None:
    name = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    for where, inside in [("", value), (" at /attributes/a/1/deep/0/0", _nested(value)), (" at /0", [value])]:
        with pytest.raises(kvmap.ManifestError) as info:
            _from_objects(_document(inside))
        assert (info.value.entry, info.value.field) == (3, "json")
        assert info.value.reason == f"number {name}{where} is not finite (JSON has no NaN or Infinity)"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_in_text_are_not_json(literal: str) -> None:
    # JSON text has no NaN or Infinity (Python's json writes them anyway), and 1e400 is no double.
    text = json.dumps(_document(_nested(0))).replace('"b/c~": 0', f'"b/c~": {literal}')
    assert literal in text
    with pytest.raises(kvmap.ManifestError) as info:
        Manifest.loads(text, name="m.json")
    assert (info.value.entry, info.value.field) == (None, None)
    assert info.value.reason.startswith("not valid JSON")


@pytest.mark.parametrize("load", PATHS)
@pytest.mark.parametrize("value", [1.8446744073709552e19, -9.3e18, 1e300, 5e-324, -0.0, 0.5])
def test_finite_floats_are_kept(load: Any, value: float) -> None:
    entry = load(_document([value])).entries[3]
    (got,) = entry.to_json()["json"]
    assert type(got) is float
    assert math.copysign(1, got) == math.copysign(1, value)
    assert got == value


def test_the_first_bad_entry_is_reported() -> None:
    doc = {"kvmap": 1, "entries": [{"key": "a", "json": 1}, {"key": "b", "json": 2**64}, {"key": "c", "offset": -1}]}
    for load in (_from_text, _from_objects):
        with pytest.raises(kvmap.ManifestError) as info:
            load(doc)
        assert (info.value.entry, info.value.field) == (1, "json")


def test_huge_integers_elsewhere_read_the_same_from_text() -> None:
    # orjson made a float of 2**64 in text: "must be an integer, not a number"; now both paths agree.
    doc = [{"key": "a", "path": "s3://b/a", "offset": 2**64}]
    reasons = set()
    for load in (_from_text, _from_objects):
        with pytest.raises(kvmap.ManifestError) as info:
            load(doc)
        reasons.add((info.value.entry, info.value.field, info.value.reason))
    assert reasons == {(0, "offset", f"must be between 0 and 2**53-1, not {2**64}")}


def test_shared_and_cyclic_values_end() -> None:
    shared = [math.nan]
    with pytest.raises(kvmap.ManifestError, match="NaN at /0/0"):
        _from_objects(_document([shared] * 1000))
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(kvmap.ManifestError, match="not a JSON value"):
        _from_objects(_document(cycle))


def test_integers_too_long_to_print_are_described_by_size() -> None:
    with pytest.raises(kvmap.ManifestError) as info:
        _from_objects(_document(10**5000))
    assert info.value.reason == "integer of 16610 bits is outside the 64-bit range kvmap keeps exactly"


# -- the round trip ----------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)  # any code point but a surrogate
INTEGERS = st.one_of(
    st.integers(JSON_INT_MIN, JSON_INT_MAX),
    st.sampled_from([JSON_INT_MIN, JSON_INT_MAX, 2**63 - 1, 2**63, 2**53, 2**53 + 1, -(2**53) - 1]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, with types (1 is not 1.0 nor True) and the sign of zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def _entries(values: list[Any]) -> list[dict[str, Any]]:
    return [{"key": f"k{i}", "json": v} for i, v in enumerate(values)] + [{"key": "p", "path": "s3://b/p"}]


def _check_round_trip(manifest: Manifest, loaded: Manifest, values: list[Any]) -> None:
    assert loaded == manifest
    cm = kvmap.compile(loaded)
    for i, value in enumerate(values):
        assert _same(loaded.entries[i].to_json()["json"], value)
        assert loaded.entries[i].data == manifest.entries[i].data
        assert _same(json.loads(_inline(cm, f"k{i}")), value)


@given(st.lists(JSON_VALUES, min_size=1, max_size=4))
def test_json_values_round_trip_through_text(values: list[Any]) -> None:
    manifest = Manifest.from_json({"kvmap": 1, "entries": _entries(values)}, url="s3://b/m.json")
    _check_round_trip(manifest, Manifest.loads(manifest.dumps(), url="s3://b/m.json"), values)


@settings(max_examples=50)  # each example writes a file and syncs it to disk
@given(st.lists(JSON_VALUES, min_size=1, max_size=4))
def test_json_values_round_trip_through_a_saved_file(values: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        manifest = Manifest.from_json({"kvmap": 1, "entries": _entries(values)}, url=path.as_uri())
        manifest.save(path)
        _check_round_trip(manifest, Manifest.load(path), values)


@given(
    st.recursive(
        st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.none() | TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
        max_leaves=8,
    )
)
def test_text_and_objects_agree_on_any_integer(value: Any) -> None:
    """Unbounded integers: either both paths keep the value exactly, or both refuse it alike."""
    outcomes: list[tuple[str, Any]] = []
    for load in (_from_text, _from_objects):
        try:
            outcomes.append(("ok", load(_document(value)).entries[3].data))
        except kvmap.ManifestError as exc:
            outcomes.append(("error", (exc.entry, exc.field, exc.reason)))
    assert outcomes[0] == outcomes[1]
    if outcomes[0][0] == "ok":
        assert _same(json.loads(outcomes[0][1]), value)


def test_a_huge_integer_member_name_is_a_manifest_error() -> None:
    # Found by fuzz/fuzz_resolve.py: the error's JSON Pointer wrote the dict key out with str(),
    # which Python refuses past 4,300 digits (a raw ValueError escaped).
    with pytest.raises(kvmap.ManifestError, match="field 'json'"):
        kvmap.Manifest.from_json([{"key": "a", "json": {10**5000: 1}}])
