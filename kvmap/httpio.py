"""Reading bytes over ``http://`` and ``https://`` without ever following a redirect: :class:`HTTPSource`.

obstore's ``HTTPStore`` follows redirects, to other hosts and ports too, sends the caller's custom headers
(API keys) there, and does not say where it ended up. kvmap's rule is that a manifest can never lead a reader
outside the origin it may reach, so kvmap reads HTTP(S) targets with this small client instead, built on
urllib3. Its rules:

* **Redirects are never followed.** Any 3xx answer raises :class:`RedirectRefused`, naming the URL asked for and
  the ``Location`` (resolved against it), same origin or not: the manifest must name the final URL. urllib3 is
  told never to follow anything (``redirect=False`` on every request and a ``Retry`` that never redirects), and
  each :class:`HTTPSource` talks to one connection pool for its one origin (or to its proxy), so a request can
  only ever go to that origin.
* **404 and 410 are "absent"**: :meth:`HTTPSource.head` and :meth:`HTTPSource.get` return ``None``.
  Every other failure raises an :class:`HTTPReadError` whose message is one line.
* **What is retried** (reads are idempotent): connection failures and dropped or truncated connections,
  timeouts, 5xx and 429 answers, up to ``max_retries`` times (default 10) within ``retry_timeout`` (default
  3 minutes) with obstore's exponential backoff with jitter (100 ms initial, 15 s at most, base 2).
  ``Retry-After`` is not honoured (as in obstore). Nothing else is retried: not 3xx, 4xx, 416, a ``Content-Range``
  that does not match the request, an answer larger than the caller's ``limit``, or a certificate that fails
  verification.
* **Options** are obstore's ``ClientConfig`` / ``RetryConfig`` spellings (see :class:`HTTPSource`), so the
  options kvmap's users pass for ``HTTPStore`` keep working.
* **Proxies**: ``client_options``' ``proxy_url`` (with ``proxy_excludes`` and ``proxy_ca_certificate``, as in
  obstore), or else, as obstore (reqwest) does, the environment: ``HTTPS_PROXY``/``HTTP_PROXY`` by the origin's
  scheme, then ``ALL_PROXY``, bypassed by ``NO_PROXY`` (either case). Reads then go to the proxy, and the proxy's
  own redirects are refused like any other.
* Bodies are returned as sent (``Accept-Encoding: identity``, no content decoding), as obstore does.

Object paths are passed decoded, as to obstore: ``"dir/a b%.bin"``. They are checked and percent-encoded
segment by segment as obstore's ``HTTPStore`` does (object_store ``Path::parse``, then the WHATWG path-segment
set), so both reach the same files. The one difference on the wire: urllib3 also percent-encodes ``[ ] ^ |``
in the request target (RFC 3986 does not allow them raw), which obstore sends as they are; servers decode
both to the same name.

One :class:`HTTPSource` may be used from many threads and from asyncio at once. The ``*_async`` methods run
the blocking calls in threads (``asyncio.to_thread``): one thread per request in flight, like obstore's own
thread pool; a cancelled await does not stop a request already running, which ends within its timeout.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import datetime
import functools
import http.client
import ipaddress
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeVar

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    IncompleteRead,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.util import Retry, Timeout

__all__ = [
    "HTTPReadError",
    "HTTPSource",
    "HTTPTimeoutError",
    "RangeNotSatisfiable",
    "RedirectRefused",
    "TooLarge",
]

_T = TypeVar("_T")

# object_store's defaults (obstore 0.12): ClientOptions and RetryConfig / BackoffConfig.
_DEFAULT_TIMEOUT: Final = 30.0
_DEFAULT_CONNECT_TIMEOUT: Final = 5.0
_DEFAULT_MAX_RETRIES: Final = 10
_DEFAULT_RETRY_TIMEOUT: Final = 180.0
_DEFAULT_INIT_BACKOFF: Final = 0.1
_DEFAULT_MAX_BACKOFF: Final = 15.0
_DEFAULT_BACKOFF_BASE: Final = 2.0
# object_store's get_ranges: ranges less than 1 MiB apart are fetched in one request, 10 requests at a time.
_COALESCE: Final = 1024 * 1024
_COALESCE_PARALLEL: Final = 10

# The most one read from the socket may return (reads near a limit ask for at most one byte past it).
_CHUNK: Final = 1024 * 1024
# A body left unread after an answer is read off (to reuse the connection) only if it is this small.
_DRAIN_MAX: Final = 64 * 1024
# Idle connections kept per source (reqwest keeps any number; urllib3 needs a bound).
_DEFAULT_POOL_SIZE: Final = 64  # idle connections kept: as many as the async methods have threads (_THREADS)

_USER_AGENT: Final = f"kvmap (urllib3/{getattr(urllib3, '__version__', '2')})"

# urllib3 must never retry or follow a redirect on its own: the retry loop here decides, and redirects are
# refused. total=False also makes urllib3 raise its original exception instead of MaxRetryError.
_NO_RETRIES: Final = Retry(total=False, redirect=False, raise_on_redirect=False, raise_on_status=False)


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(text.split())


#: Threads for the async methods: network requests wait, they do not compute, so many may be in flight —
#: asyncio's default executor has min(32, cores + 4) threads, 6 on a 2-core machine, which would cap a
#: zarr read of many chunks at 6 requests at once.
_THREADS = 64
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


async def _in_thread(call: Callable[..., _T], *args: Any) -> _T:
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="kvmap-http")
    return await asyncio.get_running_loop().run_in_executor(_POOL, call, *args)


def _environment_proxy(client: _Client, scheme: str) -> _Client:
    """``client`` with the proxy the environment names for ``scheme`` (reqwest's rules), if any."""
    env = {k.lower(): v for k, v in os.environ.items() if k.lower().endswith("_proxy") and v}
    url = env.get(f"{scheme}_proxy") or env.get("all_proxy")
    if url is None:
        return client
    if "://" not in url:
        url = f"http://{url}"  # reqwest reads a bare host:port as an HTTP proxy
    return dataclasses.replace(client, proxy_url=url, proxy_excludes=_excludes(env.get("no_proxy", "")))


def _excludes(text: str) -> tuple[str, ...]:
    """A ``NO_PROXY``-style comma-separated list (``proxy_excludes``), as lower-case entries."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


class HTTPReadError(Exception):
    """Reading over HTTP(S) failed. ``url`` is the URL asked for; ``status`` the HTTP status, or ``None`` if
    there was no answer (connection failure, timeout). The message is one line.

    Not a :class:`~kvmap.KvmapError`: kvmap's reader wraps it, naming the key, the manifest entry and the URL.
    """

    url: str
    status: int | None

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(_one_line(message))
        self.url = url
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses' constructors take other arguments than ``args``: rebuild from the state instead.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


def _restore_error(cls: type[HTTPReadError], args: tuple[Any, ...], state: dict[str, Any]) -> HTTPReadError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class RedirectRefused(HTTPReadError):  # noqa: N818 (the public name kvmap's reader uses)
    """The server answered a redirect (any 3xx). ``location`` is its ``Location`` resolved against ``url``
    (``None`` if it sent none). kvmap never follows redirects: the manifest must name the final URL."""

    location: str | None

    def __init__(self, url: str, location: str | None, status: int) -> None:
        where = f"to {location}" if location is not None else "without a Location header"
        super().__init__(
            f"refused to follow a redirect (HTTP {status}) from {url} {where}: "
            "kvmap never follows redirects; name the final URL in the manifest",
            url=url,
            status=status,
        )
        self.location = location


class RangeNotSatisfiable(HTTPReadError):  # noqa: N818 (the public name kvmap's reader uses)
    """The byte range asked for selects nothing of the object (HTTP 416, or a range starting at or past the end
    of an object whose server ignored ``Range``). ``range`` is the ``Range`` header sent, ``size`` the object's
    size when the server said it, else ``None``."""

    range: str | None
    size: int | None

    def __init__(self, url: str, range_header: str | None, size: int | None, status: int = 416) -> None:
        has = f"; the object has {size} bytes" if size is not None else ""
        # Only a real 416 says "HTTP 416"; otherwise the server sent bytes and none of them were asked for.
        what = "HTTP 416 Range Not Satisfiable" if status == 416 else f"range not satisfiable (HTTP {status})"
        super().__init__(
            f"{what} for {url} (asked for {range_header or 'the whole object'}{has})", url=url, status=status
        )
        self.range = range_header
        self.size = size


class TooLarge(HTTPReadError):  # noqa: N818 (the public name kvmap's reader uses)
    """The answer has more bytes than the caller's ``limit``. ``size`` is the size the server declared, or
    ``None`` when it declared none (or too few) and sent more than ``limit`` bytes."""

    limit: int
    size: int | None

    def __init__(self, url: str, limit: int, size: int | None, status: int | None = None) -> None:
        said = f"the server says {size} bytes" if size is not None else "the server sent more"
        super().__init__(f"{url} is larger than the limit of {limit} bytes ({said})", url=url, status=status)
        self.limit = limit
        self.size = size


class HTTPTimeoutError(HTTPReadError, TimeoutError):
    """Connecting, waiting for the answer or reading it took longer than the configured timeout. The message
    contains ``"timed out"``. Also a :class:`TimeoutError`."""


class _TransientError(Exception):
    """Carries an :class:`HTTPReadError` that the retry loop may retry."""

    def __init__(self, error: HTTPReadError) -> None:
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------------------------------------------------
# Option values, in obstore's formats
# --------------------------------------------------------------------------------------------------------------------

# humantime 2.3 (what obstore 0.12 parses durations with): unit names and their lengths in nanoseconds.
_NS: Final = 1
_US: Final = 1000
_MS: Final = 1_000_000
_S: Final = 1_000_000_000
_UNIT_NS: Final[dict[str, int]] = {
    **dict.fromkeys(("nanos", "nsec", "ns"), _NS),
    **dict.fromkeys(("usec", "us", "\u00b5s"), _US),
    **dict.fromkeys(("millis", "msec", "ms"), _MS),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), _S),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60 * _S),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3600 * _S),
    **dict.fromkeys(("days", "day", "d"), 86400 * _S),
    **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), 7 * 86400 * _S),
    **dict.fromkeys(("months", "month", "M"), 2_630_016 * _S),  # 30.44 days
    **dict.fromkeys(("years", "year", "yr", "yrs", "y"), 31_557_600 * _S),  # 365.25 days
}
_U64: Final = 2**64
# Rust's char::is_whitespace (Unicode White_Space), which humantime skips; str.isspace differs slightly.
_WHITESPACE: Final = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_DIGITS: Final = frozenset("0123456789")


def _is_unit_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or c == "\u00b5"


def _checked(value: int) -> int:
    if value >= _U64:  # humantime computes in u64 and rejects what overflows it
        raise ValueError("number is too large")
    return value


def _parse_humantime(text: str) -> float:
    """Seconds of a humantime 2.3 duration (what obstore 0.12 parses): ``"200ms"``, ``"1m 30s"``, ``"1.5s"``,
    ``"1 minute"``, ``"0"``. Raises ``ValueError`` for exactly the strings humantime rejects.

    The grammar, ported from humantime's parser: spans of an integer (whitespace between its digits is
    skipped), an optional ``.fraction``, then a unit (letters or ``µ``); spans may be separated by whitespace
    or follow each other directly (``"1m30s"``). A fraction that is not a whole number of nanoseconds (of
    seconds, for hours and longer), a value past 64 bits, an unknown or missing unit and an empty text are
    errors.
    """
    if text == "0":
        return 0.0
    secs, nanos = 0, 0  # the running total, as humantime's Duration (u64 seconds, nanoseconds)

    def add(more_secs: int, more_nanos: int) -> None:
        nonlocal secs, nanos
        total_nanos = _checked(nanos + _checked(more_nanos))
        if total_nanos >= _S:
            more_secs = _checked(more_secs + total_nanos // _S)
            total_nanos %= _S
        secs, nanos = _checked(secs + more_secs), total_nanos

    i, n = 0, len(text)

    def first_digit() -> int | None:
        nonlocal i
        while i < n:
            c = text[i]
            i += 1
            if c in _DIGITS:
                return int(c)
            if c not in _WHITESPACE:
                raise ValueError(f"expected a number at {i - 1}")
        return None

    number = first_digit()
    if number is None:
        raise ValueError("value was empty")
    while True:
        # The integer (and fraction) of one span.
        numerator, denominator = 0, 1
        while i < n and (text[i] in _DIGITS or text[i] in _WHITESPACE):
            if text[i] in _DIGITS:
                number = _checked(number * 10 + int(text[i]))
            i += 1
        if i < n and text[i] == ".":
            i += 1
            while i < n and (text[i] in _DIGITS or text[i] in _WHITESPACE):
                if text[i] in _DIGITS:
                    denominator = _checked(denominator * 10)
                    numerator = _checked(numerator * 10 + int(text[i]))
                i += 1
            if denominator == 1:
                raise ValueError(f"expected digits after the decimal point at {i}")
        if i < n and not _is_unit_char(text[i]):
            raise ValueError(f"invalid character at {i}")
        # Its unit: letters up to whitespace, a digit (the next span) or the end.
        start = i
        while i < n and _is_unit_char(text[i]):
            i += 1
        if i < n and text[i] not in _WHITESPACE and text[i] not in _DIGITS:
            raise ValueError(f"invalid character at {i}")
        unit = text[start:i]
        if unit not in _UNIT_NS:
            raise ValueError(f"unknown time unit {unit!r}" if unit else f"time unit needed, for example {number}s")
        scale = _UNIT_NS[unit]
        if scale < _S:
            add(0, _checked(number * scale))
        else:
            add(_checked(number * (scale // _S)), 0)
        if denominator > 1:
            # humantime takes a fraction only if it is a whole number of nanoseconds (up to minutes) or of
            # seconds (hours and longer): "1.5h" is 5400 s, "1.0001h" is an error.
            if scale == _NS:
                raise ValueError("a fraction of a nanosecond")
            fraction = _checked(numerator * scale) if scale <= 60 * _S else _checked(numerator * (scale // _S))
            if fraction % denominator:
                raise ValueError(f"{text!r} cannot be represented without a lack of precision")
            if scale <= 60 * _S:
                add(0, fraction // denominator)
            else:
                add(fraction // denominator, 0)
        if i < n and text[i] in _DIGITS:
            number = int(text[i])
            i += 1
            continue
        following = first_digit()
        if following is None:
            return secs + nanos / _S
        number = following


def _duration(value: object, key: str) -> float:
    """Seconds of an obstore duration option: a ``datetime.timedelta`` or a humantime string such as
    ``"200ms"`` or ``"1 minute"``. Raises ``ValueError`` for anything else (obstore takes no bare numbers)."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
        if seconds < 0:
            raise ValueError(f"{key}: a duration cannot be negative, got {value!r}")
        return seconds
    if isinstance(value, str):
        try:
            return _parse_humantime(value)
        except ValueError as error:
            raise ValueError(f"{key}: cannot parse {value!r} as a duration ({error})") from None
    raise ValueError(
        f"{key}: expected a duration string such as '30s' or '200ms', or a datetime.timedelta, got {value!r}"
    )


def _positive_duration(value: object, key: str) -> float:
    seconds = _duration(value, key)
    if seconds <= 0:
        raise ValueError(f"{key}: a timeout must be longer than zero, got {value!r}")
    return seconds


_TRUE: Final = frozenset({"1", "true", "on", "yes", "y"})
_FALSE: Final = frozenset({"0", "false", "off", "no", "n"})


def _boolean(value: object, key: str) -> bool:
    """An obstore boolean option: a ``bool`` or a string such as ``"true"``/``"no"`` (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
    raise ValueError(f"{key}: cannot parse {value!r} as a boolean")


def _count(value: object, key: str) -> int:
    """A non-negative integer option: an ``int`` or a string of digits (obstore's ``usize`` strings)."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")


_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _header_value(value: object, key: str) -> str:
    """A header value (``str`` or ``bytes``) as the ``str`` http.client sends; raises ``ValueError`` for a value
    that could split or corrupt the request (control characters other than tab, characters past latin-1)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # header bytes pass through http.client as latin-1, unchanged
    if not isinstance(value, str):
        raise ValueError(f"{key}: a header value must be str or bytes, got {value!r}")
    if _BAD_VALUE.search(value) or any(ord(c) > 0xFF for c in value):  # http.client sends latin-1
        raise ValueError(f"{key}: invalid header value {value!r}")
    return value


def _pem(value: object, key: str) -> str:
    """A PEM certificate option (``str`` or ``bytes``); raises ``ValueError`` when it holds no certificate."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str) or "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{key}: expected one or more PEM-encoded certificates")
    return text


def _context(pem: str | None, key: str, *, verify: bool = True) -> ssl.SSLContext:
    """A TLS client context trusting the system roots plus ``pem`` (added, as obstore does, not replacing)."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if pem is not None:
        try:
            context.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(f"{key}: cannot load the certificates ({_one_line(str(error))})") from None
    return context


# client_options keys that make no difference to reads through urllib3 (HTTP/1.1 only, uploads, DNS order):
# accepted, checked where cheap, ignored.
_IGNORED_KEYS: Final = frozenset(
    {
        "default_content_type",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_max_frame_size",
        "pool_idle_timeout",
        "randomize_addresses",
    }
)
_CLIENT_KEYS: Final = _IGNORED_KEYS | {
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "default_headers",
    "http1_only",
    "http2_only",
    "pool_max_idle_per_host",
    "proxy_ca_certificate",
    "proxy_excludes",
    "proxy_url",
    "read_timeout",
    "root_certificate",
    "timeout",
    "user_agent",
}


@dataclass(frozen=True, slots=True)
class _Client:
    """The client options of one source, parsed."""

    allow_http: bool = False
    allow_invalid_certificates: bool = False
    timeout: float = _DEFAULT_TIMEOUT
    connect_timeout: float = _DEFAULT_CONNECT_TIMEOUT
    read_timeout: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    root_certificate: str | None = None
    proxy_url: str | None = None
    proxy_ca_certificate: str | None = None
    proxy_excludes: tuple[str, ...] = ()
    pool_size: int = _DEFAULT_POOL_SIZE


def _parse_client(options: Mapping[str, Any] | None) -> _Client:
    """Parse obstore ``ClientConfig`` options. Keys are case-insensitive as in obstore; an unknown key or a
    value that cannot be parsed raises ``ValueError``."""
    if options is None:
        return _Client()
    if not isinstance(options, Mapping):
        raise ValueError(f"client_options must be a mapping, got {options!r}")
    values: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = str(raw_key).lower()
        if key not in _CLIENT_KEYS:
            raise ValueError(f"client_options: unknown key {raw_key!r}")
        values[key] = value
    for key in ("http1_only", "http2_keep_alive_while_idle", "randomize_addresses"):
        if key in values:
            _boolean(values[key], key)
    for key in ("http2_keep_alive_interval", "http2_keep_alive_timeout", "pool_idle_timeout"):
        if key in values:
            _duration(values[key], key)
    if "http2_max_frame_size" in values:
        _count(values["http2_max_frame_size"], "http2_max_frame_size")
    if _boolean(values.get("http2_only", False), "http2_only"):
        raise ValueError("client_options: http2_only is not supported by kvmap's HTTP reader (HTTP/1.1 only)")

    headers: dict[str, tuple[str, str]] = {
        "user-agent": ("User-Agent", _USER_AGENT),
        "accept": ("Accept", "*/*"),  # what obstore sends
        "accept-encoding": ("Accept-Encoding", "identity"),  # bytes as stored: ranges count them
    }
    default_headers = values.get("default_headers") or {}
    if not isinstance(default_headers, Mapping):
        raise ValueError(f"default_headers: expected a mapping of header names to values, got {default_headers!r}")
    for name, value in default_headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"default_headers: invalid header name {name!r}")
        if name.lower() == "range":
            raise ValueError("default_headers: Range is set by each read")
        headers[name.lower()] = (name, _header_value(value, f"default_headers[{name!r}]"))
    if "user_agent" in values:
        headers["user-agent"] = ("User-Agent", _header_value(values["user_agent"], "user_agent"))

    proxy_url = values.get("proxy_url")
    if proxy_url is not None:
        proxy = urllib.parse.urlsplit(proxy_url) if isinstance(proxy_url, str) else None
        if proxy is None or proxy.scheme not in ("http", "https") or not proxy.hostname:
            raise ValueError(f"proxy_url: expected an http:// or https:// URL, got {proxy_url!r}")
    excludes = values.get("proxy_excludes", "")
    if not isinstance(excludes, str):
        raise ValueError(f"proxy_excludes: expected a comma-separated string, got {excludes!r}")
    proxy_ca = values.get("proxy_ca_certificate")
    root = values.get("root_certificate")
    read_timeout = values.get("read_timeout")
    return _Client(
        allow_http=_boolean(values.get("allow_http", False), "allow_http"),
        allow_invalid_certificates=_boolean(
            values.get("allow_invalid_certificates", False), "allow_invalid_certificates"
        ),
        timeout=_positive_duration(values["timeout"], "timeout") if "timeout" in values else _DEFAULT_TIMEOUT,
        connect_timeout=(
            _positive_duration(values["connect_timeout"], "connect_timeout")
            if "connect_timeout" in values
            else _DEFAULT_CONNECT_TIMEOUT
        ),
        read_timeout=_positive_duration(read_timeout, "read_timeout") if read_timeout is not None else None,
        headers=tuple(headers.values()),
        root_certificate=_pem(root, "root_certificate") if root is not None else None,
        proxy_url=proxy_url,
        proxy_ca_certificate=_pem(proxy_ca, "proxy_ca_certificate") if proxy_ca is not None else None,
        proxy_excludes=_excludes(excludes),
        pool_size=max(1, _count(values.get("pool_max_idle_per_host", _DEFAULT_POOL_SIZE), "pool_max_idle_per_host")),
    )


@dataclass(frozen=True, slots=True)
class _Retry:
    """The retry configuration of one source, parsed."""

    max_retries: int = _DEFAULT_MAX_RETRIES
    retry_timeout: float = _DEFAULT_RETRY_TIMEOUT
    init_backoff: float = _DEFAULT_INIT_BACKOFF
    max_backoff: float = _DEFAULT_MAX_BACKOFF
    base: float = _DEFAULT_BACKOFF_BASE


def _parse_retry(config: Mapping[str, Any] | None) -> _Retry:
    """Parse an obstore ``RetryConfig``. Unknown keys are ignored (as obstore does); a value that cannot be
    parsed raises ``ValueError``. Durations may be ``timedelta`` (obstore's type) or humantime strings."""
    if config is None:
        return _Retry()
    if not isinstance(config, Mapping):
        raise ValueError(f"retry_config must be a mapping, got {config!r}")
    max_retries = config.get("max_retries", _DEFAULT_MAX_RETRIES)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries: expected a non-negative int, got {max_retries!r}")
    backoff = config.get("backoff") or {}
    if not isinstance(backoff, Mapping):
        raise ValueError(f"backoff: expected a mapping, got {backoff!r}")
    base = backoff.get("base", _DEFAULT_BACKOFF_BASE)
    if isinstance(base, bool) or not isinstance(base, int | float) or not base >= 1:
        raise ValueError(f"backoff.base: expected a number of at least 1, got {base!r}")
    init = _duration(backoff["init_backoff"], "init_backoff") if "init_backoff" in backoff else _DEFAULT_INIT_BACKOFF
    most = _duration(backoff["max_backoff"], "max_backoff") if "max_backoff" in backoff else _DEFAULT_MAX_BACKOFF
    return _Retry(
        max_retries=max_retries,
        retry_timeout=(
            _duration(config["retry_timeout"], "retry_timeout") if "retry_timeout" in config else _DEFAULT_RETRY_TIMEOUT
        ),
        init_backoff=init,
        max_backoff=most,
        base=float(base),
    )


class _Backoff:
    """object_store's backoff: the first wait is ``init_backoff``; each next one is drawn uniformly from
    ``[init_backoff, previous * base)`` and capped at ``max_backoff`` (decorrelated jitter)."""

    def __init__(self, config: _Retry) -> None:
        self._config = config
        self._next = config.init_backoff

    def next(self) -> float:
        config = self._config
        high = self._next * config.base
        drawn = random.uniform(config.init_backoff, high) if high > config.init_backoff else config.init_backoff
        wait, self._next = self._next, min(config.max_backoff, drawn)
        return wait


# --------------------------------------------------------------------------------------------------------------------
# Paths and ranges
# --------------------------------------------------------------------------------------------------------------------

# The WHATWG path-segment percent-encode set that obstore's URLs use (Rust url crate, special schemes):
# controls, space, non-ASCII and  " # % / < > ? \ ` { }  are encoded; these stay as they are.
_SEGMENT_SAFE: Final = "!$&'()*+,;=:@[]^|"


def _encode_path(path: str) -> str:
    """The percent-encoded URL path (without the leading ``/``) that obstore's ``HTTPStore`` requests for the
    object path ``path``. Raises ``ValueError`` for a path obstore rejects: an empty, ``.`` or ``..`` segment,
    or an ASCII control character (object_store ``Path::parse``; one leading and one trailing ``/`` are
    dropped), or a lone surrogate."""
    if not isinstance(path, str):
        raise ValueError(f"an object path must be a str, got {path!r}")
    stripped = path.removeprefix("/")
    if not stripped:
        return ""
    stripped = stripped.removesuffix("/")
    segments = stripped.split("/")
    for segment in segments:
        if not segment:
            raise ValueError(f"object path {path!r} contains an empty segment")
        if segment in (".", ".."):
            raise ValueError(f"object path {path!r} contains the segment {segment!r}")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
            raise ValueError(f"object path {path!r} contains a control character")
    try:
        return "/".join(urllib.parse.quote(segment, safe=_SEGMENT_SAFE, errors="strict") for segment in segments)
    except UnicodeEncodeError:
        raise ValueError(f"object path {path!r} is not valid Unicode (a lone surrogate)") from None


def _merge_ranges(ranges: Sequence[tuple[int, int]], coalesce: int) -> list[tuple[int, int]]:
    """object_store's ``merge_ranges``: sort by start and merge every range that starts at most ``coalesce``
    bytes after the end of the merged range before it (overlapping ones too)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start - merged[-1][1] <= coalesce:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


_CONTENT_RANGE: Final = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED_RANGE: Final = re.compile(r"\s*bytes\s+\*/(\d+)\s*", re.IGNORECASE)


def _index(value: object, name: str) -> int:
    """``value`` if it is an ``int`` (not a ``bool``); raises ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Want:
    """Which bytes one ``get`` asks for: ``[start, end)`` (``end`` ``None``: to the end), or the last ``suffix``."""

    start: int
    end: int | None
    suffix: int | None

    @property
    def header(self) -> str | None:
        if self.suffix is not None:
            return f"bytes=-{self.suffix}"
        if self.end is not None:
            return f"bytes={self.start}-{self.end - 1}"
        if self.start > 0:
            return f"bytes={self.start}-"
        return None

    def span(self, size: int) -> tuple[int, int]:
        """The ``[first, stop)`` byte positions this selects of an object of ``size`` bytes (maybe empty)."""
        if self.suffix is not None:
            return max(0, size - self.suffix), size
        stop = size if self.end is None else min(self.end, size)
        return min(self.start, size), stop

    def satisfiable(self, size: int) -> bool:
        """Whether a server honouring the range would answer it for an object of ``size`` bytes (RFC 9110)."""
        if self.header is None:
            return True
        return size > 0 if self.suffix is not None else self.start < size


def _want(start: object, end: object, suffix: object) -> _Want:
    """Check ``get``'s range arguments; raises ``ValueError`` for a negative start, ``end <= start``, a suffix
    that is not positive, or a suffix together with a start or end."""
    first = _index(start, "start")
    if first < 0:
        raise ValueError(f"start must not be negative, got {first}")
    if suffix is not None:
        count = _index(suffix, "suffix")
        if count <= 0:
            raise ValueError(f"suffix must be positive, got {count}")
        if first != 0 or end is not None:
            raise ValueError("suffix cannot be combined with start or end")
        return _Want(0, None, count)
    if end is not None:
        stop = _index(end, "end")
        if stop <= first:
            raise ValueError(f"invalid range: end ({stop}) must be greater than start ({first})")
        return _Want(first, stop, None)
    return _Want(first, None, None)


# --------------------------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------------------------


class _QuietUnverifiedPool(urllib3.HTTPSConnectionPool):
    """An HTTPS pool for ``allow_invalid_certificates``: the caller opted in explicitly, so urllib3's
    ``InsecureRequestWarning`` (once per request, an error under warnings-as-errors) is not raised."""

    def _validate_conn(self, conn: Any) -> None:
        urllib3.HTTPConnectionPool._validate_conn(self, conn)
        if conn.is_closed:  # what HTTPSConnectionPool does, less the warning
            conn.connect()


def _excluded(host: str, excludes: Sequence[str]) -> bool:
    """Whether ``host`` bypasses the proxy by ``proxy_excludes`` (``NO_PROXY`` semantics): ``*``, a host name
    or a domain suffix (``example.com`` and ``.example.com`` both cover its subdomains), an IP or a CIDR block."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in excludes:
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry.lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _status_text(status: int, reason: str | None) -> str:
    """``"HTTP 500 Internal Server Error"``: the standard phrase (the server's own only for unknown codes)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = reason or ""
    return f"HTTP {status} {phrase}".rstrip()


def _seconds(value: float) -> str:
    """A duration for messages: ``"0.2 s"``."""
    return f"{value:.3g} s"


def _content_length(response: urllib3.BaseHTTPResponse, url: str) -> int | None:
    """The ``Content-Length`` header as an int (``None`` if absent); raises :class:`HTTPReadError` if invalid."""
    text = response.headers.get("Content-Length")
    if text is None:
        return None
    values = {part.strip() for part in text.split(",")}
    if len(values) != 1 or not all(v.isascii() and v.isdigit() for v in values):
        raise HTTPReadError(f"invalid Content-Length {text!r} from {url}", url=url, status=response.status)
    return int(values.pop())


def _cert_failure(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is a failed certificate verification: permanent, not retried."""
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return True
        stack.extend([item.__cause__, item.__context__, *item.args])
    return False


class HTTPSource:
    """Reads objects of one HTTP(S) origin, never following a redirect.

    ``base_url`` is ``scheme://host[:port]/`` (``http`` or ``https``; no user info, path, query or fragment).
    ``client_options`` and ``retry_config`` take obstore's ``ClientConfig`` and ``RetryConfig`` spellings:

    * ``timeout`` (whole request, connecting to the last byte of the body; default 30 s), ``connect_timeout``
      (default 5 s), ``read_timeout`` (each read from the socket; default none): humantime strings
      (``"200ms"``, ``"30s"``, ``"1 minute"``, ``"1.5s"``) or ``datetime.timedelta``;
    * ``default_headers`` (``{name: str | bytes}``, sent with every request, to this origin only),
      ``user_agent``, ``allow_http`` (needed for ``http://``; a bool or ``"true"``/``"false"``...),
      ``allow_invalid_certificates``, ``root_certificate`` (PEM, added to the system's roots),
      ``pool_max_idle_per_host`` (idle connections kept, default 32), ``proxy_url``, ``proxy_excludes``,
      ``proxy_ca_certificate``; keys are case-insensitive;
    * obstore keys that change nothing here (``default_content_type``, ``http2_keep_alive_*``,
      ``pool_idle_timeout``, ``randomize_addresses``, ``http1_only``...) are accepted and ignored;
      ``http2_only`` true raises (urllib3 speaks HTTP/1.1);
    * ``retry_config``: ``max_retries`` (int, default 10), ``retry_timeout`` (default 3 minutes),
      ``backoff`` = ``{"init_backoff", "max_backoff", "base"}`` (defaults 100 ms, 15 s, 2); durations as above.
      Unknown retry keys are ignored, as obstore does.

    Raises ``ValueError`` for a malformed ``base_url``, an unknown client option, an option value that cannot
    be parsed, or an ``http://`` URL without ``allow_http``. Thread-safe; :meth:`close` (or ``with``) releases
    the pooled connections. Pickles as its arguments (a new pool on the other side).
    """

    base_url: str
    """The normalised base URL, e.g. ``http://127.0.0.1:8080/``."""

    def __init__(
        self,
        base_url: str,
        *,
        client_options: Mapping[str, Any] | None = None,
        retry_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str):
            raise ValueError(f"base_url must be a str, got {base_url!r}")
        parts = urllib.parse.urlsplit(base_url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"base_url {base_url!r} has an invalid port") from None
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http://host[:port]/ or https://host[:port]/, got {base_url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"base_url must not hold user info; pass credentials as default_headers: {base_url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or base_url.endswith(("?", "#")):
            raise ValueError(f"base_url must be an origin with no path, query or fragment, got {base_url!r}")
        self._client_options = dict(client_options) if client_options is not None else None
        self._retry_config = dict(retry_config) if retry_config is not None else None
        client = _parse_client(client_options)
        self._retry = _parse_retry(retry_config)
        if scheme == "http" and not client.allow_http:
            raise ValueError(f"{base_url}: plain http:// needs client_options={{'allow_http': True}}")
        host = parts.hostname.lower()
        url_host = f"[{host}]" if ":" in host else host
        self.base_url = f"{scheme}://{url_host}{'' if port is None else f':{port}'}/"
        self._client = client
        self._headers = dict(client.headers)  # name -> value; each request sends a copy
        pool_kwargs: dict[str, Any] = {
            "maxsize": client.pool_size,
            "block": False,
            "retries": _NO_RETRIES,
            "timeout": Timeout(connect=client.connect_timeout, read=client.timeout),
        }
        pool_class: type[urllib3.HTTPConnectionPool] = urllib3.HTTPConnectionPool
        if scheme == "https":
            pool_class = urllib3.HTTPSConnectionPool
            pool_kwargs["ssl_context"] = _context(
                client.root_certificate, "root_certificate", verify=not client.allow_invalid_certificates
            )
            if client.allow_invalid_certificates:
                pool_class = _QuietUnverifiedPool
                pool_kwargs.update(cert_reqs="CERT_NONE", assert_hostname=False)
        if client.proxy_url is None:
            client = _environment_proxy(client, scheme)
        self._absolute_form = False  # request targets in absolute form: plain HTTP through a forwarding proxy
        self._pool: urllib3.HTTPConnectionPool
        self._manager: urllib3.ProxyManager | None = None
        if client.proxy_url is not None and not _excluded(host, client.proxy_excludes):
            proxy = urllib.parse.urlsplit(client.proxy_url)
            proxy_headers = {}
            if proxy.username is not None:
                credentials = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
                proxy_headers = urllib3.make_headers(proxy_basic_auth=credentials)
            manager = urllib3.ProxyManager(
                client.proxy_url,
                num_pools=1,
                proxy_headers=proxy_headers,
                proxy_ssl_context=(
                    _context(client.proxy_ca_certificate, "proxy_ca_certificate") if proxy.scheme == "https" else None
                ),
                **pool_kwargs,
            )
            manager.pool_classes_by_scheme = {"http": urllib3.HTTPConnectionPool, "https": pool_class}
            # The one pool used: to the proxy (plain HTTP, absolute-form targets) or tunnelled to this origin.
            self._pool = manager.connection_from_host(host, port, scheme)
            self._manager = manager
            self._absolute_form = scheme == "http"
        else:
            self._pool = pool_class(url_host, port, **pool_kwargs)
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"HTTPSource({self.base_url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_source, (self.base_url, self._client_options, self._retry_config))

    def __enter__(self) -> HTTPSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. Reads after this raise :class:`HTTPReadError`. Idempotent."""
        self._closed.set()
        self._pool.close()
        if self._manager is not None:
            self._manager.clear()

    def url(self, path: str) -> str:
        """The URL read for the object path ``path`` (percent-encoded as obstore's ``HTTPStore`` does).
        Raises ``ValueError`` for a path obstore rejects (see the module)."""
        return self.base_url + _encode_path(path)

    # -- blocking reads ---------------------------------------------------------------------------------------------

    def head(self, path: str) -> int | None:
        """The size of the object at ``path``: the ``Content-Length`` of a ``HEAD``; ``None`` for 404 or 410.

        Raises :class:`RedirectRefused` for any 3xx, :class:`HTTPTimeoutError` on timeouts,
        :class:`HTTPReadError` for other failures (401/403 and other statuses, a missing or invalid
        ``Content-Length``, connection failures) after the retries described in the module, and ``ValueError``
        for a path obstore rejects.
        """
        url = self.url(path)

        def read(response: urllib3.BaseHTTPResponse, deadline: float) -> int | None:
            if self._absent(response, url, None):
                return None
            size = _content_length(response, url)
            if size is None:
                raise HTTPReadError(f"no Content-Length in the answer to HEAD {url}", url=url, status=response.status)
            return size

        return self._request("HEAD", url, None, read)

    def get(
        self,
        path: str,
        start: int = 0,
        end: int | None = None,
        suffix: int | None = None,
        *,
        limit: int | None = None,
    ) -> bytes | None:
        """The bytes of the object at ``path``; ``None`` for 404 or 410.

        With the defaults, the whole object; ``start`` alone: ``Range: bytes=start-``; ``end`` (greater than
        ``start``): ``bytes=start-(end-1)``, which is shorter when the object ends before ``end``; ``suffix``:
        the last ``suffix`` bytes (``bytes=-suffix``). A server that ignores ``Range`` and sends the whole object
        is sliced here (reading no further than needed).

        ``limit`` is the most bytes this call may return: if the declared size (``Content-Length`` or
        ``Content-Range``) is larger, :class:`TooLarge` is raised before the body is read, and a body that turns
        out longer (no or a wrong declared size) raises :class:`TooLarge` as soon as it passes ``limit``. The
        body is read in pieces of at most 1 MiB (and of at most ``limit`` + 1 bytes), so what is held stays
        within ``limit`` plus one piece; a result of several pieces is then joined (one copy).

        Raises :class:`RangeNotSatisfiable` (416, or a range starting at or past the end when the server ignored
        ``Range``), :class:`RedirectRefused` for any 3xx, :class:`HTTPTimeoutError`, and :class:`HTTPReadError`
        for other statuses (401/403...), a ``206`` whose ``Content-Range`` is not what was asked, a body shorter
        than declared (connection closed early: never short bytes) or connection failures, after the retries
        described in the module; ``ValueError`` for invalid arguments (``end <= start``, ``suffix`` with
        ``start``/``end``, a negative ``limit``) or a path obstore rejects.
        """
        want = _want(start, end, suffix)
        if limit is not None and (_index(limit, "limit") < 0):
            raise ValueError(f"limit must not be negative, got {limit}")
        url = self.url(path)
        return self._request(
            "GET", url, want.header, lambda response, deadline: self._read_get(response, url, want, limit, deadline)
        )

    def get_ranges(self, path: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        """The bytes ``[starts[i], ends[i])`` of the object at ``path``, in input order.

        Ranges less than 1 MiB apart (or overlapping) are fetched with one request and sliced, as obstore does;
        the requests run up to 10 at a time. A range that runs past the end of the object is shorter; one that
        starts at or past the end raises :class:`RangeNotSatisfiable`. A missing object raises
        :class:`HTTPReadError` with ``status`` 404 (there is no ``None`` per range). Raises as :meth:`get` does
        otherwise, and ``ValueError`` if ``starts`` and ``ends`` differ in length or a range is empty or negative.
        """
        url = self.url(path)
        ranges, spans = _plan_ranges(starts, ends)
        if not spans:
            return []
        if len(spans) == 1:
            datas = [self._get_span(url, *spans[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(_COALESCE_PARALLEL, len(spans))) as pool:
                futures = [pool.submit(self._get_span, url, *span) for span in spans]
                # Wait for all (no request left running after this returns), then fail with the first error.
                datas = [future.result() for future in futures]
        return _slice_ranges(url, ranges, spans, datas)

    # -- async reads ------------------------------------------------------------------------------------------------

    async def head_async(self, path: str) -> int | None:
        """:meth:`head` in a thread of this module's pool: the event loop is never blocked."""
        return await _in_thread(self.head, path)

    async def get_async(
        self,
        path: str,
        start: int = 0,
        end: int | None = None,
        suffix: int | None = None,
        *,
        limit: int | None = None,
    ) -> bytes | None:
        """:meth:`get` in a thread of this module's pool: the event loop is never blocked."""
        return await _in_thread(functools.partial(self.get, path, start, end, suffix, limit=limit))

    async def get_ranges_async(self, path: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
        """:meth:`get_ranges` with each coalesced request in its own thread, at most 10 at a time."""
        url = self.url(path)
        ranges, spans = _plan_ranges(starts, ends)
        if not spans:
            return []
        gate = asyncio.Semaphore(_COALESCE_PARALLEL)

        async def fetch(span: tuple[int, int]) -> bytes:
            async with gate:
                return await _in_thread(self._get_span, url, *span)

        results = await asyncio.gather(*(fetch(span) for span in spans), return_exceptions=True)
        datas: list[bytes] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            datas.append(result)
        return _slice_ranges(url, ranges, spans, datas)

    # -- internals --------------------------------------------------------------------------------------------------

    def _get_span(self, url: str, start: int, end: int) -> bytes:
        want = _Want(start, end, None)
        data = self._request("GET", url, want.header, lambda r, deadline: self._read_get(r, url, want, None, deadline))
        if data is None:
            raise HTTPReadError(f"HTTP 404 Not Found for {url}", url=url, status=404)
        return data

    def _request(
        self,
        method: str,
        url: str,
        range_header: str | None,
        read: Callable[[urllib3.BaseHTTPResponse, float], _T],
    ) -> _T:
        """Send ``method`` for ``url`` and return ``read(response, deadline)``, retrying transient failures."""
        if self._closed.is_set():
            raise HTTPReadError(f"{self!r} is closed; cannot read {url}", url=url)
        headers = dict(self._headers) if range_header is None else {**self._headers, "Range": range_header}
        target = url if self._absolute_form else "/" + url[len(self.base_url) :]
        retry = self._retry
        backoff = _Backoff(retry)
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._attempt(method, url, target, headers, read)
            except _TransientError as transient:
                error = transient.error
                if attempts > retry.max_retries or time.monotonic() - started > retry.retry_timeout:
                    if attempts > 1:
                        error.args = (f"{error.args[0]} (gave up after {attempts} attempts)",)
                    raise error from error.__cause__
            time.sleep(backoff.next())

    def _attempt(
        self,
        method: str,
        url: str,
        target: str,
        headers: Mapping[str, str],
        read: Callable[[urllib3.BaseHTTPResponse, float], _T],
    ) -> _T:
        """One request: its answer read by ``read``; failures worth retrying raise :class:`_TransientError`."""
        client = self._client
        deadline = time.monotonic() + client.timeout
        # ``total`` bounds connecting plus waiting for the answer by the overall timeout; the body's reads are
        # bounded by the same deadline in _read1.
        timeout = Timeout(total=client.timeout, connect=client.connect_timeout, read=client.read_timeout)
        try:
            response = self._pool.urlopen(
                method,
                target,
                headers=headers,
                retries=_NO_RETRIES,
                redirect=False,  # never: a 3xx is answered with RedirectRefused below
                assert_same_host=not self._absolute_form,
                timeout=timeout,
                preload_content=False,
                decode_content=False,
                release_conn=False,
                enforce_content_length=True,
            )
        except Exception as error:
            raise self._failure(error, url, "connecting to or waiting for") from error
        reuse = False  # whether the rest of the body may be read off to keep the connection
        try:
            result = read(response, deadline)
            reuse = True
            return result
        except (HTTPError, OSError) as error:  # the connection failed while the body was being read
            raise self._failure(error, url, "reading") from error
        except _TransientError as transient:  # a 5xx/429 answer (reusable) or the overall deadline (not)
            reuse = not isinstance(transient.error, HTTPTimeoutError)
            raise
        except HTTPReadError as error:  # an answer that is an error: 3xx, 4xx, a wrong Content-Range...
            reuse = not isinstance(error, TooLarge)  # ...but a body too large is never read
            raise
        finally:
            _dispose(response, reuse=reuse, deadline=deadline)

    def _failure(self, error: Exception, url: str, doing: str) -> Exception:
        """The exception to raise for urllib3/socket ``error``: a :class:`_TransientError` when worth retrying."""
        if isinstance(error, HTTPReadError | _TransientError):
            return error
        if isinstance(error, NewConnectionError | ProxyError):
            failure = HTTPReadError(f"cannot connect for {url}: {_reason(error)}", url=url)
        elif isinstance(error, ConnectTimeoutError | ReadTimeoutError | Urllib3TimeoutError | TimeoutError):
            failure = HTTPTimeoutError(
                f"timed out {doing} {url} (timeout {_seconds(self._client.timeout)}, "
                f"connect_timeout {_seconds(self._client.connect_timeout)})",
                url=url,
            )
        elif isinstance(error, SSLError | ssl.SSLError):
            failure = HTTPReadError(f"TLS failed for {url}: {_reason(error)}", url=url)
            if _cert_failure(error):
                return failure
        elif isinstance(error, ProtocolError | OSError):
            short = next((a for a in error.args if isinstance(a, IncompleteRead | http.client.IncompleteRead)), None)
            if short is not None:
                failure = HTTPReadError(f"the body of {url} ended early ({_incomplete(short)})", url=url)
            else:
                failure = HTTPReadError(f"connection broken {doing} {url}: {_reason(error)}", url=url)
        else:
            failure = HTTPReadError(f"failed reading {url}: {_reason(error)}", url=url)
            failure.__cause__ = error
            return failure
        failure.__cause__ = error
        return _TransientError(failure)

    def _absent(self, response: urllib3.BaseHTTPResponse, url: str, range_header: str | None) -> bool:
        """True for 404/410; raises for every status other than 200/206 (retryable ones as :class:`_TransientError`)."""
        status = response.status
        if status in (200, 206):
            return False
        if status in (404, 410):
            return True
        if 300 <= status < 400:
            location = response.headers.get("Location")
            resolved = urllib.parse.urljoin(url, location.strip()) if location is not None else None
            raise RedirectRefused(url, resolved, status)
        if status == 416:
            match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            raise RangeNotSatisfiable(url, range_header, int(match.group(1)) if match else None)
        error = HTTPReadError(f"{_status_text(status, response.reason)} for {url}", url=url, status=status)
        if status >= 500 or status == 429:
            raise _TransientError(error)
        raise error

    def _read_get(
        self, response: urllib3.BaseHTTPResponse, url: str, want: _Want, limit: int | None, deadline: float
    ) -> bytes | None:
        """The bytes ``want`` selects, from ``response`` to a GET with ``want.header``; ``None`` if absent."""
        header = want.header
        if self._absent(response, url, header):
            return None
        status = response.status
        declared = _content_length(response, url)
        if status == 206:
            if header is None:
                raise HTTPReadError(f"HTTP 206 for {url}, which was asked for no range", url=url, status=status)
            first, stop = _check_content_range(response, url, want, header)
            if declared is not None and declared != stop - first:
                raise HTTPReadError(
                    f"Content-Length {declared} of {url} does not match its Content-Range {first}-{stop - 1}",
                    url=url,
                    status=status,
                )
            return self._stream(response, url, 0, stop - first, limit, deadline, exact=True)
        if status != 200:  # _absent let only 200 and 206 through
            raise AssertionError(status)
        # 200: the whole object, Range ignored (or none was sent): slice it here.
        if declared is not None:
            if not want.satisfiable(declared):
                raise RangeNotSatisfiable(url, header, declared, status=status)
            first, stop = want.span(declared)
            return self._stream(response, url, first, stop - first, limit, deadline, exact=False)
        if want.suffix is not None:
            return self._stream_tail(response, url, want.suffix, limit, deadline)
        count = None if want.end is None else want.end - want.start
        data = self._stream(response, url, want.start, count, limit, deadline, exact=False, open_ended=True)
        if header is not None and not data:  # the object ends at or before ``start``: nothing selected
            raise RangeNotSatisfiable(url, header, None, status=status)
        return data

    def _stream(
        self,
        response: urllib3.BaseHTTPResponse,
        url: str,
        skip: int,
        count: int | None,
        limit: int | None,
        deadline: float,
        *,
        exact: bool,
        open_ended: bool = False,
    ) -> bytes | None:
        """Read the body: discard ``skip`` bytes, then return the next ``count`` (``None``: up to its end).

        ``exact``: the body holds exactly ``count`` bytes (a 206). ``open_ended``: the body's size is unknown,
        so it may end early: return ``None`` if it ends within the first ``skip`` bytes, fewer bytes if it ends
        within ``count``. Otherwise a body that ends early raises. Raises :class:`TooLarge` past ``limit``
        (before reading anything when ``count`` already says so).
        """
        status = response.status
        if limit is not None and count is not None and count > limit:
            raise TooLarge(url, limit, count, status=status)
        skipped = 0
        while skipped < skip:
            piece = self._read1(response, url, min(_CHUNK, skip - skipped), deadline)
            if not piece:
                if open_ended:
                    return None
                raise HTTPReadError(f"the body of {url} ended early, at byte {skipped}", url=url, status=status)
            skipped += len(piece)
        pieces: list[bytes] = []
        got = 0
        while count is None or got < count:
            amount = _CHUNK if count is None else min(_CHUNK, count - got)
            if limit is not None:
                amount = min(amount, limit - got + 1)  # one byte past the limit is enough to know
            piece = self._read1(response, url, amount, deadline)
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
            if limit is not None and got > limit:
                raise TooLarge(url, limit, None, status=status)
        if count is not None and got < count and not open_ended:
            # urllib3 raises first when Content-Length said more; this catches a short chunked body.
            raise HTTPReadError(f"the body of {url} ended early: {got} of {count} bytes", url=url, status=status)
        if exact and response.headers.get("Content-Length") is None and self._read1(response, url, 1, deadline):
            raise HTTPReadError(f"the body of {url} is longer than its Content-Range", url=url, status=status)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _stream_tail(
        self, response: urllib3.BaseHTTPResponse, url: str, suffix: int, limit: int | None, deadline: float
    ) -> bytes:
        """The last ``suffix`` bytes of a body of unknown length, keeping no more than ``suffix`` + a chunk."""
        tail = bytearray()
        seen = 0
        amount = _CHUNK if limit is None else min(_CHUNK, limit + 1)  # never hold much more than the limit
        while True:
            piece = self._read1(response, url, amount, deadline)
            if not piece:
                break
            seen += len(piece)
            tail += piece
            if len(tail) > suffix:
                del tail[: len(tail) - suffix]
            if limit is not None and len(tail) > limit:
                raise TooLarge(url, limit, None, status=response.status)
        if seen == 0:
            raise RangeNotSatisfiable(url, f"bytes=-{suffix}", 0, status=response.status)
        return bytes(tail)

    def _read1(self, response: urllib3.BaseHTTPResponse, url: str, amount: int, deadline: float) -> bytes:
        """At most ``amount`` bytes of the body, from one read of the socket; ``b""`` at its end.

        Each read may wait only until ``deadline`` (the request's overall ``timeout``), so a body that trickles
        in cannot stretch a request past it.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TransientError(
                HTTPTimeoutError(f"timed out reading {url} (timeout {_seconds(self._client.timeout)})", url=url)
            )
        connection = response.connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            read_timeout = self._client.read_timeout
            sock.settimeout(remaining if read_timeout is None else min(read_timeout, remaining))
        return response.read1(amount, decode_content=False) or b""


def _rebuild_source(
    base_url: str, client_options: dict[str, Any] | None, retry_config: dict[str, Any] | None
) -> HTTPSource:
    return HTTPSource(base_url, client_options=client_options, retry_config=retry_config)


def _incomplete(error: IncompleteRead | http.client.IncompleteRead) -> str:
    partial = error.partial if isinstance(error.partial, int) else len(error.partial)
    expected = error.expected
    return f"the connection closed after {partial} bytes, {expected} more were expected"


def _reason(error: BaseException) -> str:
    """A short one-line reason for a urllib3/socket error, without urllib3's object reprs."""
    text = error.args[0] if isinstance(error, ProtocolError) and error.args and isinstance(error.args[0], str) else ""
    text = text or str(error)
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", text)
    text = re.sub(r"^HTTP(S)?ConnectionPool\([^)]*\):\s*", "", text)
    return _one_line(text) or type(error).__name__


def _dispose(response: urllib3.BaseHTTPResponse, *, reuse: bool, deadline: float) -> None:
    """Give the connection of ``response`` back to the pool. A small unread rest of the body (an error page,
    the tail after a slice) is read off so that the connection can be reused, but only until ``deadline``;
    otherwise the connection is closed: a large or unknown rest may be huge, or trickle in."""
    if response.connection is None:
        return  # the body was read to its end and the connection already went back
    remaining = getattr(response, "length_remaining", None)
    if reuse and remaining is not None and remaining <= _DRAIN_MAX:
        try:
            while True:
                left = deadline - time.monotonic()
                sock = getattr(response.connection, "sock", None)
                if left <= 0 or sock is None:
                    break
                sock.settimeout(left)
                if not response.read1(_DRAIN_MAX, decode_content=False):
                    return  # read to the end: urllib3 has put the connection back
        except (HTTPError, OSError):
            pass  # urllib3 closed the connection: it is put back below, to be reconnected
    response.close()
    response.release_conn()


def _plan_ranges(starts: Sequence[int], ends: Sequence[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Check ``get_ranges``' arguments and merge the ranges into the spans to fetch."""
    if len(starts) != len(ends):
        raise ValueError(f"starts and ends differ in length ({len(starts)} and {len(ends)})")
    ranges = []
    for start, end in zip(starts, ends, strict=True):
        first, stop = _index(start, "start"), _index(end, "end")
        if first < 0 or stop <= first:
            raise ValueError(f"invalid range requested: start {first}, end {stop}")
        ranges.append((first, stop))
    return ranges, _merge_ranges(ranges, _COALESCE)


def _slice_ranges(
    url: str, ranges: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], datas: Sequence[bytes]
) -> list[bytes]:
    """Cut each range out of the span that holds it; a range starting at or past the end of the object (its span
    came back shorter) raises :class:`RangeNotSatisfiable`."""
    span_starts = [span[0] for span in spans]
    out = []
    for start, end in ranges:
        index = bisect.bisect_right(span_starts, start) - 1
        span_start = span_starts[index]
        data = datas[index]
        offset = start - span_start
        if offset >= len(data):
            raise RangeNotSatisfiable(url, f"bytes={start}-{end - 1}", span_start + len(data), status=206)
        out.append(data[offset : end - span_start])
    return out


def _check_content_range(response: urllib3.BaseHTTPResponse, url: str, want: _Want, header: str) -> tuple[int, int]:
    """The ``[first, stop)`` of a 206's ``Content-Range``; raises :class:`HTTPReadError` unless it is what
    ``header`` asked for (shortened only where the object ends)."""
    text = response.headers.get("Content-Range")
    match = _CONTENT_RANGE.fullmatch(text or "")
    if match is None:
        raise HTTPReadError(
            f"HTTP 206 for {url} with Content-Range {text!r}, not one byte range", url=url, status=response.status
        )
    first, last = int(match.group(1)), int(match.group(2))
    size = None if match.group(3) == "*" else int(match.group(3))
    stop = last + 1
    ok = first <= last and (size is None or last < size)
    if ok and size is not None:
        ok = (first, stop) == want.span(size)
    elif ok:  # the size is not known: the range must lie within what was asked, from its start
        if want.suffix is not None:
            ok = stop - first <= want.suffix
        else:
            ok = first == want.start and (want.end is None or stop <= want.end)
    if not ok:
        raise HTTPReadError(
            f"HTTP 206 for {url} with Content-Range {text!r}, which is not the range asked for ({header})",
            url=url,
            status=response.status,
        )
    return first, stop
