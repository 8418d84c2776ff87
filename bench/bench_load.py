"""Load time of a million-entry manifest file vs fsspec's ReferenceFileSystem on kerchunk JSON.

kvmap: ``kvmap.compile(kvmap.Manifest.load(path))`` (read, parse, validate,
compile). Baseline: ``fsspec.filesystem("reference", fo=refs_path)`` on an
equivalent kerchunk version 1 reference file, which fsspec reads and processes
eagerly. Both files point the same keys at the same four URLs and byte windows.
Target: kvmap <= 0.75x the baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
import tempfile
from collections.abc import Sequence
from typing import Any

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
    time_call,
)

import kvmap

TARGET = 0.75


def reference_fs(fo: Any, remote: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """fsspec's ReferenceFileSystem on ``fo`` (a path or a refs dict), never from fsspec's instance cache.

    ``remote`` stands in for s3fs, which is not installed: given as the ``s3``
    filesystem, it also spares fsspec from scanning the references for a protocol.
    """
    return fsspec.filesystem("reference", fo=fo, fs={"s3": remote}, skip_instance_cache=True)


def trial_kvmap(path: str, key: str, expected: tuple[str, int, int]) -> float:
    seconds, compiled = time_call(lambda: kvmap.compile(kvmap.Manifest.load(path)))
    found = compiled.resolve(key)
    if found is None or (found.url, found.offset, found.length) != expected:
        raise RuntimeError(f"kvmap resolved {key!r} to {found}, expected {expected}")
    del compiled
    return seconds * 1e3


def trial_fsspec(path: str, key: str, expected: tuple[str, int, int], remote: Any, *, gc_enabled: bool) -> float:
    seconds, fs = time_call(lambda: reference_fs(path, remote), gc_enabled=gc_enabled)
    if tuple(fs.references[key]) != expected:
        raise RuntimeError(f"fsspec has {fs.references[key]} for {key!r}, expected {expected}")
    del fs
    return seconds * 1e3


def write_files(directory: Path, n: int, seed: int) -> tuple[str, str, str, tuple[str, int, int]]:
    """Write both files; return their paths, one key and what it maps to."""
    refs = chunk_refs(n, seed)
    key, url, offset, length = refs[len(refs) // 2]
    manifest_path, refs_path = directory / "manifest.json", directory / "refs.json"
    manifest_path.write_bytes(manifest_bytes(exact_entries(refs)))
    refs_path.write_bytes(kerchunk_bytes(refs))
    return str(manifest_path), str(refs_path), key, (url, offset, length)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, argv, "number of chunk references")

    remote = fsspec.filesystem("memory")
    with tempfile.TemporaryDirectory(prefix="kvmap-bench-") as tmp:
        manifest_path, refs_path, key, expected = write_files(Path(tmp), args.n, args.seed)
        sizes = {name: Path(p).stat().st_size for name, p in (("manifest", manifest_path), ("refs", refs_path))}
        gc.collect()
        results = run_trials(
            {
                "kvmap": lambda: trial_kvmap(manifest_path, key, expected),
                "fsspec": lambda: trial_fsspec(refs_path, key, expected, remote, gc_enabled=True),
                "fsspec, gc off": lambda: trial_fsspec(refs_path, key, expected, remote, gc_enabled=False),
            },
            args.repeat,
        )
    rows = [
        Row("Manifest.load + compile vs ReferenceFileSystem(fo=path)", results["kvmap"], results["fsspec"], TARGET),
        Row("  same, baseline with gc disabled", results["kvmap"], results["fsspec, gc off"], TARGET),
    ]
    print_report(
        "load: manifest file vs kerchunk reference file",
        "ms",
        rows,
        {"n": args.n, "repeat": args.repeat, "seed": args.seed},
        notes=[
            f"file sizes: kvmap manifest {sizes['manifest'] / 1e6:.1f} MB, kerchunk refs {sizes['refs'] / 1e6:.1f} MB",
            "kvmap parses with orjson and validates each entry; fsspec uses the stdlib json and does not validate",
            "kvmap pauses the cyclic gc itself; the second row gives the baseline the same",
        ],
    )


if __name__ == "__main__":
    main()
