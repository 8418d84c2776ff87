"""kerchunk JSON references as kvmap manifests, and kvmap manifests as kerchunk references.

kerchunk (spec: kerchunk ``docs/source/spec.rst``; reader: fsspec's
``implementations/reference.py``) maps keys to values in one JSON object:

* version 0: ``{key: value, ...}``;
* version 1: ``{"version": 1, "templates": {...}, "gen": [...], "refs": {key: value, ...}}``.

Reading (:func:`from_kerchunk`, :func:`load`) gives one exact-key kvmap entry per
reference — the inline values and whole objects first, then the ``[url, offset, length]``
references, each in document order (the bulk is built as columns; a document's keys are
distinct, so the order decides nothing) — then one per key that ``gen`` makes (so a
generated key wins over a reference of the same key, as fsspec's ``dict.update`` does):

==========================================  ===============================================
kerchunk value                              kvmap entry
==========================================  ===============================================
``"base64:QUJD"``                           ``data``: the decoded bytes (decoded leniently,
                                            as fsspec does: ``base64.b64decode``)
``"any other string"``                      ``data``: its UTF-8 bytes
``{...}`` (a JSON object)                   ``data``: the bytes fsspec serves for it, the
                                            text of ``ujson.dumps`` (``json.dumps`` where
                                            ujson is not installed, as in fsspec)
``1``, ``true``, ``null`` (other scalars)   ``data``: their JSON text, the same way (fsspec
                                            keeps them and fails when the key is read)
``[url]``                                   ``path``: the whole object
``[url, offset, length]``                   ``path`` with ``offset`` and ``length``
``[null, ...]``                             the same with ``target=`` as the URL (fsspec's
                                            ``target``); refused without one
==========================================  ===============================================

Templates and ``gen`` are expanded at import, never dropped, as fsspec's
``ReferenceFileSystem(..., simple_templates=False)`` expands them: a reference URL
that contains ``{{`` is rendered when the document has templates (not otherwise:
fsspec keeps it as written); a template whose text has ``{{`` is a function of keyword
arguments (``{{f(c='x')}}``); ``gen`` items take the cartesian product of their
``dimensions`` (``{"start", "stop", "step"}`` as ``range`` or a list of values, the
last dimension varying fastest) and render ``key``, ``url``, ``offset`` and
``length`` with the dimension values and the templates. Plain substitutions
(``{{ name }}`` of a dimension or a plain template) are done without jinja2; anything
else is rendered by jinja2's ``SandboxedEnvironment`` (an optional dependency:
``pip install 'kvmap[kerchunk]'``), whose ``*`` and ``**`` are bounded here so that a
small document cannot ask for gigabytes. ``max_keys`` bounds how many keys ``gen``
may make, checked before any is made.

URLs are fsspec's. They map onto kvmap's URLs so that kvmap reads the same object:

=============================================  ==============================================
fsspec URL                                     kvmap URL
=============================================  ==============================================
``s3://b/k``, ``s3a://b/k``                    ``s3://b/k``
``gs://b/k``, ``gcs://b/k``                    ``gs://b/k``
``az://c/k``, ``abfs://c/k``, ``abfss://c/k``  ``az://c/k``
``http(s)://h/p``                              kept; characters a URL cannot hold (space,
                                               ``|``, non-ASCII, a ``%`` that starts no
                                               escape) percent-encoded, as aiohttp does
``/abs/path``, ``file:///abs/path``,           ``file:///abs/path``
``file:/abs/path``, ``local://...``
``rel/path``, ``file://rel/path``              ``rel/path``, a relative reference: kvmap
                                               resolves it against the document's URL,
                                               fsspec against the working directory
``memory://...``                               refused: fsspec's process-global memory file
                                               system, not kvmap's ``memory://NAME/``
``abfs://c@account.../k``                      refused: the account comes from kvmap's
                                               store options; write ``az://c/k``
``adl://``, ``data:``, ``~/...``, chained      refused, naming the key
(``a::b``), any other scheme
=============================================  ==============================================

fsspec takes the path of ``file``, ``s3``, ``gs`` and ``az`` URLs literally, where kvmap
percent-decodes it; so the path is percent-encoded on the way in (``s3://b/a%20b`` is
the object ``a%20b``, kvmap's ``s3://b/a%2520b``) and decoded on the way out. fsspec's
local paths also lose a trailing ``/``; so do they here.

Writing (:func:`to_kerchunk`, :func:`dumps_kerchunk`) gives kerchunk version 1, every
URL absolute (relative paths resolved against the manifest's URL) and in fsspec's form
(the table read right to left; ``file:///abs/path`` with the decoded path). The last
entry of a key decides; a whiteout leaves the key out (a prefix or range whiteout
removes the keys before it that it covers). Inline bytes are a plain string when they
are ASCII text (printable, tab, newline, carriage return) and do not start with
``base64:``, else ``base64:...`` (kerchunk writes any ASCII as a string; binary bytes
below 128 would take six characters each); a ``json`` entry is written as the bytes
kvmap serves for it. kerchunk
has exact keys only: a prefix or range entry with a URL raises
:class:`~kvmap.errors.ConvertError` (expand it with ``--materialize``), as do a URL
pipeline, a ``memory://`` or ``s3+http(s)://`` URL and a window with an offset but no
length.

>>> m = from_kerchunk({".zgroup": '{"zarr_format":2}', "x/0": ["s3://b/f.nc", 8, 4]})
>>> [(e.key, e.path, e.offset, e.length) for e in m.entries]
[('.zgroup', None, None, None), ('x/0', 's3://b/f.nc', 8, 4)]
>>> to_kerchunk(m)
{'version': 1, 'refs': {'.zgroup': '{"zarr_format":2}', 'x/0': ['s3://b/f.nc', 8, 4]}}
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from itertools import compress, repeat
from operator import and_, eq, is_, not_
from typing import Any, NoReturn

import orjson

from kvmap._gcpause import paused_gc
from kvmap.errors import ConvertError, ManifestError, MissingDependencyError
from kvmap.fetch import Fetch, Loading
from kvmap.formats._fsspec_urls import RefusedError, fsspec_url, kvmap_url
from kvmap.manifest import Manifest, parse_json
from kvmap.url import PIPELINE_SEPARATOR, resolve_target

__all__ = ["DEFAULT_MAX_KEYS", "dumps_kerchunk", "from_kerchunk", "load", "looks_like_kerchunk", "to_kerchunk"]

#: How many keys the ``gen`` items of one document may make, unless told otherwise.
DEFAULT_MAX_KEYS = 1_000_000

#: The longest string or list, and the largest integer (in bits), that ``*`` and ``**``
#: may make inside a template.
_MAX_TEMPLATE_SIZE = 1_000_000
_MAX_POWER_BITS = 100_000

_INSTALL = "pip install 'kvmap[kerchunk]'"

# A plain substitution ``{{ name }}``; the names jinja2 reads as literals are not names.
_SIMPLE_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_JINJA_LITERALS = frozenset(("true", "false", "none", "True", "False", "None"))

_METADATA_NAMES = (".zgroup", ".zarray", ".zattrs", ".zmetadata", "zarr.json")
_METADATA_SUFFIXES = tuple("/" + n for n in _METADATA_NAMES)
_SNIFF = 256  # references looked at by looks_like_kerchunk
#: The bytes inline data may hold to be written as a plain string: printable ASCII, tab,
#: newline and carriage return (``bytes.translate`` deletes them: what remains is not text).
_TEXT_BYTES = bytes([9, 10, 13, *range(32, 127)])


# -- reading ----------------------------------------------------------------------------------


def from_kerchunk(
    document: Any,
    url: str | None = None,
    *,
    name: str | None = None,
    target: str | None = None,
    max_keys: int = DEFAULT_MAX_KEYS,
) -> Manifest:
    """The :class:`~kvmap.Manifest` of a parsed kerchunk reference document (version 0 or 1).

    ``url`` is the document's own URL (relative references resolve against it; a
    document without one may hold none), ``name`` what errors call it (default: ``url``),
    ``target`` the URL of references whose URL is ``null`` (fsspec's ``target=``, in
    fsspec's form), ``max_keys`` the most keys the ``gen`` items may make. The module
    docstring lists what each value and URL becomes.

    Raises :class:`~kvmap.ManifestError` naming the document, the reference (its position
    among ``refs``; ``None`` for ``templates`` and ``gen``) and the field (``url``,
    ``offset``, ``length``, ``data``, ``version``, ``refs``, ``templates.NAME``,
    ``gen[i].FIELD``), with the key in the reason; and
    :class:`~kvmap.errors.MissingDependencyError` when the document needs jinja2 and it
    is not installed.

    >>> m = from_kerchunk({"version": 1, "templates": {"u": "s3://b/data"},
    ...                    "gen": [{"key": "c/{{i}}", "url": "{{u}}/{{i}}.bin", "dimensions": {"i": [0, 1]}}],
    ...                    "refs": {"zarr.json": {"zarr_format": 3}, "c/9": ["f.bin", 0, 5]}},
    ...                   url="s3://b/refs.json")
    >>> for e in m.entries:
    ...     print(e.key, e.path, e.data)
    zarr.json None b'{"zarr_format":3}'
    c/9 f.bin None
    c/0 s3://b/data/0.bin None
    c/1 s3://b/data/1.bin None
    """
    name = name if name is not None else url
    if type(max_keys) is not int or max_keys < 0:
        raise ValueError(f"max_keys must be a non-negative integer, not {max_keys!r}")
    if not isinstance(document, dict):
        raise ManifestError(f"a kerchunk reference document is a JSON object, not {_kind(document)}", manifest=name)
    version = document.get("version")
    if version is None:
        refs: dict[Any, Any] = document
        templates: Any = {}
        gens: Any = []
    elif version == 1 and not isinstance(version, bool):
        refs = document.get("refs", {})
        templates = document.get("templates", {})
        gens = document.get("gen", [])
        if not isinstance(refs, dict):
            raise ManifestError(f"'refs' must be a JSON object, not {_kind(refs)}", manifest=name, field="refs")
        if not isinstance(templates, dict):
            raise ManifestError(
                f"'templates' must be a JSON object, not {_kind(templates)}", manifest=name, field="templates"
            )
        if not isinstance(gens, list):
            raise ManifestError(f"'gen' must be a JSON array, not {_kind(gens)}", manifest=name, field="gen")
    else:
        raise ManifestError(
            f"unknown kerchunk reference version {_short(version)} (kvmap reads 0, no 'version', and 1)",
            manifest=name,
            field="version",
        )
    with paused_gc():
        reader = _Reader(name, refs, templates, target)
        try:
            keys, paths, offsets, lengths, others = reader.columns()
            made: list[dict[str, Any]] = []
            if gens:
                reader.generate(gens, made, max_keys)
            # A document's keys are distinct, so its other values may go first; gen keys stay last.
            return Manifest.from_references(
                keys, paths, offsets, lengths, before=others, after=made, url=url, name=name
            )
        except ManifestError:
            pass  # the entry-by-entry path below names the reference or gen item at fault
        entries = reader.references()
        gen_starts = reader.generate(gens, entries, max_keys) if gens else []
        try:
            return Manifest.from_json(entries, url, name=name)
        except ManifestError as exc:
            raise reader.located(exc, entries, gen_starts) from None


def load(url: str | None, *, target: str | None = None, max_keys: int = DEFAULT_MAX_KEYS) -> Loading[Manifest | None]:
    """Load the kerchunk JSON document at ``url`` (a loader: see :mod:`kvmap.fetch`);
    ``target`` and ``max_keys`` are :func:`from_kerchunk`'s.

    Returns ``None`` if the document does not exist. Integers keep their exact value
    (:func:`kvmap.manifest.parse_json`). Raises what :func:`from_kerchunk` raises, and a
    :class:`~kvmap.ManifestError` for text that is not JSON.

    >>> from kvmap.fetch import drive
    >>> drive(load("s3://b/refs.json"), {"": b'{"x/0": ["x.bin"]}'}.get).entries[0].path
    'x.bin'
    >>> drive(load("s3://b/refs.json"), {}.get) is None
    True
    """
    text = yield Fetch()
    if text is None:
        return None
    with paused_gc():
        document = parse_json(text if isinstance(text, bytes | str) else bytes(text), url)
        manifest = from_kerchunk(document, url, target=target, max_keys=max_keys)
        # Freed before the collector resumes: its first pass would walk a million lists.
        del document
    return manifest


def looks_like_kerchunk(document: Any) -> bool:
    """Whether a parsed JSON document looks like kerchunk references (cheap; no validation).

    Version 1: an object with ``"version": 1`` and ``refs`` or ``gen``. Version 0: an
    object with a zarr metadata key (``.zgroup``, ``.zarray``, ``.zattrs``,
    ``.zmetadata``, ``zarr.json``, at the top or, among the first references, below it)
    whose first references all have kerchunk's shapes: a string, ``[url]``,
    ``[url, offset, length]``, and JSON objects only under metadata keys. kvmap
    documents and chunk manifests (``{"0.0": {"path": ...}}``) are not kerchunk.

    >>> looks_like_kerchunk({".zgroup": {"zarr_format": 2}, "x/0": ["s3://b/x", 0, 8]})
    True
    >>> looks_like_kerchunk({"0.0": {"path": "s3://b/x", "offset": 0, "length": 8}})
    False
    """
    if not isinstance(document, dict) or "kvmap" in document:
        return False
    version = document.get("version")
    if version is not None:
        return (
            version == 1 and not isinstance(version, bool) and ("refs" in document or "gen" in document)
        ) and isinstance(document.get("refs", {}), dict)
    head = list(itertools.islice(document.items(), _SNIFF))
    if not any(k in document for k in _METADATA_NAMES) and not any(_is_metadata_key(k) for k, _ in head):
        return False
    return all(_kerchunk_shaped(k, v) for k, v in head)


def _is_metadata_key(key: object) -> bool:
    return isinstance(key, str) and (key in _METADATA_NAMES or key.endswith(_METADATA_SUFFIXES))


def _kerchunk_shaped(key: object, value: object) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return _is_metadata_key(key)
    if isinstance(value, list) and len(value) in (1, 3):
        return (value[0] is None or isinstance(value[0], str)) and all(type(v) is int for v in value[1:])
    return False


class _Reader:
    """The conversion of one document: its templates, its URL cache, its error context."""

    def __init__(self, name: str | None, refs: dict[Any, Any], templates: dict[Any, Any], target: str | None) -> None:
        self.name = name
        self.refs = refs
        self.target = target
        self.plain: dict[str, str] = {}  # templates without "{{"
        self.functions: dict[str, str] = {}  # templates with "{{": functions of keyword arguments
        for key, text in templates.items():
            if not isinstance(text, str):
                raise ManifestError(
                    f"template {_short(key)} must be a string, not {_kind(text)}",
                    manifest=name,
                    field=f"templates.{key}",
                )
            (self.functions if "{{" in text else self.plain)[key] = text
        self._jinja: Any = None
        self._template_values: dict[str, Any] | None = None
        self._compiled: dict[str, Any] = {}

    # -- references -------------------------------------------------------------------------

    def columns(self) -> tuple[list[Any], list[str], list[Any], list[Any], list[dict[str, Any]]]:
        """The ``[url, offset, length]`` references as columns (keys, kvmap paths, offsets,
        lengths; in document order, values unchecked), and the entries of all others.

        Raises :class:`~kvmap.ManifestError` when anything is wrong, not always naming the
        reference: :meth:`references` then says which.
        """
        keys, values = list(self.refs), list(self.refs.values())
        known: dict[Any, str] = {}
        # One dict, or even one Python-level step, per reference would cost more than the
        # parse: the columns come from the parsed lists through map() at C speed, and each
        # distinct URL is mapped once.
        try:
            is_ref = list(map(and_, map(is_, map(type, values), repeat(list)), map(eq, map(len, values), repeat(3))))
        except TypeError:  # a value without a length (a number, null): not a reference
            is_ref = [type(v) is list and len(v) == 3 for v in values]
        others: list[dict[str, Any]] = []
        if not all(is_ref):
            others = [self.other(keys[i], values[i], known) for i in compress(range(len(keys)), map(not_, is_ref))]
            keys, values = list(compress(keys, is_ref)), list(compress(values, is_ref))
        urls, offsets, lengths = (list(map(operator.itemgetter(i), values)) for i in range(3))
        try:
            distinct = set(urls)
        except TypeError:
            raise ManifestError("a reference's URL is not a string", manifest=self.name, field="url") from None
        paths_of = {u: known[u] if u in known else self.url(None, u) for u in distinct}
        return keys, list(map(paths_of.__getitem__, urls)), offsets, lengths, others

    def references(self) -> list[dict[str, Any]]:
        """One kvmap entry per reference, in document order (the careful path: errors name
        the reference)."""
        paths: dict[Any, str] = {}
        return [self.other(key, value, paths) for key, value in self.refs.items()]

    def other(self, key: Any, value: Any, paths: dict[Any, str]) -> dict[str, Any]:
        """The entry of one reference of any shape."""
        if isinstance(value, list | tuple):
            if len(value) not in (1, 3):
                self.fail(
                    key,
                    None,
                    f"an array of {len(value)} items; kerchunk references are [url] or [url, offset, length]",
                )
            url = value[0]
            if not (url is None or isinstance(url, str)):
                self.fail(key, "url", f"the URL must be a string or null, not {_kind(url)}")
            path = paths.get(url)
            if path is None:
                path = paths[url] = self.url(key, url)
            if len(value) == 1:
                return {"key": key, "path": path}
            return {"key": key, "path": path, "offset": value[1], "length": value[2]}
        try:
            data = _inline(value)
        except RefusedError as exc:
            self.fail(key, exc.field, exc.reason)
        return {"key": key, "data": base64.b64encode(data).decode("ascii")}

    def url(self, key: Any, url: str | None) -> str:
        """The kvmap path of reference ``key``'s URL ``url`` (templates rendered)."""
        if url is None:
            if self.target is None:
                self.fail(key, "url", "the URL is null, and no target URL was given for such references")
            try:
                return kvmap_url(self.target)
            except RefusedError as exc:
                self.fail(key, "url", f"the URL is null, and the target {self.target!r}: {exc.reason}")
        if type(url) is not str:
            self.fail(key, "url", f"the URL must be a string or null, not {_kind(url)}")
        if "{{" in url and (self.plain or self.functions):
            try:
                url = self.render(url, {})
            except RefusedError as exc:
                self.fail(key, "url", f"the URL template {url!r}: {exc.reason}")
        try:
            return kvmap_url(url)
        except RefusedError as exc:
            self.fail(key, "url", f"{url!r}: {exc.reason}")

    def fail(self, key: Any, field: str | None, reason: str) -> NoReturn:
        raise ManifestError(
            f"the reference of {_short(key)}: {reason}", manifest=self.name, entry=self.position(key), field=field
        )

    def position(self, key: Any) -> int | None:
        """The index of reference ``key`` in the document (errors only: a scan)."""
        for i, k in enumerate(self.refs):
            if k == key:
                return i
        return None

    def located(self, exc: ManifestError, entries: list[dict[str, Any]], gen_starts: list[int]) -> ManifestError:
        """``exc`` of an entry, said of the reference or ``gen`` item that made it."""
        field = {"path": "url"}.get(exc.field or "", exc.field)
        if exc.entry is None or not 0 <= exc.entry < len(entries):
            return ManifestError(exc.reason, manifest=self.name, entry=exc.entry, field=field)
        key = entries[exc.entry].get("key")
        if exc.entry < len(self.refs):
            return ManifestError(
                f"the reference of {_short(key)}: {exc.reason}", manifest=self.name, entry=exc.entry, field=field
            )
        item = bisect.bisect_right(gen_starts, exc.entry) - 1
        return ManifestError(
            f"key {_short(key)} made by gen item {item}: {exc.reason}",
            manifest=self.name,
            field=f"gen[{item}].{field}" if field else f"gen[{item}]",
        )

    # -- templates ----------------------------------------------------------------------------

    def render(self, text: str, values: Mapping[str, Any]) -> str:
        """``text`` rendered with ``values`` and the templates, as jinja2 renders it."""
        pieces = _plain_pieces(text, self.plain.keys() | values.keys())
        if pieces is not None:
            return _substitute(pieces, {**self.plain, **values})
        template = self.template(text)
        assert self._template_values is not None
        try:
            rendered = template.render({**self._template_values, **values})
        except RefusedError:
            raise
        except Exception as exc:  # the template is code from the document: any error is its own
            raise RefusedError(f"cannot be rendered: {_reason(exc)}") from None
        return str(rendered)

    def template(self, text: str) -> Any:
        """``text`` compiled by jinja2 (once per text)."""
        template = self._compiled.get(text)
        if template is None:
            environment = self.jinja()
            try:
                template = environment.from_string(text)
            except Exception as exc:
                raise RefusedError(f"is not a jinja2 template: {_reason(exc)}") from None
            if len(self._compiled) >= 4096:
                self._compiled.clear()
            self._compiled[text] = template
        return template

    def jinja(self) -> Any:
        """The sandboxed jinja2 environment of this document (made on first use)."""
        if self._jinja is None:
            self._jinja = _environment()
            values: dict[str, Any] = dict(self.plain)
            for key, text in self.functions.items():
                values[key] = _TemplateFunction(self._jinja, key, text)
            self._template_values = values
        return self._jinja

    # -- gen --------------------------------------------------------------------------------

    def generate(self, gens: list[Any], entries: list[dict[str, Any]], max_keys: int) -> list[int]:
        """Append the entries of every ``gen`` item to ``entries``; return where each item's start."""
        items = [self.gen_item(i, item) for i, item in enumerate(gens)]
        total = 0
        counts = []
        for i, (_, dimensions, _) in enumerate(items):
            counts.append(math.prod(map(_length, dimensions.values())))
            total += counts[-1]
            if total > max_keys:
                raise ManifestError(
                    f"gen item {i} would make the keys past {max_keys:,}, the most a document may generate "
                    f"({total:,} so far; raise max_keys to allow more)",
                    manifest=self.name,
                    field=f"gen[{i}]",
                )
        starts = []
        paths: dict[str, str] = {}
        for i, (fields, dimensions, window) in enumerate(items):
            starts.append(len(entries))
            if counts[i]:  # product() would first make a tuple of every dimension, however long
                self.expand(i, fields, dimensions, window, entries, paths)
        return starts

    def gen_item(self, i: int, item: Any) -> tuple[dict[str, str], dict[str, Sequence[Any]], bool]:
        """A ``gen`` item checked: its templates, its dimensions, whether it has a window."""

        def refuse(field: str | None, reason: str) -> NoReturn:
            raise ManifestError(
                f"gen item {i} {reason}", manifest=self.name, field=f"gen[{i}].{field}" if field else f"gen[{i}]"
            )

        if not isinstance(item, dict):
            refuse(None, f"must be a JSON object, not {_kind(item)}")
        fields: dict[str, str] = {}
        for field in ("key", "url", "offset", "length"):
            if field not in item:
                if field in ("key", "url"):
                    refuse(field, f"has no {field!r}")
                continue
            value = item[field]
            if field in ("offset", "length") and type(value) is int:
                value = str(value)  # a literal number: fsspec wants a string, which means the same
            if not isinstance(value, str):
                refuse(field, f"{field!r} must be a string, not {_kind(value)}")
            fields[field] = value
        window = "offset" in fields
        if window != ("length" in fields):
            refuse("offset" if not window else "length", "needs both 'offset' and 'length', or neither")
        raw = item.get("dimensions")
        if not isinstance(raw, dict):
            refuse("dimensions", f"'dimensions' must be a JSON object, not {_kind(raw)}")
        dimensions: dict[str, Sequence[Any]] = {}
        for dim, spec in raw.items():
            if dim in self.plain or dim in self.functions:
                refuse(f"dimensions.{dim}", f"dimension {dim!r} has the name of a template")
            if isinstance(spec, list):
                dimensions[dim] = spec
                continue
            if not isinstance(spec, dict) or "stop" not in spec:
                refuse(f"dimensions.{dim}", f"dimension {dim!r} must be a list or {{start, stop, step}}")
            bounds = [spec.get("start", 0), spec["stop"], spec.get("step", 1)]
            if not all(isinstance(b, int) for b in bounds):
                refuse(f"dimensions.{dim}", f"dimension {dim!r}: start, stop and step must be integers")
            if bounds[2] == 0:
                refuse(f"dimensions.{dim}", f"dimension {dim!r}: step must not be 0")
            dimensions[dim] = range(*bounds)
        return fields, dimensions, window

    def expand(
        self,
        i: int,
        fields: dict[str, str],
        dimensions: dict[str, Sequence[Any]],
        window: bool,
        entries: list[dict[str, Any]],
        paths: dict[str, str],
    ) -> None:
        names = list(dimensions)
        render = {field: self.renderer(i, field, text, names) for field, text in fields.items()}
        key_of, url_of = render["key"], render["url"]
        append = entries.append
        for values in itertools.product(*dimensions.values()):
            key = key_of(values)
            url = url_of(values)
            path = paths.get(url)
            if path is None:
                try:
                    path = paths[url] = kvmap_url(url)
                except RefusedError as exc:
                    raise self.gen_error(i, "url", key, f"{url!r}: {exc.reason}") from None
            if not window:
                append({"key": key, "path": path})
                continue
            entry: dict[str, Any] = {"key": key, "path": path}
            for field in ("offset", "length"):
                text = render[field](values)
                try:
                    entry[field] = int(text)  # what fsspec does with the rendered text
                except ValueError:
                    raise self.gen_error(i, field, key, f"{text!r} is not an integer") from None
            append(entry)

    def renderer(self, i: int, field: str, text: str, names: list[str]) -> Callable[[tuple[Any, ...]], str]:
        """A function of one product of the dimensions' values: ``text`` rendered with them."""
        pieces = _plain_pieces(text, {*names, *self.plain})
        if pieces is not None:
            # A format string: templates as literal text, dimension {index}; format(v, "") is str(v).
            position = {dim: j for j, dim in enumerate(names)}
            parts = []
            for j, piece in enumerate(pieces):
                if j % 2 == 0:
                    parts.append(piece.replace("{", "{{").replace("}", "}}"))
                elif piece in position:
                    parts.append(f"{{{position[piece]}}}")
                else:
                    parts.append(self.plain[piece].replace("{", "{{").replace("}", "}}"))
            fmt = "".join(parts).format
            return lambda values: fmt(*values)

        try:
            self.template(text)  # a syntax error is reported once, before any key is made
        except RefusedError as exc:
            raise self.gen_error(i, field, None, f"{text!r} {exc.reason}") from None

        def rendered(values: tuple[Any, ...]) -> str:
            try:
                return self.render(text, dict(zip(names, values, strict=True)))
            except RefusedError as exc:
                shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, values, strict=True))
                raise self.gen_error(i, field, None, f"{text!r} with {shown} {exc.reason}") from None

        return rendered

    def gen_error(self, i: int, field: str, key: str | None, reason: str) -> ManifestError:
        about = f"gen item {i}" if key is None else f"gen item {i}, key {_short(key)}"
        return ManifestError(f"{about}: {field} {reason}", manifest=self.name, field=f"gen[{i}].{field}")


def _length(values: Sequence[Any]) -> int:
    """``len(values)``, also for a ``range`` too long for ``len``."""
    if isinstance(values, range):
        step = values.step
        span = values.stop - values.start if step > 0 else values.start - values.stop
        return max(0, -(-span // abs(step)))
    return len(values)


def _plain_pieces(text: str, names: Any) -> list[str] | None:
    """``text`` as [literal, name, literal, ..., literal] if jinja2 would render it as plain
    substitutions of ``names`` (each rendered as ``str(value)``), else ``None``.

    jinja2 starts a tag at the leftmost ``{{``, ``{%`` or ``{#``, drops one trailing
    newline and normalises line ends, and reads ``true``, ``none``... as literals; text
    that may meet any of these is left to jinja2.
    """
    if "\n" in text or "\r" in text:
        return None
    pieces = _SIMPLE_VARIABLE.split(text)
    for j in range(0, len(pieces), 2):
        literal = pieces[j]
        if "{{" in literal or "{%" in literal or "{#" in literal:
            return None
        if j + 1 < len(pieces) and literal.endswith("{"):
            return None  # "{{{x}}": jinja2's tag would start one character earlier
    for j in range(1, len(pieces), 2):
        if pieces[j] not in names or pieces[j] in _JINJA_LITERALS:
            return None
    return pieces


def _substitute(pieces: list[str], values: Mapping[str, Any]) -> str:
    return "".join(piece if j % 2 == 0 else str(values[piece]) for j, piece in enumerate(pieces))


class _TemplateFunction:
    """A template whose text has ``{{``: fsspec makes it ``lambda temp=text, **kwargs:``
    rendered with ``kwargs`` only. Rendered itself (``{{f}}``), fsspec writes the
    function's ``repr`` (an address), so that is refused."""

    def __init__(self, environment: Any, name: str, text: str) -> None:
        self._environment = environment
        self._name = name
        self._text = text
        self._compiled: dict[str, Any] = {}  # fsspec compiles on every call; the result is the same

    def __call__(self, temp: Any = None, **kwargs: Any) -> str:
        source = self._text if temp is None else temp
        template = self._compiled.get(source) if isinstance(source, str) else None
        if template is None:
            template = self._environment.from_string(source)
            if isinstance(source, str) and len(self._compiled) < 256:
                self._compiled[source] = template
        return str(template.render(**kwargs))

    def __str__(self) -> str:
        raise RefusedError(
            f"template {self._name!r} is a function (its text has '{{{{'): call it with its values, "
            f"{self._name}(name=value)"
        )


_ENVIRONMENT: Any = None


def _environment() -> Any:
    """A new sandboxed jinja2 environment whose ``*`` and ``**`` are bounded."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        try:
            from jinja2.sandbox import SandboxedEnvironment
        except ImportError:
            raise MissingDependencyError(
                f"this kerchunk document has templates or 'gen' items that need jinja2: {_INSTALL}"
            ) from None

        class BoundedEnvironment(SandboxedEnvironment):
            intercepted_binops = frozenset(("*", "**"))

            def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
                _check_binop(operator, left, right)
                return super().call_binop(context, operator, left, right)

        _ENVIRONMENT = BoundedEnvironment
    return _ENVIRONMENT()


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if (
                isinstance(seq, str | bytes | list | tuple)
                and isinstance(count, int)
                and len(seq) * count > _MAX_TEMPLATE_SIZE
            ):
                raise RefusedError(f"'*' would make {len(seq) * count:,} items (at most {_MAX_TEMPLATE_SIZE:,})")
    elif isinstance(left, int) and isinstance(right, int) and max(left.bit_length(), 1) * right > _MAX_POWER_BITS:
        raise RefusedError(f"'**' would make an integer of about {left.bit_length() * right:,} bits")


# -- values and URLs ---------------------------------------------------------------------------


def _inline(value: Any) -> bytes:
    """The bytes fsspec serves for an inline value (a string, bytes or a JSON value)."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise RefusedError("holds a lone surrogate (not valid Unicode)", "data") from None
    elif isinstance(value, bytes):
        raw = value
    else:
        return _fsspec_json(value)
    if raw.startswith(b"base64:"):
        try:
            return base64.b64decode(raw[7:])  # not validating: fsspec skips stray characters
        except (binascii.Error, ValueError) as exc:
            raise RefusedError(f"is not valid base64 ({exc})", "data") from None
    return raw


_DUMPS: Callable[[Any], str] | None = None


def _fsspec_json(value: Any) -> bytes:
    """``value`` serialised as fsspec serialises a JSON object value: with ujson if it is
    installed, else the standard library's ``json.dumps`` (default separators)."""
    global _DUMPS
    if _DUMPS is None:
        try:
            import ujson  # type: ignore[import-untyped,unused-ignore]

            _DUMPS = ujson.dumps
        except ImportError:
            _DUMPS = json.dumps
    try:
        return _DUMPS(value).encode("utf-8")
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RefusedError(f"is not a JSON value ({_reason(exc)})", "data") from None


# -- writing ----------------------------------------------------------------------------------


def to_kerchunk(manifest: Manifest) -> dict[str, Any]:
    """The kerchunk version 1 references of ``manifest``: ``{"version": 1, "refs": {...}}``.

    Every URL is absolute and in fsspec's form (see the module docstring). The last entry
    of a key decides; whiteouts leave keys out. Raises :class:`~kvmap.errors.ConvertError`
    naming the manifest, the entry and the field for an entry kerchunk cannot express: a
    prefix or range with a URL (field ``prefix``, ``min`` or ``max``), a URL pipeline, a
    ``memory://``, ``s3+http(s)://`` or unknown URL (``path``), a window with an offset
    but no length (``offset``). Pins (``etag``, ``version``, ``sha256``; spec 3.4) are dropped:
    kerchunk references have no place for them, so readers of the output do not check them.

    >>> m = Manifest.from_json([{"key": "a", "path": "d/x.bin", "offset": 2, "length": 3},
    ...                         {"key": "b", "data": "AAE="}, {"key": "a", "path": None}],
    ...                        url="file:///data/m.json")
    >>> to_kerchunk(m)
    {'version': 1, 'refs': {'b': 'base64:AAE='}}
    """
    with paused_gc():
        entries = manifest.to_json()["entries"]
        refs: dict[str, Any] = {}
        urls: dict[str, str] = {}
        get = urls.get
        for i, e in enumerate(entries):
            key = e.get("key")
            if key is None:
                _drop_range(refs, e, i, manifest.name)
                continue
            if "path" not in e:
                refs[key] = _exported_inline(e)
                continue
            path = e["path"]
            if path is None:
                refs.pop(key, None)
                continue
            url = get(path)
            if url is None:
                url = urls[path] = _fsspec_url(manifest, path, i)
            n = len(e)
            if n == 4:
                refs[key] = [url, e["offset"], e["length"]]
            elif n == 2:
                refs[key] = [url]
            elif "length" in e:
                refs[key] = [url, e.get("offset", 0), e["length"]]
            elif e["offset"] == 0:
                refs[key] = [url]
            else:
                raise ConvertError(
                    f"key {key!r}: a window from offset {e['offset']} to the end of the object; kerchunk "
                    "windows need a length",
                    manifest=manifest.name,
                    entry=i,
                    field="offset",
                )
        return {"version": 1, "refs": refs}


def dumps_kerchunk(manifest: Manifest) -> bytes:
    """:func:`to_kerchunk` as compact UTF-8 JSON text. Raises what it raises.

    >>> dumps_kerchunk(Manifest.from_json([{"key": "zarr.json", "json": {"zarr_format": 3}}]))
    b'{"version":1,"refs":{"zarr.json":"{\\\\"zarr_format\\\\":3}"}}'
    """
    return orjson.dumps(to_kerchunk(manifest))


def _exported_inline(e: Mapping[str, Any]) -> str:
    if "data" in e:
        text = e["data"]
        data = base64.b64decode(text)
    else:
        data = orjson.dumps(e["json"])  # the bytes kvmap serves for a json entry
        text = None
    if not data.translate(None, _TEXT_BYTES) and not data.startswith(b"base64:"):
        return data.decode("ascii")
    return "base64:" + (text if text is not None else base64.b64encode(data).decode("ascii"))


def _drop_range(refs: dict[str, Any], e: Mapping[str, Any], i: int, name: str | None) -> None:
    """A prefix or range entry: a whiteout removes the keys it covers; one with a URL is refused."""
    low = e.get("prefix", e.get("min", ""))
    high = e.get("max")
    if e["path"] is not None:
        kind, field = ("prefix", "prefix") if "prefix" in e else ("range", "min" if "min" in e else "max")
        raise ConvertError(
            f"a {kind} entry cannot be written as kerchunk references, which name exact keys only: "
            "use --materialize to expand it into the keys it covers",
            manifest=name,
            entry=i,
            field=field,
        )
    if "prefix" in e:
        doomed = [k for k in refs if k.startswith(low)]
    else:
        doomed = [k for k in refs if k >= low and (high is None or k < high)]
    for k in doomed:
        del refs[k]


def _fsspec_url(manifest: Manifest, path: str, i: int) -> str:
    """The fsspec URL of entry ``i``'s ``path``: absolute, its object path decoded."""

    def refuse(reason: str) -> NoReturn:
        raise ConvertError(f"{path!r}: {reason}", manifest=manifest.name, entry=i, field="path")

    if PIPELINE_SEPARATOR in path:
        refuse("a URL pipeline cannot be written as a kerchunk reference: flatten the chain first")
    try:
        return fsspec_url(resolve_target(manifest.url, path))
    except RefusedError as exc:
        refuse(exc.reason)


# -- helpers ----------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: object) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else f"{text[:197]}..."
