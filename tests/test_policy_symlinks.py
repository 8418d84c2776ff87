"""The security policy on a local disk: symbolic links. A ``file://`` target that is inside its
origin or an allow prefix as text must be inside it by real path too (spec 11.5). Real files
and links under ``tmp_path``; nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Any

import obstore
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.roots import RealPaths, local_realpath

SECRET = b"SECRET-outside"


def write_manifest(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return path


def uri(path: Path) -> str:
    """``path`` as a file URL, a directory ending in ``/``, without resolving links."""
    text = Path(os.path.abspath(path)).as_uri()
    return text + "/" if path.is_dir() and not text.endswith("/") else text


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """``home/`` holds the manifests and ``home/data/ok``; ``outside/secret`` is out of home's reach."""
    (tmp_path / "home" / "data").mkdir(parents=True)
    (tmp_path / "home" / "data" / "ok").write_bytes(b"ok")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    return tmp_path


def refused(reader: kvmap.Reader, key: str) -> kvmap.PolicyError:
    """The PolicyError every read path raises for ``key``, the same from each."""
    errors = []
    for read in (
        lambda: reader.get_sync(key),
        lambda: asyncio.run(reader.get(key)),
        lambda: reader.get_many_sync(["data/ok", key]),
        lambda: asyncio.run(reader.get_many([key])),
        lambda: reader.locate_sync(key),
    ):
        with pytest.raises(kvmap.PolicyError) as info:
            read()
        errors.append(info.value)
    assert len({str(e) for e in errors}) == 1, errors
    assert all(e.key == key for e in errors)
    return errors[0]


# Regression (the bug this file is about): a symlink inside a file manifest's directory led the reader
# out of its origin. /d/link -> /outside, and 'link/secret' passed as text, so /outside/secret was read.
def test_regression_a_directory_link_inside_the_origin_does_not_lead_out_of_it(disk: Path) -> None:
    (disk / "home" / "link").symlink_to(disk / "outside")
    manifest = write_manifest(
        disk / "home" / "m.json", [{"prefix": "data/", "path": "data/"}, {"key": "k", "path": "link/secret"}]
    )
    reader = kvmap.Reader(manifest)
    error = refused(reader, "k")
    assert (error.url, error.manifest, error.entry) == (uri(disk / "home" / "link" / "secret"), uri(manifest), 1)
    text = str(error)
    for part in (
        "key 'k'",
        f"{uri(manifest)} entry 1",
        uri(disk / "home" / "link" / "secret"),
        f"its real path {os.path.realpath(disk / 'outside' / 'secret')}",
        f"origin {uri(disk / 'home')}",
        f"allow=['{Path(os.path.realpath(disk / 'outside')).as_uri()}/']",
        f"--allow {Path(os.path.realpath(disk / 'outside')).as_uri()}/",
        "--allow-all",
    ):
        assert part in text, (part, text)
    assert "\n" not in text  # one line, as the CLI prints it
    assert bytes(reader.get_sync("data/ok")) == b"ok"
    # The remedy the message gives works.
    hint = re.search(r"--allow (\S+)", text)
    assert hint is not None
    assert kvmap.Reader(manifest, allow=[hint[1]]).get_sync("k") == SECRET


def test_a_directory_link_leading_out_is_refused_for_objects_that_exist_or_not(disk: Path) -> None:
    (disk / "home" / "abs").symlink_to(disk / "outside")  # absolute link
    (disk / "home" / "rel").symlink_to(Path("..") / "outside")  # relative link
    (disk / "home" / "deep").mkdir()
    (disk / "home" / "deep" / "up").symlink_to(Path("..") / ".." / "outside")
    write_manifest(
        disk / "home" / "m.json",
        [
            {"prefix": "data/", "path": "data/"},
            {"prefix": "abs/", "path": "abs/"},
            {"prefix": "rel/", "path": "rel/"},
            {"prefix": "up/", "path": "deep/up/"},
        ],
    )
    reader = kvmap.Reader(disk / "home" / "m.json")
    for key in ("abs/secret", "rel/secret", "up/secret", "abs/missing", "abs/new/dir/x", "rel/missing"):
        # Missing objects behind the link are refused too: the policy is no oracle for what exists outside.
        assert refused(reader, key).url is not None


def test_a_file_link_leading_out_is_refused(disk: Path) -> None:
    (disk / "home" / "data" / "innocent.bin").symlink_to(disk / "outside" / "secret")
    (disk / "home" / "dangling").symlink_to(disk / "outside" / "not-there")
    manifest = write_manifest(
        disk / "home" / "m.json",
        [{"prefix": "data/", "path": "data/"}, {"key": "dangling", "path": "dangling"}],
    )
    reader = kvmap.Reader(manifest)
    error = refused(reader, "data/innocent.bin")
    assert error.entry == 0
    assert os.path.realpath(disk / "outside" / "secret") in str(error)
    # A dangling link is followed to where it points: outside, so refused, not absent.
    assert refused(reader, "dangling").entry == 1
    # Allowing the directory the link really leads to lets it through.
    allowed = kvmap.Reader(manifest, allow=[Path(os.path.realpath(disk / "outside")).as_uri() + "/"])
    assert allowed.get_sync("data/innocent.bin") == SECRET
    with pytest.raises(kvmap.TargetError, match="dangling reference"):  # its exact entry names a missing file
        allowed.get_sync("dangling")


def test_links_that_stay_inside_the_origin_read_fine(disk: Path) -> None:
    home = disk / "home"
    (home / "alias").symlink_to(home / "data")  # absolute, to a directory inside
    (home / "rel-alias").symlink_to("data")  # relative
    (home / "data" / "same").symlink_to("ok")  # a file link next to its target
    (home / "sub").mkdir()
    (home / "sub" / "back").symlink_to(Path("..") / "data" / "ok")  # out of sub/, still inside home/
    write_manifest(
        home / "m.json",
        [
            {"prefix": "a/", "path": "alias/"},
            {"prefix": "r/", "path": "rel-alias/"},
            {"key": "same", "path": "data/same"},
            {"key": "back", "path": "sub/back"},
            {"prefix": "nested/", "path": "alias/n.json|kvmap:"},
        ],
    )
    write_manifest(home / "data" / "n.json", [{"key": "k", "path": "ok"}])
    reader = kvmap.Reader(home / "m.json")
    assert [bytes(reader.get_sync(k)) for k in ("a/ok", "r/ok", "same", "back", "nested/k")] == [b"ok"] * 5
    assert reader.get_sync("a/missing") is None  # absent, not refused
    assert reader.get_sync("a/no/such/dir") is None
    assert [bytes(x) for x in reader.get_many_sync(["a/ok", "r/ok"]) if x is not None] == [b"ok", b"ok"]


def test_a_nested_manifest_behind_a_link_leading_out_is_refused(disk: Path) -> None:
    write_manifest(disk / "outside" / "n.json", [{"key": "k", "path": "secret"}])
    (disk / "home" / "link").symlink_to(disk / "outside")
    write_manifest(disk / "home" / "m.json", [{"prefix": "n/", "path": "link/n.json|kvmap:"}])
    error = refused(kvmap.Reader(disk / "home" / "m.json"), "n/k")
    assert error.url == uri(disk / "home" / "link" / "n.json")
    assert error.entry == 0


def test_an_allow_prefix_with_a_link_leading_out_is_refused(disk: Path) -> None:
    shared = disk / "shared"
    (shared / "pub").mkdir(parents=True)
    (shared / "pub" / "x").write_bytes(b"shared-x")
    (shared / "link").symlink_to(disk / "outside")
    (shared / "pub" / "file-link").symlink_to(disk / "outside" / "secret")
    manifest = write_manifest(
        disk / "home" / "m.json",
        [
            {"key": "x", "path": uri(shared / "pub" / "x")},
            {"key": "dir-link", "path": uri(shared / "link" / "secret")},
            {"key": "file-link", "path": uri(shared / "pub" / "file-link")},
        ],
    )
    reader = kvmap.Reader(manifest, allow=[uri(shared)])
    assert bytes(reader.get_sync("x")) == b"shared-x"
    for key, entry in (("dir-link", 1), ("file-link", 2)):
        with pytest.raises(kvmap.PolicyError) as info:
            reader.get_sync(key)
        assert (info.value.key, info.value.entry, info.value.manifest) == (key, entry, uri(manifest))
        assert f"{uri(shared)} (real path {os.path.realpath(shared)})" in str(info.value)
        assert "--allow" in str(info.value)


def test_a_remote_manifest_reaches_files_only_inside_the_real_allow_prefix_even_with_allow_all(disk: Path) -> None:
    shared = disk / "shared"
    shared.mkdir()
    (shared / "x").write_bytes(b"shared-x")
    (shared / "link").symlink_to(disk / "outside")
    name = f"symlinks-{uuid.uuid4().hex}"
    entries = [{"key": "x", "path": uri(shared / "x")}, {"key": "out", "path": uri(shared / "link" / "secret")}]
    obstore.put(kvmap.memory_store(name), "m.json", json.dumps(entries).encode())
    for allow_all in (False, True):
        reader = kvmap.Reader(f"memory://{name}/m.json", allow=[uri(shared)], allow_all=allow_all)
        assert bytes(reader.get_sync("x")) == b"shared-x"
        with pytest.raises(kvmap.PolicyError) as info:
            reader.get_sync("out")
        text = str(info.value)
        assert "--allow file://" in text
        assert "allow_all" not in text  # it would not help a remote manifest to local files
        assert "allow-all" not in text


def test_allow_all_lets_a_local_manifest_follow_any_link(disk: Path) -> None:
    (disk / "home" / "link").symlink_to(disk / "outside")
    write_manifest(disk / "home" / "m.json", [{"key": "k", "path": "link/secret"}])
    reader = kvmap.Reader(disk / "home" / "m.json", allow_all=True)
    assert reader.get_sync("k") == SECRET
    assert reader.policy.allowed_by(uri(disk / "home" / "link" / "secret"), uri(disk / "home" / "m.json")) == (
        "allow_all"
    )


def test_an_allowed_directory_may_itself_be_a_link(disk: Path) -> None:
    (disk / "data-link").symlink_to(disk / "outside")
    (disk / "outside" / "inner-link").symlink_to("secret")
    (disk / "outside" / "escape").symlink_to(disk / "home" / "data" / "ok")
    manifest = write_manifest(
        disk / "home" / "m.json",
        [
            {"key": "k", "path": uri(disk / "data-link" / "secret")},
            {"key": "inner", "path": uri(disk / "data-link" / "inner-link")},
            {"key": "escape", "path": uri(disk / "data-link" / "escape")},
        ],
    )
    reader = kvmap.Reader(manifest, allow=[uri(disk / "data-link")])
    assert reader.get_sync("k") == SECRET
    assert reader.get_sync("inner") == SECRET
    # Out of the allowed directory's real tree, but into the manifest's own origin: allowed by it.
    assert bytes(reader.get_sync("escape")) == b"ok"
    assert reader.policy.allowed_by(uri(disk / "data-link" / "escape"), uri(manifest)) == "origin"


def test_the_origin_is_the_directory_of_the_manifest_url_as_given(disk: Path) -> None:
    home = disk / "home"
    write_manifest(home / "m.json", [{"prefix": "", "path": "data/"}])
    # A link to the manifest's directory: the URL through the link is the origin; real paths agree.
    (disk / "home-link").symlink_to(home)
    via_dir = kvmap.Reader(uri(disk / "home-link" / "m.json"))
    assert bytes(via_dir.get_sync("ok")) == b"ok"
    # A link to the manifest file from another directory: relative targets resolve against the URL as
    # given, and that directory is the origin (a link there leading out of it is still refused).
    elsewhere = disk / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "data" / "ok").write_bytes(b"elsewhere-ok")
    (elsewhere / "m.json").symlink_to(home / "m.json")
    as_given = kvmap.Reader(uri(elsewhere / "m.json"))
    assert bytes(as_given.get_sync("ok")) == b"elsewhere-ok"
    (elsewhere / "data" / "out").symlink_to(disk / "outside" / "secret")
    assert refused(as_given, "out").manifest == uri(elsewhere / "m.json")
    # A local path the caller passes is made absolute with its links resolved: the real document's directory.
    by_path = kvmap.Reader(elsewhere / "m.json")
    assert bytes(by_path.get_sync("ok")) == b"ok"
    assert by_path.explain_sync("ok").hops[0].manifest == Path(os.path.realpath(home / "m.json")).as_uri()


def test_the_policy_itself_is_text_only_unless_given_a_realpath(disk: Path) -> None:
    (disk / "home" / "link").symlink_to(disk / "outside")
    target, manifest = uri(disk / "home" / "link" / "secret"), uri(disk / "home" / "m.json")
    assert kvmap.Policy().allowed_by(target, manifest) == "origin"
    real = kvmap.Policy(realpath=local_realpath)
    assert real.allowed_by(target, manifest) is None
    assert real.allowed_by(uri(disk / "home" / "data" / "ok"), manifest) == "origin"
    assert real.allowed_by("s3://b/x", "s3://b/m.json") == "origin"  # other schemes: text only
    with pytest.raises(kvmap.PolicyError, match="real path"):
        real.check(target, manifest=manifest, entry=0, key="k")
    # The real path is part of the policy's identity, and survives pickling (by reference).
    assert real != kvmap.Policy()
    assert real == kvmap.Policy(realpath=local_realpath)
    assert hash(real) == hash(kvmap.Policy(realpath=local_realpath))
    assert pickle.loads(pickle.dumps(real)) == real
    assert "realpath=kvmap.roots.local_realpath" in repr(real)
    assert kvmap.Reader(disk / "home" / "m.json").policy == kvmap.Policy(realpath=RealPaths())


def test_real_paths_remembered_by_directory_agree_with_realpath(disk: Path) -> None:
    """The Reader's resolver remembers directories; each answer must be local_realpath's."""
    (disk / "home" / "link").symlink_to(disk / "outside")
    (disk / "home" / "data" / "file-link").symlink_to(disk / "outside" / "secret")
    (disk / "home" / "data" / "dangling").symlink_to(disk / "nowhere" / "x")
    real = RealPaths(size=2)
    paths = [
        disk / "home" / "data" / "ok",
        disk / "home" / "link" / "secret",
        disk / "home" / "link" / "new" / "file",
        disk / "home" / "data" / "file-link",
        disk / "home" / "data" / "dangling",
        disk / "home" / "data" / "missing",
        disk / "home" / "data",
    ]
    for _ in range(2):  # the second pass answers from what the first remembered (size 2 evicts too)
        for path in paths:
            assert real(str(path)) == local_realpath(str(path)), path
    assert real("/a\0b") is None
    real.forget()
    assert real(str(paths[1])) == local_realpath(str(paths[1]))


def test_local_realpath() -> None:
    assert local_realpath("/no-such-kvmap-dir/a//b/") == "/no-such-kvmap-dir/a/b"
    assert local_realpath("/a\0b") is None


def test_a_link_loop_inside_the_origin_is_a_target_error_not_an_escape(disk: Path) -> None:
    (disk / "home" / "loop").symlink_to("loop")
    write_manifest(disk / "home" / "m.json", [{"key": "k", "path": "loop/x"}])
    with pytest.raises(kvmap.TargetError) as info:  # the policy passes it; opening it fails
        kvmap.Reader(disk / "home" / "m.json").get_sync("k")
    assert (info.value.key, info.value.entry) == ("k", 0)


# -- decisions remembered per directory (Policy.siblings, Chain.check) -----------------------


def test_regression_a_link_next_to_an_allowed_file_is_still_refused(disk: Path) -> None:
    """The directory of an allowed target remembers its decision for its siblings; a sibling that
    is a link leading out must still be refused after the allowed one was read."""
    (disk / "home" / "data" / "innocent.bin").symlink_to(disk / "outside" / "secret")
    manifest = write_manifest(disk / "home" / "m.json", [{"prefix": "data/", "path": "data/"}])
    reader = kvmap.Reader(manifest)
    assert reader.get_sync("data/ok") == b"ok"
    assert asyncio.run(reader.get("data/ok")) == b"ok"
    assert refused(reader, "data/innocent.bin").entry == 0
    assert reader.get_sync("data/ok") == b"ok"


# Regression (found in review): an object whose real path *was* the origin passed, and its directory's
# decision was then remembered for siblings: home/data -> the origin's parent, 'data/home' (the origin
# itself) passed, and then 'data/secret' (outside) was read.
def test_regression_a_link_to_the_origins_parent_does_not_open_its_other_children(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "secret").write_bytes(SECRET)
    (home / "data").symlink_to(tmp_path)
    manifest = write_manifest(home / "m.json", [{"prefix": "data/", "path": "data/"}])
    reader = kvmap.Reader(manifest)
    for key in ("data/home", "data/secret"):  # the origin itself is not inside the origin, as text says
        with pytest.raises(kvmap.PolicyError):
            reader.get_sync(key)
        with pytest.raises(kvmap.PolicyError):
            asyncio.run(reader.get(key))
    assert reader.get_sync("data/home/m.json") is not None  # back inside: fine


def test_a_directory_being_listed_may_be_the_granting_directory_itself(tmp_path: Path) -> None:
    """Listing a redirect onto the origin, when the manifest's URL goes through a link: the listed
    directory's real path equals the origin's (an object's may not)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a").write_bytes(b"a")
    (tmp_path / "via").symlink_to(tmp_path / "real")
    write_manifest(tmp_path / "real" / "m.json", [{"prefix": "", "path": "./"}])
    reader = kvmap.Reader(uri(tmp_path / "via") + "m.json")
    assert reader.list_prefix_sync("") == ["a", "m.json"]
    assert reader.get_sync("a") == b"a"


def test_siblings_of_a_link_or_a_name_that_is_not_plain_have_no_shortcut(disk: Path) -> None:
    (disk / "home" / "data" / "inside-link").symlink_to(disk / "home" / "data" / "ok")
    policy = kvmap.Policy(realpath=RealPaths())
    data = uri(disk / "home" / "data")
    same = policy.siblings(data + "ok")
    assert same is not None
    assert [same("other"), same("ok")] == [True, True]
    assert not same("inside-link")  # a link: the caller must ask the policy
    assert [same(".."), same("a%2F.."), same("")] == [False, False, False]
    assert policy.siblings(data + "inside-link") is None
    assert policy.siblings(data + "x%20y") is None
    assert policy.siblings(data) is None
    assert policy.siblings("s3://bucket/a/b") is not None
    assert kvmap.Policy().siblings(data + "inside-link") is not None  # text only: links do not matter


# A tree with every kind of neighbour: files, links in and out (to files and directories), links to an
# ancestor of the origin, to the origin and to the directory itself, a dangling link, a subdirectory,
# names that need escaping, and missing names.
_TREE_KEYS = [
    "ok",
    "ok2",
    "in-link",
    "out-link",
    "dangling",
    "sub/x",
    "sub/out-link",
    "dir-out/secret",
    "dir-in/x",
    "missing",
    "sp ace",
    "pct%41",
    "../outside/secret",
    "sub/../ok",
    "up",
    "up/home",
    "up/outside",
    "up/root-secret",
    "up/outside/secret",
    "up/home/m.json",
    "up/home/data/ok",
    "to-home",
    "to-home/m.json",
    "to-data",
    "to-data/ok",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    data, outside = root / "home" / "data", root / "outside"
    (data / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (root / "root-secret").write_bytes(SECRET)
    for name in ("ok", "ok2", "sub/x", "sp ace", "pct%41"):
        (data / name).write_bytes(name.encode())
    (data / "in-link").symlink_to(data / "ok")
    (data / "out-link").symlink_to(outside / "secret")
    (data / "sub" / "out-link").symlink_to(Path("..") / ".." / ".." / "outside" / "secret")
    (data / "dangling").symlink_to(outside / "nothing")
    (data / "dir-out").symlink_to(outside)
    (data / "dir-in").symlink_to(data / "sub")
    (data / "up").symlink_to(root)  # an ancestor of the origin
    (data / "to-home").symlink_to(root / "home")  # the origin itself
    (data / "to-data").symlink_to(data)  # the directory itself
    write_manifest(root / "home" / "m.json", [{"prefix": "", "path": "data/"}])
    return root


def _outcome(reader: kvmap.Reader, key: str) -> Any:
    try:
        got = reader.get_sync(key)
    except kvmap.PolicyError:
        return "refused"
    except kvmap.KvmapError as exc:
        return type(exc).__name__
    return None if got is None else bytes(got)


@settings(max_examples=80, deadline=None)
@given(order=st.lists(st.sampled_from(_TREE_KEYS), min_size=1, max_size=16))
@example(order=["up/home", "up/root-secret"])  # regression: the origin itself passed, then its siblings
def test_remembered_decisions_are_the_decisions_a_fresh_reader_makes(tree: Path, order: list[str]) -> None:
    """Whatever was read before, a key's outcome (bytes, absent, refused) is a fresh reader's."""
    manifest = tree / "home" / "m.json"
    reader = kvmap.Reader(manifest, cache_size=1)  # small caches: evictions too
    for key in order:
        assert _outcome(reader, key) == _outcome(kvmap.Reader(manifest), key), key
    assert _outcome(kvmap.Reader(manifest), "out-link") == "refused"
    assert _outcome(kvmap.Reader(manifest), "ok") == b"ok"
