"""Saving a manifest where it was not made (issue 15 §1): relative targets are rebased so the
document names the same objects from its new place — `kvmap.url.rebase`, `Manifest.rebased`,
`Manifest.save` and `kvmap convert` (whole and streamed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.url import rebase, resolve_target
from tests.strategies import manifests, probe_keys

_SEGMENTS = st.sampled_from(["a", "b", "..", ".", "x:y", "%41", "c.bin", ""])
_RELATIVE = st.builds(
    lambda parts, slash, pipe: "/".join(parts) + slash + pipe,
    st.lists(_SEGMENTS, min_size=1, max_size=4),
    st.sampled_from(["", "/"]),
    st.sampled_from(["", "|kvmap:k", "|zip:d/"]),
)
_ABSOLUTE = st.sampled_from(["s3://b/x", "/abs/p", "//host/p", "file:///d/a", "C:/w/x"])
PATHS = st.one_of(_RELATIVE, _RELATIVE, _ABSOLUTE).filter(bool)
BASES = st.sampled_from(
    [
        "file:///d/m.json",
        "file:///d/n.json",
        "file:///d/sub/m.json",
        "file:///m.json",
        "file:///d/e/f/m.json",
        "s3://b/m.json",
        "s3://b/k/m.json",
        "s3://c/m.json",
        "https://h/a/m.json",
        "file:///a.zip|zip:d/m.json",
    ]
)


@settings(max_examples=500)
@given(path=PATHS, old=BASES, new=st.one_of(st.none(), BASES))
def test_a_rebased_path_names_what_the_path_named(path: str, old: str, new: str | None) -> None:
    try:
        target = resolve_target(old, path)
    except ValueError:
        assume(False)
        raise
    try:
        moved = rebase(path, old, new)
    except ValueError:
        assert len(target.partition(":")[0]) == 1  # a one-letter scheme: a drive, read locally
        return
    assert resolve_target(new, moved) == target
    if old.rpartition("/")[0] == (new or "").rpartition("/")[0] and "|" not in old:
        assert moved == path  # one directory: nothing to rewrite


def _drive_target(old: str, path: Any, new: str) -> bool:
    if not isinstance(path, str):
        return False
    try:
        rebase(path, old, new)
    except ValueError:
        return True
    return False


def _relative(entries: list[dict[str, Any]], draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        if isinstance(e.get("path"), str):
            e = {**e, "path": draw(PATHS)}
        out.append(e)
    return out


@settings(max_examples=200)
@given(data=st.data(), old=BASES, new=BASES)
def test_a_rebased_manifest_resolves_every_key_as_before(data: st.DataObject, old: str, new: str) -> None:
    entries = _relative(data.draw(manifests), data.draw)
    try:
        m = kvmap.Manifest.from_json(entries, url=old)
    except kvmap.ManifestError:
        assume(False)
        raise
    drives = [i for i, e in enumerate(entries) if _drive_target(old, e.get("path"), new)]
    if drives:  # a one-letter scheme that a local document would read as a drive
        with pytest.raises(kvmap.ManifestError) as refused:
            m.rebased(new)
        assert (refused.value.entry, refused.value.field) == (drives[0], "path")
        return
    moved = m.rebased(new)
    assert moved.url == new
    assert [(e.selector, e.range, e.offset, e.length, e.data) for e in moved.entries] == [
        (e.selector, e.range, e.offset, e.length, e.data) for e in m.entries
    ]
    before, after = kvmap.compile(m), kvmap.compile(moved)
    for key in probe_keys(entries):
        try:
            expected = before.resolve(key)
        except kvmap.InvalidKeyError:
            continue
        assert after.resolve(key) == expected, key


def test_save_elsewhere_rebases_and_save_beside_keeps_the_text(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.bin").write_bytes(b"0123456789")
    src = tmp_path / "d" / "m.json"
    src.write_text(
        json.dumps(
            {
                "kvmap": 1,
                "entries": [
                    {"key": "a", "path": "data.bin", "offset": 2, "length": 3},
                    {"prefix": "p/", "path": "./"},
                    {"key": "w", "path": None},
                ],
            }
        )
    )
    m = kvmap.Manifest.load(src)
    m.save(tmp_path / "d" / "copy.json")  # the same directory: the same text
    assert kvmap.Manifest.load(tmp_path / "d" / "copy.json").to_json() == m.to_json()
    (tmp_path / "out").mkdir()
    m.save(tmp_path / "out" / "m.json")
    saved = kvmap.Manifest.load(tmp_path / "out" / "m.json")
    assert saved.entries[0].path == (tmp_path / "d" / "data.bin").as_uri()
    allow = [(tmp_path / "d").as_uri() + "/"]
    assert kvmap.Reader(tmp_path / "out" / "m.json", allow=allow).get_sync("a") == b"234"
    assert kvmap.Reader(tmp_path / "out" / "m.json", allow=allow).get_sync("p/data.bin") == b"0123456789"
    m.save(tmp_path / "m.json")  # a parent directory: the targets stay relative, one level down
    assert kvmap.Manifest.load(tmp_path / "m.json").entries[0].path == "d/data.bin"
    assert kvmap.Reader(tmp_path / "m.json").get_sync("a") == b"234"


@pytest.mark.parametrize("memory_bytes", [1 << 16, 1 << 40])  # streamed, read whole
def test_convert_elsewhere_writes_a_file_that_reads_the_originals(tmp_path: Path, memory_bytes: int) -> None:
    pytest.importorskip("pyarrow")
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    (src_dir / "data.bin").write_bytes(bytes(range(256)) * 40)
    entries = [{"key": f"c/{i}", "path": "data.bin", "offset": i, "length": 4} for i in range(2000)]
    entries += [{"prefix": "raw/", "path": "./"}]
    (src_dir / "m.json").write_text(json.dumps({"kvmap": 1, "entries": entries}))
    done = kvmap.convert(src_dir / "m.json", out_dir / "m.kvmap.parquet", memory_bytes=memory_bytes)
    assert done.allow == [src_dir.as_uri() + "/"]
    reader = kvmap.Reader(out_dir / "m.kvmap.parquet", allow=done.allow)
    assert reader.get_sync("c/7") == bytes(range(7, 11))
    assert reader.get_sync("raw/data.bin") == (src_dir / "data.bin").read_bytes()
    expected = kvmap.Manifest.load(src_dir / "m.json").rebased((out_dir / "m.kvmap.parquet").as_uri())
    from kvmap.formats.kvmap_parquet import to_kvmap_parquet

    assert (out_dir / "m.kvmap.parquet").read_bytes() == to_kvmap_parquet(expected)
