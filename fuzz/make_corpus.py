"""Write the seed corpora ``fuzz/corpus/<target>/`` from the conformance vectors and hand-made edge cases.

    python fuzz/make_corpus.py

Deterministic: running it again rewrites the same files. It never deletes a file, so the
regression inputs (``regress-*``, each with a test in ``tests/test_fuzz_targets.py``) and
the seeds kept from before (``fuzz/corpus/manifest/*.json``) stay.

* manifest: every conformance document as text (``<vector file>-<case>.json``), and edge
  documents (64-bit and 53-bit limits, deep nesting, lone surrogates, NaN-ish numbers);
* manifest_objects: the same documents after ``J`` (read by Python's ``json``, so NaN,
  huge integers and lone surrogates come through as Python objects), and FDP seeds;
* resolve: the conformance resolve cases after ``J`` (``{"manifest", "url", "resolve"}``),
  and FDP seeds;
* pipeline: ``T`` and lines of URL text (every path in the vectors, the spec's pipelines,
  RFC 3986's examples), and FDP seeds;
* zip: archives made with Python's ``zipfile`` (empty, stored, deflated, ZIP64 with and
  without a ZIP64 end record, a comment, CP437 and UTF-8 names, duplicates, bzip2, an
  encrypted flag, a damaged CRC, bytes before and after, truncated) and non-archives;
* store: ``J`` and operation lists on edge keys, and FDP seeds.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]


def _write(target: str, name: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def _dumps(value: Any) -> bytes:
    # ensure_ascii keeps lone surrogates writable (as \ud800 escapes).
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def vectors() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "spec" / "conformance").glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            out.append((f"{path.stem}-{_slug(case['name'])}", case))
    return out


def documents() -> list[tuple[str, Any]]:
    """(name, document) of every manifest in the vectors (the read vectors hold them as objects)."""
    out = []
    for name, case in vectors():
        if "manifest" in case:
            out.append((name, case["manifest"]))
        for obj_name, obj in case.get("objects", {}).items():
            if "json" in obj:
                out.append((f"{name}-{_slug(obj_name)}", obj["json"]))
    return out


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


EDGE_TEXTS = {
    "edge-empty-array.json": "[]",
    "edge-empty-object-form.json": '{"kvmap": 1, "entries": []}',
    "edge-version-float.json": '{"kvmap": 1.0, "entries": []}',
    "edge-max-int.json": '[{"key": "a", "path": "s3://b/x", "offset": 9007199254740991, "length": 0}]',
    "edge-max-int-plus-one.json": '[{"key": "a", "path": "s3://b/x", "offset": 9007199254740992}]',
    "edge-json-u64.json": '[{"key": "a", "json": [18446744073709551615, -9223372036854775808]}]',
    "edge-json-u64-plus-one.json": '[{"key": "a", "json": 18446744073709551616}]',
    "edge-json-1e400.json": '[{"key": "a", "json": 1e400}]',
    "edge-json-deep-250.json": '[{"key": "a", "json": ' + _deep(250) + "}]",
    "edge-json-deep-300.json": '[{"key": "a", "json": ' + _deep(300) + "}]",
    "edge-lone-surrogate-key.json": '[{"key": "\\ud800", "path": null}]',
    "edge-surrogate-pair-key.json": '[{"key": "\\udbff\\udfff", "path": null}]',
    "edge-nul-key.json": '[{"key": "\\u0000", "data": "AA=="}]',
    "edge-duplicate-member.json": '[{"key": "a", "key": "b", "path": "s3://b/x"}]',
    "edge-bulk-then-range.json": '[{"key": "a", "path": "x"}, {"min": "a", "max": "b", "path": "y/"}]',
    "edge-pipeline-paths.json": '[{"prefix": "", "path": "a.zip|zip:d/"}, {"key": "k", "path": "m.json|kvmap:k%7C"}]',
}
# Python's json takes these; a manifest may hold none of them.
EDGE_OBJECTS = {
    "edge-nan-json.json": '[{"key": "a", "json": [NaN]}]',
    "edge-infinity-offset.json": '[{"key": "a", "path": "s3://b/x", "offset": Infinity}]',
    "edge-huge-int-json.json": '[{"key": "a", "json": {"n": ' + "9" * 200 + "}}]",
    "edge-huge-int-strip.json": '[{"prefix": "ab", "path": "s3://b/", "strip_prefix": ' + "1" * 40 + "}]",
    "edge-surrogate-in-json.json": '[{"key": "a", "json": {"\\udc80": "\\ud800"}}]',
}


def manifest_seeds() -> None:
    for name, doc in documents():
        _write("manifest", f"{name}.json", _dumps(doc))
    for name, text in EDGE_TEXTS.items():
        _write("manifest", name, text.encode())


def manifest_objects_seeds() -> None:
    for name, doc in documents():
        _write("manifest_objects", f"{name}.json", b"J" + _dumps(doc))
    for name, text in {**EDGE_TEXTS, **EDGE_OBJECTS}.items():
        _write("manifest_objects", name, b"J" + text.encode())
    _fdp_seeds("manifest_objects")


def resolve_seeds() -> None:
    for name, case in vectors():
        if "resolve" in case:
            keys = [r["key"] for r in case["resolve"]]
            _write(
                "resolve",
                f"{name}.json",
                b"J" + _dumps({"manifest": case["manifest"], "url": case["url"], "keys": keys}),
            )
    edges = {
        "edge-succ-skips-surrogates": [{"prefix": "\ud7ff", "path": "s3://b/"}, {"key": "\ue000", "path": None}],
        "edge-top-code-point": [
            {"min": "a\U0010ffff", "max": "b", "path": "s3://b/"},
            {"prefix": "\U0010ffff", "path": None},
        ],
        "edge-nul-neighbours": [
            {"key": "a", "path": "s3://b/a"},
            {"key": "a\x00", "path": "s3://b/n"},
            {"prefix": "a", "path": "s3://b/p/"},
        ],
        "edge-adjacent-ranges": [
            {"min": "a", "max": "b", "path": "s3://b/1/"},
            {"min": "b", "max": "c", "path": "s3://b/1/"},
        ],
        "edge-empty": [],
    }
    probes = ["", "a", "a\x00", "b", "\ud800", "a\udfff", "\U0010ffff", "\ud7ff\x00", "\ue000"]
    for name, entries in edges.items():
        _write("resolve", f"{name}.json", b"J" + _dumps({"manifest": entries, "url": None, "keys": probes}))
    _fdp_seeds("resolve")


def pipeline_seeds() -> None:
    paths = set()
    for _, doc in documents():
        entries = doc if isinstance(doc, list) else doc.get("entries") if isinstance(doc, dict) else None
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and isinstance(e.get("path"), str):
                paths.add(e["path"])
    lines = sorted(paths)
    for i in range(0, len(lines), 8):
        _write(
            "pipeline",
            f"vector-paths-{i // 8:02d}.txt",
            b"T" + "\n".join(lines[i : i + 8]).encode("utf-8", "surrogatepass"),
        )
    examples = {
        "spec-pipelines": [
            "s3://bucket/a.zip|zip:data/m.json|kvmap:c/0",
            "s3://b/m.json|kvmap:c/0%7C1",
            "file:///x.zip|zip",
            "file:///a.zip|zip:d/m.json",
            "s3://b/m.json|kvmap:c/0%201",
            "memory://m/a.zip|zarr_chunk_manifest:%C3%A9",
        ],
        "bad-pipelines": ["|", "a||b", "|zip:", "a|1zip:", "a|zip:%ff", "a|zip:%4", "a|zip:%ED%A0%80", "a|zip:%C3", ""],
        # RFC 3986 section 5.4's examples (the base is http://a/b/c/d;p?q).
        "rfc3986-normal": ["g:h", "g", "./g", "g/", "/g", "//g", "?y", "g?y", "#s", "g#s", "g?y#s", ";x", "g;x"],
        "rfc3986-dots": ["", ".", "./", "..", "../", "../g", "../..", "../../", "../../g", "../../../g", "/./g"],
        "rfc3986-abnormal": ["/../g", "g.", ".g", "g..", "..g", "./../g", "./g/.", "g/./h", "g/../h", "g;x=1/./y"],
        "remainders": ["c/0 1|é", "%", "%25", "a/../b", "\x00", "~-._", "\U0010ffff", "\udcff"],
    }
    for name, texts in examples.items():
        _write("pipeline", f"{name}.txt", b"T" + "\n".join(texts).encode("utf-8", "surrogateescape"))
    _write("pipeline", "base-http-a-b-c.txt", b"Thttp://a/b/c/d;p?q\nhttp://a/b/c/d;p?q|zip:x/y")
    _fdp_seeds("pipeline")


def _zip(members: list[tuple[str, bytes, int]], *, comment: bytes = b"", force_zip64: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=force_zip64) as f:
                f.write(data)
        zf.comment = comment
    return buf.getvalue()


def zip_seeds() -> None:
    stored, deflated = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
    two = [("a", b"hello", stored), ("d/b", b"x" * 1000, deflated)]
    archives = {
        "empty.zip": _zip([]),
        "stored.zip": _zip([("a", b"hello", stored)]),
        "deflated.zip": _zip([("d/b", b"0123456789" * 100, deflated)]),
        "two.zip": _zip(two),
        "comment.zip": _zip(two, comment=b"a comment"),
        "names.zip": _zip([("é/ü.bin", b"u", stored), ("", b"empty name", stored), ("dir/", b"", stored)]),
        "bzip2.zip": _zip([("b", b"bzip2" * 10, zipfile.ZIP_BZIP2)]),
        "zip64-extra.zip": _zip(two, force_zip64=True),
        "bomb.zip": _zip([("z", bytes(1 << 20), deflated)]),
        "not-a-zip.bin": b"PK\x03\x04 not really",
        "end-record-only.zip": b"PK\x05\x06" + bytes(18),
        "nothing.bin": b"",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name, which is the point
        archives["duplicates.zip"] = _zip([("a", b"first", stored), ("a", b"second", deflated)])
    with mock.patch.multiple(zipfile, ZIP64_LIMIT=0, ZIP_FILECOUNT_LIMIT=0):
        archives["zip64-end-record.zip"] = _zip(two, force_zip64=True)
    archives["zip64-end-record-full32.zip"] = _full32(archives["zip64-end-record.zip"])
    damaged = bytearray(archives["stored.zip"])
    damaged[30 + 1] ^= 0xFF  # a byte of the member's data: its CRC-32 no longer matches
    archives["damaged-crc.zip"] = bytes(damaged)
    encrypted = bytearray(archives["stored.zip"])
    at = encrypted.rfind(b"PK\x01\x02")
    encrypted[at + 8] |= 1  # the central directory's "encrypted" flag
    archives["encrypted-flag.zip"] = bytes(encrypted)
    archives["prefixed.zip"] = b"#!/bin/sh\nexit 0\n" + archives["two.zip"]
    archives["appended.zip"] = archives["two.zip"] + b"trailing bytes"
    archives["truncated.zip"] = archives["two.zip"][:-10]
    archives["utf8-flag-bad-name.zip"] = _bad_utf8_name(archives["stored.zip"])
    for name, data in archives.items():
        _write("zip", name, data)


def _full32(archive: bytes) -> bytes:
    """The archive with its classic end record's sizes set to 0xFFFFFFFF (the ZIP64 record decides)."""
    at = archive.rfind(b"PK\x05\x06")
    fields = list(struct.unpack_from("<4s4H2LH", archive, at))
    fields[5] = fields[6] = 0xFFFFFFFF
    return archive[:at] + struct.pack("<4s4H2LH", *fields) + archive[at + 22 :]


def _bad_utf8_name(archive: bytes) -> bytes:
    """The first central directory name made invalid UTF-8, with the UTF-8 flag set."""
    out = bytearray(archive)
    at = out.rfind(b"PK\x01\x02")
    struct.pack_into("<H", out, at + 8, struct.unpack_from("<H", out, at + 8)[0] | 0x800)
    out[at + 46] = 0xFF
    return bytes(out)


def store_seeds() -> None:
    cases: dict[str, list[list[str]]] = {
        "basic": [["set", "a", "v"], ["get", "a"], ["list", ""], ["dir", ""], ["del", "a"], ["get", "a"]],
        "nested": [["set", "a/b/c", "1"], ["set", "a/d", "2"], ["dir", "a"], ["dir", "a/"], ["list", "a/"]],
        "dot-segments": [["set", "..", "x"], ["set", "../x", "x"], ["set", "a/./b", "x"], ["set", "a/..", "x"]],
        "escaped-dots": [["set", "%2e%2e/x", "x"], ["set", "%2E%2E", "x"], ["get", "%2e%2e/x"], ["list", "%"]],
        "strip-climb": [["set", "s/../../x", "x"], ["set", "s/%2e%2e/x", "x"], ["set", "s/a", "y"], ["list", "s/"]],
        "controls": [["set", "\x00", "x"], ["set", "a\nb", "x"], ["get", "\x00"], ["list", "\x00"]],
        "pipes": [["set", "|", "x"], ["set", "a|zip:b", "x"], ["get", "a|zip:b"], ["list", "a|"]],
        "surrogates": [["set", "\ud800", "x"], ["get", "a\udfff"], ["del", "\ud800"], ["list", "\ud800"]],
        "not-writable": [["set", "w/x", "x"], ["set", "inline", "x"], ["get", "inline"], ["del", "k"], ["get", "k"]],
        "exact": [["set", "k", "whole"], ["get", "k"], ["del", "k"], ["list", "k"]],
        "empty-segments": [["set", "a//b", "x"], ["set", "/a", "x"], ["list", "a//"], ["dir", "a//"]],
        "unicode": [["set", "é", "1"], ["set", "e\u0301", "2"], ["set", "\U0010ffff", "3"], ["list", ""]],
        "long": [["set", "a" * 3000, "x"], ["set", "a/" * 1000 + "b", "y"], ["list", "a/a/"]],
        "backslashes": [["set", "\\..\\x", "x"], ["set", "a\\b", "y"], ["get", "a\\b"]],
    }
    for name, ops in cases.items():
        _write("store", f"{name}.json", b"J" + _dumps(ops))
    _fdp_seeds("store")


def _fdp_seeds(target: str) -> None:
    """Random bytes: a start for the targets' FuzzedDataProvider mode (any bytes are an input)."""
    rng = random.Random(f"kvmap-fuzz-{target}")
    for i in range(8):
        data = bytes(rng.randrange(256) for _ in range(rng.choice([16, 64, 256])))
        _write(target, f"fdp-{i}.bin", b"\x00" + data)


def main() -> None:
    manifest_seeds()
    manifest_objects_seeds()
    resolve_seeds()
    pipeline_seeds()
    zip_seeds()
    store_seeds()
    for d in sorted(CORPUS.iterdir()):
        files = [p for p in d.iterdir() if p.is_file()]
        print(f"{d.relative_to(ROOT)}: {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
