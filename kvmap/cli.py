"""The ``kvmap`` command line: resolve, explain, validate, cat and convert.

Every command names its manifest the same way (:func:`kvmap.places.place_url`): a relative
or absolute path, ``~/...``, a ``file://`` or any other URL, or a URL pipeline
(``refs.json|kerchunk:``), and takes ``--allow``/``--allow-all`` for what manifests may reach.

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
from typing import Any

from kvmap.chain import ByteRange, Location
from kvmap.compiled import CompiledMap, Resolution, compile
from kvmap.entries import Entry
from kvmap.errors import KvmapError
from kvmap.formats import ADAPTERS, FORMATS
from kvmap.manifest import Manifest
from kvmap.pipeline import Pipeline
from kvmap.places import place_url
from kvmap.reader import Reader

__all__ = ["main"]


def _load(args: argparse.Namespace) -> tuple[Manifest, CompiledMap, str]:
    """The target's own manifest, compiled, and the key prefix its pipeline gives."""
    manifest = _reader(args).manifest_sync()
    pipe = Pipeline.parse(place_url(args.manifest))
    last = pipe.adapters[-1] if pipe.adapters else None
    prefix = last.path if last is not None and last.name in ADAPTERS else ""
    return manifest, compile(manifest), prefix


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
    found = _reader(args).resolve_sync(args.keys)  # a columnar manifest: only the blocks needed
    for key, r in zip(args.keys, found, strict=True):
        if args.json:
            print(json.dumps(_resolution_json(key, r), ensure_ascii=False))
        elif r is None:
            print(f"{key}\tabsent")
        else:
            print(f"{key}\t{_describe_target(r)}\t(entry {r.entry})")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    manifest, cm, prefix = _load(args)
    ex = cm.explain(prefix + args.key)
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
    manifest, cm, _ = _load(args)
    print(f"{args.manifest}: valid, {len(manifest)} entries; {cm!r}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from kvmap.convert import convert

    progress = _Progress() if sys.stderr.isatty() else None
    try:
        done = convert(
            args.manifest,
            args.output,
            source_format=args.source_format,
            target_format=args.target_format,
            materialize=args.materialize,
            allow=args.allow,
            allow_all=args.allow_all,
            target=args.target,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    print(f"{args.output}: {done.entries} entries, {done.source_format} -> {done.target_format}")
    if done.allow:
        flags = " ".join(f"--allow {p}" for p in done.allow)
        print(f"it names targets outside its own origin; read it with {flags}")
    return 0


class _Progress:
    """A progress bar on standard error (a terminal only), shown once following references
    takes more than a moment."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if total < 1000:
                return
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task("following references", total=total)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


_TARGET_HELP = "manifest: a path, URL or URL pipeline (refs.json|kerchunk:)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmap", description="Resolve keys through kvmap manifests.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resolve", help="print where each key's value is")
    p.add_argument("manifest", metavar="TARGET", help=_TARGET_HELP)
    p.add_argument("keys", nargs="+", metavar="KEY")
    p.add_argument("--json", action="store_true", help="one JSON object per key (JSON Lines)")
    _add_policy(p)
    p.set_defaults(run=_cmd_resolve)
    p = sub.add_parser("explain", help="show the entries covering a key and its whole chain of manifests")
    p.add_argument("manifest", metavar="TARGET", help=_TARGET_HELP)
    p.add_argument("key")
    _add_policy(p)
    p.set_defaults(run=_cmd_explain)
    p = sub.add_parser("cat", help="write a key's bytes to standard output")
    p.add_argument("manifest", metavar="TARGET", help=_TARGET_HELP)
    p.add_argument("key")
    p.add_argument("--range", type=_byte_range, metavar="START-END", help="bytes START to END (exclusive), START-, -N")
    _add_policy(p)
    p.set_defaults(run=_cmd_cat)
    p = sub.add_parser("validate", help="check a manifest against the specification")
    p.add_argument("manifest", metavar="TARGET", help=_TARGET_HELP)
    _add_policy(p)
    p.set_defaults(run=_cmd_validate)
    names = ", ".join(sorted(FORMATS))
    p = sub.add_parser("convert", help="convert a manifest between formats (kvmap, kerchunk, kvstack, Icechunk...)")
    p.add_argument("manifest", metavar="IN", help="input: a path, URL or pipeline (format detected unless --from)")
    p.add_argument("output", metavar="OUT", help="output: a path or URL (format from --to, else its name)")
    p.add_argument("--from", dest="source_format", choices=sorted(FORMATS), metavar="FORMAT", help=f"one of {names}")
    p.add_argument("--to", dest="target_format", choices=sorted(FORMATS), metavar="FORMAT", help=f"one of {names}")
    p.add_argument(
        "--materialize",
        action="store_true",
        help="list what prefix and range entries reach and write one reference per key",
    )
    p.add_argument("--target", metavar="URL", help="the URL of kerchunk references whose url is null")
    _add_policy(p)
    p.set_defaults(run=_cmd_convert)
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
