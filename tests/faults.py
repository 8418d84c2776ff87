"""A fault-injecting HTTP proxy for the loopback servers: :class:`FaultProxy`.

moto's S3 server and :class:`~tests.servers.FaultHTTPServer` answer what they hold; faults that an
S3 endpoint (or a server that takes writes) can show a client must be made in between. A
:class:`FaultProxy` listens on ``127.0.0.1`` and forwards every request to one upstream origin
(for example moto: path-style S3 with signatures passed through untouched, or plain unsigned HTTP
``GET``/``HEAD``/``PUT``/``DELETE`` of ``/bucket/key``), unless a :class:`Rule` matches the request:

* ``status``: answer ``status`` (with ``body``) instead of forwarding;
* ``reset``: read the request, then close the connection with a TCP reset (no answer);
* ``truncate``: forward, then send the upstream's headers (``Content-Length`` as the upstream
  said) but only the first half of the body, and close the connection;
* ``trickle``: forward, then send the upstream's headers at once and the body in ten pieces,
  ``seconds / 10`` apart (a body slower than the client's timeout);
* ``ignore-range``: forward without the request's ``Range`` header (the whole object, ``200``);
* ``hang``: read the request, wait ``seconds`` (cut short by :meth:`FaultProxy.stop`), then close
  the connection without forwarding anything (a server too slow for the client's timeout; the
  request never reaches the upstream, so a write cannot land behind the client's back);
* ``redirect``: answer ``status`` (3xx) with ``Location: location``;
* ``forward``: forward as usual (with ``before``/``after`` hooks: replace an object between two
  requests of one read).

A rule matches a request whose method is ``method`` (any if ``None``) and whose target (path and
query, as sent) contains ``path``; it applies to the first ``times`` matching requests (all if
``None``), then lets them through. ``before`` runs before the action, ``after`` after it. Rules are
tried in the order added; :meth:`FaultProxy.clear` drops them. Every request is logged in
:attr:`FaultProxy.log` as ``(method, target, action)``.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import struct
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

__all__ = ["Action", "FaultProxy", "Rule"]

Action = Literal["status", "reset", "truncate", "trickle", "ignore-range", "hang", "redirect", "forward"]

# Hop-by-hop headers: never passed on (RFC 9110 7.6.1), and the framing the proxy sets itself.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"})


@dataclass
class Rule:
    """One fault: what to do (``action``) with which requests (``method``, ``path``, ``times``)."""

    action: Action
    path: str = ""
    method: str | None = None
    times: int | None = None
    status: int = 500
    body: bytes = b""
    location: str = ""
    seconds: float = 0.0
    before: Callable[[], Any] | None = None
    after: Callable[[], Any] | None = None
    hits: int = field(default=0, init=False)
    """How many requests this rule has applied to."""

    def _claims(self, method: str, target: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path not in target:
            return False
        return self.times is None or self.hits < self.times


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, owner: FaultProxy) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up, resets the proxy made itself: nothing to report


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class signature)
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815 (the base class's naming)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        owner = self.server.owner
        body = self._body()
        rule = owner._claim(self.command, self.path)
        owner._record(self.command, self.path, rule.action if rule else "forward")
        if rule is not None and rule.before is not None:
            rule.before()
        action = rule.action if rule is not None else "forward"
        if action == "status":
            assert rule is not None
            self._answer(rule.status, [("Content-Type", "application/xml")], rule.body)
        elif action == "redirect":
            assert rule is not None
            self._answer(rule.status, [("Location", rule.location)], b"")
        elif action == "reset":
            self._reset()
        elif action == "hang":
            assert rule is not None
            owner._stopping.wait(rule.seconds)
            self._reset()
        else:
            if action == "ignore-range":
                del self.headers["Range"]
            status, reason, headers, data = self._forward(body)
            if action == "trickle" and self.command != "HEAD":
                assert rule is not None
                self.send_response_only(status, reason)
                for name, value in headers:
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                step = max(1, -(-len(data) // 10))
                for start in range(0, len(data), step):
                    if start and owner._stopping.wait(rule.seconds / 10):
                        break
                    self.wfile.write(data[start : start + step])
                    self.wfile.flush()
                self.close_connection = True
            elif action == "truncate" and self.command != "HEAD" and len(data) > 1:
                self.send_response_only(status, reason)
                for name, value in headers:
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self._answer(status, headers, data, reason=reason)
        if rule is not None and rule.after is not None:
            rule.after()

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, reason: str | None = None) -> None:
        self.send_response_only(status, reason)
        length = None
        for name, value in headers:
            if name.lower() == "content-length":
                length = value
            else:
                self.send_header(name, value)
        # A HEAD answer declares the object's length, as the upstream said it; others the body's.
        self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.close()

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        owner = self.server.owner
        upstream = http.client.HTTPConnection(owner._upstream_host, owner._upstream_port, timeout=30)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            for name, value in owner._default_headers.items():
                if name not in self.headers:
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            data = response.read()
            headers = [(n, v) for n, v in response.getheaders() if n.lower() not in _HOP]
            return response.status, response.reason, headers, data
        finally:
            upstream.close()


class FaultProxy:
    """An HTTP(S) proxy on ``127.0.0.1`` in front of ``upstream`` (``http://host:port``), with fault rules.

    ``tls``: an ``ssl.SSLContext`` with a server certificate: the proxy speaks HTTPS to its clients
    (and plain HTTP upstream), and :attr:`url` is ``https://127.0.0.1:PORT``. ``default_headers`` are
    added to forwarded requests that do not have them (moto answers an unsigned ``GET`` 403, but
    takes any ``Authorization`` header: ``{"Authorization": "AWS testing:x"}`` makes plain HTTP
    clients its users).
    """

    def __init__(
        self, upstream: str, *, tls: ssl.SSLContext | None = None, default_headers: dict[str, str] | None = None
    ) -> None:
        split = urllib.parse.urlsplit(upstream)
        if split.scheme != "http" or not split.hostname or not split.port:
            raise ValueError(f"the upstream must be http://host:port, not {upstream!r}")
        self._upstream_host, self._upstream_port = split.hostname, split.port
        self._default_headers = dict(default_headers or {})
        self._rules: list[Rule] = []
        self._log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(self)
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port: int = int(self._server.server_address[1])
        self.url: str = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        """The proxy's origin, without a trailing slash."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"FaultProxy:{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()

    def add(self, rule: Rule) -> Rule:
        """Apply ``rule`` to the requests it matches from now on; returns it (its ``hits`` count)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule and the log."""
        with self._lock:
            self._rules.clear()
            self._log.clear()

    @property
    def log(self) -> list[tuple[str, str, str]]:
        """``(method, target, action)`` of every request so far, oldest first."""
        with self._lock:
            return list(self._log)

    def _claim(self, method: str, target: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule._claims(method, target):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, method: str, target: str, action: str) -> None:
        with self._lock:
            self._log.append((method, target, action))

    def stop(self) -> None:
        """Stop serving, wake hanging requests, close every connection and join the threads. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        with self._server.lock:
            connections = list(self._server.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
