"""``kvmap demo``: what kvmap is for, in one command, offline and in a few seconds.

It writes two small zarr v3 arrays in two places (``site-a/`` and ``site-b/`` of one
directory), composes them into one group (:func:`kvmap.compose`, saved with
:meth:`kvmap.Manifest.save`), then edits only the manifest: it redirects the
``temperature`` member to a reprocessed copy, patches two chunks of ``precip`` (one with
a new chunk object, one with a byte window of a pack file) and whites its last chunk out.
It opens the result with zarr through :class:`kvmap.KVMapStore` (and xarray when it is
installed) and prints the composite tree, two ``kvmap explain`` traces and the data before
and after.

The files go to a temporary directory, removed at the end; with ``keep`` they go to that
directory and stay, and the demo prints the commands to try on them next::

    kvmap demo --keep demo/
    python -m kvmap.demo --keep demo/
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from kvmap.errors import KvmapError, SaveError

__all__ = ["MANIFEST_NAME", "PATCHED", "TEMPERATURE", "WHITEOUT", "main"]

#: The composite manifest's file name in the demo directory.
MANIFEST_NAME = "composite.json"
#: The chunk of ``precip`` the demo whites out: it reads as the fill value (NaN).
WHITEOUT = "precip/c/2"
#: ``precip`` as the composite reads it: chunks 0 and 1 patched, chunk 2 whited out.
PATCHED = (10.0, 11.0, 12.0, 13.0, math.nan, math.nan)
#: ``temperature`` as the composite reads it: the reprocessed copy (the original plus 0.5).
TEMPERATURE = tuple(tuple(row * 6 + col + 0.5 for col in range(6)) for row in range(4))

# The header of the pack file the byte-window patch reads from: any bytes before the
# chunk, to show that a window need not start at 0.
_PACK_HEADER = b"kvmap demo: a pack of patched chunks\n"
# The keys whose traces the demo prints: a byte-window patch, and the redirected member.
_TRACED = ("precip/c/1", "temperature/c/0/0")


def main(keep: str | os.PathLike[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo, writing its report to ``out`` (standard output if ``None``); return its
    exit status: 0 (or that of the ``kvmap explain`` it runs, had it failed: that printed its
    one error line).

    Without ``keep`` the files go to a new temporary directory, removed before this returns
    (also when it fails). With ``keep`` they go to that directory — created if missing,
    refused if it holds anything — and are left there, and the report ends with the
    ``kvmap`` commands and a ``python -c`` line to try on them. Plain text unless ``out`` is
    a terminal (then headings are bold).

    Raises :class:`~kvmap.SaveError` when ``keep`` is not an empty (or new) directory or
    cannot be created; any other :class:`~kvmap.KvmapError` means kvmap failed on the
    demo's own files (a bug).
    """
    out = sys.stdout if out is None else out
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="kvmap-demo-") as tmp:
            return _run(Path(tmp).resolve(), out, kept=False)
    return _run(_empty_directory(Path(keep)), out, kept=True)


def _empty_directory(path: Path) -> Path:
    """``path`` made an empty directory (created if missing), as its real absolute path.
    Raises :class:`SaveError` if it is a file or holds anything: the demo never writes over files."""
    if path.exists() and not path.is_dir():
        raise SaveError(errno.ENOTDIR, "kvmap demo --keep needs a directory, not a file", str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise SaveError(errno.ENOTEMPTY, "kvmap demo --keep needs a new or empty directory", str(path))
    except SaveError:
        raise
    except OSError as exc:
        raise SaveError(exc.errno or errno.EIO, f"kvmap demo --keep: {exc.strerror or exc}", str(path)) from exc
    return path.resolve()


def _run(root: Path, out: TextIO, *, kept: bool) -> int:
    """Build the demo under ``root`` and report on it to ``out``; the exit status."""
    import numpy as np
    import zarr

    from kvmap import cli
    from kvmap.reader import Reader
    from kvmap.store import KVMapStore

    bold = out.isatty()
    manifest_path = root / MANIFEST_NAME
    composed, final = _build(root)

    def heading(text: str) -> None:
        print(f"\n\033[1m{text}\033[0m" if bold else f"\n{text}", file=out)

    print(f"kvmap demo: one zarr group from two arrays in two places, in {root}", file=out)
    print("  site-a/temperature.zarr  float32 (y: 4, x: 6), chunks 2x3", file=out)
    print("  site-b/precip.zarr       float32 (time: 6), chunks of 2", file=out)
    heading(f"{MANIFEST_NAME}: kvmap.compose, then a redirect, two patches and a whiteout")
    notes = {3: "redirect", 4: "patch", 5: "patch", 6: "whiteout"}
    for index, entry in enumerate(final.entries):
        print(f"  {index}  {notes.get(index, 'compose'):<9} {cli._describe_entry(entry)}", file=out)

    reader = Reader(manifest_path)
    members = [name for name in reader.list_dir_sync("") if name != "zarr.json"]
    heading(f"the composite tree (Reader.list_prefix): members {', '.join(members)}")
    for directory, names in _tree(reader.list_prefix_sync("")):
        print(f"  {directory or '/':<18} {' '.join(names)}", file=out)
    print(f"  ({WHITEOUT} is whited out: it is not listed)", file=out)

    heading("kvmap explain (the command's output)")
    for n, key in enumerate(_TRACED):
        if n:
            print(file=out)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = cli.main(["explain", str(manifest_path), key])
        if status != 0:
            return status  # the command printed its one error line
        for line in printed.getvalue().splitlines():
            print(f"  {line}", file=out)

    heading("the data (zarr.open_group on kvmap.KVMapStore), before and after")
    before = zarr.open_group(KVMapStore(composed, read_only=True), mode="r")
    after = zarr.open_group(KVMapStore(manifest_path, read_only=True), mode="r")
    for name, label in (("temperature", "temperature[0]"), ("precip", "precip")):
        old, new = (np.asarray(_array(g, name)[...]) for g in (before, after))
        if name == "temperature":
            old, new = old[0], new[0]  # one row is enough to see the redirect
        print(f"  {label:<15} before {_values(old):<26} after {_values(new)}", file=out)
    fill = _array(after, "precip").fill_value
    gone = reader.explain_sync(WHITEOUT)
    winner = gone.hops[-1].entry if gone.hops else None
    print(
        f"  {WHITEOUT} -> {'absent' if gone.location is None else gone.location.url}"
        f" (Reader.explain_sync: entry {winner} wins), so zarr gives the fill value {fill}",
        file=out,
    )
    _xarray_summary(manifest_path, out)

    if kept:
        heading("next, try")
        for line in _commands(manifest_path):
            print(f"  {line}", file=out)
    else:
        print("\n(the files are removed; `kvmap demo --keep DIR` keeps them and shows what to try)", file=out)
    return 0


def _build(root: Path) -> tuple[Any, Any]:
    """Write the demo's arrays, patches and manifest under ``root``; the manifest
    :func:`kvmap.compose` made (before the edits) and the saved one (after)."""
    import numpy as np
    import zarr

    from kvmap.compose import compose
    from kvmap.manifest import Manifest

    def array(path: Path, values: Any, chunks: tuple[int, ...], dims: list[str]) -> None:
        a = zarr.create_array(
            str(path), shape=values.shape, chunks=chunks, dtype="f4", fill_value=math.nan, dimension_names=dims
        )
        a[...] = values

    temperature = np.arange(24, dtype="f4").reshape(4, 6)
    array(root / "site-a" / "temperature.zarr", temperature, (2, 3), ["y", "x"])
    array(root / "site-b" / "precip.zarr", np.arange(6, dtype="f4"), (2,), ["time"])
    # The member the redirect switches to: a reprocessed copy, in the other place.
    array(root / "site-b" / "reprocessed" / "temperature.zarr", temperature + 0.5, (2, 3), ["y", "x"])

    # New chunks for the patches are encoded by zarr itself (same metadata as precip) in a
    # scratch array, then copied out: one as an object of its own, one into a pack file.
    fixes = root / "fixes"
    fixes.mkdir()
    with tempfile.TemporaryDirectory(prefix="kvmap-demo-scratch-") as scratch:
        array(Path(scratch) / "p.zarr", np.array((*PATCHED[:4], 0, 0), dtype="f4"), (2,), ["time"])
        shutil.copyfile(Path(scratch) / "p.zarr" / "c" / "0", fixes / "precip-c0")
        chunk = (Path(scratch) / "p.zarr" / "c" / "1").read_bytes()
    (fixes / "pack.bin").write_bytes(_PACK_HEADER + chunk)

    path = root / MANIFEST_NAME
    composed = compose(
        {"temperature": "site-a/temperature.zarr/", "precip": "site-b/precip.zarr/"},
        attributes={"title": "kvmap demo"},
        url=str(path),
    )
    composed.save(path)
    edits: list[dict[str, Any]] = [
        {"prefix": "temperature/", "path": "site-b/reprocessed/temperature.zarr/"},  # later entries win
        {"key": "precip/c/0", "path": "fixes/precip-c0"},
        {"key": "precip/c/1", "path": "fixes/pack.bin", "offset": len(_PACK_HEADER), "length": len(chunk)},
        {"key": WHITEOUT, "path": None},
    ]
    final = Manifest.from_json({"kvmap": 1, "entries": composed.to_json()["entries"] + edits}, url=str(path))
    final.save(path)
    return composed, final


def _array(group: Any, name: str) -> Any:
    """The array ``name`` of a zarr group (``TypeError`` if it is a group)."""
    import zarr

    found = group[name]
    if not isinstance(found, zarr.Array):
        raise TypeError(f"{name!r} is not a zarr array")
    return found


def _tree(keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``keys`` grouped by directory: each directory (``""`` the root, else ending in ``/``)
    in order, with the last components of its keys.

    >>> _tree(["zarr.json", "a/zarr.json", "a/c/0", "a/c/1"])
    [('', ['zarr.json']), ('a/', ['zarr.json']), ('a/c/', ['0', '1'])]
    """
    groups: dict[str, list[str]] = {}
    for key in keys:
        directory, _, name = key.rpartition("/")
        groups.setdefault(directory + "/" if directory else "", []).append(name)
    return sorted(groups.items())


def _values(a: Any) -> str:
    """An array's values, short: ``[0 1.5 nan]``."""
    return "[" + " ".join(f"{float(v):g}" for v in a.ravel()) + "]"


def _xarray_summary(manifest_path: Path, out: TextIO) -> None:
    """One line of what xarray sees in the composite, or why it is skipped."""
    try:
        import xarray as xr
    except ImportError:
        print("  xarray: not installed, skipped", file=out)
        return
    from kvmap.store import KVMapStore

    # consolidated=False: a composite has no consolidated metadata, and asking for it warns.
    with xr.open_zarr(KVMapStore(manifest_path, read_only=True), consolidated=False) as ds:
        shapes = ", ".join(
            f"{name}({', '.join(f'{dim}: {n}' for dim, n in ds[name].sizes.items())})" for name in sorted(ds.data_vars)
        )
        print(f"  xarray.open_zarr: {shapes}; precip = {_values(ds['precip'].values)}", file=out)


def _commands(manifest_path: Path) -> list[str]:
    """The commands to try on a kept demo, ready to paste into a POSIX shell."""
    m = shlex.quote(str(manifest_path))
    code = (
        f"import kvmap, zarr; g = zarr.open_group(kvmap.KVMapStore({str(manifest_path)!r}, read_only=True),"
        " mode='r'); print(g['precip'][:])"
    )
    # Double quotes read best; shlex quoting when the path holds what a shell expands in them.
    snippet = f'"{code}"' if not any(c in code for c in '"$`\\!') else shlex.quote(code)
    return [
        f"kvmap ls {m} --long",
        f"kvmap resolve {m} precip/c/0 precip/c/1 {WHITEOUT}",
        f"kvmap explain {m} {WHITEOUT}",
        f"kvmap cat {m} zarr.json",
        f"kvmap check {m}",
        f"python -c {snippet}",
    ]


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m kvmap.demo [--keep DIR]``: the exit status; an error is one ``kvmap:`` line."""
    from kvmap.cli import _fail

    parser = argparse.ArgumentParser(prog="python -m kvmap.demo", description="Show what kvmap is for, offline.")
    parser.add_argument("--keep", metavar="DIR", help="write the files to DIR (new or empty) and leave them there")
    args = parser.parse_args(argv)
    try:
        return main(args.keep)
    except KvmapError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(_main())
