"""Fuzz target: URL pipelines (``kvmap.pipeline``) and URL syntax (``kvmap.url``).

The input is either ``T`` followed by text (UTF-8; bytes that are not UTF-8 become lone
surrogates, as ``surrogateescape`` reads them), or anything else: text glued from URL
pieces (``|``, ``zip:``, ``%7C``, ``%ff``, ``..``, ``%2e``, ``//``...) and adapters built with a
``FuzzedDataProvider``. The text is then a pipeline, a relative reference, a base URL
and a key remainder:

* ``Pipeline.parse`` raises only :class:`kvmap.PipelineError`; what it parses formats and
  parses back equal (``format`` raises only :class:`kvmap.InvalidKeyError`, for an adapter
  path holding a lone surrogate); a built ``Pipeline`` formats and parses back equal;
* ``encode_remainder`` escapes exactly as spec 5.2 says (``urllib.parse.quote`` with
  ``safe="/"``, upper-case hex) and ``decode_remainder`` inverts it; a lone surrogate is
  :class:`kvmap.InvalidKeyError`;
* ``join`` agrees with a literal transcription of RFC 3986 section 5.2 (below), and
  ``resolve_target`` with ``join`` — inside an adapter it never climbs out of it;
* ``split_name`` and ``is_plain_name`` are what their docstrings say.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvmap
from fuzz import _gen
from fuzz._fdp import provider
from fuzz._harness import has_surrogate, main
from kvmap.formats import ADAPTERS, ZIP, adapter_kind
from kvmap.pipeline import Adapter, Pipeline
from kvmap.url import (
    REMAINDER_SAFE,
    decode_remainder,
    encode_remainder,
    is_absolute,
    is_plain_name,
    join,
    resolve_target,
    split_name,
)

BASES = [
    "s3://bucket/views/m.json",
    "s3://bucket",
    "memory://store/x/y.json",
    "file:///a/b/c/m.json",
    "https://h/p/q?x=1#f",
    "x:a/b",
    "x:",
    "file:///a.zip|zip:d/m.json",
    "file:///a.zip|zip:m.json",
    "s3://b/o.zip|zip:/abs/m.json|kvmap:k",
]
PIECES = [
    "|",
    "|",
    "zip",
    "zip:",
    "kvmap:",
    "zarr_chunk_manifest:",
    "s3://b/",
    "file:///",
    "memory://m/",
    "//h",
    "/",
    "a",
    "é",
    ".",
    "..",
    "./",
    "../",
    "/..",
    "/.",
    "%",
    "%2e",
    "%2E%2E",
    "%7C",
    "%7c",
    "%C3%A9",
    "%ff",
    "%C3",
    "%ED%A0%80",
    "%00",
    "%4",
    "%g0",
    ":",
    "?",
    "#",
    "?q",
    "#f",
    " ",
    "\x00",
    "\ud800",
    "\U0010ffff",
    "A1+.-_",
    "1a",
]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]*\Z")
_ESCAPED = re.compile(r"(?:[A-Za-z0-9\-._~/]|%[0-9A-F]{2})*\Z")


def check(data: bytes) -> None:
    texts, built = decode(data)
    for text in texts:
        _check_pipeline(text)
        _check_remainder(text)
        _check_names(text)
        for base in BASES:
            _check_join(base, text)
        if is_absolute(text) and "|" not in text:
            for ref in ("", "a", "../b", "/c/./d", "//h/e", "?q", "#f", "g;x=1/../y"):
                _check_join(text, ref)
    if built is not None:
        _check_built(built)


def decode(data: bytes) -> tuple[list[str], Pipeline | None]:
    if data.startswith(b"T"):
        return data[1:].decode("utf-8", "surrogateescape").split("\n"), None
    fdp = provider(data)
    texts = ["".join(_piece(fdp) for _ in range(fdp.ConsumeIntInRange(0, 10))) for _ in range(3)]
    root = "".join(_piece(fdp) for _ in range(fdp.ConsumeIntInRange(1, 4))).replace("|", "") or "r"
    adapters = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name = fdp.PickValueInList([*ADAPTERS, ZIP, "x", "a+b", "Zip", "a_b-c.d"])
        adapters.append(Adapter(name, _gen.text(fdp)))
    return texts, Pipeline(root, tuple(adapters))


def _piece(fdp: Any) -> str:
    return str(fdp.PickValueInList(PIECES)) if fdp.ConsumeIntInRange(0, 7) else _gen.text(fdp)


def _check_pipeline(text: str) -> None:
    try:
        p = Pipeline.parse(text)
    except kvmap.PipelineError:
        return
    root, *steps = text.split("|")
    assert p.root == root, (text, p)
    assert len(p.adapters) == len(steps), (text, p)
    for a, step in zip(p.adapters, steps, strict=True):
        assert _NAME.match(a.name), (text, a)
        assert step.partition(":")[0] == a.name, (text, a)
        try:
            kind = adapter_kind(a.name)
        except kvmap.PipelineError:
            assert a.name not in ADAPTERS, a
            assert a.name != ZIP, a
        else:
            assert kind == ("zip" if a.name == ZIP else "manifest"), a
    _round_trip(p)


def _check_built(p: Pipeline) -> None:
    _round_trip(p)


def _round_trip(p: Pipeline) -> None:
    try:
        text = p.format()
    except kvmap.InvalidKeyError:
        assert any(has_surrogate(a.path) for a in p.adapters), p
        return
    assert not any(has_surrogate(a.path) for a in p.adapters), ("formatted a lone surrogate", p, text)
    try:
        again = Pipeline.parse(text)
    except kvmap.PipelineError as exc:
        raise AssertionError(f"{p} formats as {text!r}, which does not parse: {exc}") from exc
    assert again == p, (p, text, again)
    assert again.format() == text, (p, text)


def _check_remainder(text: str) -> None:
    try:
        encoded = encode_remainder(text)
    except kvmap.InvalidKeyError:
        assert has_surrogate(text), text
        return
    assert not has_surrogate(text), text
    assert encoded == quote(text, safe="/"), (text, encoded)
    assert _ESCAPED.match(encoded), (text, encoded)
    assert decode_remainder(encoded) == text, (text, encoded)
    if not text.strip(REMAINDER_SAFE):
        assert encoded == text


def _check_names(text: str) -> None:
    directory, name = split_name(text)
    assert directory + name == text, text
    assert "/" not in name, text
    assert not directory or directory.endswith("/"), text
    plain = name not in ("", ".", "..") and not set(name) & set("%?#")
    assert is_plain_name(name) == plain, name


def _check_join(base: str, reference: str) -> None:
    if "|" in base:
        _check_resolve_target(base, reference)
        return
    got = join(base, reference)
    want = rfc3986_join(base, reference)
    assert got == want, (base, reference, got, want)
    assert is_absolute(got), (base, reference, got)
    root, sep, rest = reference.partition("|")
    if re.match(r"[A-Za-z]:[\\/]", root) and base.lower().startswith("file:"):  # spec 5.1: a drive path
        want = "file:///" + root.replace("\\", "/") + sep + rest
    else:
        want = reference if is_absolute(root) else join(base, root) + sep + rest
    assert resolve_target(base, reference) == want, (base, reference)


def _check_resolve_target(base: str, reference: str) -> None:
    """Inside an adapter (spec 5.1): siblings in the adapter's namespace, never climbing out."""
    got = resolve_target(base, reference)
    root, _, rest = reference.partition("|")
    if re.match(r"[A-Za-z]:[\\/]", root) and base.lower().startswith("file:"):  # spec 5.1: a drive path
        assert got == "file:///" + reference.replace("\\", "/", root.count("\\")), (base, reference, got)
        return
    if is_absolute(root):
        assert got == reference
        return
    if root.startswith("//"):
        assert got.startswith(join(base.partition("|")[0], root)), (base, reference, got)
        return
    head, _, last = base.rpartition("|")
    name = last.partition(":")[0]
    assert got.startswith(f"{head}|{name}:"), ("climbed out of the adapter", base, reference, got)
    inside = got[len(head) + len(name) + 2 :]
    if rest:
        assert inside.endswith("|" + rest), (base, reference, got)
        inside = inside[: -len(rest) - 1]
    path = inside.partition("?")[0].partition("#")[0]
    assert ".." not in path.split("/"), (base, reference, got)
    assert "." not in path.split("/")[:-1], (base, reference, got)


# -- RFC 3986 section 5.2, transcribed literally (the scheme restricted to section 3.1) ---------

_URI = re.compile(r"^(?:([A-Za-z][A-Za-z0-9+.\-]*):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$", re.S)


def _remove_dot_segments(path: str) -> str:  # 5.2.4, with its input and output buffers
    out = ""
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = "/" + path[3:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:]
            out = out[: max(out.rfind("/"), 0)]
        elif path in (".", ".."):
            path = ""
        else:
            cut = path.find("/", 1)
            cut = len(path) if cut < 0 else cut
            out, path = out + path[:cut], path[cut:]
    return out


def rfc3986_join(base: str, reference: str) -> str:
    """RFC 3986 5.2.2 (strict), 5.2.3 and 5.3, word for word."""
    b = _URI.match(base)
    r = _URI.match(reference)
    assert b is not None
    assert r is not None
    b_scheme, b_auth, b_path, b_query, _ = b.groups()
    scheme, auth, path, query, fragment = r.groups()
    if scheme is not None:
        path = _remove_dot_segments(path)
    else:
        if auth is not None:
            path = _remove_dot_segments(path)
        else:
            if path == "":
                path = b_path
                query = query if query is not None else b_query
            elif path.startswith("/"):
                path = _remove_dot_segments(path)
            elif b_auth is not None and b_path == "":
                path = _remove_dot_segments("/" + path)  # 5.2.3 merge, first case
            else:
                path = _remove_dot_segments(b_path[: b_path.rfind("/") + 1] + path)
            auth = b_auth
        scheme = b_scheme
    out = scheme + ":"
    if auth is not None:
        out += "//" + auth
    out += path
    if query is not None:
        out += "?" + query
    if fragment is not None:
        out += "#" + fragment
    return out


if __name__ == "__main__":
    main(check)
