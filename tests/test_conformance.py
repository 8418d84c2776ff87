"""Run every language-neutral vector in spec/conformance/ against kvmap."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

import kvmap
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
