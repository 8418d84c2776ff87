"""Memory per entry of a compiled million exact-key map vs fsspec's ReferenceFileSystem and a dict.

Measured with tracemalloc: tracing starts before anything is built, everything is
built inside the traced window, and only the final object is kept alive when the
memory still allocated is read. Whatever that object keeps alive (key strings,
URL strings, offsets) counts.

* kvmap: ``Manifest.loads`` of the manifest JSON, ``compile``, manifest dropped.
* fsspec, fo=dict: a kerchunk refs dict built in Python with the four URLs
  shared, passed to ``ReferenceFileSystem``, then dropped by the caller.
* fsspec, fo=path: ``ReferenceFileSystem`` reading an equivalent kerchunk file.
* dict: ``{key: (url, offset, length)}`` with the four URLs shared (for reference).

Target: kvmap <= 120 bytes/entry.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tempfile
from collections.abc import Callable, Sequence

import fsspec
from _common import (
    Row,
    chunk_refs,
    exact_entries,
    kerchunk_bytes,
    manifest_bytes,
    parse_args,
    print_report,
    run_trials,
    traced_bytes,
)

import kvmap

TARGET = 120.0


def per_entry(build: Callable[[], object], n: int) -> float:
    """Bytes per entry that the result of ``build()`` keeps alive."""
    current, kept = traced_bytes(build)
    del kept
    return current / n


def kvmap_map(text: bytes) -> kvmap.CompiledMap:
    return kvmap.compile(kvmap.Manifest.loads(text))


def fsspec_from_dict(n: int, seed: int, remote: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    refs = {key: [url, offset, length] for key, url, offset, length in chunk_refs(n, seed)}
    return fsspec.filesystem("reference", fo={"version": 1, "refs": refs}, fs={"s3": remote}, skip_instance_cache=True)


def fsspec_from_path(path: str, remote: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("reference", fo=path, fs={"s3": remote}, skip_instance_cache=True)


def plain_dict(n: int, seed: int) -> dict[str, tuple[str, int, int]]:
    return {key: (url, offset, length) for key, url, offset, length in chunk_refs(n, seed)}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, argv, "number of exact-key entries")
    n, seed = args.n, args.seed

    remote = fsspec.filesystem("memory")
    text = manifest_bytes(exact_entries(chunk_refs(n, seed)))
    with tempfile.TemporaryDirectory(prefix="kvmap-bench-") as tmp:
        refs_path = Path(tmp) / "refs.json"
        refs_path.write_bytes(kerchunk_bytes(chunk_refs(n, seed)))
        results = run_trials(
            {
                "kvmap": lambda: per_entry(lambda: kvmap_map(text), n),
                "fsspec dict": lambda: per_entry(lambda: fsspec_from_dict(n, seed, remote), n),
                "fsspec path": lambda: per_entry(lambda: fsspec_from_path(str(refs_path), remote), n),
                "dict": lambda: per_entry(lambda: plain_dict(n, seed), n),
            },
            args.repeat,
        )
    rows = [
        Row("compiled map vs ReferenceFileSystem(fo=dict)", results["kvmap"], results["fsspec dict"], max_value=TARGET),
        Row("compiled map vs ReferenceFileSystem(fo=path)", results["kvmap"], results["fsspec path"], max_value=TARGET),
        Row("compiled map vs dict[str, tuple]", results["kvmap"], results["dict"], max_value=TARGET),
    ]
    print_report(
        "memory: exact-key map, four shared URLs",
        "B/entry",
        rows,
        {"n": n, "repeat": args.repeat, "seed": seed},
        notes=[
            "tracemalloc counts Python objects and numpy buffers; the JSON text kvmap parses is made before tracing",
            "ReferenceFileSystem keeps the dict it was given (in storage_options) beside the one it builds",
            "fo=path: fsspec parses the file with the stdlib json, which makes one URL string per reference",
        ],
    )


if __name__ == "__main__":
    main()
