"""KVMapStore against a model (issue "Trust II", part 1): hypothesis state machines drive a real
store over a composite manifest — prefix and range redirects, chained manifests, a zip archive,
whiteouts, inline values, exact entries and byte windows, onto a local directory, a memory store
and S3 on the loopback moto server — and compare every observable with a plain-dict model.

The model is small on purpose. Each target store is a dict ``path -> bytes``; each manifest is its
list of JSON entries. A key is resolved by ``tests.reference.expected`` (last entry to first) in the
top manifest, following ``|kvmap:`` into the nested manifest and ``|zip:`` into the archive's member
dict (spec 11.3); what the walk ends on says what a read gives, what a write does (12.2) and whether
the key is listed (12.1). The namespace is computed backwards: every exact key, and for each
redirect entry with strip ``s`` every ``lead + name`` where ``lead`` is the first ``s`` code points
its keys share and ``name`` an object (or member, or nested key) below its target; the candidates
are then kept exactly when the forward walk lists them. That is complete: a key ``k`` a redirect
lists is ``k[:s] + k[s:]``, and ``k[s:]`` is the name of what it reads.

Machine A keeps its manifests fixed; machine B rewrites them between steps and compares only once
the store was re-opened or told to forget (spec 11.5, 12.3: cached manifests are kept until then).
``KVMAP_HYPOTHESIS=long`` runs 50 times as many examples. The two kvmap bugs the machines found
(fixed) are regression tests at the end of the file. ``event()`` tallies what the walks ended on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import obstore
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync

import kvmap
from kvmap.store import KVMapStore
from tests.reference import absolute, default_strip, expected
from tests.servers import S3Server

LONG = os.environ.get("KVMAP_HYPOTHESIS") == "long"
SCALE = 50 if LONG else 1
# Explicit budgets (the "ci" profile's 2,000 examples are far too many for state machines): about
# 20 s for A and 12 s for B on 2 shared cores, S3 included.
SETTINGS_A = settings(
    max_examples=40 * SCALE, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SETTINGS_B = settings(
    max_examples=25 * SCALE, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- the key space ---------------------------------------------------------------------------------
# Directory names and leaf names are disjoint, and strips cut keys at segment boundaries only, so
# every object path is ``dir/.../leaf``: no local file is ever in the way of a local directory.
LEAVES = ("0", "1", "é %|#?")
DIRS = ("", "a/", "b/", "a/a/", "a/b/", "b/a/")
OBJECT_PATHS = tuple(d + leaf for d in DIRS for leaf in LEAVES)
DOC_KEYS = ("m.json", "i.json", "j.json", "z.zip", "nope.json", "a/i.json", "a/z.zip", "b/m.json")
KEYS = OBJECT_PATHS + DOC_KEYS
SELECTORS = ("", "a/", "b/", "a/b/")  # prefixes, and what range bounds start with
SUBS = ("", "a/", "b/")  # the directories redirects point at
BOUNDS = ("", "0", "1", "a", "a/1", "b", "b/", "m")
MEMBERS = ("0", "1", "a/0", "a/b/1", "b/é %|#?")
INNERS = ("i.json", "j.json")
LIST_PREFIXES = ("", "a", "a/", "b", "b/", "a/b/", "0", "m", "z", "i")
LIST_DIRS = ("", "a", "a/", "b/", "a/b", "a/a/", "z/")
READS = ("get", "get", "get", "exists", "getsize", "get_partial_values", "list", "list_prefix", "list_dir")

STORE = st.sampled_from("LLLMMMS")  # S3 is slower: used, but it does not dominate
VALUES = st.binary(max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text("ab/", max_size=3),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text("ab", max_size=2), inner, max_size=2),
    max_leaves=4,
)
REQUESTS = st.one_of(
    st.none(),
    st.builds(lambda start, n: RangeByteRequest(start, start + n), st.integers(0, 9), st.integers(0, 6)),
    st.builds(OffsetByteRequest, st.integers(0, 9)),
    st.builds(SuffixByteRequest, st.integers(0, 9)),
)

Where = tuple[str, str]  # (store, path): "L" the local directory, "M" the memory store, "S" S3


@dataclass(frozen=True)
class Obj:
    """A symbolic target: ``path`` in ``store``, written relative when ``rel`` and in the same store."""

    store: str
    path: str
    rel: bool


@dataclass(frozen=True)
class Pipe:
    """A symbolic pipeline target: ``file|adapter:apath`` in ``store``."""

    store: str
    file: str
    adapter: str
    apath: str
    rel: bool


# -- strategies: symbolic entries, materialised once the run's URLs are known -------------------------


def strips(p: str) -> list[int]:
    """The strips of a prefix ``p`` that cut at segment boundaries."""
    return [i for i in range(len(p) + 1) if i == 0 or p[i - 1] == "/"]


@st.composite
def redirect(draw: st.DrawFn, target: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A prefix or range entry onto ``target``; its keys all start with ``lead = min[:strip]``."""
    p = draw(st.sampled_from(SELECTORS))
    e: dict[str, Any]
    if draw(st.booleans()):
        e = {"prefix": p}
        strip = draw(st.none() | st.sampled_from(strips(p)))
        if strip is not None:
            e["strip_prefix"] = strip
    else:
        shape = draw(st.sampled_from(["both", "both", "min", "max"]))
        if shape == "both":  # [p + x, p + y): every key starts with p, so any strip of p is allowed
            x, y = sorted(draw(st.lists(st.sampled_from(BOUNDS), min_size=2, max_size=2, unique=True)))
            e = {"min": p + x, "max": p + y}
            if p + x == "" and draw(st.booleans()):
                del e["min"]
            e["strip_prefix"] = draw(st.sampled_from(strips(p)))
        elif shape == "min":
            e = {"min": p + draw(st.sampled_from(BOUNDS)), "strip_prefix": 0}
        else:
            e = {"max": p + draw(st.sampled_from([b for b in BOUNDS if b])), "strip_prefix": 0}
    e["path"] = draw(target)
    return e


def obj_dirs() -> st.SearchStrategy[Obj]:
    return st.builds(Obj, STORE, st.sampled_from(SUBS), st.booleans())


def obj_files() -> st.SearchStrategy[Obj]:
    return st.builds(Obj, STORE, st.sampled_from(OBJECT_PATHS), st.booleans())


KEY = st.sampled_from(KEYS)


@st.composite
def common_entry(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    if kind == "redirect":
        return draw(redirect(obj_dirs()))
    if kind == "exact":
        return {"key": draw(KEY), "path": draw(obj_files())}
    if kind == "window":
        e = {"key": draw(KEY), "path": draw(obj_files())}
        e.update(
            draw(
                st.sampled_from([{"offset": 0}, {"length": 2}])
                | st.builds(lambda o, n: {"offset": o, "length": n}, st.integers(0, 3), st.integers(0, 4))
            )
        )
        return e
    if kind == "whiteout":
        return {"key": draw(KEY), "path": None} if draw(st.booleans()) else draw(redirect(st.none()))
    assert kind == "inline"
    if draw(st.booleans()):
        return {"key": draw(KEY), "data": base64.b64encode(draw(VALUES)).decode()}
    return {"key": draw(KEY), "json": draw(JSON_VALUES)}


@st.composite
def top_entry(draw: st.DrawFn, inners: list[Where], zip_at: Where | None) -> dict[str, Any]:
    kinds = ["redirect"] * 3 + ["exact", "window", "whiteout", "inline"] + ["chain"] * 3 + ["missing"]
    kind = draw(st.sampled_from(kinds + ["zip"] * 2 if zip_at else kinds))
    rel = draw(st.booleans())
    if kind == "chain":
        store, file = draw(st.sampled_from(inners))
        if draw(st.integers(0, 3)):
            return draw(
                redirect(
                    st.builds(
                        Pipe, st.just(store), st.just(file), st.just("kvmap"), st.sampled_from(["", "a/"]), st.just(rel)
                    )
                )
            )
        return {"key": draw(KEY), "path": Pipe(store, file, "kvmap", draw(KEY), rel)}
    if kind == "zip":
        assert zip_at is not None
        store, file = zip_at
        if draw(st.booleans()):
            return draw(
                redirect(
                    st.builds(
                        Pipe, st.just(store), st.just(file), st.just("zip"), st.sampled_from(["", "a/"]), st.just(rel)
                    )
                )
            )
        return {"key": draw(KEY), "path": Pipe(store, file, "zip", draw(st.sampled_from([*MEMBERS, "b/0"])), rel)}
    if kind == "missing":  # a nested manifest that does not exist
        if draw(st.booleans()):
            return draw(redirect(st.just(Pipe("L", "nope.json", "kvmap", "", rel))))
        return {"key": draw(KEY), "path": Pipe("L", "nope.json", "kvmap", "0", rel)}
    return draw(common_entry(kind))


inner_entry = st.sampled_from(["redirect", "redirect", "exact", "window", "whiteout", "inline"]).flatmap(common_entry)


# Often a manifest starts with a redirect of every key (the lowest precedence: a base layer).
BASE_LAYER = st.builds(lambda t: {"prefix": "", "path": t}, st.builds(Obj, STORE, st.just(""), st.booleans()))


def manifest_entries(entry: st.SearchStrategy[dict[str, Any]], size: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.builds(
        lambda base, rest: base + rest,
        st.lists(BASE_LAYER, max_size=1),
        st.lists(entry, min_size=1, max_size=size),
    )


@dataclass
class Plan:
    inners: list[Where]
    inner_entries: list[list[dict[str, Any]]]
    zip_at: Where | None
    members: dict[str, bytes]
    top: list[dict[str, Any]]
    seeds: list[tuple[str, str, bytes]]
    compression: int


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    inners = [(draw(STORE), name) for name in INNERS]
    zip_at = draw(st.none() | st.tuples(st.sampled_from("LM"), st.just("z.zip")))
    members = draw(st.dictionaries(st.sampled_from(MEMBERS), VALUES, min_size=1)) if zip_at else {}
    # Each store holds about half of the object paths.
    seeds = [(store, path, draw(VALUES)) for store in "LMS" for path in OBJECT_PATHS if draw(st.booleans())]
    return Plan(
        inners=inners,
        inner_entries=[draw(manifest_entries(inner_entry, 4)) for _ in inners],
        zip_at=zip_at,
        members=members,
        top=draw(manifest_entries(top_entry(inners, zip_at), 7)),
        seeds=seeds,
        compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])),
    )


# -- the model -------------------------------------------------------------------------------------


class ModelRaisesError(Exception):
    """The model's answer: the operation raises ``error``."""

    def __init__(self, error: type[BaseException]) -> None:
        super().__init__(error.__name__)
        self.error = error


@dataclass(frozen=True)
class End:
    """Where a key's walk ends. ``kind``: "absent"; "dangling" (an exact entry names a missing
    manifest, archive or member); "inline" and "member" (``data``, read-only); "object" (``where``,
    with the exact entry's ``window``). ``exact``: the last entry of the walk is an exact one."""

    kind: str
    exact: bool = False
    where: Where | None = None
    window: tuple[int, int | None] | None = None
    data: bytes | None = None


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def clamp(data: bytes, request: ByteRequest | None) -> bytes:
    """zarr's store contract: ranges are cut to the value."""
    if request is None:
        return data
    if isinstance(request, RangeByteRequest):
        return data[request.start : request.end]
    if isinstance(request, OffsetByteRequest):
        return data[request.offset :]
    assert isinstance(request, SuffixByteRequest)
    return data[max(0, len(data) - request.suffix) :]


class Model:
    def __init__(self, bases: dict[str, str]) -> None:
        self.bases = bases
        self.objects: dict[str, dict[str, bytes]] = {s: {} for s in bases}
        self.manifests: dict[Where, tuple[list[dict[str, Any]], str]] = {}  # entries and URL
        self.zips: dict[Where, dict[str, bytes]] = {}
        self.top: Where = ("L", "m.json")

    def place(self, url: str) -> Where:
        for store, base in self.bases.items():
            if url.startswith(base):
                return store, unquote(url[len(base) :])
        raise AssertionError(f"no store for {url}")

    def url(self, where: Where) -> str:
        return self.bases[where[0]] + where[1]

    def materialize(self, entry: dict[str, Any], home: str) -> dict[str, Any]:
        """The JSON entry of a symbolic one, in a manifest held by store ``home``."""
        e = dict(entry)
        t = e.get("path")
        if isinstance(t, Obj):  # a URL's path is percent-decoded (11.2), and so is a step's (11.1)
            path = quote(t.path, safe="/")
            e["path"] = (path or "./") if t.rel and t.store == home else self.bases[t.store] + path
        elif isinstance(t, Pipe):
            head = t.file if t.rel and t.store == home else self.bases[t.store] + t.file
            e["path"] = f"{head}|{t.adapter}:{quote(t.apath, safe='/')}"
        return e

    # reads

    def walk(self, doc: Where, key: str) -> End:
        entries, url = self.manifests[doc]
        found = expected(entries, key, url)
        if found is None:
            return End("absent")
        i, target, offset, length, _ = found
        e = entries[i]
        exact = "key" in e
        if "data" in e:
            return End("inline", data=base64.b64decode(e["data"]))
        if "json" in e:
            return End("inline", data=compact(e["json"]))
        root, sep, rest = target.partition("|")
        where = self.place(root)
        if not sep:
            window = None if offset is None and length is None else (offset or 0, length)
            return End("object", exact=exact, where=where, window=window if exact else None)
        adapter, _, apath = rest.partition(":")
        apath = unquote(apath)
        if adapter == "kvmap":
            if where not in self.manifests:
                return End("dangling" if exact else "absent")
            return self.walk(where, apath)
        assert adapter == "zip"
        members = self.zips.get(where, {})
        if apath not in members:  # no archive, or no such member
            return End("dangling" if exact else "absent")
        return End("member", data=members[apath])

    def value(self, key: str) -> bytes | None:
        end = self.walk(self.top, key)
        if end.kind == "absent":
            return None
        if end.kind == "dangling":
            raise ModelRaisesError(kvmap.TargetError)
        if end.kind in ("inline", "member"):
            return end.data
        assert end.where is not None
        data = self.objects[end.where[0]].get(end.where[1])
        if data is None:
            if end.exact:
                raise ModelRaisesError(kvmap.TargetError)  # a dangling reference
            return None
        if end.window is None:
            return data
        offset, length = end.window
        if length is None:
            return data[offset:]
        if len(data) < offset + length:
            raise ModelRaisesError(kvmap.TargetError)  # the object is shorter than the window
        return data[offset : offset + length]

    def get(self, key: str, request: ByteRequest | None) -> bytes | None:
        data = self.value(key)
        return None if data is None else clamp(data, request)

    def size(self, key: str) -> int:
        data = self.value(key)
        if data is None:
            raise ModelRaisesError(FileNotFoundError)
        return len(data)

    # writes

    def documents(self) -> set[Where]:
        """The top manifest and every pipeline root its entries name (inner manifests name none)."""
        entries, url = self.manifests[self.top]
        roots = {self.top}
        for e in entries:
            path = e.get("path")
            if isinstance(path, str) and "|" in path:
                roots.add(self.place(absolute(path, url).partition("|")[0]))
        return roots

    def write_target(self, key: str, *, delete: bool) -> Where | None:
        """Where a write (or delete) of ``key`` lands, ``None`` if it is refused (spec 12.2)."""
        end = self.walk(self.top, key)
        if end.kind != "object" or end.window not in (None, (0, None)):
            return None
        if end.where in self.documents() or (delete and end.exact):
            return None
        return end.where

    def listed(self, doc: Where, key: str) -> bool:
        entries, url = self.manifests[doc]
        found = expected(entries, key, url)
        if found is None:
            return False
        if "key" in entries[found[0]]:
            return True  # exact keys are listed without I/O
        root, sep, rest = found[1].partition("|")
        store, path = self.place(root)
        if not sep:
            return path in self.objects[store]
        adapter, _, apath = rest.partition(":")
        if adapter == "kvmap":
            return (store, path) in self.manifests and self.listed((store, path), unquote(apath))
        return unquote(apath) in self.zips.get((store, path), {})

    def candidates(self, doc: Where) -> set[str]:
        entries, url = self.manifests[doc]
        out: set[str] = set()
        for e in entries:
            if "key" in e:
                out.add(e["key"])
                continue
            if e["path"] is None:
                continue
            lead = (e["prefix"] if "prefix" in e else e.get("min", ""))[: e.get("strip_prefix", default_strip(e))]
            root, sep, rest = absolute(e["path"], url).partition("|")
            store, base = self.place(root)
            if not sep:
                names: Iterable[str] = self.objects[store]
                start = base
            else:
                adapter, _, apath = rest.partition(":")
                start = unquote(apath)
                if adapter == "kvmap":
                    names = self.candidates((store, base)) if (store, base) in self.manifests else ()
                else:
                    names = self.zips.get((store, base), {})
            out.update(lead + n[len(start) :] for n in names if n.startswith(start))
        return out

    def namespace(self) -> list[str]:
        return sorted(k for k in self.candidates(self.top) if self.listed(self.top, k))


def children(namespace: list[str], directory: str) -> list[str]:
    d = directory if directory == "" or directory.endswith("/") else directory + "/"
    return sorted({k[len(d) :].split("/", 1)[0] for k in namespace if k.startswith(d)})


# -- the real stores ---------------------------------------------------------------------------------


@dataclass
class Env:
    root: Path
    s3: S3Server
    bucket: str

    @property
    def s3_root(self) -> str:
        return self.s3.endpoint.replace("http://", "s3+http://") + "/"

    @property
    def stores(self) -> dict[str, dict[str, Any]]:
        options = {
            "access_key_id": S3Server.ACCESS_KEY_ID,
            "secret_access_key": S3Server.SECRET_ACCESS_KEY,
            "region": S3Server.REGION,
            "retry_config": {"max_retries": 0},
        }
        return {self.s3_root: options}


class Places:
    """One run's three stores: a fresh local directory, memory store and S3 prefix."""

    def __init__(self, env: Env) -> None:
        run = uuid.uuid4().hex[:12]
        self.dir = (env.root / run).resolve()
        self.dir.mkdir()
        name = f"model-{run}"
        self.memory = kvmap.memory_store(name)
        self.s3 = env.s3.store(env.bucket, prefix=run)
        self.bases = {"L": self.dir.as_uri() + "/", "M": f"memory://{name}/", "S": f"{env.s3_root}{env.bucket}/{run}/"}

    def put(self, store: str, path: str, data: bytes) -> None:
        if store == "L":
            (self.dir / path).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / path).write_bytes(data)
        else:
            obstore.put(self.memory if store == "M" else self.s3, path, data)

    def fingerprints(self, store: str) -> dict[str, str]:
        """Every object of ``store`` and the MD5 of its bytes (S3: the ETag, which moto makes the MD5)."""
        if store == "L":
            return {
                p.relative_to(self.dir).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                for p in self.dir.rglob("*")
                if p.is_file()
            }
        if store == "M":
            return {
                m["path"]: hashlib.md5(bytes(obstore.get(self.memory, m["path"]).bytes())).hexdigest()
                for m in obstore.list(self.memory).collect()
            }
        return {m["path"]: str(m["e_tag"]).strip('"') for m in obstore.list(self.s3).collect()}


async def _collect(it: Any) -> list[str]:
    return [k async for k in it]


def expect(want: Callable[[], Any], got: Callable[[], Any]) -> None:
    """The real operation ``got`` does what the model ``want`` says: the same value, or the same error."""
    try:
        answer = want()
    except ModelRaisesError as fails:
        with pytest.raises(fails.error):
            got()
        return
    assert got() == answer


def as_bytes(buffer: Any) -> bytes | None:
    return None if buffer is None else buffer.to_bytes()


# -- machine A: a fixed composite manifest -----------------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    """Writes and reads through a composite manifest, each observable compared with the model."""

    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.places = Places(env)
        self.model = Model(self.places.bases)
        self.store: KVMapStore | None = None
        self.stale = False
        self.ns: list[str] = []

    # setup

    def save_manifest(self, where: Where, entries: list[dict[str, Any]]) -> None:
        """Write a manifest (atomically with ``Manifest.save`` on disk) and record it in the model."""
        url = self.model.url(where)
        manifest = kvmap.Manifest.from_json({"kvmap": 1, "entries": entries}, url=url)
        store, path = where
        if store == "L":
            manifest.save(self.places.dir / path)
            data = (self.places.dir / path).read_bytes()
        else:
            data = manifest.dumps()
            self.places.put(store, path, data)
        self.model.objects[store][path] = data
        self.model.manifests[where] = (entries, url)

    def open(self) -> KVMapStore:
        return KVMapStore(self.places.dir / "m.json", allow=list(self.places.bases.values()), stores=self.env.stores)

    @initialize(plan=plans())
    def setup(self, plan: Plan) -> None:
        for store, path, data in plan.seeds:
            self.places.put(store, path, data)
            self.model.objects[store][path] = data
        if plan.zip_at is not None:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", plan.compression) as zf:
                for name, data in plan.members.items():
                    zf.writestr(name, data)
            store, path = plan.zip_at
            self.places.put(store, path, buf.getvalue())
            self.model.objects[store][path] = buf.getvalue()
            self.model.zips[plan.zip_at] = dict(plan.members)
        for where, entries in zip(plan.inners, plan.inner_entries, strict=True):
            self.save_manifest(where, [self.model.materialize(e, where[0]) for e in entries])
        self.save_manifest(self.model.top, [self.model.materialize(e, "L") for e in plan.top])
        self.store = self.open()

    def teardown(self) -> None:
        shutil.rmtree(self.places.dir, ignore_errors=True)

    # helpers

    def draw_key(self, data: st.DataObject, op: str = "read") -> str:
        covered = [k for k in KEYS if self.model.walk(self.model.top, k).kind != "absent"]
        pools = [st.sampled_from(keys) for keys in (KEYS, covered, self.ns) if keys]
        key = data.draw(st.one_of(pools), label="key")
        event(f"{op}: {self.describe(key)}")
        return key

    def describe(self, key: str) -> str:
        """What the key's walk ends on, for hypothesis' statistics (``event``)."""
        end = self.model.walk(self.model.top, key)
        if end.kind != "object":
            return end.kind
        assert end.where is not None
        what = "exact" if end.exact else "redirect"
        if end.window not in (None, (0, None)):
            what += " window"
        if end.where in self.model.documents():
            what += " document"
        found = end.where[1] in self.model.objects[end.where[0]]
        return f"{what} {end.where[0]} {'found' if found else 'missing'}"

    def protected(self, where: Where) -> bool:
        """Whether the machine must not write ``where`` (machine B: manifest files that are no
        document of the current chain, which a later step may make one again)."""
        return False

    def check_stores(self) -> None:
        for store in self.model.objects:
            want = {p: hashlib.md5(d).hexdigest() for p, d in self.model.objects[store].items()}
            assert self.places.fingerprints(store) == want, store

    @property
    def s(self) -> KVMapStore:
        assert self.store is not None
        return self.store

    # reads: one rule, so that reads, sets and deletes come about equally often

    @precondition(lambda self: self.store is not None and not self.stale)
    @rule(data=st.data(), op=st.sampled_from(READS))
    def read(self, data: st.DataObject, op: str) -> None:
        getattr(self, f"_{op}")(data)

    def _get(self, data: st.DataObject) -> None:
        key = self.draw_key(data)
        request = data.draw(REQUESTS, label="request")
        if data.draw(st.booleans(), label="blocking"):
            expect(lambda: self.model.get(key, request), lambda: as_bytes(self.s.get_sync(key, byte_range=request)))
        else:
            proto = default_buffer_prototype()
            expect(lambda: self.model.get(key, request), lambda: as_bytes(sync(self.s.get(key, proto, request))))

    def _exists(self, data: st.DataObject) -> None:
        key = self.draw_key(data)
        expect(lambda: self.model.value(key) is not None, lambda: sync(self.s.exists(key)))

    def _getsize(self, data: st.DataObject) -> None:
        key = self.draw_key(data)
        expect(lambda: self.model.size(key), lambda: sync(self.s.getsize(key)))

    def _get_partial_values(self, data: st.DataObject) -> None:
        requests = data.draw(st.lists(REQUESTS, min_size=1, max_size=4), label="requests")
        pairs = [(self.draw_key(data), r) for r in requests]
        proto = default_buffer_prototype()
        expect(
            lambda: [self.model.get(k, r) for k, r in pairs],
            lambda: [as_bytes(b) for b in sync(self.s.get_partial_values(proto, pairs))],
        )

    def _list(self, data: st.DataObject) -> None:
        assert sync(_collect(self.s.list())) == self.model.namespace()

    def _list_prefix(self, data: st.DataObject) -> None:
        pool = st.sampled_from(LIST_PREFIXES)
        if self.ns:
            pool = pool | st.sampled_from(self.ns).flatmap(lambda k: st.integers(0, len(k)).map(lambda i: k[:i]))
        prefix = data.draw(pool, label="prefix")
        want = [k for k in self.model.namespace() if k.startswith(prefix)]
        assert sync(_collect(self.s.list_prefix(prefix))) == want

    def _list_dir(self, data: st.DataObject) -> None:
        pool = st.sampled_from(LIST_DIRS)
        if self.ns:
            pool = pool | st.sampled_from(self.ns).map(lambda k: k[: k.rfind("/") + 1])
        directory = data.draw(pool, label="directory")
        assert sync(_collect(self.s.list_dir(directory))) == children(self.model.namespace(), directory)

    # writes

    @precondition(lambda self: self.store is not None and not self.stale)
    @rule(data=st.data(), value=VALUES, blocking=st.booleans())
    def set(self, data: st.DataObject, value: bytes, blocking: bool) -> None:
        key = self.draw_key(data, "set")
        buffer = cpu.Buffer.from_bytes(value)
        self.write(key, value, lambda: self.s.set_sync(key, buffer) if blocking else sync(self.s.set(key, buffer)))

    @precondition(lambda self: self.store is not None and not self.stale)
    @rule(data=st.data(), blocking=st.booleans())
    def delete(self, data: st.DataObject, blocking: bool) -> None:
        key = self.draw_key(data, "delete")
        self.write(key, None, lambda: self.s.delete_sync(key) if blocking else sync(self.s.delete(key)))

    def write(self, key: str, value: bytes | None, attempt: Callable[[], Any]) -> None:
        """``attempt`` writes ``value`` to ``key`` (``None``: deletes it); compare with the model."""
        delete = value is None
        where = self.model.write_target(key, delete=delete)
        if where is not None and self.protected(where):
            return
        if where is None:
            with pytest.raises(kvmap.WriteError):
                attempt()
        else:
            attempt()
        if where is not None:
            if delete:
                self.model.objects[where[0]].pop(where[1], None)
            else:
                assert value is not None
                self.model.objects[where[0]][where[1]] = value
        self.check_stores()

    # after every step: the namespace and the root directory (the read rule lists others)

    @precondition(lambda self: self.store is not None and not self.stale)
    @invariant()
    def listing_agrees(self) -> None:
        self.ns = self.model.namespace()
        event(f"namespace: {min(len(self.ns) // 5 * 5, 20)}+ keys")
        assert sync(_collect(self.s.list_prefix(""))) == self.ns
        assert sync(_collect(self.s.list_dir(""))) == children(self.ns, "")


# -- machine B: the manifests change between steps -----------------------------------------------------


class ChangingManifestMachine(StoreMachine):
    """Machine A, plus steps that rewrite the manifests. The store may serve its cached view until
    it is re-opened or told to forget (spec 11.5, 12.3): nothing is compared in between."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.inners: list[Where] = []
        self.zip_at: Where | None = None

    @initialize(plan=plans())
    def setup(self, plan: Plan) -> None:
        super().setup(plan)
        self.inners, self.zip_at = plan.inners, plan.zip_at

    def protected(self, where: Where) -> bool:
        return where in self.model.manifests or where[1] in DOC_KEYS

    @precondition(lambda self: self.store is not None)
    @rule(data=st.data())
    def replace_top(self, data: st.DataObject) -> None:
        entries = data.draw(manifest_entries(top_entry(self.inners, self.zip_at), 7), label="top")
        self.save_manifest(self.model.top, [self.model.materialize(e, "L") for e in entries])
        self.stale = True

    @precondition(lambda self: self.store is not None)
    @rule(data=st.data())
    def replace_inner(self, data: st.DataObject) -> None:
        where = data.draw(st.sampled_from(self.inners), label="inner")
        entries = data.draw(manifest_entries(inner_entry, 4), label="entries")
        self.save_manifest(where, [self.model.materialize(e, where[0]) for e in entries])
        self.stale = True

    @precondition(lambda self: self.store is not None)
    @rule(data=st.data())
    def rechain(self, data: st.DataObject) -> None:
        """Point every ``|kvmap:`` entry of one inner manifest at the other one."""
        old, new = data.draw(st.permutations(self.inners), label="rechain")
        entries, url = self.model.manifests[self.model.top]
        old_url, new_url = self.model.url(old), self.model.url(new)
        changed = []
        for e in entries:
            path = e.get("path")
            if isinstance(path, str) and "|kvmap:" in path:
                root, _, rest = path.partition("|")
                if absolute(root, url) == old_url:
                    e = {**e, "path": f"{new_url}|{rest}"}
            changed.append(e)
        self.save_manifest(self.model.top, changed)
        self.stale = True

    @precondition(lambda self: self.store is not None)
    @rule()
    def resave_unchanged(self) -> None:
        """The same document saved again (a new file under the old name): nothing changes."""
        entries, _ = self.model.manifests[self.model.top]
        self.save_manifest(self.model.top, entries)

    @precondition(lambda self: self.store is not None)
    @rule()
    def reopen(self) -> None:
        self.store = self.open()
        self.stale = False

    @precondition(lambda self: self.store is not None)
    @rule()
    def forget(self) -> None:
        self.s.reader.chain.forget()
        self.stale = False


# -- the tests ---------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, s3_server: S3Server) -> Env:
    bucket = f"model-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    return Env(tmp_path, s3_server, bucket)


def test_store_against_model(env: Env) -> None:
    run_state_machine_as_test(lambda: StoreMachine(env), settings=SETTINGS_A)


def test_changing_manifests_against_model(env: Env) -> None:
    run_state_machine_as_test(lambda: ChangingManifestMachine(env), settings=SETTINGS_B)


# -- what the machines found: kvmap bugs, fixed; regression tests ------------------------------------


def _local_store(tmp_path: Path, entries: list[dict[str, Any]]) -> KVMapStore:
    (tmp_path / "m.json").write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return KVMapStore(tmp_path / "m.json")


def _files(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


# Spec 12.2: a write or delete whose walk ends on a nested manifest that does not exist, or on a zip
# member, is refused with a WriteError; through an exact entry kvmap raised the read's TargetError.
@pytest.mark.parametrize("target", ["nope.json|kvmap:0", "z.zip|zip:b/0", "gone.zip|zip:0"])
def test_a_write_through_a_dangling_exact_entry_is_a_write_error(tmp_path: Path, target: str) -> None:
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("0", b"x")
    store = _local_store(tmp_path, [{"key": "k", "path": target}])
    before = _files(tmp_path)
    for attempt in (lambda: store.set_sync("k", cpu.Buffer.from_bytes(b"v")), lambda: sync(store.delete("k"))):
        with pytest.raises(kvmap.WriteError):
            attempt()
        assert _files(tmp_path) == before


# Spec 12.2: a write to "every pipeline root that an entry of those manifests names" is refused;
# CompiledMap.pipeline_roots() left out a prefix or range entry that later entries shadow entirely.
def test_a_manifest_named_only_by_a_shadowed_entry_is_not_written(tmp_path: Path) -> None:
    (tmp_path / "i.json").write_text('{"kvmap": 1, "entries": []}')
    store = _local_store(tmp_path, [{"prefix": "a/", "path": "i.json|kvmap:"}, {"prefix": "a/", "path": "./"}])
    before = _files(tmp_path)
    try:
        store.set_sync("a/i.json", cpu.Buffer.from_bytes(b"not a manifest"))
    except kvmap.WriteError:
        pass
    else:
        pytest.fail(f"the write was not refused: i.json now holds {(tmp_path / 'i.json').read_bytes()!r}")
    assert _files(tmp_path) == before
