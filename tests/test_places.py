"""Places the way people write them (issue 13 §1): paths, ~, pathlib, file:// URLs, URLs and
pipelines mean the same thing in the Python API and in every CLI command; a manifest built
without url= takes the working directory; the format registry is the one seam."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap.formats import ADAPTERS, FORMATS, Fetch, drive, for_adapter, for_suffix
from kvmap.places import path_url, place_url
from kvmap.url import resolve_target

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest with a relative target, in a directory with a space and a %, as the cwd."""
    home = tmp_path / "my data 100%"
    (home / "arr").mkdir(parents=True)
    (home / "arr" / "0").write_bytes(b"zero")
    (home / "m.json").write_text('{"kvmap": 1, "entries": [{"prefix": "a/", "path": "arr/"}]}')
    monkeypatch.chdir(home)
    return home


def test_every_spelling_of_a_local_manifest_is_one_url(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tree.parent))
    url = (tree / "m.json").as_uri()
    spellings = ["m.json", "./m.json", str(tree / "m.json"), tree / "m.json", url, f"~/{tree.name}/m.json"]
    assert {place_url(s) for s in spellings} == {url}
    for s in spellings:
        assert kvmap.Reader(s).get_sync("a/0") == b"zero", s
        if isinstance(s, str):  # a Path is never a pipeline
            assert place_url(f"{s}|kvmap:a/") == f"{url}|kvmap:a/"


def test_a_path_is_literal_text_a_url_is_not(tmp_path: Path) -> None:
    assert place_url("/d/100%.json") == "file:///d/100%25.json"
    assert place_url("file:///d/100%25.json") == "file:///d/100%25.json"
    assert place_url(Path("/d/a|b.json")) == "file:///d/a%7Cb.json"  # a Path is never a pipeline
    assert place_url("/d/a.zip|zip:m.json") == "file:///d/a.zip|zip:m.json"
    assert path_url("/d/dir/") == "file:///d/dir/"
    with pytest.raises(ValueError, match="empty"):
        place_url("")


def test_every_cli_command_takes_a_path_a_url_and_a_pipeline(tree: Path) -> None:
    url = (tree / "m.json").as_uri()
    for target in ("m.json", url, f"{url}|kvmap:"):
        for cmd in (
            ["resolve", target, "a/0"],
            ["validate", target],
            ["explain", target, "a/0"],
            ["cat", target, "a/0"],
        ):
            run = subprocess.run([sys.executable, "-m", "kvmap", *cmd], capture_output=True, text=True, check=False)
            assert run.returncode == 0, (cmd, run.stderr)
        assert (
            "arr/0"
            in subprocess.run(
                [sys.executable, "-m", "kvmap", "resolve", target, "a/0"], capture_output=True, text=True, check=True
            ).stdout
        )


def test_a_manifest_built_without_url_resolves_against_the_directory_it_was_built_in(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = kvmap.Manifest.from_json([{"prefix": "a/", "path": "arr/"}])
    assert m.url == tree.as_uri() + "/"
    assert m.name is None  # errors do not name a URL the caller never gave
    monkeypatch.chdir(tree.parent)  # captured when built, not when used
    assert kvmap.compile(m).resolve("a/0").url == (tree / "arr" / "0").as_uri()
    again = pickle.loads(pickle.dumps(m))
    assert again.url == m.url
    assert kvmap.compile(again).resolve("a/0") == kvmap.compile(m).resolve("a/0")
    assert kvmap.Reader(m).get_sync("a/0") == b"zero"  # the origin is where it was built


def test_url_accepts_a_path_and_none_means_no_url(tree: Path) -> None:
    assert kvmap.Manifest.from_json([], url=tree / "m.json").url == (tree / "m.json").as_uri()
    assert kvmap.Manifest.loads(b"[]", url="m.json").url == (tree / "m.json").as_uri()
    with pytest.raises(kvmap.ManifestError, match="relative reference") as info:
        kvmap.Manifest.from_json([{"key": "k", "path": "x"}], url=None)
    assert (info.value.entry, info.value.field) == (0, "path")
    # ...but an absolute OS path in a document without a URL is that local file (spec 5.1).
    m = kvmap.Manifest.from_json([{"key": "k", "path": str(tree / "arr" / "0")}], url=None)
    assert kvmap.compile(m).resolve("k").url == "file://" + str(tree / "arr" / "0")


@given(st.sampled_from("CDcz"), st.lists(st.text("ab _.-", min_size=1, max_size=4), min_size=1, max_size=3))
def test_drive_paths_name_local_files_only_in_local_documents(letter: str, parts: list[str]) -> None:
    back, fwd = f"{letter}:\\" + "\\".join(parts), f"{letter}:/" + "/".join(parts)
    for base in (None, "file:///home/u/m.json", "file:///a.zip|zip:d/m.json"):
        assert resolve_target(base, back) == resolve_target(base, fwd) == "file:///" + fwd
    assert resolve_target("s3://b/m.json", fwd) == fwd  # a one-letter scheme elsewhere: verbatim


def test_the_registry_is_the_one_place_formats_are_named() -> None:
    assert set(FORMATS) == {
        "kvmap",
        "kvmap-parquet",
        "chunk-manifest",
        "kerchunk",
        "kerchunk-parquet",
        "kvstack",
        "icechunk",
    }
    for name, fmt in ADAPTERS.items():
        assert for_adapter(name) is fmt
        assert fmt.loader is not None
    with pytest.raises(kvmap.PipelineError, match=r"unknown URL adapter 'tar'.*kerchunk"):
        for_adapter("tar")
    assert for_suffix("out.parq").name == "kerchunk-parquet"
    assert for_suffix("big.kvmap.parquet").name == "kvmap-parquet"
    assert for_suffix("x.json").name == "kvmap"
    assert for_suffix("x.txt") is None
    # zarr's URL pipelines get one entry point per manifest adapter whose name is a legal URL
    # scheme (the entry-point name is the scheme): zarr_chunk_manifest has zarr-chunk-manifest.
    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["zarr.url_adapters"]
    assert set(points) == {a for a in ADAPTERS if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", a)}


def test_an_unknown_adapter_in_a_pipeline_is_refused_naming_what_kvmap_knows(tree: Path) -> None:
    with pytest.raises(kvmap.PipelineError, match="unknown URL adapter 'nope'"):
        kvmap.Reader("m.json|nope:").get_sync("a/0")


def test_a_loader_may_not_name_anything_outside_its_document(tree: Path) -> None:
    from kvmap.chain import Chain, Location, Walk
    from kvmap.policy import Policy

    chain = Chain(Policy())
    for bad in ("../m.json", "a/../../x", "", "./x", "a//b", "x\n"):
        gen = chain._fetched(Location((tree / "m.json").as_uri()), Fetch(bad), Walk(None))
        if bad == "":
            assert next(gen).url == (tree / "m.json").as_uri()  # the document itself
            continue
        with pytest.raises(kvmap.TargetError, match="asked for"):
            next(gen)


def test_drive_cuts_ranges_as_the_walk_does() -> None:
    def loading(url: str | None):  # type: ignore[no-untyped-def]
        head = yield Fetch("", (0, 2))
        tail = yield Fetch("", (None, 2))
        mid = yield Fetch("", (2, None))
        missing = yield Fetch("x")
        return head, tail, mid, missing

    assert drive(loading(None), {"": b"abcdef"}.get) == (b"ab", b"ef", b"cdef", None)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"version": 1, "refs": {".zgroup": '{"zarr_format": 2}'}}, "kerchunk:"),
        ({".zgroup": '{"zarr_format": 2}', "a/0": ["s3://b/f", 0, 8]}, "kerchunk:"),
        ({"0.0": {"path": "s3://b/f", "offset": 0, "length": 1}}, "zarr_chunk_manifest:"),
        ({"driver": "kvstack", "layers": []}, "kvstack:"),
    ],
)
def test_a_document_in_another_format_says_what_it_looks_like(tree: Path, document: object, says: str) -> None:
    import json

    (tree / "other.json").write_text(json.dumps(document))
    run = subprocess.run(
        [sys.executable, "-m", "kvmap", "validate", "other.json"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert "not a kvmap manifest" in run.stderr
    assert says in run.stderr
    assert "kvmap convert" in run.stderr


def test_a_policy_error_names_every_prefix_the_manifest_needs(tmp_path: Path) -> None:
    (tmp_path / "views").mkdir()
    for d in ("d1/a", "d1/b", "d2"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "x").write_bytes(b"x")
    m = tmp_path / "views" / "m.json"
    m.write_text(
        '{"kvmap": 1, "entries": [{"prefix": "a/", "path": "../d1/a/"}, {"prefix": "b/", "path": "../d1/b/"},'
        ' {"key": "c", "path": "../d2/x"}, {"key": "s", "path": "s3://elsewhere/x"}]}'
    )
    with pytest.raises(kvmap.PolicyError) as info:
        kvmap.Reader(m).get_sync("a/x")
    d = tmp_path.as_uri()
    assert f"--allow {d}/d1/a/ --allow {d}/d1/b/ --allow {d}/d2/ --allow s3://elsewhere/" in str(info.value)
    allowed = kvmap.Reader(m, allow=[f"{d}/d1/a/", f"{d}/d1/b/", f"{d}/d2/"])
    assert [allowed.get_sync(k) for k in ("a/x", "b/x", "c")] == [b"x"] * 3


def test_convert_kvmap_to_chunk_manifest_and_back(tmp_path: Path) -> None:
    data = tmp_path / "f.bin"
    data.write_bytes(bytes(range(64)))
    src = tmp_path / "m.json"
    kvmap.Manifest.from_json(
        [
            {"key": "0", "path": "f.bin", "offset": 8, "length": 4},
            {"key": "1", "path": "f.bin"},  # a whole object: convert measures it
            {"key": "2", "path": "f.bin", "offset": 60},
            {"key": "gone", "path": None},
        ],
        url=src,
    ).save(src)
    run = subprocess.run(
        [sys.executable, "-m", "kvmap", "convert", str(src), str(tmp_path / "cm.json"), "--to", "chunk-manifest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    import json

    written = json.loads((tmp_path / "cm.json").read_text())
    assert written == {
        "0": {"path": data.as_uri(), "offset": 8, "length": 4},
        "1": {"path": data.as_uri(), "offset": 0, "length": 64},
        "2": {"path": data.as_uri(), "offset": 60, "length": 4},
    }
    back = tmp_path / "back.json"
    done = kvmap.convert(tmp_path / "cm.json", back)
    assert (done.source_format, done.target_format, done.entries) == ("chunk-manifest", "kvmap", 3)
    reader = kvmap.Reader(back)
    assert [reader.get_sync(k) for k in ("0", "1", "2", "gone")] == [
        bytes(range(8, 12)),
        bytes(range(64)),
        bytes(range(60, 64)),
        None,
    ]


def test_convert_refuses_what_the_output_cannot_hold_naming_the_entry(tmp_path: Path) -> None:
    src = tmp_path / "m.json"
    src.write_text('{"kvmap": 1, "entries": [{"key": "k", "data": "aGk="}, {"prefix": "p/", "path": "d/"}]}')
    run = subprocess.run(
        [sys.executable, "-m", "kvmap", "convert", str(src), str(tmp_path / "o.json"), "--to", "chunk-manifest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert "entry 1" in run.stderr
    assert "--materialize" in run.stderr
    assert not (tmp_path / "o.json").exists()  # nothing half-written
    assert os.listdir(tmp_path) == ["m.json"]
