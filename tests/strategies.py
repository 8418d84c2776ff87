"""Hypothesis strategies: manifests with heavy overlap, and keys near their boundaries."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

from kvmap.keyrange import prefix_successor, range_common_prefix_length

# A tiny alphabet makes shared prefixes, exact collisions and adjacent bounds
# common; the extra characters are the ones with special meaning somewhere:
# NUL (key successors), U+10FFFF (prefix successors), URL syntax, non-ASCII.
SMALL = st.text(alphabet="ab/", max_size=4)
EDGY = st.text(alphabet="ab/.\x00\U0010ffff|%#?é\ud7ff\ue000 ", max_size=5)
WIDE = st.text(max_size=6)
texts = st.one_of(SMALL, SMALL, EDGY, WIDE)

URLS = st.sampled_from(["s3://bucket/", "s3://bucket/x", "file:///data/a.zarr/", "https://h/p?q=1", "memory://m/"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["key", "key", "prefix", "range"]))
    e: dict[str, Any] = {}
    if kind == "key":
        e["key"] = draw(texts)
        target = draw(st.sampled_from(["path", "path", "absent", "data", "json"]))
        if target == "data":
            e["data"] = base64.b64encode(draw(st.binary(max_size=6))).decode()
        elif target == "json":
            e["json"] = draw(JSON_VALUES)
        else:
            e["path"] = None if target == "absent" else draw(URLS) + draw(st.sampled_from(["", "k", "f.bin"]))
            if target == "path" and draw(st.booleans()):
                e["offset"] = draw(st.integers(0, 2**53 - 1))
            if target == "path" and draw(st.booleans()):
                e["length"] = draw(st.integers(0, 2**53 - 1))
        return e
    if kind == "prefix":
        e["prefix"] = p = draw(texts)
        if draw(st.booleans()):
            e["strip_prefix"] = draw(st.integers(0, len(p)))
    else:
        lo, hi = draw(texts), draw(st.none() | texts)
        if hi is not None and hi <= lo:
            lo, hi = (hi, lo) if hi < lo else (lo, None)
        if lo or hi is None or draw(st.booleans()):
            e["min"] = lo
        if hi is not None:
            e["max"] = hi
        if draw(st.booleans()):
            e["strip_prefix"] = draw(st.integers(0, range_common_prefix_length(lo, hi)))
    e["path"] = None if draw(st.integers(0, 4)) == 0 else draw(URLS)
    return e


manifests = st.lists(entries(), max_size=12)


def probe_keys(entry_list: list[dict[str, Any]]) -> list[str]:
    """Keys at and around every bound the entries mention."""
    out: list[str] = ["", "\x00", "a", "b/", "\U0010ffff"]
    for e in entry_list:
        for name in ("key", "prefix", "min", "max"):
            if name in e:
                s = e[name]
                out += [s, s + "\x00", s + "a", s + "/", s[:-1]]
                succ = prefix_successor(s)
                if succ is not None:
                    out += [succ, succ[:-1] + "\x00" if succ else ""]
    return out


@st.composite
def manifest_and_keys(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    m = draw(manifests)
    keys = probe_keys(m) + draw(st.lists(texts, max_size=10))
    return m, keys


# -- pins (spec 3.4) -------------------------------------------------------------------------------

PIN_TEXTS = st.one_of(
    st.text(min_size=1, max_size=5), st.text(alphabet="ab", min_size=1, max_size=2).map('"{}"'.format)
)


@st.composite
def pins(draw: st.DrawFn) -> dict[str, str]:
    """The pin members of one entry: at least one of ``etag``, ``version``, ``sha256``."""
    names = draw(st.sets(st.sampled_from(["etag", "version", "sha256"]), min_size=1))
    return {
        name: draw(st.binary(min_size=32, max_size=32)).hex() if name == "sha256" else draw(PIN_TEXTS)
        for name in sorted(names)
    }


@st.composite
def pinned_manifest_and_keys(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`manifest_and_keys` with pins on some of the exact entries that name one object
    (a path without adapters), and now and then a later exact entry of the same key shadowing one."""
    m, keys = draw(manifest_and_keys())
    out = []
    for e in m:
        if "key" in e and isinstance(e.get("path"), str) and "|" not in e["path"] and draw(st.integers(0, 3)) > 0:
            e = {**e, **draw(pins())}
        out.append(e)
        if "key" in e and draw(st.integers(0, 5)) == 0:  # a later entry of the key: pinned or not
            shadow: dict[str, Any] = {"key": e["key"], "path": draw(st.none() | URLS)}
            if shadow["path"] is not None and draw(st.booleans()):
                shadow.update(draw(pins()))
            out.append(shadow)
    return out, keys
