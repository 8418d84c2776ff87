"""kvmap.httpio against real loopback servers (tests.servers.FaultHTTPServer): no mocks.

``server`` is the origin a source may read; ``other`` is a second origin that redirects point to and that must
never receive a request; ``proxy`` is a third server used only as a forwarding proxy.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import pickle
import random
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmap.errors import KvmapError
from kvmap.httpio import (
    HTTPReadError,
    HTTPSource,
    HTTPTimeoutError,
    RangeNotSatisfiable,
    RedirectRefused,
    TooLarge,
    _parse_humantime,
)
from tests.servers import FaultHTTPServer, redirect_path

MIB = 1024 * 1024
SECRET = "s3cr3t-api-key"
FAST: dict[str, Any] = {  # retries without waiting: tests count requests, not seconds
    "max_retries": 2,
    "backoff": {"init_backoff": datetime.timedelta(milliseconds=1), "max_backoff": datetime.timedelta(milliseconds=2)},
}
NO_RETRY: dict[str, Any] = {"max_retries": 0}
REDIRECTS = (300, 301, 302, 303, 307, 308)
ODD_NAMES = (
    "odd name 100%.bin",
    "[brackets]^|~!$&'()*+,;=:@.bin",
    "\u00e9\u65e5\u672c \u00a0nbsp.bin",
    'a#b?c"d<e>f`g{h}i.bin',
    "back\\slash.bin",
    "%2F%41 already-encoded.bin",
)


# --------------------------------------------------------------------------------------------------------------------
# Servers and data
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("httpio-root")
    rng = random.Random(7)
    (path / "data.bin").write_bytes(rng.randbytes(3 * MIB))
    (path / "medium.bin").write_bytes(rng.randbytes(5000))
    (path / "small.bin").write_bytes(b"0123456789")
    (path / "empty.bin").write_bytes(b"")
    (path / "dir" / "sub").mkdir(parents=True)
    (path / "dir" / "sub" / "file.bin").write_bytes(b"nested")
    for index, name in enumerate(ODD_NAMES):
        (path / name).write_bytes(f"odd file {index}".encode())
    return path


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[FaultHTTPServer]:
    with FaultHTTPServer(root, slow_seconds=3.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultHTTPServer]:
    """The other origin: redirects lead here; it must never be asked for anything."""
    path = tmp_path_factory.mktemp("httpio-other")
    (path / "stolen.bin").write_bytes(b"secret data of another origin")
    with FaultHTTPServer(path) as srv:
        yield srv
        assert srv.requests == [], "a request reached the other origin"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultHTTPServer]:
    """A forwarding proxy, as far as a client can tell: it serves its own small.bin for any absolute-form URL."""
    path = tmp_path_factory.mktemp("httpio-proxy")
    (path / "small.bin").write_bytes(b"via the proxy")
    with FaultHTTPServer(path) as srv:
        yield srv


@pytest.fixture(scope="module")
def source(server: FaultHTTPServer) -> Iterator[HTTPSource]:
    with HTTPSource(
        server.url, client_options={"allow_http": True, "default_headers": {"X-Api-Key": SECRET}}, retry_config=FAST
    ) as src:
        yield src


def make(server: FaultHTTPServer, retry: dict[str, Any] | None = None, **options: Any) -> HTTPSource:
    return HTTPSource(server.url, client_options={"allow_http": True, **options}, retry_config=retry or FAST)


def data(root: Path, name: str) -> bytes:
    return (root / name).read_bytes()


def paths(server: FaultHTTPServer) -> list[str]:
    return [request.path for request in server.requests]


def one_line(error: BaseException) -> str:
    text = str(error)
    assert not set(text) & {"\n", "\r"}, text
    return text


# --------------------------------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------------------------------


def test_head_sizes_and_absent(source: HTTPSource, server: FaultHTTPServer, root: Path) -> None:
    assert source.head("data.bin") == 3 * MIB
    assert source.head("small.bin") == 10
    assert source.head("empty.bin") == 0
    assert source.head("dir/sub/file.bin") == 6
    assert source.head("missing.bin") is None
    assert source.head("status-404/x") is None
    assert source.head("status-410/x") is None
    assert all(request.method == "HEAD" for request in server.requests)


def test_get_whole_ranges_suffix_open_ended(source: HTTPSource, server: FaultHTTPServer, root: Path) -> None:
    small, big = data(root, "small.bin"), data(root, "data.bin")
    server.clear_requests()
    assert source.get("small.bin") == small
    assert source.get("data.bin") == big
    assert source.get("empty.bin") == b""
    assert source.get("small.bin", 2, 5) == b"234"
    assert source.get("small.bin", 0, 1) == b"0"
    assert source.get("small.bin", 7) == b"789"
    assert source.get("small.bin", suffix=3) == b"789"
    assert source.get("small.bin", suffix=30) == small  # a suffix longer than the object: all of it
    assert source.get("small.bin", 8, 100) == b"89"  # past the end: shorter, as obstore's get_range
    assert source.get("data.bin", MIB, MIB + 5) == big[MIB : MIB + 5]
    assert source.get("missing.bin") is None
    assert source.get("missing.bin", 1, 2) is None
    assert source.get("status-410/x") is None
    assert [(r.path, r.range) for r in server.requests] == [
        ("/small.bin", None),
        ("/data.bin", None),
        ("/empty.bin", None),
        ("/small.bin", "bytes=2-4"),
        ("/small.bin", "bytes=0-0"),
        ("/small.bin", "bytes=7-"),
        ("/small.bin", "bytes=-3"),
        ("/small.bin", "bytes=-30"),
        ("/small.bin", "bytes=8-99"),
        ("/data.bin", f"bytes={MIB}-{MIB + 4}"),
        ("/missing.bin", None),
        ("/missing.bin", "bytes=1-1"),
        ("/status-410/x", None),
    ]


def test_invalid_arguments(source: HTTPSource) -> None:
    for kwargs in (
        {"start": 5, "end": 5},
        {"start": 5, "end": 3},
        {"start": -1},
        {"suffix": 0},
        {"suffix": -2},
        {"start": 1, "suffix": 2},
        {"end": 4, "suffix": 2},
        {"limit": -1},
        {"start": True},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 (each message differs; the type is the contract)
            source.get("small.bin", **kwargs)
    with pytest.raises(ValueError, match="length"):
        source.get_ranges("small.bin", [0, 1], [2])
    with pytest.raises(ValueError, match="invalid range"):
        source.get_ranges("small.bin", [0, 5], [2, 5])  # an empty range, as obstore refuses


def test_unsatisfiable_ranges(source: HTTPSource) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        source.get("small.bin", 10)
    assert info.value.status == 416
    assert info.value.size == 10
    assert info.value.range == "bytes=10-"
    assert one_line(info.value).startswith("HTTP 416 Range Not Satisfiable for http://")
    with pytest.raises(RangeNotSatisfiable):
        source.get("small.bin", 50, 60)
    with pytest.raises(RangeNotSatisfiable):
        source.get("empty.bin", suffix=4)
    with pytest.raises(RangeNotSatisfiable):
        source.get("status-416/x")


FILES = {"small.bin": 10, "medium.bin": 5000, "empty.bin": 0}


def expected(content: bytes, start: int, end: int | None, suffix: int | None) -> bytes | None:
    """What a get should return; None when the range selects nothing (RangeNotSatisfiable)."""
    if suffix is not None:
        return content[-suffix:] if content else None
    if start == 0 and end is None:
        return content
    if start >= len(content):
        return None
    return content[start:end]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, int, int | None, int | None, int | None]:
    name = draw(st.sampled_from(sorted(FILES)))
    prefix = draw(st.sampled_from(["", "ignore-range/", "no-length/", "chunked/"]))
    size = FILES[name]
    kind = draw(st.sampled_from(["whole", "range", "open", "suffix"]))
    start, end, suffix = 0, None, None
    if kind == "range":
        start = draw(st.integers(0, size + 3))
        end = start + draw(st.integers(1, size + 3))
    elif kind == "open":
        start = draw(st.integers(1, size + 3))
    elif kind == "suffix":
        suffix = draw(st.integers(1, size + 3))
    limit = draw(st.none() | st.integers(0, size + 2))
    return prefix, name, start, end, suffix, limit


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_get_matches_slicing(
    source: HTTPSource, root: Path, request: tuple[str, str, int, int | None, int | None, int | None]
) -> None:
    """Any range, against servers that honour Range, ignore it, send no length or chunk the body, with or without
    a limit: the bytes are the file's slice, or the right error."""
    prefix, name, start, end, suffix, limit = request
    want = expected(data(root, name), start, end, suffix)
    if want is None:
        with pytest.raises(RangeNotSatisfiable):
            source.get(prefix + name, start, end, suffix, limit=limit)
    elif limit is not None and len(want) > limit:
        with pytest.raises(TooLarge) as info:
            source.get(prefix + name, start, end, suffix, limit=limit)
        assert info.value.limit == limit
        assert info.value.size in (None, len(want))
    else:
        assert source.get(prefix + name, start, end, suffix, limit=limit) == want


def test_server_ignoring_range_is_sliced(source: HTTPSource, server: FaultHTTPServer, root: Path) -> None:
    big = data(root, "data.bin")
    server.clear_requests()
    assert source.get("ignore-range/data.bin", 5, 10) == big[5:10]
    assert source.get("ignore-range/data.bin", 2 * MIB) == big[2 * MIB :]
    assert source.get("ignore-range/data.bin", suffix=100) == big[-100:]
    assert source.get("chunked/data.bin", suffix=100) == big[-100:]  # no size: the tail is kept while reading
    assert source.get("no-length/data.bin", 2 * MIB + 1, 2 * MIB + 9) == big[2 * MIB + 1 : 2 * MIB + 9]
    assert source.get_ranges("ignore-range/data.bin", [3, 2 * MIB], [9, 2 * MIB + 4]) == [
        big[3:9],
        big[2 * MIB : 2 * MIB + 4],
    ]
    assert len(server.requests) == 7  # one request each: slicing, not retrying


def test_wrong_content_range_raises(source: HTTPSource, server: FaultHTTPServer) -> None:
    server.clear_requests()
    with pytest.raises(HTTPReadError, match="not the range asked for") as info:
        source.get("wrong-range/small.bin", 2, 5)
    assert not isinstance(info.value, RangeNotSatisfiable | TooLarge)
    one_line(info.value)
    assert len(server.requests) == 1  # not retried


# --------------------------------------------------------------------------------------------------------------------
# get_ranges and coalescing
# --------------------------------------------------------------------------------------------------------------------


def test_get_ranges_coalesces_like_obstore(source: HTTPSource, server: FaultHTTPServer, root: Path) -> None:
    big = data(root, "data.bin")
    cases = [
        ([0, 10 + MIB], [10, 20 + MIB], ["bytes=0-1048595"]),  # exactly 1 MiB apart: one request
        ([0, 11 + MIB], [10, 21 + MIB], ["bytes=0-9", "bytes=1048587-1048596"]),  # one byte more: two
        ([3 * MIB - 5, 0, 100], [3 * MIB, 10, 200], ["bytes=0-199", f"bytes={3 * MIB - 5}-{3 * MIB - 1}"]),
        ([0, 5, 2], [10, 8, 4], ["bytes=0-9"]),  # overlapping and nested
        ([0, 2 * MIB + 1], [1, 2 * MIB + 2], ["bytes=0-0", f"bytes={2 * MIB + 1}-{2 * MIB + 1}"]),
    ]
    store = server.store()
    for starts, ends, headers in cases:
        server.clear_requests()
        got = source.get_ranges("data.bin", starts, ends)
        assert got == [big[s:e] for s, e in zip(starts, ends, strict=True)]
        assert sorted(r.range or "" for r in server.requests) == sorted(headers)
        server.clear_requests()
        assert [bytes(b) for b in obstore.get_ranges(store, "data.bin", starts=starts, ends=ends)] == got
        assert sorted(r.range or "" for r in server.requests) == sorted(headers)  # the same requests as obstore
    server.clear_requests()
    assert source.get_ranges("data.bin", [], []) == []
    assert server.requests == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, 3 * MIB - 1), st.integers(1, MIB // 2)), max_size=6))
def test_get_ranges_matches_obstore(
    source: HTTPSource, server: FaultHTTPServer, root: Path, ranges: list[tuple[int, int]]
) -> None:
    big = data(root, "data.bin")
    starts = [start for start, _ in ranges]
    ends = [start + length for start, length in ranges]
    server.clear_requests()
    got = source.get_ranges("data.bin", starts, ends)
    ours = sorted(r.range or "" for r in server.requests)
    assert got == [big[s:e] for s, e in zip(starts, ends, strict=True)]
    server.clear_requests()
    theirs = obstore.get_ranges(server.store(), "data.bin", starts=starts, ends=ends)
    assert [bytes(b) for b in theirs] == got
    assert sorted(r.range or "" for r in server.requests) == ours


def test_get_ranges_past_the_end(source: HTTPSource, root: Path) -> None:
    assert source.get_ranges("small.bin", [0, 5], [3, 20]) == [b"012", b"56789"]  # shorter, as obstore
    with pytest.raises(RangeNotSatisfiable):
        source.get_ranges("small.bin", [0, 10], [3, 12])  # starts at the end: selects nothing
    with pytest.raises(RangeNotSatisfiable):
        source.get_ranges("small.bin", [20], [30])
    with pytest.raises(HTTPReadError) as info:
        source.get_ranges("missing.bin", [0], [1])
    assert info.value.status == 404


async def test_async_twins(source: HTTPSource, root: Path) -> None:
    big = data(root, "data.bin")
    assert await source.head_async("data.bin") == 3 * MIB
    assert await source.head_async("missing.bin") is None
    assert await source.get_async("small.bin", 2, 4) == b"23"
    assert await source.get_async("small.bin", suffix=2, limit=2) == b"89"
    assert await source.get_async("missing.bin") is None
    with pytest.raises(TooLarge):
        await source.get_async("small.bin", limit=3)
    starts, ends = [0, 2 * MIB, 5, 3 * MIB - 1], [4, 2 * MIB + 3, 9, 3 * MIB]
    wanted = [big[s:e] for s, e in zip(starts, ends, strict=True)]
    assert await source.get_ranges_async("data.bin", starts, ends) == wanted
    assert await source.get_ranges_async("data.bin", [], []) == []
    results = await asyncio.gather(*(source.get_async("data.bin", i * 1000, i * 1000 + 10) for i in range(64)))
    assert results == [big[i * 1000 : i * 1000 + 10] for i in range(64)]


def test_thread_safety_smoke(source: HTTPSource, root: Path) -> None:
    big = data(root, "data.bin")
    failures: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        try:
            for _ in range(50):
                start = rng.randrange(3 * MIB - 100)
                length = rng.randint(1, 100)
                assert source.get("data.bin", start, start + length) == big[start : start + length]
        except BaseException as error:  # reported below, on the test's thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --------------------------------------------------------------------------------------------------------------------
# Redirects: never followed
# --------------------------------------------------------------------------------------------------------------------


def _read(source: HTTPSource, op: str, path: str) -> Any:
    if op == "head":
        return source.head(path)
    if op == "get":
        return source.get(path, 0, 4)
    return source.get_ranges(path, [0, 5], [2, 7])


async def _read_async(source: HTTPSource, op: str, path: str) -> Any:
    if op == "head":
        return await source.head_async(path)
    if op == "get":
        return await source.get_async(path)
    return await source.get_ranges_async(path, [0, 5], [2, 7])


@pytest.mark.parametrize("op", ["head", "get", "get_ranges"])
@pytest.mark.parametrize("status", REDIRECTS)
def test_redirect_to_other_origin_refused(
    source: HTTPSource, server: FaultHTTPServer, other: FaultHTTPServer, status: int, op: str
) -> None:
    path = redirect_path(status, other.url + "stolen.bin")
    server.clear_requests()
    with pytest.raises(RedirectRefused) as info:
        _read(source, op, path)
    error = info.value
    assert error.status == status
    assert error.url == source.url(path)
    assert error.location == other.url + "stolen.bin"
    assert one_line(error) == (
        f"refused to follow a redirect (HTTP {status}) from {error.url} to {other.url}stolen.bin: "
        "kvmap never follows redirects; name the final URL in the manifest"
    )
    assert len(server.requests) == 1  # not retried either
    assert server.header_log[0][1]["x-api-key"] == SECRET  # the key went to its own origin...
    assert other.requests == []
    assert other.header_log == []


@pytest.mark.parametrize("op", ["head", "get", "get_ranges"])
@pytest.mark.parametrize("status", REDIRECTS)
async def test_redirect_refused_async(
    source: HTTPSource, server: FaultHTTPServer, other: FaultHTTPServer, status: int, op: str
) -> None:
    with pytest.raises(RedirectRefused) as info:
        await _read_async(source, op, redirect_path(status, other.url + "stolen.bin"))
    assert info.value.location == other.url + "stolen.bin"
    assert other.requests == []


@pytest.mark.parametrize("status", REDIRECTS)
def test_same_origin_redirects_refused_too(source: HTTPSource, server: FaultHTTPServer, status: int) -> None:
    for location, resolved in [
        (server.url + "small.bin", server.url + "small.bin"),  # absolute, to a file that exists
        ("/small.bin", server.url + "small.bin"),  # an absolute path
        ("../small.bin", server.url + "small.bin"),  # relative: resolved against the URL asked for
        ("small.bin", server.url + f"redirect-{status}/small.bin"),
    ]:
        path = redirect_path(status, location)
        server.clear_requests()
        with pytest.raises(RedirectRefused) as info:
            source.get(path)
        assert info.value.location == resolved
        assert paths(server) == ["/" + path]  # the target was never asked for


def test_redirect_without_location(source: HTTPSource) -> None:
    with pytest.raises(RedirectRefused) as info:
        source.head(redirect_path(302, None))
    assert info.value.location is None
    assert "without a Location header" in one_line(info.value)


# --------------------------------------------------------------------------------------------------------------------
# Errors and retries
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_statuses_retried_then_raised(source: HTTPSource, server: FaultHTTPServer, status: int) -> None:
    server.clear_requests()
    with pytest.raises(HTTPReadError) as info:
        source.get(f"status-{status}/x")
    assert type(info.value) is HTTPReadError
    assert info.value.status == status
    assert one_line(info.value).startswith(f"HTTP {status} ")
    assert f"for {server.url}status-{status}/x" in str(info.value)
    assert len(server.requests) == 3  # max_retries=2


def test_retry_then_success(source: HTTPSource, server: FaultHTTPServer) -> None:
    server.clear_requests()
    assert source.get("flaky-2-503/small.bin", 1, 3) == b"12"
    assert source.head("flaky-1-500/small.bin") == 10
    assert len(server.requests) == 5


def test_no_retries(server: FaultHTTPServer) -> None:
    server.clear_requests()
    with pytest.raises(HTTPReadError) as info:
        make(server, NO_RETRY).get("status-500/x")
    assert one_line(info.value) == f"HTTP 500 Internal Server Error for {server.url}status-500/x"
    assert len(server.requests) == 1


def test_retry_timeout_bounds_retries(server: FaultHTTPServer) -> None:
    retry = {"max_retries": 1000, "retry_timeout": "30ms", "backoff": {"init_backoff": "10ms", "max_backoff": "20ms"}}
    server.clear_requests()
    with pytest.raises(HTTPReadError, match="gave up after"):
        make(server, retry).get("status-503/x")
    assert 2 <= len(server.requests) < 1000


@pytest.mark.parametrize(("status", "phrase"), [(401, "Unauthorized"), (403, "Forbidden"), (400, "Bad Request")])
def test_client_errors_not_retried(source: HTTPSource, server: FaultHTTPServer, status: int, phrase: str) -> None:
    server.clear_requests()
    with pytest.raises(HTTPReadError) as info:
        source.get(f"status-{status}/x")
    assert one_line(info.value) == f"HTTP {status} {phrase} for {server.url}status-{status}/x"
    assert info.value.status == status
    with pytest.raises(HTTPReadError, match=str(status)):
        source.head(f"status-{status}/x")
    assert len(server.requests) == 2


def test_unexpected_statuses(source: HTTPSource) -> None:
    with pytest.raises(HTTPReadError, match="HTTP 204"):
        source.get("status-204/x")
    with pytest.raises(HTTPReadError, match=r"HTTP 206 .* asked for no range"):
        source.get("status-206/x")


def test_connection_refused(root: Path) -> None:
    with FaultHTTPServer(root) as gone:
        url = gone.url
    with pytest.raises(HTTPReadError, match="cannot connect") as info:
        HTTPSource(url, client_options={"allow_http": True}, retry_config=FAST).get("small.bin")
    assert info.value.status is None
    assert "gave up after 3 attempts" in one_line(info.value)


@pytest.mark.parametrize("case", ["waiting", "trickling body", "retried"])
def test_timeouts(server: FaultHTTPServer, case: str) -> None:
    """The one timing test: the server waits 3 s (slow_seconds); the client's timeout is 200 ms."""
    path = "trickle/medium.bin" if case == "trickling body" else "slow/small.bin"
    source = make(server, FAST if case == "retried" else NO_RETRY, timeout="200ms")
    server.clear_requests()
    began = time.monotonic()
    with pytest.raises(HTTPTimeoutError) as info:
        source.get(path)
    took = time.monotonic() - began
    assert isinstance(info.value, TimeoutError)
    assert info.value.status is None
    assert "timed out" in one_line(info.value)
    assert len(server.requests) == (3 if case == "retried" else 1)  # timeouts are retried (as in obstore)
    assert took < (2.5 if case == "retried" else 1.5)  # far less than the server's 3 s


def test_truncated_body_raises(source: HTTPSource, server: FaultHTTPServer, root: Path) -> None:
    """Content-Length larger than the body (then the connection closes): never short bytes."""
    server.clear_requests()
    with pytest.raises(HTTPReadError, match="ended early") as info:
        make(server, NO_RETRY).get("short-body/medium.bin")
    assert "2500 bytes, 2500 more were expected" in one_line(info.value)
    assert len(server.requests) == 1
    server.clear_requests()
    with pytest.raises(HTTPReadError, match=r"ended early .*gave up after 3 attempts"):
        source.get("short-body/data.bin", 100, 200)  # a dropped connection is retried
    assert len(server.requests) == 3
    with pytest.raises(HTTPReadError, match="ended early"):
        source.get_ranges("short-body/data.bin", [0, 10], [5, 20])
    assert source.get("small.bin") == data(root, "small.bin")  # the pool recovers


def test_content_length_smaller_than_body(source: HTTPSource, root: Path) -> None:
    """A lying-small Content-Length ends the body (HTTP framing): no more bytes are read, nothing past a limit."""
    medium = data(root, "medium.bin")
    assert source.get("long-body/medium.bin") == medium[:2500]
    assert source.get("long-body/medium.bin", limit=2500) == medium[:2500]
    with pytest.raises(HTTPReadError, match="does not match its Content-Range"):
        source.get("long-body/medium.bin", 0, 1000)  # a 206 whose Content-Length and Content-Range disagree
    assert source.get("small.bin") == data(root, "small.bin")


# --------------------------------------------------------------------------------------------------------------------
# limit
# --------------------------------------------------------------------------------------------------------------------


def test_limit_by_declared_size_before_the_body(server: FaultHTTPServer, root: Path) -> None:
    # The trickling body takes 2.7 s and the timeout is 1 s: TooLarge (not a timeout) shows no body was read.
    slow_body = make(server, NO_RETRY, timeout="1s")
    with pytest.raises(TooLarge) as info:
        slow_body.get("trickle/medium.bin", limit=4999)
    assert (info.value.limit, info.value.size, info.value.url) == (4999, 5000, slow_body.url("trickle/medium.bin"))
    assert one_line(info.value) == (
        f"{slow_body.url('trickle/medium.bin')} is larger than the limit of 4999 bytes (the server says 5000 bytes)"
    )
    with pytest.raises(TooLarge):
        slow_body.get("trickle/medium.bin", 0, 4000, limit=3999)  # by Content-Range
    with pytest.raises(TooLarge):
        slow_body.get("ignore-range/trickle/medium.bin", 0, 4000, limit=3999)  # by the slice of a 200
    assert make(server).get("medium.bin", limit=5000) == data(root, "medium.bin")
    assert make(server).get("medium.bin", 10, 20, limit=10) == data(root, "medium.bin")[10:20]


@pytest.mark.parametrize("prefix", ["no-length/", "chunked/"])
def test_limit_while_streaming(source: HTTPSource, root: Path, prefix: str) -> None:
    medium = data(root, "medium.bin")
    with pytest.raises(TooLarge) as info:
        source.get(prefix + "medium.bin", limit=4999)
    assert info.value.size is None
    assert "the server sent more" in one_line(info.value)
    assert source.get(prefix + "medium.bin", limit=5000) == medium
    with pytest.raises(TooLarge):
        source.get(prefix + "medium.bin", 10, limit=100)
    assert source.get(prefix + "medium.bin", 10, 20, limit=10) == medium[10:20]


def test_limit_bounds_memory(root: Path) -> None:
    """A 3 MiB body without a declared size and a 1000-byte limit: nowhere near 3 MiB is ever held. (The server
    runs in another process, so that only the client's allocations are traced.)"""
    code = (
        "import sys; from tests.servers import FaultHTTPServer; "
        "server = FaultHTTPServer(sys.argv[1]); print(server.url, flush=True); sys.stdin.read(); server.stop()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            url = process.stdout.readline().strip()
            source = HTTPSource(url, client_options={"allow_http": True}, retry_config=NO_RETRY)
            assert source.head("data.bin") == 3 * MIB  # connect (and import lazily) before measuring
            tracemalloc.start()
            try:
                with pytest.raises(TooLarge):
                    source.get("no-length/data.bin", limit=1000)
                with pytest.raises(TooLarge):
                    source.get("chunked/data.bin", limit=1000)
                with pytest.raises(TooLarge):
                    source.get("no-length/data.bin", suffix=2 * MIB, limit=1000)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        finally:
            process.stdin.close()
            process.wait(timeout=10)
    assert peak < 256 * 1024


# --------------------------------------------------------------------------------------------------------------------
# Paths: the same files as obstore.HTTPStore
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*ODD_NAMES, "dir/sub/file.bin"])
def test_path_encoding_matches_obstore(source: HTTPSource, server: FaultHTTPServer, root: Path, name: str) -> None:
    server.clear_requests()
    theirs = bytes(obstore.get(server.store(), name).bytes())
    obstore_target = paths(server)
    server.clear_requests()
    ours = source.get(name)
    assert ours == theirs == data(root, name)
    # The same target, except that urllib3 percent-encodes [ ] ^ | where obstore sends them raw.
    assert [urllib.parse.unquote(p) for p in paths(server)] == [urllib.parse.unquote(p) for p in obstore_target]
    if not set(name) & set("[]^|"):
        assert paths(server) == obstore_target
    assert source.head(name) == obstore.head(server.store(), name)["size"]


@pytest.mark.parametrize("path", ["a//b", "a/./b", "a/../b", "..", ".", "a\x01b", "a\x7fb", "x/\x00", "\ud800"])
def test_paths_obstore_rejects(source: HTTPSource, server: FaultHTTPServer, path: str) -> None:
    with pytest.raises((ValueError, UnicodeError)):  # obstore's own exception for the same path
        obstore.head(server.store(), path)
    server.clear_requests()
    with pytest.raises(ValueError):  # noqa: PT011
        source.get(path)
    assert server.requests == []


def test_leading_and_trailing_slash(source: HTTPSource, server: FaultHTTPServer) -> None:
    assert source.url("/dir/sub/file.bin/") == server.url + "dir/sub/file.bin"
    assert source.url("") == source.url("/") == server.url
    assert source.get("/small.bin") == b"0123456789"


# --------------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------------


def test_durations_known_values() -> None:
    assert _parse_humantime("200ms") == 0.2
    assert _parse_humantime("30s") == 30
    assert _parse_humantime("1 minute") == 60
    assert _parse_humantime("1m 30s") == 90
    assert _parse_humantime("1m30s") == 90
    assert _parse_humantime("2h 37min") == 9420
    assert _parse_humantime("1.5s") == 1.5
    assert _parse_humantime("1.5h") == 5400
    assert _parse_humantime("0") == 0
    assert _parse_humantime("1\u00b5s") == 1e-6
    assert _parse_humantime("1M") == 2_630_016
    for bad in ["", "5", "1.5", "1S", "-1s", "1.0001h", "0.5ns", "1s30", "1 s,", "30 seconds ago"]:
        with pytest.raises(ValueError):  # noqa: PT011
            _parse_humantime(bad)


def _obstore_accepts(value: str) -> bool:
    try:
        obstore.store.HTTPStore.from_url("http://127.0.0.1:1/", client_options={"timeout": value})
    except Exception:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet="0123456789 .smhdwyMnuµkrxS\t", max_size=9))
def test_durations_accepted_exactly_as_obstore(text: str) -> None:
    try:
        _parse_humantime(text)
    except ValueError:
        ours = False
    else:
        ours = True
    assert ours == _obstore_accepts(text), text


def test_client_options(server: FaultHTTPServer) -> None:
    url = server.url
    for options in (
        {"allow_http": "yes", "timeout": datetime.timedelta(seconds=2), "connect_timeout": "1s"},
        {"ALLOW_HTTP": "True", "Timeout": "1 minute"},  # keys case-insensitive, as obstore
        {"allow_http": True, "read_timeout": "5s", "pool_max_idle_per_host": "4", "http1_only": "true"},
        {"allow_http": True, "default_content_type": "x/y", "pool_idle_timeout": "90s", "randomize_addresses": "n"},
        {"allow_http": True, "http2_keep_alive_interval": "1s", "http2_only": "false", "user_agent": "me/1"},
    ):
        assert HTTPSource(url, client_options=options).head("small.bin") == 10
    bad: list[dict[str, Any]] = [
        {"allow_http": True, "timeout": 5},  # obstore takes no bare numbers
        {"allow_http": True, "timeout": 1.5},
        {"allow_http": True, "timeout": "5"},
        {"allow_http": True, "timeout": "0s"},
        {"allow_http": "maybe"},
        {"allow_http": True, "nonsense": "x"},  # obstore: "Invalid key"
        {"allow_http": True, "http2_only": True},
        {"allow_http": True, "pool_max_idle_per_host": "-1"},
        {"allow_http": True, "default_headers": {"bad name": "x"}},
        {"allow_http": True, "default_headers": {"X-A": "x\r\ny"}},
        {"allow_http": True, "default_headers": {"X-A": 1}},
        {"allow_http": True, "user_agent": "a\nb"},
        {"allow_http": True, "root_certificate": "garbage"},
        {"allow_http": True, "proxy_url": "not a url"},
    ]
    for options in bad:
        with pytest.raises(ValueError):  # noqa: PT011
            HTTPSource(url, client_options=options)
    with pytest.raises(ValueError, match="allow_http"):
        HTTPSource(url)


def test_every_obstore_client_key_is_accepted(server: FaultHTTPServer) -> None:
    """The keys of obstore 0.12's ClientConfig (its type stub), with values obstore accepts."""
    values = {
        "allow_http": "true",
        "allow_invalid_certificates": "false",
        "connect_timeout": "5s",
        "default_content_type": "application/octet-stream",
        "default_headers": {"x-a": b"b"},
        "http1_only": "true",
        "http2_keep_alive_interval": "10s",
        "http2_keep_alive_timeout": "10s",
        "http2_keep_alive_while_idle": "true",
        "http2_only": "false",
        "pool_idle_timeout": "30s",
        "pool_max_idle_per_host": "8",
        "proxy_excludes": "127.0.0.1",
        "proxy_url": "http://127.0.0.1:9",
        "randomize_addresses": "true",
        "read_timeout": "10s",
        "timeout": "30s",
        "user_agent": "kvmap-test",
    }
    obstore.store.HTTPStore.from_url(server.url, client_options=values)
    assert HTTPSource(server.url, client_options=values).head("small.bin") == 10  # the proxy is excluded


def test_retry_config() -> None:
    url = "https://example.invalid/"
    HTTPSource(url, retry_config={"max_retries": 0, "retry_timeout": datetime.timedelta(seconds=1), "x": 1})
    HTTPSource(url, retry_config={"backoff": {"init_backoff": "10ms", "max_backoff": "1s", "base": 3, "x": 1}})
    for bad in (
        {"max_retries": "3"},
        {"max_retries": -1},
        {"max_retries": True},
        {"retry_timeout": 3},
        {"backoff": {"base": 0.5}},
        {"backoff": {"init_backoff": 0.1}},
        {"backoff": "fast"},
    ):
        with pytest.raises(ValueError):  # noqa: PT011
            HTTPSource(url, retry_config=bad)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/",
        "http:///",
        "https://h/prefix/",
        "https://h/?q=1",
        "https://h/#f",
        "https://user:pw@h/",
        "https://h:99999/",
        "h:80",
    ],
)
def test_base_url_must_be_an_origin(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        HTTPSource(url, client_options={"allow_http": True})


def test_base_url_normalised() -> None:
    assert HTTPSource("HTTPS://Example.COM").base_url == "https://example.com/"
    assert HTTPSource("https://example.com:8443/").base_url == "https://example.com:8443/"
    assert HTTPSource("https://[::1]:8443/").url("a b") == "https://[::1]:8443/a%20b"


def test_headers_sent(server: FaultHTTPServer) -> None:
    source = make(server, default_headers={"X-Api-Key": b"bytes-key", "X-Other": "o"}, user_agent="agent/1")
    server.clear_requests()
    source.get("small.bin", 1, 2)
    headers = server.header_log[0][1]
    assert headers["x-api-key"] == "bytes-key"
    assert headers["x-other"] == "o"
    assert headers["user-agent"] == "agent/1"
    assert headers["accept-encoding"] == "identity"
    assert headers["range"] == "bytes=1-1"


# --------------------------------------------------------------------------------------------------------------------
# Proxies
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_environment_proxy_used_as_obstore_does(
    server: FaultHTTPServer, proxy: FaultHTTPServer, monkeypatch: Any, name: str
) -> None:
    # obstore (reqwest) reads the proxy from the environment; so does kvmap's client, which replaced it.
    for var in (
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(name, proxy.url)
    proxy.clear_requests()
    assert make(server).get("small.bin") == b"via the proxy"
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", server.url + "small.bin")]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    proxy.clear_requests()
    assert make(server).get("small.bin") == b"0123456789"
    assert proxy.requests == []
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv(name, "http://127.0.0.1:9")  # the options' proxy_url wins over the environment
    assert make(server, proxy_url=proxy.url).get("small.bin") == b"via the proxy"


def test_proxy_url(server: FaultHTTPServer, proxy: FaultHTTPServer, other: FaultHTTPServer) -> None:
    proxy.clear_requests()
    server.clear_requests()
    through = make(server, proxy_url=proxy.url, default_headers={"X-Api-Key": SECRET})
    assert through.get("small.bin") == b"via the proxy"
    assert [(r.method, r.path) for r in proxy.requests] == [("GET", server.url + "small.bin")]  # absolute form
    assert server.requests == []
    with pytest.raises(RedirectRefused):  # the proxy's redirects are refused like any
        through.get(redirect_path(307, other.url + "stolen.bin"))
    proxy.clear_requests()
    direct = make(server, proxy_url=proxy.url, proxy_excludes="localhost, 127.0.0.0/8")
    assert direct.get("small.bin") == b"0123456789"
    assert proxy.requests == []


# --------------------------------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultHTTPServer, str]]:
    """An HTTPS server with a self-signed certificate for 127.0.0.1; yields it and the certificate's PEM."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvmap test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_text(pem)
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    with FaultHTTPServer(root, tls=context) as srv:
        yield srv, pem


def test_tls(tls_server: tuple[FaultHTTPServer, str], other: FaultHTTPServer) -> None:
    server, pem = tls_server
    with pytest.raises(HTTPReadError, match="TLS failed") as info:
        HTTPSource(server.url, retry_config=FAST).get("small.bin")  # self-signed: not trusted by default
    assert "gave up" not in str(info.value)  # a failed verification is not retried
    trusted = HTTPSource(server.url, client_options={"root_certificate": pem}, retry_config=FAST)
    assert trusted.get("small.bin", 2, 4) == b"23"
    insecure = HTTPSource(server.url, client_options={"allow_invalid_certificates": "true"})
    assert insecure.head("small.bin") == 10  # and no InsecureRequestWarning (warnings are errors here)
    with pytest.raises(RedirectRefused):
        trusted.get(redirect_path(301, other.url + "stolen.bin"))


# --------------------------------------------------------------------------------------------------------------------
# Errors and the source as objects
# --------------------------------------------------------------------------------------------------------------------


def test_error_classes_pickle_and_stay_apart_from_kvmap_errors() -> None:
    errors: list[HTTPReadError] = [
        HTTPReadError("HTTP 500 Internal Server Error for http://h/a", url="http://h/a", status=500),
        RedirectRefused("http://h/a", "http://o/b", 302),
        RangeNotSatisfiable("http://h/a", "bytes=5-", 3),
        TooLarge("http://h/a", 10, None, status=200),
        HTTPTimeoutError("timed out reading http://h/a", url="http://h/a"),
    ]
    for error in errors:
        assert isinstance(error, HTTPReadError)
        assert not isinstance(error, KvmapError)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
        one_line(error)
    assert isinstance(errors[-1], TimeoutError)
    multi = HTTPReadError("a\nb\r\n  c", url="u")
    assert str(multi) == "a b c"


def test_source_pickles_and_closes(server: FaultHTTPServer) -> None:
    source = make(server, default_headers={"X-Api-Key": SECRET})
    copy = pickle.loads(pickle.dumps(source))
    assert copy.base_url == source.base_url
    assert copy.get("small.bin", 0, 2) == b"01"
    assert repr(copy) == f"HTTPSource({server.url!r})"
    with copy:
        pass
    with pytest.raises(HTTPReadError, match="closed"):
        copy.get("small.bin")
    copy.close()  # idempotent
    assert source.get("small.bin", 0, 2) == b"01"


def test_module_docstring_states_the_rules() -> None:
    import kvmap.httpio

    doc = kvmap.httpio.__doc__ or ""
    assert "never followed" in doc
    assert "404" in doc
    assert "retried" in doc.lower()
