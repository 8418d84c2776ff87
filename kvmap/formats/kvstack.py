"""tensorstore ``kvstack`` JSON specs as kvmap manifests, and kvmap manifests as ``kvstack`` specs.

A kvstack spec (tensorstore 0.1.86) stacks *layers* onto a key space; the last layer that
selects a key wins, as in kvmap::

    {"driver": "kvstack", "layers": [
        {"base": "file:///data/a.zarr/", "prefix": "temp/", "strip_prefix": 5},
        {"base": {"driver": "gcs", "bucket": "b", "path": "meta.json"}, "exact": "zarr.json"}]}

A layer selects one ``exact`` key, a ``prefix``, a range ``[inclusive_min, exclusive_max)``
(a missing bound is open) or, with no key member, every key. Key ``k`` of the layer reads
``base.path + k[strip_prefix:]`` from the base kvstore: plain concatenation, and
``strip_prefix`` counts UTF-8 **bytes** (kvmap's counts code points).

>>> m = from_kvstack({"driver": "kvstack", "layers": [
...     {"base": "file:///d/a%20b/", "prefix": "c/"},
...     {"base": {"driver": "s3", "bucket": "bkt", "path": "z.json"}, "exact": "zarr.json"}]})
>>> [e.to_json() for e in m.entries]
[{'prefix': 'c/', 'path': 'file:///d/a%20b/'}, {'key': 'zarr.json', 'path': 's3://bkt/z.json'}]
>>> to_kvstack(m)["layers"][1]  # layer 0 keeps tensorstore from stretching c/ up to zarr.json
{'base': {'driver': 'file', 'path': '/d/a b/'}, 'prefix': 'c/', 'strip_prefix': 2}

Decisions (each one is tested in ``tests/test_kvstack_format.py``):

**Bases.** These kvstores map onto kvmap root URLs, both ways:

========================================================  =======================================
tensorstore base                                          kvmap URL
========================================================  =======================================
``{"driver": "file", "path": P}``, ``file:///P``          ``file:///P`` (``P`` percent-encoded)
``{"driver": "memory", "path": P}``, ``memory://P``       ``memory://P``
``{"driver": "gcs"|"gcs_grpc", "bucket": B, "path": P}``  ``gs://B/P``
``{"driver": "s3", "bucket": B, "path": P}``              ``s3://B/P``
``... "s3", "endpoint": "http(s)://H" ...``               ``s3+http(s)://H/B/P``
``{"driver": "http", "base_url": U, "path": P}``          ``U`` joined with ``P`` as tensorstore does
``{"driver": "kvstack", ...}`` (nested)                   its layers, composed into the outer ones
========================================================  =======================================

A tensorstore ``path`` is plain text (``/a/b c``) where a kvmap URL is percent-encoded
(``file:///a/b%20c``); the key remainder kvmap appends is percent-encoded (spec 5.2) and decodes
to the bytes tensorstore appends. ``file`` paths are normalised as tensorstore normalises them
(``//``, ``.``, ``..`` and ``\\`` as a separator) and a relative one is taken against the process's
working directory, as tensorstore takes it. ``memory`` is mapped by its text only: tensorstore's
memory store and kvmap's named in-process stores are different stores. Client settings in a base
(concurrency, retries, credentials, region, ``context``...) are dropped: kvmap takes them from the
caller. ``headers``, ``host_header``, adapters (``zip``, ``ocdbt``, URL pipelines ``a|b:``) and
other drivers are refused with :class:`~kvmap.ConvertError`. Azure (``az://``) has no tensorstore
driver and is refused by :func:`to_kvstack`.

**Strip lengths.** :func:`from_kvstack` converts each byte count to code points and refuses
(``ConvertError``, field ``strip_prefix``) a count that would split a character. A layer without
``strip_prefix`` takes tensorstore's own default, its ``LongestPrefix`` of the layer's byte range,
reproduced exactly, bug included (defect D2): for ``[c/0, c/10)`` it is 3 bytes, so ``c/0`` and
``c/1`` both read ``base.path``. kvmap cannot strip 3 from a range whose keys share only ``c/``,
so such a layer becomes two entries with the same effect: prefix ``c/0`` and range
``[c/1, c/10)``, each stripping 3. An ``exact`` layer's default strip is its whole key: the key
reads ``base.path`` itself (an explicit smaller strip appends the rest of the key).
:func:`to_kvstack` writes every ``strip_prefix``, in bytes, and writes a range that is a prefix
as a ``prefix`` layer (so tensorstore computes its byte bounds). A range ending where a prefix
ends (``[Qx, succ(Q))``) whose strip tensorstore would refuse (its byte-level ``LongestPrefix``
is shorter when the last character of ``Q`` ends in byte ``0x7F``/``0xBF`` or is U+10FFFF) is
written as the range ``[Qx, Q + U+10FFFF)`` and the prefix ``Q + U+10FFFF``, which select the
same keys.

**Gaps (defect D1).** tensorstore builds its table of pieces layer by layer, and setting a layer
whose first key no earlier layer selects, while a smaller key is, stretches the piece before it
up to that key (exact ``x`` then exact ``y``: ``xk`` reads ``x``'s base). Before that it drops
the layers that later ones cover (``PruneCoveredLayers``), which changes the order the others are
set in. :func:`to_kvstack` replays both passes over the layers it writes (``_PieceMap`` is
tensorstore's ``KeyRangeMap`` transcribed, defect included) and where a key ends up selected that
no layer selects, and only there, puts one layer under everything whose base is
:data:`EMPTY_KVSTORE`: then every layer's first key is selected by an earlier one and nothing
stretches. Bounds compare as code points, so a byte-level gap that holds no valid UTF-8 key
(after a prefix's last byte, before its successor) does not count. Past 20,000 layers it adds the
layer without replaying (it costs one layer). :func:`from_kvstack` reads a spec as its
documentation says (the layers' ranges as written), not as the defect stretches it: where
tensorstore reads a key in such a gap from the stretched layer, kvmap says the key does not exist.

**Nothing.** :data:`EMPTY_KVSTORE` is a kvstack whose only layer selects the empty range: every
read finds nothing and every write is refused ("Key not found in any layers"), as kvmap treats a
key no entry selects. (A ``memory`` store would take writes; zero layers crash tensorstore,
defect D4.) So **whiteouts are expressible**: a whiteout entry becomes a layer onto
:data:`EMPTY_KVSTORE`, and a manifest of zero entries becomes a spec of that one layer. Reading a
nested kvstack composes its layers into the outer layer's, so :func:`from_kvstack` turns those
layers back into whiteouts.

**Refused by to_kvstack** (``ConvertError`` naming the entry and field): byte windows
(``offset``, ``length``), inline values (``data``, ``json``), URL pipelines and URLs tensorstore
has no driver for, or whose ``file`` path tensorstore's file driver refuses (field ``path``).
Relative paths are resolved against ``manifest.url`` first, so the spec stands alone.

**What stays different.** A missing object behind an exact entry reads as missing in tensorstore
(kvmap: a dangling reference, an error); tensorstore's file driver refuses keys with an empty,
``.`` or ``..`` segment or a trailing ``/``; and an opened kvstack may fail to write itself out
(``spec().to_json()``) where its internal byte bounds are not UTF-8 (defect D7).
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple
from urllib.parse import unquote

from kvmap._gcpause import paused_gc
from kvmap.entries import Entry
from kvmap.errors import ConvertError, InvalidKeyError, ManifestError
from kvmap.keyrange import MAX_CODE_POINT, KeyRange, key_successor, prefix_range, prefix_successor
from kvmap.keyrange import range_common_prefix_length as _common_length
from kvmap.manifest import Manifest
from kvmap.url import PIPELINE_SEPARATOR, encode_remainder, resolve_target

__all__ = ["EMPTY_KVSTORE", "from_kvstack", "to_kvstack"]

#: A kvstore that holds nothing and refuses writes: a kvstack whose one layer selects the
#: empty range ``["empty", "empty")``. :func:`to_kvstack` puts whiteouts and gaps onto it.
EMPTY_KVSTORE: Final[Mapping[str, Any]] = {
    "driver": "kvstack",
    "layers": [{"base": {"driver": "memory"}, "inclusive_min": "empty", "exclusive_max": "empty", "strip_prefix": 0}],
}

_ALL = KeyRange("", None)
_MAX_CHAR = chr(MAX_CODE_POINT)
_SPEC_MEMBERS = frozenset(("driver", "layers", "path", "context"))
_LAYER_MEMBERS = ("base", "strip_prefix", "exact", "prefix", "inclusive_min", "exclusive_max")
# tensorstore's jb::AtMostOne("prefix", "exact", "inclusive_min") and (..., "exclusive_max").
_EXCLUSIVE = (("prefix", "exact", "inclusive_min"), ("prefix", "exact", "exclusive_max"))
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(//([^/?#]*))?([^?#]*)(\?[^#]*)?(#.*)?\Z", re.S)
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*\Z")
# An empty, "." or ".." segment, a backslash, a NUL or a lock file: not a path tensorstore keeps as is.
_ABNORMAL_PATH = re.compile(r"//|\\|\x00|\.__lock|(?:^|/)\.\.?(?:/|$)")
_NEEDS_PARSING = re.compile(r"[%?#\\]")
# The members tensorstore 0.1.86 accepts in each kvstore spec it maps (it refuses others).
_COMMON = "driver path context "
_DRIVER_MEMBERS = {
    driver: frozenset((_COMMON + members).split())
    for driver, members in {
        "file": "file_io_concurrency file_io_locking file_io_mode file_io_retries file_io_sync",
        "memory": "atomic memory_key_value_store",
        "gcs": "bucket data_copy_concurrency gcs_request_concurrency gcs_request_retries gcs_user_project"
        " experimental_gcs_rate_limiter",
        "gcs_grpc": "bucket data_copy_concurrency endpoint experimental_gcs_grpc_credentials gcs_request_retries"
        " gcs_user_project num_channels timeout",
        "s3": "aws_credentials aws_region bucket data_copy_concurrency endpoint host_header requester_pays"
        " s3_request_concurrency s3_request_retries use_conditional_write experimental_s3_rate_limiter",
        "http": "base_url data_copy_concurrency headers http_request_concurrency http_request_retries",
    }.items()
}
_PLAIN_BUCKET_MEMBERS = frozenset(("driver", "bucket", "path"))
_RESERVED = frozenset(":/?#[]@!$&'()*+,;=")
# The gap check replays tensorstore's table with list inserts (quadratic at worst: ~1 s here at
# this many layers); past it, the one layer it might save is not worth the time.
_GAP_CHECK_LIMIT = 20_000


# -- from tensorstore ------------------------------------------------------------------------------


class _Rule(NamedTuple):
    """Keys ``range`` of a key space go to ``url + encode(key[strip:])`` (``exact``: to ``url``
    itself, and ``range`` is one key); ``url`` ``None``: they do not exist."""

    range: KeyRange
    exact: bool
    strip: int
    url: str | None


class _Where(NamedTuple):
    """Where in the spec a problem is: top-level layer ``entry``, and the members leading from
    that layer to the offending object (``("base", "layers", "2")``) for nested specs."""

    name: str | None
    entry: int | None = None
    trail: tuple[str, ...] = ()

    def error(self, field: str | None, reason: str, *, convert: bool = False) -> ManifestError:
        cls = ConvertError if convert else ManifestError
        if self.entry is not None and self.trail:
            inner = ".".join((*self.trail[1:], *((field,) if field is not None else ())))
            return cls(f"{inner}: {reason}" if inner else reason, manifest=self.name, entry=self.entry, field="base")
        return cls(reason, manifest=self.name, entry=self.entry, field=field)

    def layer(self, index: int) -> _Where:
        if self.entry is None:
            return _Where(self.name, index)
        return _Where(self.name, self.entry, (*self.trail, "layers", str(index)))

    def base(self) -> _Where:
        return _Where(self.name, self.entry, (*self.trail, "base"))


def from_kvstack(
    spec: Mapping[str, Any] | Sequence[Any], url: str | None = None, *, name: str | None = None
) -> Manifest:
    """The :class:`~kvmap.Manifest` that maps every key as the tensorstore kvstack ``spec`` does.

    ``spec`` is the parsed JSON of a kvstack kvstore spec (``{"driver": "kvstack", "layers":
    [...]}``, with an optional ``path``) or its bare ``layers`` array. Each layer becomes one
    entry or a few (in order, so later layers still win); the module docstring says how bases,
    byte strip lengths and nested kvstacks translate. ``url`` is the manifest's URL (every path
    in the result is absolute). A spec that breaks tensorstore's rules (for layers and for the
    kvstores kvmap maps) raises :class:`~kvmap.ManifestError`, checked in every layer before a
    :class:`~kvmap.ConvertError` is raised for what kvmap cannot express (a strip that splits a
    character, a driver it does not map, headers). Both name the layer (``entry``, its index)
    and the member (``field``: ``base`` for anything inside the base, the reason saying where).

    >>> import kvmap
    >>> m = from_kvstack([{"base": "memory://d/", "inclusive_min": "c/0", "exclusive_max": "c/10"}])
    >>> cm = kvmap.compile(m)  # tensorstore's default strip here is 3 bytes (defect D2)
    >>> [cm.resolve(k).url for k in ("c/0", "c/05", "c/1")]
    ['memory://d/', 'memory://d/5', 'memory://d/']
    """
    name = name if name is not None else url
    where = _Where(name)
    with paused_gc():  # millions of small objects and no cycles
        if isinstance(spec, Mapping):
            rules = _kvstack_rules(spec, where)
        elif isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
            rules = _layers_rules(spec, where)
        else:
            raise ManifestError(
                f"a kvstack spec is a JSON object or a layers array, not {type(spec).__name__}", manifest=name
            )
        entries = [_rule_json(r) for r in rules]
    return Manifest.from_json(entries, url, name=name)


def _kvstack_rules(spec: Mapping[str, Any], where: _Where) -> list[_Rule]:
    """The rules of a kvstack spec object over its own key space (its ``path`` applied)."""
    if spec.get("driver") != "kvstack":
        raise where.error("driver", f"a kvstack spec has driver 'kvstack', not {spec.get('driver')!r}")
    for member in spec:
        if member not in _SPEC_MEMBERS:
            raise where.error(str(member), "unknown member of a kvstack spec")
    layers = spec.get("layers")
    if not isinstance(layers, Sequence) or isinstance(layers, str | bytes):
        raise where.error("layers", "a kvstack spec needs a 'layers' array")
    path = _text(spec.get("path", ""), where, "path")
    rules = _layers_rules(layers, where)
    return _under_path(rules, path) if path else rules


def _layers_rules(layers: Sequence[Any], where: _Where) -> list[_Rule]:
    rules: list[_Rule] = []
    # A spec tensorstore refuses is a ManifestError wherever the problem is, so what kvmap cannot
    # express (ConvertError) is raised only once every layer has been checked.
    deferred: ConvertError | None = None
    for i, layer in enumerate(layers):
        if type(layer) is dict and type(key := layer.get("exact")) is str and "base" in layer:
            # The bulk shape, one exact key onto an object with its whole key stripped (the
            # default), reads the base itself. Anything unusual takes the general path below.
            size = len(layer)
            if size == 2 or (
                size == 3 and type(layer.get("strip_prefix")) is int and _whole(key, layer["strip_prefix"])
            ):
                url = _plain_base_url(layer["base"])
                if url is not None and (size == 3 or _is_utf8(key)):
                    rules.append(_Rule(KeyRange(key, key + "\x00"), True, 0, url))
                    continue
        at = where.layer(i)
        selections: list[tuple[KeyRange, bool, int]] | None = None
        try:
            selections = _selections(layer, at)
        except ConvertError as exc:
            deferred = deferred or exc
        try:
            base = _store_rules(layer["base"], at.base())
        except ConvertError as exc:
            deferred = deferred or exc
            continue
        for selected, exact, strip in selections or ():
            rules.extend(_compose(selected, exact, strip, base))
    if deferred is not None:
        raise deferred
    return rules


def _text(value: Any, where: _Where, field: str) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise where.error(field, f"{value!r} holds a lone surrogate, which is not UTF-8") from None
    return value


def _whole(key: str, strip: int) -> bool:
    """Whether ``strip`` is the UTF-8 length of ``key`` (which must be valid UTF-8 for that)."""
    try:
        return len(key.encode("utf-8")) == strip
    except UnicodeEncodeError:
        return False


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_base_url(base: Any) -> str | None:
    """The kvmap URL of a ``file``/``s3``/``gcs`` JSON base with a ``path`` already in
    tensorstore's normal form and nothing to check further, or ``None`` (then the general path
    decides). Same answer as :func:`_url_of_ts_spec`, for the common case, faster."""
    if type(base) is not dict:
        return None
    path = base.get("path", "")
    if type(path) is not str or not _is_utf8(path) or not _is_normal_path(path):
        return None
    driver = base.get("driver")
    if driver == "file" and len(base) == 2 and path.startswith("/"):
        return "file://" + encode_remainder(path)
    if driver in ("s3", "gcs") and base.keys() <= _PLAIN_BUCKET_MEMBERS:
        bucket = base.get("bucket")
        if type(bucket) is str and _BUCKET.match(bucket):
            return f"{'s3' if driver == 's3' else 'gs'}://{bucket}/{encode_remainder(path)}"
    return None


def _is_normal_path(path: str) -> bool:
    """Whether ``path`` has no empty, ``.`` or ``..`` segment (a leading and a trailing ``/``
    are allowed), no ``\\``, NUL or lock suffix: what tensorstore's file driver accepts and
    leaves as it is."""
    return _ABNORMAL_PATH.search(path) is None


def _strip_member(value: Any, where: _Where) -> int | None:
    if value is None:
        return None
    # tensorstore reads an unsigned integer, and accepts a float with an integral value.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise where.error("strip_prefix", f"must be a non-negative integer, not {value!r}")
    return value


def _selections(layer: Any, where: _Where) -> list[tuple[KeyRange, bool, int]]:
    """The keys one layer selects, as ``(range, exact, strip in code points)`` parts (none for
    an empty range; two for a range whose default strip tensorstore gets wrong, defect D2)."""
    if not isinstance(layer, Mapping):
        raise where.error(None, f"a layer is a JSON object, not {type(layer).__name__}")
    for member in layer:
        if member not in _LAYER_MEMBERS:
            raise where.error(str(member), "unknown member of a kvstack layer")
    if "base" not in layer:
        raise where.error("base", "a layer needs a 'base' kvstore")
    for group in _EXCLUSIVE:
        present = [m for m in group if m in layer]
        if len(present) > 1:
            raise where.error(present[1], f"at most one of {', '.join(map(repr, group))} is allowed in a layer")
    strip = _strip_member(layer.get("strip_prefix"), where)
    keys = {
        m: _text(layer[m], where, m)
        for m in ("exact", "prefix", "inclusive_min", "exclusive_max")
        if layer.get(m) is not None
    }
    if "exact" in keys:
        key = keys["exact"]
        raw = key.encode("utf-8")
        chars = _chars(key, raw, len(raw) if strip is None else strip, where, "exact")
        return [(KeyRange(key, key_successor(key)), True, chars)]
    if "prefix" in keys:
        prefix = keys["prefix"]
        raw = prefix.encode("utf-8")
        return [
            (prefix_range(prefix), False, _chars(prefix, raw, len(raw) if strip is None else strip, where, "prefix"))
        ]
    lo, hi = keys.get("inclusive_min", ""), keys.get("exclusive_max", "")
    if hi and lo > hi:
        raise where.error("exclusive_max", f"the range [{lo!r}, {hi!r}) is inverted")
    lo_b, hi_b = lo.encode("utf-8"), hi.encode("utf-8")
    longest = _longest_prefix(lo_b, hi_b)
    n = longest if strip is None else strip
    if n > longest:
        raise where.error("strip_prefix", f"{n} exceeds {longest}, the longest prefix of the range in bytes")
    if hi and lo == hi:
        return []  # selects nothing
    rng = KeyRange(lo, hi or None)
    chars = _chars(lo, lo_b, n, where, "inclusive_min")
    if chars <= _common_length(lo, rng.max):
        return [(rng, False, chars)]
    # Defect D2: the range [Qc, Q(c+1)R) holds keys starting Qc and keys starting Q(c+1), and
    # tensorstore strips len(Qc) bytes from both. Say so with one part for each.
    upper = hi_b[: len(lo_b)]
    if not (n == len(lo_b) < len(hi_b) and upper[:-1] == lo_b[:-1] and upper[-1] == lo_b[-1] + 1):
        raise where.error("strip_prefix", f"a strip of {n} bytes is longer than the prefix the keys of the range share")
    try:
        mid = upper.decode("utf-8")
    except UnicodeDecodeError:  # pragma: no cover - a valid UTF-8 bound has a whole prefix here
        raise where.error("strip_prefix", f"a strip of {n} bytes splits a character of {hi!r}", convert=True) from None
    return [(prefix_range(lo), False, len(lo)), (KeyRange(mid, hi), False, len(mid))]


def _chars(text: str, raw: bytes, n: int, where: _Where, field: str) -> int:
    """``n`` bytes of ``text`` (its UTF-8 ``raw``) in code points; refuse a count past its end
    (as tensorstore does) or inside a character (kvmap keys are characters)."""
    if n > len(raw):
        raise where.error("strip_prefix", f"{n} exceeds the {len(raw)} bytes of {field} {text!r}")
    try:
        return len(raw[:n].decode("utf-8"))
    except UnicodeDecodeError:
        raise where.error(
            "strip_prefix",
            f"a strip of {n} bytes splits a character of {text!r}: kvmap strips whole characters",
            convert=True,
        ) from None


def _longest_prefix(lo: bytes, hi: bytes) -> int:
    """tensorstore's ``LongestPrefix(KeyRange(lo, hi))`` (``hi`` empty: unbounded), exactly,
    including its defect D2 (``[c/0, c/10)`` gives 3: it checks the last byte against the
    shorter bound, not against ``hi``'s length)."""
    i = 0
    if not hi:
        while i < len(lo) and lo[i] == 0xFF:
            i += 1
        return i
    n = min(len(lo), len(hi))
    while i < n and lo[i] == hi[i]:
        i += 1
    if i + 1 == n and lo[i] != 0xFF and lo[i] + 1 == hi[i]:
        i += 1
        while i < len(lo) and lo[i] == 0xFF:
            i += 1
    return i


def _compose(selected: KeyRange, exact: bool, strip: int, base: list[_Rule]) -> list[_Rule]:
    """The rules of a layer selecting ``selected`` with ``strip`` (code points) onto a kvstore
    whose own rules are ``base``: key ``k`` reads base key ``k[strip:]``."""
    head = selected.min[:strip]
    if exact:
        rest = selected.min[strip:]
        winner = next((r for r in reversed(base) if r.range.contains(rest)), None)
        if winner is None or winner.url is None:
            return [_Rule(selected, True, 0, None)]
        url = winner.url if winner.exact else winner.url + encode_remainder(rest[winner.strip :])
        return [_Rule(selected, True, 0, url)]
    out: list[_Rule] = []
    full = [i for i, r in enumerate(base) if r.range == _ALL]
    if full:
        base = base[full[-1] :]  # everything before a rule over every key is shadowed
    else:
        out.append(_Rule(selected, False, 0, None))  # keys the base does not map do not exist
    for r in base:
        if r.exact:
            key = head + r.range.min
            if selected.contains(key):
                out.append(_Rule(KeyRange(key, key_successor(key)), True, 0, r.url))
            continue
        hi = head + r.range.max if r.range.max is not None else prefix_successor(head)
        part = selected.intersect(KeyRange(head + r.range.min, hi))
        if not part.is_empty():
            out.append(_Rule(part, False, strip + r.strip, r.url))
    return out


def _under_path(rules: list[_Rule], path: str) -> list[_Rule]:
    """Rules over the keys ``k`` of a kvstore opened with ``path``, which reads ``path + k``."""
    out: list[_Rule] = []
    cut = len(path)
    for r in rules:
        if r.exact:
            if r.range.min.startswith(path):
                key = r.range.min[cut:]
                out.append(_Rule(KeyRange(key, key_successor(key)), True, 0, r.url))
            continue
        part = r.range.intersect(prefix_range(path))
        if part.is_empty():
            continue
        rng = KeyRange(part.min[cut:], part.max[cut:] if part.max is not None and part.max.startswith(path) else None)
        if r.strip >= cut or r.url is None:
            out.append(_Rule(rng, False, max(r.strip - cut, 0), r.url))
        else:
            out.append(_Rule(rng, False, 0, r.url + encode_remainder(path[r.strip :])))
    return out


def _rule_json(rule: _Rule) -> dict[str, Any]:
    lo, hi = rule.range
    if rule.exact:
        return {"key": lo, "path": rule.url}
    if hi == prefix_successor(lo):
        out: dict[str, Any] = {"prefix": lo}
        default = len(lo)
    else:
        out = {"min": lo} if hi is None else {"min": lo, "max": hi}
        default = _common_length(lo, hi)
    if rule.url is not None and rule.strip != default:
        out["strip_prefix"] = rule.strip
    out["path"] = rule.url
    return out


# -- tensorstore kvstores as kvmap URLs -------------------------------------------------------------


def _store_rules(base: Any, where: _Where) -> list[_Rule]:
    """The rules of a layer's base over the base's own keys."""
    if isinstance(base, str):
        return [_Rule(_ALL, False, 0, _url_of_ts_url(base, where))]
    if not isinstance(base, Mapping):
        raise where.error(None, f"a kvstore is a URL or a JSON object, not {type(base).__name__}")
    if base.get("driver") == "kvstack":
        return _kvstack_rules(base, where)
    return [_Rule(_ALL, False, 0, _url_of_ts_spec(base, where))]


def _url_of_ts_url(url: str, where: _Where) -> str:
    """The kvmap URL prefix of a tensorstore kvstore URL (the URL forms its drivers parse)."""
    if PIPELINE_SEPARATOR in url:
        raise where.error(None, f"{url!r}: kvstore adapters (URL pipelines) are not supported", convert=True)
    m = _URL.match(url)
    if m is None or m.group(2) is None:
        raise where.error(None, f"{url!r} is not a kvstore URL (scheme://...)")
    scheme, authority, path = m.group(1).lower(), m.group(3), m.group(4)
    if m.group(5) is not None or m.group(6) is not None:
        raise where.error(None, f"{url!r}: tensorstore kvstore URLs have no query or fragment")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise where.error(None, f"{url!r}: a file URL names no host")
        if not path.startswith("/"):
            raise where.error(None, f"{url!r}: a file URL needs an absolute path")
        return _file_url(_normalize_os_path(_decoded(path, url, where)))
    if scheme == "memory":
        return "memory://" + _encoded(_decoded(authority + path, url, where), where)
    if scheme in ("gs", "s3"):
        decoded = _decoded(path[1:], url, where)
        return _bucket_url(scheme, _bucket(authority, where), decoded, where)
    if scheme in ("http", "https"):
        return _http_url(url, "", where)
    raise where.error(
        None, f"{url!r}: kvmap maps tensorstore's file, memory, gs, s3 and http(s) URLs only", convert=True
    )


def _url_of_ts_spec(spec: Mapping[str, Any], where: _Where) -> str:
    """The kvmap URL prefix of a tensorstore kvstore JSON spec (no kvstack)."""
    driver = spec.get("driver")
    if not isinstance(driver, str):
        raise where.error("driver", "a kvstore spec needs a 'driver' string")
    known = _DRIVER_MEMBERS.get(driver)
    if known is None:
        raise where.error("driver", f"kvmap does not map tensorstore's {driver!r} kvstore", convert=True)
    for member in spec:
        if member not in known:
            raise where.error(str(member), f"unknown member of a {driver!r} kvstore spec")
    path = _text(spec.get("path", ""), where, "path")
    if driver == "file":
        return _file_url(_file_spec_path(path, where))
    if driver == "memory":
        return "memory://" + _encoded(path, where)
    if driver in ("gcs", "gcs_grpc", "s3"):
        bucket = _bucket(_text(spec.get("bucket", ""), where, "bucket"), where)
        if driver != "s3":
            if spec.get("endpoint") not in (None, ""):
                raise where.error("endpoint", "a GCS endpoint has no kvmap URL (gs://)", convert=True)
            return _bucket_url("gs", bucket, path, where)
        if spec.get("host_header") not in (None, ""):
            raise where.error("host_header", "an S3 host header has no kvmap URL", convert=True)
        endpoint = spec.get("endpoint")
        if endpoint in (None, ""):
            return _bucket_url("s3", bucket, path, where)
        m = _URL.match(_text(endpoint, where, "endpoint"))
        if m is None or m.group(1).lower() not in ("http", "https") or not m.group(3) or m.group(4) not in ("", "/"):
            raise where.error(
                "endpoint", f"{endpoint!r}: kvmap maps an S3 endpoint http(s)://host[:port] only", convert=True
            )
        if m.group(5) is not None or m.group(6) is not None:
            raise where.error("endpoint", f"{endpoint!r} has a query or fragment")
        return f"s3+{m.group(1).lower()}://{m.group(3)}/{bucket}/{_encoded(path, where)}"
    if spec.get("headers"):  # driver "http"
        raise where.error(
            "headers", "HTTP headers are client options: pass them to kvmap, not in the manifest", convert=True
        )
    return _http_url(_text(spec.get("base_url", ""), where, "base_url"), path, where)


def _decoded(text: str, url: str, where: _Where) -> str:
    try:
        return unquote(text, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise where.error(None, f"{url!r}: a percent-escape is not UTF-8") from None


def _encoded(text: str, where: _Where) -> str:
    try:
        return encode_remainder(text)
    except InvalidKeyError as exc:
        raise where.error("path", str(exc)) from None


def _bucket(bucket: str, where: _Where) -> str:
    if not _BUCKET.match(bucket):
        raise where.error("bucket", f"{bucket!r} is not a bucket name")
    return bucket


def _bucket_url(scheme: str, bucket: str, path: str, where: _Where) -> str:
    return f"{scheme}://{bucket}/{_encoded(path, where)}"


def _file_url(path: str) -> str:
    return "file://" + encode_remainder(path)


def _normalize_os_path(path: str) -> str:
    """tensorstore's ``LexicalNormalizePath`` (POSIX): ``/`` and ``\\`` separate, duplicate
    separators and ``.`` go, ``..`` removes the segment before it, a trailing separator stays."""
    if _is_normal_path(path):
        return path
    absolute = path[0] in "/\\"
    parts = re.split(r"[/\\]", path)
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not absolute:
                out.append("..")
            continue
        out.append(part)
    text = ("/" if absolute else "") + "/".join(out)
    if out and parts[-1] in ("", ".", ".."):
        text += "/"
    return text


def _file_spec_path(path: str, where: _Where) -> str:
    """The absolute OS path of a ``file`` spec's ``path``: tensorstore's checks and
    normalisation, and a relative path taken against the working directory, as it does."""
    if not _ts_file_path_valid(path):
        raise where.error("path", f"tensorstore's file driver refuses the path {path!r}")
    path = _normalize_os_path(path)
    if not path.startswith("/"):
        cwd = os.getcwd().rstrip("/")
        path = f"{cwd}/{path}"
    return path


def _ts_file_path_valid(path: str) -> bool:
    """tensorstore's ``IsFileKvstorePathValid``: ``""``, ``/``, or non-empty segments that are
    not ``.``/``..`` and do not end in ``.__lock``, with an optional trailing separator."""
    if _is_normal_path(path):
        return True
    if path[-1] in "/\\":
        path = path[:-1]
    if "\0" in path or not path:
        return False
    if path[0] in "/\\":
        path = path[1:]
    return all(part not in ("", ".", "..") and not part.endswith(".__lock") for part in re.split(r"[/\\]", path))


def _http_url(base_url: str, path: str, where: _Where) -> str:
    """The URL tensorstore's ``http`` driver reads for ``base_url`` and ``path`` (its
    ``NormalizeSpec``: the base URL's decoded path, then ``path`` appended as a segment)."""
    m = _URL.match(base_url)
    if m is None or m.group(1).lower() not in ("http", "https") or not m.group(3):
        raise where.error("base_url", f"{base_url!r} is not an http(s) URL")
    if m.group(5) is not None or m.group(6) is not None:
        raise where.error("base_url", f"{base_url!r}: kvmap URLs have no query or fragment", convert=True)
    raw = m.group(4)
    if any(unquote(e) in _RESERVED for e in re.findall(r"%[0-9A-Fa-f]{2}", raw)):
        raise where.error(
            "base_url", f"{base_url!r}: an escaped reserved character in the path is not supported", convert=True
        )
    suffix = _decoded(raw, base_url, where)
    if not path or path == "/":
        full = suffix
    elif not path.startswith("/"):
        full = suffix + path if not suffix or suffix.endswith("/") else f"{suffix}/{path}"
    elif suffix in ("", "/"):
        full = path
    else:
        raise where.error("path", f"an absolute path {path!r} with a base URL that has a path {base_url!r}")
    if not full.startswith("/"):
        full = "/" + full
    return f"{m.group(1).lower()}://{m.group(3)}{_encoded(full, where)}"


# -- to tensorstore --------------------------------------------------------------------------------


def to_kvstack(manifest: Manifest) -> dict[str, Any]:
    """The tensorstore kvstack spec that reads every key as ``manifest`` resolves it.

    One layer per entry in entry order (a few for a range tensorstore cannot bound like kvmap),
    every ``strip_prefix`` written in UTF-8 bytes, each URL resolved against ``manifest.url`` and
    written as a kvstore JSON spec; whiteouts, and the gaps tensorstore would stretch a layer over
    (defect D1), are layers onto :data:`EMPTY_KVSTORE` (module docstring). Raises
    :class:`~kvmap.ConvertError` naming the entry and the field for what kvstack cannot express:
    a byte window (``offset``, ``length``), inline bytes (``data``, ``json``), or a ``path`` that
    is a URL pipeline, has a scheme tensorstore has no driver for, or a ``file`` path
    tensorstore's file driver refuses. Pins (``etag``, ``version``, ``sha256``; spec 3.4) are
    dropped: a kvstack layer has no field for them, so tensorstore does not check them.

    >>> m = Manifest.from_json([{"key": "x", "path": "s3://bkt/x"}, {"key": "y", "path": None}])
    >>> spec = to_kvstack(m)
    >>> [sorted(layer) for layer in spec["layers"]]  # a layer under everything, then x and y
    [['base', 'strip_prefix'], ['base', 'exact', 'strip_prefix'], ['base', 'exact', 'strip_prefix']]
    >>> spec["layers"][1]
    {'base': {'driver': 's3', 'bucket': 'bkt', 'path': 'x'}, 'exact': 'x', 'strip_prefix': 1}
    """
    with paused_gc():  # millions of small objects and no cycles
        return _to_kvstack(manifest)


def _to_kvstack(manifest: Manifest) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    ranges: list[KeyRange] = []
    specs: dict[str, dict[str, Any]] = {}  # URL -> base spec, for URLs that repeat
    # The raw entries of a validated manifest (an Entry for each costs more than the layer).
    for i, raw in enumerate(manifest.to_json()["entries"]):
        path = raw.get("path")
        if len(raw) == 2 and type(path) is str and type(raw.get("key")) is str:
            key = raw["key"]
            url = resolve_target(manifest.url, path)
            base = specs.get(url)
            if base is None:
                base = _ts_spec_of_url(url, _refuser(manifest, i))
                if len(specs) < 4096:
                    specs[url] = base
            ranges.append(KeyRange(key, key + "\x00"))
            layers.append({"base": dict(base), "exact": key, "strip_prefix": _nbytes(key)})
            continue
        entry = Entry.from_json(raw, i, manifest.name)
        for rng, layer in _entry_layers(entry, i, manifest):
            ranges.append(rng)
            layers.append(layer)
    if not layers or _stretches(ranges):
        layers.insert(0, {"base": _empty(), "strip_prefix": 0})
    return {"driver": "kvstack", "layers": layers}


def _empty() -> dict[str, Any]:
    return {"driver": "kvstack", "layers": [dict(layer) for layer in EMPTY_KVSTORE["layers"]]}


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _entry_layers(entry: Entry, index: int, manifest: Manifest) -> list[tuple[KeyRange, dict[str, Any]]]:
    """The layers of one entry, each with the keys it selects (code points)."""

    refuse = _refuser(manifest, index)
    if entry.target in ("data", "json"):
        raise refuse(entry.target, "kvstack has no inline values")
    for field in ("offset", "length"):
        if getattr(entry, field) is not None:
            raise refuse(field, "kvstack has no byte windows")
    if entry.target == "absent":
        base: dict[str, Any] = _empty()
    else:
        assert entry.path is not None
        url = resolve_target(manifest.url, entry.path)
        base = _ts_spec_of_url(url, refuse)
    whiteout = entry.target == "absent"
    lo, hi = entry.range
    if entry.selector == "key":
        strip = 0 if whiteout else _nbytes(lo)
        return [(entry.range, {"base": base, "exact": lo, "strip_prefix": strip})]
    strip = 0 if whiteout else _nbytes(lo[: entry.strip])
    if hi == prefix_successor(lo):  # a prefix: tensorstore bounds it in bytes itself
        return [(entry.range, {"base": base, "prefix": lo, "strip_prefix": strip})]
    if _longest_prefix(lo.encode("utf-8"), (hi or "").encode("utf-8")) >= strip:
        return [(entry.range, _range_layer(base, entry.range, strip))]
    # [Qx, succ(Q)) whose byte-level LongestPrefix is shorter than Q (Q's last character ends
    # in 0x7F/0xBF or is U+10FFFF): [Qx, Q + U+10FFFF) and the prefix Q + U+10FFFF, whose
    # bounds both start with Q. If lo itself starts with Q + U+10FFFF, go one character deeper.
    head = lo[: entry.strip]
    if hi != prefix_successor(head):  # pragma: no cover - LongestPrefix falls short only there
        raise refuse("strip_prefix", f"tensorstore cannot strip {strip} bytes from the range [{lo!r}, {hi!r})")
    while True:
        top = head + _MAX_CHAR
        if lo == top or not lo.startswith(top):
            break
        head = top
    parts: list[tuple[KeyRange, dict[str, Any]]] = []
    if lo < top:
        parts.append((KeyRange(lo, top), _range_layer(base, KeyRange(lo, top), strip)))
    parts.append((prefix_range(top), {"base": base, "prefix": top, "strip_prefix": strip}))
    return parts


def _refuser(manifest: Manifest, index: int) -> Callable[[str, str], ConvertError]:
    def refuse(field: str, reason: str) -> ConvertError:
        return ConvertError(reason, manifest=manifest.name, entry=index, field=field)

    return refuse


def _range_layer(base: dict[str, Any], rng: KeyRange, strip: int) -> dict[str, Any]:
    layer: dict[str, Any] = {"base": base}
    if rng.min:
        layer["inclusive_min"] = rng.min
    if rng.max is not None:
        layer["exclusive_max"] = rng.max
    layer["strip_prefix"] = strip
    return layer


def _ts_spec_of_url(url: str, refuse: Callable[[str, str], ConvertError]) -> dict[str, Any]:
    """The tensorstore kvstore JSON spec whose ``path`` plus a key remainder names the object
    that ``url`` plus the encoded remainder names in kvmap."""
    if PIPELINE_SEPARATOR in url:
        raise refuse("path", f"{url!r} is a URL pipeline, which kvstack cannot express")
    return _plain_ts_spec(url) or _parsed_ts_spec(url, refuse)


def _plain_ts_spec(url: str) -> dict[str, Any] | None:
    """:func:`_ts_spec_of_url` for a ``file``, ``s3`` or ``gs`` URL with nothing to decode or
    check (``None`` otherwise): the bulk case, without the general parse."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("file", "s3", "gs") or _NEEDS_PARSING.search(rest):
        return None
    authority, slash, tail = rest.partition("/")
    path = slash + tail
    if scheme == "file":
        if authority not in ("", "localhost") or not _is_normal_path(path or "/"):
            return None
        return {"driver": "file", "path": path or "/"}
    spec: dict[str, Any] = {"driver": "gcs" if scheme == "gs" else "s3", "bucket": authority}
    if tail:
        spec["path"] = tail
    return spec


def _parsed_ts_spec(url: str, refuse: Callable[[str, str], ConvertError]) -> dict[str, Any]:
    m = _URL.match(url)
    if m is None or m.group(2) is None or m.group(5) is not None or m.group(6) is not None:
        raise refuse("path", f"{url!r} is not a URL kvstack can express (scheme://authority/path)")
    scheme, authority, raw = m.group(1).lower(), m.group(3), m.group(4)
    try:
        path = unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise refuse("path", f"{url!r}: a percent-escape is not UTF-8") from None
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise refuse("path", f"{url!r} has a malformed percent-escape")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise refuse("path", f"{url!r}: a file URL names no host")
        path = path or "/"
        if "\\" in path or not _ts_file_path_valid(path):
            raise refuse("path", f"{url!r}: tensorstore's file driver refuses the path {path!r}")
        return {"driver": "file", "path": path}
    if scheme == "memory":
        memory = unquote(authority) + path
        return {"driver": "memory", "path": memory} if memory else {"driver": "memory"}
    if scheme in ("gs", "s3"):
        spec: dict[str, Any] = {"driver": "gcs" if scheme == "gs" else "s3", "bucket": authority}
        if path[1:]:
            spec["path"] = path[1:]
        return spec
    if scheme in ("s3+http", "s3+https"):
        bucket, _, key = path[1:].partition("/")
        if not bucket:
            raise refuse("path", f"{url!r} names no bucket")
        spec = {"driver": "s3", "bucket": bucket, "endpoint": f"{scheme[3:]}://{authority}"}
        if key:
            spec["path"] = key
        return spec
    if scheme in ("http", "https"):
        return {"driver": "http", "base_url": f"{scheme}://{authority}", "path": path or "/"}
    raise refuse("path", f"{url!r}: tensorstore has no kvstore driver for {scheme}:// URLs")


def _stretches(ranges: list[KeyRange]) -> bool:
    """Whether tensorstore would stretch a layer over a gap (defect D1) when it sets these
    ranges in order (:func:`_stretched_key`); past :data:`_GAP_CHECK_LIMIT` ranges, say yes."""
    if not ranges or ranges[0] == _ALL:
        return False
    return len(ranges) > _GAP_CHECK_LIMIT or _stretched_key(ranges) is not None


def _stretched_key(ranges: list[KeyRange]) -> str | None:
    """A key that tensorstore would wrongly select (defect D1) in a kvstack whose layers select
    these ranges, in order, or ``None``.

    tensorstore first drops the layers that later ones cover (``PruneCoveredLayers``, itself a
    table built with the defect), then builds its table from the others, in order; setting a
    range whose first key no earlier range selects, while a smaller key is, stretches the piece
    before it up to that key. This builds both tables with :class:`_PieceMap` (tensorstore's
    ``KeyRangeMap``, defect included) and returns the first key the final table selects and no
    range does. Bounds are code points: a byte-level gap that holds no valid UTF-8 key (after a
    prefix's last byte, before its successor) changes no key, so it does not count."""
    if not ranges or ranges[0] == _ALL:
        return None
    indirect = _PieceMap()
    for i, rng in enumerate(ranges):
        indirect.set(rng, i)
    table = _PieceMap()
    for i in sorted(set(indirect.values)):
        table.set(ranges[i], i)
    selected = _Intervals()
    for rng in ranges:
        selected.add(*rng)
    for lo, hi in zip(table.mins, table.maxs, strict=True):
        key = selected.first_unselected(lo, hi)
        if key is not None:
            return key
    return None


def _max_at_most(a: str | None, b: str | None) -> bool:
    """``a <= b`` for exclusive upper bounds (``None``: unbounded)."""
    return b is None or (a is not None and a <= b)


class _PieceMap:
    """tensorstore's ``internal_kvstack::KeyRangeMap`` (0.1.86), transcribed with its defect:
    ``Erase`` splits the piece before a range's first key even when that piece ends before it,
    which stretches the piece over the gap (D1). Pieces are ``[mins[i], maxs[i])`` with
    ``values[i]``, sorted by ``mins`` (``None``: unbounded, tensorstore's empty bound)."""

    __slots__ = ("maxs", "mins", "values")

    def __init__(self) -> None:
        self.mins: list[str] = []
        self.maxs: list[str | None] = []
        self.values: list[int] = []

    def _containing(self, key: str) -> int:
        # range_containing_impl: the piece at lower_bound(key), or the one before it.
        i = bisect_left(self.mins, key)
        if (i == len(self.mins) or self.mins[i] > key) and i != 0:
            return i - 1
        return i

    def set(self, rng: KeyRange, value: int) -> None:
        self._erase(rng)
        i = bisect_left(self.mins, rng.min)
        if i < len(self.mins) and self.mins[i] == rng.min:
            return  # btree insert of a duplicate key fails (the assert is compiled out)
        self.mins.insert(i, rng.min)
        self.maxs.insert(i, rng.max)
        self.values.insert(i, value)

    def _erase(self, rng: KeyRange) -> None:
        lo, hi = rng
        i = self._containing(lo)
        if i == len(self.mins):
            return
        if lo > self.mins[i]:
            # Split [min, max) into [min, lo) and [lo, max): the defect when max <= lo.
            rest = self.maxs[i]
            self.maxs[i] = lo
            i += 1
            self.mins.insert(i, lo)
            self.maxs.insert(i, rest)
            self.values.insert(i, self.values[i - 1])
        while i < len(self.mins) and lo <= self.mins[i] and _max_at_most(self.maxs[i], hi):
            del self.mins[i], self.maxs[i], self.values[i]
        if i < len(self.mins) and hi is not None and self.mins[i] < hi:
            self.mins[i] = hi


class _Intervals:
    """A union of key ranges, as sorted, disjoint, non-adjacent intervals."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[str] = []
        self.ends: list[str | None] = []

    def add(self, lo: str, hi: str | None) -> None:
        first = bisect_right(self.starts, lo) - 1
        before = self.ends[first] if first >= 0 else None
        if first < 0 or (before is not None and before < lo):
            first += 1
        last = bisect_right(self.starts, hi) if hi is not None else len(self.starts)
        new_lo, new_hi = lo, hi
        if first < last:  # merge with the intervals [lo, hi) meets or touches
            new_lo = min(lo, self.starts[first])
            tail = self.ends[last - 1]
            new_hi = None if tail is None or hi is None else max(hi, tail)
        self.starts[first:last] = [new_lo]
        self.ends[first:last] = [new_hi]

    def first_unselected(self, lo: str, hi: str | None) -> str | None:
        """The smallest key of ``[lo, hi)`` that no interval holds, or ``None``."""
        while hi is None or lo < hi:
            i = bisect_right(self.starts, lo) - 1
            if i < 0:
                return lo
            end = self.ends[i]
            if end is None:
                return None
            if end <= lo:
                return lo
            lo = end
        return None
