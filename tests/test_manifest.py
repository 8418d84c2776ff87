"""Manifest documents: loading, errors that say where, and atomic saves."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap.manifest import _validate_one_by_one
from tests.strategies import entries


def test_load_gives_the_file_url_and_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "views").mkdir()
    path = tmp_path / "views" / "m.json"
    path.write_text('[{"prefix": "t/", "path": "../t.zarr/"}, {"key": "x", "path": "x.bin", "offset": 1}]')
    m = kvmap.Manifest.load(path)
    assert m.url == (tmp_path / "views" / "m.json").as_uri()
    assert m.name == str(path)
    cm = kvmap.compile(m)
    assert cm.resolve("t/c/0").url == (tmp_path / "t.zarr").as_uri() + "/c/0"
    assert cm.resolve("x") == kvmap.Resolution(1, (tmp_path / "views" / "x.bin").as_uri(), 1, None, None)


def test_errors_name_manifest_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"kvmap": 1, "entries": [{"key": "a", "path": "s3://b/a"}, {"prefix": "p", "offset": 3}]}')
    with pytest.raises(kvmap.ManifestError) as info:
        kvmap.Manifest.load(path)
    err = info.value
    assert (err.manifest, err.entry, err.field) == (str(path), 1, None)  # no target: no single field
    assert str(err).startswith(f"{path}: entry 1: ")
    assert isinstance(err, kvmap.KvmapError)
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.entry, again.field) == (str(err), 1, None)


@pytest.mark.parametrize(
    ("text", "entry", "field"),
    [
        (b"{", None, None),  # not JSON
        (b'[{"key": "\\ud800", "path": null}]', None, None),  # lone surrogate: not valid JSON text
        (b'[{"key": "a", "path": "s3://b", "offset": 18446744073709551616}]', 0, "offset"),
        (b'[{"key": "a", "path": "s3://b", "offset": 9007199254740992}]', 0, "offset"),
        (b'[{"key": "a", "path": "s3://b", "length": 1e3}]', 0, "length"),
        (b'{"kvmap": 1, "entries": {}}', None, "entries"),
        (b'{"kvmap": 2, "entries": []}', None, "kvmap"),
    ],
)
def test_bad_documents(text: bytes, entry: int | None, field: str | None) -> None:
    with pytest.raises(kvmap.ManifestError) as info:
        kvmap.Manifest.loads(text, name="doc.json")
    assert (info.value.manifest, info.value.entry, info.value.field) == ("doc.json", entry, field)


def test_python_objects_are_checked_like_json() -> None:
    for bad, field in [
        ({"key": "a\ud800", "path": None}, "key"),
        ({"key": "a", "path": "s3://b\udfff"}, "path"),
        ({"key": "a", "json": {1, 2}}, "json"),
        ({"key": "a", "path": "s3://b", "offset": True}, "offset"),
    ]:
        with pytest.raises(kvmap.ManifestError) as info:
            kvmap.Manifest.from_json([{"key": "ok", "path": "s3://b"}, bad])
        assert (info.value.entry, info.value.field) == (1, field)


def test_validated_manifest_does_not_see_later_changes_by_the_caller() -> None:
    entries = [{"key": "a", "path": "s3://b/a"}]
    m = kvmap.Manifest.from_json(entries)
    entries[0]["offset"] = -1
    assert m.to_json()["entries"] == [{"key": "a", "path": "s3://b/a"}]


def test_save_round_trips_and_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.json"
    m = kvmap.Manifest.from_json([{"prefix": "", "path": "s3://b/"}, {"key": "é", "data": "aGk="}])
    m.save(path)
    assert kvmap.Manifest.load(path).to_json() == m.to_json()
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    bigger = kvmap.Manifest.from_json([{"key": str(i), "path": None} for i in range(1000)])
    with pytest.raises(OSError, match="disk full"):
        bigger.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temporary file left


def test_entries_view() -> None:
    m = kvmap.Manifest.from_json([{"key": "a", "path": None}, {"prefix": "b", "path": "s3://x/"}])
    assert len(m.entries) == 2
    assert m.entries[-1].selector == "prefix"
    assert [e.selector for e in m.entries[::-1]] == ["prefix", "key"]
    with pytest.raises(IndexError):
        m.entries[2]


# -- the columnar fast path must agree with the entry-by-entry definition --------------

_mutation = st.sampled_from(
    [
        ("offset", -1), ("offset", True), ("length", 1.5), ("length", 2**53), ("path", 3), ("path", "rel/x"),
        ("key", None), ("key", 7), ("strip_prefix", 0), ("extra", 1), ("data", "aGk="), ("offset", None),
    ]
)  # fmt: skip


@given(
    st.lists(entries(), max_size=8),
    st.lists(st.fixed_dictionaries({"key": st.text(max_size=3), "path": st.just("s3://b/k")}), max_size=8),
    st.lists(st.tuples(st.integers(0, 15), _mutation), max_size=2),
    st.booleans(),
)
def test_fast_validation_agrees_with_the_definition(
    mixed: list[dict[str, Any]], plain: list[dict[str, Any]], mutations: list[tuple[int, Any]], with_url: bool
) -> None:
    raw = [dict(e) for e in plain + mixed]
    for position, (name, value) in mutations:
        if raw:
            raw[position % len(raw)][name] = value
    url = "s3://bucket/m.json" if with_url else None
    try:
        _validate_one_by_one(raw, None, url)
        expected: tuple[Any, ...] | None = None
    except kvmap.ManifestError as exc:
        expected = (exc.entry, exc.field, exc.reason)
    for build in (
        lambda: kvmap.Manifest.from_json(raw, url=url),
        lambda: kvmap.Manifest.loads(json.dumps(raw), url=url),
    ):
        try:
            build()
            actual: tuple[Any, ...] | None = None
        except kvmap.ManifestError as exc:
            actual = (exc.entry, exc.field, exc.reason)
        assert actual == expected


@given(st.lists(st.fixed_dictionaries(
    {"key": st.text(max_size=3), "path": st.sampled_from([None, "s3://b/k", "rel/x"])},
    optional={"offset": st.integers(0, 2**53 - 1), "length": st.integers(0, 2**53 - 1)},
), max_size=12))  # fmt: skip
def test_typed_and_general_parsing_build_the_same_manifest(raw: list[dict[str, Any]]) -> None:
    raw = [e for e in raw if e["path"] is not None or not ({"offset", "length"} & e.keys())]
    text = json.dumps({"kvmap": 1, "entries": raw})
    typed = kvmap.Manifest.loads(text, url="s3://b/m.json")
    general = kvmap.Manifest.from_json(json.loads(text), url="s3://b/m.json")
    assert typed == general
    assert typed.to_json() == general.to_json() == {"kvmap": 1, "entries": raw}
    assert json.loads(typed.dumps()) == json.loads(general.dumps())  # member order may differ
    assert list(typed.entries) == list(general.entries)
    keys = [e["key"] for e in raw] + ["zz"]
    assert kvmap.compile(typed).resolve_many(keys) == kvmap.compile(general).resolve_many(keys)


def test_manifests_pickle_and_compiled_maps_say_why_they_do_not() -> None:
    bulk = kvmap.Manifest.loads(b'[{"key": "a", "path": "s3://b/a", "offset": 1}]', url="s3://b/m.json")
    general = kvmap.Manifest.from_json([{"prefix": "p/", "path": "x/"}, {"key": "z", "json": [1]}], url="s3://b/m")
    for m in (bulk, general):
        again = pickle.loads(pickle.dumps(m))
        assert again == m
        assert again.url == m.url
        keys = ["a", "p/q", "z", "zz"]
        assert kvmap.compile(again).resolve_many(keys) == kvmap.compile(m).resolve_many(keys)
    with pytest.raises(TypeError, match="pickle its Manifest"):
        pickle.dumps(kvmap.compile(bulk))


# -- the inline fast path of Entry.from_json ---------------------------------------------------------


class _Plain(dict):  # type: ignore[type-arg]
    """A dict that Entry.from_json's fast path does not take (it takes exact dicts only)."""


_B64ISH = st.one_of(
    st.binary(max_size=12).map(lambda b: __import__("base64").b64encode(b).decode()),
    st.text(alphabet="AB=+/-_ \n\u00e9", max_size=8),
)


@given(
    st.one_of(st.text(max_size=6), st.integers(), st.none()),
    st.one_of(_B64ISH, st.integers(), st.none()),
)
def test_an_inline_entry_is_what_the_general_validation_makes_of_it(key: Any, data: Any) -> None:
    from kvmap.entries import Entry

    def outcome(obj: dict[str, Any]) -> Any:
        try:
            return Entry.from_json(obj, 3, "m")
        except kvmap.ManifestError as exc:
            return (exc.entry, exc.field, str(exc))

    obj = {"key": key, "data": data}
    assert outcome(obj) == outcome(_Plain(obj))
