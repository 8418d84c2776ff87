"""Run the read vectors of spec/conformance/reads.json against kvmap's Reader (section 11)."""

from __future__ import annotations

import base64
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import obstore
import pytest

import kvmap

VECTORS = Path(__file__).parent.parent / "spec" / "conformance" / "reads.json"
CASES = [pytest.param(c, id=c["name"]) for c in json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]]
#: What each error kind of the vectors is in kvmap: a part of its message, and its class.
KINDS = {"dangling": "dangling reference", "short": "shorter than the window"}
CLASSES = {"dangling": kvmap.DanglingReferenceError, "short": kvmap.WindowError}


def _world(case: dict[str, Any]) -> str:
    """Store the case's objects under a fresh memory store; its name."""
    name = f"reads-{uuid.uuid4().hex[:12]}"
    store = kvmap.memory_store(name)
    for url, spec in case["objects"].items():
        path = url.removeprefix("memory://W/")
        if "data" in spec:
            data = base64.b64decode(spec["data"])
        elif "json" in spec:
            data = json.dumps(spec["json"]).encode()
        else:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
                for member, content in spec["zip"].items():
                    z.writestr(member, base64.b64decode(content))
            data = buf.getvalue()
        obstore.put(store, path, data)
    return name


def _probe(reader: kvmap.Reader, probe: dict[str, Any]) -> Any:
    try:
        if probe.get("op", "get") == "size":
            size = reader.size_sync(probe["key"])
            return None if size is None else {"size": size}
        byte_range = tuple(probe["range"]) if probe.get("range") is not None else None
        data = reader.get_sync(probe["key"], byte_range)  # type: ignore[arg-type]
        return None if data is None else {"data": base64.b64encode(bytes(data)).decode()}
    except kvmap.TargetError as exc:
        kind = next((k for k, text in KINDS.items() if text in str(exc)), str(exc))
        # A kind the vectors name must be raised as its class too (a non-match reads as another kind).
        return {"error": kind if kind not in CLASSES or isinstance(exc, CLASSES[kind]) else type(exc).__name__}


@pytest.mark.parametrize("case", CASES)
def test_read_vector(case: dict[str, Any]) -> None:
    name = _world(case)
    top = case["top"].replace("memory://W/", f"memory://{name}/")
    got = [_probe(kvmap.Reader(top), p) for p in case["read"]]
    # Batches decide the same way as single reads (one walk each, reads grouped).
    reader = kvmap.Reader(top)
    gets = [p for p in case["read"] if p.get("op", "get") == "get"]
    for probe, answer in zip(case["read"], got, strict=True):
        assert answer == probe["expect"], probe
    plain = [p for p in gets if "error" not in (p["expect"] or {})]
    ranges = [tuple(p["range"]) if p.get("range") is not None else None for p in plain]
    batch = reader.get_many_sync([p["key"] for p in plain], ranges)  # type: ignore[arg-type]
    expected = [None if p["expect"] is None else base64.b64decode(p["expect"]["data"]) for p in plain]
    assert [None if d is None else bytes(d) for d in batch] == expected
    for probe in gets:
        if "error" in (probe["expect"] or {}):
            rng = tuple(probe["range"]) if probe.get("range") is not None else None
            with pytest.raises(CLASSES[probe["expect"]["error"]], match=KINDS[probe["expect"]["error"]]):
                reader.get_many_sync([probe["key"]], [rng])  # type: ignore[list-item]


def test_there_are_read_vectors() -> None:
    assert sum(len(c.values[0]["read"]) for c in CASES) >= 40
