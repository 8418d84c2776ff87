"""Fuzz target: ``Manifest.from_json`` on Python objects built from the bytes.

The input is either

* ``J`` followed by text that Python's ``json`` module reads (it takes ``NaN``,
  ``Infinity``, integers of any size and lone surrogates such as ``"\\ud800"``, none of
  which a manifest may hold), or
* anything else: a document built with a ``FuzzedDataProvider`` — entries whose members
  are mostly well-typed and sometimes anything, JSON values with NaN, infinities, huge
  integers, lone surrogates, non-string member names, and nesting around the depth where
  serialisers give up (``fuzz/_gen.py``).

Only :class:`kvmap.ManifestError` may come out. A document that loads must keep its
entries as given, save and load back equal (``dumps``/``loads``, ``save``/``load``),
resolve like the reference, and stay what it was when the caller later changes the
objects it passed in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvmap
from fuzz import _gen
from fuzz._fdp import provider
from fuzz._harness import main
from fuzz.fuzz_manifest import check_round_trip
from fuzz.fuzz_resolve import compare

URLS = [
    "s3://bucket/dir/m.json",
    None,
    "memory://m/x/",
    "file:///data/m.json",
    "https://h/p/m.json?q=1",
    "file:///a.zip|zip:d/m.json",  # a document inside an adapter (spec 5.1)
]
MEMBERS = ["key", "prefix", "min", "max", "path", "data", "json", "offset", "length", "strip_prefix"]
OTHER_MEMBERS = ["kvmap", "entries", "", "x", "Key", "path ", 0, None]
_NOTHING = object()
# A member whose value is a surrogate-free string in every valid entry.
_TEXT_MEMBERS = ("key", "prefix", "min", "max")


def check(data: bytes) -> None:
    url, document = decode(data)
    if document is _NOTHING:
        return
    try:
        manifest = kvmap.Manifest.from_json(document, url=url)
    except kvmap.ManifestError:
        return
    given = document if isinstance(document, list) else document["entries"]
    assert manifest.to_json()["entries"] == given, "the entries are not kept as given"
    check_round_trip(manifest)
    if url is None or "|" not in url:  # the reference does not model documents inside adapters
        compare(manifest, [])
    else:
        kvmap.compile(manifest)
    _check_isolated(manifest, given)


def _any_int(digits: str) -> int:
    """An integer of any length from its digits (``int()`` refuses more than 4,300 of them)."""
    sign, digits = (-1, digits[1:]) if digits.startswith("-") else (1, digits)
    value = 0
    for i in range(0, len(digits), 1000):
        chunk = digits[i : i + 1000]
        value = value * 10 ** len(chunk) + int(chunk)
    return sign * value


def decode(data: bytes) -> tuple[str | None, Any]:
    """(base URL, document) from the input; the document is ``_NOTHING`` for input that means nothing."""
    if data.startswith(b"J"):
        try:
            return URLS[0], json.loads(data[1:].decode("utf-8", "surrogatepass"), parse_int=_any_int)
        except (ValueError, RecursionError):
            return None, _NOTHING
    fdp = provider(data)
    url = fdp.PickValueInList(URLS)
    entries = [_entry(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    shape = fdp.ConsumeIntInRange(0, 7)
    if shape == 0:
        return url, {"kvmap": 1, "entries": entries}
    if shape == 1:
        document: dict[Any, Any] = {"entries": entries}
        if fdp.ConsumeBool():
            document["kvmap"] = _gen.json_value(fdp) if fdp.ConsumeBool() else fdp.PickValueInList([1, 1.0, True, "1"])
        if fdp.ConsumeBool():
            document[fdp.PickValueInList(OTHER_MEMBERS)] = _gen.json_value(fdp)
        return url, document
    if shape == 2:
        return url, _gen.json_value(fdp)
    return url, entries


def _entry(fdp: Any) -> Any:
    if fdp.ConsumeIntInRange(0, 15) == 0:
        return _gen.json_value(fdp)  # not an object, mostly
    e: dict[Any, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        name = fdp.PickValueInList(MEMBERS) if fdp.ConsumeIntInRange(0, 15) else fdp.PickValueInList(OTHER_MEMBERS)
        e[name] = _member(fdp, name) if fdp.ConsumeIntInRange(0, 7) else _gen.json_value(fdp)
    return e


def _member(fdp: Any, name: Any) -> Any:
    """A value of the right type for member ``name``, near the edges of its rules."""
    if name in _TEXT_MEMBERS:
        return _gen.text(fdp)
    if name == "path":
        return None if fdp.ConsumeIntInRange(0, 3) == 0 else _gen.url(fdp)
    if name == "data":
        return _gen.b64(fdp)
    if name == "json":
        return _gen.json_value(fdp)
    if name in ("offset", "length", "strip_prefix"):
        return _gen.integer(fdp)
    return _gen.json_value(fdp)


def _check_isolated(manifest: kvmap.Manifest, given: list[Any]) -> None:
    """Changing the objects passed to ``from_json`` afterwards must not change the manifest."""
    before = manifest.dumps()
    changed = False
    for entry in given:
        if isinstance(entry, dict):
            changed |= _mutate(entry.get("json"))
    if not changed:
        return
    try:
        after = manifest.dumps()
        for e in manifest.entries:
            e.to_json()
    except Exception as exc:
        raise AssertionError(f"changing a json value passed to from_json broke the manifest: {exc!r}") from exc
    assert after == before, ("changing a json value passed to from_json changed the manifest", before, after)


def _mutate(value: Any) -> bool:
    """Put a value no manifest may hold into every array and object inside ``value``."""
    changed = False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            item.append(2**70)
            changed = True
        elif isinstance(item, dict):
            stack.extend(item.values())
            item["\x00mutated"] = float("nan")
            changed = True
    return changed


if __name__ == "__main__":
    main(check)
