"""A columnar manifest (kvmap-parquet) read through every door — `Reader`, `KVMapStore`, zarr, a
chain, the CLI, `kvmap convert` — locally and on the loopback S3 server, where the requests
and bytes are counted: the footer when opened, one block per cold lookup (issue 14 §1, §2)."""

from __future__ import annotations

import asyncio
import json
import pickle
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import kvmap
from tests.servers import S3Server
from tests.terminal import run_with_terminal_stderr

pytest.importorskip("pyarrow")
from kvmap.formats.kvmap_parquet import to_kvmap_parquet

N = 3_000  # exact entries
BLOCK = 200  # rows per block: the file has many blocks
CHUNK = 16


def _entries(rng: random.Random) -> list[dict[str, Any]]:
    """A zarr v3 array of N chunks of CHUNK bytes in data.bin (entries shuffled), a
    redirect of a group to a directory, and a few patches and whiteouts."""
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [N * (CHUNK // 4)],
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK // 4]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }
    chunks = [{"key": f"a/c/{i}", "path": "data.bin", "offset": i * CHUNK, "length": CHUNK} for i in range(N)]
    rng.shuffle(chunks)
    return [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {}}},
        {"key": "a/zarr.json", "json": meta},
        {"prefix": "g/", "path": "group/"},
        *chunks,
        {"key": "a/c/7", "path": "data.bin", "offset": 0, "length": CHUNK},  # a patch: chunk 7 = chunk 0
        {"key": "a/c/9", "path": None},  # a whiteout: fill value
        {"key": "g/x", "data": "aW5saW5l"},
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, kvmap.Manifest, bytes]:
    """A directory with data.bin, group/, m.json and m.parquet (the same manifest in both forms)."""
    d = tmp_path_factory.mktemp("columnar")
    data = np.arange(N * CHUNK // 4, dtype="<f4").tobytes()
    (d / "data.bin").write_bytes(data)
    (d / "group").mkdir()
    (d / "group" / "y").write_bytes(b"why")
    entries = _entries(random.Random(0))
    (d / "m.json").write_text(json.dumps({"kvmap": 1, "entries": entries}))
    manifest = kvmap.Manifest.load(d / "m.json")
    (d / "m.parquet").write_bytes(to_kvmap_parquet(manifest, block_rows=BLOCK))
    return d, manifest, data


def _keys() -> list[str]:
    return ["zarr.json", "a/zarr.json", "a/c/0", "a/c/7", "a/c/9", "a/c/2999", "a/c/3000", "g/x", "g/y", "g/z", "b"]


def test_reader_reads_the_same_bytes_from_both_forms(world: tuple[Path, kvmap.Manifest, bytes]) -> None:
    d, _, _ = world
    columnar, plain = kvmap.Reader(d / "m.parquet"), kvmap.Reader(d / "m.json")
    keys = _keys() + [f"a/c/{i}" for i in random.Random(1).sample(range(N), 200)]
    assert [columnar.get_sync(k) for k in keys] == [plain.get_sync(k) for k in keys]
    # Again: now answered by the one-step fast path from the keys the map knows.
    assert [columnar.get_sync(k) for k in keys] == [plain.get_sync(k) for k in keys]
    assert columnar.get_many_sync(keys) == plain.get_many_sync(keys)
    assert columnar.resolve_sync(keys) == plain.resolve_sync(keys)
    assert asyncio.run(columnar.get("a/c/5")) == plain.get_sync("a/c/5")
    assert columnar.get_sync("a/c/9") is None
    assert columnar.get_sync("g/y") == b"why"
    assert [h.entry for h in columnar.explain_sync("a/c/7").hops] == [h.entry for h in plain.explain_sync("a/c/7").hops]


def test_listing_and_zarr_see_one_namespace(world: tuple[Path, kvmap.Manifest, bytes]) -> None:
    d, _, data = world
    columnar, plain = kvmap.Reader(d / "m.parquet"), kvmap.Reader(d / "m.json")
    assert columnar.list_prefix_sync("") == plain.list_prefix_sync("")
    assert columnar.list_dir_sync("") == plain.list_dir_sync("") == ["a", "g", "zarr.json"]
    assert columnar.list_dir_sync("g/") == ["x", "y"]
    expected = np.frombuffer(data, dtype="<f4").copy().reshape(N, CHUNK // 4)
    expected[7] = expected[0]
    expected[9] = 0.0
    arr = zarr.open_array(store=kvmap.KVMapStore(d / "m.parquet"), path="a", mode="r")
    np.testing.assert_array_equal(arr[:], expected.reshape(-1))
    # A store is pickled by its target (dask workers open the file lazily themselves).
    again = pickle.loads(pickle.dumps(kvmap.KVMapStore(d / "m.parquet")))
    np.testing.assert_array_equal(zarr.open_array(store=again, path="a", mode="r")[:8], expected.reshape(-1)[:8])


def test_a_columnar_manifest_is_a_link_in_a_chain(world: tuple[Path, kvmap.Manifest, bytes], tmp_path: Path) -> None:
    d, _, _ = world
    top = {"kvmap": 1, "entries": [{"prefix": "big/", "path": f"{(d / 'm.parquet').as_uri()}|kvmap:"}]}
    (tmp_path / "top.json").write_text(json.dumps(top))
    r = kvmap.Reader(tmp_path / "top.json", allow=[d.as_uri() + "/"])
    assert r.get_sync("big/a/c/3") == kvmap.Reader(d / "m.json").get_sync("a/c/3")
    assert r.get_sync("big/a/c/9") is None
    assert len(r.explain_sync("big/a/c/3").hops) == 2


def test_the_cli_and_convert_take_it(world: tuple[Path, kvmap.Manifest, bytes], tmp_path: Path) -> None:
    d, manifest, _ = world

    def kvmap_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kvmap", *args], capture_output=True, text=True, check=False)

    run = kvmap_cli("resolve", str(d / "m.parquet"), "a/c/3", "a/c/9")
    assert run.returncode == 0, run.stderr
    assert "data.bin" in run.stdout
    assert "absent" in run.stdout
    run = kvmap_cli("convert", str(d / "m.json"), str(tmp_path / "m.kvmap.parquet"))
    assert run.returncode == 0, run.stderr
    run = kvmap_cli("convert", str(tmp_path / "m.kvmap.parquet"), str(tmp_path / "back.json"))
    assert run.returncode == 0, run.stderr
    back = kvmap.Manifest.load(tmp_path / "back.json")
    assert back.entries[2].path == (d / "group").as_uri() + "/"  # rebased: written elsewhere
    assert list(back.entries) == list(manifest.rebased(back.url).entries)
    run = kvmap_cli("cat", str(tmp_path / "m.kvmap.parquet"), "a/c/3", "--allow", d.as_uri() + "/")
    assert run.returncode == 0, run.stderr  # written elsewhere, its paths were rebased onto the originals
    assert run.stdout.encode("latin-1") == np.arange(12, 16, dtype="<f4").tobytes()
    assert kvmap_cli("cat", str(d / "m.parquet"), "g/x").stdout == "inline"


def test_on_s3_it_reads_the_footer_then_one_block_per_cold_lookup(s3_server: S3Server) -> None:
    bucket = f"columnar-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    root, stores = s3_server.kvmap_stores()
    n, block = 100_000, 4_096
    rng = np.random.default_rng(0)
    keys = [f"t/c/{i // 1000}/{i % 1000}" for i in range(n)]
    paths = [f"f{i}.nc" for i in rng.integers(0, 1000, n).tolist()]
    manifest = kvmap.Manifest.from_references(
        keys,
        paths,
        rng.integers(0, 1 << 30, n).tolist(),
        rng.integers(1, 1 << 20, n).tolist(),
        url=f"{root}{bucket}/m.json",
    )
    body = to_kvmap_parquet(manifest, block_rows=block)
    s3_server.put(bucket, "m.parquet", body)
    s3_server.put(bucket, "m.json", manifest.dumps())
    reader = kvmap.Reader(f"{root}{bucket}/m.parquet", stores=stores)
    plain = kvmap.Reader(f"{root}{bucket}/m.json", stores=stores)  # relative paths resolve in the bucket

    def manifest_reads() -> list[Any]:
        return [r for r in s3_server.requests_for(bucket) if r.path == f"/{bucket}/m.parquet" and r.method == "GET"]

    def fetched(requests: list[Any]) -> int:
        total = 0
        for r in requests:
            assert r.range is not None, "the manifest is never read whole"
            first, _, last = r.range.removeprefix("bytes=").partition("-")
            total += (int(last) - int(first) + 1) if first else int(last)
        return total

    assert reader.resolve_sync(["t/c/11/5"]) == plain.resolve_sync(["t/c/11/5"])
    opened = manifest_reads()
    assert 2 <= len(opened) <= 3  # the footer (one or two reads), then one block
    assert fetched(opened) < len(body) / 3, (fetched(opened), len(body))
    # The same block again: no request; another block: exactly one more.
    assert reader.resolve_sync(["t/c/11/6"]) == plain.resolve_sync(["t/c/11/6"])
    assert len(manifest_reads()) == len(opened)
    ordered = sorted(keys)
    assert reader.resolve_sync([ordered[-1]]) == plain.resolve_sync([ordered[-1]])
    assert len(manifest_reads()) == len(opened) + 1
    # A batch reads each block it needs once: these keys span three blocks from the middle.
    before = len(manifest_reads())
    batch = ordered[block * 10 : block * 13 : 97]
    assert reader.resolve_sync(batch) == plain.resolve_sync(batch)
    assert len(manifest_reads()) - before <= 4
    assert reader.resolve_sync(["t/c/x"]) == [None]


def test_a_dangling_reference_is_an_error_on_the_fast_path_too(tmp_path: Path) -> None:
    m = kvmap.Manifest.from_json(
        [{"prefix": "", "path": "dir/"}, {"key": "gone", "path": "missing.bin"}], url=(tmp_path / "m.json").as_uri()
    )
    (tmp_path / "m.parquet").write_bytes(to_kvmap_parquet(m))
    r = kvmap.Reader(tmp_path / "m.parquet")
    for _ in range(2):  # the walk, then the fast path that knows the key
        with pytest.raises(kvmap.DanglingReferenceError):
            r.get_sync("gone")
        assert r.get_sync("absent-under-the-prefix") is None


# -- kvmap convert to a columnar manifest: large JSON inputs are streamed (issue 14 §2) -------


def _kerchunk_document(n: int) -> dict[str, Any]:
    rng = random.Random(1)
    refs: dict[str, Any] = {".zgroup": '{"zarr_format": 2}', "a/.zarray": "{}"}
    for i in rng.sample(range(n), n):
        refs[f"a/{i}"] = [f"s3://bucket/f{i % 7}.nc", rng.randrange(1 << 30), rng.randrange(1, 1 << 20)]
    refs["a/inline"] = "base64:aGk="
    return {"version": 1, "refs": refs}


@pytest.mark.parametrize("form", ["kvmap", "kerchunk"])
def test_convert_streams_a_large_json_document_into_the_same_file(
    world: tuple[Path, kvmap.Manifest, bytes], tmp_path: Path, form: str
) -> None:
    """Over the memory budget's share, the input is streamed (the progress counts its bytes twice:
    read, then written); the file and the report are what reading it whole gives."""
    d, _, _ = world
    if form == "kvmap":
        (tmp_path / "m.json").write_bytes((d / "m.json").read_bytes())  # its paths are relative
        source = tmp_path / "m.json"
    else:
        source = tmp_path / "refs.json"
        source.write_text(json.dumps(_kerchunk_document(N)))
    size = source.stat().st_size
    calls: list[tuple[int, int]] = []
    streamed = kvmap.convert(
        source, tmp_path / "s.kvmap.parquet", memory_bytes=1 << 20, progress=lambda *c: calls.append(c)
    )
    assert size > (1 << 20) / 8  # so the budget of 1 MiB streams it
    whole = kvmap.convert(source, tmp_path / "w.kvmap.parquet", memory_bytes=1 << 40)
    assert (tmp_path / "s.kvmap.parquet").read_bytes() == (tmp_path / "w.kvmap.parquet").read_bytes()
    assert streamed == whole
    assert (streamed.source_format, streamed.target_format) == (form, "kvmap-parquet")
    assert {total for _, total in calls} == {2 * size}
    assert calls[-1][0] == 2 * size
    written = [done for done, _ in calls if done > size]
    assert written == sorted(written)


def test_convert_reads_whole_what_it_cannot_stream(world: tuple[Path, kvmap.Manifest, bytes], tmp_path: Path) -> None:
    """A document that does not say what it is from its first member, and an input that is
    not a local file, are read whole (and detected), whatever the budget."""
    _, manifest, _ = world
    v0 = tmp_path / "v0.json"  # kerchunk version 0 references whose first key is a chunk's
    v0.write_text(json.dumps({"a/0": ["s3://bucket/f.nc", 0, 10], "a/.zarray": "{}"}))
    calls: list[tuple[int, int]] = []
    done = kvmap.convert(v0, tmp_path / "v0.kvmap.parquet", memory_bytes=1, progress=lambda *c: calls.append(c))
    assert (done.source_format, done.entries, calls) == ("kerchunk", 2, [])
    done = kvmap.convert(manifest, tmp_path / "m.kvmap.parquet", memory_bytes=1, progress=lambda *c: calls.append(c))
    assert (done.source_format, done.entries, calls) == ("kvmap", len(manifest), [])


def test_convert_shows_a_progress_bar_on_a_terminal(world: tuple[Path, kvmap.Manifest, bytes], tmp_path: Path) -> None:
    """`kvmap convert --memory 1` on a pseudo-terminal streams the input under a progress bar
    on standard error; piped, it prints none."""
    d, _, _ = world
    args = [sys.executable, "-m", "kvmap", "convert", str(d / "m.json"), "--memory", "1"]
    run, shown = run_with_terminal_stderr([*args, str(tmp_path / "t.kvmap.parquet")])
    assert run.returncode == 0, shown
    assert b"converting" in shown
    piped = subprocess.run([*args, str(tmp_path / "p.kvmap.parquet")], capture_output=True, check=False)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == b""
    assert (tmp_path / "t.kvmap.parquet").read_bytes() == (tmp_path / "p.kvmap.parquet").read_bytes()


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_convert_refuses_a_memory_budget_that_is_not_one(tmp_path: Path, value: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "kvmap", "convert", "m.json", str(tmp_path / "o.kvmap.parquet"), "--memory", value],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "--memory" in run.stderr
    assert "at least 1" in run.stderr
    assert not (tmp_path / "o.kvmap.parquet").exists()
