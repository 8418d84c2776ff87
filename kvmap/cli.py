"""The ``kvmap`` command line: resolve, explain, validate and cat.

Exit status: 0 on success, 1 when the input is bad (an invalid manifest, a file
that cannot be read, a key that cannot be resolved), 2 for a usage error. Errors
are one line on standard error, starting with ``kvmap:``: a message of several
lines (a chain error lists its hops one a line) is joined into one.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence

from kvmap.chain import ByteRange, Location
from kvmap.compiled import CompiledMap, Resolution, compile
from kvmap.entries import Entry
from kvmap.errors import KvmapError
from kvmap.manifest import Manifest
from kvmap.reader import Reader
from kvmap.url import is_absolute

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
    if not is_absolute(args.manifest):
        manifest, cm = _load(args.manifest)
        ex = cm.explain(args.key)
        print(f"key {args.key!r} in {args.manifest}")
        if not ex.entries:
            print("  no entry covers it")
        for rank, index in enumerate(ex.entries):
            note = "wins" if rank == 0 else "shadowed"
            print(f"  entry {index:<6} {note:<8} {_describe_entry(manifest.entries[index])}")
    walked = _reader(args).explain_sync(args.key)
    print("chain:")
    for step, hop in enumerate(walked.hops, 1):
        print(f"  {step}. {hop}")
    print(f"resolves to: {_describe_location(walked.location)}")
    return 0


def _describe_location(loc: Location | None) -> str:
    if loc is None:
        return "absent"
    if loc.data is not None:
        return f"<inline, {len(loc.data)} bytes>"
    length = "to the end" if loc.length is None else f"length {loc.length}"
    return f"{loc.url} [offset {loc.offset}, {length}]"


def _cmd_cat(args: argparse.Namespace) -> int:
    data = _reader(args).get_sync(args.key, args.range)
    if data is None:
        return _fail(f"key {args.key!r} does not exist in {args.manifest}")
    sys.stdout.buffer.write(bytes(data))
    sys.stdout.buffer.flush()
    return 0


def _reader(args: argparse.Namespace) -> Reader:
    return Reader(args.manifest, allow=args.allow, allow_all=args.allow_all)


def _byte_range(text: str) -> ByteRange:
    """``START-END`` (END exclusive), ``START-`` or ``-N`` (the last N bytes)."""
    start, dash, end = text.partition("-")
    try:
        if not dash or (not start and not end):
            raise ValueError
        if not start:
            return (None, int(end))
        first = int(start)
        if not end:
            return (first, None)
        last = int(end)
        if first < 0 or last < first:
            raise ValueError
        return (first, last)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START-END, START- or -N") from None


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PREFIX",
        help="also let manifests reach URLs under this /-terminated prefix (repeatable)",
    )
    p.add_argument(
        "--allow-all",
        action="store_true",
        help="trust the manifests: let them reach any URL (file:// from a remote manifest still needs --allow)",
    )


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
    p = sub.add_parser("explain", help="show the entries covering a key and its whole chain of manifests")
    p.add_argument("manifest", help="manifest file, URL or pipeline")
    p.add_argument("key")
    _add_policy(p)
    p.set_defaults(run=_cmd_explain)
    p = sub.add_parser("cat", help="write a key's bytes to standard output")
    p.add_argument("manifest", metavar="TARGET", help="manifest file, URL or pipeline")
    p.add_argument("key")
    p.add_argument("--range", type=_byte_range, metavar="START-END", help="bytes START to END (exclusive), START-, -N")
    _add_policy(p)
    p.set_defaults(run=_cmd_cat)
    p = sub.add_parser("validate", help="check a manifest against the specification")
    p.add_argument("manifest", help="manifest file")
    p.set_defaults(run=_cmd_validate)
    return parser


def _one_line(message: str) -> str:
    """``message`` as one line: its lines stripped, blank ones dropped, joined with ``"; "``
    (with a space after a line that ends in ``:``, which introduces the lines after it)."""
    out = ""
    for line in message.splitlines():  # every Unicode line boundary, not only "\n"
        line = line.strip()
        if line:
            out += ("" if not out else " " if out.endswith(":") else "; ") + line
    return out


def _fail(message: str) -> int:
    """Print ``message`` as the one error line on standard error; return exit status 1."""
    print(f"kvmap: {_one_line(message)}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Errors kvmap raises (:class:`~kvmap.KvmapError`) and ``OSError`` become one line
    on standard error and exit status 1; usage errors exit with status 2 (argparse).
    """
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KvmapError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {exc.filename or args.manifest}: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
