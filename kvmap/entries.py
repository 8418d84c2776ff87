"""Manifest entries: the model of one mapping entry and the rules that make it valid.

An entry has exactly one *selector* (``key``, ``prefix``, or ``min``/``max``) and
exactly one *target* (``path`` — a URL, or ``null`` for a whiteout —, ``data`` or
``json``). :meth:`Entry.from_json` is the single definition of validity: every
other validation path in kvmap must agree with it (the tests check that).

>>> e = Entry.from_json({"min": "c/0", "max": "c/10", "path": "s3://b/c/"}, 0)
>>> e.selector, e.range, e.strip
('range', KeyRange(min='c/0', max='c/10'), 2)
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from kvmap.errors import ManifestError
from kvmap.keyrange import KeyRange, key_successor, prefix_range, range_common_prefix_length

__all__ = ["JSON_INT_MAX", "JSON_INT_MIN", "MAX_INT", "PIN_FIELDS", "Entry", "Pins", "Selector", "Target", "same_etag"]

Selector = Literal["key", "prefix", "range"]
Target = Literal["path", "absent", "data", "json"]

#: Largest offset, length or strip_prefix: the largest integer every JSON
#: implementation represents exactly (2**53 - 1).
MAX_INT = 2**53 - 1

#: The integers a ``json`` value may hold: those of a signed or an unsigned 64-bit
#: integer, which the JSON serialiser writes exactly. Others are refused, on every
#: path alike, rather than rounded to a float (as JSON text parsers do) or lost.
JSON_INT_MIN = -(2**63)
JSON_INT_MAX = 2**64 - 1

#: The deepest nesting of a ``json`` value: what the serialiser (255 levels) can still
#: write inside an entry inside a manifest document, with room to spare.
MAX_JSON_DEPTH = 250

# Canonical member order: when an entry has two selectors or two targets, the
# error names the later one in this order, so the message is deterministic.
_SELECTOR_FIELDS = ("key", "prefix", "min", "max")
_TARGET_FIELDS = ("path", "data", "json")
#: The members that pin what an exact entry's path names (spec 3.4), in canonical order.
PIN_FIELDS = ("etag", "version", "sha256")
_KNOWN_FIELDS = frozenset((*_SELECTOR_FIELDS, *_TARGET_FIELDS, "strip_prefix", "offset", "length", *PIN_FIELDS))
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Pins:
    """What an exact entry asserts about the object its path names (spec 3.4): its ``etag`` (as
    the store reports it, compared without surrounding double quotes), its ``version`` (an S3
    ``versionId`` or the like: read is of that version) and the ``sha256`` of the entry's bytes
    (64 lower-case hex digits, of the window, or of the whole object without one). A read
    that finds anything else refuses with :class:`~kvmap.ObjectChangedError`."""

    etag: str | None = None
    version: str | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, str]:
        """The pins as entry members (those that are set)."""
        out = {}
        if self.etag is not None:
            out["etag"] = self.etag
        if self.version is not None:
            out["version"] = self.version
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out

    @property
    def meta(self) -> bool:
        """Whether a pin is checked against the store's metadata (``etag`` or ``version``)."""
        return self.etag is not None or self.version is not None


def _plain_inline(obj: dict[str, Any]) -> Entry | None:
    """``{"key": K, "data": B}`` with ASCII ``K`` and valid base64 ``B`` as its entry, without the
    general checks (the bulk of a manifest of small values); ``None`` for anything else, which
    the general path then accepts or refuses as always."""
    key, text = obj.get("key"), obj.get("data")
    if type(key) is not str or type(text) is not str or not key.isascii() or not text.isascii():
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    return Entry("key", KeyRange(key, key_successor(key)), 0, "data", data=data)


def same_etag(a: str, b: str) -> bool:
    """Whether two ETags are the same: compared without surrounding double quotes (stores and
    tools differ in whether they keep them).

    >>> same_etag('"abc"', "abc"), same_etag("abc", "abd")
    (True, False)
    """
    return a.strip('"') == b.strip('"')


@dataclass(frozen=True, slots=True)
class Entry:
    """One validated manifest entry.

    ``range`` is the set of keys the entry selects (``[K, K + "\\0")`` for an
    exact key); ``strip`` the number of code points removed from a key before
    its remainder is appended to ``path`` (0 for exact keys). ``data`` holds the
    inline bytes of a ``data`` or ``json`` target (JSON as compact UTF-8 text).
    """

    selector: Selector
    range: KeyRange
    strip: int
    target: Target
    path: str | None = None
    offset: int | None = None
    length: int | None = None
    data: bytes | None = None
    #: What the entry pins of its target object (only exact entries with a URL have pins).
    pins: Pins | None = None

    @property
    def key(self) -> str:
        """The exact key of a ``key`` entry (``ValueError`` for other selectors)."""
        if self.selector != "key":
            raise ValueError(f"a {self.selector} entry has no single key")
        return self.range.min

    @classmethod
    def from_json(cls, obj: Any, index: int, manifest: str | None = None) -> Entry:
        """Validate one JSON entry object; raise :class:`ManifestError` naming ``index``."""
        if type(obj) is dict and len(obj) == 2:
            inline = _plain_inline(obj)
            if inline is not None:
                return inline
        v = _Validator(manifest, index)
        if not isinstance(obj, dict):
            raise v.error(None, f"an entry must be a JSON object, not {_json_type(obj)}")
        for name in obj:
            if name not in _KNOWN_FIELDS:
                raise v.error(name, "unknown member")
        selector, rng, strip_max = v.selector(obj)
        strip = strip_max
        if "strip_prefix" in obj:
            if selector == "key":
                raise v.error("strip_prefix", "is allowed only on prefix and range entries")
            strip = v.integer("strip_prefix", obj["strip_prefix"])
            if strip > strip_max:
                raise v.error(
                    "strip_prefix", f"{strip} exceeds {strip_max}, the length of the prefix every selected key shares"
                )
        target = v.target(obj)
        for name in ("data", "json", "offset", "length"):
            if name in obj and selector != "key":
                raise v.error(name, "is allowed only on exact-key entries")
        for name in ("offset", "length"):
            if name in obj and target != "path":
                raise v.error(name, "a byte window needs a path target")
        path = obj.get("path")
        pins = None
        if "etag" in obj or "version" in obj or "sha256" in obj:
            pins = v.pins(obj, selector, target, path)
        data: bytes | None = None
        if target == "data":
            data = v.base64("data", obj["data"])
        elif target == "json":
            data = v.json("json", obj["json"])
        return cls(
            selector=selector,
            range=rng,
            strip=strip if selector != "key" else 0,
            target=target,
            path=path,
            offset=v.integer("offset", obj["offset"]) if "offset" in obj else None,
            length=v.integer("length", obj["length"]) if "length" in obj else None,
            data=data,
            pins=pins,
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as a canonical JSON object (defaults left out)."""
        out: dict[str, Any] = {}
        if self.selector == "key":
            out["key"] = self.range.min
        elif self.selector == "prefix":
            out["prefix"] = self.range.min
            if self.strip != len(self.range.min):
                out["strip_prefix"] = self.strip
        else:
            if self.range.min or self.range.max is None:  # an entry needs one bound
                out["min"] = self.range.min
            if self.range.max is not None:
                out["max"] = self.range.max
            if self.strip != range_common_prefix_length(*self.range):
                out["strip_prefix"] = self.strip
        if self.target in ("path", "absent"):
            out["path"] = self.path
            if self.offset is not None:
                out["offset"] = self.offset
            if self.length is not None:
                out["length"] = self.length
            if self.pins is not None:
                out.update(self.pins.to_json())
        elif self.target == "data":
            assert self.data is not None
            out["data"] = base64.b64encode(self.data).decode("ascii")
        else:
            assert self.data is not None
            out["json"] = orjson.loads(self.data)
        return out


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_Path = tuple["_Path", str] | None  # a JSON Pointer as a linked list, rendered only for an error


def _inexact_number(value: object) -> str | None:
    """What is wrong with the first number in ``value`` that JSON text cannot carry exactly.

    That is an integer outside ``JSON_INT_MIN .. JSON_INT_MAX`` or a float that is
    not finite (NaN, +-Infinity), anywhere in nested objects and arrays, searched
    depth first in document order; the reason names it and its JSON Pointer.
    ``None`` if there is none. Each container is visited once, so a shared or even
    a cyclic structure (which the serialiser refuses anyway) ends.
    """
    seen: set[int] = set()
    stack: list[tuple[object, _Path]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                name = _NON_FINITE.get(item, "NaN")
                return f"number {name}{_pointer(path)} is not finite (JSON has no NaN or Infinity)"
        elif isinstance(item, int) and not isinstance(item, bool):
            if not JSON_INT_MIN <= item <= JSON_INT_MAX:
                # str() of a very long integer is slow (and refused past 4300 digits).
                text = str(item) if item.bit_length() <= 256 else f"of {item.bit_length()} bits"
                return f"integer {text}{_pointer(path)} is outside the 64-bit range kvmap keeps exactly"
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            members = item.items() if isinstance(item, dict) else enumerate(item)
            children = [(v, (path, _member_name(k))) for k, v in members]
            stack.extend(reversed(children))
    return None


def _depth(value: object) -> int:
    """How deep lists and dicts nest in ``value`` (a scalar: 0); iterative, so any depth is fine."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _member_name(name: object) -> str:
    """A member name or index as text for a JSON Pointer in an error message: whatever it is (a
    dict key may be a 10,000-digit integer, whose str() Python refuses)."""
    if isinstance(name, str):
        return name
    if isinstance(name, int) and name.bit_length() > 256:
        return f"<integer of {name.bit_length()} bits>"
    try:
        return str(name)
    except (ValueError, RecursionError):
        return f"<{type(name).__name__}>"


def _pointer(path: _Path) -> str:
    """`` at /a/0`` for a member inside the value (RFC 6901 escaping), ``""`` for the value itself."""
    parts = []
    while path is not None:
        path, name = path
        parts.append(name.replace("~", "~0").replace("/", "~1"))
    return f" at /{'/'.join(reversed(parts))}" if parts else ""


class _Validator:
    """Checks the members of one entry and builds errors that name it."""

    __slots__ = ("index", "manifest")

    def __init__(self, manifest: str | None, index: int) -> None:
        self.manifest = manifest
        self.index = index

    def error(self, field: str | None, reason: str) -> ManifestError:
        return ManifestError(reason, manifest=self.manifest, entry=self.index, field=field)

    def text(self, field: str, value: object) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, not {_json_type(value)}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise self.error(field, "holds a lone surrogate (not valid Unicode)") from None
        return value

    def integer(self, field: str, value: object) -> int:
        # bool is a subclass of int, and JSON true is not a number.
        if type(value) is not int:
            raise self.error(field, f"must be an integer, not {_json_type(value)}")
        if not 0 <= value <= MAX_INT:
            # str() of a very long integer is slow (and refused past 4,300 digits).
            shown = str(value) if value.bit_length() <= 256 else f"an integer of {value.bit_length()} bits"
            raise self.error(field, f"must be between 0 and 2**53-1, not {shown}")
        return value

    def base64(self, field: str, value: object) -> bytes:
        text = self.text(field, value)
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise self.error(field, f"is not valid base64 ({exc})") from None

    def json(self, field: str, value: object) -> bytes:
        """The compact JSON text of ``value``; raise if it is not a JSON value or holds
        a number that JSON text cannot carry exactly (see :func:`_inexact_number`)."""
        try:
            text = orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            # orjson refuses integers beyond 64 bits; name the number if that was the reason.
            raise self.error(field, _inexact_number(value) or f"is not a JSON value ({exc})") from None
        # orjson writes NaN and +-Infinity as null, so only a value whose text holds a
        # null can hold one: the common case costs no walk over the value.
        if b"null" in text:
            problem = _inexact_number(value)
            if problem is not None:
                raise self.error(field, problem)
        # Only a text with that many brackets can nest that deep: the common case costs no walk.
        if text.count(b"[") + text.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
            raise self.error(
                field, f"nests deeper than {MAX_JSON_DEPTH} levels (a manifest holding it could not be saved)"
            )
        return text

    def pins(self, obj: dict[str, Any], selector: Selector, target: Target, path: object) -> Pins:
        """The pins of an entry that has at least one: strings (``sha256`` 64 lower-case hex
        digits), only on an exact entry whose target is one object (a URL without adapters)."""
        for name in PIN_FIELDS:
            if name not in obj:
                continue
            if selector != "key":
                raise self.error(name, "is allowed only on exact-key entries (a pin names one object)")
            if target != "path":
                raise self.error(name, "a pin needs a path target (a URL, not null, data or json)")
            assert isinstance(path, str)
            if "|" in path:
                raise self.error(name, "a pin names one object: not allowed on a path with adapters ('|')")
            value = self.text(name, obj[name])
            if not value:
                raise self.error(name, "must not be empty")
            if name == "sha256" and (len(value) != 64 or not _HEX.issuperset(value)):
                raise self.error(name, "must be 64 lower-case hexadecimal digits (a SHA-256 digest)")
        return Pins(obj.get("etag"), obj.get("version"), obj.get("sha256"))

    def selector(self, obj: dict[str, Any]) -> tuple[Selector, KeyRange, int]:
        """Return the selector kind, its key range, and the largest allowed strip."""
        present = [name for name in _SELECTOR_FIELDS if name in obj]
        kinds = {"min": "range", "max": "range"}
        seen: list[str] = []
        for name in present:
            self.text(name, obj[name])
            kind = kinds.get(name, name)
            if seen and kind not in seen:
                raise self.error(name, f"an entry has exactly one selector; it already has {seen[0]!r}")
            if kind not in seen:
                seen.append(kind)
        if not seen:
            raise self.error(None, "an entry needs a selector: 'key', 'prefix', or 'min'/'max'")
        if seen[0] == "key":
            key = obj["key"]
            return "key", KeyRange(key, key_successor(key)), 0
        if seen[0] == "prefix":
            rng = prefix_range(obj["prefix"])
            return "prefix", rng, len(obj["prefix"])
        lo: str = obj.get("min", "")
        hi: str | None = obj.get("max")
        if hi is not None and hi <= lo:
            raise self.error("max", f"the range [{lo!r}, {hi!r}) is empty: max must be greater than min")
        return "range", KeyRange(lo, hi), range_common_prefix_length(lo, hi)

    def target(self, obj: dict[str, Any]) -> Target:
        present = [name for name in _TARGET_FIELDS if name in obj]
        if not present:
            raise self.error(None, "an entry needs a target: 'path' (a URL or null), 'data' or 'json'")
        if len(present) > 1:
            raise self.error(present[1], f"an entry has exactly one target; it already has {present[0]!r}")
        name = present[0]
        if name == "path":
            path = obj["path"]
            if path is None:
                return "absent"
            self.text("path", path)
            return "path"
        return "data" if name == "data" else "json"
