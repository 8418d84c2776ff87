"""Keys to bytes on real storage: local files, named memory stores, zip archives, a loopback
S3 API server and a loopback HTTP server, through chained manifests."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import obstore
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.chain import Walk, clamp
from kvmap.reader import DEFAULT_LOCAL_BLOCKING_LIMIT
from tests.servers import RangeHTTPServer, S3Server

DATA = bytes(range(256)) * 16  # 4 KiB; byte i is i % 256
NO_RETRIES = {"max_retries": 0}


def write_manifest(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return path


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """A directory with a data file, a chunk manifest, an inner and an outer manifest (all in
    one directory: a file manifest's origin is its own directory tree)."""
    (tmp_path / "data.bin").write_bytes(DATA)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "c0").write_bytes(b"chunk zero")
    write_manifest(
        tmp_path / "inner.json",
        [
            {"key": "w", "path": "data.bin", "offset": 100, "length": 50},
            {"key": "open", "path": "data.bin", "offset": 4000},
            {"key": "inline", "data": "aGVsbG8="},
            {"key": "gone", "path": None},
            {"key": "short", "path": "data.bin", "offset": 4000, "length": 200},
            {"key": "nofile", "path": "nothing.bin"},
        ],
    )
    (tmp_path / "chunks.json").write_text(json.dumps({"0.0": {"path": "data.bin", "offset": 10, "length": 5}}))
    write_manifest(
        tmp_path / "m.json",
        [
            {"prefix": "in/", "path": "inner.json|kvmap:"},
            {"prefix": "ck/", "path": "chunks.json|zarr_chunk_manifest:"},
            {"prefix": "ck2/", "path": "chunks.json|zarr-chunk-manifest:"},
            {"prefix": "tree/", "path": "tree/"},
            {"prefix": "missing/", "path": "nowhere/m.json|kvmap:"},
            {"key": "direct", "path": "data.bin", "offset": 1, "length": 3},
        ],
    )
    return tmp_path


# -- byte windows and requests --------------------------------------------------------------


def test_clamp_follows_zarrs_contract() -> None:
    assert clamp(None, 10) == (0, 10)
    assert clamp((3, 5), 10) == (3, 5)
    assert clamp((8, 20), 10) == (8, 10)  # past the end: the remainder
    assert clamp((12, 20), 10) == (10, 10)
    assert clamp((5, 3), 10) == (5, 5)
    assert clamp((4, None), 10) == (4, 10)
    assert clamp((None, 4), 10) == (6, 10)
    assert clamp((None, 40), 10) == (0, 10)


def test_windows_and_requests_on_a_local_file(local: Path) -> None:
    r = kvmap.Reader(local / "m.json")
    assert bytes(r.get_sync("direct")) == DATA[1:4]
    assert bytes(r.get_sync("in/w")) == DATA[100:150]
    assert bytes(r.get_sync("in/w", (10, 20))) == DATA[110:120]
    assert bytes(r.get_sync("in/w", (40, 1000))) == DATA[140:150]  # clamped inside the window
    assert bytes(r.get_sync("in/w", (None, 5))) == DATA[145:150]
    assert bytes(r.get_sync("in/w", (45, None))) == DATA[145:150]
    assert bytes(r.get_sync("in/w", (60, 70))) == b""
    assert bytes(r.get_sync("in/open")) == DATA[4000:]
    assert bytes(r.get_sync("in/open", (None, 3))) == DATA[-3:]
    assert bytes(r.get_sync("in/open", (90, 100))) == DATA[4090:]
    assert bytes(r.get_sync("tree/c0", (None, 4))) == b"zero"
    assert bytes(r.get_sync("tree/c0", (6, None))) == b"zero"


def test_inline_whiteout_missing_and_uncovered_are_absent_or_bytes(local: Path) -> None:
    r = kvmap.Reader(local / "m.json")
    assert r.get_sync("in/inline") == b"hello"
    assert r.get_sync("in/inline", (1, 3)) == b"el"
    assert r.get_sync("in/gone") is None
    assert r.get_sync("in/uncovered") is None
    assert r.get_sync("tree/absent") is None
    assert r.get_sync("nowhere") is None
    assert r.get_sync("missing/x") is None  # a prefix onto a nested manifest that does not exist: absent


def test_an_exact_entry_naming_a_missing_object_is_a_dangling_reference(local: Path) -> None:
    # Regression: it read as absent, and zarr filled the chunk with its fill value.
    r = kvmap.Reader(local / "m.json")
    for read in (r.get_sync, r.size_sync, lambda k: r.get_many_sync([k])[0], lambda k: r.get_sync(k, (0, 2))):
        with pytest.raises(kvmap.TargetError, match="dangling reference") as info:
            read("in/nofile")
        assert info.value.key == "in/nofile"
        assert info.value.entry == 5
        assert info.value.url is not None
        assert info.value.url.endswith("nothing.bin")


def test_an_object_shorter_than_its_window_is_an_error(local: Path) -> None:
    r = kvmap.Reader(local / "m.json")
    with pytest.raises(kvmap.TargetError, match="shorter than the window") as info:
        r.get_sync("in/short")
    assert info.value.key == "in/short"
    assert info.value.entry == 4
    assert info.value.manifest is not None
    assert info.value.manifest.endswith("inner.json")


def test_the_callers_own_missing_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(kvmap.TargetError, match="manifest not found"):
        kvmap.Reader(tmp_path / "no.json").get_sync("k")


def test_chunk_manifests_in_both_spellings(local: Path) -> None:
    r = kvmap.Reader(local / "m.json")
    assert bytes(r.get_sync("ck/0.0")) == DATA[10:15]
    assert bytes(r.get_sync("ck2/0.0")) == DATA[10:15]
    assert r.get_sync("ck/0.1") is None
    direct = kvmap.Reader(f"{(local / 'chunks.json').as_uri()}|zarr_chunk_manifest:")
    assert bytes(direct.get_sync("0.0")) == DATA[10:15]


def test_a_bad_nested_manifest_names_itself(local: Path) -> None:
    (local / "inner.json").write_text('[{"key": "w", "path": "x", "offset": -1}]')
    with pytest.raises(kvmap.ManifestError, match="entry 0: field 'offset'") as info:
        kvmap.Reader(local / "m.json").get_sync("in/w")
    assert info.value.manifest is not None
    assert info.value.manifest.endswith("inner.json")


def test_explain_shows_every_hop(local: Path) -> None:
    walked = kvmap.Reader(local / "m.json").explain_sync("in/w")
    assert [(Path(h.manifest.partition("|")[0]).name, h.key, h.entry) for h in walked.hops] == [
        ("m.json", "in/w", 0),
        ("inner.json", "w", 0),
    ]
    assert walked.hops[0].url is not None
    assert walked.hops[0].url.endswith("inner.json|kvmap:w")
    assert walked.location == kvmap.Location((local / "data.bin").as_uri(), 100, 50)


def test_manifests_are_read_once(local: Path) -> None:
    r = kvmap.Reader(local / "m.json")
    assert bytes(r.get_sync("in/w")) == DATA[100:150]
    (local / "inner.json").write_text("[]")  # the cached copy keeps answering
    assert bytes(r.get_sync("in/w")) == DATA[100:150]
    r.chain.forget()
    assert r.get_sync("in/w") is None


@pytest.mark.parametrize("limit", [0, 8, DEFAULT_LOCAL_BLOCKING_LIMIT])
def test_async_and_batched_reads_agree_with_single_reads(local: Path, limit: int) -> None:
    # limit 8: windows of up to 8 bytes (and groups up to 8 in all) are blocking calls, the rest awaited
    r = kvmap.Reader(local / "m.json", local_blocking_limit=limit)
    keys = ["in/w", "direct", "in/gone", "ck/0.0", "tree/c0", "in/inline", "nowhere", "in/w", "in/open"]
    ranges: list[Any] = [(5, 10), None, None, (None, 2), (0, 5), (1, 100), None, (None, 3), (2, 4)]
    expected = [r.get_sync(k, b) for k, b in zip(keys, ranges, strict=True)]
    assert [None if x is None else bytes(x) for x in r.get_many_sync(keys, ranges)] == [
        None if x is None else bytes(x) for x in expected
    ]

    async def both() -> tuple[list[Any], list[Any]]:
        singles = [await r.get(k, b) for k, b in zip(keys, ranges, strict=True)]
        return singles, await r.get_many(keys, ranges)

    singles, batch = asyncio.run(both())
    for got in (singles, batch):
        assert [None if x is None else bytes(x) for x in got] == [None if x is None else bytes(x) for x in expected]


async def _ticks_during(awaitable: Any) -> tuple[int, Any]:
    """How often the event loop ran other tasks while ``awaitable`` was awaited, and its result."""
    ticks = 0
    done = False

    async def count() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(count())
    await asyncio.sleep(0)
    before = ticks
    result = await awaitable
    seen = ticks - before
    done = True
    await task
    return seen, result


async def _ticks_during_size(reader: kvmap.Reader, key: str) -> tuple[int, Any]:
    await reader.size(key)
    return await _ticks_during(reader.size(key))


@pytest.mark.parametrize("memory", [False, True])
def test_small_local_reads_do_not_suspend_the_event_loop(local: Path, memory: bool) -> None:
    """Reads of local files and memory stores up to ``local_blocking_limit`` bytes are blocking
    calls on the loop's thread: the coroutine never yields. Larger ones, and every read with the
    limit at 0, are awaited. Both give the same bytes."""
    if memory:
        name = f"near-{uuid.uuid4().hex}"
        obstore.put(kvmap.memory_store(name), "data.bin", DATA)
        target: Any = kvmap.Manifest.from_json(
            [{"key": "direct", "path": "data.bin", "offset": 1, "length": 3}, {"prefix": "tree/", "path": "./"}],
            url=f"memory://{name}/m.json",
        )
        whole, whole_bytes = "tree/data.bin", DATA
    else:
        target, whole, whole_bytes = local / "m.json", "tree/c0", b"chunk zero"
    reads: list[tuple[str, Any, bytes]] = [
        ("direct", None, DATA[1:4]),  # a window
        (whole, None, whole_bytes),  # a whole object of unknown size
        (whole, (None, 4), whole_bytes[-4:]),  # a suffix
    ]

    async def ticks(reader: kvmap.Reader, key: str, byte_range: Any) -> tuple[int, bytes]:
        await reader.get(key, byte_range)  # the manifest is read (and cached) first
        seen, got = await _ticks_during(reader.get(key, byte_range))
        return seen, bytes(got)

    for limit, suspends in [(DEFAULT_LOCAL_BLOCKING_LIMIT, False), (0, True), (2, True)]:
        reader = kvmap.Reader(target, local_blocking_limit=limit)
        for key, byte_range, want in reads:
            seen, got = asyncio.run(ticks(reader, key, byte_range))
            assert got == want
            assert (seen > 0) == suspends, (limit, key, byte_range)
        seen, _ = asyncio.run(_ticks_during_size(reader, "direct"))
        assert (seen > 0) == (limit == 0)


def test_a_negative_local_blocking_limit_is_refused(local: Path) -> None:
    with pytest.raises(ValueError, match="local_blocking_limit"):
        kvmap.Reader(local / "m.json", local_blocking_limit=-1)


def test_a_batch_of_windows_in_one_object_is_read_with_few_requests(http_server: RangeHTTPServer) -> None:
    name = f"batch-{uuid.uuid4().hex}"
    (http_server.root / name).mkdir()
    (http_server.root / name / "data.bin").write_bytes(DATA)
    entries = [{"key": f"k{i}", "path": "data.bin", "offset": 64 * i, "length": 64} for i in range(50)]
    (http_server.root / name / "m.json").write_text(json.dumps(entries))
    r = kvmap.Reader(f"{http_server.url}{name}/m.json", stores={http_server.url: {"retry_config": NO_RETRIES}})
    http_server.clear_requests()
    got = r.get_many_sync([f"k{i}" for i in range(50)])
    assert [bytes(g) for g in got if g is not None] == [DATA[64 * i : 64 * i + 64] for i in range(50)]
    data_requests = [q for q in http_server.requests if q.path.endswith("data.bin")]
    assert 1 <= len(data_requests) < 5  # coalesced, not 50


# -- zip archives ---------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("stored.bin", DATA, compress_type=zipfile.ZIP_STORED)
        z.writestr("deflated.bin", DATA, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("d/m.json", json.dumps([{"key": "w", "path": "../stored.bin", "offset": 7, "length": 3}]))
        z.writestr("d/ck.json", json.dumps({"0": {"path": "../deflated.bin", "offset": 300, "length": 4}}))
    write_manifest(
        tmp_path / "m.json",
        [
            {"prefix": "z/", "path": "a.zip|zip:"},
            {"prefix": "inner/", "path": "a.zip|zip:d/m.json|kvmap:"},
            {"prefix": "ck/", "path": "a.zip|zip:d/ck.json|zarr_chunk_manifest:"},
            {"key": "win", "path": "a.zip|zip:stored.bin", "offset": 5, "length": 2},
        ],
    )
    return tmp_path


def test_zip_members_stored_and_deflated(archive: Path) -> None:
    r = kvmap.Reader(archive / "m.json")
    assert bytes(r.get_sync("z/stored.bin")) == DATA
    assert bytes(r.get_sync("z/stored.bin", (10, 20))) == DATA[10:20]
    assert bytes(r.get_sync("z/deflated.bin")) == DATA
    assert bytes(r.get_sync("z/deflated.bin", (None, 5))) == DATA[-5:]
    assert r.get_sync("z/absent.bin") is None
    assert bytes(r.get_sync("win")) == DATA[5:7]


def test_manifests_inside_zip_resolve_relative_to_their_member(archive: Path) -> None:
    r = kvmap.Reader(archive / "m.json")
    assert bytes(r.get_sync("inner/w")) == DATA[7:10]
    assert bytes(r.get_sync("ck/0")) == DATA[300:304]


def test_zip64_archives(tmp_path: Path) -> None:
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w", allowZip64=True) as z, z.open("big.bin", "w", force_zip64=True) as f:
        f.write(DATA)
    m = kvmap.Manifest.from_json([{"prefix": "", "path": "z64.zip|zip:"}], url=tmp_path.as_uri() + "/")
    assert bytes(kvmap.Reader(m).get_sync("big.bin", (1, 4))) == DATA[1:4]


def test_a_damaged_archive_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"this is not a zip archive")
    m = kvmap.Manifest.from_json([{"prefix": "", "path": "bad.zip|zip:"}], url=(tmp_path / "m.json").as_uri())
    with pytest.raises(kvmap.TargetError, match="not a readable zip archive"):
        kvmap.Reader(m).get_sync("x")


# -- named memory stores ----------------------------------------------------------------------


def test_memory_urls_name_one_store_per_process() -> None:
    name = f"mem-{uuid.uuid4().hex}"
    store = kvmap.memory_store(name)
    obstore.put(store, "v/c/0", b"abc")
    obstore.put(store, "m.json", json.dumps([{"prefix": "", "path": "v/"}]).encode())
    assert bytes(kvmap.Reader(f"memory://{name}/m.json").get_sync("c/0")) == b"abc"


# -- the loopback S3 API server -------------------------------------------------------------


def test_s3_compatible_endpoint(s3_server: S3Server) -> None:
    bucket = f"kv-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    s3_server.put(bucket, "data.bin", DATA)
    s3_server.put(bucket, "views/m.json", json.dumps([{"prefix": "c/", "path": "../data.bin|zip:"}]).encode())
    s3_server.put(bucket, "m.json", json.dumps([{"key": "w", "path": "data.bin", "offset": 3, "length": 4}]).encode())
    root = s3_server.endpoint.replace("http://", "s3+http://") + "/"
    stores = {
        root: {
            "access_key_id": S3Server.ACCESS_KEY_ID,
            "secret_access_key": S3Server.SECRET_ACCESS_KEY,
            "region": S3Server.REGION,
            "retry_config": NO_RETRIES,
        }
    }
    r = kvmap.Reader(f"{root}{bucket}/m.json", stores=stores)
    assert bytes(r.get_sync("w")) == DATA[3:7]
    assert bytes(asyncio.run(r.get("w", (1, 2)))) == DATA[4:5]
    assert r.get_sync("x") is None
    with pytest.raises(kvmap.TargetError, match="manifest not found"):
        kvmap.Reader(f"{root}{bucket}/nope.json", stores=stores).get_sync("w")


# -- the loopback HTTP server: absence vs failure ---------------------------------------------


@pytest.fixture
def web(http_server: RangeHTTPServer) -> tuple[RangeHTTPServer, str]:
    name = f"web-{uuid.uuid4().hex}"
    (http_server.root / name).mkdir()
    (http_server.root / name / "data.bin").write_bytes(DATA)
    entries = [
        {"key": "ok", "path": "data.bin", "offset": 16, "length": 16},
        {"key": "missing", "path": "missing.bin"},
        {"key": "e500", "path": f"/status-500/{name}/data.bin"},
        {"key": "e403", "path": f"/status-403/{name}/data.bin"},
        {"key": "short", "path": "data.bin", "offset": 4090, "length": 100},
        {"key": "slow", "path": f"/slow/{name}/data.bin", "offset": 16, "length": 16},
    ]
    (http_server.root / name / "m.json").write_text(json.dumps(entries))
    return http_server, f"{http_server.url}{name}/m.json"


def test_http_targets(web: tuple[RangeHTTPServer, str]) -> None:
    server, url = web
    r = kvmap.Reader(url, stores={server.url: {"retry_config": NO_RETRIES}})
    assert bytes(r.get_sync("ok")) == DATA[16:32]
    assert bytes(r.get_sync("ok", (None, 4))) == DATA[28:32]
    with pytest.raises(kvmap.TargetError, match="dangling reference"):  # an exact entry names it
        r.get_sync("missing")


@pytest.mark.parametrize(("key", "why"), [("e500", "HTTP 500"), ("e403", "HTTP 403"), ("short", "shorter")])
def test_failures_raise_and_name_key_entry_and_url(web: tuple[RangeHTTPServer, str], key: str, why: str) -> None:
    server, url = web
    r = kvmap.Reader(url, stores={server.url: {"retry_config": NO_RETRIES}})
    for read in (lambda: r.get_sync(key), lambda: asyncio.run(r.get(key)), lambda: r.get_many_sync(["ok", key])):
        with pytest.raises(kvmap.TargetError, match=why) as info:
            read()
        assert info.value.key == key
        assert info.value.manifest == url
        assert info.value.url is not None
        assert info.value.url.startswith(server.url)
        assert pickle.loads(pickle.dumps(info.value)).url == info.value.url


def test_a_client_timeout_is_a_target_error_naming_key_entry_and_url(
    web: tuple[RangeHTTPServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = web
    monkeypatch.setattr(server, "slow_seconds", 1.5)  # the server answers /slow/ long after the client gives up
    stores = {server.url: {"client_options": {"timeout": "200ms"}, "retry_config": NO_RETRIES}}
    r = kvmap.Reader(url, stores=stores)
    assert bytes(r.get_sync("ok")) == DATA[16:32]  # the timeout leaves prompt answers alone
    reads = (lambda: r.get_sync("slow"), lambda: asyncio.run(r.get("slow")), lambda: r.get_many_sync(["ok", "slow"]))
    for read in reads:
        started = time.perf_counter()
        with pytest.raises(kvmap.TargetError, match=r"(?i)timed ?out|timeout") as info:
            read()
        assert time.perf_counter() - started < 1.0  # the client's timeout, not the server's answer
        assert (info.value.key, info.value.manifest, info.value.entry) == ("slow", url, 5)
        assert info.value.url == f"{server.url}slow/{url.removeprefix(server.url).rsplit('/', 1)[0]}/data.bin"
        assert "key 'slow'" in str(info.value)
        assert f"{url} entry 5" in str(info.value)
        assert "timed out" in str(info.value)
        assert "\n" not in str(info.value)
        assert "\n" not in str(info.value)


# -- policy through the reader (the corpus lives in test_policy.py) ---------------------------


def test_targets_outside_the_origin_need_an_allow(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"secret")
    write_manifest(tmp_path / "views" / "m.json", [{"key": "k", "path": "../outside.bin"}])
    with pytest.raises(kvmap.PolicyError, match="--allow"):
        kvmap.Reader(tmp_path / "views" / "m.json").get_sync("k")
    allowed = kvmap.Reader(tmp_path / "views" / "m.json", allow=[tmp_path.as_uri() + "/"])
    assert allowed.get_sync("k") == b"secret"


# -- configuration, pickling, the command line ------------------------------------------------


def test_a_reader_pickles_by_configuration(local: Path) -> None:
    r = kvmap.Reader(local / "m.json", allow=["s3://shared/"], max_depth=5, local_blocking_limit=7)
    assert bytes(r.get_sync("in/w")) == DATA[100:150]
    copy = pickle.loads(pickle.dumps(r))
    assert copy.options == r.options
    assert copy.options["local_blocking_limit"] == 7
    assert copy.policy == r.policy
    assert bytes(copy.get_sync("in/w")) == DATA[100:150]


def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kvmap", *args], capture_output=True, check=False)


def test_cli_cat(local: Path) -> None:
    manifest = str(local / "m.json")
    assert run_cli("cat", manifest, "in/w").stdout == DATA[100:150]
    assert run_cli("cat", manifest, "in/w", "--range", "5-10").stdout == DATA[105:110]
    assert run_cli("cat", manifest, "in/w", "--range", "-3").stdout == DATA[147:150]
    assert run_cli("cat", manifest, "in/w", "--range", "48-").stdout == DATA[148:150]
    absent = run_cli("cat", manifest, "in/gone")
    assert (absent.returncode, absent.stdout) == (1, b"")
    assert absent.stderr.decode().count("\n") == 1
    bad_range = run_cli("cat", manifest, "in/w", "--range", "9-3")
    assert bad_range.returncode == 2


def test_cli_denied_target_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"secret")
    manifest = write_manifest(tmp_path / "views" / "m.json", [{"key": "k", "path": "../outside.bin"}])
    denied = run_cli("cat", str(manifest), "k")
    assert (denied.returncode, denied.stdout) == (1, b"")
    assert denied.stderr.decode().startswith("kvmap: key 'k' -> ")
    assert denied.stderr.decode().count("\n") == 1
    assert run_cli("cat", str(manifest), "k", "--allow", tmp_path.as_uri() + "/").stdout == b"secret"


def test_cli_explain_shows_the_chain(local: Path) -> None:
    run = run_cli("explain", str(local / "m.json"), "in/w")
    lines = run.stdout.decode().splitlines()
    assert run.returncode == 0
    chain = lines[lines.index("chain:") + 1 :]
    assert chain[0].startswith("  1. ")
    assert "entry 0" in chain[0]
    assert chain[1].startswith("  2. ")
    assert "inner.json" in chain[1]
    assert chain[-1].startswith("resolves to: ")
    assert "[offset 100, length 50]" in chain[-1]


# -- get()'s fast path gives what the walk gives ---------------------------------------------

_ranges = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 12), st.integers(0, 12)),
    st.tuples(st.integers(0, 12), st.none()),
    st.tuples(st.none(), st.integers(1, 12)),
)


_fast_path_entries = st.lists(
    st.one_of(
        st.fixed_dictionaries({"key": st.sampled_from("abc"), "path": st.sampled_from(["o1", "o2", "gone"])}),
        st.fixed_dictionaries(
            {
                "key": st.sampled_from("abc"),
                "path": st.sampled_from(["o1", "o2", "gone"]),
                "offset": st.integers(0, 8),
                "length": st.integers(0, 8),
            }
        ),
        st.fixed_dictionaries({"key": st.sampled_from("abc"), "path": st.none()}),
        st.fixed_dictionaries({"key": st.sampled_from("abc"), "data": st.sampled_from(["", "aGVsbG8="])}),
        st.fixed_dictionaries({"prefix": st.sampled_from(["", "b"]), "path": st.sampled_from(["./", "o"])}),
        st.fixed_dictionaries({"key": st.sampled_from("abc"), "path": st.just("inner.json|kvmap:x")}),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    entries=_fast_path_entries,
    key=st.sampled_from(["a", "b", "c", "1", "2"]),
    byte_range=_ranges,
)
def test_the_fast_path_gives_what_the_walk_gives(entries: list[dict[str, Any]], key: str, byte_range: Any) -> None:
    store = kvmap.memory_store("fast-path")
    for name, data in [("o1", b"0123456789"), ("o2", b"abc"), ("inner.json", b'[{"key": "x", "path": "o1"}]')]:
        obstore.put(store, name, data)
    reader = kvmap.Reader(kvmap.Manifest.from_json(entries, url="memory://fast-path/m.json"))

    def outcome(read: Any) -> Any:
        try:
            got = read()
        except kvmap.KvmapError as exc:
            return type(exc), exc.args
        return None if got is None else bytes(got)

    walk = outcome(lambda: reader._drive_sync(reader._get(key, byte_range)))
    assert outcome(lambda: reader.get_sync(key, byte_range)) == walk
    assert outcome(lambda: asyncio.run(reader.get(key, byte_range))) == walk
    # Memory reads are blocking calls by default; awaited ones must give the same answers.
    awaited = kvmap.Reader(reader.target, local_blocking_limit=0)  # type: ignore[arg-type]
    assert outcome(lambda: asyncio.run(awaited.get(key, byte_range))) == walk


_LOCAL = Path(tempfile.mkdtemp(prefix="kvmap-place-"))


def _placed(read: Any) -> Any:
    try:
        loc = read()
    except kvmap.KvmapError as exc:
        return type(exc), exc.args
    return None if loc is None else (loc, loc.inside, loc.tag, loc.crc)


@settings(max_examples=300, deadline=None)
@given(
    entries=_fast_path_entries,
    key=st.sampled_from(["a", "b", "c", "1", "2"]),
    local=st.booleans(),
)
def test_locate_in_one_step_gives_what_the_walk_gives(entries: list[dict[str, Any]], key: str, local: bool) -> None:
    """Reader.locate's one-step answer (Chain.place) is the walk's, fields the location's
    equality leaves out (the policy's confinement) included, in both drivers and once the top
    manifest is cached."""
    inner = b'[{"key": "x", "path": "o1", "offset": 2}]'
    if local:
        (_LOCAL / "inner.json").write_bytes(inner)
        url = (_LOCAL / "m.json").as_uri()
    else:
        obstore.put(kvmap.memory_store("fast-path"), "inner.json", inner)
        url = "memory://fast-path/m.json"
    reader = kvmap.Reader(kvmap.Manifest.from_json(entries, url=url))
    walk = _placed(lambda: reader._drive_sync(reader._locate(key, Walk(key))))
    for _ in range(2):
        assert _placed(lambda: reader.locate_sync(key)) == walk
        assert _placed(lambda: asyncio.run(reader.locate(key))) == walk


# -- roots: URLs opened per directory -----------------------------------------------------

_ROOT_URLS = [
    "file:///d/a/0",
    "file:///d/a/1",
    "file:///d/a/",
    "file:///d/a/x%2Fy",
    "file:///d/a%20b/0",
    "file:///d/a%20b/1",
    "file://localhost/d/a/2",
    "file://host/d/a/0",
    "memory://m/k/0",
    "memory://m/k/1",
    "memory://m/0",
    "s3+http://127.0.0.1:9/bucket/k/0",
    "s3+http://127.0.0.1:9/bucket/k/1",
    "s3+http://127.0.0.1:9/bucket/0",
    "s3+http://127.0.0.1:9/bucket",
    "s3+http://127.0.0.1:9/other",
    "s3://b/0",
    "s3://b/",
    "ftp://h/0",
]


def _opened(roots: Any, url: str, directory: bool) -> Any:
    try:
        store, path = roots.open(url, directory=directory)
    except kvmap.PipelineError as exc:
        return str(exc)
    return type(store).__name__, path


@settings(max_examples=100, deadline=None)
@given(order=st.lists(st.tuples(st.sampled_from(_ROOT_URLS), st.booleans()), min_size=1, max_size=12))
# Regression (found by this test): a bucket opened as a directory made its name look like an object
# path, and the next bucket on the endpoint was opened as a path in the first one.
@example(order=[("s3+http://127.0.0.1:9/other", True), ("s3+http://127.0.0.1:9/bucket", True)])
def test_roots_open_gives_for_a_sibling_what_a_fresh_open_gives(order: list[tuple[str, bool]]) -> None:
    """Roots remembers each directory URL's store and path; a sibling opened from it must be
    what a fresh Roots opens (or the same error)."""
    roots = kvmap.roots.Roots({"s3+http://127.0.0.1:9/": {"skip_signature": True}})
    for url, directory in order:
        fresh = kvmap.roots.Roots({"s3+http://127.0.0.1:9/": {"skip_signature": True}})
        assert _opened(roots, url, directory) == _opened(fresh, url, directory), url
