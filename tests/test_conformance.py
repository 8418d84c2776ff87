"""Run every language-neutral vector in spec/conformance/ against kvmap."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

import kvmap
from kvmap.entries import Pins
from tests.vectors import resolution_cases

CASES = resolution_cases()


def test_there_are_enough_vectors() -> None:
    assert len(CASES) >= 80


def _actual(r: kvmap.Resolution | None, expect: dict[str, Any] | None) -> dict[str, Any] | None:
    if r is None:
        return None
    out: dict[str, Any] = {"entry": r.entry, "url": r.url, "offset": r.offset, "length": r.length}
    if expect is not None and "json" in expect:
        out["json"] = json.loads(r.data) if r.data is not None else None
    elif r.data is not None:
        out["data"] = base64.b64encode(r.data).decode("ascii")
    return out


@pytest.mark.parametrize("case", CASES)
def test_vector(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(kvmap.ManifestError) as info:
            kvmap.compile(kvmap.Manifest.loads(json.dumps(case["manifest"]), url=case["url"]))
        assert (info.value.entry, info.value.field) == (case["error"]["entry"], case["error"]["field"]), str(info.value)
        return
    cm = kvmap.compile(kvmap.Manifest.loads(json.dumps(case["manifest"]), url=case["url"]))
    keys = [probe["key"] for probe in case["resolve"]]
    assert cm.resolve_many(keys) == [cm.resolve(k) for k in keys]
    for probe in case["resolve"]:
        expect = probe["expect"]
        if expect is not None and "data" in expect:
            expect = {**expect, "data": base64.b64encode(base64.b64decode(expect["data"])).decode("ascii")}
        assert _actual(cm.resolve(probe["key"]), expect) == expect, probe["key"]


PIN_MEMBERS = ("etag", "version", "sha256")


def _entries(document: Any) -> list[Any]:
    """The entries of a vector's manifest (an object, or a bare array of entries)."""
    return document if isinstance(document, list) else document.get("entries", [])


def _is_pinned(entry: Any) -> bool:
    return isinstance(entry, dict) and any(member in entry for member in PIN_MEMBERS)


PINNED_CASES = [
    case for case in CASES if "resolve" in case.values[0] and any(map(_is_pinned, _entries(case.values[0]["manifest"])))
]


def test_there_are_pinned_vectors() -> None:
    assert len(PINNED_CASES) >= 5


@pytest.mark.parametrize("case", PINNED_CASES)
def test_pins_do_not_change_resolution(case: dict[str, Any]) -> None:
    """Spec 3.4: every key of a pinned vector is explained (resolution and covering entries) as
    with the pins taken out, and the pins are those written."""
    entries = _entries(case["manifest"])
    bare = [{k: v for k, v in e.items() if k not in PIN_MEMBERS} for e in entries]
    unpinned = kvmap.compile(kvmap.Manifest.loads(json.dumps(bare), url=case["url"]))
    cm = kvmap.compile(kvmap.Manifest.loads(json.dumps(case["manifest"]), url=case["url"]))
    keys = [probe["key"] for probe in case["resolve"]]
    assert [cm.explain(k) for k in keys] == [unpinned.explain(k) for k in keys]
    assert cm.pins == {
        i: Pins(e.get("etag"), e.get("version"), e.get("sha256")) for i, e in enumerate(entries) if _is_pinned(e)
    }
