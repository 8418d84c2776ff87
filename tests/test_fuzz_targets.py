"""The fuzz targets run on their seed corpus and on every conformance manifest, so they never rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz.fuzz_manifest import check

ROOT = Path(__file__).parent.parent
SEEDS = sorted((ROOT / "fuzz" / "corpus").glob("*.json"))
VECTOR_DOCS = [
    json.dumps(doc).encode()
    for path in sorted((ROOT / "spec" / "conformance").glob("*.json"))
    for case in json.loads(path.read_text(encoding="utf-8"))["cases"]
    # The read vectors (reads.json) hold their manifests among the objects of their world.
    for doc in (
        [case["manifest"]] if "manifest" in case else [o["json"] for o in case["objects"].values() if "json" in o]
    )
]


def test_there_is_a_seed_corpus() -> None:
    assert len(SEEDS) >= 20


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.stem)
def test_manifest_target_on_seed(seed: Path) -> None:
    check(seed.read_bytes())


def test_manifest_target_on_every_vector_and_on_garbage() -> None:
    for doc in VECTOR_DOCS:
        check(doc)
    for garbage in (b"", b"\xff", b"[", b"[[]]", b'{"kvmap":1}', b'[{"key":"a","json":1e400}]', b"[" * 10_000):
        check(garbage)
