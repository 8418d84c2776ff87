"""Fuzz target: any bytes as a manifest document (``Manifest.loads``).

Only :class:`kvmap.ManifestError` may come out of the parser. A document that loads must

* compile, and resolve every probe key exactly as the last-to-first reference model in
  ``tests/reference.py`` says, through ``resolve`` and ``resolve_many`` alike;
* save and load back equal (``Manifest.dumps`` and ``loads``, ``save`` and ``load``);
* mean the same as text (``bytes`` or ``str``) and as the Python objects that Python's
  own ``json`` module parses it to (``Manifest.from_json``): the same documents are
  valid, with the same entries.

Run with atheris (``pip install atheris``), or through ``fuzz/run.py``::

    python fuzz/fuzz_manifest.py fuzz/corpus/manifest -max_total_time=300

Without atheris, ``python fuzz/fuzz_manifest.py FILE...`` runs the check on files
(the test suite does this on the seed corpus, so the target never rots).
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvmap
from fuzz._harness import attempt, has_surrogate, main
from tests import reference
from tests.strategies import probe_keys

URL = "s3://bucket/dir/m.json"

# save() writes a file (and fsyncs it): to memory where the machine has a tmpfs.
_SCRATCH = Path(tempfile.mkdtemp(prefix="kvmap-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)


def check(data: bytes) -> None:
    """Parse ``data``; a valid manifest must compile, agree with the reference on probe keys,
    round-trip through its text, and mean what Python's ``json`` reading of it means.

    Raises ``AssertionError`` on disagreement and lets any exception other than
    :class:`kvmap.ManifestError` escape: both are findings.
    """
    try:
        manifest: kvmap.Manifest | None = kvmap.Manifest.loads(data, url=URL)
    except kvmap.ManifestError:
        manifest = None
    _same_as_python_json(data, manifest)
    if manifest is None:
        return
    check_round_trip(manifest)
    cm = kvmap.compile(manifest)
    entries = manifest.to_json()["entries"]
    keys = probe_keys(entries)
    resolved = cm.resolve_many(keys)
    for key, r in zip(keys, resolved, strict=True):
        assert r == cm.resolve(key), key
        got = None if r is None else (r.entry, r.url, r.offset, r.length, r.data)
        want = reference.expected(entries, key, URL)
        if want is not None and "json" in entries[want[0]]:
            assert got is not None
            got = (*got[:4], json.loads(got[4]))
        assert got == want, (key, got, want)


def check_round_trip(manifest: kvmap.Manifest) -> None:
    """A manifest that loaded must save, and load back equal: from its text and from a file."""
    try:
        text = manifest.dumps()
    except Exception as exc:
        raise AssertionError(f"a valid manifest does not save: {exc!r}") from exc
    try:
        again = kvmap.Manifest.loads(text, url=manifest.url)
    except kvmap.ManifestError as exc:
        raise AssertionError(f"the saved text of a valid manifest does not load: {exc}\n{text!r}") from exc
    assert again == manifest, (again.to_json(), manifest.to_json())
    assert [e.to_json() for e in again.entries] == [e.to_json() for e in manifest.entries]
    path = _SCRATCH / "m.json"
    try:
        manifest.save(path)
    except kvmap.ManifestError as exc:
        # A one-letter URL scheme, which a local document would read as a drive: refused.
        if "which no path names from" not in str(exc):
            raise AssertionError(f"a valid manifest does not save: {exc}") from exc
        return
    loaded = kvmap.Manifest.load(path)
    assert loaded.url == path.resolve().as_uri()
    # Saved elsewhere than its URL, its relative targets are rebased onto the file's place.
    assert loaded.to_json() == manifest.rebased(loaded.url).to_json()


def _same_as_python_json(data: bytes, manifest: kvmap.Manifest | None) -> None:
    """Text, as ``bytes`` or ``str``, and the same document as Python objects must agree."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_float=_finite, parse_constant=_refuse, object_pairs_hook=_last_wins)
    except (ValueError, RecursionError):
        # Not UTF-8; not JSON to Python (or too deep for it); beyond kvmap's number limits; or a
        # duplicate member hides a lone surrogate, which the text may not hold (spec 2) anywhere.
        return
    try:
        from_text = kvmap.Manifest.loads(text, url=URL)
    except kvmap.ManifestError:
        from_text = None
    assert (from_text is None) == (manifest is None), ("str and bytes disagree", from_text, manifest)
    from_objects, error = attempt(lambda: kvmap.Manifest.from_json(value, url=URL), (kvmap.ManifestError,))
    if from_objects is None:
        assert manifest is None, f"the text loads, the same document as Python objects does not: {error}"
        return
    assert manifest is not None, "the Python objects load, the same document as text does not"
    assert from_objects == manifest, (from_objects.to_json(), manifest.to_json())
    assert from_text == manifest


def _finite(text: str) -> float:
    # RFC 8259 lets a parser limit the range of numbers: kvmap's refuses one that overflows
    # a double (1e400) wherever it is, Python's makes it infinity. Not a difference to report.
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _last_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object as Python's ``json`` makes it (the last of duplicate members counts), refusing
    one whose replaced duplicates hold a lone surrogate: the object kept looks valid, the text is not."""
    out = dict(pairs)
    if len(out) < len(pairs):
        kept = {id(v) for v in out.values()}
        if any(id(v) not in kept and _holds_surrogate(v) for _, v in pairs):
            raise ValueError("a replaced duplicate member holds a lone surrogate")
    return out


def _holds_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and has_surrogate(item):
            return True
        if isinstance(item, dict):
            stack += [*item, *item.values()]
        elif isinstance(item, list):
            stack += item
    return False


def _refuse(text: str) -> float:
    raise ValueError(f"{text} is not JSON")  # NaN, Infinity: Python's extensions


if __name__ == "__main__":
    main(check)
