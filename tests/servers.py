"""Real loopback servers for tests (no mocks) and session-scoped pytest fixtures.

* :class:`S3Server` runs moto's stand-alone S3-compatible server in this process on ``127.0.0.1``.
* :class:`RangeHTTPServer` serves a directory over HTTP/1.1 with single byte-range support and
  fault injection (``/status-NNN/...`` and ``/slow/...``).

Both servers bind an ephemeral loopback port, start serving before their constructor returns, and release
every thread and socket they own when :meth:`stop` returns.  The fixtures :func:`s3_server` and
:func:`http_server` are meant to be imported into ``tests/conftest.py`` (or a test module)::

    from tests.servers import http_server, s3_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import pytest
from obstore.store import HTTPStore, S3Store

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer
    from obstore.store import ClientConfig, RetryConfig

__all__ = [
    "RangeHTTPServer",
    "RecordedRequest",
    "S3Server",
    "http_server",
    "s3_server",
]

# urllib must never route loopback traffic through a proxy configured in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TIMEOUT_SECONDS = 10.0


# --------------------------------------------------------------------------------------------------------------------
# S3 (moto)
# --------------------------------------------------------------------------------------------------------------------


class S3Server:
    """moto's stand-alone S3-compatible server, running in this process on loopback.

    Promises:

    * The server is listening on ``endpoint`` (``http://127.0.0.1:PORT``) when the constructor returns.
    * No credentials or ``AWS_*`` environment variables are needed: moto does not check signatures, and
      :meth:`store` passes dummy credentials, the region and the endpoint explicitly.
    * :meth:`stop` shuts the server down, closes its listening socket and joins its threads; it is idempotent.

    moto keeps its state in process-wide in-memory backends: buckets are shared by every ``S3Server`` in the
    process, and are wiped by anything that resets moto (for example leaving a ``moto.mock_aws`` context).
    Tests sharing the session fixture should use bucket names unique to the test.
    """

    ACCESS_KEY_ID = "testing"
    SECRET_ACCESS_KEY = "testing"
    REGION = "us-east-1"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start the server on ``host:port``; port 0 picks a free ephemeral port."""
        # werkzeug logs one INFO line per request to the "werkzeug" logger and, on first use, adds a
        # stderr handler when it finds none.  A NullHandler keeps it quiet while records still propagate
        # (pytest captures them and shows them for failing tests).
        werkzeug_logger = logging.getLogger("werkzeug")
        if not werkzeug_logger.handlers:
            werkzeug_logger.addHandler(logging.NullHandler())
        from moto.server import ThreadedMotoServer  # imported on first use: moto takes ~0.3 s to import

        self._moto: ThreadedMotoServer = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self._moto.start()
        self._stopped = False
        # Every request, recorded by a WSGI layer around moto's application (werkzeug's server
        # calls ``server.app`` per request): what tests count requests and ranges with.
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        server = self._moto._server
        assert server is not None
        moto_app = server.app

        def recording(environ: dict[str, Any], start_response: Any) -> Any:
            path = environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
            with self._requests_lock:
                self._requests.append(RecordedRequest(environ["REQUEST_METHOD"], path, environ.get("HTTP_RANGE")))
            return moto_app(environ, start_response)

        server.app = recording
        bound_host, bound_port = self._moto.get_host_and_port()
        self.host: str = bound_host
        """The address the server is bound to."""
        self.port: int = bound_port
        """The TCP port the server is bound to (never 0)."""
        self.endpoint: str = f"http://{bound_host}:{bound_port}"
        """Base URL of the S3 API, without a trailing slash, e.g. ``http://127.0.0.1:45678``."""

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far (method, path with query, Range header)."""
        with self._requests_lock:
            return list(self._requests)

    def requests_for(self, bucket: str) -> list[RecordedRequest]:
        """The requests that named ``bucket`` (path-style), oldest first."""
        return [r for r in self.requests if r.path == f"/{bucket}" or r.path.startswith(f"/{bucket}/")]

    def kvmap_stores(self, **options: Any) -> tuple[str, dict[str, dict[str, Any]]]:
        """The ``s3+http://`` root URL of this server, and the store options that reach it (kvmap's
        ``stores=``: dummy credentials and region, plus ``options``)."""
        root = self.endpoint.replace("http://", "s3+http://") + "/"
        base = {"access_key_id": self.ACCESS_KEY_ID, "secret_access_key": self.SECRET_ACCESS_KEY, "region": self.REGION}
        return root, {root: {**base, **options}}

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` with an unsigned path-style ``PUT {endpoint}/{name}``.

        Idempotent: re-creating a bucket that already exists succeeds (as in AWS ``us-east-1``).
        Raises ``urllib.error.HTTPError`` if moto rejects the request (e.g. an invalid bucket name).
        """
        self._request("PUT", f"/{urllib.parse.quote(name, safe='')}", b"")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` in ``bucket`` (which must exist) with an unsigned path-style ``PUT``.

        Raises ``urllib.error.HTTPError`` if moto rejects the request (e.g. ``NoSuchBucket``).
        """
        self._request("PUT", f"/{urllib.parse.quote(bucket, safe='')}/{urllib.parse.quote(key, safe='/')}", data)

    def store(
        self,
        bucket: str,
        *,
        prefix: str | None = None,
        retry_config: RetryConfig | None = None,
        client_options: ClientConfig | None = None,
    ) -> S3Store:
        """Return an obstore ``S3Store`` for ``bucket`` on this server.

        Uses path-style requests, plain HTTP, dummy credentials and region ``us-east-1``, all passed
        explicitly; ``client_options`` are merged over ``{"allow_http": True}``.  The bucket is not created.
        (obstore still reads ``AWS_*`` environment variables for settings not passed here.)

        ``allow_http`` goes in ``client_options``: obstore 0.12 accepts it as an ``S3Store`` keyword too, but
        then the store's ``config`` getter panics (``pyo3_runtime.PanicException``).
        """
        options: ClientConfig = {"allow_http": True}
        if client_options:
            options.update(client_options)
        return S3Store(
            bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            access_key_id=self.ACCESS_KEY_ID,
            secret_access_key=self.SECRET_ACCESS_KEY,
            region=self.REGION,
            virtual_hosted_style_request=False,
            client_options=options,
            retry_config=retry_config,
        )

    def stop(self) -> None:
        """Stop serving, close the listening socket and join the server threads.  Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        # ThreadedMotoServer.stop() shuts werkzeug's serve_forever() down, whose ``finally`` closes the
        # listening socket and joins the request threads (werkzeug never keeps connections alive).
        self._moto.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"S3Server(endpoint={self.endpoint!r}, stopped={self._stopped})"

    def _request(self, method: str, path: str, data: bytes) -> None:
        # An explicit Content-Type matters: with urllib's default (application/x-www-form-urlencoded)
        # werkzeug parses the body as a form and moto stores an empty object.
        request = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/octet-stream"},
        )
        try:
            with _OPENER.open(request, timeout=_TIMEOUT_SECONDS) as response:
                response.read()
        except urllib.error.HTTPError as error:
            # Read and close the error response here (no unclosed socket) and keep moto's XML explanation.
            with error:
                detail = error.read().decode("utf-8", "replace")
            raise urllib.error.HTTPError(
                error.url, error.code, f"{error.reason}: {detail}", error.headers, None
            ) from None


# --------------------------------------------------------------------------------------------------------------------
# HTTP with byte ranges
# --------------------------------------------------------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    """One request as received by :class:`RangeHTTPServer` (a plain tuple, so it compares equal to one)."""

    method: str
    """The request method, e.g. ``"GET"``."""
    path: str
    """The request target exactly as sent (still percent-encoded, including any query string)."""
    range: str | None
    """The ``Range`` header, or ``None`` if absent."""


_STATUS_SEGMENT = re.compile(r"status-(\d{3})")
_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _UnsatisfiableRangeError(Exception):
    """The Range header is valid but selects no byte of the representation (answer 416)."""


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive ``(first, last)`` byte positions selected by ``header``, or ``None`` for the whole file.

    A missing, malformed or multi-range header is ignored (RFC 9110 allows a server to ignore it).
    Raises :class:`_UnsatisfiableRangeError` when the range selects nothing: ``first >= size``, ``bytes=-0``, or a
    suffix range on an empty file.
    """
    if header is None:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None  # "bytes=-" is not a range
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise _UnsatisfiableRangeError
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid range-spec: ignore the header
    if first >= size:
        raise _UnsatisfiableRangeError
    return first, min(last, size - 1)


class _RangeRequestHandler(BaseHTTPRequestHandler):
    """Serves GET/HEAD for one :class:`_RangeServer`; other methods get 501 from the base class."""

    server: _RangeServer
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers; stop() closes idle connections
    timeout = 60  # a client that stalls mid-request cannot pin a thread forever

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class signature)
        """Stay quiet: requests are recorded in ``RangeHTTPServer.requests`` instead of stderr."""

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.server.owner._record(RecordedRequest(self.command, self.path, self.headers.get("Range")))
        return ok

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, *, send_body: bool) -> None:
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/slow/"):
            if owner._stopping.wait(owner.slow_seconds):
                self.close_connection = True
                return  # the server is stopping: drop the request instead of delaying shutdown
            path = path[len("/slow") :]
        first_segment = path.lstrip("/").split("/", 1)[0]
        status_match = _STATUS_SEGMENT.fullmatch(first_segment)
        if status_match is not None and 200 <= int(status_match.group(1)) <= 599:
            self._send_empty(int(status_match.group(1)))
            return
        target = owner._resolve(path)
        if target is None:
            self._send_empty(HTTPStatus.NOT_FOUND)
            return
        try:
            stat = target.stat()
            size = stat.st_size
            headers = {
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
                "ETag": f'"{size:x}-{stat.st_mtime_ns:x}"',
                "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            }
            try:
                selected = _parse_range(self.headers.get("Range"), size)
            except _UnsatisfiableRangeError:
                self._send_empty(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {**headers, "Content-Range": f"bytes */{size}"}
                )
                return
            first, last = (0, size - 1) if selected is None else selected
            length = last - first + 1
            body = b""
            if send_body and length > 0:
                with target.open("rb") as file:
                    file.seek(first)
                    body = file.read(length)
        except OSError:  # vanished or unreadable between resolving and reading
            self._send_empty(HTTPStatus.NOT_FOUND)
            return
        if selected is None:
            self.send_response(HTTPStatus.OK)
        else:
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


_Request = socket.socket | tuple[bytes, socket.socket]  # socketserver's request type


class _RangeServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that tracks open connections so that stop() can close idle keep-alive ones."""

    daemon_threads = True
    block_on_close = True  # server_close() joins every request thread

    def __init__(self, address: tuple[str, int], owner: RangeHTTPServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RangeRequestHandler)

    def process_request(self, request: _Request, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _Request) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection; request threads waiting for a next request then return."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its request thread
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: _Request, client_address: Any) -> None:
        """Ignore clients that hang up (e.g. after a client-side timeout); report anything else."""
        if isinstance(sys.exception(), ConnectionError):
            return
        super().handle_error(request, client_address)


class RangeHTTPServer:
    """A threaded HTTP/1.1 server on ``127.0.0.1`` serving the files under ``root``, with byte ranges.

    Promises:

    * It is listening on ``url`` (``http://127.0.0.1:PORT/``) when the constructor returns.
    * ``GET``/``HEAD`` of a regular file under ``root`` answer with ``Accept-Ranges: bytes``, ``ETag``,
      ``Last-Modified``, ``Content-Type`` and ``Content-Length``:

      - no ``Range`` header (or a malformed or multi-range one, which is ignored): ``200`` and the whole file;
      - ``Range: bytes=a-b``, ``bytes=a-`` or ``bytes=-n``: ``206`` with ``Content-Range: bytes first-last/size``,
        where a range ending past the end of the file is clamped to it;
      - an unsatisfiable range (``a >= size``, ``bytes=-0``, any range of an empty file): ``416`` with
        ``Content-Range: bytes */size`` and an empty body.

      Conditional headers (``If-Match``, ``If-Range``...) are ignored.
    * Anything else under ``root`` (missing files, directories, ``..`` segments, symlinks leading outside
      ``root``) answers ``404`` with an empty body; nothing outside ``root`` is ever served.
    * Fault injection: a path whose first segment is ``status-NNN`` (200 <= NNN <= 599), e.g. ``/status-500/x``,
      answers status NNN with an empty body.  A path ``/slow/REST`` waits ``slow_seconds`` and then answers as
      ``/REST`` would (so ``/slow/status-503/x`` works); :meth:`stop` cuts the wait short and drops the request.
    * Methods other than ``GET``/``HEAD`` answer ``501``.
    * Every parsed request, whatever its method or outcome, is appended to :attr:`requests` before it is answered.
    * Nothing is written to stderr for requests, client hang-ups or ``416``/``404``.
    * :meth:`stop` closes the listening socket and open connections and joins every thread; it is idempotent.
    """

    def __init__(self, root: str | os.PathLike[str], *, host: str = "127.0.0.1", slow_seconds: float = 2.0) -> None:
        """Serve ``root`` (an existing directory) on ``host`` at a free ephemeral port."""
        self.root: Path = Path(root)
        """The directory being served."""
        self._root_resolved = self.root.resolve(strict=True)
        if not self._root_resolved.is_dir():
            raise NotADirectoryError(str(root))
        self.slow_seconds: float = slow_seconds
        """How long a ``/slow/...`` request waits before it is answered; may be changed at any time."""
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = False
        self._server = _RangeServer((host, 0), self)
        self.host: str = host
        """The address the server is bound to."""
        self.port: int = int(self._server.server_address[1])
        """The TCP port the server is bound to (never 0)."""
        self.url: str = f"http://{host}:{self.port}/"
        """Base URL, with a trailing slash, e.g. ``http://127.0.0.1:45678/``."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"RangeHTTPServer:{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (a new list) of the requests received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self._requests_lock:
            self._requests.clear()

    def store(
        self,
        prefix: str = "",
        *,
        retry_config: RetryConfig | None = None,
        client_options: ClientConfig | None = None,
    ) -> HTTPStore:
        """Return an obstore ``HTTPStore`` rooted at ``url + prefix``.

        ``client_options`` are merged over ``{"allow_http": True}``.
        """
        options: ClientConfig = {"allow_http": True}
        if client_options:
            options.update(client_options)
        return HTTPStore.from_url(self.url + prefix.lstrip("/"), client_options=options, retry_config=retry_config)

    def stop(self) -> None:
        """Stop serving, close the listening socket and all connections, and join every thread.  Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()  # wake /slow/ requests
        self._server.shutdown()  # serve_forever() returns: no new connections are accepted
        self._server.close_connections()  # idle keep-alive connections end their request threads
        self._server.server_close()  # close the listening socket and join the request threads
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RangeHTTPServer(url={self.url!r}, root={str(self.root)!r}, stopped={self._stopped})"

    def _record(self, request: RecordedRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)

    def _resolve(self, url_path: str) -> Path | None:
        """Map a URL path to a regular file inside ``root``, or ``None``."""
        decoded = urllib.parse.unquote(url_path)
        if "\x00" in decoded:
            return None
        parts = [part for part in decoded.split("/") if part]
        if not parts or any(part in (".", "..") for part in parts):
            return None
        try:
            target = self._root_resolved.joinpath(*parts).resolve()
        except (OSError, RuntimeError):  # e.g. a symlink loop
            return None
        if not target.is_relative_to(self._root_resolved) or not target.is_file():
            return None
        return target


# --------------------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running :class:`S3Server` shared by the session; stopped at the end.  Use unique bucket names."""
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeHTTPServer]:
    """A running :class:`RangeHTTPServer` over a fresh session temp directory (``server.root``); stopped at the end.

    The directory starts empty; tests write the files they need (under names unique to the test) into it.
    """
    server = RangeHTTPServer(tmp_path_factory.mktemp("http-root"))
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------------------
# HTTP with more faults: redirects, Range ignored, broken framing, flaky and trickling answers
# --------------------------------------------------------------------------------------------------------------------

__all__ += ["FaultHTTPServer", "redirect_path"]  # this section is appended: the list above stays as it was

_FAULT_SEGMENT = re.compile(
    r"redirect-(?P<redirect>3\d\d)|flaky-(?P<times>\d+)-(?P<status>[1-5]\d\d)|(?P<name>[a-z-]+)"
)
_BODY_FAULTS = frozenset({"short-body", "long-body", "no-length", "chunked", "wrong-range", "trickle"})


class _Capture:
    """A write-only stand-in for a handler's ``wfile`` that keeps what is written."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _FaultRequestHandler(_RangeRequestHandler):
    """:class:`_RangeRequestHandler` plus the fault paths of :class:`FaultHTTPServer`."""

    server: _RangeServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY a small body waits for the client's
        # delayed ACK of the headers (about 40 ms per request on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            owner = self.server.owner
            assert isinstance(owner, FaultHTTPServer)
            owner._record_headers(self.path, {name.lower(): value for name, value in self.headers.items()})
        return ok

    def _serve(self, *, send_body: bool) -> None:
        owner = self.server.owner
        assert isinstance(owner, FaultHTTPServer)
        split = urllib.parse.urlsplit(self.path)
        first, _, rest = split.path.lstrip("/").partition("/")
        match = _FAULT_SEGMENT.fullmatch(first)
        if match is None:
            super()._serve(send_body=send_body)
            return
        if match["redirect"] is not None:
            try:
                location = bytes.fromhex(rest).decode()
            except ValueError:
                self._send_empty(HTTPStatus.BAD_REQUEST)
                return
            self._send_empty(int(match["redirect"]), {"Location": location} if location else None)
            return
        if match["times"] is not None:
            if owner._count(split.path) <= int(match["times"]):
                self._send_empty(int(match["status"]))
                return
            self._serve_inner("/" + rest, send_body=send_body)
            return
        name = match["name"]
        if name == "ignore-range":
            del self.headers["Range"]
            self._serve_inner("/" + rest, send_body=send_body)
        elif name in _BODY_FAULTS:
            self._serve_broken("/" + rest, name, send_body=send_body)
        else:
            super()._serve(send_body=send_body)

    def _serve_inner(self, path: str, *, send_body: bool) -> None:
        """Answer ``path`` (which may start with another fault prefix: they compose)."""
        self.path = path
        self._serve(send_body=send_body)

    def _serve_broken(self, path: str, fault: str, *, send_body: bool) -> None:
        """Answer ``path`` as usual, then rewrite that answer's framing as ``fault`` says."""
        owner = self.server.owner
        real, captured = self.wfile, _Capture()
        self.wfile = captured  # type: ignore[assignment]  # capture the plain answer, then rewrite it
        try:
            self._serve_inner(path, send_body=send_body)
        finally:
            self.wfile = real
        head, _, body = captured.getvalue().partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        headers = [tuple(line.split(b": ", 1)) for line in header_lines]
        status = int(status_line.split()[1])
        if not 200 <= status < 300:
            real.write(captured.getvalue())
            return

        def without(name: bytes) -> list[tuple[bytes, ...]]:
            return [h for h in headers if h[0].lower() != name]

        def declared(length: int) -> list[tuple[bytes, ...]]:
            return [*without(b"content-length"), (b"Content-Length", str(length).encode())]

        pieces = [body]
        if fault == "short-body":  # Content-Length is right; half of the body comes, then the connection closes
            pieces = [body[: len(body) // 2]]
        elif fault == "long-body":  # Content-Length says half; the whole body comes, then the connection closes
            headers = declared(len(body) // 2)
        elif fault == "no-length":  # no Content-Length: the body ends when the connection closes
            headers = [*without(b"content-length"), (b"Connection", b"close")]
        elif fault == "chunked":
            headers = [*without(b"content-length"), (b"Transfer-Encoding", b"chunked")]
            if send_body:
                chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
                pieces = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks] + [b"0\r\n\r\n"]
        elif fault == "wrong-range":  # a 206 whose Content-Range is one byte later than the range sent
            rewritten = []
            for name, *value in headers:
                if name.lower() == b"content-range" and value:
                    first, last, size = (int(n) for n in re.findall(rb"\d+", value[0]))
                    value = [b"bytes %d-%d/%d" % (first + 1, last + 1, size)]
                rewritten.append((name, *value))
            headers = rewritten
        elif fault == "trickle":  # the body comes in ten pieces, slow_seconds / 10 apart
            step = max(1, -(-len(body) // 10))
            pieces = [body[i : i + step] for i in range(0, len(body), step)]
        real.write(status_line + b"\r\n" + b"".join(b": ".join(h) + b"\r\n" for h in headers) + b"\r\n")
        if send_body or fault == "chunked":
            for index, piece in enumerate(pieces):
                if fault == "trickle" and index and owner._stopping.wait(owner.slow_seconds / 10):
                    break
                real.write(piece)
                real.flush()
        if fault != "wrong-range":
            self.close_connection = True


class FaultHTTPServer(RangeHTTPServer):
    """A :class:`RangeHTTPServer` with more fault paths, and a record of every request's headers.

    Every path of :class:`RangeHTTPServer` answers as it does there.  In addition (``REST`` is a path that
    the plain server would serve, e.g. ``/a.bin`` or ``/status-500/x``):

    * ``/redirect-NNN/HEX`` (300 <= NNN <= 399) answers NNN with an empty body and the header
      ``Location: bytes.fromhex(HEX).decode()`` (absolute or relative, as given; none if HEX is empty).
      Hex, because it reaches the server unchanged whichever way a client percent-encodes paths:
      :func:`redirect_path` builds such a path.
    * ``/ignore-range/REST`` answers as ``REST`` would without a ``Range`` header (``200``, the whole file).
    * ``/flaky-N-SSS/REST`` answers SSS (empty body) to the first N requests for this exact path, then as ``REST``.
    * Broken framing (a status other than 2xx is passed through unchanged), then the connection is closed:

      - ``/short-body/REST``: the right headers, but only the first half of the body;
      - ``/long-body/REST``: ``Content-Length`` says half of the body, and the whole body is sent;
      - ``/no-length/REST``: no ``Content-Length`` (``Connection: close``): the body ends at the close;
      - ``/chunked/REST``: ``Transfer-Encoding: chunked`` (in 1000-byte chunks) instead of ``Content-Length``;
      - ``/trickle/REST``: the body in ten pieces, ``slow_seconds / 10`` apart.

    * ``/wrong-range/REST``: a ``206`` whose ``Content-Range`` is one byte later than the range sent
      (the connection stays open).
    * These prefixes compose, outermost first: ``/ignore-range/trickle/a.bin``, ``/flaky-1-503/chunked/a.bin``.
    * :attr:`header_log` records ``(target, headers)`` for every parsed request, header names lower-cased.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        slow_seconds: float = 2.0,
        tls: Any = None,
    ) -> None:
        """Serve ``root`` as :class:`RangeHTTPServer` does, with the fault paths above.

        ``tls``: an ``ssl.SSLContext`` holding the server's certificate: serve HTTPS, and :attr:`url` is
        ``https://127.0.0.1:PORT/``. (A client that fails the handshake is dropped silently.)
        """
        self._headers_log: list[tuple[str, dict[str, str]]] = []
        self._counts: dict[str, int] = {}
        super().__init__(root, host=host, slow_seconds=slow_seconds)
        # Nobody knows the port before the constructor returns, so no request can have used the plain handler
        # or the plain socket: swapping them now is safe.
        self._server.RequestHandlerClass = _FaultRequestHandler
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.url = f"https://{host}:{self.port}/"

    @property
    def header_log(self) -> list[tuple[str, dict[str, str]]]:
        """A snapshot of ``(target, headers)`` of the requests received so far, oldest first."""
        with self._requests_lock:
            return list(self._headers_log)

    def clear_requests(self) -> None:
        """Forget the requests, headers and ``flaky-`` counts recorded so far."""
        with self._requests_lock:
            self._requests.clear()
            self._headers_log.clear()
            self._counts.clear()

    def _record_headers(self, target: str, headers: dict[str, str]) -> None:
        with self._requests_lock:
            self._headers_log.append((target, headers))

    def _count(self, path: str) -> int:
        """Count one more request for ``path``; return the new count."""
        with self._requests_lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            return self._counts[path]


def redirect_path(status: int, location: str | None) -> str:
    """The :class:`FaultHTTPServer` path (no leading ``/``) that answers ``status`` with ``Location: location``
    (no ``Location`` header if ``location`` is ``None``)."""
    return f"redirect-{status}/{(location or '').encode().hex()}"
