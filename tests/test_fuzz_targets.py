"""The fuzz targets run on their seed corpora (so they never rot), and the kvmap bugs the fuzzers
found are pinned by regression tests (xfail until fixed; see fuzz/README.md).

Atheris is not needed: each target's ``check`` is a plain function, and where atheris is
missing the targets build their values with ``fuzz._fdp``, which turns bytes into the same
values as atheris' ``FuzzedDataProvider`` (compared below whenever atheris is installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import obstore
import pytest
from zarr.core.buffer import cpu

import kvmap
from fuzz import _fdp, _harness
from fuzz.fuzz_manifest import check as check_manifest

ROOT = Path(__file__).parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
TARGETS = ["manifest", "manifest_objects", "pipeline", "resolve", "store", "zip"]
VECTOR_DOCS = [
    json.dumps(doc).encode()
    for path in sorted((ROOT / "spec" / "conformance").glob("*.json"))
    for case in json.loads(path.read_text(encoding="utf-8"))["cases"]
    # The read vectors (reads.json) hold their manifests among the objects of their world.
    for doc in (
        [case["manifest"]] if "manifest" in case else [o["json"] for o in case["objects"].values() if "json" in o]
    )
]


def _check(target: str) -> Callable[[bytes], None]:
    return importlib.import_module(f"fuzz.fuzz_{target}").check  # type: ignore[no-any-return]


def _seeds(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file())


@pytest.fixture
def known_bugs_tolerated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The corpus test is about the targets, not the known bugs (which have their own xfail tests
    below): the checks tolerate exactly those, as they do in fuzz/run.py's runs."""
    monkeypatch.setattr(_harness, "SKIP_KNOWN", True)


def test_the_targets_are_these() -> None:
    found = sorted(p.stem.removeprefix("fuzz_") for p in (ROOT / "fuzz").glob("fuzz_*.py"))
    assert found == TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_a_small_seed_corpus(target: str) -> None:
    seeds = _seeds(target)
    assert len(seeds) >= 20
    assert max(p.stat().st_size for p in seeds) <= 16 << 10


@pytest.mark.usefixtures("known_bugs_tolerated")
@pytest.mark.parametrize("target", TARGETS)
def test_target_on_its_seed_corpus(target: str) -> None:
    check = _check(target)
    failed = []
    for seed in _seeds(target):
        try:
            check(seed.read_bytes())
        except Exception as exc:
            failed.append(f"{seed.name}: {exc!r}"[:300])
    assert not failed, "\n".join(failed)


@pytest.mark.usefixtures("known_bugs_tolerated")
def test_manifest_target_on_every_vector_and_on_garbage() -> None:
    for doc in VECTOR_DOCS:
        check_manifest(doc)
    for garbage in (b"", b"\xff", b"[", b"[[]]", b'{"kvmap":1}', b'[{"key":"a","json":1e400}]', b"[" * 10_000):
        check_manifest(garbage)


def test_targets_fail_on_a_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks are not vacuous: a resolver that is off by one entry is caught."""
    from fuzz import fuzz_resolve

    real = kvmap.compile

    def wrong(source: Any) -> Any:
        cm = real(source)
        resolve = cm.resolve
        object.__setattr__(cm, "resolve", lambda k: None if k == "a" else resolve(k))
        return cm

    monkeypatch.setattr(kvmap, "compile", wrong)
    doc = {"manifest": [{"prefix": "", "path": "s3://b/"}], "url": None, "keys": ["a"]}
    with pytest.raises(AssertionError):
        fuzz_resolve.check(b"J" + json.dumps(doc).encode())


# -- fuzz._fdp is atheris' FuzzedDataProvider, byte for byte ----------------------------------

_LISTS = [list(range(n)) for n in (1, 2, 255, 256, 300, 70000)]
_PROGRAM: list[Callable[[Any, random.Random], Any]] = [
    lambda p, r: p.ConsumeBytes(r.randrange(0, 9)),
    lambda p, r: p.ConsumeBool(),
    lambda p, r: p.ConsumeInt(r.choice([0, 1, 2, 3, 5, 8, 9, 16, 33])),
    lambda p, r: p.ConsumeIntInRange(-5, r.choice([-5, 0, 1, 255, 256, 2**32, 2**64 - 6, 2**64, 2**100])),
    lambda p, r: p.PickValueInList(r.choice(_LISTS)),
    lambda p, r: p.ConsumeUnicode(r.randrange(0, 12)),
    lambda p, r: p.ConsumeUnicodeNoSurrogates(r.randrange(0, 12)),
    lambda p, r: p.ConsumeFloat(),
    lambda p, r: p.ConsumeProbability(),
    lambda p, r: p.remaining_bytes(),
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


def test_fdp_stand_in_is_atheris_byte_for_byte() -> None:
    atheris = pytest.importorskip("atheris")
    rng = random.Random(0)
    for _ in range(1500):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        seed = rng.random()
        theirs, ours = atheris.FuzzedDataProvider(data), _fdp.FuzzedDataProvider(data)
        r1, r2 = random.Random(seed), random.Random(seed)
        for _ in range(rng.randrange(1, 15)):
            step = _PROGRAM[r1.randrange(len(_PROGRAM))]
            r2.randrange(len(_PROGRAM))
            a, b = step(theirs, r1), step(ours, r2)
            assert _same(a, b), (data.hex(), a, b)


def test_run_py_plain_loop(tmp_path: Path) -> None:
    """fuzz/run.py's fallback (no atheris): one target, one second, a table, exit 0."""
    out = subprocess.run(
        [sys.executable, "fuzz/run.py", "--plain", "--seconds", "1", "--target", "pipeline", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PLAIN RANDOM LOOP" in out.stdout
    assert "pipeline  plain-random" in out.stdout


# -- regressions: kvmap bugs the fuzzers found (strict xfail: fix kvmap, then drop the mark) ---


@pytest.mark.xfail(
    strict=True,
    raises=TypeError,
    reason="Manifest.dumps wraps each entry in a list and an object: a json value nested 254 deep, "
    "which validates (orjson serialises it alone), passes orjson's 255-level limit there "
    "('Recursion limit reached')",
)
def test_a_manifest_that_loads_saves_deep_json() -> None:
    text = '[{"key": "a", "json": ' + "[" * 254 + "]" * 254 + "}]"
    manifest = kvmap.Manifest.loads(text, url="s3://b/m.json")  # valid: loads and compiles
    assert kvmap.compile(manifest).resolve("a") is not None
    assert kvmap.Manifest.loads(manifest.dumps(), url="s3://b/m.json") == manifest


@pytest.mark.xfail(
    strict=True,
    reason="Manifest.from_json copies the entry objects but not the json values inside them: the "
    "caller's later changes reach the validated manifest (dumps fails or writes NaN as null, "
    "entries raise ManifestError, the compiled map still has the old value)",
)
def test_from_json_is_not_changed_by_the_callers_later_changes() -> None:
    document = [{"key": "a", "json": [1, {"b": 2}]}]
    manifest = kvmap.Manifest.from_json(document, url="s3://b/m.json")
    before = manifest.dumps()
    document[0]["json"].append(2**70)  # type: ignore[attr-defined]
    assert manifest.dumps() == before


# The regress-* inputs of open bugs: each fails its target's check until kvmap is fixed.
BUG_INPUTS = [
    ("manifest", "regress-dumps-deep-json.json"),
    ("manifest_objects", "regress-dumps-deep-json.json"),
    ("manifest_objects", "regress-from-json-shares-nested-values.json"),
    ("store", "regress-trailing-slash.json"),
    ("store", "regress-trailing-slash-empty-key.json"),
    ("store", "regress-listing-unstorable-prefix.json"),
    ("zip", "regress-empty-stored-member-bad-crc.zip"),
]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="an open kvmap bug: fuzz/README.md, Findings")
@pytest.mark.parametrize(("target", "name"), BUG_INPUTS)
def test_each_regression_input_finds_its_bug(target: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_harness, "SKIP_KNOWN", False)
    _check(target)((CORPUS / target / name).read_bytes())


@pytest.mark.xfail(
    strict=True,
    reason="an empty stored zip member is never fetched (a read of 0 bytes only asks the archive's "
    "size), so the CRC-32 its directory entry gives is never checked: it reads as b'' where a "
    "deflated one, and zipfile, report the damage (spec 11.7: a member read whole has its CRC checked)",
)
def test_an_empty_stored_member_with_a_bad_crc_is_damage() -> None:
    data = (CORPUS / "zip" / "regress-empty-stored-member-bad-crc.zip").read_bytes()  # CRC 12345678, no bytes
    obstore.put(kvmap.memory_store("kvmap-regress-crc"), "a.zip", data)
    manifest = kvmap.Manifest.from_json([{"prefix": "", "path": "a.zip|zip:"}], url="memory://kvmap-regress-crc/m.json")
    with pytest.raises(kvmap.KvmapError, match="CRC"):
        kvmap.Reader(manifest).get_sync("e")


def _memory_store_over(name: str) -> kvmap.KVMapStore:
    for meta in list(obstore.list(kvmap.memory_store(name)).collect()):
        obstore.delete(kvmap.memory_store(name), meta["path"])
    manifest = kvmap.Manifest.from_json([{"prefix": "", "path": f"memory://{name}/t/"}], url=f"memory://{name}/m.json")
    return kvmap.KVMapStore(manifest)


@pytest.mark.xfail(
    strict=True,
    reason="memory:// (obstore) object paths drop a trailing '/': keys 'a' and 'a/' are one object, "
    "and the key '' of a prefix redirect onto t/ is the object 't' itself, outside t/",
)
def test_a_key_ending_in_a_slash_is_its_own_object() -> None:
    store = _memory_store_over("kvmap-regress-slash")
    store.set_sync("a", cpu.Buffer.from_bytes(b"A"))
    with contextlib.suppress(kvmap.KvmapError):  # refusing the key would do too
        store.set_sync("a/", cpu.Buffer.from_bytes(b"A/"))
    got = store.get_sync("a")
    assert got is not None
    assert got.to_bytes() == b"A"


@pytest.mark.xfail(strict=True, reason="as above: the empty remainder writes the redirect's directory object")
def test_the_empty_key_writes_nothing_outside_the_redirect() -> None:
    store = _memory_store_over("kvmap-regress-empty")
    with contextlib.suppress(kvmap.KvmapError):
        store.set_sync("", cpu.Buffer.from_bytes(b"x"))
    paths = [meta["path"] for meta in obstore.list(kvmap.memory_store("kvmap-regress-empty")).collect()]
    assert all(p.startswith("t/") for p in paths), paths


@pytest.mark.xfail(
    strict=True,
    raises=kvmap.TargetError,
    reason="a listing prefix that no object path can start with (a '.' or '..' segment, a control "
    "character) makes obstore refuse the listed path: TargetError instead of no keys (spec 12.1)",
)
@pytest.mark.parametrize("prefix", ["a/../", "../", "a/./b", "x\t/", "\x7f"])
def test_listing_a_prefix_no_object_can_have_lists_nothing(prefix: str) -> None:
    store = _memory_store_over("kvmap-regress-list")

    async def children() -> list[str]:
        return [k async for k in store.list_dir(prefix)]

    assert asyncio.run(children()) == []
