"""The commands of a complete CLI — ls, compose, check, demo, --version, --json everywhere — each run
as the real command in a subprocess, on real zarr arrays, local files and the loopback S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import kvmap
from kvmap.store import KVMapStore
from tests.servers import S3Server
from tests.terminal import run_with_terminal_stderr

DATA = b"0123456789"


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmap", *args], capture_output=True, text=True, check=False, cwd=cwd, env=env
    )


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return path


@pytest.fixture
def arrays(tmp_path: Path) -> Path:
    """Two zarr v3 arrays, t.zarr (int32, two chunks) and p.zarr (float64, one chunk), in tmp_path."""
    t = zarr.create_array(str(tmp_path / "t.zarr"), shape=(4,), chunks=(2,), dtype="i4")
    t[:] = np.arange(4, dtype="i4")
    p = zarr.create_array(str(tmp_path / "p.zarr"), shape=(3,), chunks=(3,), dtype="f8")
    p[:] = [0.5, 1.5, 2.5]
    return tmp_path


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """m.json with a window past the end, a missing object, a missing redirect root and a chained
    manifest (inner.json) with a dangling exact target of its own."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(DATA)
    _write(tmp_path / "inner.json", [{"prefix": "", "path": "data/"}, {"key": "lost", "path": "data/lost.bin"}])
    return _write(
        tmp_path / "m.json",
        [
            {"key": "ok", "path": "data/a.bin", "offset": 0, "length": 10},
            {"key": "short", "path": "data/a.bin", "offset": 6, "length": 8},
            {"key": "gone", "path": "data/gone.bin"},
            {"prefix": "old/", "path": "archive/"},
            {"prefix": "sub/", "path": "inner.json|kvmap:"},
        ],
    )


# -- --version, --help, exit codes -----------------------------------------------------------

COMMANDS = ["resolve", "explain", "ls", "cat", "check", "validate", "compose", "convert", "demo"]


def test_version() -> None:
    run = _run("--version")
    assert run.returncode == 0
    assert run.stdout == f"kvmap {kvmap.__version__}\n"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_documents_its_exit_codes(command: str | None) -> None:
    run = _run(*([command] if command else []), "--help")
    assert run.returncode == 0, run.stderr
    assert "exit status:" in run.stdout
    assert "0  success" in run.stdout
    assert "2  usage error" in run.stdout
    if command not in (None, "demo", "cat"):
        assert "--json" in run.stdout
    if command not in (None, "demo"):
        assert "--allow-all" in run.stdout


def test_demo_help() -> None:
    run = _run("demo", "--help")
    assert run.returncode == 0
    assert "--keep DIR" in run.stdout


# -- ls ----------------------------------------------------------------------------------------


@pytest.fixture
def composite(arrays: Path) -> Path:
    """c.json: t.zarr and p.zarr composed as members t and p (by the CLI), beside them."""
    run = _run("compose", "t=t.zarr", "p=p.zarr", "-o", "c.json", "--zarr-format", "3", cwd=arrays)
    assert run.returncode == 0, run.stderr
    return arrays / "c.json"


def test_ls_lists_the_composite_namespace(composite: Path) -> None:
    run = _run("ls", str(composite))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["p/c/0", "p/zarr.json", "t/c/0", "t/c/1", "t/zarr.json", "zarr.json"]
    under = _run("ls", str(composite), "t/c/")
    assert under.stdout.splitlines() == ["t/c/0", "t/c/1"]


def test_ls_tree(composite: Path) -> None:
    run = _run("ls", str(composite), "--tree")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "p/",
        "  c/",
        "    0",
        "  zarr.json",
        "t/",
        "  c/",
        "    0",
        "    1",
        "  zarr.json",
        "zarr.json",
    ]
    inside = _run("ls", str(composite), "t/", "--tree")
    assert inside.stdout.splitlines() == ["c/", "  0", "  1", "zarr.json"]


def test_ls_long_says_where_each_key_resolves_and_its_size(composite: Path) -> None:
    d = composite.parent
    run = _run("ls", str(composite), "t/", "--long")
    assert run.returncode == 0, run.stderr
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    expect = {
        f"t/{name}": [str((d / "t.zarr" / name).stat().st_size), (d / "t.zarr" / name).as_uri()]
        for name in ("c/0", "c/1", "zarr.json")
    }
    assert {row[0]: row[1:] for row in rows} == expect
    root = _run("ls", str(composite), "zarr.json", "--long")
    size = len(kvmap.Reader(composite).get_sync("zarr.json") or b"")
    assert root.stdout == f"zarr.json\t{size}\t<inline>\n"


def test_ls_json_records_have_the_same_members(composite: Path) -> None:
    plain = _records(_run("ls", str(composite), "t/", "--json").stdout)
    assert plain == [{"key": k, "directory": False} for k in ("t/c/0", "t/c/1", "t/zarr.json")]
    tree = _records(_run("ls", str(composite), "--tree", "--long", "--json").stdout)
    assert {tuple(r) for r in tree} == {
        ("key", "directory", "size", "url", "offset", "length", "inline", "error"),
    }
    directories = [r for r in tree if r["directory"]]
    assert [r["key"] for r in directories] == ["p/", "p/c/", "t/", "t/c/"]
    assert all(r["size"] is None and r["url"] is None for r in directories)
    [chunk] = [r for r in tree if r["key"] == "t/c/1"]
    assert chunk["url"] == (composite.parent / "t.zarr" / "c" / "1").as_uri()
    assert chunk["size"] == (composite.parent / "t.zarr" / "c" / "1").stat().st_size
    assert chunk["inline"] is False


def test_ls_long_marks_a_key_that_cannot_be_read_and_exits_1(broken: Path) -> None:
    run = _run("ls", str(broken), "--long")
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith("kvmap: 3 keys listed cannot be read")
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in run.stdout.splitlines()}
    assert rows["gone"][0] == "!"
    assert "dangling reference" in rows["gone"][1]
    assert rows["short"][0] == "!"
    assert "dangling reference" in rows["sub/lost"][1]  # through the chained manifest
    assert rows["ok"][0] == "10"
    records = {r["key"]: r for r in _records(_run("ls", str(broken), "--long", "--json").stdout)}
    assert "dangling reference" in records["gone"]["error"]
    assert records["ok"]["error"] is None
    assert records["gone"]["size"] is None


def test_ls_tree_and_json_need_a_manifest_that_exists(tmp_path: Path) -> None:
    run = _run("ls", str(tmp_path / "none.json"), "--tree")
    assert run.returncode == 1
    assert run.stderr == f"kvmap: {(tmp_path / 'none.json').as_uri()}: manifest not found\n"


# -- compose -----------------------------------------------------------------------------------


def test_compose_writes_a_group_zarr_opens(arrays: Path) -> None:
    (arrays / "views").mkdir()
    run = _run(
        "compose",
        "t=t.zarr",
        f"p={arrays / 'p.zarr'}",
        "-o",
        "views/c.json",
        "--attr",
        "title=two arrays",
        "--attr",
        'n={"a": [1, 2]}',
        "--consolidated",
        cwd=arrays,
    )
    assert run.returncode == 0, run.stderr
    out = arrays / "views" / "c.json"
    assert run.stdout.splitlines()[0] == "views/c.json: a zarr v3 group of 2 members, consolidated, 3 entries"
    # The members are outside the manifest's directory: reading it needs them allowed, as it says.
    flags = [(arrays / "p.zarr").as_uri() + "/", (arrays / "t.zarr").as_uri() + "/"]
    assert (
        run.stdout.splitlines()[1]
        == f"it names targets outside its own origin; read it with --allow {flags[0]} --allow {flags[1]}"
    )
    group = zarr.open_group(KVMapStore(out, allow=flags, read_only=True), mode="r")
    assert dict(group.attrs) == {"title": "two arrays", "n": {"a": [1, 2]}}
    t, p = group["t"], group["p"]
    assert isinstance(t, zarr.Array)
    assert isinstance(p, zarr.Array)
    np.testing.assert_array_equal(t[:], np.arange(4))
    np.testing.assert_array_equal(p[:], [0.5, 1.5, 2.5])
    root = json.loads(bytes(kvmap.Reader(out, allow=flags).get_sync("zarr.json") or b""))
    assert set(root["consolidated_metadata"]["metadata"]) == {"t", "p"}


def test_compose_with_a_root_where_attributes_are_written(arrays: Path) -> None:
    run = _run("compose", "t=t.zarr", "p=p.zarr", "-o", "c.json", "--root", "root", "--json", cwd=arrays)
    assert run.returncode == 0, run.stderr
    [record] = _records(run.stdout)
    assert record == {
        "output": (arrays / "c.json").as_uri(),
        "entries": 4,
        "members": 2,
        "zarr_format": 3,
        "consolidated": False,
        "root": (arrays / "root").as_uri() + "/",
        "allow": [],
    }
    group = zarr.open_group(KVMapStore(arrays / "c.json"), mode="r+")
    group.attrs["edited"] = True
    written = json.loads((arrays / "root" / "zarr.json").read_text())
    assert written["attributes"] == {"edited": True}


def test_compose_finds_the_format_the_members_share(tmp_path: Path) -> None:
    for name in ("a", "b"):
        zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=(2,), chunks=(2,), dtype="i2", zarr_format=2)[:] = 7
    run = _run("compose", "a=a.zarr", "b=b.zarr/", "-o", "c.json", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert _records(run.stdout)[0]["zarr_format"] == 2
    assert kvmap.Reader(tmp_path / "c.json").get_sync(".zgroup") is not None


def test_compose_of_a_member_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    run = _run("compose", "a=nowhere.zarr", "-o", "c.json", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"kvmap: {(tmp_path / 'c.json').as_uri()}: entry 1: field 'path': member 'a'")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a=x/", "a=y/", "-o", "c.json"], "member 'a' is given twice"),
        (["a", "-o", "c.json"], "'a' is not NAME=TARGET"),
        (["a=x/", "-o", "c.json", "--attr", "nokey"], "'nokey' is not KEY=VALUE"),
        (["a=x/", "-o", "c.json", "--zarr-format", "4"], "invalid choice: '4'"),
        (["a=x/"], "-o/--output"),
    ],
)
def test_compose_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    run = _run("compose", *args, cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
    assert not (tmp_path / "c.json").exists()


def test_compose_writes_local_files_only(tmp_path: Path) -> None:
    run = _run("compose", "a=s3://b/a.zarr/", "-o", "s3://b/c.json", "--zarr-format", "3", cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr == "kvmap: s3://b/c.json: compose writes a local file; give -o a path\n"


# -- check -------------------------------------------------------------------------------------


def test_check_reports_each_problem_on_a_line_and_exits_1(broken: Path) -> None:
    run = _run("check", str(broken))
    assert run.returncode == 1
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    m, inner = broken.as_uri(), (broken.parent / "inner.json").as_uri()
    assert [line.split(":", 1)[0] for line in lines[:-1]] == ["dangling", "past-end", "dangling", "missing-root"]
    assert lines[0].startswith(f"dangling: key 'lost' -> {inner} entry 1 -> ")
    assert lines[1].startswith(f"past-end: key 'short' -> {m} entry 1 -> ")
    archive = (broken.parent / "archive").as_uri() + "/"
    assert lines[3] == f"missing-root: {m} entry 3 -> {archive}: nothing exists under this redirect root"
    assert lines[-1] == f"{m}: 4 problems, checked 4 exact targets and 3 redirect roots in 2 manifests"


def test_check_json_lines_have_the_same_members(broken: Path) -> None:
    run = _run("check", str(broken), "--json")
    assert run.returncode == 1
    records = _records(run.stdout)
    assert len(records) == 4
    assert {tuple(r) for r in records} == {("kind", "manifest", "entry", "key", "url", "reason")}
    assert [r["key"] for r in records if r["kind"] == "missing-root"] == [None]


def test_check_of_a_clean_manifest_exits_0(arrays: Path) -> None:
    _write(arrays / "inner.json", [{"prefix": "", "path": "p.zarr/"}])
    m = _write(
        arrays / "m.json",
        [
            {"prefix": "t/", "path": "t.zarr/"},
            {"prefix": "p/", "path": "inner.json|kvmap:"},
            {
                "key": "t/c/0",
                "path": "t.zarr/c/0",
                "offset": 0,
                "length": (arrays / "t.zarr" / "c" / "0").stat().st_size,
            },
        ],
    )
    run = _run("check", str(m))
    assert run.returncode == 0, run.stdout
    assert run.stdout == f"{m.as_uri()}: ok, checked 1 exact target and 3 redirect roots in 2 manifests\n"
    assert _run("check", str(m), "--json").stdout == ""


def test_check_a_chain_loop(tmp_path: Path) -> None:
    _write(tmp_path / "b.json", [{"prefix": "", "path": "a.json|kvmap:"}])
    a = _write(tmp_path / "a.json", [{"prefix": "", "path": "b.json|kvmap:"}])
    run = _run("check", str(a))
    assert run.returncode == 1
    assert run.stdout.startswith(f"error: {(tmp_path / 'b.json').as_uri()} entry 0 -> ")


def test_check_needs_its_target(tmp_path: Path) -> None:
    run = _run("check", str(tmp_path / "none.json"))
    assert run.returncode == 1
    assert run.stderr == f"kvmap: {(tmp_path / 'none.json').as_uri()}: manifest not found\n"
    assert _run("check", str(tmp_path / "none.json"), "--concurrency", "0").returncode == 2


def test_check_on_the_loopback_s3_server(s3_server: S3Server) -> None:
    """The manifests and objects on S3, credentials from the environment (the CLI takes no store
    options): the same problems as on local files."""
    bucket = f"kvmap-cli-check-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    s3_server.put(bucket, "data/a.bin", DATA)
    s3_server.put(
        bucket, "inner.json", json.dumps([{"prefix": "", "path": "data/"}, {"key": "x", "path": "no/x"}]).encode()
    )
    s3_server.put(
        bucket,
        "m.json",
        json.dumps(
            [
                {"key": "short", "path": "data/a.bin", "offset": 9, "length": 2},
                {"prefix": "sub/", "path": "inner.json|kvmap:"},
                {"prefix": "none/", "path": "none/"},
            ]
        ).encode(),
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": S3Server.ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3Server.SECRET_ACCESS_KEY,
        "AWS_REGION": S3Server.REGION,
    }
    root = s3_server.endpoint.replace("http://", "s3+http://") + f"/{bucket}/"
    run = _run("check", f"{root}m.json", "--json", env=env)
    assert run.returncode == 1, run.stderr
    got = [(r["kind"], r["manifest"], r["entry"], r["url"]) for r in _records(run.stdout)]
    assert got == [
        ("dangling", f"{root}inner.json", 1, f"{root}no/x"),
        ("past-end", f"{root}m.json", 0, f"{root}data/a.bin"),
        ("missing-root", f"{root}m.json", 2, f"{root}none/"),
    ]


def test_check_shows_a_progress_bar_on_a_terminal(broken: Path) -> None:
    """On a pseudo-terminal, `kvmap check` draws its bar on standard error; piped, it prints none."""
    run, shown = run_with_terminal_stderr([sys.executable, "-m", "kvmap", "check", str(broken)])
    assert run.returncode == 1
    assert b"checking" in shown
    piped = _run("check", str(broken))
    assert piped.stderr == ""
    assert piped.stdout.encode() == run.stdout  # standard output was not a terminal: no colour


# -- --json of the one-record commands ---------------------------------------------------------


def test_explain_json(broken: Path) -> None:
    run = _run("explain", str(broken), "sub/lost", "--json")
    assert run.returncode == 0, run.stderr
    [record] = _records(run.stdout)
    inner = (broken.parent / "inner.json").as_uri()
    assert record["key"] == "sub/lost"
    assert record["entries"] == [{"index": 4, "wins": True, "entry": {"prefix": "sub/", "path": "inner.json|kvmap:"}}]
    assert [(h["manifest"], h["entry"]) for h in record["hops"]] == [(broken.as_uri(), 4), (inner, 1)]
    assert record["url"] == (broken.parent / "data" / "lost.bin").as_uri()
    absent = _records(_run("explain", str(broken), "nothing", "--json").stdout)[0]
    assert set(absent) == set(record)
    assert (absent["entries"], absent["url"], absent["inline"]) == ([], None, None)


def test_validate_json(broken: Path, tmp_path: Path) -> None:
    [ok] = _records(_run("validate", str(broken), "--json").stdout)
    assert ok == {"manifest": broken.as_uri(), "valid": True, "entries": 5, "error": None, "entry": None, "field": None}
    bad = tmp_path / "bad.json"
    bad.write_text('[{"key": "a", "path": "x", "offset": -1}]')
    run = _run("validate", str(bad), "--json")
    assert run.returncode == 1
    [record] = _records(run.stdout)
    assert set(record) == set(ok)
    assert (record["valid"], record["entry"], record["field"]) == (False, 0, "offset")
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith("kvmap: ")


def test_convert_json(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.kvstack.json"
    out.parent.mkdir()
    run = _run("convert", str(broken), str(out), "--to", "kvmap", "--json")
    assert run.returncode == 0, run.stderr
    [record] = _records(run.stdout)
    assert record["output"] == out.as_uri()
    assert (record["entries"], record["source_format"], record["target_format"]) == (5, "kvmap", "kvmap")
    assert record["allow"] == [broken.parent.as_uri() + "/"]


def test_compose_keeps_local_members_below_the_output_relative(arrays: Path) -> None:
    """Members and a root named by local paths below the output's directory stay relative in the
    manifest (the group moves with them); a URL member stays as given."""
    (arrays / "out").mkdir()
    for name in ("t.zarr", "p.zarr"):
        (arrays / name).rename(arrays / "out" / name)
    run = _run("compose", "t=out/t.zarr", f"p={(arrays / 'out' / 'p.zarr').as_uri()}/", "-o", "out/g.json",
               "--root", "out/root/", cwd=arrays)  # fmt: skip
    assert run.returncode == 0, run.stderr
    paths = [e.get("path") for e in json.loads((arrays / "out" / "g.json").read_text())["entries"]]
    assert "t.zarr/" in paths
    assert "root/" in paths
    assert (arrays / "out" / "p.zarr").as_uri() + "/" in paths
    moved = arrays / "moved"
    (arrays / "out").rename(moved)
    run = _run("cat", str(moved / "g.json"), "t/zarr.json", cwd=arrays)
    assert run.returncode == 0, run.stderr  # the relative member moved with the group


def test_allow_takes_a_local_directory_and_refuses_a_bad_prefix_as_usage(arrays: Path) -> None:
    (arrays / "home").mkdir()
    _write(arrays / "home" / "m.json", [{"prefix": "t/", "path": (arrays / "t.zarr").as_uri() + "/"}])
    assert _run("cat", "home/m.json", "t/zarr.json", cwd=arrays).returncode == 1  # outside its origin
    run = _run("cat", "home/m.json", "t/zarr.json", "--allow", "t.zarr", cwd=arrays)
    assert run.returncode == 0, run.stderr
    run = _run("cat", "home/m.json", "t/zarr.json", "--allow", "s3://bucket", cwd=arrays)
    assert run.returncode == 2
    assert "does not end in '/'" in run.stderr
    assert "Traceback" not in run.stderr


def test_squash_and_gc_on_the_command_line(tmp_path: Path) -> None:
    """`kvmap squash` writes base + overlay as one manifest that reads the overlay's writes;
    `kvmap gc` removes only what no commit references (here: an object of a write never committed)."""
    from zarr.core.buffer import cpu

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a").write_bytes(b"base-a")
    _write(tmp_path / "m.json", [{"prefix": "", "path": "data/"}])
    big = bytes(range(256)) * 64  # over the inline threshold: an object of the overlay
    store = kvmap.KVMapStore(tmp_path / "m.json", overlay=tmp_path / "ov")
    store.set_sync("b", cpu.Buffer.from_bytes(big))
    store.delete_sync("a")
    store.commit()
    lost = kvmap.KVMapStore(tmp_path / "m.json", overlay=tmp_path / "ov")
    lost.set_sync("c", cpu.Buffer.from_bytes(big[::-1]))  # never committed
    time.sleep(0.01)  # a commit after it (gc keeps objects newer than the newest commit)
    store.set_sync("s", cpu.Buffer.from_bytes(b"small"))
    store.commit()
    run = _run("squash", "m.json", "ov", "-o", "flat.json", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert _records(run.stdout)[0]["entries"] >= 3

    def cat(key: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "kvmap", "cat", "flat.json", key], cwd=tmp_path, capture_output=True
        )

    assert cat("b").stdout == big
    assert cat("a").returncode == 1  # deleted: absent
    assert (tmp_path / "data" / "a").read_bytes() == b"base-a"  # the base is untouched
    run = _run("gc", "ov", "--grace", "0", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    removed = _records(run.stdout)[0]
    assert (len(removed["objects"]), removed["kept"]) == (1, 1)
    assert cat("b").stdout == big


def test_concat_on_the_command_line(arrays: Path) -> None:
    """`kvmap concat` joins arrays along an axis without copying a byte; a source that does not
    end on a chunk boundary is refused with one line, exit 1."""
    run = _run("concat", "t.zarr", "t.zarr", "-o", "joined.json", "--json", cwd=arrays)
    assert run.returncode == 0, run.stderr
    assert _records(run.stdout)[0]["sources"] == 2
    joined = zarr.open_array(kvmap.KVMapStore(arrays / "joined.json", read_only=True), mode="r")
    np.testing.assert_array_equal(joined[...], np.concatenate([np.arange(4, dtype="i4")] * 2))
    odd = zarr.create_array(str(arrays / "odd.zarr"), shape=(3,), chunks=(2,), dtype="i4")
    odd[:] = [7, 8, 9]
    run = _run("concat", "odd.zarr", "t.zarr", "-o", "bad.json", cwd=arrays)
    assert run.returncode == 1
    assert run.stderr.startswith("kvmap: source 0")
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (arrays / "bad.json").exists()


# -- convert: the pins a format cannot hold ---------------------------------------------------


@pytest.fixture
def pinned(tmp_path: Path) -> Path:
    """m.json: a group with a 1-d array of three one-byte chunks of data/a.bin, each pinning its
    ETag (as obstore reports it) and sha256, chunk 0 a version too."""
    import hashlib

    import obstore
    from obstore.store import LocalStore

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(DATA)
    etag = obstore.head(LocalStore(str(tmp_path / "data")), "a.bin")["e_tag"]
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": [3], "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1]}},
        "chunk_key_encoding": {"name": "default"}, "fill_value": 0, "codecs": [{"name": "bytes"}],
    }  # fmt: skip
    entries: list[dict[str, Any]] = [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}},
        {"key": "x/zarr.json", "json": meta},
    ]
    for i in range(3):
        entry = {"key": f"x/c/{i}", "path": "data/a.bin", "offset": i, "length": 1, "etag": etag}
        entry["sha256"] = hashlib.sha256(DATA[i : i + 1]).hexdigest()
        if i == 0:
            entry["version"] = "7"
        entries.append(entry)
    return _write(tmp_path / "m.json", entries)


@pytest.mark.parametrize(
    ("target", "dropped", "note"),
    [
        ("kerchunk", {"etag": 3, "version": 1, "sha256": 3},
         "kerchunk cannot hold pins: dropped 3 etag, 1 version, 3 sha256 pins"),
        ("icechunk", {"version": 1, "sha256": 3}, "icechunk holds only etag pins: dropped 1 version, 3 sha256 pins"),
        ("kvmap", {}, None),
    ],
)  # fmt: skip
def test_convert_names_the_pins_it_dropped(
    pinned: Path, tmp_path: Path, target: str, dropped: dict[str, int], note: str | None
) -> None:
    if target == "icechunk":
        pytest.importorskip("icechunk")
    out = tmp_path / f"out.{target}"
    run = _run("convert", str(pinned), str(out), "--to", target)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ([f"kvmap: {note}"] if note else [])
    # (Icechunk logs a warning about local repositories on standard output.)
    assert f"{out}: 5 entries, kvmap -> {target}" in run.stdout.splitlines()
    run = _run("convert", str(pinned), str(tmp_path / f"again.{target}"), "--to", target, "--json")
    assert run.returncode == 0, run.stderr
    [record] = _records("\n".join(line for line in run.stdout.splitlines() if line.startswith("{")))
    assert (record["dropped_pins"], record["note"]) == (dropped, note)
    if target == "icechunk":  # and back: the etag pins are there again, nothing else
        run = _run("convert", str(out), str(tmp_path / "back.json"), "--json")
        assert run.returncode == 0, run.stderr
        assert run.stderr == ""
        back = kvmap.Manifest.load(tmp_path / "back.json")
        original = kvmap.Manifest.load(pinned)
        assert [e.pins for e in back.entries[2:]] == [kvmap.Pins(etag=e.pins.etag) for e in original.entries[2:]]
