"""Import of a million-reference kerchunk parquet directory vs fsspec's LazyReferenceMapper reading it all.

kvmap: ``kvmap.compile(from_kerchunk_parquet(directory))`` (read every ``refs.<r>.parq``, build
and validate the manifest, compile it). Baseline: fsspec's ``LazyReferenceMapper`` on the same
directory, made to hand out every reference: every metadata key through ``mapper[key]``, and for
each array its keys (``_keys_in_field``) zipped with its references as fsspec reads them record by
record (``_generate_all_records``, which ``values()`` uses: pandas + fastparquet per file, then one
list per row) into a dict. That is fsspec's fastest way to all the references: ``mapper[key]`` for
each key costs a lookup, an LRU hit and a row copy per key, and ``dict(mapper.items())`` is wrong
(it zips ``keys()``, a set of metadata names first, with ``values()`` in another order). A floor
row reads only the record files into fsspec's arrays (``open_refs``), without one reference out.

The directory is written by fsspec's own writer (``LazyReferenceMapper.write`` and ``flush``, what
``kerchunk.df.refs_to_dataframe`` calls: fastparquet, zstd, categorical paths, padded records),
fed whole records at once: ``refs_to_dataframe`` sets one key at a time, which takes minutes at
1e6. Data: four float32 variables on a 3-D grid of one-element chunks (``temperature/12.34.56``)
pointing at windows in four shared files (``s3://bucket/data{0..3}.nc``), plus three coordinate
arrays stored inline (``raw``). Target: kvmap <= 1.0x the baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gc
import json
import math
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

from _common import URLS, VARIABLES, Row, parse_args, print_report, run_trials, time_call

import kvmap
from kvmap.formats.kerchunk_parquet import from_kerchunk_parquet

TARGET = 1.0
RECORD_SIZE = 100_000
_HEADER_BYTES = 512
_CHUNK_STRIDE = 1 << 16


def grid_side(n: int) -> int:
    """The side of the cubic grid per variable that gives at least ``n`` chunks over the four variables."""
    side = 1
    while len(VARIABLES) * side**3 < n:
        side += 1
    return side


def zarray(shape: Sequence[int], dtype: str) -> str:
    return json.dumps(
        {
            "shape": list(shape),
            "chunks": [1] * len(shape) if len(shape) == 3 else list(shape),
            "dtype": dtype,
            "fill_value": None,
            "order": "C",
            "filters": None,
            "compressor": None,
            "zarr_format": 2,
            "dimension_separator": ".",
        }
    )


def write_directory(root: str, n: int) -> tuple[str, tuple[str, int, int], int]:
    """Write the reference directory with fsspec's writer; return one key, its reference and the count."""
    from fsspec.implementations.reference import LazyReferenceMapper

    side = grid_side(n)
    per_variable = side**3
    out = LazyReferenceMapper.create(root, record_size=RECORD_SIZE)
    out[".zgroup"] = json.dumps({"zarr_format": 2})
    out[".zattrs"] = json.dumps({"title": "benchmark"})
    for dim in ("a", "b", "c"):
        out[f"{dim}/.zarray"] = zarray([side], "<i8")
        out[f"{dim}/.zattrs"] = json.dumps({"_ARRAY_DIMENSIONS": [dim]})
        out._items[(dim, 0)] = {0: bytes(range(256))[:8] * side}
        out.write(dim, 0)
    count = 0
    probe: tuple[str, tuple[str, int, int]] | None = None
    for v, variable in enumerate(VARIABLES):
        out[f"{variable}/.zarray"] = zarray([side] * 3, "<f4")
        out[f"{variable}/.zattrs"] = json.dumps({"_ARRAY_DIMENSIONS": ["a", "b", "c"]})
        wanted = min(per_variable, n - count)
        for record in range(math.ceil(wanted / RECORD_SIZE)):
            rows = {}
            for row in range(min(RECORD_SIZE, wanted - record * RECORD_SIZE)):
                i = v * per_variable + record * RECORD_SIZE + row
                rows[row] = [URLS[i % len(URLS)], _HEADER_BYTES + (i // len(URLS)) * _CHUNK_STRIDE, 30_000 + i % 30_000]
            out._items[(variable, record)] = rows
            out.write(variable, record)
        if probe is None:
            c = wanted // 2
            key = f"{variable}/{c // side**2}.{c // side % side}.{c % side}"
            i = v * per_variable + c
            probe = key, (URLS[i % len(URLS)], _HEADER_BYTES + (i // len(URLS)) * _CHUNK_STRIDE, 30_000 + i % 30_000)
        count += wanted
        if count >= n:
            break
    out.flush()
    assert probe is not None
    return probe[0], probe[1], count


def fsspec_all(root: str) -> dict[str, Any]:
    """Every reference of the directory through fsspec's LazyReferenceMapper (the baseline)."""
    from fsspec.implementations.reference import LazyReferenceMapper

    mapper = LazyReferenceMapper(root)
    refs: dict[str, Any] = {key: mapper[key] for key in mapper.zmetadata}
    for field in mapper.listdir():
        if f"{field}/.zarray" in mapper.zmetadata:
            refs.update(zip(mapper._keys_in_field(field), mapper._generate_all_records(field), strict=False))
    return refs


def fsspec_records(root: str) -> int:
    """Only read every record file into fsspec's arrays (the floor: no reference handed out)."""
    from fsspec.implementations.reference import LazyReferenceMapper

    mapper = LazyReferenceMapper(root)
    files = 0
    for field in mapper.listdir():
        if f"{field}/.zarray" in mapper.zmetadata:
            for record in range(math.ceil(math.prod(mapper._get_chunk_sizes(field)) / mapper.record_size)):
                mapper.open_refs(field, record)
                files += 1
    return files


def trial_kvmap(root: str, key: str, expected: tuple[str, int, int], *, compiled: bool = True) -> float:
    build = (lambda: kvmap.compile(from_kerchunk_parquet(root))) if compiled else (lambda: from_kerchunk_parquet(root))
    seconds, result = time_call(build)
    if compiled:
        found = result.resolve(key)
        if found is None or (found.url, found.offset, found.length) != expected:
            raise RuntimeError(f"kvmap resolved {key!r} to {found}, expected {expected}")
    del result
    return seconds * 1e3


def trial_fsspec(root: str, key: str, expected: tuple[str, int, int], *, gc_enabled: bool) -> float:
    seconds, refs = time_call(lambda: fsspec_all(root), gc_enabled=gc_enabled)
    if tuple(refs[key]) != expected:
        raise RuntimeError(f"fsspec has {refs[key]} for {key!r}, expected {expected}")
    del refs
    return seconds * 1e3


def trial_floor(root: str) -> float:
    seconds, _ = time_call(lambda: fsspec_records(root))
    return seconds * 1e3


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, argv, "number of chunk references (rounded to whole records of the grid)")
    warnings.filterwarnings("ignore", message=".*fastparquet.*")  # pandas deprecates the engine fsspec uses
    with tempfile.TemporaryDirectory(prefix="kvmap-bench-") as tmp:
        root = str(Path(tmp) / "refs")
        key, expected, count = write_directory(root, args.n)
        size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
        # Imports and first-use costs (pyarrow, pandas, fastparquet) are paid once, outside the timing.
        trial_kvmap(root, key, expected)
        trial_fsspec(root, key, expected, gc_enabled=True)
        gc.collect()
        results = run_trials(
            {
                "kvmap": lambda: trial_kvmap(root, key, expected),
                "kvmap, no compile": lambda: trial_kvmap(root, key, expected, compiled=False),
                "fsspec": lambda: trial_fsspec(root, key, expected, gc_enabled=True),
                "fsspec, gc off": lambda: trial_fsspec(root, key, expected, gc_enabled=False),
                "fsspec, records only": lambda: trial_floor(root),
            },
            args.repeat,
        )
    rows = [
        Row(
            "from_kerchunk_parquet + compile vs LazyReferenceMapper, all refs",
            results["kvmap"],
            results["fsspec"],
            TARGET,
        ),
        Row("  same, baseline with gc disabled", results["kvmap"], results["fsspec, gc off"], TARGET),
        Row("  from_kerchunk_parquet alone (no compile)", results["kvmap, no compile"], results["fsspec"]),
        Row("  vs fsspec reading the records only (floor)", results["kvmap"], results["fsspec, records only"]),
    ]
    print_report(
        "import: kerchunk parquet directory",
        "ms",
        rows,
        {"n": count, "record_size": RECORD_SIZE, "repeat": args.repeat, "seed": args.seed},
        notes=[
            f"directory: {size / 1e6:.1f} MB on disk, written by fsspec's LazyReferenceMapper.write (fastparquet)",
            "kvmap reads with pyarrow and validates every reference; fsspec reads with pandas + fastparquet",
            "kvmap pauses the cyclic gc itself; the second row gives the baseline the same",
        ],
    )


if __name__ == "__main__":
    main()
