"""Fuzz target: compile, resolve and explain, against the reference resolver ``tests/reference.py``.

The input is either

* ``J`` followed by JSON text ``{"manifest": DOC, "url": URL-or-null, "keys": [...]}`` (a
  conformance case, whose ``resolve`` list may stand in for ``keys``), read with Python's
  ``json`` so that keys may hold lone surrogates (``"\\ud800"``); or
* anything else: entries, a base URL and keys built from the bytes with a
  ``FuzzedDataProvider`` — keys from a tiny alphabet (``a``, ``b``, ``/``, NUL, U+10FFFF,
  the surrogate neighbours...) so that entries overlap, share prefixes and abut.

For every probe key (the bounds the entries mention and their neighbours, and the keys
given), ``CompiledMap.resolve``, ``resolve_many`` (a short batch and a vectorised one),
``explain`` and ``pieces`` must agree with the reference; a key holding a lone surrogate
must raise :class:`kvmap.InvalidKeyError` everywhere. Only :class:`kvmap.ManifestError`
may come out of validating the entries.
"""

from __future__ import annotations

import bisect
import itertools
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvmap
from fuzz import _gen
from fuzz._fdp import provider
from fuzz._harness import has_surrogate, main
from kvmap.keyrange import range_common_prefix_length
from kvmap.url import is_absolute
from tests import reference
from tests.strategies import probe_keys

BASES = [None, "s3://bucket/dir/m.json", "memory://m/x/m.json", "file:///data/a/m.json", "https://h/p/m.json?q=1"]
# A tiny alphabet: shared prefixes, exact collisions and adjacent bounds are common.
KEY_PIECES = ["a", "b", "/", "a", "b", "/", "\x00", "\U0010ffff", "\ud7ff", "\ue000", "é", "|", "%", " ", "~"]
KEY_TAILS = ["", "\x00", "a", "/", "\U0010ffff"]
# resolve_many searches with numpy from this many keys on (kvmap.compiled._VECTOR_MIN).
VECTOR_BATCH = 64


def check(data: bytes) -> None:
    case = decode(data)
    if case is None:
        return
    document, url, keys = case
    try:
        manifest = kvmap.Manifest.from_json(document, url=url)
    except kvmap.ManifestError:
        return
    compare(manifest, keys)


def decode(data: bytes) -> tuple[Any, str | None, list[str]] | None:
    """(document, base URL, keys) from the input; ``None`` for input that means nothing."""
    if data.startswith(b"J"):
        try:
            case = json.loads(data[1:].decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(case, dict):
            return None
        url = case.get("url")
        keys = case.get("keys", [r.get("key") for r in case.get("resolve", []) if isinstance(r, dict)])
        if not (url is None or (isinstance(url, str) and is_absolute(url))) or not isinstance(keys, list):
            return None
        if url is not None and "|" in url:
            # A document inside an adapter resolves relative paths inside it (spec 5.1): the
            # reference scan models plain document URLs; fuzz_pipeline's oracle holds that rule.
            return None
        return case.get("manifest"), url, [k for k in keys if isinstance(k, str)]
    fdp = provider(data)
    url = fdp.PickValueInList(BASES)
    entries = [_entry(fdp) for _ in range(fdp.ConsumeIntInRange(0, 10))]
    keys = [_key(fdp, surrogates=True) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    return entries, url, keys


def _key(fdp: Any, *, surrogates: bool = False) -> str:
    if fdp.ConsumeIntInRange(0, 7) == 0:
        return _gen.text(fdp) if surrogates else _gen.scalar_text(fdp)
    key = "".join(fdp.PickValueInList(KEY_PIECES) for _ in range(fdp.ConsumeIntInRange(0, 4)))
    if surrogates and fdp.ConsumeIntInRange(0, 15) == 0:
        key += "\ud800"
    return key


def _entry(fdp: Any) -> dict[str, Any]:
    kind = fdp.ConsumeIntInRange(0, 3)
    e: dict[str, Any] = {}
    if kind <= 1:
        e["key"] = _key(fdp)
        target = fdp.ConsumeIntInRange(0, 4)
        if target == 0:
            e["data"] = _gen.b64(fdp)
        elif target == 1:
            e["json"] = _gen.json_value(fdp, depth=2)
        else:
            e["path"] = None if target == 2 else _gen.url(fdp)
            for name in ("offset", "length"):
                if target == 3 and fdp.ConsumeIntInRange(0, 3) == 0:
                    e[name] = _gen.integer(fdp) if fdp.ConsumeIntInRange(0, 7) == 0 else fdp.ConsumeIntInRange(0, 99)
        return e
    if kind == 2:
        e["prefix"] = prefix = _key(fdp)
        if fdp.ConsumeBool():
            e["strip_prefix"] = fdp.ConsumeIntInRange(0, len(prefix) + 1)
    else:
        lo, hi = _key(fdp), _key(fdp) if fdp.ConsumeIntInRange(0, 3) else None
        if hi is not None and hi < lo:
            lo, hi = hi, lo
        if lo or hi is None or fdp.ConsumeBool():
            e["min"] = lo
        if hi is not None:
            e["max"] = hi
        if fdp.ConsumeBool():
            e["strip_prefix"] = fdp.ConsumeIntInRange(0, range_common_prefix_length(lo, hi) + 1)
    e["path"] = None if fdp.ConsumeIntInRange(0, 4) == 0 else _gen.url(fdp)
    return e


def compare(manifest: kvmap.Manifest, keys: list[str]) -> None:
    """Compile ``manifest``; every probe key and every key of ``keys`` must resolve, batch-resolve,
    explain and lie in a piece exactly as ``tests/reference.py`` says."""
    url = manifest.url
    cm = kvmap.compile(manifest)
    entries = manifest.to_json()["entries"]
    probes = probe_keys(entries) + keys
    probes += [k + tail for k in keys for tail in KEY_TAILS[1:]]
    valid = [k for k in probes if not has_surrogate(k)]
    for key in probes:
        if key in valid:
            continue
        for call in (cm.resolve, cm.explain, lambda k: cm.resolve_many(["a", k])):
            try:
                call(key)
            except kvmap.InvalidKeyError:
                continue
            raise AssertionError(f"key {key!r} holds a lone surrogate, but {call} took it")
    resolved = [cm.resolve(k) for k in valid]
    assert cm.resolve_many(valid) == resolved, "resolve_many disagrees with resolve"
    batch = (valid * (VECTOR_BATCH // max(1, len(valid)) + 1))[: max(VECTOR_BATCH, len(valid))]
    assert cm.resolve_many(batch) == [cm.resolve(k) for k in batch], "vectorised resolve_many disagrees"
    pieces = list(cm.pieces())
    _check_pieces(pieces)
    starts = [p.min for p in pieces]
    for key, r in zip(valid, resolved, strict=True):
        got = None if r is None else (r.entry, r.url, r.offset, r.length, r.data)
        want = reference.expected(entries, key, url)
        if want is not None and "json" in entries[want[0]]:
            assert got is not None, (key, got, want)
            got = (*got[:4], json.loads(got[4]))
        assert got == want, (key, got, want)
        explained = cm.explain(key)
        covering = tuple(reference.covering(entries, key))
        assert explained.entries == covering, (key, explained.entries, covering)
        assert explained.resolution == r, (key, explained)
        i = bisect.bisect_right(starts, key) - 1
        inside = i >= 0 and (pieces[i].max is None or key < pieces[i].max)
        if covering:
            assert inside, (key, "no piece holds a covered key", pieces)
            assert pieces[i].entry == covering[0], (key, pieces[i], covering)
        else:
            assert not inside, (key, "a piece holds a key no entry covers", pieces[i])


def _check_pieces(pieces: list[kvmap.Piece]) -> None:
    """Sorted, disjoint, non-empty, maximal, and bounded by valid keys (spec section 7)."""
    for p in pieces:
        assert p.max is None or p.min < p.max, ("empty piece", p)
        assert not has_surrogate(p.min), ("piece bound is not a key", p)
        assert p.max is None or not has_surrogate(p.max), ("piece bound is not a key", p)
    for p, q in itertools.pairwise(pieces):
        assert p.max is not None, ("unbounded piece before another", p, q)
        assert p.max <= q.min, ("pieces overlap or are out of order", p, q)
        assert not (p.max == q.min and p.entry == q.entry), ("adjacent pieces of one entry", p, q)


if __name__ == "__main__":
    main(check)
