"""Faults injected into real stores, and the rules kvmap keeps through them (issue "Trust II", part 3).

Reads succeed (after the retries the store is configured with) or raise a :class:`kvmap.KvmapError`
naming the key, the entry and the URL: never ``None`` for an object that exists, never other bytes,
and through zarr never fill values for a chunk that failed. Writes land whole or raise, and the old
bytes survive.

Every case is data (:data:`CASES`): the fault, the target, the operation, the retries, what the rules
expect and, for a rule kvmap breaks, what happens instead (an ``xfail(strict=True)`` test). One test
runs them all; the table in ``docs/reliability.md`` is made from the same records by
:func:`render_table`, and ``test_the_fault_table_in_docs_is_current`` keeps it so
(``python -m tests.test_faults --write`` rewrites it).

How faults are injected:

* S3 (``s3+http://``), HTTP and HTTPS targets are moto's S3 server behind :class:`tests.faults.FaultProxy`,
  which answers chosen requests with a status, a reset, a cut-short body, silence, a redirect, or
  changes an object just before forwarding one (HTTP(S) reads and writes are plain requests to moto's
  path-style URLs; the proxy adds the ``Authorization`` header moto wants).
* Objects replaced between calls (a ``size`` and a ``get``, a listing and a read, a zip directory and
  a member) are replaced directly in the store, on every target.
* Local write faults: a full disk (a small tmpfs, filled before or during a write; ``RLIMIT_FSIZE`` in
  a child process), a file system remounted read-only, a directory made immutable (``chattr +i``), a
  directory replaced by a regular file. Root ignores permission bits, so these are the faults that bind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import io
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
import zarr
from zarr.core.buffer import cpu

import kvmap
from kvmap.store import KVMapStore
from tests.faults import FaultProxy, Rule
from tests.servers import RangeHTTPServer, S3Server

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"

# -- the retry configurations every network case runs under ---------------------------------------

RETRIES: dict[str, dict[str, Any]] = {
    "on": {
        "max_retries": 3,
        "retry_timeout": datetime.timedelta(seconds=10),
        "backoff": {
            "init_backoff": datetime.timedelta(milliseconds=5),
            "max_backoff": datetime.timedelta(milliseconds=20),
        },
    },
    "off": {"max_retries": 0},
}
TIMEOUT = "5s"  # the client's timeout, where the case is not about timeouts
SHORT_TIMEOUT = "1s"  # where it is: the proxy then stays silent for HANG seconds
HANG = 3.0
FLAKY = 2  # a flaky fault hits the first FLAKY matching requests, then lets them through

# -- what the objects hold --------------------------------------------------------------------------

OBJ = bytes(range(100))
OBJ2 = bytes(range(100, 200))
OTHER = b"other object of the same origin"
NEW = b"NEW " * 40  # a replacement of another size
EVIL = b"E" * 1000  # what the other origin serves


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


ZIP_OLD = _zip({"c/0": b"A" * 1000, "c/1": b"B" * 10})
ZIP_NEW = _zip({"pad": b"P" * 300, "c/1": b"b" * 7, "c/0": b"a" * 900})

MANIFEST = [
    {"prefix": "c/", "path": "d/"},  # 0: prefix keys, writable
    {"key": "k", "path": "d/obj"},  # 1: an exact whole object
    {"key": "w", "path": "d/obj", "offset": 2, "length": 4},  # 2: a byte window
    {"key": "w2", "path": "d/obj", "offset": 10, "length": 5},  # 3: another window of the same object
    {"prefix": "z/", "path": "a.zip|zip:"},  # 4: zip members by prefix
    {"key": "zk", "path": "a.zip|zip:c/0"},  # 5: one zip member, exactly
]
ARRAY_OLD = np.arange(8, dtype="<i4")
ARRAY_NEW = np.arange(100, 108, dtype="<i4")
CHUNKS = {
    "c/0": (ARRAY_OLD[:4].tobytes(), ARRAY_NEW[:4].tobytes()),
    "c/1": (ARRAY_OLD[4:].tobytes(), ARRAY_NEW[4:].tobytes()),
}


@functools.cache
def _array_metadata() -> bytes:
    """The ``zarr.json`` of an (8,) int32 array in chunks of 4, fill value -1, uncompressed."""
    store = zarr.storage.MemoryStore()
    zarr.create_array(store, shape=(8,), chunks=(4,), dtype="<i4", fill_value=-1, compressors=None)
    return bytes(store._store_dict["zarr.json"].to_bytes())


def _files() -> dict[str, bytes]:
    return {
        "d/obj": OBJ,
        "d/obj2": OBJ2,
        "d/other": OTHER,
        "a.zip": ZIP_OLD,
        "m.json": json.dumps(MANIFEST).encode(),
        "za.json": json.dumps([{"prefix": "", "path": "arr/"}]).encode(),
        "arr/zarr.json": _array_metadata(),
        **{f"arr/{key}": old for key, (old, _) in CHUNKS.items()},
    }


# -- targets ----------------------------------------------------------------------------------------


@dataclass
class World:
    """One case's namespace on one target: ``root`` (a directory URL ending in ``/``) holds
    :func:`_files`. ``put``/``get``/``remove`` bypass every fault."""

    target: str
    root: str
    proxy: FaultProxy | None = None
    bucket_path: str = ""  # the path of ``root`` as requests name it (``/bucket/prefix/``)
    options: dict[str, Any] = field(default_factory=dict)
    local: Path | None = None
    raw: Any = None
    prefix: str = ""
    redirect_to: str = ""  # another origin, holding EVIL

    def put(self, path: str, data: bytes) -> None:
        if self.local is not None:
            (self.local / path).parent.mkdir(parents=True, exist_ok=True)
            (self.local / path).write_bytes(data)
        else:
            obstore.put(self.raw, self.prefix + path, data)

    def get(self, path: str) -> bytes | None:
        if self.local is not None:
            try:
                return (self.local / path).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        try:
            return bytes(obstore.get(self.raw, self.prefix + path).bytes())
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        if self.local is not None:
            (self.local / path).unlink()
        else:
            obstore.delete(self.raw, self.prefix + path)

    def leftovers(self) -> list[str]:
        """Temporary files of failed local writes (``NAME#DIGITS``) left anywhere in the namespace."""
        if self.local is None:
            return []
        return sorted(str(p.relative_to(self.local)) for p in self.local.rglob("*#*"))

    def stores(self, retries: str = "off", timeout: str = TIMEOUT) -> dict[str, Any] | None:
        if self.proxy is None:
            return None
        prefix = self.root[: self.root.index("/", self.root.index("//") + 2) + 1]
        options = {**self.options, "retry_config": RETRIES[retries]}
        options["client_options"] = {**self.options.get("client_options", {}), "timeout": timeout}
        return {prefix: options}

    def reader(self, retries: str = "off", timeout: str = TIMEOUT, **kw: Any) -> kvmap.Reader:
        return kvmap.Reader(self.root + "m.json", stores=self.stores(retries, timeout), **kw)

    def store(self, manifest: str = "m.json", retries: str = "off", timeout: str = TIMEOUT) -> KVMapStore:
        return KVMapStore(self.root + manifest, stores=self.stores(retries, timeout))

    def fault(self, rule: Rule) -> Rule:
        assert self.proxy is not None
        return self.proxy.add(rule)

    def path(self, path: str) -> str:
        """The request path of ``path`` in this namespace, as a proxy rule matches it."""
        return self.bucket_path + path


@dataclass
class Servers:
    s3: S3Server
    bucket: str
    proxy: FaultProxy
    tls_proxy: FaultProxy | None
    pem: str | None
    other: RangeHTTPServer
    tmp: Path

    shared: dict[str, World] = field(default_factory=dict)

    def world(self, target: str, tmp_path: Path, *, changes: bool = True) -> World:
        """A namespace on ``target`` holding :func:`_files`: a fresh one, or (unless the case
        ``changes`` it) one shared by the cases that do not."""
        if not changes and target in self.shared:
            return self.shared[target]
        w = self._world(target, tmp_path)
        if not changes and target not in ("local", "memory"):
            self.shared[target] = w
        return w

    def _world(self, target: str, tmp_path: Path) -> World:
        if target == "local":
            home = Path(os.path.realpath(tmp_path)) / "home"
            home.mkdir()
            w = World(target, home.as_uri() + "/", local=home)
        elif target == "memory":
            name = f"faults-{uuid.uuid4().hex[:12]}"
            w = World(target, f"memory://{name}/", raw=kvmap.memory_store(name))
        else:
            prefix = f"{uuid.uuid4().hex[:12]}/"
            proxy = self.proxy if target != "https" else self.tls_proxy
            if proxy is None:
                pytest.skip("no certificate for the HTTPS proxy (cryptography is not installed)")
            scheme = {"s3": "s3+http", "http": "http", "https": "https"}[target]
            origin = proxy.url.replace("http", scheme, 1) if target == "s3" else proxy.url
            options: dict[str, Any] = {}
            if target == "s3":
                options = {
                    "access_key_id": S3Server.ACCESS_KEY_ID,
                    "secret_access_key": S3Server.SECRET_ACCESS_KEY,
                    "region": S3Server.REGION,
                }
            elif target == "https":
                options = {"client_options": {"root_certificate": self.pem}}
            w = World(
                target,
                f"{origin}/{self.bucket}/{prefix}",
                proxy=proxy,
                bucket_path=f"/{self.bucket}/{prefix}",
                options=options,
                raw=self.s3.store(self.bucket),
                prefix=prefix,
            )
        w.redirect_to = f"{self.other.url}evil.bin"
        if w.local is not None:
            for path, data in _files().items():
                w.put(path, data)
        else:

            async def put_all() -> None:
                await asyncio.gather(*(obstore.put_async(w.raw, w.prefix + p, d) for p, d in _files().items()))

            asyncio.run(put_all())
        return w


def _certificate(folder: Path) -> tuple[ssl.SSLContext, str] | None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    # A CA and a server certificate it signs: rustls (obstore's writes) refuses a CA certificate as a
    # server's own, OpenSSL (kvmap.httpio's reads) takes either.
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, public: Any, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvmap faults CA")]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
        )
        if not ca:
            ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
            builder = builder.add_extension(x509.SubjectAlternativeName([ip]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("kvmap faults CA", ca_key.public_key(), ca_key, True)
    cert = certificate("127.0.0.1", key.public_key(), ca_key, False)
    pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, pem


@pytest.fixture(scope="module")
def servers(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "other").mkdir()
    (tmp / "other" / "evil.bin").write_bytes(EVIL)
    signed = {"Authorization": f"AWS {S3Server.ACCESS_KEY_ID}:x"}  # moto refuses unsigned GETs, takes any signature
    tls = _certificate(tmp)
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(s3_server.endpoint, default_headers=signed))
        tls_proxy = None
        if tls is not None:
            tls_proxy = stack.enter_context(FaultProxy(s3_server.endpoint, tls=tls[0], default_headers=signed))
        other = stack.enter_context(RangeHTTPServer(tmp / "other"))
        yield Servers(s3_server, bucket, proxy, tls_proxy, tls[1] if tls else None, other, tmp)


# -- outcomes: what a test observes, in words (the table's vocabulary) --------------------------

BYTES = "right bytes"
VALUES = "right values"
NEW_BYTES = "the new bytes, whole"
ABSENT = "absent (None): the object is gone"
FAILS = "TargetError naming key, entry, URL"
FAILS_REDIRECT = "TargetError naming key, entry, URL and the Location"
REFUSED = "WriteError naming key, entry, URL; old bytes kept"
DELETE_REFUSED = "WriteError naming key, entry, URL; object kept"
SIZE_RIGHT = "right size"
LISTED = "the right keys"
META_KEPT = "TargetError naming key, entry, URL; the array's metadata kept"
LIST_FAILS = "TargetError naming the manifest, its entry and the URL (a listing has no key)"
CHUNKS_REFUSED = "WriteError naming key, entry, URL; every chunk old or new, whole"
FILE_KEPT = "WriteError naming key, entry, URL; the file in the directory's place kept"
WRITTEN = "written, whole"
DELETED = "deleted"
#: What the rules allow: a case's ``expected`` must be one of these.
RULES = frozenset(
    {
        BYTES,
        VALUES,
        SIZE_RIGHT,
        LISTED,
        LIST_FAILS,
        META_KEPT,
        NEW_BYTES,
        ABSENT,
        FAILS,
        FAILS_REDIRECT,
        REFUSED,
        DELETE_REFUSED,
        CHUNKS_REFUSED,
        FILE_KEPT,
        WRITTEN,
        DELETED,
    }
)

#: key -> (entry, object path) of what an error must name, per operation.
Names = dict[str, tuple[int, str]]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]


def _error(exc: BaseException, w: World, names: Names, location: str | None = None) -> str:
    if not isinstance(exc, kvmap.KvmapError):
        return f"raw {type(exc).__name__}: {_one_line(exc)}"
    # A window that no longer fits is a TargetError (its subclass WindowError says which kind).
    kind = "TargetError" if isinstance(exc, kvmap.WindowError) else type(exc).__name__
    key, entry, url = getattr(exc, "key", None), getattr(exc, "entry", None), getattr(exc, "url", None)
    if key not in names or (entry, url) != (names[key][0], w.root + names[key][1]):
        return f"{kind} naming key {key!r}, entry {entry!r}, URL {url!r}: {_one_line(exc)}"
    if location is not None:
        return f"{kind} naming key, entry, URL" + (
            " and the Location" if location in str(exc) else ", not the Location"
        )
    return f"{kind} naming key, entry, URL"


def _data(got: Any) -> Any:
    if isinstance(got, list):
        return [_data(g) for g in got]
    return None if got is None else bytes(got)


def read_outcome(call: Callable[[], Any], w: World, names: Names, want: Any, location: str | None = None) -> str:
    try:
        got = _data(call())
    except Exception as exc:
        return _error(exc, w, names, location)
    if got == want:
        return ABSENT if want is None else NEW_BYTES if want == NEW else BYTES
    if got is None or (isinstance(got, list) and None in got):
        return "None for an existing object"
    if got == NEW:
        return NEW_BYTES
    return f"other bytes: {_whose(got)}"


def _whose(got: Any) -> str:
    """Whose bytes ``got`` are, in words."""
    flat = b"".join(g or b"" for g in got) if isinstance(got, list) else got
    if flat and set(flat) == set(EVIL):
        return "the other origin's"
    if flat == OTHER:
        return "another object's"
    if flat and flat in ZIP_NEW:
        return "the new archive's, from where the old directory says the member is"
    return repr(flat)[:40]


def zarr_read_outcome(call: Callable[[], Any], w: World, location: str | None = None) -> str:
    names = {key: (0, f"arr/{key}") for key in CHUNKS}
    try:
        got = call()
    except Exception as exc:
        return _error(exc, w, names, location)  # raised: no fill values
    if np.array_equal(got, ARRAY_OLD):
        return VALUES
    if (got == -1).any():
        return f"fill values for a chunk that failed: {got.tolist()}"
    return f"other values: {got.tolist()}"


def write_outcome(
    call: Callable[[], Any], w: World, names: Names, path: str, old: bytes | None, new: bytes | None
) -> str:
    """``new`` ``None``: a delete."""
    try:
        call()
    except Exception as exc:
        outcome = _error(exc, w, names)
        now = w.get(path)
        if now == old:
            outcome += "; old bytes kept" if new is not None else "; object kept"
        elif now == new:
            outcome += "; yet the new bytes landed"
        else:
            outcome += f"; the object now holds {now!r:.40} (a lost write)"
    else:
        now = w.get(path)
        outcome = (WRITTEN if new is not None else DELETED) if now == new else f"returned, but holds {now!r:.40}"
    if w.leftovers():
        outcome += f"; temporary files left: {w.leftovers()}"
    return outcome


def zarr_write_outcome(call: Callable[[], Any], w: World) -> str:
    try:
        call()
    except Exception as exc:
        outcome = _error(exc, w, {key: (0, f"arr/{key}") for key in CHUNKS})
        states = {key: w.get(f"arr/{key}") for key in CHUNKS}
        if all(states[key] in pair for key, pair in CHUNKS.items()):
            outcome += "; every chunk old or new, whole"
        else:
            outcome += f"; chunks now {states} (a lost or partial write)"
    else:
        states = {key: w.get(f"arr/{key}") for key in CHUNKS}
        outcome = WRITTEN if all(states[k] == new for k, (_, new) in CHUNKS.items()) else f"returned, chunks {states}"
    if w.leftovers():
        outcome += f"; temporary files left: {w.leftovers()}"
    return outcome


# -- operations: each primes its reader or store (reads the manifest), arms the fault, and acts ----

Arm = Callable[[], Any]  # arms the fault; returns the proxy rule, if any


def _location(armed: Any) -> str | None:
    return armed.location if isinstance(armed, Rule) and armed.action == "redirect" else None


def _get(w: World, retries: str, timeout: str, arm: Arm) -> str:
    r = w.reader(retries, timeout)
    r.get_sync("uncovered")  # reads the manifest
    location = _location(arm())
    return read_outcome(lambda: r.get_sync("k"), w, {"k": (1, "d/obj")}, OBJ, location)


def _size(w: World, retries: str, timeout: str, arm: Arm) -> str:
    r = w.reader(retries, timeout)
    r.get_sync("uncovered")
    arm()
    try:
        size = r.size_sync("c/obj")
    except Exception as exc:
        return _error(exc, w, {"c/obj": (0, "d/obj")})
    return SIZE_RIGHT if size == len(OBJ) else f"wrong size: {size!r}"


def _list(w: World, retries: str, timeout: str, arm: Arm) -> str:
    r = w.reader(retries, timeout)
    r.get_sync("uncovered")
    arm()
    try:
        keys = r.list_prefix_sync("c/")
    except kvmap.ResolveError as exc:
        if exc.url != w.root + "d/":
            return _error(exc, w, {})
        named = exc.manifest == w.root + "m.json" and exc.entry == 0
        return LIST_FAILS if named else "TargetError naming the URL only, not the manifest or its entry"
    except Exception as exc:
        return _error(exc, w, {})
    return LISTED if keys == ["c/obj", "c/obj2", "c/other"] else f"wrong keys: {keys}"


def _get_window_async(w: World, retries: str, timeout: str, arm: Arm) -> str:
    r = w.reader(retries, timeout)
    r.get_sync("uncovered")
    location = _location(arm())
    return read_outcome(lambda: asyncio.run(r.get("w", (1, 3))), w, {"w": (2, "d/obj")}, OBJ[3:5], location)


def _get_many(w: World, retries: str, timeout: str, arm: Arm) -> str:
    r = w.reader(retries, timeout)
    r.get_sync("uncovered")
    location = _location(arm())
    names = {"w": (2, "d/obj"), "w2": (3, "d/obj"), "c/obj2": (0, "d/obj2")}
    want = [OBJ[2:6], OBJ[10:15], OBJ2]
    return read_outcome(lambda: r.get_many_sync(["w", "w2", "c/obj2"]), w, names, want, location)


def _zarr_read(w: World, retries: str, timeout: str, arm: Arm) -> str:
    array = zarr.open_array(w.store("za.json", retries, timeout), mode="r")  # reads zarr.json
    location = _location(arm())
    return zarr_read_outcome(lambda: array[...], w, location)


def _zarr_open_append(w: World, retries: str, timeout: str, arm: Arm) -> str:
    store = w.store("za.json", retries, timeout)
    store.reader.get_sync("uncovered")  # reads the manifest
    arm()
    try:
        zarr.open_array(store, mode="a", shape=(3,), dtype="i1")
    except Exception as exc:
        outcome = _error(exc, w, {"zarr.json": (0, "arr/zarr.json")})
    else:
        outcome = "opened"
    kept = w.get("arr/zarr.json") == _array_metadata()
    return outcome + ("; the array's metadata kept" if kept else "; the array's metadata replaced (a lost array)")


def _set(w: World, retries: str, timeout: str, arm: Arm, value: bytes = NEW) -> str:
    store = w.store("m.json", retries, timeout)
    store.reader.explain_sync("c/obj")
    arm()
    data = cpu.Buffer.from_bytes(value)
    return write_outcome(lambda: store.set_sync("c/obj", data), w, {"c/obj": (0, "d/obj")}, "d/obj", OBJ, value)


def _delete(w: World, retries: str, timeout: str, arm: Arm) -> str:
    store = w.store("m.json", retries, timeout)
    store.reader.explain_sync("c/obj")
    arm()
    return write_outcome(lambda: asyncio.run(store.delete("c/obj")), w, {"c/obj": (0, "d/obj")}, "d/obj", OBJ, None)


class _TripStore(KVMapStore):
    """A :class:`KVMapStore` that calls ``trip`` once, just before it writes the key ``at``: a fault
    that strikes in the middle of a zarr array write (with zarr's ``async.concurrency`` at 1, after
    the chunks before ``at`` have landed)."""

    trip: Callable[[], Any] | None = None
    at = "c/1"

    async def set(self, key: str, value: Any) -> None:
        if key == self.at and self.trip is not None:
            trip, self.trip = self.trip, None
            trip()
        await super().set(key, value)


def _zarr_write(w: World, retries: str, timeout: str, arm: Arm, trip: Arm | None = None) -> str:
    store = _TripStore(w.root + "za.json", stores=w.stores(retries, timeout))
    store.trip = trip
    array = zarr.open_array(store, mode="r+")  # reads zarr.json

    def write() -> None:
        array[:] = ARRAY_NEW

    arm()
    if trip is None:
        return zarr_write_outcome(write, w)
    with zarr.config.set({"async.concurrency": 1}):  # one chunk after the other: the trip strikes between
        return zarr_write_outcome(write, w)


@dataclass(frozen=True)
class Op:
    name: str
    path: str  # the object path (in the namespace) that a proxy fault is aimed at
    run: Callable[[World, str, str, Arm], str]  # (world, retries, timeout, arm) -> outcome
    listing: bool = False  # the fault is aimed at the listing of ``path`` (a directory), not at an object

    def request(self, w: World) -> str:
        """What the requests the fault is aimed at contain (a proxy rule's ``path``)."""
        if self.listing:  # S3 lists with GET /bucket?list-type=2&prefix=...
            return "prefix=" + urllib.parse.quote(w.prefix + self.path, safe="")
        return w.path(self.path)


GET = Op("get (exact key)", "d/obj", _get)
SIZE = Op("size (prefix key)", "d/obj", _size)
LIST = Op("list_prefix (a prefix entry's directory)", "d/", _list, listing=True)
WINDOW = Op("get, async, a range of a byte window", "d/obj", _get_window_async)
MANY = Op("get_many (two windows, a prefix key)", "d/obj", _get_many)
ZARR_READ = Op("zarr read (`open_array(...)[...]`)", "arr/c/", _zarr_read)
ZARR_APPEND = Op('zarr `open_array(mode="a")`: its metadata read fails', "arr/zarr.json", _zarr_open_append)
SET = Op("set", "d/obj", _set)
DELETE = Op("delete, async", "d/obj", _delete)
ZARR_WRITE = Op("zarr write (`array[:] = ...`)", "arr/c/", _zarr_write)


# -- the cases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fault on one target under one operation. ``expected`` is what the rules demand and the
    test asserts; where kvmap breaks the rule, ``bug`` is the outcome the test observes instead
    (asserted too, under ``xfail(strict=True)``), ``why`` says why, and ``limit`` marks a documented
    limit (``docs/reliability.md``) rather than a new bug."""

    fault: str
    target: str
    operation: str
    retries: str  # "on", "off" (RETRIES), or "-" where nothing is retried (local files, memory)
    expected: str
    run: Callable[[World], str] = field(repr=False, compare=False)
    bug: str | None = None
    why: str = ""
    limit: bool = False
    changes: bool = True  # whether it changes the objects (else it may share a namespace with others)

    @property
    def id(self) -> str:
        words = f"{self.target} {self.retries} {self.fault} {self.operation}".lower()
        return "-".join("".join(c if c.isalnum() else " " for c in words).split())[:100]

    @property
    def observed(self) -> str:
        if self.bug is None:
            return self.expected
        return f"{'documented limit' if self.limit else 'BUG'} (xfail): {self.bug} ({self.why})"


CASES: list[Case] = []
NETWORK = ("s3", "http")
TLS = ("s3", "http", "https")  # HTTPS for a few faults: every TLS handshake is slow in Python
Expect = str | Callable[[Op, str], str]
Bugs = dict[str, tuple[str, str, bool]]  # target -> (observed, why, documented limit)


def _network(
    fault: str,
    rule: Callable[[World, str], Rule],
    ops: dict[Op, tuple[str, ...]],
    retries: str,
    expected: Expect,
    *,
    timeout: str = TIMEOUT,
    bugs: Bugs | None = None,
) -> None:
    """A case per operation and target of a proxy fault. ``rule(world, request path)`` is the fault;
    ``ops`` maps each operation to its targets; ``expected`` may depend on (operation, target)."""
    for op, targets in ops.items():
        for target in targets:

            def run(w: World, op: Op = op) -> str:
                armed: list[Rule] = []

                def arm() -> Rule:
                    armed.append(w.fault(rule(w, op.request(w))))
                    return armed[-1]

                outcome = op.run(w, retries, timeout, arm)
                return outcome if armed[0].hits else f"the fault was never injected ({outcome})"

            want = expected(op, target) if callable(expected) else expected
            bug, why, limit = (bugs or {}).get(target, (None, "", False))
            changes = op in (SET, DELETE, ZARR_WRITE)
            CASES.append(Case(fault, target, op.name, retries, want, run, bug, why, limit, changes))


def _status(status: int, **kw: Any) -> Callable[[World, str], Rule]:
    return lambda w, p: Rule("status", p, status=status, **kw)


def _action(action: Any, **kw: Any) -> Callable[[World, str], Rule]:
    return lambda w, p: Rule(action, p, **kw)


def _recovers(op: Op, target: str) -> str:
    return {ZARR_READ: VALUES, SIZE: SIZE_RIGHT, LIST: LISTED}.get(op, BYTES)


def _fails(op: Op, target: str) -> str:
    return {LIST: LIST_FAILS, ZARR_APPEND: META_KEPT}.get(op, FAILS)


def _refused(op: Op, target: str) -> str:
    return CHUNKS_REFUSED if op is ZARR_WRITE else REFUSED


READS = {GET: NETWORK, WINDOW: NETWORK, MANY: NETWORK, ZARR_READ: NETWORK}
TLS_READS = {**READS, GET: TLS}
FEW_READS = {GET: NETWORK, ZARR_READ: ("s3",)}  # faults whose every request fails alike: fewer operations
FLAKY_FOR = f"the first {FLAKY} requests"
HANGS = f"no answer within the client's {SHORT_TIMEOUT} timeout"

_network("HTTP 500 on every request", _status(500), FEW_READS, "on", FAILS)
_network("HTTP 500 on every request", _status(500), READS, "off", FAILS)
_network(f"HTTP 503 on {FLAKY_FOR}", _status(503, times=FLAKY), TLS_READS, "on", _recovers)
_network(f"HTTP 503 on {FLAKY_FOR}", _status(503, times=FLAKY), {GET: NETWORK}, "off", FAILS)
_network(f"connection reset on {FLAKY_FOR}", _action("reset", times=FLAKY), TLS_READS, "on", _recovers)
_network("connection reset on every request", _action("reset"), READS, "off", FAILS)
_network(
    f"body cut short (Content-Length larger) on {FLAKY_FOR}", _action("truncate", times=FLAKY), READS, "on", _recovers
)
_network("body cut short (Content-Length larger) on every request", _action("truncate"), TLS_READS, "off", FAILS)
_network(
    f"{HANGS} on {FLAKY_FOR}",
    _action("hang", times=FLAKY, seconds=HANG),
    FEW_READS,
    "on",
    _recovers,
    timeout=SHORT_TIMEOUT,
)
_network(
    f"{HANGS} on every request",
    _action("hang", seconds=HANG),
    {**FEW_READS, GET: TLS},
    "off",
    FAILS,
    timeout=SHORT_TIMEOUT,
)
_network("HTTP 403 on every request", _status(403), FEW_READS, "on", FAILS)

# Sizes (HEAD) and listings (S3's LIST): a failure is never "absent" or an empty listing.
_network("HTTP 500 on every request", _status(500), {SIZE: NETWORK, ZARR_APPEND: NETWORK}, "off", _fails)
_network("HTTP 500 on every request", _status(500), {LIST: ("s3",)}, "off", LIST_FAILS)
_network(f"HTTP 503 on {FLAKY_FOR}", _status(503, times=FLAKY), {SIZE: NETWORK, LIST: ("s3",)}, "on", _recovers)
_network(f"connection reset on {FLAKY_FOR}", _action("reset", times=FLAKY), {SIZE: NETWORK}, "on", _recovers)
_network("connection reset on every request", _action("reset"), {SIZE: NETWORK, ZARR_APPEND: NETWORK}, "off", _fails)
_network("connection reset on every request", _action("reset"), {LIST: ("s3",)}, "off", LIST_FAILS)
_network(
    "body cut short (Content-Length larger) on every request",
    _action("truncate"),
    {LIST: ("s3",)},
    "off",
    LIST_FAILS,
)

# A body slower than the client's timeout; a server that ignores Range (200 and the whole object:
# kvmap.httpio cuts the range out, obstore's S3 client refuses it).
_network(
    f"body trickling past the client's {SHORT_TIMEOUT} timeout on {FLAKY_FOR}",
    _action("trickle", times=FLAKY, seconds=2.0),
    {GET: NETWORK},
    "on",
    BYTES,
    timeout=SHORT_TIMEOUT,
)
_network(
    f"body trickling past the client's {SHORT_TIMEOUT} timeout on every request",
    _action("trickle", seconds=2.0),
    {GET: NETWORK},
    "off",
    FAILS,
    timeout=SHORT_TIMEOUT,
)
_network(
    "Range ignored (200 and the whole object) on every request",
    _action("ignore-range"),
    {WINDOW: NETWORK, MANY: NETWORK},
    "off",
    lambda op, target: FAILS if target == "s3" else BYTES,
)


def _same_origin(w: World, path: str) -> str:
    """The URL of request path ``path`` at the origin ``w``'s requests go to."""
    scheme, _, host = w.root.split("/")[:3]
    return f"{scheme.removeprefix('s3+')}//{host}{path}"


_ZARR_DECODES = "raw ValueError: cannot reshape array of size 250 into shape (4,)"
_FOLLOWS = "obstore's S3 client follows redirects, and kvmap cannot turn that off"
_network(
    "redirect (307) to another origin",
    lambda w, p: Rule("redirect", p, status=307, location=w.redirect_to),
    {GET: TLS},
    "off",
    FAILS_REDIRECT,
    bugs={"s3": ("other bytes: the other origin's", _FOLLOWS, True)},
)
_network(
    "redirect (307) to another origin",
    lambda w, p: Rule("redirect", p, status=307, location=w.redirect_to),
    {ZARR_READ: ("s3", "http")},
    "off",
    FAILS_REDIRECT,
    bugs={"s3": (_ZARR_DECODES, _FOLLOWS + ": zarr decodes the other origin's bytes", True)},
)
_network(
    "redirect (302) to another object of the same origin",
    lambda w, p: Rule("redirect", p, status=302, location=_same_origin(w, w.path("d/other"))),
    {GET: NETWORK},
    "off",
    FAILS_REDIRECT,
    bugs={"s3": ("other bytes: another object's", _FOLLOWS, True)},
)
_network(
    f"redirect (307) to the very same URL, on {FLAKY_FOR}",
    lambda w, p: Rule("redirect", p, status=307, location=_same_origin(w, p), times=FLAKY),
    {GET: NETWORK},
    "off",
    lambda op, target: BYTES if target == "s3" else FAILS_REDIRECT,  # S3 follows it: the same bytes
)

# Writes: PUT (obstore's S3 and HTTP stores), DELETE (HTTP), POST ?delete (S3's batch delete).
WRITES = {SET: NETWORK}
FLAKY_PUTS = f"the first {FLAKY} PUTs"


def _put(action: Any, **kw: Any) -> Callable[[World, str], Rule]:
    return lambda w, p: Rule(action, p, method="PUT", **kw)


def _del(action: Any, **kw: Any) -> Callable[[World, str], Rule]:
    def rule(w: World, p: str) -> Rule:
        if w.target == "s3":  # obstore deletes an S3 object with a batch delete: POST /bucket?delete
            return Rule(action, f"/{w.bucket_path.split('/')[1]}?delete", method="POST", **kw)
        return Rule(action, p, method="DELETE", **kw)

    return rule


_network("HTTP 500 on every PUT", _put("status", status=500), {SET: NETWORK, ZARR_WRITE: NETWORK}, "on", _refused)
_network("HTTP 500 on every PUT", _put("status", status=500), {SET: TLS}, "off", REFUSED)
_network(
    f"HTTP 503 on {FLAKY_PUTS}",
    _put("status", status=503, times=FLAKY),
    {SET: TLS, ZARR_WRITE: NETWORK},
    "on",
    WRITTEN,
)
_network(f"HTTP 503 on {FLAKY_PUTS}", _put("status", status=503, times=FLAKY), WRITES, "off", REFUSED)
_network(
    f"connection reset on {FLAKY_PUTS}, before they reach the server", _put("reset", times=FLAKY), WRITES, "on", WRITTEN
)
_network("connection reset on every PUT, before it reaches the server", _put("reset"), WRITES, "off", REFUSED)
_network(
    f"{HANGS} on {FLAKY_PUTS}", _put("hang", times=FLAKY, seconds=HANG), WRITES, "on", WRITTEN, timeout=SHORT_TIMEOUT
)
_network(f"{HANGS} on every PUT", _put("hang", seconds=HANG), WRITES, "off", REFUSED, timeout=SHORT_TIMEOUT)
_network("HTTP 403 on every PUT", _put("status", status=403), WRITES, "on", REFUSED)
_network(
    "PUT redirected (307) to another origin",
    lambda w, p: Rule("redirect", p, method="PUT", status=307, location=w.redirect_to),
    WRITES,
    "off",
    REFUSED,
)
_network(
    "PUT redirected (307) to another object of the same origin",
    lambda w, p: Rule("redirect", p, method="PUT", status=307, location=_same_origin(w, w.path("d/other"))),
    WRITES,
    "off",
    REFUSED,
)
_network("HTTP 500 on every delete", _del("status", status=500), {DELETE: TLS}, "off", DELETE_REFUSED)
_network("connection reset on every delete", _del("reset"), {DELETE: NETWORK}, "off", DELETE_REFUSED)


# -- objects that change between the calls (or requests) of a read ---------------------------------

EVERY = ("local", "memory", "s3", "http")


def _between(
    fault: str, operation: str, targets: tuple[str, ...], expected: str, bugs: Bugs | None = None
) -> Callable[[Callable[[World], str]], Callable[[World], str]]:
    """Decorates ``run(world)``, which changes an object between two calls and reads: a case per target."""

    def decorate(run: Callable[[World], str]) -> Callable[[World], str]:
        for target in targets:
            bug, why, limit = (bugs or {}).get(target, (None, "", False))
            retries = "-" if target in ("local", "memory") else "off"
            CASES.append(Case(fault, target, operation, retries, expected, run, bug, why, limit))
        return run

    return decorate


@_between(
    "object replaced (other size, other bytes) between `size` and `get`", "size, then get (exact key)", EVERY, NEW_BYTES
)
def _size_then_get(w: World) -> str:
    r = w.reader()
    assert r.size_sync("k") == len(OBJ)
    w.put("d/obj", NEW)
    return read_outcome(lambda: r.get_sync("k"), w, {"k": (1, "d/obj")}, NEW)


@_between("object shrunk below its byte window between `size` and `get`", "size, then get (byte window)", EVERY, FAILS)
def _size_then_short(w: World) -> str:
    r = w.reader()
    assert r.size_sync("w") == 4
    w.put("d/obj", b"01234")
    return read_outcome(lambda: r.get_sync("w"), w, {"w": (2, "d/obj")}, OBJ[2:6])


_LISTED = ("local", "memory", "s3")  # HTTP has no listing


@_between("object replaced between a listing and the read", "list_prefix, then get (prefix key)", _LISTED, NEW_BYTES)
def _list_then_get(w: World) -> str:
    r = w.reader()
    assert "c/obj" in r.list_prefix_sync("c/")
    w.put("d/obj", NEW)
    return read_outcome(lambda: r.get_sync("c/obj"), w, {"c/obj": (0, "d/obj")}, NEW)


@_between("object deleted between a listing and the read", "list_prefix, then get (prefix key)", _LISTED, ABSENT)
def _list_then_gone(w: World) -> str:
    r = w.reader()
    assert "c/obj" in r.list_prefix_sync("c/")
    w.remove("d/obj")
    return read_outcome(lambda: r.get_sync("c/obj"), w, {"c/obj": (0, "d/obj")}, None)


def _zip_replaced(read: Callable[[kvmap.Reader], Any], want: Any, names: Names) -> Callable[[World], str]:
    def run(w: World) -> str:
        r = w.reader()
        assert _data(r.get_sync("zk")) == b"A" * 1000  # the directory is read, and kept
        w.put("a.zip", ZIP_NEW)
        return read_outcome(lambda: read(r), w, names, want)

    return run


_ZIP = "zip archive replaced between its directory read and a member read"
_MEMBERS = {"z/c/0": (4, "a.zip"), "z/c/1": (4, "a.zip")}
_NO_IDENTITY = "kvmap's HTTP client reports no ETag, and a range of a stored member has no CRC-32 to check"
_between(_ZIP, "get (a whole member)", EVERY, FAILS)(
    _zip_replaced(lambda r: r.get_sync("zk"), b"A" * 1000, {"zk": (5, "a.zip")})
)
_between(
    _ZIP,
    "get (a range of a stored member)",
    EVERY,
    FAILS,
    bugs={
        "http": ("other bytes: the new archive's, from where the old directory says the member is", _NO_IDENTITY, True)
    },
)(_zip_replaced(lambda r: r.get_sync("zk", (0, 10)), b"A" * 10, {"zk": (5, "a.zip")}))
_between(_ZIP, "get_many (two members)", EVERY, FAILS)(
    _zip_replaced(lambda r: r.get_many_sync(["z/c/0", "z/c/1"]), [b"A" * 1000, b"B" * 10], _MEMBERS)
)


@_between(
    "zip archive replaced between a batch's ranges and its HEAD (proxy)", "get_many (two members)", ("s3",), FAILS
)
def _zip_between_ranges_and_head(w: World) -> str:
    r = w.reader()
    assert _data(r.get_sync("zk")) == b"A" * 1000
    w.fault(Rule("forward", w.path("a.zip"), method="HEAD", times=1, before=lambda: w.put("a.zip", ZIP_NEW)))
    return read_outcome(lambda: r.get_many_sync(["z/c/0", "z/c/1"]), w, _MEMBERS, [b"A" * 1000, b"B" * 10])


# -- local writes: a full disk, a read-only or immutable directory, a directory gone ---------------


def _local(fault: str, operation: str, expected: str) -> Callable[[Callable[[World], str]], Callable[[World], str]]:
    def decorate(run: Callable[[World], str]) -> Callable[[World], str]:
        CASES.append(Case(fault, "local", operation, "-", expected, run))
        return run

    return decorate


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def _tmpfs(w: World, directory: str, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted over ``directory`` of the namespace, holding what it held."""
    assert w.local is not None
    where = w.local / directory
    kept = {p.relative_to(where): p.read_bytes() for p in where.rglob("*") if p.is_file()}
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        for path, data in kept.items():
            (where / path).parent.mkdir(parents=True, exist_ok=True)
            (where / path).write_bytes(data)
        yield where
    finally:
        _run("umount", "-l", str(where))


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[Callable[[], None]]:
    """Yields a function that makes ``path`` immutable (``chattr +i``); undone on the way out."""

    def freeze() -> None:
        done = _run("chattr", "+i", str(path))
        if done.returncode:
            pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")

    try:
        yield freeze
    finally:
        _run("chattr", "-i", str(path))


def _fill(directory: Path) -> None:
    """Write a file into ``directory`` until its file system is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


_BIG = b"n" * (1 << 20)


@_local("disk full: a 1 MiB value onto a 64 KiB tmpfs (ENOSPC mid-write)", "set", REFUSED)
def _disk_full(w: World) -> str:
    with _tmpfs(w, "d", "64k"):
        return _set(w, "off", TIMEOUT, lambda: None, value=_BIG)


@_local("disk fills up during an array write (tmpfs filled before the second chunk)", ZARR_WRITE.name, CHUNKS_REFUSED)
def _disk_fills(w: World) -> str:
    with _tmpfs(w, "arr", "64k") as where:
        return _zarr_write(w, "-", TIMEOUT, lambda: None, trip=lambda: _fill(where / "c"))


_CHILD = """
import json, resource, signal, sys
import kvmap
from zarr.core.buffer import cpu
store = kvmap.KVMapStore(sys.argv[1])
store.reader.explain_sync("c/obj")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    store.set_sync("c/obj", cpu.Buffer.from_bytes(b"n" * 100_000))
except Exception as exc:
    fields = [getattr(exc, name, None) for name in ("key", "manifest", "entry", "url")]
    print(json.dumps([type(exc).__name__, getattr(exc, "reason", str(exc)), *fields]))
else:
    print(json.dumps(None))
"""


@_local("file size limit: RLIMIT_FSIZE of 4 KiB in a child process (EFBIG)", "set", REFUSED)
def _file_size_limit(w: World) -> str:
    def call() -> None:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, w.root + "m.json"], capture_output=True, text=True, check=True
        )
        found = json.loads(done.stdout)
        if found is not None:
            name, reason, key, manifest, entry, url = found
            cls = getattr(kvmap, name, None)
            if cls is None or not issubclass(cls, kvmap.ResolveError):
                raise RuntimeError(f"raw {name}: {reason}")
            raise cls(reason, key=key, manifest=manifest, entry=entry, url=url)

    return write_outcome(call, w, {"c/obj": (0, "d/obj")}, "d/obj", OBJ, b"n" * 100_000)


@_local("file system remounted read-only (EROFS)", "set", REFUSED)
def _read_only_set(w: World) -> str:
    with _tmpfs(w, "d", "1m") as where:
        return _set(w, "off", TIMEOUT, lambda: _run("mount", "-o", "remount,ro", str(where)))


@_local("file system remounted read-only (EROFS)", DELETE.name, DELETE_REFUSED)
def _read_only_delete(w: World) -> str:
    with _tmpfs(w, "d", "1m") as where:
        return _delete(w, "off", TIMEOUT, lambda: _run("mount", "-o", "remount,ro", str(where)))


@_local("directory made immutable (`chattr +i`, EPERM)", "set", REFUSED)
def _immutable_set(w: World) -> str:
    assert w.local is not None
    with _immutable(w.local / "d") as freeze:
        return _set(w, "off", TIMEOUT, freeze)


@_local("directory made immutable (`chattr +i`, EPERM)", DELETE.name, DELETE_REFUSED)
def _immutable_delete(w: World) -> str:
    assert w.local is not None
    with _immutable(w.local / "d") as freeze:
        return _delete(w, "off", TIMEOUT, freeze)


@_local("directory made immutable during an array write (before the second chunk)", ZARR_WRITE.name, CHUNKS_REFUSED)
def _immutable_during(w: World) -> str:
    assert w.local is not None
    with _immutable(w.local / "arr" / "c") as freeze:
        return _zarr_write(w, "-", TIMEOUT, lambda: None, trip=freeze)


@_local("the object's directory replaced by a regular file (ENOTDIR)", "set", FILE_KEPT)
def _directory_now_a_file(w: World) -> str:
    assert w.local is not None
    store = w.store()
    store.reader.explain_sync("c/obj")
    shutil.rmtree(w.local / "d")
    (w.local / "d").write_bytes(b"a file now")
    outcome = write_outcome(
        lambda: store.set_sync("c/obj", cpu.Buffer.from_bytes(NEW)), w, {"c/obj": (0, "d/obj")}, "d/obj", None, NEW
    )
    kept = (w.local / "d").read_bytes() == b"a file now"
    return (
        outcome.replace("; old bytes kept", "; the file in the directory's place kept")
        if kept
        else outcome + "; file lost"
    )


# -- the tests --------------------------------------------------------------------------------------


def _param(case: Case) -> Any:
    marks = []
    if case.bug is not None:
        marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"{case.bug} ({case.why})"))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fault(case: Case, servers: Servers, tmp_path: Path) -> None:
    assert case.expected in RULES, f"{case.expected!r} is not an outcome the rules allow"
    w = servers.world(case.target, tmp_path, changes=case.changes)
    if w.proxy is not None:
        w.proxy.clear()
    try:
        observed = case.run(w)
    finally:
        if w.proxy is not None:
            w.proxy.clear()
    if case.bug is not None and observed != case.bug:
        pytest.fail(f"the known bug changed: observed {observed!r}, recorded {case.bug!r}; update the case")
    assert observed == case.expected


def test_the_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# -- the table in docs/reliability.md ----------------------------------------------------------------

_INTRO = f"""\
## Faults injected, and what kvmap does

Generated from the cases `tests/test_faults.py` runs (`python -m tests.test_faults --write` rewrites this
section; `test_the_fault_table_in_docs_is_current` fails while it is stale). Each row is asserted by a test:
*expected* is what the rules demand, *observed* what the test sees — the same, except where a row says
**BUG** or **documented limit** (an `xfail(strict=True)` test that asserts the rule and the outcome seen
instead). The rules: a read returns the right bytes (after the retries the store is configured with) or
raises a `kvmap.KvmapError` whose `key`, `entry` and `url` name the key, its manifest entry and the object;
never `None` for an object that exists, never other bytes, never fill values through zarr. A write lands
whole or raises, and the old bytes survive.

- **Targets**: `local` files; `memory` stores; `s3`: moto's S3 server as `s3+http://` behind a fault
  proxy (`tests/faults.py`); `http` and `https`: moto's path-style URLs read by `kvmap.httpio` and written by
  obstore, through the same proxy (with TLS for `https`).
- **Retries**: *on* is `{{"max_retries": 3}}` with 5-20 ms backoff; *off* is `{{"max_retries": 0}}`; *-*: local
  files and memory stores, which retry nothing. A flaky fault hits the first {FLAKY} matching requests (kvmap
  itself reads again once after a failed first read, so one failure alone would not show).
- **Injection**: statuses, resets (TCP RST before the request is forwarded), bodies cut short, silence past
  the client's timeout and redirects come from the proxy, for the chosen method and request path; objects
  are replaced between calls directly in the store (for the batch's HEAD, by the proxy just before it
  forwards it); local faults are a tmpfs (full, or remounted read-only), `RLIMIT_FSIZE` in a child process,
  `chattr +i`, and a directory replaced by a file, some struck in the middle of a zarr array write.
- **Not injected**: faults of a memory store (it is in-process: nothing between kvmap and the bytes); read
  errors of a local disk (`EIO` needs a device-mapper target on a loop device, kernel-wide state on a shared
  machine; root reads whatever the permission bits say); a write that reaches the server and whose answer is
  then lost (no client can tell it from a failure: the proxy fails requests before forwarding them).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    """The section between the markers: the intro and one row per (fault, operation, retries,
    expected, observed), with the targets it holds for."""
    rows: dict[tuple[str, str, str, str, str], list[str]] = {}
    for c in CASES:
        rows.setdefault((c.fault, c.operation, c.retries, c.expected, c.observed), []).append(c.target)
    lines = [
        "| fault | operation | retries | targets | expected | observed |",
        "|---|---|---|---|---|---|",
    ]
    for (fault, operation, retries, expected, observed), targets in rows.items():
        same = "same" if observed == expected else observed
        cells = (fault, operation, retries, ", ".join(targets), expected, same)
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return f"{_INTRO}\n" + "\n".join(lines) + "\n"


def _section(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text[text.index(START) + len(START) : text.index(END)].strip("\n") + "\n"


def write_table(path: Path = DOC) -> None:
    """Rewrite the section of ``path`` between the markers (added at its end if absent)."""
    text = path.read_text()
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{START}\n{END}\n"
    head, tail = text[: text.index(START) + len(START)], text[text.index(END) :]
    path.write_text(f"{head}\n{render_table()}{tail}")


def test_the_fault_table_in_docs_is_current() -> None:
    assert _section(DOC.read_text()) == render_table(), (
        "the fault table in docs/reliability.md is stale: run `python -m tests.test_faults --write`"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_table()
        print(f"rewrote the fault table in {DOC}")
    else:
        print(render_table(), end="")
