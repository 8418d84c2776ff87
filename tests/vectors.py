"""The language-neutral conformance vectors of spec/conformance/, as pytest parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent.parent / "spec" / "conformance"
#: The read vectors have a format of their own (tests/test_conformance_reads.py).
READS = "reads.json"


def resolution_cases() -> list[Any]:
    """Every case of every vector file but the read vectors, one ``pytest.param`` each."""
    out = []
    for path in sorted(p for p in VECTORS.glob("*.json") if p.name != READS):
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            out.append(pytest.param(case, id=f"{path.stem}:{case['name']}"))
    return out
