"""kvmap.localfs: local file I/O confined by real path at the moment of I/O. Real files, real
links and real failures under ``tmp_path``; nothing is mocked. (The tests run as root, so no
permission bits can make a write fail: failures are forced with ``RLIMIT_FSIZE`` in a child
process and with a directory where the file should be.)"""

from __future__ import annotations

import array
import errno
import os
import pickle
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from obstore.store import LocalStore

from kvmap import localfs
from kvmap.localfs import EscapeError, TooLarge

SECRET = b"SECRET-outside"
# Hypothesis examples per property: the file must stay well under 20 s (the "ci" profile
# asks for thousands; these properties do real file I/O per example).
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``home/`` (the confining directory, by real path) holds ``data/ok``; ``outside/secret``
    and ``outside/data/ok`` lie out of its reach; ``home2/`` shares its name as a prefix."""
    root = Path(os.path.realpath(tmp_path))
    (root / "home" / "data").mkdir(parents=True)
    (root / "home" / "data" / "ok").write_bytes(b"ok")
    (root / "outside" / "data").mkdir(parents=True)
    (root / "outside" / "secret").write_bytes(SECRET)
    (root / "outside" / "data" / "ok").write_bytes(SECRET)
    (root / "home2").mkdir()
    (root / "home2" / "secret").write_bytes(SECRET)
    return root


def home(tree: Path) -> str:
    return str(tree / "home")


def leftovers(directory: Path) -> list[str]:
    """Names below ``directory`` that look like staged (temporary) files."""
    return [str(p) for p in directory.rglob("*") if "#" in p.name]


# -- reads: every request shape --------------------------------------------------------------

requests = st.one_of(
    st.just(("whole",)),
    st.tuples(st.just("range"), st.integers(0, 80), st.integers(0, 80)).map(
        lambda t: (t[0], min(t[1], t[2]), max(t[1], t[2]))
    ),
    st.tuples(st.just("from"), st.integers(0, 80)),
    st.tuples(st.just("suffix"), st.integers(0, 80)),
)


def expected(data: bytes, request: tuple[object, ...]) -> bytes:
    match request:
        case ("whole",):
            return data
        case ("range", int(start), int(end)):
            return data[start:end]
        case ("from", int(start)):
            return data[start:]
        case ("suffix", int(n)):
            return data[len(data) - min(n, len(data)) :]
    raise AssertionError(request)


def ask(path: str, request: tuple[object, ...], inside: str | None) -> bytes | None:
    match request:
        case ("whole",):
            return localfs.read(path, inside=inside)
        case ("range", int(start), int(end)):
            return localfs.read(path, start, end, inside=inside)
        case ("from", int(start)):
            return localfs.read(path, start, inside=inside)
        case ("suffix", int(n)):
            return localfs.read(path, suffix=n, inside=inside)
    raise AssertionError(request)


def obstore_answer(store: LocalStore, name: str, request: tuple[object, ...]) -> bytes:
    match request:
        case ("whole",):
            return bytes(obstore.get(store, name).bytes())
        case ("range", int(start), int(end)):
            return bytes(obstore.get_range(store, name, start=start, end=end))
        case ("from", int(start)):
            return bytes(obstore.get(store, name, options={"range": {"offset": start}}).bytes())
        case ("suffix", int(n)):
            return bytes(obstore.get(store, name, options={"range": {"suffix": n}}).bytes())
    raise AssertionError(request)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(os.path.realpath(d))


@FEW
@given(data=st.binary(max_size=64), request=requests, confined=st.booleans())
def test_read_shapes_match_slicing_and_obstore(
    scratch: Path, data: bytes, request: tuple[object, ...], confined: bool
) -> None:
    path = scratch / "f.bin"
    path.write_bytes(data)
    inside = str(scratch) if confined else None
    assert ask(str(path), request, inside) == expected(data, request)
    assert localfs.size(str(path), inside=inside) == len(data)
    # obstore answers a request that starts inside the object (a range: a non-empty one); one
    # at or past the end, or an empty range, is an error there.
    match request:
        case ("range", int(start), int(end)):
            answered = start < len(data) and end > start
        case ("from", int(start)):
            answered = start < len(data)
        case _:
            answered = True
    if answered:
        assert obstore_answer(LocalStore(str(scratch)), "f.bin", request) == expected(data, request)


@FEW
@given(data=st.binary(max_size=64), spans=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80)), max_size=6))
def test_read_ranges_match_slicing(scratch: Path, data: bytes, spans: list[tuple[int, int]]) -> None:
    path = scratch / "r.bin"
    path.write_bytes(data)
    starts = [min(a, b) for a, b in spans]
    ends = [max(a, b) for a, b in spans]
    got = localfs.read_ranges(str(path), starts, ends, inside=str(scratch))
    assert got == [data[s:e] for s, e in zip(starts, ends, strict=True)]


def test_reads_past_the_end_are_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    ten = tmp_path / "ten"
    ten.write_bytes(b"0123456789")
    assert localfs.read(str(empty), 0, 5) == b""
    assert localfs.read(str(empty), suffix=3) == b""
    assert localfs.read(str(empty)) == b""
    assert localfs.read(str(ten), 10, 20) == b""
    assert localfs.read(str(ten), 12) == b""
    assert localfs.read(str(ten), 8, 20) == b"89"
    assert localfs.read(str(ten), suffix=0) == b""
    assert localfs.read(str(ten), suffix=30) == b"0123456789"


@pytest.mark.parametrize(
    ("start", "end", "suffix"), [(-1, None, None), (5, 4, None), (0, None, -1), (1, None, 2), (0, 3, 2)]
)
def test_invalid_requests(tmp_path: Path, start: int, end: int | None, suffix: int | None) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    with pytest.raises(ValueError, match="invalid"):
        localfs.read(str(tmp_path / "f"), start, end, suffix)
    with pytest.raises(ValueError, match="invalid"):
        localfs.read(str(tmp_path / "missing"), start, end, suffix)  # before any I/O


def test_read_ranges_invalid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 starts but 1 ends"):
        localfs.read_ranges(str(tmp_path / "f"), [0, 1], [2])
    with pytest.raises(ValueError, match="invalid byte range"):
        localfs.read_ranges(str(tmp_path / "f"), [3], [2])


def test_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "f")
    Path(path).write_bytes(b"0123456789")
    assert localfs.read(path, limit=10) == b"0123456789"
    assert localfs.read(path, 2, 100, limit=8) == b"23456789"  # what is returned counts, not asked
    assert localfs.read(path, 20, 2000, limit=0) == b""
    with pytest.raises(TooLarge) as info:
        localfs.read(path, 1, limit=8)
    assert (info.value.path, info.value.limit, info.value.size) == (path, 8, 9)
    assert str(info.value) == f"{path}: 9 bytes requested, more than the limit of 8"
    with pytest.raises(TooLarge):
        localfs.read(path, suffix=5, limit=4)
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), again.size, str(again)) == (TooLarge, 9, str(info.value))


# -- reads: no object ------------------------------------------------------------------------


def test_no_object(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "dir").mkdir()
    os.mkfifo(tree / "home" / "fifo")  # must not block waiting for a writer
    for path in (
        f"{h}/missing",
        f"{h}/no/such/dir/f",
        f"{h}/data/ok/below",  # through a regular file: ENOTDIR (obstore: a generic error)
        f"{h}/dir",  # a directory is no object (as obstore's NotFound "is directory")
        f"{h}/fifo",
    ):
        for inside in (h, None):
            assert localfs.read(path, inside=inside) is None, path
            assert localfs.read(path, 0, 1, inside=inside) is None, path
            assert localfs.size(path, inside=inside) is None, path
            assert localfs.read_ranges(path, [0], [1], inside=inside) is None, path
    with pytest.raises(FileNotFoundError):
        obstore.get(LocalStore(h), "missing")
    with pytest.raises(FileNotFoundError, match="is directory"):
        obstore.get(LocalStore(h), "dir")


def test_other_errors_propagate(tree: Path) -> None:
    loop = tree / "home" / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OSError, match="Too many levels") as info:
        localfs.read(str(loop), inside=home(tree))
    assert info.value.errno == errno.ELOOP


# -- reads: confinement ----------------------------------------------------------------------


def test_links_that_stay_inside_are_followed(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "rel").symlink_to("data")
    (tree / "home" / "abs").symlink_to(tree / "home" / "data")
    (tree / "home" / "data" / "alias").symlink_to("../data/ok")
    (tree / "home" / "viaout").symlink_to("../outside/../home/data")  # out and back in, as text
    for path in ("rel/ok", "abs/ok", "data/alias", "rel/alias", "viaout/ok"):
        assert localfs.read(f"{h}/{path}", inside=h) == b"ok", path
        assert localfs.size(f"{h}/{path}", inside=h) == 2
    assert localfs.read(f"{h}/rel/missing", inside=h) is None


def test_links_that_lead_out_are_refused(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "out").symlink_to(tree / "outside")
    (tree / "home" / "secret").symlink_to("../outside/secret")
    (tree / "home" / "sibling").symlink_to("../home2")  # shares home's name as a prefix
    (tree / "home" / "up").symlink_to("..")
    (tree / "home" / "dangling").symlink_to(tree / "outside" / "nothing")
    cases = {
        "out/secret": f"{tree}/outside/secret",
        "secret": f"{tree}/outside/secret",
        "sibling/secret": f"{tree}/home2/secret",
        "up/outside/secret": f"{tree}/outside/secret",
        "out/nothing": f"{tree}/outside/nothing",  # nothing there: refused all the same
        "dangling": f"{tree}/outside/nothing",
        "up/home": f"{tree}/home",  # the confining directory itself is not strictly inside it
    }
    for name, real in cases.items():
        for call in (
            lambda p: localfs.read(p, inside=h),
            lambda p: localfs.read(p, 0, 1, inside=h),
            lambda p: localfs.size(p, inside=h),
            lambda p: localfs.read_ranges(p, [0], [1], inside=h),
        ):
            with pytest.raises(EscapeError) as info:
                call(f"{h}/{name}")
            assert (info.value.path, info.value.real, info.value.inside) == (f"{h}/{name}", real, h)
            assert str(info.value) == f"{h}/{name} resolves to {real}, outside {h}"
    # Unconfined, or confined to "/", the same links are followed.
    assert localfs.read(f"{h}/out/secret") == SECRET
    assert localfs.read(f"{h}/out/secret", inside="/") == SECRET
    assert localfs.read(f"{h}/out/secret", inside=str(tree)) == SECRET
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), str(again)) == (EscapeError, str(info.value))


def test_directory_replaced_by_a_link_between_two_reads(tree: Path) -> None:
    """THE regression: a first read passes; the directory is swapped for a link to the
    outside; the same path read again must be refused, not read outside."""
    h = home(tree)
    path = f"{h}/data/ok"
    assert localfs.read(path, inside=h) == b"ok"
    assert localfs.size(path, inside=h) == 2
    os.rename(tree / "home" / "data", tree / "home" / "data.old")
    (tree / "home" / "data").symlink_to(tree / "outside" / "data")
    with pytest.raises(EscapeError, match="outside/data/ok, outside"):
        localfs.read(path, inside=h)
    with pytest.raises(EscapeError):
        localfs.read(path, 0, 1, inside=h)
    with pytest.raises(EscapeError):
        localfs.size(path, inside=h)
    with pytest.raises(EscapeError):
        localfs.read_ranges(path, [0], [2], inside=h)
    assert localfs.list_keys(h, inside=h) == ["data.old/ok"]  # the link out is not listed
    assert localfs.list_keys(h, "data/", inside=h) == []


# -- writes ----------------------------------------------------------------------------------


def test_write_creates_parents_and_replaces(tree: Path) -> None:
    h = home(tree)
    path = f"{h}/a/b/c/new.bin"
    localfs.write(path, b"one", inside=h)
    assert Path(path).read_bytes() == b"one"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    localfs.write(path, bytearray(b"two!"), inside=h)
    assert localfs.read(path, inside=h) == b"two!"
    localfs.write(path, memoryview(b"xthreex")[1:-1], inside=h)
    assert localfs.read(path, inside=h) == b"three"
    localfs.write(path, array.array("i", [1, 2]), inside=h)  # any contiguous buffer, as bytes
    assert localfs.read(path, inside=h) == array.array("i", [1, 2]).tobytes()
    localfs.write(path, b"", inside=h, durable=True)
    assert localfs.read(path, inside=h) == b""
    localfs.write(f"{h}/top", b"t", inside=h)  # the parent is the confining directory itself
    assert localfs.read(f"{h}/top", inside=h) == b"t"
    assert leftovers(tree) == []
    assert bytes(obstore.get(LocalStore(h), "a/b/c/new.bin").bytes()) == b""


def test_write_refuses_before_any_io(tree: Path) -> None:
    h = home(tree)
    with pytest.raises(TypeError):
        localfs.write(f"{h}/new/x", memoryview(bytearray(8))[::2], inside=h)  # not contiguous
    with pytest.raises(ValueError, match="not an absolute path to a file"):
        localfs.write(f"{h}/dir/", b"x", inside=h)
    with pytest.raises(ValueError, match="not an absolute path to a file"):
        localfs.write("relative/x", b"x")
    assert not (tree / "home" / "new").exists()


def test_parent_replaced_by_a_link_between_two_writes(tree: Path) -> None:
    h = home(tree)
    localfs.write(f"{h}/data/chunk", b"first", inside=h)
    os.rename(tree / "home" / "data", tree / "home" / "data.old")
    (tree / "home" / "data").symlink_to(tree / "outside" / "data")
    before = sorted(os.listdir(tree / "outside" / "data"))
    with pytest.raises(EscapeError, match="outside/data, outside"):
        localfs.write(f"{h}/data/chunk", b"second", inside=h)
    with pytest.raises(EscapeError):
        localfs.write(f"{h}/data/deeper/chunk", b"second", inside=h)  # nor are parents made
    assert sorted(os.listdir(tree / "outside" / "data")) == before
    assert (tree / "home" / "data.old" / "chunk").read_bytes() == b"first"
    localfs.write(f"{h}/data/chunk", b"unconfined")  # inside=None: the caller's own target
    assert (tree / "outside" / "data" / "chunk").read_bytes() == b"unconfined"


def test_write_never_makes_parents_through_a_link_out(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "out").symlink_to(tree / "outside")
    (tree / "home" / "dangling").symlink_to(tree / "outside" / "new")
    with pytest.raises(EscapeError):
        localfs.write(f"{h}/out/new/x", b"x", inside=h)
    with pytest.raises(EscapeError, match="outside/new"):
        localfs.write(f"{h}/dangling/x", b"x", inside=h)
    with pytest.raises(EscapeError):
        localfs.write(f"{h}/dangling/deeper/x", b"x", inside=h)
    assert not (tree / "outside" / "new").exists()
    (tree / "home" / "in").symlink_to("data")
    localfs.write(f"{h}/in/made/x", b"x", inside=h)  # a link that stays inside is followed
    assert (tree / "home" / "data" / "made" / "x").read_bytes() == b"x"


def test_write_makes_a_confining_directory_that_does_not_exist_yet(tree: Path) -> None:
    """An allowed directory need not exist before the first write into it (a new overlay or
    root location): it and its missing parents are made, in ancestors of it by real path only;
    a link at its place, or on the way, that leads elsewhere is still refused."""
    new = f"{tree}/made/later/here"
    localfs.write(f"{new}/a/b", b"x", inside=new)
    assert (tree / "made" / "later" / "here" / "a" / "b").read_bytes() == b"x"
    (tree / "linked").symlink_to(tree / "outside")
    with pytest.raises(EscapeError):  # its parent's real path is no ancestor of it
        localfs.write(f"{tree}/linked/new/x", b"x", inside=f"{tree}/linked/new")
    assert not (tree / "outside" / "new").exists()
    (tree / "later2").mkdir()
    (tree / "later2" / "here").symlink_to(tree / "outside")  # where it is to be made, a link out
    with pytest.raises(EscapeError):
        localfs.write(f"{tree}/later2/here/x", b"x", inside=f"{tree}/later2/here")
    assert not (tree / "outside" / "x").exists()
    with pytest.raises(EscapeError):  # a sibling of the confining directory is not on the way
        localfs.write(f"{tree}/made/other/x", b"x", inside=new)
    assert not (tree / "made" / "other").exists()


def test_write_replaces_a_final_link_not_its_target(tree: Path) -> None:
    h = home(tree)
    link = tree / "home" / "data" / "link"
    link.symlink_to(tree / "outside" / "secret")
    localfs.write(str(link), b"mine", inside=h)
    assert not link.is_symlink()
    assert link.read_bytes() == b"mine"
    assert (tree / "outside" / "secret").read_bytes() == SECRET


def test_write_failure_at_rename_keeps_the_directory(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "data" / "d").mkdir()
    (tree / "home" / "data" / "d" / "inner").write_bytes(b"kept")
    with pytest.raises(IsADirectoryError):
        localfs.write(f"{h}/data/d", b"new", inside=h)
    assert (tree / "home" / "data" / "d" / "inner").read_bytes() == b"kept"
    with pytest.raises(NotADirectoryError):
        localfs.write(f"{h}/data/ok/below", b"new", inside=h)  # through a regular file
    assert leftovers(tree) == []


def test_write_failure_while_writing_leaves_the_old_bytes(tree: Path) -> None:
    """``RLIMIT_FSIZE`` binds root too: a write past it fails with EFBIG (SIGXFSZ ignored),
    in a child process so that the limit does not reach this one."""
    h = home(tree)
    path = f"{h}/data/big"
    localfs.write(path, b"old", inside=h)
    script = textwrap.dedent(
        f"""
        import importlib.util, resource, signal
        spec = importlib.util.spec_from_file_location("localfs", {localfs.__file__!r})
        localfs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(localfs)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            localfs.write({path!r}, b"n" * 100_000, inside={h!r})
        except OSError as exc:
            print(exc.errno)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(errno.EFBIG), done.stderr
    assert Path(path).read_bytes() == b"old"
    assert leftovers(tree) == []


# -- deletes ---------------------------------------------------------------------------------


def test_delete(tree: Path) -> None:
    h = home(tree)
    localfs.write(f"{h}/a/b/x", b"x", inside=h)
    localfs.delete(f"{h}/a/b/x", inside=h)
    assert not (tree / "home" / "a" / "b" / "x").exists()
    assert (tree / "home" / "a" / "b").is_dir()  # emptied parents stay, as in LocalStore...
    assert localfs.list_dir(h, inside=h) == (["data"], [])  # ...but are not listed
    assert localfs.list_keys(h, "a", inside=h) == []
    localfs.delete(f"{h}/a/b/x", inside=h)  # nothing there: not an error
    localfs.delete(f"{h}/no/such/parent", inside=h)
    localfs.delete(f"{h}/data/ok/below", inside=h)  # through a regular file
    with pytest.raises(IsADirectoryError):
        localfs.delete(f"{h}/a", inside=h)
    with pytest.raises(FileNotFoundError):
        obstore.delete(LocalStore(h), "a/b/x")  # where LocalStore differs


def test_delete_confined(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "out").symlink_to(tree / "outside")
    (tree / "home" / "data" / "link").symlink_to(tree / "outside" / "secret")
    with pytest.raises(EscapeError, match=r"resolves to .*/outside, outside"):
        localfs.delete(f"{h}/out/secret", inside=h)
    with pytest.raises(EscapeError):
        localfs.delete(f"{h}/out/missing/x", inside=h)
    localfs.delete(f"{h}/data/link", inside=h)  # the link goes, not what it points to
    assert not (tree / "home" / "data" / "link").exists()
    assert (tree / "outside" / "secret").read_bytes() == SECRET


# -- listings --------------------------------------------------------------------------------


def make(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())


def test_list_keys_nested_prefix_and_limit(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    make(root, "a/b/c", "a/b/d", "a-b", "a0", "a/x", "b", "ab/c", "zz/y/z")
    (root / "empty" / "deeper").mkdir(parents=True)
    every = ["a-b", "a/b/c", "a/b/d", "a/x", "a0", "ab/c", "b", "zz/y/z"]  # code-point order
    r = str(root)
    for directory in (r, r + "/"):
        assert localfs.list_keys(directory, inside=r) == every
    for prefix in ("", "a", "a/", "a/b", "a/b/", "a/b/c", "a/b/c/", "ab", "z", "zz/y/", "q", "q/", "empty/"):
        assert localfs.list_keys(r, prefix, inside=r) == [k for k in every if k.startswith(prefix)], prefix
    for limit in range(len(every) + 2):
        assert localfs.list_keys(r, limit=limit) == every[:limit]
        assert localfs.list_keys(r, "a", limit=limit) == [k for k in every if k.startswith("a")][:limit]
    for impossible in ("a//", "/a", "./a", "a/../a", "a\x01/"):
        assert localfs.list_keys(r, impossible) == []
    with pytest.raises(ValueError, match="negative limit"):
        localfs.list_keys(r, limit=-1)
    assert localfs.list_keys(r + "/nope") == []
    assert localfs.list_keys(r + "/b") == []  # a file, not a directory
    assert localfs.list_dir(r) == (["a", "ab", "zz"], ["a-b", "a0", "b"])
    assert localfs.list_dir(r + "/a/") == (["b"], ["x"])
    assert localfs.list_dir(r + "/nope") == ([], [])


def test_list_skips_names_obstore_skips(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    make(root, "x#1", "#2", "d/only#33", "x#a", "x#", "y#1a", "d#1/f", "a%20b", "a b", "é")
    (root / "ctl\x01").write_bytes(b"")
    (root / "sub").mkdir()
    Path(os.fsdecode(os.fsencode(str(root / "sub")) + b"/bad\xff")).write_bytes(b"")
    keys = ["a b", "a%20b", "d#1/f", "x#", "x#a", "y#1a", "é"]
    assert localfs.list_keys(str(root)) == keys
    assert localfs.list_dir(str(root)) == (["d#1"], ["a b", "a%20b", "x#", "x#a", "y#1a", "é"])
    # obstore fails the whole listing on the control character and the non-UTF-8 name.
    with pytest.raises(Exception, match="invalid path"):
        obstore.list(LocalStore(str(root))).collect()
    os.unlink(root / "ctl\x01")
    os.unlink(Path(os.fsdecode(os.fsencode(str(root / "sub")) + b"/bad\xff")))
    assert sorted(m["path"] for m in obstore.list(LocalStore(str(root))).collect()) == keys


def test_list_links(tree: Path) -> None:
    h = home(tree)
    make(tree / "home", "data/deep/f")
    (tree / "home" / "in").symlink_to("data")
    (tree / "home" / "file").symlink_to("data/ok")
    (tree / "home" / "out").symlink_to(tree / "outside")
    (tree / "home" / "secret").symlink_to(tree / "outside" / "secret")
    (tree / "home" / "sibling").symlink_to("../home2")
    (tree / "home" / "dangling").symlink_to("nothing")
    (tree / "home" / "data" / "loop").symlink_to("..")  # back to home: a loop
    (tree / "home" / "data" / "self").symlink_to(".")
    (tree / "home" / "data" / "selfloop").symlink_to("selfloop")
    (tree / "home" / "root").symlink_to(h)  # back to the directory listed: a loop too
    assert localfs.list_keys(h, inside=h) == ["data/deep/f", "data/ok", "file", "in/deep/f", "in/ok"]
    assert localfs.list_dir(h, inside=h) == (["data", "in"], ["file"])
    # A link to a directory may lead to the confining directory itself (files in it are
    # strictly inside); listed from below, home is not on the walk's path, so no loop.
    assert localfs.list_keys(f"{h}/data", inside=h) == ["deep/f", "loop/file", "ok"]
    assert localfs.list_keys(h, "in/", inside=h) == ["in/deep/f", "in/ok"]
    assert localfs.list_keys(h, "out/", inside=h) == []
    assert localfs.list_keys(h, "data/loop/", inside=h) == []
    assert localfs.list_dir(f"{h}/data", inside=h) == (["deep", "loop"], ["ok"])
    # Unconfined: links out are followed too; loops never are.
    unconfined = localfs.list_keys(h)
    assert {"out/secret", "secret", "sibling/secret"} <= set(unconfined)
    assert not any(k.startswith(("root/", "data/loop/", "data/self/")) for k in unconfined)
    # The directory listed must itself lie inside.
    with pytest.raises(EscapeError):
        localfs.list_keys(f"{h}/out", inside=h)
    with pytest.raises(EscapeError):
        localfs.list_dir(f"{h}/out/", inside=h)
    with pytest.raises(EscapeError):
        localfs.list_keys(f"{h}/out/missing", inside=h)
    assert localfs.list_keys(f"{h}/in", inside=h) == ["deep/f", "loop/file", "ok"]


def test_list_dir_omits_directories_without_files(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    make(root, "full/a", "staged/x#12", "deep/1/2/3/f")
    (root / "empty" / "e").mkdir(parents=True)
    (root / "linked").symlink_to("empty")
    (root / "loopy").mkdir()
    (root / "loopy" / "back").symlink_to("..")
    assert localfs.list_dir(str(root)) == (["deep", "full"], [])
    assert localfs.list_keys(str(root)) == ["deep/1/2/3/f", "full/a"]
    result = obstore.list_with_delimiter(LocalStore(str(root)))
    assert sorted(result["common_prefixes"]) == ["deep", "empty", "full", "linked", "loopy", "staged"]


# -- fallbacks: the same answers without /proc and without directory descriptors -------------


@pytest.fixture(params=["identity", "paths"])
def portable(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The checks other platforms use, run here: the real path by identity (no /proc), and
    with ``paths`` no directory descriptors either (Windows)."""
    monkeypatch.setattr(localfs, "_fd_real", localfs._identity_real)
    if request.param == "paths":
        monkeypatch.setattr(localfs, "_DIRFD", False)
    return str(request.param)


def test_portable_fallbacks(tree: Path, portable: str) -> None:
    h = home(tree)
    (tree / "home" / "in").symlink_to("data")
    (tree / "home" / "out").symlink_to(tree / "outside")
    assert localfs.read(f"{h}/in/ok", 1, inside=h) == b"k"
    with pytest.raises(EscapeError):
        localfs.read(f"{h}/out/secret", inside=h)
    localfs.write(f"{h}/new/a/b", b"b", inside=h)
    with pytest.raises(EscapeError):
        localfs.write(f"{h}/out/x", b"x", inside=h)
    assert localfs.list_keys(h, inside=h) == ["data/ok", "in/ok", "new/a/b"]
    assert localfs.list_dir(h, inside=h) == (["data", "in", "new"], [])
    localfs.delete(f"{h}/new/a/b", inside=h)
    localfs.delete(f"{h}/new/a/b", inside=h)
    assert localfs.list_dir(h, inside=h) == (["data", "in"], [])
    os.rename(tree / "home" / "data", tree / "home" / "data.old")
    (tree / "home" / "data").symlink_to(tree / "outside" / "data")
    with pytest.raises(EscapeError):
        localfs.read(f"{h}/data/ok", inside=h)
    with pytest.raises(EscapeError):
        localfs.write(f"{h}/data/ok", b"x", inside=h)
    assert (tree / "outside" / "data" / "ok").read_bytes() == SECRET
    assert leftovers(tree) == []


def test_identity_check_refuses_a_swap(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fd = os.open(tmp_path / "a", os.O_RDONLY)
    try:
        assert localfs._identity_real(fd, str(tmp_path / "a")) == os.path.realpath(tmp_path / "a")
        os.replace(tmp_path / "b", tmp_path / "a")  # what the path names is no longer what is open
        assert localfs._identity_real(fd, str(tmp_path / "a")) is None
    finally:
        os.close(fd)
    error = EscapeError("/d/x", "/d/x", "/d", changed=True)
    assert str(error) == "/d/x changed while it was opened (now /d/x); not shown to be inside /d"


# -- the same answers as obstore's LocalStore on plain trees ---------------------------------

NAMES = ["a", "b", "a-b", "a.b", "ab", "x#1", "x#a", "#2", "a#", "é", "a b", "%41", "z"]
trees = st.lists(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join), min_size=0, max_size=10, unique=True
).map(lambda paths: [p for p in paths if not any(q.startswith(p + "/") for q in paths)])


@FEW
@given(paths=trees, prefix=st.sampled_from(["", "a", "a/", "a/b", "x", "é/", "zz/"]))
def test_same_answers_as_localstore(paths: list[str], prefix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.realpath(tmp)
        store = LocalStore(root)
        for p in paths:
            localfs.write(f"{root}/{p}", p.encode(), inside=root)
        theirs = sorted(m["path"] for m in obstore.list(store).collect())
        assert localfs.list_keys(root, inside=root) == theirs
        assert localfs.list_keys(root, prefix, inside=root) == [k for k in theirs if k.startswith(prefix)]
        listed = obstore.list_with_delimiter(store)
        dirs = sorted(d for d in listed["common_prefixes"] if any(k.startswith(d + "/") for k in theirs))
        assert localfs.list_dir(root, inside=root) == (dirs, sorted(m["path"] for m in listed["objects"]))
        for key in theirs:
            assert localfs.read(f"{root}/{key}", inside=root) == bytes(obstore.get(store, key).bytes())
            assert localfs.size(f"{root}/{key}", inside=root) == obstore.head(store, key)["size"]
        for key in theirs[:2]:
            localfs.delete(f"{root}/{key}", inside=root)
            with pytest.raises(FileNotFoundError):
                obstore.get(store, key)
        assert localfs.list_keys(root, inside=root) == theirs[2:]


# -- a swap in the middle of a walk, and no descriptor left open ------------------------------


def test_directory_swapped_for_a_link_while_walking(tree: Path) -> None:
    """The walk saw ``data`` as a directory; before it opens it, ``data`` becomes a link to the
    outside. Opening it relative to its parent without following links sees the link and
    checks it: it is left out, not listed from outside."""
    h = home(tree)
    root = localfs._open_root(h, h)
    assert root is not None
    try:
        assert [e.name for e in localfs._entries(root, "", h)] == ["data"]
        os.rename(tree / "home" / "data", tree / "home" / "data.old")
        (tree / "home" / "data").symlink_to(tree / "outside" / "data")
        assert localfs._child(root, "data", h, {root.ident}) is None
        inner = localfs._child(root, "data", None, {root.ident})  # unconfined: followed
        assert inner is not None
        localfs._close(inner)
    finally:
        localfs._close(root)


def test_list_dir_probes_below(tree: Path) -> None:
    h = home(tree)
    (tree / "home" / "hollow" / "a" / "b").mkdir(parents=True)
    (tree / "home" / "hollow" / "a" / "up").symlink_to("../..")  # a loop, and nothing else
    (tree / "home" / "via-in" / "x").mkdir(parents=True)
    (tree / "home" / "via-in" / "x" / "f").symlink_to("../../data/ok")
    (tree / "home" / "via-out").mkdir()
    (tree / "home" / "via-out" / "f").symlink_to(tree / "outside" / "secret")
    (tree / "home" / "via-out" / "d").symlink_to(tree / "outside")
    assert localfs.list_dir(h, inside=h) == (["data", "via-in"], [])
    assert localfs.list_dir(h) == (["data", "via-in", "via-out"], [])
    assert localfs.list_keys(h, "via", inside=h) == ["via-in/x/f"]
    assert localfs.list_keys(h, inside="/") == localfs.list_keys(h)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_no_descriptor_is_left_open(tree: Path) -> None:
    h = home(tree)
    make(tree / "home", *(f"d{i}/e{j}/f" for i in range(5) for j in range(5)))
    (tree / "home" / "d0" / "loop").symlink_to("..")
    (tree / "home" / "out").symlink_to(tree / "outside")
    (tree / "home" / "big").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        localfs.read(f"{h}/data/ok", inside=h)
        localfs.read(f"{h}/data", inside=h)
        localfs.read_ranges(f"{h}/data/ok", [0], [1], inside=h)
        localfs.size(f"{h}/missing", inside=h)
        localfs.write(f"{h}/new/deep/x", b"x", inside=h, durable=True)
        localfs.delete(f"{h}/new/deep/x", inside=h)
        localfs.list_keys(h, inside=h)
        localfs.list_keys(h, "d1/", inside=h, limit=3)
        localfs.list_dir(h, inside=h)
        for fails in (
            lambda: localfs.read(f"{h}/out/secret", inside=h),
            lambda: localfs.read(f"{h}/data/ok", limit=1),
            lambda: localfs.write(f"{h}/out/x", b"x", inside=h),
            lambda: localfs.write(f"{h}/big", b"x", inside=h),
            lambda: localfs.delete(f"{h}/big", inside=h),
            lambda: localfs.list_keys(f"{h}/out", inside=h),
        ):
            with pytest.raises((EscapeError, TooLarge, OSError)):
                fails()
    assert len(os.listdir("/proc/self/fd")) == before
    assert leftovers(tree) == []


@pytest.mark.parametrize(
    ("inside", "real", "strict", "holds"),
    [
        ("/d", "/d/x", True, True),
        ("/d", "/d", True, False),
        ("/d", "/d", False, True),
        ("/d", "/dx/y", False, False),  # a shared prefix of names is not inside
        ("/d", "/", False, False),
        ("/d/", "/d/x", True, True),  # a trailing "/" given anyway
        ("/d/", "/d", False, True),
        ("/", "/x", True, True),
        ("/", "/", True, False),
        ("/", "/", False, True),
    ],
)
def test_holds(inside: str, real: str, strict: bool, holds: bool) -> None:
    assert localfs._holds(inside, real, strict=strict) is holds


def test_confined_to_the_root(tree: Path) -> None:
    root = localfs._open_root("/", "/")
    assert root is not None
    localfs._close(root)
    localfs.write(f"{tree}/anywhere/x", b"x", inside="/")
    assert localfs.list_keys(f"{tree}/anywhere", inside="/") == ["x"]


def test_any_failure_outside_is_an_escape(tree: Path) -> None:
    h = home(tree)
    (tree / "outside" / "loop").symlink_to("loop")
    (tree / "home" / "out").symlink_to(tree / "outside")
    with pytest.raises(OSError, match="Too many levels"):
        localfs.read(f"{tree}/outside/loop")
    for call in (localfs.read, localfs.size, localfs.delete, localfs.list_keys):
        with pytest.raises(EscapeError):
            call(f"{h}/out/loop/x" if call is localfs.delete else f"{h}/out/loop", inside=h)  # type: ignore[operator]
    with pytest.raises(EscapeError):
        localfs.write(f"{h}/out/loop/x", b"x", inside=h)
