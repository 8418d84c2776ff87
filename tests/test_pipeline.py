"""URL pipelines (ZEP 8): parse/format round trips, errors, and relative references
resolved against a document that sits inside an adapter (spec section 5.1)."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvmap
from kvmap.formats import ADAPTERS, adapter_kind, for_adapter
from kvmap.pipeline import Adapter, Pipeline
from kvmap.url import is_absolute, join, resolve_target

# -- strategies -------------------------------------------------------------------------

KNOWN_NAMES = ("kvmap", "zarr_chunk_manifest", "zarr-chunk-manifest", "zip")
names = st.one_of(
    st.sampled_from(KNOWN_NAMES),
    st.builds(
        str.__add__,
        st.sampled_from(string.ascii_letters),
        st.text(alphabet=string.ascii_letters + string.digits + "+.-_", max_size=8),
    ),
)

# Adapter paths are decoded text: anything without a lone surrogate (no UTF-8 form).
_UNICODE = st.characters(exclude_categories=["Cs"])
# The characters with a meaning somewhere in pipeline or URL syntax, and escapes spelled out.
_EDGY_PATH = st.lists(
    st.sampled_from(["a", "b", "/", "|", "%", ":", " ", ".", "..", "é", "\U0001f600", "%7C", "%25", "%zz", "#", "?"]),
    max_size=8,
).map("".join)
paths = st.one_of(st.text(alphabet=_UNICODE), _EDGY_PATH)

# A root is kept as written: any non-empty text without the separator.
roots = st.one_of(
    st.text(alphabet=st.characters(exclude_characters="|"), min_size=1),
    st.sampled_from(["s3://b/a.zip", "file:///x%20y.zip", "m.json", "//h/p", "a%zz", "c?q#f"]),
)
adapters = st.builds(Adapter, names, paths)
pipelines = st.builds(Pipeline, roots, st.lists(adapters, max_size=4).map(tuple))


# -- round trips ------------------------------------------------------------------------


@given(pipelines)
def test_parse_and_format_are_inverse(p: Pipeline) -> None:
    text = p.format()
    assert Pipeline.parse(text) == p
    # ... and on the text format produces, format inverts parse.
    assert Pipeline.parse(text).format() == text
    assert str(p) == text
    # Only the separators between steps are literal "|": a path's "|" is always escaped.
    assert text.count("|") == len(p.adapters)


def _other_spelling(path: str, rnd: random.Random) -> str:
    """Any URL spelling of a decoded path: each character raw or escaped, hex in either case."""
    out = []
    for ch in path:
        if ch in "%|" or rnd.random() < 0.5:
            escaped = "".join(f"%{b:02X}" for b in ch.encode())
            out.append(escaped.lower() if rnd.random() < 0.5 else escaped)
        else:
            out.append(ch)
    return "".join(out)


@given(pipelines, st.randoms(use_true_random=False))
def test_every_spelling_of_a_path_parses_the_same(p: Pipeline, rnd: random.Random) -> None:
    steps = [p.root]
    for a in p.adapters:
        spelled = _other_spelling(a.path, rnd)
        omit_colon = not spelled and rnd.random() < 0.5
        steps.append(a.name if omit_colon else f"{a.name}:{spelled}")
    assert Pipeline.parse("|".join(steps)) == p


# -- examples ---------------------------------------------------------------------------


def test_trailing_colon_may_be_omitted() -> None:
    assert Pipeline.parse("x|zip") == Pipeline.parse("x|zip:") == Pipeline("x", (Adapter("zip", ""),))
    assert Pipeline.parse("x|zip|kvmap").format() == "x|zip:|kvmap:"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://b/m.json", Pipeline("s3://b/m.json")),
        ("x|kvmap:a%7Cb", Pipeline("x", (Adapter("kvmap", "a|b"),))),
        ("x|kvmap:a%7cb", Pipeline("x", (Adapter("kvmap", "a|b"),))),
        ("x|kvmap:c%2F0%20%C3%A9", Pipeline("x", (Adapter("kvmap", "c/0 é"),))),
        ("x|kvmap:100%25", Pipeline("x", (Adapter("kvmap", "100%"),))),
        ("x|zip:a:b c", Pipeline("x", (Adapter("zip", "a:b c"),))),  # only the first ":" separates
        ("f:/a%20b|zip:d/m|kvmap:c/0", Pipeline("f:/a%20b", (Adapter("zip", "d/m"), Adapter("kvmap", "c/0")))),
        ("x|a+b.c-d_e:", Pipeline("x", (Adapter("a+b.c-d_e", ""),))),
    ],
)  # fmt: skip
def test_parse_examples(text: str, expected: Pipeline) -> None:
    assert Pipeline.parse(text) == expected


def test_format_escapes_everything_but_unreserved_and_slash() -> None:
    p = Pipeline("s3://b/x y.zip", (Adapter("zip", "d/a b|c%:é"), Adapter("kvmap", "")))
    assert p.format() == "s3://b/x y.zip|zip:d/a%20b%7Cc%25%3A%C3%A9|kvmap:"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("kvmap", "manifest"),
        ("zarr_chunk_manifest", "manifest"),
        ("zarr-chunk-manifest", "manifest"),
        ("kerchunk", "manifest"),
        ("kvstack", "manifest"),
        ("zip", "zip"),
    ],
)
def test_adapter_kind_for_each_spelling(name: str, kind: str) -> None:
    assert adapter_kind(Pipeline.parse(f"s3://b/x|{name}:p").adapters[0].name) == kind
    assert (name in ADAPTERS) == (kind == "manifest")


def test_every_adapter_names_a_format_with_a_loader() -> None:
    for name in ADAPTERS:
        assert for_adapter(name).loader is not None, name


@pytest.mark.parametrize("name", ["tar", "gzip", "ZIP", "kvmap2", "zarr.chunk.manifest"])
def test_unknown_adapter_parses_but_has_no_kind(name: str) -> None:
    adapter = Pipeline.parse(f"s3://b/x|{name}:p").adapters[0]
    assert adapter == Adapter(name, "p")
    with pytest.raises(kvmap.PipelineError, match="unknown URL adapter"):
        adapter_kind(adapter.name)


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty URL
        "|kvmap:",  # empty root
        "|",
        "a||zip:",  # empty step
        "a|zip:|",
        "a|1x:",  # invalid names
        "a|:x",
        "a|a b:c",
        "a|_x:",
        "a|zip\n:",
        "a|kvmap:%zz",  # malformed escapes
        "a|kvmap:%4",
        "a|kvmap:%",
        "a|kvmap:x%g0",
        "a|kvmap:%FF",  # not UTF-8
        "a|kvmap:%C3",
        "a|kvmap:%ED%A0%80",  # an encoded surrogate
    ],
)
def test_malformed_pipelines_raise(text: str) -> None:
    with pytest.raises(kvmap.PipelineError) as info:
        Pipeline.parse(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, kvmap.KvmapError)


# -- relative references with a pipeline base -------------------------------------------

ZIP_BASE = "file:///a.zip|zip:d/m.json"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("c/0", "file:///a.zip|zip:d/c/0"),
        ("./c/0", "file:///a.zip|zip:d/c/0"),
        ("../c/0", "file:///a.zip|zip:c/0"),
        ("../../../x", "file:///a.zip|zip:x"),  # cannot climb out of the archive
        ("/x", "file:///a.zip|zip:x"),
        ("c/", "file:///a.zip|zip:d/c/"),
        (".", "file:///a.zip|zip:d/"),
        ("..", "file:///a.zip|zip:"),
        ("//host/y", "file://host/y"),  # network-path: against the pipeline's root
        ("s3://b/k", "s3://b/k"),  # absolute: as written
        ("s3://b/k|zip:a/../b", "s3://b/k|zip:a/../b"),
        ("sub/m.json|kvmap:", "file:///a.zip|zip:d/sub/m.json|kvmap:"),
        ("sub/m.json|kvmap:../x|zip:y", "file:///a.zip|zip:d/sub/m.json|kvmap:../x|zip:y"),
    ],
)
def test_resolve_against_a_pipeline_base(reference: str, expected: str) -> None:
    assert resolve_target(ZIP_BASE, reference) == expected


def test_resolve_against_a_base_with_several_adapters() -> None:
    base = "s3://b/a.zip|zip:m.json|kvmap:views/x/m.json"
    assert resolve_target(base, "../c") == "s3://b/a.zip|zip:m.json|kvmap:views/c"
    assert resolve_target(base, "//o/p") == "s3://o/p"
    assert resolve_target("file:///a.zip|zip", "c") == "file:///a.zip|zip:c"
    assert resolve_target("file:///a.zip|zip:", "c/../../d") == "file:///a.zip|zip:d"


def test_spec_section_5_1_examples() -> None:
    base = "s3://bucket/views/m.json"
    assert resolve_target(base, "../data/") == "s3://bucket/data/"
    assert resolve_target(base, "/x/") == "s3://bucket/x/"
    assert resolve_target(base, "//other/x/") == "s3://other/x/"
    assert resolve_target(base, "sub/m.json|kvmap:") == "s3://bucket/views/sub/m.json|kvmap:"


SAFE_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=3)
# "x:/" + P must parse as a path, so P never starts with "/": it is relative.
safe_paths = st.builds(
    lambda segs, slash: "/".join(segs) + slash,
    st.lists(SAFE_SEGMENT, min_size=1, max_size=5),
    st.sampled_from(["", "", "/"]),
)
ref_segments = st.one_of(SAFE_SEGMENT, st.sampled_from([".", "..", ".", "..", ""]))
relative_refs = (
    st.lists(ref_segments, min_size=1, max_size=8).map("/".join).filter(lambda r: r != "" and not r.startswith("//"))
)


def model_resolve(base_path: str, reference: str) -> str:
    """Sibling of ``base_path`` named by ``reference``, with a plain segment stack."""
    segments = reference.split("/")
    if reference.startswith("/"):
        stack: list[str] = []
        segments = segments[1:]
    else:
        stack = base_path.split("/")[:-1]
    for seg in segments:
        if seg == "..":
            if stack:
                stack.pop()
        elif seg != ".":
            stack.append(seg)
    out = "/".join(stack)
    if segments[-1] in (".", "..") and stack:
        out += "/"
    return out


def test_model_resolve_examples() -> None:
    assert model_resolve("d/m.json", "c/0") == "d/c/0"
    assert model_resolve("d/m.json", "../../x") == "x"
    assert model_resolve("d/e/m.json", "..") == "d/"
    assert model_resolve("d/m.json", "..") == ""
    assert model_resolve("d/m.json", "/x/.") == "x/"


@given(st.lists(adapters, max_size=2), names, safe_paths, relative_refs)
def test_relative_reference_stays_in_the_last_adapter(
    earlier: list[Adapter], name: str, base_path: str, reference: str
) -> None:
    base = Pipeline("s3://b/a.zip", (*earlier, Adapter(name, base_path))).format()
    head = base[: base.rindex("|") + 1] + name + ":"
    assert base.startswith(head)

    result = resolve_target(base, reference)
    assert result.startswith(head)
    inside = result[len(head) :]
    assert inside == join("x:/" + base_path, reference)[len("x:/") :]
    assert not inside.startswith("../")
    assert "/../" not in inside
    assert "/./" not in inside
    assert all(seg not in (".", "..") for seg in inside.split("/"))
    assert inside == model_resolve(base_path, reference)
    # The result is itself a pipeline: the base's adapters, the last one re-pointed.
    parsed = Pipeline.parse(result)
    assert parsed.adapters == (*earlier, Adapter(name, inside))


# -- only the root of a reference is a reference ----------------------------------------

PLAIN_BASES = ["s3://bucket/views/m.json", "file:///data/m.json", "memory://m/", "https://h/p?q=1"]
PIPELINE_BASES = [ZIP_BASE, "s3://b/a.zip|zip:", "s3://b/a.zip|zip:m.json|kvmap:v/x.json"]
# Roots that stay parseable when moved into an adapter path: no raw "%" but valid escapes.
_ROOT_TEXT = st.text(alphabet=st.characters(exclude_characters="|%", exclude_categories=["Cs"]))
_ESCAPED = st.text(alphabet=_UNICODE).map(lambda s: Adapter("x", s).format()[2:])
reference_roots = st.one_of(
    st.lists(st.one_of(_ROOT_TEXT, _ESCAPED, st.sampled_from(["..", ".", "/", "//h/", "s3://o/"])), max_size=4).map(
        "".join
    )
)


@given(st.sampled_from(PLAIN_BASES + PIPELINE_BASES), reference_roots, st.lists(adapters, min_size=1, max_size=3))
def test_adapters_of_the_reference_are_kept_verbatim(base: str, root: str, steps: list[Adapter]) -> None:
    text = "|".join([root, *(a.format() for a in steps)])
    result = resolve_target(base, text)
    parsed = Pipeline.parse(result)
    # The reference's adapters come through untouched, as text and as values.
    assert result.endswith(text[len(root) :])
    assert parsed.adapters[len(parsed.adapters) - len(steps) :] == tuple(steps)

    base_pipe = Pipeline.parse(base)
    into_adapter = bool(base_pipe.adapters) and not root.startswith("//") and not is_absolute(root)
    if is_absolute(root):
        assert result == text
    if into_adapter:
        # The root lands in the base's last adapter; the base's other adapters stay.
        assert parsed.root == base_pipe.root
        assert parsed.adapters[: len(base_pipe.adapters) - 1] == base_pipe.adapters[:-1]
        assert parsed.adapters[len(base_pipe.adapters) - 1].name == base_pipe.adapters[-1].name
        assert len(parsed.adapters) == len(base_pipe.adapters) + len(steps)
    else:
        # Otherwise only the root is resolved: the adapters are exactly the reference's.
        assert parsed.adapters == tuple(steps)
        if not is_absolute(root):
            assert parsed.root == join(base_pipe.root, root)


@given(st.sampled_from(PLAIN_BASES), st.text(alphabet=st.characters(exclude_characters="|"), min_size=1), pipelines)
def test_plain_base_keeps_exactly_the_references_adapters(base: str, root: str, p: Pipeline) -> None:
    # Any root at all (malformed escapes included: they belong to the root URL).
    text = Pipeline(root, p.adapters).format()
    result = Pipeline.parse(resolve_target(base, text))
    assert result.adapters == p.adapters
    assert result.root == (root if is_absolute(root) else join(base, root))


def test_regression_a_rooted_adapter_path_is_not_an_authority() -> None:
    # Found by review of this file: "x:/" + "/d/..." read the first segment as a URL host.
    assert resolve_target("file:///a.zip|zip:/d/e/m.json", "../../x") == "file:///a.zip|zip:/x"
    assert resolve_target("file:///a.zip|zip:/d/m.json", "/x") == "file:///a.zip|zip:/x"
