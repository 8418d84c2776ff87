"""The columnar manifest (kvmap.formats.kvmap_parquet): every answer is CompiledMap's, the manifest
read back is the one written, and a lookup reads what the module says (the footer to open, one block
per lookup, nothing when cached)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import weakref
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.entries import Pins
from kvmap.errors import InvalidKeyError, ManifestError, MissingDependencyError
from kvmap.fetch import Fetch, drive
from kvmap.formats import kvmap_parquet
from kvmap.formats.kvmap_parquet import (
    DEFAULT_BLOCK_ROWS,
    ColumnarMap,
    load_kvmap_parquet,
    open_kvmap_parquet,
    to_kvmap_parquet,
)
from kvmap.keymap import KeyMap
from kvmap.keyrange import KeyRange, prefix_range
from kvmap.policy import allow_prefixes
from tests.strategies import manifest_and_keys, pinned_manifest_and_keys
from tests.vectors import resolution_cases

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

T = TypeVar("T")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- helpers --------------------------------------------------------------------------------------


def _answer(data: bytes) -> Callable[[str], bytes]:
    return lambda _name: data


def _opened(manifest: kvmap.Manifest, block_rows: int, **kwargs: Any) -> tuple[ColumnarMap, bytes]:
    data = to_kvmap_parquet(manifest, block_rows=block_rows)
    cm = drive(open_kvmap_parquet(manifest.url, **kwargs), _answer(data))
    assert cm is not None
    return cm, data


def _recorded(loading: Generator[Fetch, bytes | None, T], log: list[Fetch]) -> Generator[Fetch, bytes | None, T]:
    """``loading``, with every fetch it makes appended to ``log``."""
    try:
        request = next(loading)
        while True:
            log.append(request)
            request = loading.send((yield request))
    except StopIteration as stop:
        result: T = stop.value
        return result


def _served(loading: Generator[Fetch, bytes | None, T], data: bytes) -> tuple[T, list[Fetch], int]:
    """Drive ``loading`` against ``data`` with a counting answer: its result, its fetches, the bytes."""
    log: list[Fetch] = []
    calls: list[str] = []

    def answer(name: str) -> bytes:
        calls.append(name)
        return data

    result = drive(_recorded(loading, log), answer)
    assert len(calls) == len(log)
    size = 0
    for fetch in log:
        assert fetch.name == ""
        assert fetch.byte_range is not None
        start, end = fetch.byte_range
        size += min(end, len(data)) if start is None else end - start  # type: ignore[operator]
    return result, log, size


def _outcome(call: Callable[[], T]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except InvalidKeyError:
        return "invalid", None


def _is_valid(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ranges(keys: list[str]) -> list[KeyRange]:
    """Ranges around the keys: each one's prefix range, half-open ones, and between neighbours."""
    ordered = sorted(set(keys))
    out = [KeyRange("", None)]
    for i, key in enumerate(ordered):
        out += [prefix_range(key), KeyRange(key, None), KeyRange("", key)]
        if i + 2 < len(ordered):
            out.append(KeyRange(key, ordered[i + 2]))
    return [r for r in out if not r.is_empty()]


def _assert_same(manifest: kvmap.Manifest, keys: list[str], block_rows: int) -> ColumnarMap:
    """Every KeyMap method of the columnar form of ``manifest`` answers as CompiledMap does; the
    manifest read back is ``manifest``."""
    cm = kvmap.compile(manifest)
    col, data = _opened(manifest, block_rows)
    answer = _answer(data)
    assert col.n_entries == len(manifest)
    for key in keys:
        got = _outcome(lambda key=key: drive(col.resolve_io(key), answer))
        assert got == _outcome(lambda key=key: cm.resolve(key)), key
        if not _is_valid(key):
            assert got[0] == "invalid"
            for lookup in (col.is_exact_io, col.explain_io, col.pins_io):
                with pytest.raises(InvalidKeyError):
                    drive(lookup(key), answer)
            with pytest.raises(InvalidKeyError):
                drive(col.resolve_many_io(["a", key]), answer)
            continue
        assert drive(col.is_exact_io(key), answer) == cm.is_exact(key), key
        assert drive(col.explain_io(key), answer) == cm.explain(key), key
        for whiteouts in (False, True):
            assert drive(col.exact_keys_io(key, whiteouts=whiteouts), answer) == cm.exact_keys(key, whiteouts=whiteouts)
    valid = [k for k in keys if _is_valid(k)]
    assert drive(col.resolve_many_io(valid), answer) == cm.resolve_many(valid)
    assert col.pinned == (cm.pins is not None)
    for key in valid:
        assert drive(col.pins_io(key), answer) == _deciding_pins(cm, key), key
    assert drive(col.exact_keys_io(), answer) == cm.exact_keys()
    for within in _ranges(keys):
        assert drive(col.range_targets_io(within), answer) == list(cm.range_targets(within)), within
    assert allow_prefixes(col.target_roots(), manifest.url) == allow_prefixes(cm.target_roots(), manifest.url)
    assert col.pipeline_roots() == cm.pipeline_roots()
    back = drive(load_kvmap_parquet(manifest.url), answer)
    assert back == manifest
    assert list(back.entries) == list(manifest.entries)
    assert [e.pins for e in back.entries] == [e.pins for e in manifest.entries]
    return col


def _deciding_pins(cm: kvmap.CompiledMap, key: str) -> Pins | None:
    """What the exact entry that decides ``key`` in ``cm`` pins (``None``: no exact entry with a
    value decides it, or it pins nothing)."""
    found = cm.resolve(key)
    if found is None or cm.pins is None or not cm.is_exact(key):
        return None
    return cm.pins.get(found.entry)


# -- the module ------------------------------------------------------------------------------------


def test_importing_the_module_does_not_import_pyarrow() -> None:
    code = "import sys, kvmap.formats.kvmap_parquet; assert 'pyarrow' not in sys.modules, sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_pyarrow_every_entry_point_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    data = to_kvmap_parquet(kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}], url=None))
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)
    calls = [
        lambda: to_kvmap_parquet(kvmap.Manifest.from_json([], url=None)),
        lambda: drive(open_kvmap_parquet("s3://b/m.parquet"), _answer(data)),
        lambda: drive(load_kvmap_parquet("s3://b/m.parquet"), _answer(data)),
    ]
    for call in calls:
        with pytest.raises(MissingDependencyError, match=r"pip install 'kvmap\[parquet\]'"):
            call()


def test_the_map_is_a_keymap_weakrefable_and_says_what_it_is() -> None:
    m = kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}, {"prefix": "p/", "path": "s3://b/p/"}], url=None)
    col, _data = _opened(m, 4)
    assert isinstance(col, KeyMap)
    ref = weakref.ref(col)
    assert ref() is col
    assert col.n_entries == 2
    assert col.url is None
    assert "2 entries" in repr(col)
    with pytest.raises(TypeError):
        ColumnarMap()


# -- the same answers ------------------------------------------------------------------------------


VECTOR_CASES = resolution_cases()


def test_there_are_vectors() -> None:
    assert len(VECTOR_CASES) >= 80


@pytest.mark.parametrize("case", VECTOR_CASES)
def test_conformance_vector(case: dict[str, Any]) -> None:
    text = json.dumps(case["manifest"])
    if "error" in case:
        # Refused before anything is written: the manifest itself refuses the document.
        with pytest.raises(ManifestError) as info:
            to_kvmap_parquet(kvmap.Manifest.loads(text, url=case["url"]), block_rows=2)
        assert (info.value.entry, info.value.field) == (case["error"]["entry"], case["error"]["field"])
        return
    manifest = kvmap.Manifest.loads(text, url=case["url"])
    keys = [probe["key"] for probe in case["resolve"]]
    for block_rows in (1, 2, 3):  # pieces cross blocks
        _assert_same(manifest, keys, block_rows)


@SETTINGS
@given(manifest_and_keys(), st.integers(1, 5), st.sampled_from([None, "s3://bucket/views/m.json", "file:///d/m.json"]))
def test_every_answer_is_compiled_maps(
    case: tuple[list[dict[str, Any]], list[str]], block_rows: int, url: str | None
) -> None:
    entries, keys = case
    _assert_same(kvmap.Manifest.from_json(entries, url=url), keys, block_rows)


RELATIVE = st.sampled_from(
    ["rel/k", "../up/", "/abs/x", "k.bin", "a.zip|zip:m", "//host/p/", "sub/m.json|kvmap:", "C:/d/x", "", "?q"]
)
BASES = st.sampled_from(
    ["s3://bucket/views/m.json", "file:///d/m.json", "file:///a.zip|zip:d/m.json", "memory://m/x/", "https://h/a/b"]
)


@SETTINGS
@given(manifest_and_keys(), st.data(), BASES, st.integers(1, 4))
def test_relative_paths_resolve_against_the_url_opened(
    case: tuple[list[dict[str, Any]], list[str]], data: st.DataObject, url: str, block_rows: int
) -> None:
    entries, keys = case
    for e in entries:
        if e.get("path") is not None and data.draw(st.booleans()):
            e["path"] = data.draw(RELATIVE)
    col = _assert_same(kvmap.Manifest.from_json(entries, url=url), keys, block_rows)
    assert col.target_roots() == kvmap.compile(kvmap.Manifest.from_json(entries, url=url)).target_roots()


@pytest.mark.parametrize("seed", range(6))
def test_blocks_of_many_rows(seed: int) -> None:
    # Blocks longer than the sample step of the in-block search, exact keys inside ranges.
    rng = random.Random(seed)
    alphabet = "ab/0é\x00\U0010ffff"

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    entries: list[dict[str, Any]] = []
    for i in range(500):
        r = rng.random()
        if r < 0.8:
            entry: dict[str, Any] = {"key": text(), "path": rng.choice(["s3://b/x", None, "s3://b/y/z"])}
            if entry["path"] is not None and rng.random() < 0.5:
                entry["offset"] = i
            entries.append(entry)
        elif r < 0.9:
            entries.append({"prefix": text(), "path": rng.choice(["s3://b/p/", None])})
        else:
            lo, hi = sorted([text(), text()])
            if lo < hi:
                entries.append({"min": lo, "max": hi, "path": "s3://b/r/"})
    keys = sorted({text() for _ in range(200)} | {e.get("key", e.get("prefix", e.get("min", ""))) for e in entries})
    keys += [k + "\x00" for k in keys[:50]]
    manifest = kvmap.Manifest.from_json(entries, url=None)
    for block_rows in (7, 64, 1000):
        _assert_same(manifest, keys, block_rows)


def test_the_manifest_read_back_keeps_every_member_as_written() -> None:
    entries = [
        {"key": "d", "data": "QR=="},  # valid base64 that is not the canonical text of its bytes
        {"key": "e", "data": "QQ=="},
        {"key": "j", "json": {"a": [1, 2.5, None, True], "b": 2**64 - 1}},
        {"min": "", "max": "b", "path": "s3://b/r/"},
        {"max": "b", "path": "s3://b/r/"},
        {"min": "c/0", "max": "c/10", "strip_prefix": 2, "path": "s3://b/c/"},  # the default, given
        {"prefix": "p/", "strip_prefix": 2, "path": None},
        {"key": "k", "path": "x.bin", "offset": 0},
        {"key": "k", "path": None},
    ]
    m = kvmap.Manifest.from_json(entries, url="s3://b/m.json")
    data = to_kvmap_parquet(m, block_rows=2)
    back = drive(load_kvmap_parquet("s3://b/m.json"), _answer(data))
    assert back == m
    assert back.to_json() == m.to_json()
    assert back.url == "s3://b/m.json"
    assert back.entries[7].path == "x.bin"  # relative paths stay relative
    col = drive(open_kvmap_parquet("s3://b/m.json"), _answer(data))
    assert col is not None
    assert drive(col.resolve_io("d"), _answer(data)) == kvmap.compile(m).resolve("d")


def test_a_large_manifest_reads_back_through_its_columns() -> None:
    n = 5_000
    m = kvmap.Manifest.from_references(
        [f"c/{i}" for i in range(n)],
        [f"s3://b/f{i % 7}.nc" if i % 11 else None for i in range(n)],
        [i * 10 if i % 11 else None for i in range(n)],
        [10 if i % 3 and i % 11 else None for i in range(n)],
        before=[{"key": ".zgroup", "json": {"zarr_format": 2}}],
        after=[{"prefix": "c/9", "path": "s3://b/nine/"}, {"key": "c/1", "path": "s3://b/one"}],
        url="s3://b/m.json",
    )
    data = to_kvmap_parquet(m, block_rows=1000)
    back = drive(load_kvmap_parquet("s3://b/m.json"), _answer(data))
    assert back == m
    cols, others = back.split()
    assert len(cols.key) == n  # the bulk came back as columns, not as an object per entry
    assert len(others) == 3


def test_long_keys_need_no_parquet_statistics() -> None:
    # pyarrow drops statistics of values over 4,096 bytes: the index is the footer's own.
    keys = [c * 5000 + str(i) for c in "abc" for i in range(3)]
    m = kvmap.Manifest.from_json([{"key": k, "path": f"s3://b/{i}"} for i, k in enumerate(keys)], url=None)
    _assert_same(m, [*keys, "a", "b" * 5001, "d"], 2)


def test_an_empty_manifest_reads_nothing_for_a_lookup() -> None:
    m = kvmap.Manifest.from_json([], url=None)
    col, data = _opened(m, DEFAULT_BLOCK_ROWS)
    for lookup in (col.resolve_io("a"), col.exact_keys_io(""), col.range_targets_io(KeyRange("", None))):
        _result, log, _size = _served(lookup, data)
        assert log == []
    assert drive(load_kvmap_parquet(None), _answer(data)) == m


# -- target roots -----------------------------------------------------------------------------------

SEGMENTS = st.sampled_from(["a", "b", "c", "é", ".", "..", "", "%41", "%2F", "%FF", "x?y", "f#g", "d.nc", "k"])
ROOTS = st.sampled_from(
    [
        "s3://bucket/",
        "s3://other/",
        "file:///d/",
        "file:///data/x/",
        "file://localhost/d/",
        "/abs/",
        "",
        "../",
        "//host/",
        "s3+http://h:9/",
        "s3+http://h:9/bk/",
        "HTTPS://H/P/",
        "memory://m/",
        "C:/dir/",
        "gs://b",
        "file:/opaque/",
    ]
)


@st.composite
def many_paths(draw: st.DrawFn) -> list[str]:
    """More distinct paths than the footer lists one by one: files numbered and oddly named in a few
    directories (some of them pipelines)."""
    directories = draw(st.lists(st.tuples(ROOTS, st.lists(SEGMENTS, max_size=3)), min_size=1, max_size=6))
    names = draw(st.lists(SEGMENTS, min_size=1, max_size=4))
    paths = set()
    for root, segments in directories:
        directory = root + "".join(s + "/" for s in segments)
        paths.update(directory + name for name in names)
        paths.update(f"{directory}f{i}.nc" for i in range(70 // len(directories) + 1))
    pipelined = draw(st.sets(st.sampled_from(sorted(paths)), max_size=3))
    return sorted(paths - pipelined | {p + "|zip:m" for p in pipelined})


@settings(SETTINGS, max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
@given(
    many_paths(),
    st.sampled_from(
        [
            "file:///d/m.json",
            "file:///data/x/a/m.json",
            "s3://bucket/m.json",
            "s3+http://h:9/bk/m.json",
            "file:///a.zip|zip:d/m.json",
            "https://h/p/m.json",
            "memory://m/m.json",
            "file:///m.json",
        ]
    ),
)
def test_many_target_roots_stand_for_the_same_policy(paths: list[str], url: str) -> None:
    m = kvmap.Manifest.from_json([{"key": f"k{i}", "path": p} for i, p in enumerate(paths)], url=url)
    cm = kvmap.compile(m)
    col, _data = _opened(m, 16)
    for home in (url, "s3://elsewhere/m.json", "file:///elsewhere/m.json", "file:///d/x/m.json", None):
        assert allow_prefixes(col.target_roots(), home) == allow_prefixes(cm.target_roots(), home), home
    assert col.pipeline_roots() == cm.pipeline_roots()
    # Not asserted: fewer representatives than roots. With dot segments ("/a/a/../f0.nc") a
    # directory may be added while the roots it cannot stand for stay (hypothesis found 38 for
    # 37): a larger footer, never another policy answer. The compactness that matters is the
    # next test's.


def test_a_file_per_chunk_lists_its_directories_not_its_files() -> None:
    n = 2_000
    m = kvmap.Manifest.from_json(
        [{"key": f"c/{i}", "path": f"s3://bucket/arr/c/{i // 100}/{i}"} for i in range(n)]
        + [{"key": f"l/{i}", "path": f"file:///data/arr/{i // 500}/{i}.bin"} for i in range(n)],
        url="s3://bucket/m.json",
    )
    col, data = _opened(m, 256)
    assert len(col.target_roots()) < 10
    footer = pq.read_metadata(pa.BufferReader(data)).metadata[b"kvmap"]
    assert len(footer) < 4_000
    cm = kvmap.compile(m)
    for home in ("s3://bucket/m.json", "file:///data/m.json", "file:///data/arr/1/m.json", None):
        assert allow_prefixes(col.target_roots(), home) == allow_prefixes(cm.target_roots(), home)


# -- what it reads ---------------------------------------------------------------------------------


def _reference(manifest: kvmap.Manifest) -> kvmap.CompiledMap:
    """CompiledMap of ``manifest``'s entries, made from their JSON objects: ``kvmap.compile`` of a
    manifest whose exact columns start after other entries (``from_references(before=...)``)
    numbers them from 0 (``CompiledMap._build_table`` drops the range's start), so its entry
    indices, and precedence against the entries before, are off."""
    return kvmap.compile(kvmap.Manifest.from_json(manifest.to_json()["entries"], url=manifest.url))


def test_entries_after_others_keep_their_indices_and_precedence() -> None:
    m = kvmap.Manifest.from_references(
        ["k0", "k1"], ["s3://b/f", "s3://b/g"], before=[{"key": "z", "json": 1}, {"prefix": "", "path": "s3://b/x/"}]
    )
    col, data = _opened(m, 2)
    assert drive(col.resolve_io("k0"), _answer(data)) == kvmap.Resolution(2, "s3://b/f", None, None, None)
    assert drive(col.explain_io("k1"), _answer(data)).entries == (3, 1)
    assert drive(col.resolve_io("k0"), _answer(data)) == _reference(m).resolve("k0")


@pytest.fixture(scope="module")
def big() -> tuple[kvmap.Manifest, bytes]:
    """10**5 exact entries over 100 files with irregular windows, a prefix redirect under them, in
    blocks of 4,096 rows."""
    n = 100_000
    rng = random.Random(1)
    m = kvmap.Manifest.from_references(
        [f"var/c/{i // 1000}/{i % 1000}" for i in range(n)],
        [f"s3://bucket/data/file_{i % 100:03d}.nc" for i in range(n)],
        [rng.randrange(10**8) for _ in range(n)],
        [rng.randrange(1000, 100_000) for _ in range(n)],
        before=[{"prefix": "", "path": "s3://bucket/fallback/"}, {"key": "var/.zarray", "json": {"shape": [n]}}],
        url="s3://bucket/m.kvmap.parquet",
    )
    return m, to_kvmap_parquet(m, block_rows=4096)


def test_opening_reads_the_footer_only(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, data = big
    col, log, size = _served(open_kvmap_parquet(m.url), data)
    assert col is not None
    assert 1 <= len(log) <= 2
    assert all(f.byte_range is not None and f.byte_range[0] is None for f in log)  # suffix reads
    assert size <= kvmap_parquet._TAIL_BYTES  # one read of the last 64 KiB holds this footer
    assert size < len(data) / 8


def test_a_footer_longer_than_the_first_read_takes_a_second(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, _ = big
    data = to_kvmap_parquet(m, block_rows=64)
    col, log, _size = _served(open_kvmap_parquet(m.url), data)
    assert col is not None
    assert len(log) == 2
    key = "var/c/50/123"
    assert drive(col.resolve_io(key), _answer(data)) == _reference(m).resolve(key)


def test_a_cold_lookup_reads_one_block_and_a_warm_one_nothing(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, data = big
    cm = _reference(m)
    for key in ("var/c/50/123", "var/c/99/999", "var/.zarray", "zzz", "var/c/7/7x"):
        col = drive(open_kvmap_parquet(m.url), _answer(data))
        assert col is not None
        blocks = len(col._first)
        found, log, size = _served(col.resolve_io(key), data)
        assert found == cm.resolve(key)
        assert len(log) == 1
        assert size < 3 * len(data) / blocks  # about one block
        found, log, _size = _served(col.resolve_io(key), data)
        assert found == cm.resolve(key)
        assert log == []
    _found, log, _size = _served(col.resolve_io(""), data)  # before the first block's key: the prefix ""
    assert len(log) <= 1


def test_resolve_many_reads_each_block_it_needs_once(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, data = big
    cm = _reference(m)
    for cache_bytes in (kvmap_parquet.DEFAULT_CACHE_BYTES, 0):
        col = drive(open_kvmap_parquet(m.url, cache_bytes=cache_bytes), _answer(data))
        assert col is not None
        keys = [f"var/c/{i}/{j}" for i in (3, 40, 41, 97) for j in (1, 500, 999)] * 2 + ["nothing/here"]
        random.Random(0).shuffle(keys)
        blocks = {col._piece_block(k) for k in keys}
        found, log, _size = _served(col.resolve_many_io(keys), data)
        assert found == cm.resolve_many(keys)
        assert len(log) == len(blocks)
        assert len({f.byte_range for f in log}) == len(log)


def test_listings_read_the_blocks_they_list(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, data = big
    cm = _reference(m)
    col = drive(open_kvmap_parquet(m.url), _answer(data))
    assert col is not None
    found, log, _size = _served(col.exact_keys_io("var/c/42/"), data)
    assert found == cm.exact_keys("var/c/42/")
    assert 1 <= len(log) <= 2
    # The prefix "" redirect is one piece: listing its targets reads the first block only.
    within = prefix_range("var/c/5")
    targets, log, _size = _served(col.range_targets_io(within), data)
    assert targets == list(cm.range_targets(within))
    assert len(log) <= 1
    targets, log, _size = _served(col.range_targets_io(KeyRange("", None)), data)
    assert targets == list(cm.range_targets(KeyRange("", None)))
    assert len(log) <= 1


def test_the_cache_keeps_at_most_its_bytes(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, data = big
    col = drive(open_kvmap_parquet(m.url, cache_bytes=300_000), _answer(data))
    assert col is not None
    for i in range(0, 100, 3):
        drive(col.resolve_io(f"var/c/{i}/1"), _answer(data))
        assert col._cached_bytes <= 300_000
        assert col._cached_bytes == sum(b.nbytes for b in col._cache.values())
    uncached = drive(open_kvmap_parquet(m.url, cache_bytes=0), _answer(data))
    assert uncached is not None
    for key in ("var/c/1/1", "var/c/1/2"):  # neighbours: one block, read again for each key
        _found, log, _size = _served(uncached.resolve_io(key), data)
        assert len(log) == 1
    # A key looked up before is answered from the keys it knows, without its block.
    found, log, _size = _served(uncached.resolve_io("var/c/1/1"), data)
    assert log == []
    assert found == kvmap.compile(m).resolve("var/c/1/1")
    assert uncached.known("var/c/1/1") == (found, kvmap.compile(m).is_exact("var/c/1/1"))
    assert uncached.known("var/c/1/3") is None


def test_explain_reads_the_definitions_and_the_losers() -> None:
    entries: list[dict[str, Any]] = [{"key": f"k{i:03d}", "path": "s3://b/old"} for i in range(100)]
    entries += [{"prefix": "k05", "path": "s3://b/p/"}, {"min": "k02", "max": "k03", "path": None}]
    entries += [{"key": f"k{i:03d}", "path": "s3://b/new"} for i in range(0, 100, 7)]
    m = kvmap.Manifest.from_json(entries, url=None)
    cm = kvmap.compile(m)
    col, data = _opened(m, 8)
    for key in ("k000", "k021", "k050", "k056", "k099", "k02", "zz"):
        assert drive(col.explain_io(key), _answer(data)) == cm.explain(key)


# -- what it refuses -------------------------------------------------------------------------------


def test_a_missing_object_is_none() -> None:
    assert drive(open_kvmap_parquet("s3://b/none.kvmap.parquet"), {}.get) is None
    assert drive(load_kvmap_parquet("s3://b/none.kvmap.parquet"), {}.get) is None


def _plain_parquet(columns: dict[str, Any]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "it is empty"),
        (b'{"kvmap": 1, "entries": []}\n', "JSON text"),
        (bytes(range(256)) * 10, "parquet magic"),
        (b"PK\x03\x04" + bytes(40) + b"PK\x05\x06" + bytes(18), "zip archive"),
        (b"PAR1" + bytes(100) + b"PAR1", "not a readable parquet file"),
        (b"PAR1" + b"\xff\xff\xff\x7fPAR1", "footer is longer than the file"),
        (_plain_parquet({"a": [1, 2]}), "without kvmap's footer metadata"),
        (_plain_parquet({"path": ["x"], "offset": [0], "size": [1], "raw": [b""]}), "kerchunk parquet references"),
    ],
)
def test_what_is_not_a_columnar_manifest_is_refused_saying_what_it_is(data: bytes, says: str) -> None:
    for loading in (open_kvmap_parquet("s3://b/m.parquet"), load_kvmap_parquet("s3://b/m.parquet")):
        with pytest.raises(ManifestError, match=says) as info:
            drive(loading, _answer(data))
        assert info.value.manifest == "s3://b/m.parquet"


def test_a_damaged_footer_index_is_refused() -> None:
    data = to_kvmap_parquet(kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}], url=None))
    md = pq.read_metadata(pa.BufferReader(data))
    info = json.loads(md.metadata[b"kvmap"])
    for change in ({"version": 2}, {"pieces": {**info["pieces"], "first": []}}, {"format": "other"}):
        table = pq.ParquetFile(pa.BufferReader(data)).read()
        table = table.replace_schema_metadata({b"kvmap": json.dumps({**info, **change}).encode()})
        with pytest.raises(ManifestError, match="kvmap-parquet"):
            drive(open_kvmap_parquet("s3://b/m.parquet"), _answer(_plain_parquet_table(table)))


def _plain_parquet_table(table: Any) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def test_a_block_that_cannot_be_read_is_an_error_naming_the_manifest(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, data = big
    col = drive(open_kvmap_parquet(m.url, name="big.kvmap.parquet"), _answer(data))
    assert col is not None
    for answer in (lambda _name: None, lambda _name: data[: len(data) // 3], lambda _name: bytes(len(data))):
        with pytest.raises(ManifestError) as info:
            drive(col.resolve_io("var/c/70/1"), answer)
        assert info.value.manifest == "big.kvmap.parquet"


def test_relative_paths_without_a_url_are_refused_at_open() -> None:
    m = kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}, {"key": "b", "path": "rel/b"}], url="s3://b/m.json")
    data = to_kvmap_parquet(m)
    with pytest.raises(ManifestError) as info:
        drive(open_kvmap_parquet(None), _answer(data))
    assert (info.value.entry, info.value.field) == (1, "path")
    with pytest.raises(ManifestError) as info:
        drive(load_kvmap_parquet(None), _answer(data))
    assert (info.value.entry, info.value.field) == (1, "path")
    local = kvmap.Manifest.from_json([{"key": "a", "path": "/data/a.nc"}], url=None)
    _assert_same(local, ["a"], 1)


def test_block_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block_rows"):
        to_kvmap_parquet(kvmap.Manifest.from_json([], url=None), block_rows=0)


# -- the streaming build -----------------------------------------------------------------------------

from kvmap.formats.kerchunk import from_kerchunk  # noqa: E402
from kvmap.formats.kvmap_parquet import build_kvmap_parquet  # noqa: E402
from kvmap.manifest import parse_json  # noqa: E402
from kvmap.places import path_url  # noqa: E402
from tests.strategies import manifests  # noqa: E402


def _both(
    tmp: Path, text: bytes, *, source_format: str = "kvmap", memory_bytes: int = 1 << 16, block_rows: int = 3
) -> tuple[tuple[str, Any], tuple[str, Any]]:
    """What the build makes of the document ``text``, and what the in-memory path makes: the file's
    bytes, or the (entry, field) of the error."""
    src, out = tmp / "m.json", tmp / "out.kvmap.parquet"
    src.write_bytes(text)
    try:
        if source_format == "kvmap":
            manifest = kvmap.Manifest.load(src)
        else:
            manifest = from_kerchunk(parse_json(text, str(src)), path_url(str(src)), name=str(src))
        want: tuple[str, Any] = ("file", to_kvmap_parquet(manifest, block_rows=block_rows))
    except ManifestError as exc:
        want = ("error", (exc.entry, exc.field))
    try:
        build_kvmap_parquet(src, out, source_format=source_format, memory_bytes=memory_bytes, block_rows=block_rows)
        got: tuple[str, Any] = ("file", out.read_bytes())
    except ManifestError as exc:
        got = ("error", (exc.entry, exc.field))
    return want, got


@SETTINGS
@given(manifests, st.booleans(), st.integers(1, 4))
def test_the_build_writes_the_file_the_manifest_would(
    entries: list[dict[str, Any]], bare: bool, block_rows: int
) -> None:
    import tempfile

    text = json.dumps(entries if bare else {"kvmap": 1, "entries": entries}).encode()
    with tempfile.TemporaryDirectory() as d:
        want, got = _both(Path(d), text, block_rows=block_rows)
    assert got == want


def test_the_build_sorts_in_runs_and_merges_them_in_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    entries: list[dict[str, Any]] = []
    for i in range(9_000):
        r, key = rng.random(), f"k/{rng.randrange(5_000)}"  # many keys twice: losers
        if r < 0.9:
            path = rng.choice(["s3://b/a", "rel/x", None, f"s3://b/f{rng.randrange(3_000)}"])
            entries.append({"key": key, "path": path, **({"offset": i} if r < 0.3 and path else {})})
        elif r < 0.95:
            entries.append({"key": key, "data": "aGk="})
        else:
            entries.append({"prefix": f"k/{rng.randrange(50)}", "path": "s3://b/p/"})
    runs: list[int] = []
    spill = kvmap_parquet._Intake._spill

    def counted(self: Any) -> None:
        runs.append(1)
        spill(self)

    monkeypatch.setattr(kvmap_parquet._Intake, "_spill", counted)
    want, got = _both(tmp_path, json.dumps({"kvmap": 1, "entries": entries}).encode(), block_rows=100)
    assert want[0] == "file"
    assert got == want
    assert len(runs) > kvmap_parquet._FAN_IN  # more runs than one merge takes: merged in rounds


KERCHUNK_VALUES = st.one_of(
    st.tuples(st.sampled_from(["s3://b/f.nc", "f.nc", "/abs/x", "s3a://b/k", "{{u}}/x", "memory://x", None])).map(list),
    st.tuples(
        st.sampled_from(["s3://b/f.nc", "f.nc", "gs://b/z", "{{u}}/y"]), st.integers(-1, 100), st.integers(0, 50)
    ).map(list),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(),
    st.none(),
    st.just("base64:aGk="),
    st.lists(st.integers(), max_size=2),
)


@SETTINGS
@given(
    st.dictionaries(st.text(alphabet="ab/.0z", min_size=1, max_size=5), KERCHUNK_VALUES, max_size=12),
    st.sampled_from(["v0", "v1", "templates", "gen", "refs first"]),
    st.integers(1, 4),
)
def test_the_build_reads_kerchunk_as_the_importer_does(refs: dict[str, Any], form: str, block_rows: int) -> None:
    import tempfile

    templates = {"u": "s3://b/t"}
    gen = [{"key": "g/{{i}}", "url": "s3://b/g{{i}}", "dimensions": {"i": {"stop": 5}}}]
    document: Any = {
        "v0": refs,
        "v1": {"version": 1, "refs": refs},
        "templates": {"version": 1, "templates": templates, "refs": refs},
        "gen": {"version": 1, "refs": refs, "gen": gen},
        "refs first": {"refs": refs, "templates": templates, "version": 1, "other": [1, {"x": 2}]},
    }[form]
    with tempfile.TemporaryDirectory() as d:
        want, got = _both(Path(d), json.dumps(document).encode(), source_format="kerchunk", block_rows=block_rows)
    assert got == want


@pytest.mark.parametrize(
    "document",
    [
        {"entries": [], "kvmap": 2},
        {"entries": [{"key": 1}], "kvmap": 1, "x": 1},  # the document's error comes first
        {"entries": [{"key": 1}], "kvmap": 1},
        {"kvmap": 1},
        {"kvmap": 1, "entries": {}},
        {"kvmap": True, "entries": []},
        {"kvmap": 1.0, "entries": []},
        {"kvmap": [1], "entries": []},
        {"version": 1, "refs": {}},
        [{"key": "a"}],
        [{"key": "a", "path": "x", "offset": 1.0}],
        [{"key": "a", "path": None, "length": 3}],
        [{"key": "a", "json": 2**64}],
        5,
    ],
)
def test_the_build_refuses_what_the_manifest_refuses(tmp_path: Path, document: Any) -> None:
    want, got = _both(tmp_path, json.dumps(document).encode())
    assert want[0] == "error"
    assert got == want


@pytest.mark.parametrize(
    "text",
    [
        b'{"kvmap": 1, "entries": [{"key": "a", "json": 18446744073709551615}]}',  # beyond int64: Python parser
        b'[{"key": "\\ud83d\\ude00", "path": null}]',  # an escaped pair: Python parser
        b"   \n" * 30_000 + b'[{"key": "a", "path": "x"}]',
        b'[{"key": "a", "path": null}] x',
        b"",
        b'{"kvmap": 1, "entries": [], "entries": []}',
    ],
)
def test_the_build_reads_json_as_the_manifest_does(tmp_path: Path, text: bytes) -> None:
    want, got = _both(tmp_path, text)
    if text.endswith(b'"entries": []}'):
        assert got == ("error", (None, "entries"))  # a stream cannot keep only the last
        return
    assert got == want


def test_an_escaped_lone_surrogate_is_refused(tmp_path: Path) -> None:
    # yajl reads it as "?": the build reads such a document with ijson's Python parser.
    src = tmp_path / "m.json"
    src.write_bytes(b'{"kvmap": 1, "entries": [{"key": "\\ud800", "path": null}]}')
    with pytest.raises(ManifestError):
        kvmap.Manifest.load(src)
    with pytest.raises(ManifestError, match="surrogate"):
        build_kvmap_parquet(src, tmp_path / "out.kvmap.parquet")


def test_a_failed_build_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    src, out = tmp_path / "m.json", tmp_path / "out.kvmap.parquet"
    out.write_bytes(b"old")
    src.write_text(json.dumps({"kvmap": 1, "entries": [{"key": "a", "path": "x"}, {"key": 2, "path": "y"}]}))
    with pytest.raises(ManifestError) as info:
        build_kvmap_parquet(src, out)
    assert (info.value.entry, info.value.field, info.value.manifest) == (1, "key", str(src))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "out.kvmap.parquet"]
    with pytest.raises(FileNotFoundError):
        build_kvmap_parquet(tmp_path / "missing.json", out)
    src.write_text(json.dumps({"kvmap": 1, "entries": []}))
    with pytest.raises(kvmap.SaveError):
        build_kvmap_parquet(src, tmp_path / "no" / "such" / "dir.kvmap.parquet")
    with pytest.raises(ValueError, match="source_format"):
        build_kvmap_parquet(src, out, source_format="json")


def test_the_build_needs_ijson(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "m.json"
    src.write_text('{"kvmap": 1, "entries": []}')
    monkeypatch.setitem(sys.modules, "ijson", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'kvmap\[parquet\]'"):
        build_kvmap_parquet(src, tmp_path / "out.kvmap.parquet")


_GENERATE = """
import sys
n = int(sys.argv[2])
with open(sys.argv[1], "w") as f:
    f.write('{"kvmap": 1, "entries": [\\n{"prefix": "", "path": "s3://bucket/fallback/"}')
    for i in range(n):
        f.write(f',\\n{{"key": "t/c/{i // 10000}/{i % 10000}", "path": "s3://bucket/f{i % 1000:03d}.nc", '
                f'"offset": {i * 7919 % 10**8}, "length": {1000 + i % 977}}}')
    f.write("\\n]}\\n")
"""
# VmHWM, not ru_maxrss: Linux carries a parent's peak into a child's ru_maxrss across fork and
# exec, so a child would report pytest's own peak.
_PEAK = """
import sys
from kvmap.formats.kvmap_parquet import build_kvmap_parquet
build_kvmap_parquet(sys.argv[1], sys.argv[2], memory_bytes=int(sys.argv[3]))
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_the_build_holds_a_bounded_amount_of_memory(tmp_path: Path) -> None:
    """Peak memory of a build of 3 * 10**5 entries (a 30 MB document, 200 MB as a Manifest) is
    about that of one of 5 * 10**4: the runs are bounded by memory_bytes, the rest does not grow."""
    peaks = {}
    for n in (50_000, 300_000):
        src, out = tmp_path / f"m{n}.json", tmp_path / f"m{n}.kvmap.parquet"
        subprocess.run([sys.executable, "-c", _GENERATE, str(src), str(n)], check=True)
        run = subprocess.run(
            [sys.executable, "-c", _PEAK, str(src), str(out), str(8 << 20)], check=True, capture_output=True, text=True
        )
        peaks[n] = int(run.stdout) * 1024  # VmHWM is in kB
    assert peaks[300_000] - peaks[50_000] < 30 << 20, peaks
    data = out.read_bytes()
    col = drive(open_kvmap_parquet(path_url(str(out))), _answer(data))
    assert col is not None
    assert col.n_entries == 300_001
    for i in random.Random(4).sample(range(300_000), 20):
        found = drive(col.resolve_io(f"t/c/{i // 10000}/{i % 10000}"), _answer(data))
        assert found == kvmap.Resolution(
            i + 1, f"s3://bucket/f{i % 1000:03d}.nc", i * 7919 % 10**8, 1000 + i % 977, None
        )
    assert drive(col.resolve_io("t/c/x"), _answer(data)) == kvmap.Resolution(
        0, "s3://bucket/fallback/t/c/x", None, None, None
    )


# -- pins (spec 3.4) ----------------------------------------------------------------------------------

SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _footer_info(data: bytes) -> tuple[list[str], dict[str, Any]]:
    md = pq.read_metadata(pa.BufferReader(data))
    return list(md.schema.names), json.loads(md.metadata[b"kvmap"])


@SETTINGS
@given(pinned_manifest_and_keys(), st.integers(1, 5), st.sampled_from([None, "s3://bucket/views/m.json"]))
def test_pins_read_back_and_pins_io_gives_the_deciding_entrys(
    case: tuple[list[dict[str, Any]], list[str]], block_rows: int, url: str | None
) -> None:
    entries, keys = case
    m = kvmap.Manifest.from_json(entries, url=url)
    data = to_kvmap_parquet(m, block_rows=block_rows)
    back = drive(load_kvmap_parquet(url), _answer(data))
    assert [e.pins for e in back.entries] == [e.pins for e in m.entries]
    assert back == m
    cm = kvmap.compile(m)
    col = drive(open_kvmap_parquet(url), _answer(data))
    assert col is not None
    assert col.pinned == any(e.pins is not None for e in m.entries)
    for key in [k for k in keys if _is_valid(k)] + [e["key"] for e in entries if "key" in e]:
        assert drive(col.pins_io(key), _answer(data)) == _deciding_pins(cm, key), key


@SETTINGS
@given(pinned_manifest_and_keys(), st.booleans(), st.integers(1, 4))
def test_the_build_writes_the_pinned_file_the_manifest_would(
    case: tuple[list[dict[str, Any]], list[str]], bare: bool, block_rows: int
) -> None:
    import tempfile

    entries, _keys = case
    text = json.dumps(entries if bare else {"kvmap": 1, "entries": entries}).encode()
    with tempfile.TemporaryDirectory() as d:
        want, got = _both(Path(d), text, block_rows=block_rows)
    assert got == want


def test_pins_are_kept_member_for_member() -> None:
    entries = [
        {"prefix": "", "path": "s3://b/all/"},
        {"key": "a", "path": "s3://b/x", "offset": 1, "length": 2, "etag": '"e"', "version": "v", "sha256": SHA},
        {"key": "b", "path": "s3://b/y", "etag": "é"},
        {"key": "c", "path": "rel/c", "sha256": SHA},
        {"key": "d", "path": "s3://b/d", "version": "v1"},
        {"key": "d", "path": "s3://b/d2"},  # shadows a pinned entry: it decides, and pins nothing
        {"key": "e", "path": None},
        {"key": "f", "path": "s3://b/f", "version": "v2"},
        {"prefix": "f", "path": None},  # whites a pinned entry out
    ]
    m = kvmap.Manifest.from_json(entries, url="s3://b/m.json")
    for block_rows in (1, 2, 100):
        data = to_kvmap_parquet(m, block_rows=block_rows)
        back = drive(load_kvmap_parquet("s3://b/m.json"), _answer(data))
        assert back.to_json() == m.to_json()
        assert back.entries[1].to_json() == entries[1]
        col = drive(open_kvmap_parquet("s3://b/m.json"), _answer(data))
        assert col is not None
        assert col.pinned
        got = {k: drive(col.pins_io(k), _answer(data)) for k in ["a", "b", "c", "d", "e", "f", "g", "zz"]}
        assert got == {
            "a": Pins('"e"', "v", SHA),
            "b": Pins("é"),
            "c": Pins(sha256=SHA),
            "d": None,
            "e": None,
            "f": None,
            "g": None,
            "zz": None,
        }


def test_a_file_without_pins_is_layout_version_1_and_pins_cost_it_nothing() -> None:
    plain = kvmap.Manifest.from_json(
        [{"key": "a", "path": "s3://b/a"}, {"prefix": "p/", "path": "s3://b/p/"}], url=None
    )
    data = to_kvmap_parquet(plain)
    names, info = _footer_info(data)
    assert (names, info["version"]) == (list(kvmap_parquet._COLUMNS), 1)
    col = drive(open_kvmap_parquet(None), _answer(data))
    assert col is not None
    assert not col.pinned
    found, log, _size = _served(col.pins_io("a"), data)
    assert (found, log) == (None, [])
    pinned = kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a", "sha256": SHA}], url=None)
    names, info = _footer_info(to_kvmap_parquet(pinned))
    assert (names[-3:], info["version"]) == (["etag", "version", "sha256"], 2)


def test_pins_only_on_losers_make_a_pinned_file_whose_keys_pin_nothing() -> None:
    m = kvmap.Manifest.from_json(
        [{"key": "a", "path": "s3://b/a", "etag": "e"}, {"key": "a", "path": "s3://b/a2"}], url=None
    )
    col, data = _opened(m, 1)
    assert col.pinned
    assert drive(col.pins_io("a"), _answer(data)) is None
    assert drive(load_kvmap_parquet(None), _answer(data)).entries[0].pins == Pins("e")


def test_pins_io_reads_the_block_once_for_a_key_asked_again(big: tuple[kvmap.Manifest, bytes]) -> None:
    m, _ = big
    entries = [*m.to_json()["entries"], {"key": "var/c/70/1", "path": "s3://b/p", "etag": "e"}]
    col, data = _opened(kvmap.Manifest.from_json(entries, url=m.url), 1000)
    found, log, _size = _served(col.pins_io("var/c/70/1"), data)
    assert (found, len(log)) == (Pins("e"), 1)
    col._cache.clear()
    found, log, _size = _served(col.pins_io("var/c/70/1"), data)
    assert (found, log) == (Pins("e"), [])


def test_pinned_entries_among_many_come_back_as_objects_and_the_rest_as_columns() -> None:
    n = 3_000
    m = kvmap.Manifest.from_references(
        [f"c/{i}" for i in range(n)],
        [f"s3://b/f{i % 7}.nc" for i in range(n)],
        [i * 10 for i in range(n)],
        [10] * n,
        before=[{"key": "p/0", "path": "s3://b/p0", "sha256": SHA}],
        after=[{"key": "c/5", "path": "s3://b/five", "version": "v"}, {"key": "p/1", "path": "s3://b/p1", "etag": "x"}],
        url="s3://b/m.json",
    )
    data = to_kvmap_parquet(m, block_rows=500)
    back = drive(load_kvmap_parquet("s3://b/m.json"), _answer(data))
    assert back == m
    cols, others = back.split()
    assert len(cols.key) == n
    assert [(i, e.pins) for i, e in others] == [(0, Pins(sha256=SHA)), (n + 1, Pins(version="v")), (n + 2, Pins("x"))]


def test_a_layout_this_kvmap_does_not_know_is_refused_saying_so() -> None:
    pinned = to_kvmap_parquet(kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a", "etag": "e"}], url=None))
    plain = to_kvmap_parquet(kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}], url=None))
    cases = [
        (pinned, 3, "layout version 3: this kvmap reads versions 1 and 2"),
        (pinned, True, "layout version True"),
        (pinned, 1, "does not match its row groups"),  # pin columns in a file that says it has none
        (plain, 2, "does not match its row groups"),  # no pin columns in a file that says it has them
    ]
    for data, version, says in cases:
        _names, info = _footer_info(data)
        table = pq.ParquetFile(pa.BufferReader(data)).read()
        table = table.replace_schema_metadata({b"kvmap": json.dumps({**info, "version": version}).encode()})
        changed = _plain_parquet_table(table)
        for loading in (open_kvmap_parquet("s3://b/m.parquet"), load_kvmap_parquet("s3://b/m.parquet")):
            with pytest.raises(ManifestError, match=says):
                drive(loading, _answer(changed))
