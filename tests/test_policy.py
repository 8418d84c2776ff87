"""The security policy: unit tests of :class:`kvmap.Policy`, a corpus of hostile manifests read
through :class:`kvmap.Reader` on real memory:// stores and files, and a property that no walk
ever reads outside what the policy allows — judged by a reference written here, at string
level, that shares no code with :mod:`kvmap.policy`."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import uuid
import zipfile
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import obstore
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap.chain import Chain, Read, Walk
from kvmap.policy import origin

# -- a reference policy, at string level ------------------------------------------------------

_REF_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)((?:/[^?#]*)?)\Z", re.S)
_CASELESS_AUTHORITY = ("http", "https", "s3+http", "s3+https")


@dataclass(frozen=True)
class Spot:
    """A root URL as the reference sees it: scheme, authority and decoded path segments."""

    scheme: str
    authority: str
    segments: tuple[str, ...]

    def under(self, directory: Spot) -> bool:
        """Whether this names something inside ``directory``: ``s3://b/d`` is not inside ``s3://b/d/``."""
        n = len(directory.segments)
        same_site = (self.scheme, self.authority) == (directory.scheme, directory.authority)
        return same_site and len(self.segments) > n and self.segments[:n] == directory.segments


def ref_spot(url: str) -> Spot | None:
    """``url`` split into a :class:`Spot`; ``None`` if the policy must refuse it whatever the
    manifest: no ``scheme://``, a query or fragment, a path that is not UTF-8, or a decoded
    ``.``/``..`` segment."""
    m = _REF_URL.match(url)
    if m is None:
        return None
    scheme, authority = m[1].lower(), m[2]
    if scheme in _CASELESS_AUTHORITY:
        authority = authority.lower()
    try:
        path = unquote(m[3], encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None
    segments = tuple(path.split("/")[1:])
    if "." in segments or ".." in segments:
        return None
    return Spot(scheme, authority, segments)


def ref_directory(prefix: str) -> Spot | None:
    """A ``/``-terminated URL prefix as the directory it names."""
    spot = ref_spot(prefix) if prefix.endswith("/") else None
    return None if spot is None else Spot(spot.scheme, spot.authority, spot.segments[:-1])


def ref_origin(manifest: str) -> Spot | None:
    """Where a manifest at ``manifest`` (a pipeline: its root decides) may point on its own."""
    spot = ref_spot(manifest.split("|", 1)[0])
    if spot is None:
        return None
    folder = spot.segments[:-1]
    if spot.scheme == "file":
        return Spot("file", spot.authority, folder)
    if spot.scheme in ("s3+http", "s3+https"):
        # The bucket is the first path segment; a manifest outside any bucket has no origin.
        return Spot(spot.scheme, spot.authority, folder[:1]) if folder else None
    return Spot(spot.scheme, spot.authority, ())


def ref_allowed(url: str, manifest: str | None, allow: tuple[str, ...], allow_all: bool) -> bool:
    """Whether the root URL ``url``, named by ``manifest`` (``None``: the caller), may be read."""
    if manifest is None:
        return True
    spot = ref_spot(url)
    if spot is None:
        return False
    for prefix in allow:
        directory = ref_directory(prefix)
        if directory is not None and spot.under(directory):
            return True
    home = ref_origin(manifest)
    if home is not None and spot.under(home):
        return True
    if allow_all:
        local = (ref_spot(manifest.split("|", 1)[0]) or Spot("", "", ())).scheme == "file"
        return spot.scheme != "file" or local
    return False


def test_the_reference_agrees_with_the_policy_docstring() -> None:
    assert ref_origin("file:///data/views/m.json") == Spot("file", "", ("data", "views"))
    assert ref_origin("s3+http://127.0.0.1:9000/bucket/m.json|zip:x") == Spot("s3+http", "127.0.0.1:9000", ("bucket",))
    assert ref_allowed("s3://bucket/data/c/0", "s3://bucket/m.json", ("s3://shared/",), False)
    assert ref_allowed("s3://shared/x", "s3://bucket/m.json", ("s3://shared/",), False)
    assert not ref_allowed("file:///etc/passwd", "s3://bucket/m.json", ("s3://shared/",), True)
    assert not ref_allowed("s3://bucket/a/%2E%2E/b", "s3://bucket/m.json", (), True)
    assert ref_allowed("file:///etc/passwd", "file:///srv/m.json", (), True)


# -- 1. unit tests of Policy and origin -------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ("file:///data/views/m.json", "file:///data/views/"),
        ("file:///m.json", "file:///"),
        ("file:///data/views/", "file:///data/views/"),
        ("file:///data/a.zip|zip:deep/m.json|kvmap:", "file:///data/"),
        ("s3://bucket/a/b/m.json", "s3://bucket/"),
        ("gs://bucket/m.json", "gs://bucket/"),
        ("az://container/x/m.json", "az://container/"),
        ("memory://store/x/y/m.json", "memory://store/"),
        ("https://Example.COM:8443/a/m.json", "https://example.com:8443/"),
        ("HTTP://h/m.json", "http://h/"),
        ("s3+http://127.0.0.1:9000/bucket/a/m.json", "s3+http://127.0.0.1:9000/bucket/"),
        ("s3+https://S3.Example/bucket/m.json|zip:x", "s3+https://s3.example/bucket/"),
        ("s3://bucket/a.zip|zip:m.json", "s3://bucket/"),
        ("s3://bucket/a/m.json|kvmap:c/", "s3://bucket/"),
        ("relative/m.json", None),
        ("<manifest>", None),
        ("file:/data/m.json", None),
        ("s3://bucket/a/../m.json", None),
        ("s3://bucket/%FF/m.json", None),
    ],
)
def test_origin_per_scheme(manifest: str, expected: str | None) -> None:
    assert origin(manifest) == expected


@pytest.mark.parametrize(
    "prefix",
    ["s3://bucket", "s3://bucket/shared", "bucket/", "/data/", "", "file:/data/", "s3://b/a/../", "s3://b/%2e%2e/"],
)
def test_allow_prefixes_must_be_slash_terminated_absolute_urls(prefix: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(prefix))):
        kvmap.Policy(allow=[prefix])
    with pytest.raises(ValueError, match="allow prefix"):
        kvmap.Reader("memory://nowhere/m.json", allow=["s3://ok/", prefix])


def test_allow_prefixes_that_are_accepted() -> None:
    p = kvmap.Policy(allow=["s3://b/", "file:///", "memory://m/a/b/", "s3+http://h:1/bucket/"])
    assert p.allow == ("s3://b/", "file:///", "memory://m/a/b/", "s3+http://h:1/bucket/")
    assert p == kvmap.Policy(allow=["file:///", "memory://m/a/b/", "s3+http://h:1/bucket/", "s3://b/"])
    assert hash(p) == hash(kvmap.Policy(allow=reversed(p.allow)))
    assert p != kvmap.Policy(allow=p.allow, allow_all=True)
    assert eval(repr(p), {"Policy": kvmap.Policy}) == p


@pytest.mark.parametrize("order", [0, 1, 2])
def test_allowed_by_reports_the_longest_prefix(order: int) -> None:
    prefixes = ["s3://b/", "s3://b/a/", "s3://b/a/b/"]
    p = kvmap.Policy(allow=prefixes[order:] + prefixes[:order])
    m = "memory://home/m.json"
    assert p.allowed_by("s3://b/a/b/c", m) == "s3://b/a/b/"
    assert p.allowed_by("s3://b/a/b%2Fc", m) == "s3://b/a/b/"  # %2F is a separator once decoded
    assert p.allowed_by("s3://b/a/x", m) == "s3://b/a/"
    assert p.allowed_by("s3://b/a/bb/x", m) == "s3://b/a/"  # segments, not characters
    assert p.allowed_by("s3://b/x", m) == "s3://b/"
    assert p.allowed_by("s3://bb/x", m) is None
    assert p.allowed_by("s3://b/a/b/../../../x", m) is None


def test_allowed_by_origin_caller_and_nothing() -> None:
    p = kvmap.Policy()
    assert p.allowed_by("s3://b/x/y", "s3://b/m.json") == "origin"
    assert p.allowed_by("s3://c/x", "s3://b/m.json") is None
    assert p.allowed_by("file:///d/sub/x", "file:///d/m.json") == "origin"
    assert p.allowed_by("file:///other/x", "file:///d/m.json") is None
    assert p.allowed_by("file:///d/x", "file:///d/sub/m.json") is None  # a file manifest's own tree only
    assert p.allowed_by("s3+http://h:9/bucket/x", "s3+http://h:9/bucket/m.json") == "origin"
    assert p.allowed_by("s3+http://h:9/other/x", "s3+http://h:9/bucket/m.json") is None
    assert p.allowed_by("s3+http://h:8/bucket/x", "s3+http://h:9/bucket/m.json") is None
    assert p.allowed_by("HTTPS://H/x", "https://h/m.json") == "origin"  # http hosts are case-insensitive
    assert p.allowed_by("memory://Home/x", "memory://home/m.json") is None  # store names are not
    assert p.allowed_by("https://h@evil/x", "https://h/m.json") is None
    assert p.allowed_by("https://evil@h/x", "https://h/m.json") is None
    assert p.allowed_by("file://localhost/d/x", "file:///d/m.json") is None
    # A directory contains what is below it, not an object of its own name.
    assert p.allowed_by("file:///d", "file:///d/m.json") is None
    assert p.allowed_by("s3://b", "s3://b/m.json") is None
    assert p.allowed_by("s3+http://h:9/bucket", "s3+http://h:9/bucket/m.json") is None
    assert p.allowed_by("s3://b/", "s3://b/m.json") == "origin"
    # The caller's own URL is always allowed, whatever it is.
    for url in ("file:///etc/passwd", "s3://b/../x", "not a url", "memory://x/%2e%2e/y"):
        assert p.allowed_by(url, None) == "caller"
        p.check(url, manifest=None)


def test_dot_segments_are_refused_even_inside_the_origin_and_with_allow_all() -> None:
    p = kvmap.Policy(allow=["s3://b/"], allow_all=True)
    for url in (
        "s3://b/a/../x",
        "s3://b/a/./x",
        "s3://b/..",
        "s3://b/a/%2E%2E/x",
        "s3://b/a/%2e%2E/x",
        "s3://b/a/.%2e/x",
        "s3://b/a%2F..%2Fx",
        "s3://b/a%2F.%2Fx",
    ):
        assert p.allowed_by(url, "s3://b/m.json") is None, url
        with pytest.raises(kvmap.PolicyError, match=r"'\.' or '\.\.' path segment"):
            p.check(url, manifest="s3://b/m.json")
    # Dots that are not whole segments are just characters.
    assert p.allowed_by("s3://b/a/.../x", "s3://b/m.json") == "s3://b/"
    assert p.allowed_by("s3://b/a/..x/.y", "s3://b/m.json") == "s3://b/"


def test_urls_the_policy_cannot_judge_are_refused() -> None:
    p = kvmap.Policy(allow_all=True)
    for url in ("relative/x", "/abs/x", "file:/etc/passwd", "s3:bucket/x", "s3://b/%FF", "", "//h/x"):
        assert p.allowed_by(url, "s3://b/m.json") is None, url
        with pytest.raises(kvmap.PolicyError):
            p.check(url, manifest="s3://b/m.json")


def test_allow_all_trusts_every_manifest_but_keeps_remote_ones_off_the_local_disk() -> None:
    p = kvmap.Policy(allow_all=True)
    for remote in ("s3://b/m.json", "memory://m/m.json", "https://h/m.json", "s3://b/a.zip|zip:m.json", "<manifest>"):
        assert p.allowed_by("s3://elsewhere/x", remote) == "allow_all"
        assert p.allowed_by("http://169.254.169.254/latest/meta-data/", remote) == "allow_all"
        assert p.allowed_by("file:///etc/passwd", remote) is None
        assert p.allowed_by("file://localhost/etc/passwd", remote) is None
    for local in ("file:///srv/m.json", "file:///srv/a.zip|zip:m.json", "FILE:///srv/m.json"):
        assert p.allowed_by("file:///etc/passwd", local) == "allow_all"
        assert p.allowed_by("s3://elsewhere/x", local) == "allow_all"
        assert p.allowed_by("file:///srv/x", local) == "origin"
    # A file:// allow prefix opens that directory (and only it) to remote manifests.
    q = kvmap.Policy(allow=["file:///data/"], allow_all=True)
    assert q.allowed_by("file:///data/x/y", "s3://b/m.json") == "file:///data/"
    assert q.allowed_by("file:///etc/passwd", "s3://b/m.json") is None
    assert q.allowed_by("s3://other/x", "s3://b/m.json") == "allow_all"
    # Without allow_all nothing outside the origin and the prefixes passes.
    r = kvmap.Policy(allow=["file:///data/"])
    assert r.allowed_by("s3://elsewhere/x", "s3://b/m.json") is None
    assert r.allowed_by("file:///etc/passwd", "file:///srv/m.json") is None


def test_policy_error_is_a_kvmap_error_and_a_permission_error() -> None:
    assert issubclass(kvmap.PolicyError, kvmap.KvmapError)
    assert issubclass(kvmap.PolicyError, kvmap.ResolveError)
    assert issubclass(kvmap.PolicyError, PermissionError)
    with pytest.raises(PermissionError):
        kvmap.Policy().check("s3://other/x", manifest="s3://b/m.json")


def test_policy_error_says_what_where_and_how_to_allow_it() -> None:
    p = kvmap.Policy(allow=["s3://shared/"])
    with pytest.raises(kvmap.PolicyError) as info:
        p.check("s3://other/data/c/0", manifest="s3://b/views/m.json", entry=3, key="c/0")
    e = info.value
    assert (e.url, e.manifest, e.entry, e.key) == ("s3://other/data/c/0", "s3://b/views/m.json", 3, "c/0")
    text = str(e)
    for part in (
        "key 'c/0'",
        "s3://b/views/m.json entry 3",
        "s3://other/data/c/0",
        "origin s3://b/",
        "allow=['s3://other/']",  # its bucket: the object's directory would let only its siblings through
        "--allow s3://other/",
        "--allow-all",
    ):
        assert part in text, (part, text)
    with pytest.raises(kvmap.PolicyError) as info:
        p.check("s3://other/data/c/0", manifest="s3://b/m.json", hint="s3://other/data/")
    assert "--allow s3://other/data/ " in str(info.value)
    # A remote manifest reaching for a local file: allow_all would not help, so it is not offered.
    with pytest.raises(kvmap.PolicyError) as info:
        kvmap.Policy(allow_all=True).check("file:///etc/passwd", manifest="s3://b/m.json", entry=0)
    text = str(info.value)
    assert "--allow file:///etc/" in text
    assert "allow_all" not in text
    assert "allow-all" not in text
    # A local manifest reaching for another local directory: both remedies are offered.
    with pytest.raises(kvmap.PolicyError) as info:
        kvmap.Policy().check("file:///etc/passwd", manifest="file:///srv/m.json", entry=1)
    assert "--allow file:///etc/" in str(info.value)
    assert "--allow-all" in str(info.value)
    assert "origin file:///srv/" in str(info.value)


# Regression (found by these tests, fixed): the allow prefix 's3://b/shared/' also allowed the object 's3://b/shared',
# which is not under it.
def test_an_allow_prefix_does_not_allow_the_object_named_like_its_directory() -> None:
    p = kvmap.Policy(allow=["memory://shared/pub/"])
    assert p.allowed_by("memory://shared/pub", "memory://home/m.json") is None


# Regression (found by these tests, fixed): the same, through a Reader: the object named like an allowed directory was
# read.
def test_an_allow_prefix_does_not_leak_its_sibling_object_through_a_reader() -> None:
    world = World.make_memory()
    shared = f"memory://{world.names['shared_name']}/"
    put(f"{shared}pub", b"shared-object-named-pub")
    put(f"{world.home}m.json", kvmap_doc([{"key": "k", "path": f"{shared}pub"}]))
    reader = kvmap.Reader(f"{world.home}m.json", allow=[f"{shared}pub/"])
    with pytest.raises(kvmap.PolicyError):
        reader.get_sync("k")


# -- helpers for real stores: write by URL, record every read ---------------------------------


def kvmap_doc(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"kvmap": 1, "entries": entries}).encode()


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


#: Fake S3: bucket name -> the memory store that plays it (filled by World).
FAKE_S3: dict[str, str] = {}
_FAKE_S3_URL = re.compile(r"s3://([^/?#]+)/([^?#]*)\Z")


def put(url: str, data: bytes) -> None:
    """Write ``data`` at ``url`` (memory://, file:// or a fake s3:// bucket); the path is percent-decoded
    as kvmap's roots do."""
    if url.startswith("file://"):
        path = Path(unquote(url.removeprefix("file://")))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    m = re.fullmatch(r"memory://([^/]+)/(.+)", url)
    if m is not None:
        obstore.put(kvmap.memory_store(m[1]), unquote(m[2]), data)
        return
    m = _FAKE_S3_URL.match(url)
    assert m is not None, url
    assert m[1] in FAKE_S3, url
    obstore.put(kvmap.memory_store(FAKE_S3[m[1]]), unquote(m[2]), data)


class RecordingRoots:
    """Stands in for a Reader's :class:`~kvmap.roots.Roots`: records every root URL opened (every
    read goes through ``open``), serves the fake s3:// buckets from memory stores, and refuses the
    network."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.urls: list[str] = []

    def open(self, url: str) -> tuple[Any, str]:
        self.urls.append(url)
        m = _FAKE_S3_URL.match(url)
        if m is not None and m[1] in FAKE_S3:
            return kvmap.memory_store(FAKE_S3[m[1]]), unquote(m[2])
        if not url.lower().startswith(("memory://", "file://")):
            raise ConnectionRefusedError(f"the tests read no network: {url}")
        return self.inner.open(url)  # type: ignore[no-any-return]


def recording(reader: kvmap.Reader) -> RecordingRoots:
    roots = RecordingRoots(reader.roots)
    reader.roots = roots  # type: ignore[assignment]
    return roots


@dataclass
class World:
    """Fresh stores for one test: the caller's home (memory, file or fake s3), an evil and a
    shared memory store, and a directory outside home with a secret in it."""

    home: str
    names: dict[str, str]
    objects: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def make(cls, kind: str, tmp_path: Path | None = None) -> World:
        u = uuid.uuid4().hex[:12]
        tmp = tmp_path if tmp_path is not None else Path("/nonexistent-kvmap-test")
        names = {
            "evil_name": f"evil-{u}",
            "shared_name": f"shared-{u}",
            "shared_name_upper": f"shared-{u}".upper(),
            "bucket": f"home-{u}",
            "bucket_upper": f"home-{u}".upper(),
            "other_bucket": f"other-{u}",
            "outside": (tmp / "outside").as_uri() + "/",
            "outside_path": str(tmp / "outside") + "/",
        }
        names["evil"] = f"memory://{names['evil_name']}/"
        names["shared"] = f"memory://{names['shared_name']}/"
        FAKE_S3[names["bucket"]] = f"s3-{names['bucket']}"
        FAKE_S3[names["other_bucket"]] = f"s3-{names['other_bucket']}"
        if kind == "memory":
            home = f"memory://home-{u}/"
        elif kind == "file":
            assert tmp_path is not None
            home = (tmp / "home").as_uri() + "/"
        else:
            assert kind == "s3"
            home = f"s3://{names['bucket']}/"
        names["home"] = home
        world = cls(home, names)
        standard = {
            "${home}data/ok": b"ok",
            "${home}secret": b"home-secret",
            "${evil}x": b"EVIL",
            "${evil}m.json": (HOSTILE / "evil.json").read_bytes(),
            "${shared}pub/x": b"shared-pub",
            "${shared}private/y": b"shared-private",
            f"s3://{names['other_bucket']}/x": b"other-bucket",
        }
        if tmp_path is not None:
            standard["${outside}secret"] = b"SECRET-outside"
        for url, data in standard.items():
            world.place(world.fill(url), world.fill(data.decode()).encode())
        return world

    @classmethod
    def make_memory(cls) -> World:
        return cls.make("memory")

    def fill(self, text: str) -> str:
        for name in sorted(self.names, key=len, reverse=True):
            text = text.replace("${" + name + "}", self.names[name])
        assert "${" not in text, text
        return text

    def content(self, value: str) -> bytes:
        if value.startswith("@"):
            return self.fill((HOSTILE / value[1:]).read_text()).encode()
        return value.encode()

    def place(self, url: str, data: bytes) -> None:
        self.objects[url] = data
        put(url, data)


# -- 2. the corpus of hostile manifests --------------------------------------------------------

HOSTILE = Path(__file__).parent / "hostile"
CASES: list[dict[str, Any]] = json.loads((HOSTILE / "cases.json").read_text())["cases"]
CASE_OPTIONS = {"name", "about", "home", "objects", "zips", "allow", "allow_all", "max_depth", "may_read", "keys"}


def test_the_corpus_is_well_formed() -> None:
    used = {"cases.json"}
    for case in CASES:
        assert set(case) <= CASE_OPTIONS, case["name"]
        for value in [*case.get("objects", {}).values()] + [
            v for members in case.get("zips", {}).values() for v in members.values()
        ]:
            if value.startswith("@"):
                used.add(value[1:])
    used.add("evil.json")
    on_disk = {p.name for p in HOSTILE.iterdir()}
    assert used == on_disk  # every file is used, every file used exists
    for name in on_disk - {"cases.json"}:
        text = (HOSTILE / name).read_text()
        doc = json.loads(text)  # valid JSON as written; placeholders sit inside strings
        kvmap.Manifest.from_json(doc, url="memory://corpus/m.json")  # and a valid kvmap document


def _in_may_read(url: str, may_read: list[str]) -> bool:
    spot = ref_spot(url)
    return spot is not None and any((d := ref_directory(prefix)) is not None and spot.under(d) for prefix in may_read)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_hostile_manifest(case: dict[str, Any], tmp_path: Path) -> None:
    world = World.make(case["home"], tmp_path)
    for url, value in case.get("objects", {}).items():
        world.place(world.fill(url), world.content(value))
    for url, members in case.get("zips", {}).items():
        world.place(world.fill(url), zip_bytes({name: world.content(v) for name, v in members.items()}))
    may_read = [world.fill(p) for p in case["may_read"]]
    forbidden = {data for url, data in world.objects.items() if not _in_may_read(url, may_read)}
    options: dict[str, Any] = {
        "allow": [world.fill(p) for p in case.get("allow", [])],
        "allow_all": case.get("allow_all", False),
    }
    if "max_depth" in case:
        options["max_depth"] = case["max_depth"]
    caller = f"{world.home}m.json"
    reads: list[str] = []
    for key, expected in case["keys"].items():
        reader = kvmap.Reader(caller, **options)
        roots = recording(reader)
        try:
            got: Any = reader.get_sync(key)
        except kvmap.KvmapError as exc:
            got = exc
        reads += roots.urls
        if isinstance(expected, dict):
            assert isinstance(got, kvmap.KvmapError), (key, got)
            assert type(got).__name__ == expected["error"], (key, got)
            text = str(got)
            for part in expected.get("contains", []):
                assert world.fill(part) in text, (key, world.fill(part), text)
            for part in expected.get("excludes", []):
                assert world.fill(part) not in text, (key, part, text)
            if isinstance(got, kvmap.PolicyError):
                assert got.key == key
                assert got.url is not None
                assert got.url == caller or got.url not in roots.urls  # refused before any read of it
        else:
            assert not isinstance(got, Exception), (key, got)
            assert (None if got is None else bytes(got).decode()) == expected, key
        assert got is None or isinstance(got, Exception) or bytes(got) not in forbidden, key
    assert reads, "the caller's manifest is always read"
    outside = [url for url in reads if not _in_may_read(url, may_read)]
    assert not outside, outside


def _chain_of(n: int, home: str) -> None:
    for i in range(n):
        put(f"{home}m{i}.json", kvmap_doc([{"prefix": "", "path": f"m{i + 1}.json|kvmap:"}]))
    put(f"{home}m{n}.json", kvmap_doc([{"key": "k", "path": "data/ok"}]))


def test_a_chain_of_distinct_manifests_is_cut_at_max_depth() -> None:
    world = World.make_memory()
    _chain_of(20, world.home)
    for depth, result in ((21, b"ok"), (30, b"ok"), (20, None), (5, None)):
        reader = kvmap.Reader(f"{world.home}m0.json", max_depth=depth)
        roots = recording(reader)
        if result is not None:
            assert bytes(reader.get_sync("k")) == result
            assert len(reader.explain_sync("k").hops) == 21
            continue
        with pytest.raises(kvmap.ChainError, match=f"deeper than {depth} manifests") as info:
            reader.get_sync("k")
        # The error shows the chain: every hop, in order.
        for i in range(depth + 1):
            assert f"\n  {world.home}m{i}.json ['k']: entry 0 -> {world.home}" in str(info.value)
        assert f"m{depth + 1}.json ['k']" not in str(info.value)
        assert len(roots.urls) == depth + 1  # no manifest read past the limit
    # The default limit is 16.
    with pytest.raises(kvmap.ChainError, match="deeper than 16 manifests"):
        kvmap.Reader(f"{world.home}m0.json").get_sync("k")


def test_cached_decisions_do_not_leak_between_manifests() -> None:
    """home may read home/secret; the shared manifest may not, even after home did."""
    world = World.make_memory()
    shared = world.names["shared"]
    put(
        f"{world.home}m.json",
        kvmap_doc([{"key": "direct", "path": "secret"}, {"prefix": "r/", "path": f"{shared}pub/r.json|kvmap:"}]),
    )
    put(f"{shared}pub/r.json", kvmap_doc([{"key": "k", "path": f"{world.home}secret"}, {"key": "ok", "path": "x"}]))
    reader = kvmap.Reader(f"{world.home}m.json", allow=[f"{shared}pub/"])
    roots = recording(reader)
    for _ in range(2):
        assert bytes(reader.get_sync("direct")) == b"home-secret"
        assert bytes(reader.get_sync("r/ok")) == b"shared-pub"
        with pytest.raises(kvmap.PolicyError, match=re.escape(f"{shared}pub/r.json entry 0")):
            reader.get_sync("r/k")
        with pytest.raises(kvmap.PolicyError):
            reader.get_many_sync(["direct", "r/k", "r/ok"])
        with pytest.raises(kvmap.PolicyError):
            asyncio.run(reader.get("r/k"))
        with pytest.raises(kvmap.PolicyError):
            asyncio.run(reader.get_many(["r/ok", "r/k"]))
        with pytest.raises(kvmap.PolicyError):
            reader.explain_sync("r/k")
    assert sorted(set(roots.urls)) == sorted(
        {f"{world.home}m.json", f"{world.home}secret", f"{shared}pub/r.json", f"{shared}pub/x"}
    )


def test_an_in_memory_manifest_is_held_to_the_origin_of_its_url() -> None:
    world = World.make_memory()
    evil = world.names["evil"]
    entries = [{"key": "ok", "path": "data/ok"}, {"key": "evil", "path": f"{evil}x"}]
    reader = kvmap.Reader(kvmap.Manifest.from_json(entries, url=f"{world.home}m.json"))
    roots = recording(reader)
    assert bytes(reader.get_sync("ok")) == b"ok"
    with pytest.raises(kvmap.PolicyError):
        reader.get_sync("evil")
    assert roots.urls == [f"{world.home}data/ok"]
    # Without a URL (url=None; left out, it is the working directory) there is no origin: every
    # target needs an allow prefix.
    anonymous = kvmap.Reader(kvmap.Manifest.from_json([{"key": "ok", "path": f"{world.home}data/ok"}], url=None))
    with pytest.raises(kvmap.PolicyError, match=re.escape("origin (none)")):
        anonymous.get_sync("ok")
    assert bytes(kvmap.Reader(anonymous.target, allow=[world.home]).get_sync("ok")) == b"ok"


# Regression (found by these tests, fixed): manifests were cached by Location, and a deflated zip member's Location is
# its inflated bytes, so a byte-identical manifest elsewhere reused the first one's compiled map, with relative targets
# resolved against the first one's URL (data came from the wrong archive, or a spurious PolicyError).
def test_identical_deflated_manifests_in_two_archives_resolve_against_their_own_urls() -> None:
    world = World.make_memory()
    evil = world.names["evil"]
    inner = kvmap_doc([{"prefix": "", "path": "data/"}])
    put(f"{world.home}a.zip", zip_bytes({"m.json": inner, "data/k": b"home"}, zipfile.ZIP_DEFLATED))
    put(f"{evil}b.zip", zip_bytes({"m.json": inner, "data/k": b"evil"}, zipfile.ZIP_DEFLATED))
    put(
        f"{world.home}m.json",
        kvmap_doc(
            [
                {"prefix": "h/", "path": "a.zip|zip:m.json|kvmap:"},
                {"prefix": "e/", "path": f"{evil}b.zip|zip:m.json|kvmap:"},
            ]
        ),
    )
    reader = kvmap.Reader(f"{world.home}m.json", allow=[evil])
    assert bytes(reader.get_sync("e/k")) == b"evil"
    assert bytes(reader.get_sync("h/k")) == b"home"  # kvmap returns b"evil"


# Regression (found by these tests, fixed): a target the policy allows but kvmap cannot open (allow_all + '//host/x'
# from a file manifest -> file://host/x) raised a bare PipelineError naming neither the key nor the manifest entry.
def test_an_allowed_but_unreadable_target_is_reported_with_its_key_and_entry(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_bytes(kvmap_doc([{"key": "k", "path": "//evil.example/etc/passwd"}]))
    with pytest.raises(kvmap.KvmapError) as info:
        kvmap.Reader(tmp_path / "m.json", allow_all=True).get_sync("k")
    assert "key 'k'" in str(info.value)
    assert "entry 0" in str(info.value)


# -- 3. the property: no walk reads outside what the policy allows -----------------------------

#: Where the generated manifests live; the last one is not JSON.
MANIFESTS = (
    "memory://H/m.json",
    "memory://H/sub/n.json",
    "memory://S/pub/p.json",
    "memory://S/priv/q.json",
    "memory://E/e.json",
    "file:///srv/app/v/f.json",
    "file:///srv/app/g.json",
    "s3://bkt/views/s.json",
    "s3+http://host:9000/bkt/t.json",
)
BROKEN = "memory://H/bad.json"
DATA_URLS = (
    "memory://H/x",
    "memory://H/sub/x",
    "memory://S/pub/x",
    "memory://S/priv/x",
    "memory://E/x",
    "file:///srv/app/v/x",
    "file:///srv/app/x",
    "file:///srv/secret",
    "file:///etc/passwd",
    "s3://bkt/x",
    "s3://bkt/views/x",
    "s3://other/x",
    "s3+http://host:9000/bkt/x",
    "s3+http://host:9000/other/x",
    "http://169.254.169.254/latest/meta-data/x",
)
ALLOW_CHOICES = (
    "memory://S/pub/",
    "file:///srv/app/v/",
    "s3://bkt/views/",
    "memory://E/",
    "file:///srv/",
    "s3://other/",
)
SEGMENTS = (
    "x", "sub", "pub", "priv", "views", "v", "app", "srv", "bkt", "other", "etc", "passwd", "secret",
    ".", "..", "%2e%2e", "%2E", ".%2e", "%2F", "..%2F..", "x%2F..", "", "%FF", "m.json", "n.json", "p.json",
    "e.json", "f.json", "g.json", "s.json", "bad.json",
)  # fmt: skip
SITES = (
    "memory://H", "memory://S", "memory://E", "memory://h", "MEMORY://S", "file://", "file://localhost",
    "s3://bkt", "s3://other", "s3://Bkt", "s3+http://host:9000", "s3+http://HOST:9000", "s3+http://host:9001",
    "gs://bkt", "http://169.254.169.254", "https://h", "file:", "memory:/",
)  # fmt: skip
KEY_TOKENS = ("a", "b", "x", "/", ".", "..", "%2e", "%2F", "é", "|")

rel_paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join)
relative_targets = st.one_of(
    rel_paths,
    rel_paths.map(lambda p: "/" + p),
    st.tuples(st.sampled_from(("//E/", "//S/pub/", "//H/", "//bkt/", "//other/")), rel_paths).map("".join),
    st.sampled_from(("", "./", "../", "../../", "x/", "sub/", "pub/")),
)
absolute_targets = st.tuples(st.sampled_from(SITES), st.sampled_from(("/", "//")), rel_paths).map("".join)
manifest_refs = st.tuples(
    st.one_of(
        st.sampled_from((*MANIFESTS, BROKEN)),
        st.sampled_from(MANIFESTS),
        st.sampled_from(("", "m.json", "n.json", "sub/n.json", "../m.json", "./m.json", "m%2Ejson", "bad.json")),
        st.sampled_from(("s.json", "../views/s.json", "t.json", "../bkt/t.json", "sub%2Fn.json", "f.json")),
        st.sampled_from(("../pub/p.json", "../priv/q.json", "../g.json", "v/f.json", "//E/e.json", "//S/pub/p.json")),
    ),
    st.sampled_from(("|kvmap:", "|kvmap:a", "|kvmap:x/", "|kvmap:%2e%2e/")),
).map("".join)
# Objects named like a directory that the origin or an allow prefix opens: not inside it.
directory_names = st.sampled_from(
    ("../pub", "../v", "../views", "memory://S/pub", "file:///srv/app/v", "s3://bkt/views", "memory://H", "file:///srv")
)
targets = st.one_of(relative_targets, absolute_targets, manifest_refs, manifest_refs, directory_names, st.none())
key_texts = st.lists(st.sampled_from(KEY_TOKENS), max_size=4).map("".join)


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("key", "prefix", "prefix", "range")))
    entry: dict[str, Any]
    if kind == "key":
        entry = {"key": draw(key_texts)}
    elif kind == "prefix":
        entry = {"prefix": draw(st.sampled_from(("", "", "a", "x/", "a/", ".", "%")))}
    else:
        lo, hi = sorted((draw(key_texts), draw(key_texts)))
        entry = {"min": lo} if lo == hi else {"min": lo, "max": hi}
    if kind != "key" and draw(st.integers(0, 3)) == 0:
        entry["strip_prefix"] = 0
    entry["path"] = draw(targets)
    return entry


@dataclass
class Scenario:
    documents: dict[str, list[dict[str, Any]]]
    caller: str
    allow: tuple[str, ...]
    allow_all: bool
    max_depth: int
    keys: list[str]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    documents = {url: draw(st.lists(entries(), max_size=4)) for url in MANIFESTS}
    caller = draw(st.sampled_from(MANIFESTS))
    allow = draw(st.lists(st.sampled_from(ALLOW_CHOICES), unique=True, max_size=3))
    if draw(st.booleans()):
        # Plant a relay that wins: the caller -> other manifests -> some target, often allowed
        # through a prefix, so that manifests of other origins get to name targets.
        relay = [caller, *draw(st.lists(st.sampled_from(MANIFESTS), min_size=1, max_size=3))]
        for here, there in itertools.pairwise(relay):
            documents[here].append({"prefix": draw(st.sampled_from(("", "a"))), "path": there + "|kvmap:"})
            if draw(st.booleans()) and (folder := there.rsplit("/", 1)[0] + "/") not in allow:
                allow.append(folder)
        documents[relay[-1]].append({"prefix": "", "path": draw(st.one_of(st.sampled_from(DATA_URLS), targets))})
    keys = draw(st.lists(key_texts, min_size=1, max_size=6))
    # Keys the entries mention, so that entries win often.
    for doc in documents.values():
        for e in doc:
            keys += [e[s] + t for s in ("key", "prefix", "min") if s in e for t in ("", "x", "/..")]
    return Scenario(
        documents=documents,
        caller=caller,
        allow=tuple(allow),
        allow_all=draw(st.booleans()),
        max_depth=draw(st.sampled_from((2, 4, 16))),
        keys=keys[:24],
    )


def _storage_key(url: str) -> str | None:
    """What object a root URL names in the dict storage: its path percent-decoded, as kvmap's roots do."""
    m = _REF_URL.match(url)
    if m is None:
        return None
    return f"{m[1].lower()}://{m[2]}{unquote(m[3], errors='replace')}"


def _drive(walker: Generator[Read, Any, Any], storage: dict[str, bytes], walk: Walk, log: list[Any]) -> Any:
    """Answer the walk's reads from ``storage``. Log each read with the hop that sent the walk
    there: the last hop so far (none: the read is of the caller's own manifest)."""
    try:
        request = next(walker)
        while True:
            log.append((request, walk.hops[-1] if walk.hops else None))
            found = _storage_key(request.url)
            data = None if found is None else storage.get(found)
            if data is None:
                answer: Any = None
            elif request.head:
                answer = len(data)
            elif request.suffix is not None:
                answer = data[len(data) - min(request.suffix, len(data)) :]
            else:
                answer = data[request.start : request.end]
            request = walker.send(answer)
    except StopIteration as stop:
        return stop.value


def _get(chain: Chain, caller: kvmap.Pipeline, key: str, walk: Walk) -> Generator[Read, Any, Any]:
    loc = yield from chain.locate(caller, walk, key)
    if loc is None:
        return None
    return (yield from chain.read(loc, None, walk))


EXPECTED_ERRORS = (kvmap.PolicyError, kvmap.ChainError, kvmap.ManifestError, kvmap.TargetError)


@given(scenarios())
def test_no_walk_reads_outside_what_the_policy_allows(s: Scenario) -> None:
    storage = {url: url.encode() for url in DATA_URLS}
    storage.update({url: kvmap_doc(doc) for url, doc in s.documents.items()})
    storage[BROKEN] = b"{not json"
    chain = Chain(kvmap.Policy(s.allow, allow_all=s.allow_all), max_depth=s.max_depth)
    caller = kvmap.Pipeline.parse(s.caller + "|kvmap:")
    read_before: set[str] = set()
    for key in s.keys:
        walk = Walk(key)
        log: list[tuple[Read, kvmap.Hop | None]] = []
        try:
            _drive(_get(chain, caller, key, walk), storage, walk, log)
        except EXPECTED_ERRORS as exc:
            error: Exception | None = exc
        else:
            error = None
        for request, hop in log:
            if hop is None:
                assert request.url == s.caller, request
            else:
                assert hop.url is not None
                assert hop.url.split("|", 1)[0] == request.url, (request, hop)  # it reads what the hop named
                namer = hop.manifest.split("|", 1)[0]
                assert namer in read_before, (namer, read_before)  # a manifest it has read
                assert ref_allowed(request.url, hop.manifest, s.allow, s.allow_all), (request.url, hop, s)
            read_before.add(request.url)
        # The hops form a chain from the caller's manifest: each in the manifest the one before named.
        named = [s.caller] + [h.url.split("|", 1)[0] for h in walk.hops if h.url is not None]
        for i, hop in enumerate(walk.hops):
            assert hop.manifest.split("|", 1)[0] == named[i], walk.hops
        if isinstance(error, kvmap.PolicyError):
            # Refusals are right too: the reference refuses the same URL from the same manifest,
            # and it was never read on this walk.
            assert error.manifest is not None
            assert error.url is not None
            assert not ref_allowed(error.url, error.manifest, s.allow, s.allow_all), error
            assert error.manifest == walk.hops[-1].manifest
            assert error.url == s.caller or error.url not in [r.url for r, _ in log]
        elif isinstance(error, kvmap.ChainError):
            pairs = [(h.manifest, h.key) for h in walk.hops]
            assert len(pairs) > s.max_depth or len(set(pairs)) < len(pairs), walk.hops


@pytest.mark.parametrize(
    ("entry", "keys"),
    [
        ({"prefix": "t/", "path": "{elsewhere}data.zarr/"}, ["t/c/0/0", "t/c/5/1/2", "t/zarr.json"]),
        ({"min": "r/", "max": "r0", "strip_prefix": 2, "path": "{elsewhere}deep/er/"}, ["r/c/0", "r/x/y/z"]),
        ({"key": "k", "path": "{elsewhere}a/b/c.bin"}, ["k"]),
    ],
)
def test_following_the_suggested_allow_prefix_lets_every_key_of_the_entry_through(
    tmp_path: Path, entry: dict[str, Any], keys: list[str]
) -> None:
    """The prefix a policy error suggests is the entry's target root (or the target's directory
    for an exact entry): allowing it, every key the entry covers passes, not only the one that
    failed."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    entry = {k: v.format(elsewhere=elsewhere.as_uri() + "/") if k == "path" else v for k, v in entry.items()}
    (home / "m.json").write_text(json.dumps({"kvmap": 1, "entries": [entry]}))
    with pytest.raises(kvmap.PolicyError) as info:
        kvmap.Reader(home / "m.json").locate_sync(keys[0])
    suggested = re.search(r"--allow (\S+)", str(info.value))
    assert suggested is not None, str(info.value)
    allowed = kvmap.Reader(home / "m.json", allow=[suggested.group(1)])
    for key in keys:
        assert allowed.locate_sync(key) is not None, (key, suggested.group(1))
