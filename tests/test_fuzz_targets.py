"""The fuzz targets run on their seed corpora (so they never rot), and the kvmap bugs the fuzzers
found are pinned by regression tests (see fuzz/README.md, Findings).

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
    """The corpus tests are about the targets: they tolerate the open kvmap bugs, as fuzz/run.py's
    runs do. Each open bug has an xfail test below, and its regress-* input is in BUG_INPUTS."""
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


# -- regressions: the kvmap bugs the fuzzers found (fixed in 839f16a; inputs: corpus regress-*) --


@pytest.mark.parametrize("depth", [249, 250, 251, 254, 255])
def test_a_manifest_that_loads_saves_deep_json(depth: int) -> None:
    """Was: a json value nested 254 deep validated, but dumps() nests it two levels deeper, past
    orjson's 255 levels ("Recursion limit reached"): a manifest that loaded could not be saved."""
    text = '[{"key": "a", "json": ' + "[" * depth + "]" * depth + "}]"
    try:
        manifest = kvmap.Manifest.loads(text, url="s3://b/m.json")
    except kvmap.ManifestError:
        assert depth > 250  # kvmap keeps json values of at most 250 levels
        return
    assert kvmap.Manifest.loads(manifest.dumps(), url="s3://b/m.json") == manifest


def test_from_json_is_not_changed_by_the_callers_later_changes() -> None:
    """Was: from_json copied the entry objects but not the json values in them, so the caller's
    later changes reached the manifest (dumps raised TypeError, entries raised ManifestError)."""
    document = [{"key": "a", "json": [1, {"b": 2}]}]
    manifest = kvmap.Manifest.from_json(document, url="s3://b/m.json")
    before = manifest.dumps()
    document[0]["json"].append(2**70)  # type: ignore[attr-defined]
    document[0]["json"][1]["c"] = float("nan")  # type: ignore[index]
    assert manifest.dumps() == before
    assert [e.to_json() for e in manifest.entries] == [{"key": "a", "json": [1, {"b": 2}]}]


HUGE = 10**5000  # more digits than Python writes out (sys.get_int_max_str_digits(): 4,300)


@pytest.mark.parametrize(
    "document",
    [
        {"kvmap": HUGE, "entries": []},
        [{"key": "a", "path": "s3://b/x", "offset": HUGE}],
        [{"key": "a", "path": "s3://b/x", "length": -HUGE}],
        [{"prefix": "ab", "path": "s3://b/", "strip_prefix": HUGE}],
    ],
    ids=["kvmap", "offset", "length", "strip_prefix"],
)
def test_a_huge_integer_is_a_manifest_error(document: Any) -> None:
    """Was: the error message wrote the integer out (f"... not {value}", repr(version)), which
    Python refuses past 4,300 digits: a plain ValueError escaped instead of ManifestError."""
    with pytest.raises(kvmap.ManifestError):
        kvmap.Manifest.from_json(document)


@pytest.mark.parametrize("value", [{HUGE: 1}, [{"a": {-HUGE: float("nan")}}]], ids=["name", "nested-name"])
def test_a_huge_integer_member_name_in_json_is_a_manifest_error(value: Any) -> None:
    """Was (found by the runs after the fixes above, fixed in a93c351): the JSON Pointer of the
    error wrote each member name out, and str() of a 5,000-digit integer name raised ValueError."""
    with pytest.raises(kvmap.ManifestError, match="field 'json'"):
        kvmap.Manifest.from_json([{"key": "a", "json": value}])


# The regress-* inputs of open kvmap bugs (none now): each fails its target's strict check until fixed.
BUG_INPUTS: list[tuple[str, str]] = []


def test_every_other_input_passes_the_strict_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The regress-* inputs of fixed bugs (and every seed) pass without any tolerance."""
    monkeypatch.setattr(_harness, "SKIP_KNOWN", False)
    open_bugs = {CORPUS / t / n for t, n in BUG_INPUTS}
    for target in TARGETS:
        check = _check(target)
        for seed in _seeds(target):
            if seed not in open_bugs:
                check(seed.read_bytes())


def _nested_tuple(levels: int) -> tuple[Any, ...]:
    out: tuple[Any, ...] = ()
    for _ in range(levels):
        out = (out,)
    return out


# Was: ManifestError rendered its field with repr(): an unknown member whose name is an integer of
# more than 4,300 digits (ValueError) or a tuple nested 2,000 deep (RecursionError) made building
# the error raise instead.
@pytest.mark.parametrize(
    "document",
    [
        [{HUGE: 1, "key": "a", "path": None}],
        {"kvmap": 1, "entries": [], HUGE: 0},
        [{"key": "a", "path": None, _nested_tuple(2000): 1}],
    ],
    ids=["entry-member", "document-member", "nested-tuple"],
)
def test_an_unknown_member_of_any_name_is_a_manifest_error(document: Any) -> None:
    with pytest.raises(kvmap.ManifestError, match="unknown"):
        kvmap.Manifest.from_json(document)


@pytest.mark.parametrize("source", ["text", "objects"])
def test_a_deeply_nested_version_is_a_manifest_error(source: str) -> None:
    """Was: the error for a "kvmap" member that is not 1 held repr() of it, and for a value nested
    1,000 deep (which msgspec parses from text) repr raised RecursionError."""
    nested: Any = []
    for _ in range(1000):
        nested = [nested]
    text = '{"kvmap": ' + "[" * 1000 + "]" * 1000 + ', "entries": []}'
    with pytest.raises(kvmap.ManifestError):
        kvmap.Manifest.loads(text) if source == "text" else kvmap.Manifest.from_json({"kvmap": nested, "entries": []})


def test_an_empty_stored_member_with_a_bad_crc_is_damage() -> None:
    """Was: an empty stored zip member was never fetched (a read of 0 bytes only asks the archive's
    size), so its directory CRC-32 was never checked: it read as b"" (spec 11.7)."""
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


def test_a_key_ending_in_a_slash_is_not_another_keys_object() -> None:
    """Was: obstore drops a trailing '/' from an object path, so the keys 'a' and 'a/' were one
    object: writing 'a/' overwrote 'a'."""
    store = _memory_store_over("kvmap-regress-slash")
    store.set_sync("a", cpu.Buffer.from_bytes(b"A"))
    with contextlib.suppress(kvmap.KvmapError):  # refusing the key is what kvmap does now
        store.set_sync("a/", cpu.Buffer.from_bytes(b"A/"))
    got = store.get_sync("a")
    assert got is not None
    assert got.to_bytes() == b"A"
    assert store.get_sync("a/") is None


def test_the_empty_key_writes_nothing_outside_the_redirect() -> None:
    """Was: the key '' of a prefix redirect onto t/ wrote the object 't' itself, outside t/."""
    store = _memory_store_over("kvmap-regress-empty")
    with contextlib.suppress(kvmap.KvmapError):
        store.set_sync("", cpu.Buffer.from_bytes(b"x"))
    paths = [meta["path"] for meta in obstore.list(kvmap.memory_store("kvmap-regress-empty")).collect()]
    assert all(p.startswith("t/") for p in paths), paths


@pytest.mark.parametrize("prefix", ["a/../", "../", "a/./b", "x\t/", "\x7f"])
def test_listing_a_prefix_no_object_can_have_lists_nothing(prefix: str) -> None:
    """Was: a prefix that no object path can start with ('.' or '..' segment, a control character)
    made obstore refuse the listed path: TargetError instead of no keys (spec 12.1)."""
    store = _memory_store_over("kvmap-regress-list")

    async def children() -> list[str]:
        return [k async for k in store.list_dir(prefix)]

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    assert asyncio.run(children()) == []
    assert asyncio.run(keys()) == []
