"""Import and export of a million kerchunk references vs fsspec's ReferenceFileSystem and json.dump.

Import. kvmap: the kerchunk loader (``kvmap.formats.kerchunk.load``: read the file, parse,
``from_kerchunk``) and ``kvmap.compile`` of the manifest it gives. Baseline:
``fsspec.filesystem("reference", fo=refs_path)``, which reads the same file with
``json.load`` (ujson where installed) and builds its reference dict eagerly (what fsspec
does when given a path); a second row runs it with the cyclic collector off, as kvmap
runs itself. Target: kvmap <= 1.0x.

Export. kvmap: ``dumps_kerchunk(manifest)`` of the imported manifest, written to a file.
Baseline: ``json.dump`` of the refs dict (``{"version": 1, "refs": ...}``) to a file.
Target: kvmap <= 1.0x.

The document is a kerchunk version 1 file as kerchunk writes one: zarr v2 metadata as JSON
strings (``.zgroup``, and ``.zarray``/``.zattrs`` per variable) and ``n`` chunk references
``[url, offset, length]`` into four shared files.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
import json
import tempfile
from collections.abc import Sequence
from typing import Any

import fsspec
from _common import VARIABLES, Row, chunk_refs, parse_args, print_report, run_trials, time_call

import kvmap
from kvmap.fetch import drive
from kvmap.formats.kerchunk import dumps_kerchunk, load

TARGET = 1.0


def kerchunk_document(n: int, seed: int) -> dict[str, Any]:
    """A kerchunk v1 document: metadata strings, then ``n`` shuffled chunk references."""
    refs: dict[str, Any] = {".zgroup": json.dumps({"zarr_format": 2}), ".zattrs": json.dumps({"title": "bench"})}
    for v in VARIABLES:
        zarray = {"shape": [100, 100, 100], "chunks": [1, 1, 1], "dtype": "<f4", "compressor": None, "zarr_format": 2}
        refs[f"{v}/.zarray"] = json.dumps(zarray)
        refs[f"{v}/.zattrs"] = json.dumps({"_ARRAY_DIMENSIONS": ["t", "y", "x"], "units": "K"})
    for key, url, offset, length in chunk_refs(n, seed):
        refs[key.replace("/c/", "/").replace("/", ".").replace(".", "/", 1)] = [url, offset, length]
    return {"version": 1, "refs": refs}


def reference_fs(path: str, remote: fsspec.AbstractFileSystem) -> fsspec.AbstractFileSystem:
    """fsspec's ReferenceFileSystem on the file at ``path``, never from fsspec's instance cache.

    ``remote`` stands in for s3fs, which is not installed: given as the ``s3`` file
    system, it also spares fsspec from scanning the references for a protocol.
    """
    return fsspec.filesystem("reference", fo=path, fs={"s3": remote}, skip_instance_cache=True)


def import_kvmap(path: str) -> kvmap.CompiledMap:
    url = Path(path).as_uri()
    manifest = drive(load(url), lambda _name: Path(path).read_bytes())
    assert manifest is not None
    return kvmap.compile(manifest)


def trial_import_kvmap(path: str, key: str, expected: list[Any]) -> float:
    seconds, compiled = time_call(lambda: import_kvmap(path))
    found = compiled.resolve(key)
    if found is None or [found.url, found.offset, found.length] != expected:
        raise RuntimeError(f"kvmap resolved {key!r} to {found}, expected {expected}")
    del compiled
    return seconds * 1e3


def trial_import_fsspec(path: str, key: str, expected: list[Any], remote: Any, *, gc_enabled: bool) -> float:
    seconds, fs = time_call(lambda: reference_fs(path, remote), gc_enabled=gc_enabled)
    if list(fs.references[key]) != expected:
        raise RuntimeError(f"fsspec has {fs.references[key]} for {key!r}, expected {expected}")
    del fs
    return seconds * 1e3


def trial_export_kvmap(manifest: kvmap.Manifest, out: Path) -> float:
    def export() -> None:
        with open(out, "wb") as f:
            f.write(dumps_kerchunk(manifest))

    seconds, _ = time_call(export)
    return seconds * 1e3


def trial_export_json(document: dict[str, Any], out: Path) -> float:
    def export() -> None:
        with open(out, "w") as f:
            json.dump(document, f)

    seconds, _ = time_call(export)
    return seconds * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, argv, "number of chunk references")
    remote = fsspec.filesystem("memory")
    document = kerchunk_document(args.n, args.seed)
    key = next(k for k, v in document["refs"].items() if isinstance(v, list))
    expected = document["refs"][key]
    with tempfile.TemporaryDirectory(prefix="kvmap-bench-") as tmp:
        refs_path = str(Path(tmp) / "refs.json")
        Path(refs_path).write_text(json.dumps(document))
        size = Path(refs_path).stat().st_size
        manifest = drive(load(Path(refs_path).as_uri()), lambda _name: Path(refs_path).read_bytes())
        assert manifest is not None
        if json.loads(dumps_kerchunk(manifest)) != document:
            raise RuntimeError("the exported references differ from the imported ones")
        out_kvmap, out_json = Path(tmp) / "kvmap-out.json", Path(tmp) / "json-out.json"
        gc.collect()
        results = run_trials(
            {
                "import kvmap": lambda: trial_import_kvmap(refs_path, key, expected),
                "import fsspec": lambda: trial_import_fsspec(refs_path, key, expected, remote, gc_enabled=True),
                "import fsspec, gc off": lambda: trial_import_fsspec(
                    refs_path, key, expected, remote, gc_enabled=False
                ),
                "export kvmap": lambda: trial_export_kvmap(manifest, out_kvmap),
                "export json": lambda: trial_export_json(document, out_json),
            },
            args.repeat,
        )
        sizes = (out_kvmap.stat().st_size, out_json.stat().st_size)
    rows = [
        Row(
            "import: load + compile vs ReferenceFileSystem(fo=path)",
            results["import kvmap"],
            results["import fsspec"],
            TARGET,
        ),
        Row("  same, baseline with gc disabled", results["import kvmap"], results["import fsspec, gc off"], TARGET),
        Row("export: dumps_kerchunk + write vs json.dump", results["export kvmap"], results["export json"], TARGET),
    ]
    print_report(
        "kerchunk references: import to a compiled map, export from a manifest",
        "ms",
        rows,
        {"n": args.n, "repeat": args.repeat, "seed": args.seed},
        notes=[
            f"kerchunk file {size / 1e6:.1f} MB; exported: kvmap {sizes[0] / 1e6:.1f} MB (compact), "
            f"json.dump {sizes[1] / 1e6:.1f} MB",
            "kvmap validates every reference and maps every URL; fsspec keeps the parsed values as they are",
            "kvmap pauses the cyclic gc itself; the second row gives the baseline the same",
        ],
    )


if __name__ == "__main__":
    main()
