"""The loopback test servers in tests/servers.py, exercised through obstore and raw HTTP."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import obstore
import pytest
from obstore.exceptions import GenericError, PermissionDeniedError
from obstore.store import HTTPStore

from tests.servers import RangeHTTPServer, RecordedRequest, S3Server

if TYPE_CHECKING:
    from obstore.store import RetryConfig

NO_RETRIES: RetryConfig = {"max_retries": 0}
DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable modulo 256


def unique(prefix: str) -> str:
    """A name no other test uses (the server fixtures are shared by the whole session)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Reply(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def raw(server: RangeHTTPServer, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    """Send one request with http.client, which sends the path exactly as given."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


# --------------------------------------------------------------------------------------------------------------------
# S3Server
# --------------------------------------------------------------------------------------------------------------------


def test_s3_endpoint_is_loopback(s3_server: S3Server) -> None:
    assert s3_server.endpoint == f"http://127.0.0.1:{s3_server.port}"
    assert s3_server.port > 0


def test_s3_put_get_range_list_through_obstore(s3_server: S3Server) -> None:
    bucket = unique("bucket")
    s3_server.create_bucket(bucket)
    store = s3_server.store(bucket)
    obstore.put(store, "dir/a.bin", DATA)
    obstore.put(store, "dir/b.bin", b"bee")
    obstore.put(store, "other.bin", b"")
    assert bytes(obstore.get(store, "dir/a.bin").bytes()) == DATA
    assert bytes(obstore.get_range(store, "dir/a.bin", start=10, end=20)) == DATA[10:20]
    assert bytes(obstore.get_range(store, "dir/a.bin", start=1000, end=2000)) == DATA[1000:]
    assert bytes(obstore.get(store, "dir/a.bin", options={"range": {"suffix": 5}}).bytes()) == DATA[-5:]
    listed = sorted(meta["path"] for batch in obstore.list(store) for meta in batch)
    assert listed == ["dir/a.bin", "dir/b.bin", "other.bin"]
    assert sorted(meta["path"] for batch in obstore.list(store, prefix="dir") for meta in batch) == listed[:2]
    assert obstore.head(store, "dir/a.bin")["size"] == len(DATA)


def test_s3_helper_put_is_visible_to_obstore(s3_server: S3Server) -> None:
    bucket = unique("bucket")
    s3_server.create_bucket(bucket)
    s3_server.create_bucket(bucket)  # idempotent
    s3_server.put(bucket, "a dir/x y+z.bin", b"hello world")
    s3_server.put(bucket, "empty", b"")
    store = s3_server.store(bucket)
    assert bytes(obstore.get(store, "a dir/x y+z.bin").bytes()) == b"hello world"
    assert bytes(obstore.get(store, "empty").bytes()) == b""
    prefixed = s3_server.store(bucket, prefix="a dir")
    assert bytes(obstore.get(prefixed, "x y+z.bin").bytes()) == b"hello world"


def test_s3_missing_key_raises_file_not_found(s3_server: S3Server) -> None:
    bucket = unique("bucket")
    s3_server.create_bucket(bucket)
    store = s3_server.store(bucket, retry_config=NO_RETRIES)
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "missing")
    with pytest.raises(FileNotFoundError):
        obstore.get_range(store, "missing", start=0, end=4)
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "missing")


def test_s3_helper_errors_carry_moto_explanation(s3_server: S3Server) -> None:
    import urllib.error

    with pytest.raises(urllib.error.HTTPError, match="NoSuchBucket") as excinfo:
        s3_server.put(unique("absent"), "k", b"x")
    assert excinfo.value.code == 404
    with pytest.raises(urllib.error.HTTPError, match="InvalidBucketName"):
        s3_server.create_bucket("x")  # too short


def test_s3_server_stop_releases_port_and_threads() -> None:
    before = set(threading.enumerate())
    started = time.perf_counter()
    server = S3Server()
    assert time.perf_counter() - started < 3
    bucket = unique("bucket")
    server.create_bucket(bucket)
    store = server.store(bucket, retry_config=NO_RETRIES)
    obstore.put(store, "k", b"v")
    assert bytes(obstore.get(store, "k").bytes()) == b"v"
    server.stop()
    server.stop()  # idempotent
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


# --------------------------------------------------------------------------------------------------------------------
# RangeHTTPServer through obstore
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def files(http_server: RangeHTTPServer) -> str:
    """A fresh directory under the server root holding file.bin (DATA) and empty.bin; returns its name."""
    name = unique("dir")
    directory = http_server.root / name
    directory.mkdir()
    (directory / "file.bin").write_bytes(DATA)
    (directory / "empty.bin").write_bytes(b"")
    http_server.clear_requests()
    return name


def test_http_url_and_root(http_server: RangeHTTPServer) -> None:
    assert http_server.url == f"http://127.0.0.1:{http_server.port}/"
    assert http_server.root.is_dir()


def test_http_whole_file_range_and_log(http_server: RangeHTTPServer, files: str) -> None:
    store = HTTPStore.from_url(http_server.url, client_options={"allow_http": True}, retry_config=NO_RETRIES)
    path = f"{files}/file.bin"
    assert bytes(obstore.get(store, path).bytes()) == DATA
    assert bytes(obstore.get_range(store, path, start=10, end=20)) == DATA[10:20]
    assert http_server.requests == [
        ("GET", f"/{path}", None),
        ("GET", f"/{path}", "bytes=10-19"),
    ]
    assert http_server.requests[1] == RecordedRequest(method="GET", path=f"/{path}", range="bytes=10-19")


def test_http_suffix_offset_and_past_eof_ranges(http_server: RangeHTTPServer, files: str) -> None:
    store = http_server.store(retry_config=NO_RETRIES)
    path = f"{files}/file.bin"
    assert bytes(obstore.get(store, path, options={"range": {"suffix": 5}}).bytes()) == DATA[-5:]
    assert bytes(obstore.get(store, path, options={"range": {"suffix": 5000}}).bytes()) == DATA
    assert bytes(obstore.get(store, path, options={"range": {"offset": 1000}}).bytes()) == DATA[1000:]
    assert bytes(obstore.get_range(store, path, start=1000, end=5000)) == DATA[1000:]
    assert bytes(obstore.get_range(store, path, start=1023, length=1)) == DATA[1023:]
    assert [r.range for r in http_server.requests] == [
        "bytes=-5",
        "bytes=-5000",
        "bytes=1000-",
        "bytes=1000-4999",
        "bytes=1023-1023",
    ]


def test_http_get_ranges_and_prefixed_store(http_server: RangeHTTPServer, files: str) -> None:
    store = http_server.store(files, retry_config=NO_RETRIES)
    got = obstore.get_ranges(store, "file.bin", starts=[0, 500], ends=[3, 510], coalesce=0)
    assert [bytes(part) for part in got] == [DATA[0:3], DATA[500:510]]
    assert sorted(r.range or "" for r in http_server.requests) == ["bytes=0-2", "bytes=500-509"]


def test_http_head_reports_size_etag_and_mtime(http_server: RangeHTTPServer, files: str) -> None:
    store = http_server.store(retry_config=NO_RETRIES)
    meta = obstore.head(store, f"{files}/file.bin")
    assert meta["size"] == len(DATA)
    assert meta["e_tag"]
    assert abs(meta["last_modified"].timestamp() - (http_server.root / files / "file.bin").stat().st_mtime) < 2
    assert http_server.requests == [("HEAD", f"/{files}/file.bin", None)]
    assert bytes(obstore.get(store, f"{files}/empty.bin").bytes()) == b""


def test_http_missing_file_raises_file_not_found(http_server: RangeHTTPServer, files: str) -> None:
    store = http_server.store(retry_config=NO_RETRIES)
    with pytest.raises(FileNotFoundError):
        obstore.get(store, f"{files}/missing.bin")
    with pytest.raises(FileNotFoundError):
        obstore.get_range(store, f"{files}/missing.bin", start=0, end=3)
    with pytest.raises(FileNotFoundError):
        obstore.head(store, f"{files}/missing.bin")
    with pytest.raises(FileNotFoundError):
        obstore.get(store, files)  # a directory is not served


def test_http_unsatisfiable_range_is_a_generic_error(http_server: RangeHTTPServer, files: str) -> None:
    store = http_server.store(retry_config=NO_RETRIES)
    with pytest.raises(GenericError, match="416"):
        obstore.get_range(store, f"{files}/file.bin", start=len(DATA), end=len(DATA) + 10)
    with pytest.raises(GenericError, match="416"):
        obstore.get(store, f"{files}/file.bin", options={"range": {"offset": len(DATA)}})


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, GenericError),
        (503, GenericError),
        (400, GenericError),
        (403, PermissionDeniedError),
        (404, FileNotFoundError),
        (416, GenericError),
    ],
)
def test_http_injected_status(http_server: RangeHTTPServer, status: int, expected: type[Exception]) -> None:
    store = http_server.store(retry_config=NO_RETRIES)
    http_server.clear_requests()
    with pytest.raises(expected, match=str(status)):
        obstore.get(store, f"status-{status}/any/thing.bin")
    assert http_server.requests == [("GET", f"/status-{status}/any/thing.bin", None)]


def test_http_server_errors_are_retried_and_counted(http_server: RangeHTTPServer) -> None:
    retry: RetryConfig = {
        "max_retries": 2,
        "backoff": {"init_backoff": timedelta(milliseconds=1), "max_backoff": timedelta(milliseconds=5)},
    }
    store = http_server.store(retry_config=retry)
    http_server.clear_requests()
    with pytest.raises(GenericError, match="after 2 retries"):
        obstore.get_range(store, "status-500/x.bin", start=0, end=4)
    assert http_server.requests == [("GET", "/status-500/x.bin", "bytes=0-3")] * 3
    http_server.clear_requests()
    with pytest.raises(PermissionDeniedError):
        obstore.get(store, "status-403/x.bin")
    assert len(http_server.requests) == 1  # 4xx is not retried


def test_http_connection_refused_is_a_generic_error() -> None:
    store = HTTPStore.from_url(
        f"http://127.0.0.1:{free_port()}/", client_options={"allow_http": True}, retry_config=NO_RETRIES
    )
    with pytest.raises(GenericError, match="error sending request"):
        obstore.get(store, "x.bin")


def test_http_store_without_allow_http_fails(http_server: RangeHTTPServer) -> None:
    store = HTTPStore.from_url(http_server.url, retry_config=NO_RETRIES)
    with pytest.raises(GenericError, match="builder error"):
        obstore.get(store, "x.bin")


def test_http_slow_path_delays_then_answers(
    http_server: RangeHTTPServer, files: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server, "slow_seconds", 0.3)
    store = http_server.store(retry_config=NO_RETRIES)
    started = time.perf_counter()
    assert bytes(obstore.get_range(store, f"slow/{files}/file.bin", start=1, end=3)) == DATA[1:3]
    assert time.perf_counter() - started >= 0.3
    with pytest.raises(PermissionDeniedError):
        obstore.get(store, "slow/status-403/x")


def test_http_slow_path_times_out_the_client(
    http_server: RangeHTTPServer, files: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server, "slow_seconds", 1.0)
    store = http_server.store(retry_config=NO_RETRIES, client_options={"timeout": "100ms"})
    with pytest.raises(GenericError):
        obstore.get(store, f"slow/{files}/file.bin")


# --------------------------------------------------------------------------------------------------------------------
# RangeHTTPServer at the HTTP level
# --------------------------------------------------------------------------------------------------------------------


def test_raw_200_headers(http_server: RangeHTTPServer, files: str) -> None:
    response = raw(http_server, "GET", f"/{files}/file.bin")
    assert response.status == 200
    assert response.body == DATA
    assert response.headers.get("Content-Length") == str(len(DATA))
    assert response.headers.get("Accept-Ranges") == "bytes"
    assert response.headers.get("ETag", "").startswith('"')
    assert response.headers.get("Last-Modified", "").endswith("GMT")
    assert response.headers.get("Content-Range") is None


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, 1023),
        ("bytes=1000-99999", 1000, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=-99999", 0, 1023),
    ],
)
def test_raw_206(http_server: RangeHTTPServer, files: str, header: str, first: int, last: int) -> None:
    response = raw(http_server, "GET", f"/{files}/file.bin", {"Range": header})
    assert response.status == 206
    assert response.body == DATA[first : last + 1]
    assert response.headers.get("Content-Range") == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers.get("Content-Length") == str(last - first + 1)
    head = raw(http_server, "HEAD", f"/{files}/file.bin", {"Range": header})
    assert (head.status, head.body) == (206, b"")
    assert head.headers.get("Content-Length") == str(last - first + 1)


@pytest.mark.parametrize(
    ("name", "header"),
    [("file.bin", "bytes=1024-"), ("file.bin", "bytes=5000-6000"), ("file.bin", "bytes=-0"), ("empty.bin", "bytes=0-")],
)
def test_raw_416(http_server: RangeHTTPServer, files: str, name: str, header: str) -> None:
    response = raw(http_server, "GET", f"/{files}/{name}", {"Range": header})
    assert (response.status, response.body) == (416, b"")
    size = (http_server.root / files / name).stat().st_size
    assert response.headers.get("Content-Range") == f"bytes */{size}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-3", "bytes=-", "items=0-1", "bytes=a-b"])
def test_raw_ignored_range_headers_give_200(http_server: RangeHTTPServer, files: str, header: str) -> None:
    response = raw(http_server, "GET", f"/{files}/file.bin", {"Range": header})
    assert (response.status, response.body) == (200, DATA)


def test_raw_head_without_range(http_server: RangeHTTPServer, files: str) -> None:
    response = raw(http_server, "HEAD", f"/{files}/file.bin")
    assert (response.status, response.body) == (200, b"")
    assert response.headers.get("Content-Length") == str(len(DATA))


def test_raw_other_methods_are_501_and_logged(http_server: RangeHTTPServer) -> None:
    http_server.clear_requests()
    assert raw(http_server, "PUT", "/x.bin").status == 501
    assert raw(http_server, "PROPFIND", "/").status == 501
    assert [r.method for r in http_server.requests] == ["PUT", "PROPFIND"]


def test_raw_percent_encoded_paths(http_server: RangeHTTPServer, files: str) -> None:
    (http_server.root / files / "a b.bin").write_bytes(b"spaced")
    assert raw(http_server, "GET", f"/{files}/a%20b.bin").body == b"spaced"
    assert raw(http_server, "GET", f"/{files}/file.bin?query=1").status == 200


def test_raw_path_traversal_is_refused(http_server: RangeHTTPServer, files: str, tmp_path: Path) -> None:
    secret = http_server.root.parent / unique("secret")
    secret.write_bytes(b"secret")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside")
    (http_server.root / files / "link.bin").symlink_to(outside)
    for path in [
        f"/../{secret.name}",
        f"/{files}/../../{secret.name}",
        f"/%2e%2e/{secret.name}",
        f"/{files}/%2E%2E/%2e%2e/{secret.name}",
        f"/..%2f{secret.name}",
        f"/{files}/link.bin",
        str(outside),
        f"/{files}/file.bin%00",
    ]:
        response = raw(http_server, "GET", path)
        assert (response.status, response.body) == (404, b""), path


def test_range_server_stop_releases_port_threads_and_slow_requests(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(DATA)
    before = set(threading.enumerate())
    started = time.perf_counter()
    server = RangeHTTPServer(tmp_path, slow_seconds=30)
    assert time.perf_counter() - started < 3
    store = server.store(retry_config=NO_RETRIES)
    assert bytes(obstore.get_range(store, "f.bin", start=0, end=4)) == DATA[:4]  # leaves a keep-alive connection
    errors: list[BaseException] = []

    def slow_get() -> None:
        try:
            obstore.get(store, "slow/f.bin")
        except Exception as error:
            errors.append(error)

    client = threading.Thread(target=slow_get)
    client.start()
    deadline = time.monotonic() + 5
    while len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests[-1] == ("GET", "/slow/f.bin", None)
    stopping = time.perf_counter()
    server.stop()
    assert time.perf_counter() - stopping < 2  # the 30 s wait was cut short
    server.stop()  # idempotent
    client.join(timeout=10)
    assert not client.is_alive()
    assert len(errors) == 1  # the dropped request failed on the client side
    assert set(threading.enumerate()) <= before
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


def test_range_server_rejects_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RangeHTTPServer(tmp_path / "absent")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        RangeHTTPServer(tmp_path / "file")


def test_context_managers(tmp_path: Path) -> None:
    with RangeHTTPServer(tmp_path) as server:
        assert raw(server, "GET", "/missing").status == 404
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
