"""`kvmap.check.check`: dangling exact targets, windows past the end, missing redirect roots, through
chained manifests — on local files, named memory stores and the loopback S3 server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import obstore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.check import KINDS, CheckReport, Problem, check
from tests.servers import S3Server

DATA = b"0123456789"  # every object of the worlds below: 10 bytes


def _write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return path


#: The outer manifest of every world: (entry, what is wrong with it or None).
OUTER: list[tuple[dict[str, Any], str | None]] = [
    ({"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}}, None),
    ({"key": "a", "path": "data/a.bin", "offset": 2, "length": 5}, None),
    ({"key": "short", "path": "data/a.bin", "offset": 8, "length": 5}, "past-end"),
    ({"key": "gone", "path": "data/gone.bin"}, "dangling"),
    ({"prefix": "raw/", "path": "data/"}, None),
    ({"prefix": "old/", "path": "archive/"}, "missing-root"),
    ({"prefix": "sub/", "path": "inner.json|kvmap:"}, None),
    ({"prefix": "ghost/", "path": "ghost.json|kvmap:"}, "missing-root"),
    ({"key": "deep", "path": "inner.json|kvmap:window"}, None),  # inner's entry 1 is at fault
    ({"prefix": "shadowed/", "path": "nowhere/"}, None),  # entry 10 wins for all its keys
    ({"prefix": "shadowed/", "path": "data/"}, None),
    ({"key": "wh", "path": None}, None),
    ({"key": "empty", "path": "inner.json|kvmap:gone"}, None),  # inner's entry 4 whites it out
]
INNER: list[tuple[dict[str, Any], str | None]] = [
    ({"prefix": "", "path": "data/"}, None),
    ({"key": "window", "path": "data/a.bin", "offset": 0, "length": 11}, "past-end"),
    ({"key": "missing", "path": "data/nope.bin"}, "dangling"),
    ({"prefix": "q/", "path": "nodir/"}, "missing-root"),
    ({"key": "gone", "path": None}, None),
]


def _expected(outer: str, inner: str) -> set[tuple[str, str, int]]:
    return {(kind, outer, i) for i, (_, kind) in enumerate(OUTER) if kind is not None} | {
        (kind, inner, i) for i, (_, kind) in enumerate(INNER) if kind is not None
    }


def _found(report: CheckReport) -> set[tuple[str, str | None, int | None]]:
    return {(p.kind, p.manifest, p.entry) for p in report.problems}


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """m.json and inner.json beside data/ (OUTER and INNER)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(DATA)
    _write(tmp_path / "inner.json", [e for e, _ in INNER])
    return _write(tmp_path / "m.json", [e for e, _ in OUTER])


def test_every_kind_of_problem_through_a_chained_manifest(world: Path) -> None:
    report = check(world)
    m, inner = world.as_uri(), (world.parent / "inner.json").as_uri()
    # The exact entry "empty" names inner.json's whiteout: its chain ends there (inner entry 4).
    assert _found(report) == _expected(m, inner) | {("dangling", inner, 4)}
    assert not report.ok
    assert report.target == m
    assert (report.manifests, report.targets, report.roots) == (2, 7, 7)
    by_key = {p.key: p for p in report.problems if p.key is not None}
    assert by_key["short"].url == (world.parent / "data" / "a.bin").as_uri()
    assert "shorter than the window [8, 13)" in by_key["short"].reason
    assert by_key["gone"].url == (world.parent / "data" / "gone.bin").as_uri()
    # One fault found through the outer key and through the inner manifest itself: listed once.
    assert [p.key for p in report.problems if p.manifest == inner and p.entry == 1] == ["deep"]
    assert by_key["empty"].reason.startswith("the exact entry's chain ends in nothing")
    roots = {p.entry: p for p in report.problems if p.kind == "missing-root"}
    assert roots[5].url == (world.parent / "archive").as_uri() + "/"
    assert roots[7].url == (world.parent / "ghost.json").as_uri() + "|kvmap:"
    assert "does not exist" in roots[7].reason


def test_problems_are_sorted_and_each_one_has_every_field(world: Path) -> None:
    report = check(world)
    order = {k: i for i, k in enumerate(KINDS)}
    ranks = [(p.manifest or "", p.entry, order[p.kind]) for p in report.problems]
    assert ranks == sorted(ranks)
    for p in report.problems:
        assert list(p.to_json()) == ["kind", "manifest", "entry", "key", "url", "reason"]
        assert str(p).startswith(f"{p.kind}: ")
    assert check(world) == report  # the same report however the reads interleave


def test_one_read_at_a_time_gives_the_same_report(world: Path) -> None:
    """With one permit, a chained manifest's checks must not wait on the permit its redirect holds."""
    assert check(world, concurrency=1) == check(world, concurrency=32)


def test_a_pipeline_target_checks_the_keys_under_its_path(world: Path) -> None:
    inner = (world.parent / "inner.json").as_uri()
    report = check(f"{world}|kvmap:sub/")
    assert _found(report) == {(k, inner, i) for i, (_, k) in enumerate(INNER) if k is not None}
    only_q = check(f"{world.parent / 'inner.json'}|kvmap:q/")
    assert _found(only_q) == {("missing-root", inner, 3)}


def test_a_clean_manifest_is_ok(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(DATA)
    _write(tmp_path / "inner.json", [{"prefix": "", "path": "d/"}])
    m = _write(
        tmp_path / "m.json",
        [
            {"key": "x", "path": "d/x", "offset": 0, "length": 10},
            {"key": "tail", "path": "d/x", "offset": 10},  # an empty window at the end fits
            {"prefix": "p/", "path": "d/"},
            {"min": "r/a", "max": "r/z", "path": "inner.json|kvmap:"},
        ],
    )
    seen: list[tuple[int, int]] = []
    report = check(m, progress=lambda done, total: seen.append((done, total)))
    assert report.ok
    assert report.problems == ()
    assert (report.manifests, report.targets, report.roots) == (2, 2, 3)
    assert seen[-1] == (5, 5)
    assert all(done <= total for done, total in seen)


def test_the_policy_applies_as_it_does_to_reads(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x").write_bytes(DATA)
    m = _write(
        tmp_path / "views" / "m.json",
        [{"prefix": "ext/", "path": (tmp_path / "outside").as_uri() + "/"}, {"key": "k", "path": "../outside/x"}],
    )
    refused = check(m)
    assert {(p.kind, p.entry) for p in refused.problems} == {("not-allowed", 0), ("not-allowed", 1)}
    assert check(m, allow=[(tmp_path / "outside").as_uri() + "/"]).ok
    assert check(m, allow_all=True).ok


def test_a_redirect_that_leads_back_up_its_chain_is_a_problem(tmp_path: Path) -> None:
    _write(tmp_path / "b.json", [{"prefix": "", "path": "a.json|kvmap:"}])
    a = _write(tmp_path / "a.json", [{"prefix": "", "path": "b.json|kvmap:"}])
    report = check(a)
    assert [(p.kind, p.manifest, p.entry) for p in report.problems] == [("error", (tmp_path / "b.json").as_uri(), 0)]
    assert "leads back" in report.problems[0].reason


def test_two_redirects_to_one_manifest_check_it_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(DATA)
    _write(tmp_path / "inner.json", [{"prefix": "", "path": "d/"}, {"key": "bad", "path": "d/none"}])
    m = _write(
        tmp_path / "m.json",
        [{"prefix": "one/", "path": "inner.json|kvmap:"}, {"prefix": "two/", "path": "inner.json|kvmap:"}],
    )
    report = check(m)
    assert report.manifests == 2
    assert [(p.kind, p.entry, p.key) for p in report.problems] == [("dangling", 1, "bad")]


def test_an_invalid_chained_manifest_is_an_error_naming_its_entry(tmp_path: Path) -> None:
    (tmp_path / "inner.json").write_text('{"kvmap": 1, "entries": [{"key": "a", "path": "x", "offset": -1}]}')
    m = _write(tmp_path / "m.json", [{"prefix": "p/", "path": "inner.json|kvmap:"}])
    [problem] = check(m).problems
    assert (problem.kind, problem.manifest, problem.entry) == ("error", (tmp_path / "inner.json").as_uri(), 0)
    assert "offset" in problem.reason


def test_the_target_itself_must_exist_and_be_valid(tmp_path: Path) -> None:
    with pytest.raises(kvmap.TargetError, match="manifest not found"):
        check(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1")
    with pytest.raises(kvmap.ManifestError):
        check(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="concurrency"):
        check(tmp_path / "bad.json", concurrency=0)


def test_on_the_loopback_s3_server(s3_server: S3Server) -> None:
    bucket = f"kvmap-check-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    root, stores = s3_server.kvmap_stores(client_options={"allow_http": True})
    s3_server.put(bucket, "data/a.bin", DATA)
    s3_server.put(bucket, "inner.json", json.dumps({"kvmap": 1, "entries": [e for e, _ in INNER]}).encode())
    s3_server.put(bucket, "m.json", json.dumps({"kvmap": 1, "entries": [e for e, _ in OUTER]}).encode())
    m, inner = f"{root}{bucket}/m.json", f"{root}{bucket}/inner.json"
    report = check(m, stores=stores)
    assert _found(report) == _expected(m, inner) | {("dangling", inner, 4)}
    assert (report.manifests, report.targets, report.roots) == (2, 7, 7)
    by_key = {p.key: p for p in report.problems if p.key is not None}
    assert by_key["gone"].url == f"{root}{bucket}/data/gone.bin"


def test_a_missing_bucket_is_an_error_not_a_missing_root(s3_server: S3Server) -> None:
    bucket = f"kvmap-check-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    root, stores = s3_server.kvmap_stores()
    other = f"{root}no-such-bucket-{uuid.uuid4().hex[:8]}/"
    s3_server.put(bucket, "m.json", json.dumps([{"prefix": "p/", "path": other}]).encode())
    [problem] = check(f"{root}{bucket}/m.json", stores=stores, allow=[other]).problems
    assert (problem.kind, problem.entry, problem.url) == ("error", 0, other)


# -- the property: what check reports is what the objects and the entries say ----------------

_NAMES = st.sampled_from(["o0", "o1", "o2", "o3"])


@settings(max_examples=500, deadline=None)  # each example runs a whole check: an event loop, readers
@given(
    sizes=st.dictionaries(_NAMES, st.integers(0, 12), max_size=4),
    exact=st.lists(
        st.tuples(
            _NAMES, st.one_of(st.none(), st.tuples(st.integers(0, 14), st.one_of(st.none(), st.integers(0, 14))))
        ),
        max_size=6,
    ),
    dirs=st.lists(st.sampled_from(["d0", "d1", "d2"]), max_size=3),
    filled=st.sets(st.sampled_from(["d0", "d1", "d2"])),
)
def test_check_reports_exactly_what_is_wrong(
    sizes: dict[str, int],
    exact: list[tuple[str, tuple[int, int | None] | None]],
    dirs: list[str],
    filled: set[str],
) -> None:
    name = f"check-{uuid.uuid4().hex}"
    store = kvmap.memory_store(name)
    for obj, size in sizes.items():
        obstore.put(store, f"objects/{obj}", DATA[:size] + b"\0" * max(0, size - len(DATA)))
    for d in filled:
        obstore.put(store, f"{d}/x", b"x")
    entries: list[dict[str, Any]] = []
    expected: set[tuple[str, int]] = set()
    for i, (obj, window) in enumerate(exact):
        entry: dict[str, Any] = {"key": f"k{i}", "path": f"objects/{obj}"}
        if window is not None:
            entry["offset"], length = window
            if length is not None:
                entry["length"] = length
        if obj not in sizes:
            expected.add(("dangling", len(entries)))
        elif window is not None and window[1] is not None and window[0] + window[1] > sizes[obj]:
            expected.add(("past-end", len(entries)))
        entries.append(entry)
    for j, d in enumerate(dirs):
        entries.append({"prefix": f"p{j}/", "path": f"{d}/"})
        if d not in filled:
            expected.add(("missing-root", len(entries) - 1))
    m = kvmap.Manifest.from_json(entries, url=f"memory://{name}/m.json")
    report = check(m)
    assert {(p.kind, p.entry) for p in report.problems} == expected
    assert all(isinstance(p, Problem) and p.manifest == f"memory://{name}/m.json" for p in report.problems)
    assert (report.targets, report.roots) == (len(exact), len(dirs))
    assert report.ok == (not expected)


def test_windows_of_one_object_ask_its_size_once(s3_server: S3Server) -> None:
    """Two hundred chunks in one object (kerchunk's layout): one request of it, not two hundred —
    unless a window does not fit, when each is checked and only that one is reported."""
    bucket = f"kvmap-check-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    root, stores = s3_server.kvmap_stores()
    s3_server.put(bucket, "big.bin", bytes(200 * 8))
    windows = [{"key": f"c/{i}", "path": "big.bin", "offset": 8 * i, "length": 8} for i in range(200)]
    s3_server.put(bucket, "m.json", json.dumps(windows).encode())
    s3_server.put(bucket, "bad.json", json.dumps([*windows, {**windows[5], "key": "c/x", "length": 8000}]).encode())

    def reads() -> int:
        return sum(r.path == f"/{bucket}/big.bin" and r.method != "PUT" for r in s3_server.requests_for(bucket))

    report = check(f"{root}{bucket}/m.json", stores=stores)
    assert report.ok
    assert report.targets == 200
    assert reads() == 1
    bad = check(f"{root}{bucket}/bad.json", stores=stores)
    assert [(p.kind, p.entry, p.key) for p in bad.problems] == [("past-end", 200, "c/x")]
    assert bad.targets == 201


def test_a_key_is_named_as_its_manifest_names_it(tmp_path: Path) -> None:
    """Below a redirect's path, a chained manifest's key keeps the path; below the caller's
    pipeline path, the caller's key does not."""
    _write(tmp_path / "inner.json", [{"key": "sub/bad", "path": "none.bin"}, {"key": "other", "path": "none.bin"}])
    m = _write(tmp_path / "m.json", [{"prefix": "s/", "path": "inner.json|kvmap:sub/"}])
    [problem] = check(m).problems
    assert (problem.kind, problem.manifest, problem.entry, problem.key) == (
        "dangling",
        (tmp_path / "inner.json").as_uri(),
        0,
        "sub/bad",
    )
    assert [p.key for p in check(f"{tmp_path / 'inner.json'}|kvmap:sub/").problems] == ["bad"]
