"""Concurrency: many operations in flight through one store, against a model; loads in flight shared;
batches bounded. Real stores only (memory, local files, the loopback HTTP server, a counting HTTP server).

Free-threaded CPython is not supported yet: kvmap's caches rely on the GIL for single operations on
dicts and OrderedDicts being atomic (``_Bounded``), and its C extension has not been built or tested
without the GIL. These tests run on the GIL builds (3.11, 3.12).
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype

import kvmap
import kvmap.zipindex
from kvmap.policy import Policy
from kvmap.store import KVMapStore
from tests.servers import RangeHTTPServer

PROTO = default_buffer_prototype()


def _redirect_store(kind: str, tmp_path: Path) -> tuple[KVMapStore, str]:
    if kind == "memory":
        name = f"conc-{uuid.uuid4().hex[:12]}"
        target = f"memory://{name}/data/"
        m = kvmap.Manifest.from_json([{"prefix": "", "path": "data/"}], url=f"memory://{name}/m.json")
        return KVMapStore(m), target
    (tmp_path / "data").mkdir()
    (tmp_path / "m.json").write_text(json.dumps([{"prefix": "", "path": "data/"}]))
    return KVMapStore(tmp_path / "m.json"), (tmp_path / "data").as_uri() + "/"


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_thousands_of_concurrent_operations_match_the_model(kind: str, tmp_path: Path) -> None:
    store, _ = _redirect_store(kind, tmp_path)
    workers, steps = 40, 75  # 3,000 operations in flight together
    models: list[dict[str, bytes]] = [{} for _ in range(workers)]

    async def worker(w: int) -> None:
        # Each worker owns its keys, so its model is exact whatever the interleaving with the others.
        rng = random.Random(w)
        model = models[w]
        keys = [f"w{w}/c/{i}" for i in range(6)]
        for step in range(steps):
            key = rng.choice(keys)
            op = rng.random()
            if op < 0.4:
                value = f"{w}:{step}".encode() * rng.randint(1, 40)
                await store.set(key, cpu.Buffer.from_bytes(value))
                model[key] = value
            elif op < 0.55:
                await store.delete(key)
                model.pop(key, None)
            elif op < 0.85:
                got = await store.get(key, PROTO)
                assert (None if got is None else got.to_bytes()) == model.get(key), (key, step)
            elif op < 0.95:
                assert await store.exists(key) == (key in model)
            else:
                found = [k async for k in store.list_prefix(f"w{w}/")]
                assert found == sorted(model), (w, step)

    async def run() -> None:
        await asyncio.gather(*(worker(w) for w in range(workers)))

    asyncio.run(run())
    expected = sorted(k for model in models for k in model)
    assert store.reader.list_prefix_sync("") == expected
    everything = {k: v for model in models for k, v in model.items()}
    found = store.reader.get_many_sync(list(everything))
    assert [bytes(f) for f in found] == list(everything.values())


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_zarr_sync_api_from_8_threads(kind: str, tmp_path: Path) -> None:
    store, _ = _redirect_store(kind, tmp_path)
    arr = zarr.create_array(store, name="a", shape=(8, 64), chunks=(1, 8), dtype="i4", fill_value=-1)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write_row(row: int) -> None:
        try:
            barrier.wait()
            for round_ in range(5):
                arr[row, :] = np.arange(64, dtype="i4") * (row + 1) + round_
                assert (arr[row, :] == np.arange(64) * (row + 1) + round_).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write_row, args=(r,)) for r in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = np.arange(64)[None, :] * np.arange(1, 9)[:, None] + 4
    assert (zarr.open_array(store, path="a", mode="r")[...] == expected).all()


# -- loads in flight are shared: a zip directory and a policy decision too --------------------------


@pytest.fixture
def zipped(http_server: RangeHTTPServer) -> tuple[RangeHTTPServer, str]:
    name = f"zipconc-{uuid.uuid4().hex}"
    (http_server.root / name).mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(16):
            z.writestr(f"c/{i}", f"member {i}".encode())
    (http_server.root / name / "a.zip").write_bytes(buf.getvalue())
    (http_server.root / name / "m.json").write_text(json.dumps([{"prefix": "", "path": "a.zip|zip:"}]))
    return http_server, f"{http_server.url}{name}/"


def _requests(server: RangeHTTPServer, suffix: str, method: str) -> int:
    return sum(1 for r in server.requests if r.method == method and r.path.endswith(suffix))


def test_a_zip_directory_is_read_once_under_concurrent_first_use(zipped: tuple[RangeHTTPServer, str]) -> None:
    server, url = zipped
    stores = {server.url: {"retry_config": {"max_retries": 0}}}
    reader = kvmap.Reader(f"{url}m.json", stores=stores)
    server.clear_requests()

    async def many() -> list[Any]:
        return await asyncio.gather(*(reader.get(f"c/{i % 16}") for i in range(48)))

    assert asyncio.run(many()) == [f"member {i % 16}".encode() for i in range(48)]
    assert _requests(server, "/m.json", "GET") == 1
    assert _requests(server, "/a.zip", "HEAD") == 1  # the archive's size and identity, once
    size = (server.root / url.removeprefix(server.url) / "a.zip").stat().st_size
    tail = f"bytes={max(0, size - kvmap.zipindex.TAIL_SIZE)}-{size - 1}"
    assert sum(1 for r in server.requests if r.path.endswith("/a.zip") and r.range == tail) == 1

    threaded = kvmap.Reader(f"{url}m.json", stores=stores)
    server.clear_requests()
    barrier = threading.Barrier(8)
    out: list[bytes] = []

    def read(i: int) -> None:
        barrier.wait()
        out.append(bytes(threaded.get_sync(f"c/{i}")))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == sorted(f"member {i}".encode() for i in range(8))
    assert _requests(server, "/m.json", "GET") == 1
    assert _requests(server, "/a.zip", "HEAD") == 1


class _CountingRealPath:
    """The reader's own real-path function, counted: how many times the policy asked the file system."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.lock = inner, 0, threading.Lock()

    def __call__(self, path: str) -> str | None:
        with self.lock:
            self.calls += 1
        return self.inner(path)  # type: ignore[no-any-return]


def test_a_policy_decision_is_made_once_under_concurrent_first_use(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"x")
    (tmp_path / "m.json").write_text(json.dumps([{"key": f"k{i}", "path": "d/x"} for i in range(8)]))
    reader = kvmap.Reader(tmp_path / "m.json")
    counting = _CountingRealPath(reader.chain.policy.realpath)
    reader.chain.policy = Policy(realpath=counting)
    once = kvmap.Reader(tmp_path / "m.json")
    alone = _CountingRealPath(once.chain.policy.realpath)
    once.chain.policy = Policy(realpath=alone)
    assert once.get_sync("k0") == b"x"  # what one decision costs, asked alone
    barrier = threading.Barrier(8)

    def read(i: int) -> None:
        barrier.wait()
        assert reader.get_sync(f"k{i}") == b"x"

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One full decision; a thread that waited for it may still ask for its file's own real path
    # (one lstat: the sibling rule), never for a decision of its own (3 calls each here).
    assert alone.calls <= counting.calls <= alone.calls + 7


# -- batches respect a concurrency limit -----------------------------------------------------------


class _Gauge(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GaugeHandler)
        self.lock = threading.Lock()
        self.now = self.peak = 0


class _GaugeHandler(BaseHTTPRequestHandler):
    server: _Gauge
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class signature)
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.now += 1
            self.server.peak = max(self.server.peak, self.server.now)
        try:
            time.sleep(0.02)  # long enough for the batch's other requests to pile up
            body = self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with self.server.lock:
                self.server.now -= 1


@pytest.fixture
def gauge() -> Iterator[_Gauge]:
    server = _Gauge()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("limit", [4, 16])
def test_a_batch_has_at_most_max_concurrency_requests_in_flight(gauge: _Gauge, limit: int) -> None:
    base = f"http://127.0.0.1:{gauge.server_address[1]}/"
    m = kvmap.Manifest.from_json([{"prefix": "", "path": "objects/"}], url=f"{base}m.json")
    reader = kvmap.Reader(m, max_concurrency=limit)
    keys = [f"k{i}" for i in range(120)]
    found = asyncio.run(reader.get_many(keys))
    assert [bytes(f) for f in found] == [f"/objects/{k}".encode() for k in keys]
    assert 2 <= gauge.peak <= limit


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        kvmap.Reader("memory://x/m.json", max_concurrency=0)
