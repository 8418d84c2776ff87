"""Run every kvmap benchmark with its default arguments, one after another, and print all tables."""

from __future__ import annotations

import gc
import sys

import bench_compile
import bench_edits
import bench_kerchunk
import bench_kerchunk_parquet
import bench_load
import bench_local_read
import bench_memory
import bench_read
import bench_resolve
import bench_resolve_many
import bench_scale
import bench_store

SCRIPTS = (
    bench_compile,
    bench_edits,
    bench_load,
    bench_resolve,
    bench_resolve_many,
    bench_read,
    bench_local_read,
    bench_store,
    bench_memory,
    bench_kerchunk,
    bench_kerchunk_parquet,
    bench_scale,
)


def main() -> None:
    for script in SCRIPTS:
        script.main([])
        sys.stdout.flush()
        gc.collect()


if __name__ == "__main__":
    main()
