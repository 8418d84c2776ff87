"""kerchunk JSON references in and out (kvmap.formats.kerchunk), checked against fsspec's own
ReferenceFileSystem: value forms, templates and gen expanded key by key as fsspec expands them,
the bytes fsspec serves, real netCDF4 files referenced by kerchunk and read through KVMapStore,
and round trips kvmap -> kerchunk -> fsspec / kvmap."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import fsspec
import numpy as np
import orjson
import pytest
from fsspec.implementations.reference import ReferenceFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.errors import ConvertError, ManifestError, MissingDependencyError
from kvmap.fetch import drive
from kvmap.formats import kerchunk as kc
from kvmap.formats.kerchunk import dumps_kerchunk, from_kerchunk, load, looks_like_kerchunk, to_kerchunk
from kvmap.manifest import Manifest

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fsspec_refs(doc: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """What fsspec's ReferenceFileSystem expands ``doc`` to (jinja2 templates and gen on).
    An in-memory file system stands in for s3fs, which is not installed; fsspec then does
    not look for protocols in the references."""
    memory = fsspec.filesystem("memory")
    fs = ReferenceFileSystem(fo=doc, simple_templates=False, fs={"s3": memory}, skip_instance_cache=True, **kwargs)
    return dict(fs.references)


def fsspec_fs(doc: dict[str, Any], **kwargs: Any) -> ReferenceFileSystem:
    """fsspec's file system on ``doc``, with the local file system for both ``file://`` URLs and
    bare paths (left alone, fsspec opens the protocol of the first URL only)."""
    kwargs.setdefault("fs", {"file": {}})
    return ReferenceFileSystem(fo=doc, simple_templates=False, skip_instance_cache=True, **kwargs)


def resolved(m: Manifest) -> dict[str, Any]:
    """Every key of ``m`` -> its resolution (url, offset, length, data), the winner's."""
    cm = kvmap.compile(m)
    out = {}
    for e in m.entries:
        r = cm.resolve(e.key)
        out[e.key] = None if r is None else (r.url, r.offset, r.length, r.data)
    return out


def as_fsspec(reference: Any) -> Any:
    """A resolution as fsspec's form: [url] or [url, offset, length] with the decoded path."""
    url, offset, length, data = reference
    if data is not None:
        return data
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    url = f"{scheme}://{authority}{slash}{unquote(path)}"
    return [url] if offset is None else [url, offset, length]


# -- value forms --------------------------------------------------------------------------------


def test_version_0_and_1_value_forms_resolve_as_fsspec_reads_them(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)))
    refs = {
        ".zgroup": '{"zarr_format":2}',
        "x/.zattrs": {"units": "m/s", "long_name": "é", "n": [1, 2.5, None, True]},
        "plain": "hello",
        "b64": "base64:" + base64.b64encode(b"\x00\xffbin").decode(),
        "whole": [str(blob)],
        "window": [blob.as_uri(), 10, 5],
        "empty": [str(blob), 7, 0],
        "null": [None, 3, 2],
        "number": 5,
        "x/0": [str(blob), 100, 28],
    }
    doc_url = (tmp_path / "refs.json").as_uri()
    for doc in (refs, {"version": 1, "refs": refs}):
        m = from_kerchunk(doc, doc_url, target=str(blob))
        fs = fsspec_fs(doc, target=str(blob))
        reader = kvmap.Reader(m)
        for key in refs:
            if key == "number":
                continue  # fsspec keeps a JSON number and fails to read it; kvmap serves its JSON text
            assert bytes(reader.get_sync(key)) == fs.cat_file(key), key
        assert bytes(reader.get_sync("number")) == b"5"
        r = kvmap.compile(m).resolve("window")
        assert (r.url, r.offset, r.length) == (blob.as_uri(), 10, 5)
        assert kvmap.compile(m).resolve("null").url == blob.as_uri()
    # One entry per reference: inline values first, then the [url, offset, length] references,
    # each group in document order (the bulk is built as columns).
    keys = [e.key for e in m.entries]
    assert sorted(keys) == sorted(refs)
    assert len(keys) == len(refs)
    windows = [k for k in refs if isinstance(refs[k], list) and len(refs[k]) == 3]
    assert [k for k in keys if k in windows] == windows


def test_metadata_bytes_are_the_bytes_fsspec_serves() -> None:
    meta = {"_ARRAY_DIMENSIONS": ["t", "x"], "url": "https://a/b", "big": 2**64 + 1, "f": 1e-7, "s": "\u00e9\u2603"}
    doc = {
        "version": 1,
        "refs": {"a/.zattrs": meta, ".zgroup": {"zarr_format": 2}, "zarr.json": {"node_type": "group"}},
    }
    fs = fsspec_fs(doc)
    cm = kvmap.compile(from_kerchunk(doc))
    for key in doc["refs"]:
        assert cm.resolve(key).data == fs.cat_file(key), key
    assert b"\\/" in cm.resolve("a/.zattrs").data  # ujson escapes "/", as fsspec's bytes do


def test_text_parses_with_exact_integers() -> None:
    text = b'{"version": 1, "refs": {"a/.zattrs": {"n": 18446744073709551617}, "c": ["s3://b/x", 1, 2]}}'
    m = drive(load("s3://b/refs.json"), {"": text}.get)
    assert kvmap.compile(m).resolve("a/.zattrs").data == b'{"n":18446744073709551617}'
    assert drive(load("s3://b/refs.json"), {"": memoryview(text)}.get) == m
    assert drive(load("s3://b/refs.json"), {}.get) is None
    with pytest.raises(ManifestError, match="not valid JSON") as info:
        drive(load("s3://b/refs.json"), {"": b"{"}.get)
    assert info.value.manifest == "s3://b/refs.json"


def test_null_url_takes_the_target_and_is_refused_without_one() -> None:
    doc = {"version": 1, "refs": {".zgroup": "{}", "a/0": [None, 4, 8], "a/1": [None]}}
    m = from_kerchunk(doc, target="s3a://bucket/file.nc")
    assert sorted((e.key, e.path, e.offset, e.length) for e in m.entries[1:]) == [
        ("a/0", "s3://bucket/file.nc", 4, 8),
        ("a/1", "s3://bucket/file.nc", None, None),
    ]
    with pytest.raises(ManifestError) as info:
        from_kerchunk(doc, name="refs.json")
    assert (info.value.manifest, info.value.entry, info.value.field) == ("refs.json", 1, "url")
    assert "'a/0'" in info.value.reason
    assert "target" in info.value.reason


def test_zarr_v3_metadata_keys_are_just_keys() -> None:
    doc = {"zarr.json": {"zarr_format": 3, "node_type": "group"}, "x/zarr.json": "{}", "x/c/0": ["s3://b/x", 0, 4]}
    assert looks_like_kerchunk(doc)
    assert [e.key for e in from_kerchunk(doc).entries] == ["zarr.json", "x/zarr.json", "x/c/0"]


# -- templates and gen ----------------------------------------------------------------------------


SPEC_EXAMPLE = {
    "version": 1,
    "templates": {"u": "server.domain/path", "f": "{{c}}"},
    "gen": [
        {
            "key": "gen_key{{i}}",
            "url": "http://{{u}}_{{i}}",
            "offset": "{{(i + 1) * 1000}}",
            "length": "1000",
            "dimensions": {"i": {"stop": 5}},
        }
    ],
    "refs": {
        "key0": "data",
        "key1": ["http://target_url", 10000, 100],
        "key2": ["http://{{u}}", 10000, 100],
        "key3": ["http://{{f(c='text')}}", 10000, 100],
    },
}


def test_the_spec_example_expands_as_the_spec_and_fsspec_say() -> None:
    got = {k: as_fsspec(v) for k, v in resolved(from_kerchunk(SPEC_EXAMPLE)).items()}
    assert got == {
        "key0": b"data",
        "key1": ["http://target_url", 10000, 100],
        "key2": ["http://server.domain/path", 10000, 100],
        "key3": ["http://text", 10000, 100],
        **{f"gen_key{i}": [f"http://server.domain/path_{i}", (i + 1) * 1000, 1000] for i in range(5)},
    }
    want = fsspec_refs(SPEC_EXAMPLE)
    assert got == {k: v.encode() if isinstance(v, str) else v for k, v in want.items()}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # fsspec renders a URL only when the document has templates: otherwise "{{" stays.
        ({"version": 1, "refs": {"k": ["s3://b/{{x}}"]}}, ["s3://b/{{x}}"]),
        # jinja2: an undefined name is empty, one trailing newline goes, spaces inside are fine.
        ({"version": 1, "templates": {"a": "x"}, "refs": {"k": ["s3://b/{{ b }}{{a}}\n"]}}, ["s3://b/x"]),
        ({"version": 1, "templates": {"a": "x"}, "refs": {"k": ["s3://b/{{ a }}/{y}"]}}, ["s3://b/x/{y}"]),
        ({"version": 1, "templates": {"a": "x"}, "refs": {"k": ["s3://b/{{ a|upper }}"]}}, ["s3://b/X"]),
        ({"version": 1, "templates": {"a": "x", "none": "n"}, "refs": {"k": ["s3://b/{{none}}"]}}, ["s3://b/None"]),
        ({"version": 1, "templates": {"a": "x"}, "refs": {"k": ["s3://b/{{{a}}}"]}}, None),  # a syntax error
    ],
)
def test_reference_urls_render_as_fsspec_renders_them(doc: dict[str, Any], expected: list[Any] | None) -> None:
    if expected is None:
        with pytest.raises(Exception, match="expected token"):
            fsspec_refs(doc)
        with pytest.raises(ManifestError, match="not a jinja2 template") as info:
            from_kerchunk(doc)
        assert (info.value.entry, info.value.field) == (0, "url")
        return
    assert fsspec_refs(doc)["k"] == expected
    assert as_fsspec(resolved(from_kerchunk(doc))["k"]) == expected


def test_gen_keys_override_references_as_fsspec_update_does() -> None:
    doc = {
        "version": 1,
        "gen": [{"key": "c/{{i}}", "url": "s3://b/g{{i}}", "dimensions": {"i": [0, 1]}}],
        "refs": {"c/1": ["s3://b/ref"], "c/2": ["s3://b/ref"]},
    }
    got = {k: as_fsspec(v) for k, v in resolved(from_kerchunk(doc)).items()}
    assert got == fsspec_refs(doc) == {"c/0": ["s3://b/g0"], "c/1": ["s3://b/g1"], "c/2": ["s3://b/ref"]}


SAFE_TEXT = st.text(alphabet="ab-._", max_size=3)
# Literal template text, with the characters that start jinja2 tags now and then.
LITERAL = SAFE_TEXT | st.text(alphabet="a{}%#", max_size=3)


@st.composite
def gen_documents(draw: st.DrawFn) -> dict[str, Any]:
    """kerchunk v1 documents with gen items over random dimensions, templates and expressions."""
    items = []
    for _ in range(draw(st.integers(1, 2))):
        names = ["i", "j", "k"][: draw(st.integers(0, 3))]
        dimensions: dict[str, Any] = {}
        numeric = []
        for n in names:
            if draw(st.booleans()):
                start, step = draw(st.integers(-3, 3)), draw(st.integers(-3, 3).filter(bool))
                spec: dict[str, int] = {"stop": start + step * draw(st.integers(-1, 3)) + draw(st.integers(-1, 1))}
                if start or draw(st.booleans()):
                    spec["start"] = start
                if step != 1 or draw(st.booleans()):
                    spec["step"] = step
                dimensions[n] = spec
                numeric.append(n)
            else:
                values = draw(st.lists(st.integers(-5, 99) | SAFE_TEXT | st.just(1.5) | st.none(), max_size=3))
                dimensions[n] = values
                if all(type(v) is int for v in values):
                    numeric.append(n)
        variables = [*names, "u"]
        pieces = st.one_of(
            LITERAL,
            st.sampled_from(variables).map(lambda n: "{{" + n + "}}"),
            st.sampled_from(variables).map(lambda n: "{{ " + n + " }}"),
            st.sampled_from(variables).map(lambda n: "{{ " + n + "|string }}"),
            st.sampled_from(names or ["u"]).map(lambda n: "{{ f(a=" + n + ") }}"),
        )
        if numeric:
            pieces = pieces | st.sampled_from(numeric).map(lambda n: "{{ '%03d' % (" + n + " * 2) }}")
        item: dict[str, Any] = {
            "key": "".join(draw(st.lists(pieces, min_size=1, max_size=4))),
            "url": "s3://bucket/" + "".join(draw(st.lists(pieces, min_size=1, max_size=3))),
            "dimensions": dimensions,
        }
        if draw(st.booleans()):
            item["offset"] = "{{ " + numeric[0] + " + 10 }}" if numeric else str(draw(st.integers(0, 9)))
            item["length"] = draw(st.sampled_from(["7", " 8 ", "1_0", "{{ 3 * 3 }}"]))
        items.append(item)
    templates = {"u": draw(SAFE_TEXT), "f": "{{a}}-f"}
    refs = {"c/0": ["s3://bucket/{{u}}.nc", 0, 4]}
    return {"version": 1, "templates": templates, "gen": items, "refs": refs}


@PROPERTY
@given(gen_documents())
def test_gen_expands_key_by_key_as_fsspec_does(doc: dict[str, Any]) -> None:
    try:
        want = fsspec_refs(doc)
    except Exception:
        with pytest.raises(ManifestError):
            from_kerchunk(doc)
        return
    if any(isinstance(v, list) and len(v) == 3 and v[1] < 0 for v in want.values()):
        with pytest.raises(ManifestError, match="between 0"):
            from_kerchunk(doc)
        return
    got = {k: as_fsspec(v) for k, v in resolved(from_kerchunk(doc)).items()}
    assert got == want


def test_plain_templates_and_gen_need_no_jinja2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)
    monkeypatch.setitem(sys.modules, "jinja2.sandbox", None)
    monkeypatch.setattr(kc, "_ENVIRONMENT", None)
    doc = {
        "version": 1,
        "templates": {"u": "s3://b/data"},
        "gen": [{"key": "t/{{ i }}.{{j}}", "url": "{{u}}/{{i}}", "dimensions": {"i": [0, 1], "j": {"stop": 2}}}],
        "refs": {"a": ["{{u}}.nc", 0, 1]},
    }
    m = from_kerchunk(doc)
    assert [e.key for e in m.entries] == ["a", "t/0.0", "t/0.1", "t/1.0", "t/1.1"]
    assert m.entries[0].path == "s3://b/data.nc"
    jinja_doc = {"version": 1, "templates": {"u": "x"}, "refs": {"a": ["s3://b/{{ u|upper }}"]}}
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'kvmap[kerchunk]'")):
        from_kerchunk(jinja_doc)


def test_gen_is_bounded_before_any_key_is_made() -> None:
    huge = {"key": "{{i}}.{{j}}", "url": "s3://b/{{i}}", "dimensions": {"i": {"stop": 10**9}, "j": {"stop": 10**9}}}
    doc = {"version": 1, "gen": [{"key": "a{{i}}", "url": "s3://b/a", "dimensions": {"i": [1, 2]}}, huge]}
    with pytest.raises(ManifestError, match="max_keys") as info:
        from_kerchunk(doc, name="refs.json")
    assert (info.value.manifest, info.value.entry, info.value.field) == ("refs.json", None, "gen[1]")
    small = {"version": 1, "gen": [{"key": "{{i}}", "url": "s3://b/x", "dimensions": {"i": {"stop": 5}}}]}
    assert len(from_kerchunk(small, max_keys=5)) == 5
    with pytest.raises(ManifestError, match="max_keys"):
        from_kerchunk(small, max_keys=4)
    # An empty dimension makes no keys: the others are never listed (no tuple of 10**18 items).
    empty = {"key": "{{i}}", "url": "s3://b/x", "dimensions": {"i": {"stop": 10**18}, "j": []}}
    assert len(from_kerchunk({"version": 1, "gen": [empty]})) == 0


def test_templates_cannot_ask_for_unbounded_memory() -> None:
    for expression in ("'a' * 10**9", "2 ** (10**8)", "[1] * 10**8"):
        doc = {"version": 1, "gen": [{"key": "{{ " + expression + " }}", "url": "s3://b/x", "dimensions": {"i": [1]}}]}
        with pytest.raises(ManifestError, match="would make") as info:
            from_kerchunk(doc)
        assert info.value.field == "gen[0].key"


def test_a_template_function_rendered_as_text_is_refused() -> None:
    doc = {"version": 1, "templates": {"f": "{{c}}"}, "refs": {"k": ["s3://b/{{f}}"]}}
    assert "<function" in fsspec_refs(doc)["k"][0]  # fsspec writes the lambda's repr (an address)
    with pytest.raises(ManifestError, match="is a function") as info:
        from_kerchunk(doc)
    assert (info.value.entry, info.value.field) == (0, "url")


# -- errors say where ---------------------------------------------------------------------------


def _gen(**item: Any) -> dict[str, Any]:
    """A version 1 document of one gen item: ``url`` "s3://b/x" and one dimension unless given."""
    return {"version": 1, "gen": [{"url": "s3://b/x", "dimensions": {"i": [1]}, **item}]}


@pytest.mark.parametrize(
    ("doc", "entry", "field", "text"),
    [
        ([["s3://b/x"]], None, None, "JSON object"),
        ({"version": 2, "refs": {}}, None, "version", "version 2"),
        ({"version": 1, "refs": []}, None, "refs", "'refs'"),
        ({"version": 1, "templates": {"u": 1}}, None, "templates.u", "template 'u'"),
        ({"version": 1, "gen": {}}, None, "gen", "'gen'"),
        ({".zgroup": "{}", "a/0": ["s3://b/x", 1]}, 1, None, "'a/0': an array of 2"),
        ({".zgroup": "{}", "a/0": [7, 1, 2]}, 1, "url", "'a/0'"),
        ({".zgroup": "{}", "a/0": [["s3://x"], 1, 2]}, 1, "url", "'a/0'"),
        ({"a/0": ["s3://b/x", "1", 2]}, 0, "offset", "'a/0'"),
        ({"a/0": ["s3://b/x", 1, -2]}, 0, "length", "'a/0'"),
        ({"a/0": ["s3://b/x", 1.0, 2]}, 0, "offset", "'a/0'"),
        ({"a/0": "base64:abc"}, 0, "data", "base64"),
        ({"a/0": {"s": {1, 2}}}, 0, "data", "not a JSON value"),
        ({"a/0": ["memory://x/y"]}, 0, "url", "process-global"),
        ({"a/0": ["ftp://h/x"]}, 0, "url", "ftp://"),
        ({"a/0": ["x.nc"]}, 0, "url", "relative reference"),
        ({"a/0": ["s3://b/x"], "\ud800": ["s3://b/x"]}, 1, "key", "lone surrogate"),
        ({"version": 1, "gen": [{"url": "s3://b/x", "dimensions": {}}]}, None, "gen[0].key", "no 'key'"),
        (_gen(key="k", offset="1"), None, "gen[0].length", "both"),
        (_gen(key="k", dimensions={"i": 3}), None, "gen[0].dimensions.i", "a list"),
        (_gen(key="k", dimensions={"i": {"stop": 2, "step": 0}}), None, "gen[0].dimensions.i", "step"),
        (_gen(key="k", dimensions={"i": {"stop": 1.5}}), None, "gen[0].dimensions.i", "integers"),
        ({**_gen(key="k"), "templates": {"i": "x"}}, None, "gen[0].dimensions.i", "template"),
        (_gen(key="k{{i}}", offset="{{i}}x", length="1"), None, "gen[0].offset", "'1x'"),
        (_gen(key="k{{i}}", offset="{{ -i }}", length="1"), None, "gen[0].offset", "'k1'"),
        (_gen(key="k{{i"), None, "gen[0].key", "jinja2"),
        (_gen(key="{{ i.x.y }}"), None, "gen[0].key", "i=1"),
        (_gen(key="k{{i}}", url="memory://x/{{i}}"), None, "gen[0].url", "'k1'"),
    ],
)
def test_errors_name_document_reference_and_field(doc: Any, entry: int | None, field: str | None, text: str) -> None:
    with pytest.raises(ManifestError) as info:
        from_kerchunk(doc, name="refs.json")
    err = info.value
    assert (err.manifest, err.entry, err.field) == ("refs.json", entry, field), err
    assert text in str(err)


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fsspec_url", "kvmap_url"),
    [
        ("s3://b/k.nc", "s3://b/k.nc"),
        ("s3a://b/k", "s3://b/k"),
        ("gcs://b/k", "gs://b/k"),
        ("gs://b/year=2020/k,v", "gs://b/year=2020/k,v"),
        ("abfs://c/k", "az://c/k"),
        ("abfss://c/k", "az://c/k"),
        ("az://c/k", "az://c/k"),
        ("s3://b/a%20b", "s3://b/a%2520b"),  # fsspec's object path is literal; kvmap's is decoded
        ("s3://b/é|#?", "s3://b/%C3%A9%7C%23%3F"),
        ("https://h/p%20q?x=1", "https://h/p%20q?x=1"),
        ("http://h/a b|c", "http://h/a%20b%7Cc"),
        ("http://h/100%", "http://h/100%25"),
        ("/data/x.nc", "file:///data/x.nc"),
        ("/data/a b%.nc", "file:///data/a%20b%25.nc"),
        ("/data/dir/", "file:///data/dir"),
        ("file:///data/x.nc", "file:///data/x.nc"),
        ("file:/data/x.nc", "file:///data/x.nc"),
        ("local:///data/x", "file:///data/x"),
        ("file://data/x.nc", "data/x.nc"),  # fsspec: relative to the working directory
        ("x.nc", "x.nc"),
        ("y:1.nc", "y%3A1.nc"),
        ("c://x", "c%3A//x"),  # fsspec: a one-letter protocol is a Windows drive, so a local path
    ],
)
def test_fsspec_urls_map_to_kvmap_urls(fsspec_url: str, kvmap_url: str) -> None:
    m = from_kerchunk({"k": [fsspec_url]}, "s3://refs/r.json")
    assert m.entries[0].path == kvmap_url


@pytest.mark.parametrize(
    ("fsspec_url", "text"),
    [
        ("memory://x/y", "process-global"),
        ("adl://a/b", "Data Lake"),
        ("hdfs://h/x", "hdfs://"),
        ("data:,abc", "data:"),
        ("~/x.nc", "home"),
        ("abfs://c@acct.dfs.core.windows.net/k", "az://c/k"),
        ("simplecache::s3://b/k", "chained"),
        ("", "empty"),
        ("s3://b@x/k", "bucket"),
    ],
)
def test_urls_kvmap_cannot_read_are_refused_naming_the_key(fsspec_url: str, text: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(text)) as info:
        from_kerchunk({"a": "x", "x/0": [fsspec_url, 0, 1]}, "s3://refs/r.json")
    assert (info.value.entry, info.value.field) == (1, "url")
    assert "'x/0'" in info.value.reason


def test_kvmap_reads_the_local_file_fsspec_reads(tmp_path: Path) -> None:
    odd = tmp_path / "a b%20c é.bin"
    odd.write_bytes(b"0123456789")
    doc = {"version": 1, "refs": {"bare": [str(odd), 2, 3], "file": ["file://" + str(odd)], "plain": "x"}}
    fs = fsspec_fs(doc)
    m = from_kerchunk(doc, (tmp_path / "refs.json").as_uri())
    reader = kvmap.Reader(m)
    for key in doc["refs"]:
        assert bytes(reader.get_sync(key)) == fs.cat_file(key)


def test_relative_references_resolve_against_the_document_url(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"abcdef")
    doc = {"k": ["d/x.bin", 1, 2], "f": ["file://d/x.bin"]}
    m = from_kerchunk(doc, (tmp_path / "refs.json").as_uri())
    assert m.entries[0].path == "d/x.bin"  # left relative: kvmap's rule resolves it
    reader = kvmap.Reader(m)
    assert bytes(reader.get_sync("k")) == b"bc"
    assert bytes(reader.get_sync("f")) == b"abcdef"


# -- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"version": 1, "refs": {}}, True),
        ({"version": 1, "gen": []}, True),
        ({".zgroup": '{"zarr_format":2}', "a/0": ["s3://b/x", 0, 4]}, True),
        ({".zarray": {"shape": [1]}, "0": ["s3://b/x"]}, True),
        ({"x/.zarray": "{}", "x/0": [None, 0, 4], "x/1": "base64:AA=="}, True),
        ({"zarr.json": {"zarr_format": 3}, "c/0": ["s3://b/x", 0, 4]}, True),
        ({"kvmap": 1, "entries": []}, False),
        ([{"key": "a", "path": "s3://b/a"}], False),
        ({"0.0": {"path": "s3://b/x", "offset": 0, "length": 4}}, False),
        ({".zgroup": "{}", "0.0": {"path": "s3://b/x", "offset": 0, "length": 4}}, False),
        ({"a/0": ["s3://b/x", 0, 4]}, False),  # no zarr metadata: not sure enough
        ({".zgroup": "{}", "a": ["s3://b/x", 0]}, False),
        ({"version": 2, "refs": {}}, False),
        ({"version": True, "refs": {}}, False),
        ("refs", False),
    ],
)
def test_looks_like_kerchunk(doc: Any, expected: bool) -> None:
    assert looks_like_kerchunk(doc) is expected


# -- writing ---------------------------------------------------------------------------------


def test_export_resolves_maps_and_lets_the_last_entry_decide() -> None:
    m = Manifest.from_json(
        [
            {"key": "a", "path": "x.bin", "offset": 1, "length": 2},
            {"key": "b", "path": "s3://b/k%25v"},
            {"key": "c", "path": "../y.bin", "length": 5},
            {"key": "d", "path": "file://localhost/z%20z", "offset": 0},
            {"key": "e", "data": base64.b64encode(b"text\n").decode()},
            {"key": "f", "data": base64.b64encode(b"\x00\x01").decode()},
            {"key": "g", "data": base64.b64encode(b"base64:x").decode()},
            {"key": "h", "json": {"zarr_format": 2, "u": "é"}},
            {"key": "i", "json": {"url": "a/b"}},
            {"key": "a", "path": "s3://b/new"},
            {"key": "e", "path": None},
            {"key": "p/1", "path": "s3://b/p1"},
            {"key": "p/2", "path": "s3://b/p2"},
            {"key": "q", "path": "s3://b/q"},
            {"prefix": "p/", "path": None},
            {"min": "q", "max": "r", "path": None},
            {"key": "p/3", "path": "https://h/a%20b"},
        ],
        url="file:///data/v/m.json",
    )
    refs = to_kerchunk(m)
    assert refs == {
        "version": 1,
        "refs": {
            "a": ["s3://b/new"],
            "b": ["s3://b/k%v"],
            "c": ["file:///data/y.bin", 0, 5],
            "d": ["file:///z z"],
            "f": "base64:AAE=",
            "g": "base64:" + base64.b64encode(b"base64:x").decode(),
            "h": "base64:" + base64.b64encode('{"zarr_format":2,"u":"é"}'.encode()).decode(),
            "i": '{"url":"a/b"}',
            "p/3": ["https://h/a%20b"],
        },
    }
    assert dumps_kerchunk(m) == orjson.dumps(to_kerchunk(m))
    assert json.loads(dumps_kerchunk(m)) == refs


@pytest.mark.parametrize(
    ("entry", "field", "text"),
    [
        ({"prefix": "x/", "path": "s3://b/x/"}, "prefix", "--materialize"),
        ({"min": "a", "max": "b", "path": "s3://b/x/"}, "min", "--materialize"),
        ({"max": "b", "path": "s3://b/x/"}, "max", "range"),
        ({"key": "k", "path": "s3://b/a.zip|zip:m"}, "path", "pipeline"),
        ({"key": "k", "path": "memory://m/x"}, "path", "memory"),
        ({"key": "k", "path": "s3+http://h:9000/b/x"}, "path", "endpoint"),
        ({"key": "k", "path": "ftp://h/x"}, "path", "ftp"),
        ({"key": "k", "path": "s3://b/x?v=1"}, "path", "query"),
        ({"key": "k", "path": "file://host/x"}, "path", "host"),
        ({"key": "k", "path": "s3://b/x", "offset": 5}, "offset", "length"),
    ],
)
def test_export_refuses_what_kerchunk_cannot_express(entry: dict[str, Any], field: str, text: str) -> None:
    m = Manifest.from_json([{"key": "ok", "path": "s3://b/ok"}, entry], name="m.json")
    with pytest.raises(ConvertError, match=re.escape(text)) as info:
        to_kerchunk(m)
    assert (info.value.manifest, info.value.entry, info.value.field) == ("m.json", 1, field)


def test_export_of_an_empty_manifest() -> None:
    assert to_kerchunk(Manifest.from_json([])) == {"version": 1, "refs": {}}


# Not ending in "/": fsspec's local file system drops it, and such a URL names no object anyway.
NAME_TEXT = st.text(alphabet="ab/ %é~", min_size=1, max_size=5).filter(lambda p: p[0] != "/" and p[-1] != "/")
# As a kvmap path: percent-encoded, or with a space as %20 and the rest as it is (a "%" that
# starts no escape, a non-ASCII letter: kvmap decodes neither).
PATH_TEXT = NAME_TEXT.flatmap(
    lambda t: st.sampled_from([quote(t), re.sub(r"%(?=[0-9A-Fa-f]{2})", "%25", t).replace(" ", "%20")])
)


@st.composite
def exact_manifests(draw: st.DrawFn) -> Manifest:
    """Manifests of exact entries: windows, whole objects, inline bytes and JSON, whiteouts,
    relative and absolute paths, repeated keys."""
    keys = st.sampled_from(["a", "b", "x/0", "x/1", ".zattrs", "é"])
    entries: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 10))):
        e: dict[str, Any] = {"key": draw(keys)}
        kind = draw(st.sampled_from(["window", "whole", "data", "json", "absent"]))
        if kind == "data":
            e["data"] = base64.b64encode(draw(st.binary(max_size=6) | st.sampled_from([b"text", b"base64:x"]))).decode()
        elif kind == "json":
            values = st.integers(-(2**63), 2**63) | st.text(max_size=3)
            e["json"] = draw(st.dictionaries(st.text(max_size=3), values, max_size=2))
        elif kind == "absent":
            e["path"] = None
        else:
            base = draw(st.sampled_from(["", "../", "s3://bucket/", "file:///data/", "gs://g/", "https://h/"]))
            e["path"] = base + draw(PATH_TEXT)
            if kind == "window":
                offset, length = draw(st.none() | st.integers(0, 99)), draw(st.none() | st.integers(0, 99))
                if offset not in (None, 0) and length is None:
                    length = 1
                if offset is not None:
                    e["offset"] = offset
                if length is not None:
                    e["length"] = length
        entries.append(e)
    return Manifest.from_json(entries, url=draw(st.sampled_from(["file:///data/v/m.json", "s3://bucket/v/m.json"])))


def _normal(resolution: Any) -> Any:
    """A resolution by what it reads: the decoded object, the window (offset 0 = none)."""
    if resolution is None or resolution[3] is not None:
        return resolution if resolution is None else resolution[3]
    url, offset, length, _ = resolution
    scheme, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    authority = "" if scheme == "file" and authority == "localhost" else authority
    return (scheme, authority, unquote(path), offset or 0, length)


@PROPERTY
@given(exact_manifests())
def test_round_trip_through_kerchunk_resolves_every_key_the_same(m: Manifest) -> None:
    back = from_kerchunk(json.loads(dumps_kerchunk(m)), url="s3://elsewhere/refs.json")
    cm, cb = kvmap.compile(m), kvmap.compile(back)
    for key in {e.key for e in m.entries}:
        before, after = cm.resolve(key), cb.resolve(key)
        want = None if before is None else _normal((before.url, before.offset, before.length, before.data))
        got = None if after is None else _normal((after.url, after.offset, after.length, after.data))
        assert got == want, key


# -- real files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def netcdf_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import pandas as pd
    import xarray as xr

    tmp = tmp_path_factory.mktemp("nc")
    paths = []
    for i in range(2):
        time = pd.date_range("2020-01-01", periods=6, freq="D") + pd.Timedelta(days=6 * i)
        ds = xr.Dataset(
            {
                "temp": (
                    ("time", "y", "x"),
                    np.arange(6 * 4 * 5, dtype="f4").reshape(6, 4, 5) + 1000 * i,
                    {"units": "K"},
                ),
                "flag": (("time",), np.arange(6, dtype="i2") * (i + 1), {"long_name": "a flag / é"}),
            },
            coords={"time": time, "y": np.linspace(0, 1, 4), "x": np.arange(5)},
            attrs={"title": "kerchunk test", "history": "made in a test"},
        )
        path = tmp / f"part {i}.nc"
        encoding = {"temp": {"chunksizes": (3, 2, 5)}, "time": {"units": "days since 2020-01-01"}}
        ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
        paths.append(path)
    return paths


def _combined_refs(paths: list[Path]) -> dict[str, Any]:
    from kerchunk.combine import MultiZarrToZarr
    from kerchunk.hdf import SingleHdf5ToZarr

    singles = [SingleHdf5ToZarr(str(p), inline_threshold=0).translate() for p in paths]
    return MultiZarrToZarr(singles, concat_dims=["time"], identical_dims=["x", "y"]).translate()


def test_kerchunk_references_of_netcdf_files_read_through_kvmapstore(netcdf_files: list[Path], tmp_path: Path) -> None:
    import xarray as xr

    refs = _combined_refs(netcdf_files)
    assert any(isinstance(v, list) and len(v) == 3 for v in refs["refs"].values())  # chunks are references
    refs_path = netcdf_files[0].parent / "refs.json"
    refs_path.write_text(json.dumps(refs))
    m = from_kerchunk(json.loads(refs_path.read_text()), url=refs_path.as_uri())
    manifest_path = netcdf_files[0].parent / "m.json"
    m.save(manifest_path)
    store = kvmap.KVMapStore(str(manifest_path), read_only=True)
    got = xr.open_zarr(store, zarr_format=2, consolidated=False).load()
    with xr.open_mfdataset(netcdf_files, engine="h5netcdf", combine="by_coords") as want:
        xr.testing.assert_identical(got, want.load())
    for name in ("temp", "flag", "time"):
        assert got[name].attrs == want[name].attrs
    # Every key reads the bytes fsspec reads.
    fs = fsspec_fs(refs)
    reader = kvmap.Reader(Manifest.load(manifest_path))
    for key in refs["refs"]:
        assert bytes(reader.get_sync(key)) == fs.cat_file(key), key


def test_kvmap_to_kerchunk_reads_the_same_through_fsspec(netcdf_files: list[Path]) -> None:
    import xarray as xr
    import zarr

    directory = netcdf_files[0].parent
    m = from_kerchunk(_combined_refs(netcdf_files), url=(directory / "refs.json").as_uri())
    # Relative paths and an inline override, as a kvmap manifest written by hand has them.
    entries = [
        {**e, "path": "../" + e["path"].rpartition("/")[2]} if e.get("path") else e for e in m.to_json()["entries"]
    ]
    assert any(e.get("path", "").startswith("../part%20") for e in entries)
    entries.append({"key": ".zattrs", "json": {"title": "patched"}})
    local = Manifest.from_json(entries, url=(directory / "sub" / "m.json").as_uri())
    refs = json.loads(dumps_kerchunk(local))
    fs = fsspec_fs(refs)
    allow = [directory.as_uri() + "/"]
    reader = kvmap.Reader(local, allow=allow)
    for key in refs["refs"]:
        assert fs.cat_file(key) == bytes(reader.get_sync(key)), key
    # Every URL is file:// now, so fsspec's own choice of file system (wrapped to be async) serves.
    fsspec_store = zarr.storage.FsspecStore(fsspec_fs(refs, asynchronous=True, fs=None), read_only=True, path="")
    via_fsspec = xr.open_zarr(fsspec_store, zarr_format=2, consolidated=False).load()
    store = kvmap.KVMapStore(local, read_only=True, allow=allow)
    via_kvmap = xr.open_zarr(store, zarr_format=2, consolidated=False).load()
    xr.testing.assert_identical(via_fsspec, via_kvmap)
    assert via_fsspec.attrs == {"title": "patched"}
