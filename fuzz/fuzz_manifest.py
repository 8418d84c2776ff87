"""Fuzz target: any bytes as a manifest document; every valid one must resolve like the reference.

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_manifest.py fuzz/corpus -max_total_time=300

Without atheris, ``python fuzz/fuzz_manifest.py FILE...`` runs the check on files
(the test suite does this on the seed corpus, so the target never rots).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kvmap
from tests import reference
from tests.strategies import probe_keys

URL = "s3://bucket/dir/m.json"


def check(data: bytes) -> None:
    """Parse ``data``; a valid manifest must compile and agree with the reference on probe keys.

    Raises ``AssertionError`` on disagreement and lets any exception other than
    :class:`kvmap.ManifestError` escape: both are findings.
    """
    try:
        manifest = kvmap.Manifest.loads(data, url=URL)
    except kvmap.ManifestError:
        return
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


def main() -> None:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        for name in sys.argv[1:]:
            check(Path(name).read_bytes())
        return
    atheris.instrument_all()  # coverage feedback from kvmap (and the reference)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
