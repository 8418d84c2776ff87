"""The ``kvmap`` command line: resolve, explain and validate manifests.

Exit status: 0 on success, 1 when the input is bad (an invalid manifest, a file
that cannot be read, a key that cannot be resolved), 2 for a usage error. Errors
are one line on standard error, starting with ``kvmap:``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence

from kvmap.compiled import CompiledMap, Resolution, compile
from kvmap.entries import Entry
from kvmap.errors import KvmapError
from kvmap.manifest import Manifest

__all__ = ["main"]


def _load(path: str) -> tuple[Manifest, CompiledMap]:
    manifest = Manifest.load(path)
    return manifest, compile(manifest)


def _describe_target(r: Resolution) -> str:
    if r.data is not None:
        return f"<inline, {len(r.data)} bytes>"
    window = []
    if r.offset is not None:
        window.append(f"offset {r.offset}")
    if r.length is not None:
        window.append(f"length {r.length}")
    return f"{r.url}" + (f" [{', '.join(window)}]" if window else "")


def _describe_entry(entry: Entry) -> str:
    if entry.selector == "key":
        selector = f"key {entry.key!r}"
    elif entry.selector == "prefix":
        selector = f"prefix {entry.range.min!r} (strip {entry.strip})"
    else:
        hi = "unbounded" if entry.range.max is None else repr(entry.range.max)
        selector = f"range [{entry.range.min!r}, {hi}) (strip {entry.strip})"
    if entry.target == "absent":
        target = "absent (whiteout)"
    elif entry.target in ("data", "json"):
        target = f"inline {entry.target}"
    else:
        target = str(entry.path)
    return f"{selector} -> {target}"


def _resolution_json(key: str, r: Resolution | None) -> dict[str, object]:
    if r is None:
        return {"key": key, "entry": None}
    return {
        "key": key,
        "entry": r.entry,
        "url": r.url,
        "offset": r.offset,
        "length": r.length,
        "inline": None if r.data is None else base64.b64encode(r.data).decode("ascii"),
    }


def _cmd_resolve(args: argparse.Namespace) -> int:
    _, cm = _load(args.manifest)
    for key, r in zip(args.keys, cm.resolve_many(args.keys), strict=True):
        if args.json:
            print(json.dumps(_resolution_json(key, r), ensure_ascii=False))
        elif r is None:
            print(f"{key}\tabsent")
        else:
            print(f"{key}\t{_describe_target(r)}\t(entry {r.entry})")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    manifest, cm = _load(args.manifest)
    ex = cm.explain(args.key)
    print(f"key {args.key!r} in {args.manifest}")
    if not ex.entries:
        print("  no entry covers it")
    for rank, index in enumerate(ex.entries):
        note = "wins" if rank == 0 else "shadowed"
        print(f"  entry {index:<6} {note:<8} {_describe_entry(manifest.entries[index])}")
    result = "absent" if ex.resolution is None else _describe_target(ex.resolution)
    print(f"resolves to: {result}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    manifest, cm = _load(args.manifest)
    print(f"{args.manifest}: valid, {len(manifest)} entries; {cm!r}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmap", description="Resolve keys through kvmap manifests.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resolve", help="print where each key's value is")
    p.add_argument("manifest", help="manifest file")
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--json", action="store_true", help="one JSON object per key (JSON Lines)")
    p.set_defaults(run=_cmd_resolve)
    p = sub.add_parser("explain", help="show every entry covering a key, winner first")
    p.add_argument("manifest", help="manifest file")
    p.add_argument("key")
    p.set_defaults(run=_cmd_explain)
    p = sub.add_parser("validate", help="check a manifest against the specification")
    p.add_argument("manifest", help="manifest file")
    p.set_defaults(run=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KvmapError as exc:
        print(f"kvmap: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"kvmap: cannot read {exc.filename or args.manifest}: {exc.strerror or exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
