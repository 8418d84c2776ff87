"""The ``kvmap`` command line: resolve, explain, ls, cat, check, validate, compose, convert, demo.

Every command names its manifest the same way (:func:`kvmap.places.place_url`): a relative
or absolute path, ``~/...``, a ``file://`` or any other URL, or a URL pipeline
(``refs.json|kerchunk:``), and every command that follows a manifest takes
``--allow``/``--allow-all`` for what manifests may reach.

``--json`` prints records for programs: JSON Lines, one object a line, where a command
has many records (``resolve``, ``ls``, ``check``), one JSON object otherwise
(``explain``, ``validate``, ``compose``, ``convert``). Every record of a command has
the same members, ``null`` where a record has no value (an absent key, a clean check).
Colour and progress bars appear only on a terminal (progress on standard error).

Exit status: 0 on success, 1 when the input is bad (an invalid manifest, a file
that cannot be read, a key that cannot be resolved) or ``check`` found problems,
2 for a usage error. Errors are one line on standard error, starting with ``kvmap:``:
a message of several lines (a chain error lists its hops one a line) is joined into one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import importlib
import json
import os
import sys
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kvmap import __version__
from kvmap.chain import ByteRange, Hop, Location
from kvmap.compiled import CompiledMap, Resolution, compile
from kvmap.entries import Entry
from kvmap.errors import KvmapError, ManifestError
from kvmap.formats import ADAPTERS, FORMATS
from kvmap.formats.kvmap_parquet import DEFAULT_BUILD_MEMORY
from kvmap.manifest import Manifest
from kvmap.pipeline import Pipeline
from kvmap.places import place_url
from kvmap.policy import Policy, allow_prefixes
from kvmap.reader import Reader
from kvmap.url import PIPELINE_SEPARATOR, relative_reference, resolve_target

if TYPE_CHECKING:
    from kvmap.convert import Converted

__all__ = ["main"]

T = TypeVar("T")

_EXIT_CODES = """exit status:
  0  success (check: no problem found)
  1  bad input: an invalid manifest, a file that cannot be read, a key that cannot be
     resolved (one line on standard error, starting with "kvmap:"); check: problems found
  2  usage error"""


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


def _inline(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _resolution_json(key: str, r: Resolution | None) -> dict[str, object]:
    """A key's record: the same members whether it resolves or not (``entry`` ``None``: absent)."""
    if r is None:
        return {"key": key, "entry": None, "url": None, "offset": None, "length": None, "inline": None}
    return {
        "key": key,
        "entry": r.entry,
        "url": r.url,
        "offset": r.offset,
        "length": r.length,
        "inline": _inline(r.data),
    }


def _print_json(record: object) -> None:
    print(json.dumps(record, ensure_ascii=False))


def _cmd_resolve(args: argparse.Namespace) -> int:
    found = _reader(args).resolve_sync(args.keys)  # a columnar manifest: only the blocks needed
    for key, r in zip(args.keys, found, strict=True):
        if args.json:
            _print_json(_resolution_json(key, r))
        elif r is None:
            _out(f"{key}\tabsent", "dim")
        else:
            _out(f"{key}\t{_describe_target(r)}\t(entry {r.entry})")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    manifest, cm, prefix = _load(args)
    ex = cm.explain(prefix + args.key)
    walked = _reader(args).explain_sync(args.key)
    if args.json:
        _print_json(
            {
                "key": args.key,
                "manifest": place_url(args.manifest),
                "entries": [
                    {"index": index, "wins": rank == 0, "entry": manifest.entries[index].to_json()}
                    for rank, index in enumerate(ex.entries)
                ],
                "hops": [_hop_json(hop) for hop in walked.hops],
                **_location_json(walked.location),
            }
        )
        return 0
    _out(f"key {args.key!r} in {args.manifest}", "bold")
    if not ex.entries:
        _out("  no entry covers it")
    for rank, index in enumerate(ex.entries):
        note = "wins" if rank == 0 else "shadowed"
        _out(f"  entry {index:<6} {note:<8} {_describe_entry(manifest.entries[index])}", None if rank else "green")
    _out("chain:", "bold")
    for step, hop in enumerate(walked.hops, 1):
        _out(f"  {step}. {hop}")
    _out(f"resolves to: {_describe_location(walked.location)}", "bold")
    return 0


def _hop_json(hop: Hop) -> dict[str, object]:
    return {
        "manifest": hop.manifest,
        "key": hop.key,
        "entry": hop.entry,
        "url": hop.url,
        "offset": hop.offset,
        "length": hop.length,
        "inline": hop.inline,
    }


def _location_json(loc: Location | None) -> dict[str, object]:
    """Where a key's bytes are, as record members (every one ``None``: absent)."""
    if loc is None:
        return {"url": None, "offset": None, "length": None, "inline": None}
    if loc.data is not None:
        return {"url": None, "offset": None, "length": None, "inline": _inline(loc.data)}
    return {"url": loc.url, "offset": loc.offset, "length": loc.length, "inline": None}


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


# -- ls ---------------------------------------------------------------------------------------


def _cmd_ls(args: argparse.Namespace) -> int:
    reader = _reader(args)
    keys = reader.list_prefix_sync(args.prefix)
    # One row a line shown: (key, or directory ending in "/"; is a directory; depth in the tree).
    rows = _tree(keys, args.prefix) if args.tree else [(k, False, 0) for k in keys]
    where: dict[str, tuple[Location | None, int | None, str | None]] = {}
    if args.long:
        where = asyncio.run(_locate_all(reader, [k for k, directory, _ in rows if not directory]))
    failed = 0
    for key, directory, depth in rows:
        found = where.get(key)
        failed += found is not None and found[2] is not None
        if args.json:
            record: dict[str, object] = {"key": key, "directory": directory}
            if args.long:  # a directory has no size or location: null, as an unreadable key's
                loc, size, error = found if found is not None else (None, None, None)
                window = _location_json(loc)
                record.update(
                    size=size,
                    url=window["url"],
                    offset=window["offset"],
                    length=window["length"],
                    inline=None if loc is None else loc.data is not None,
                    error=error,
                )
            _print_json(record)
            continue
        name = _last_segment(key) if args.tree else key
        text = "  " * depth + name
        if found is not None:
            text += "\t" + _describe_listed(*found)
        _out(text, "bold blue" if directory else ("red" if found is not None and found[2] else None))
    if failed:
        return _fail(
            f"{_count(failed, 'key')} listed cannot be read ('kvmap check {args.manifest}' checks every target)"
        )
    return 0


def _tree(keys: list[str], prefix: str) -> list[tuple[str, bool, int]]:
    """The lines of an indented tree of ``keys`` (sorted, each starting with ``prefix``):
    ``(key, or directory ending in "/"; is a directory; depth)``, from the directory ``prefix``
    is in. The keys under a directory are contiguous in sorted order, so each directory is one
    line, before what it holds."""
    rows: list[tuple[str, bool, int]] = []
    shown: set[str] = set()
    base = prefix[: prefix.rfind("/") + 1]
    for key in keys:
        parts = key[len(base) :].split("/")
        for depth in range(len(parts) - 1):
            directory = base + "/".join(parts[: depth + 1]) + "/"
            if directory not in shown:
                shown.add(directory)
                rows.append((directory, True, depth))
        rows.append((key, False, len(parts) - 1))
    return rows


def _last_segment(key: str) -> str:
    inner = key[:-1] if key.endswith("/") else key
    return key[inner.rfind("/") + 1 :]


def _describe_listed(loc: Location | None, size: int | None, error: str | None) -> str:
    if error is not None:
        return f"!\t{error}"
    where = "absent" if loc is None else _short_location(loc)
    return f"{'-' if size is None else size}\t{where}"


def _short_location(loc: Location) -> str:
    if loc.data is not None:
        return "<inline>"
    if loc.offset == 0 and loc.length is None:
        return str(loc.url)
    return f"{loc.url} [offset {loc.offset}, {'to the end' if loc.length is None else f'length {loc.length}'}]"


async def _locate_all(
    reader: Reader, keys: list[str], concurrency: int = 32
) -> dict[str, tuple[Location | None, int | None, str | None]]:
    """Where each key's bytes are after every hop, their size, and why not (a one-line error),
    at most ``concurrency`` keys at once."""

    async def one(key: str) -> tuple[Location | None, int | None, str | None]:
        try:
            return await reader.locate(key), await reader.size(key), None
        except KvmapError as exc:
            return None, None, _one_line(str(exc))

    found = await _bounded([functools.partial(one, key) for key in keys], concurrency)
    return dict(zip(keys, found, strict=True))


async def _bounded(work: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    """Each of ``work`` awaited, at most ``concurrency`` at once, the results in order."""
    results: list[Any] = [None] * len(work)
    queue = iter(range(len(work)))

    async def worker() -> None:
        for i in queue:  # one iterator shared by the workers: each item is taken once
            results[i] = await work[i]()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(work)))))
    return results


# -- check ------------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace) -> int:
    from kvmap.check import check

    if args.pin:
        return _cmd_pin(args)
    if args.output is not None:
        return _fail("-o/--output is for --pin (kvmap check --pin TARGET -o OUT)")
    progress = _Progress("checking", threshold=0) if sys.stderr.isatty() else None
    try:
        report = check(
            args.manifest,
            allow=args.allow,
            allow_all=args.allow_all,
            concurrency=args.concurrency,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    for problem in report.problems:
        if args.json:
            _print_json(problem.to_json())
        else:
            _out(_one_line(str(problem)), "red")
    if not args.json:
        checked = (
            f"{_count(report.targets, 'exact target')} and {_count(report.roots, 'redirect root')} "
            f"in {_count(report.manifests, 'manifest')}"
        )
        if report.ok:
            _out(f"{report.target}: ok, checked {checked}", "green")
        else:
            n = len(report.problems)
            _out(f"{report.target}: {_count(n, 'problem')}, checked {checked}", "bold red")
    return 0 if report.ok else 1


def _cmd_pin(args: argparse.Namespace) -> int:
    """``check --pin``: the manifest with every exact target pinned, saved to ``-o`` (atomically),
    or over the target itself when it is a local JSON manifest and no ``-o`` is given."""
    from kvmap.check import pin_manifest

    output = args.output
    if output is None:
        output = _local_path(place_url(args.manifest))
        if output is None or not output.lower().endswith(".json"):
            return _fail(f"{args.manifest}: --pin rewrites only a local JSON manifest in place; give -o OUT")
    out_path = _local_path(place_url(output))
    if out_path is None:
        return _fail(f"{output}: --pin writes a local file; give -o a path")
    pinned = pin_manifest(args.manifest, allow=args.allow, allow_all=args.allow_all, concurrency=args.concurrency)
    pinned.save(out_path)
    n = sum(1 for e in pinned.entries if e.pins is not None)
    if args.json:
        _print_json({"target": args.manifest, "output": out_path, "pinned": n})
    else:
        _out(f"{args.manifest}: pinned {_count(n, 'exact target')}, wrote {out_path}", "green")
    return 0


# -- compose ----------------------------------------------------------------------------------


def _cmd_compose(args: argparse.Namespace) -> int:
    from kvmap.compose import compose

    out_url = place_url(args.output)
    path = _local_path(out_url)
    if path is None:
        return _fail(f"{out_url}: compose writes a local file; give -o a path")
    members = {name: _member_root(target, out_url) for name, target in args.members}
    root = None if args.root is None else _member_root(args.root, out_url)
    # The members and the root are named on the command line, not by a manifest: compose may
    # read them (and write the root) wherever they are. What they name in turn is held to the
    # policy as every manifest's targets are.
    roots = [*members.values(), *([root] if root is not None else [])]
    named = [_allowed(resolve_target(out_url, url)) for url in roots]
    manifest = compose(
        members,
        attributes=None if args.attrs is None else dict(args.attrs),
        url=out_url,
        zarr_format=None if args.zarr_format == "auto" else int(args.zarr_format),
        consolidated=args.consolidated,
        root=root,
        allow=[*args.allow, *named],
        allow_all=args.allow_all,
    )
    manifest.save(path)
    cm = compile(manifest)
    fmt = 3 if cm.resolve("zarr.json") is not None else 2
    needed = allow_prefixes(cm.target_roots(), out_url)
    if args.json:
        _print_json(
            {
                "output": out_url,
                "entries": len(manifest),
                "members": len(members),
                "zarr_format": fmt,
                "consolidated": args.consolidated,
                "root": None if root is None else resolve_target(out_url, root),
                "allow": needed,
            }
        )
        return 0
    note = ", consolidated" if args.consolidated else ""
    _out(f"{args.output}: a zarr v{fmt} group of {_count(len(members), 'member')}{note}, {len(manifest)} entries")
    _say_allow(needed)
    return 0


def _member_root(target: str, out_url: str) -> str:
    """The member root ``target`` as the manifest at ``out_url`` names it: a local path below the
    output's directory stays relative to it (the group can move with its members), anything else
    is its absolute URL."""
    url = _directory(place_url(target))
    if "://" in target:
        return url
    return relative_reference(url, out_url) or url


def _allowed(url: str) -> str:
    """The allow prefix that lets a manifest reach the member root ``url``: the directory itself,
    or the directory holding the root of a pipeline (``inner.json|kvmap:``)."""
    if PIPELINE_SEPARATOR not in url:
        return url
    return Pipeline.parse(url).root.rpartition("/")[0] + "/"


def _directory(url: str) -> str:
    """``url`` as the root of a member: ending in ``/``, or in the ``:`` of a manifest pipeline."""
    return url if url.endswith(("/", ":")) else url + "/"


def _local_path(url: str) -> str | None:
    """The local path of a ``file://`` URL (``None`` for any other URL, or a pipeline)."""
    if not url.startswith("file://") or PIPELINE_SEPARATOR in url:
        return None
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


def _member(text: str) -> tuple[str, str]:
    name, eq, target = text.partition("=")
    if not eq or not name or not target:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=TARGET")
    return name, target


def _attribute(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: the value is JSON if it parses as JSON, else the text itself (a string)."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


# -- validate, convert ------------------------------------------------------------------------


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (at least 1)")
    return value


def _allow_prefix(text: str) -> str:
    """An allow prefix: a URL as it is, a local path (relative to the working directory, or
    ``~/...``) as its ``file://`` directory URL; a usage error for one the policy refuses."""
    prefix = text if "://" in text else place_url(text).rstrip("/") + "/"
    try:
        Policy(allow=[prefix])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return prefix


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        type=_allow_prefix,
        metavar="PREFIX",
        help="also let manifests reach URLs under this /-terminated prefix, or this local directory (repeatable)",
    )
    p.add_argument(
        "--allow-all",
        action="store_true",
        help="trust the manifests: let them reach any URL (file:// from a remote manifest still needs --allow)",
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        manifest, cm, _ = _load(args)
    except ManifestError as exc:
        if args.json:  # the answer to "is it valid?" is a record too; the error line says why
            _print_json(
                {
                    "manifest": place_url(args.manifest),
                    "valid": False,
                    "entries": None,
                    "error": _one_line(str(exc)),
                    "entry": exc.entry,
                    "field": exc.field,
                }
            )
        raise
    if args.json:
        _print_json(
            {
                "manifest": place_url(args.manifest),
                "valid": True,
                "entries": len(manifest),
                "error": None,
                "entry": None,
                "field": None,
            }
        )
        return 0
    _out(f"{args.manifest}: valid, {len(manifest)} entries; {cm!r}", "green")
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
            memory_bytes=args.memory << 20,
        )
    finally:
        if progress is not None:
            progress.close()
    note = _dropped_note(done)
    if note is not None:  # a warning, not the command's output: stderr, also with --json
        print(f"kvmap: {note}", file=sys.stderr)
    if args.json:
        _print_json(
            {
                "output": place_url(args.output),
                "entries": done.entries,
                "source_format": done.source_format,
                "target_format": done.target_format,
                "allow": list(done.allow),
                "dropped_pins": dict(done.dropped_pins),
                "note": note,
            }
        )
        return 0
    _out(f"{args.output}: {done.entries} entries, {done.source_format} -> {done.target_format}")
    _say_allow(done.allow)
    return 0


def _dropped_note(done: Converted) -> str | None:
    """One line naming the pins a conversion dropped, ``None`` if it dropped none:
    ``kerchunk cannot hold pins: dropped 12 etag, 12 sha256 pins``."""
    from kvmap.convert import KEPT_PINS, LAST_UPDATED_AT
    from kvmap.entries import PIN_FIELDS

    counts = {member: n for member, n in done.dropped_pins.items() if member != LAST_UPDATED_AT and n}
    parts = []
    if counts:
        listed = ", ".join(f"{counts[member]} {member}" for member in PIN_FIELDS if member in counts)
        kept = KEPT_PINS.get(done.target_format, frozenset())
        if not kept:
            why = f"{done.target_format} cannot hold pins: "
        elif not kept >= set(counts):
            why = f"{done.target_format} holds only {' and '.join(sorted(kept))} pins: "
        else:
            why = ""  # pins flattening could not keep (see kvmap.convert)
        parts.append(f"{why}dropped {listed} {'pin' if sum(counts.values()) == 1 else 'pins'}")
    unkept = done.dropped_pins.get(LAST_UPDATED_AT, 0)
    if unkept:
        parts.append(
            f"{_count(unkept, 'last_updated_at checksum')} of the Icechunk input not kept (no kvmap pin says one)"
        )
    return "; ".join(parts) or None


def _say_allow(needed: Sequence[str]) -> None:
    """Say which allow prefixes a reader of the manifest just written needs, if any."""
    if needed:
        flags = " ".join(f"--allow {p}" for p in needed)
        _out(f"it names targets outside its own origin; read it with {flags}", "yellow")


def _cmd_concat(args: argparse.Namespace) -> int:
    from kvmap.concat import concatenate, concatenate_datasets

    out_url = place_url(args.output)
    path = _local_path(out_url)
    if path is None:
        return _fail(f"{out_url}: concat writes a local file; give -o a path")
    options: dict[str, Any] = {
        "attributes": None if args.attrs is None else dict(args.attrs),
        "url": out_url,
        "allow": args.allow,
        "allow_all": args.allow_all,
    }
    if args.dim is not None:
        manifest = concatenate_datasets(args.sources, args.dim, **options)
    else:
        manifest = concatenate(args.sources, 0 if args.axis is None else args.axis, **options)
    manifest.save(path)
    needed = allow_prefixes(compile(manifest).target_roots(), out_url)
    if args.json:
        _print_json({"output": out_url, "entries": len(manifest), "sources": len(args.sources), "allow": needed})
        return 0
    _out(f"{args.output}: {_count(len(args.sources), 'source')} joined, {len(manifest)} entries, no bytes copied")
    _say_allow(needed)
    return 0


def _cmd_squash(args: argparse.Namespace) -> int:
    from kvmap.overlay import squash

    manifest = squash(args.manifest, args.overlay, args.output, allow_base_change=args.allow_base_change)
    out_url = place_url(args.output)
    needed = allow_prefixes(compile(manifest).target_roots(), out_url)
    if args.json:
        _print_json({"output": out_url, "entries": len(manifest), "allow": needed})
        return 0
    _out(f"{args.output}: {len(manifest)} entries, the base with the overlay's newest commit on top")
    _say_allow(needed)
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    import datetime

    from kvmap.overlay import collect_garbage

    done = collect_garbage(args.overlay, grace=datetime.timedelta(hours=args.grace), keep_commits=args.keep_commits)
    if args.json:
        _print_json(
            {
                "overlay": args.overlay,
                "objects": done.objects,
                "commits": done.commits,
                "pending": done.pending,
                "kept": done.kept,
            }
        )
        return 0
    _out(
        f"{args.overlay}: removed {_count(len(done.objects), 'object')}, {_count(len(done.commits), 'commit')} and "
        f"{_count(len(done.pending), 'pending record')} of sessions that never committed, "
        f"kept {_count(done.kept, 'object')}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    demo = importlib.import_module("kvmap.demo")  # on first use: it imports zarr
    return int(demo.main(args.keep))


class _Progress:
    """A progress bar on standard error (a terminal only), shown once the work is of at least
    ``threshold`` items (by default: once following references takes more than a moment)."""

    def __init__(self, description: str = "converting", *, threshold: int = 1000) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._description = description
        self._threshold = threshold

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if total < self._threshold:
                return
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self._description, total=total)
            self._bar.refresh()  # drawn at once, not at the next tick
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _out(text: str, style: str | None = None) -> None:
    """Print ``text`` as one line of standard output: in ``style`` (rich) on a terminal, plain
    otherwise (and when ``NO_COLOR`` is set)."""
    if style is None or not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
        print(text)
        return
    from rich.console import Console
    from rich.text import Text

    # No markup, highlighting or wrapping: keys and URLs are shown as they are.
    Console(highlight=False, soft_wrap=True).print(Text(text, style=style))


_TARGET_HELP = "manifest: a path, URL or URL pipeline (refs.json|kerchunk:)"


def _sub(
    sub: Any, name: str, summary: str, run: Callable[[argparse.Namespace], int], *, target: bool = True
) -> argparse.ArgumentParser:
    """The subcommand ``name``, which ``run`` runs, with its exit statuses in its help."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if target:
        p.add_argument("manifest", metavar="TARGET", help=_TARGET_HELP)
    p.set_defaults(run=run)
    return p


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvmap",
        description="Map keys onto URLs: read, list, check, compose and convert kvmap manifests.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kvmap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "resolve", "print where each key's value is (in the target's own manifest)", _cmd_resolve)
    p.add_argument("keys", nargs="+", metavar="KEY")
    _add_json(p, "one JSON object per key (JSON Lines); an absent key has entry null")
    _add_policy(p)

    p = _sub(sub, "explain", "show the entries covering a key and its whole chain of manifests", _cmd_explain)
    p.add_argument("key")
    _add_json(p, "one JSON object: the covering entries, the hops and where the key resolves")
    _add_policy(p)

    p = _sub(sub, "ls", "list the keys of the composite namespace (every key under PREFIX)", _cmd_ls)
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="only keys that start with it")
    p.add_argument("--tree", action="store_true", help="as an indented tree of directories")
    p.add_argument("--long", action="store_true", help="with each key's size and where it resolves after every hop")
    _add_json(p, "one JSON object per line shown (JSON Lines)")
    _add_policy(p)

    p = _sub(sub, "cat", "write a key's bytes to standard output", _cmd_cat)
    p.add_argument("key")
    p.add_argument("--range", type=_byte_range, metavar="START-END", help="bytes START to END (exclusive), START-, -N")
    _add_policy(p)

    p = _sub(
        sub,
        "check",
        "verify that every exact target and byte window exists and fits, and every redirect root "
        "holds something, through chained manifests (exit 1 when not)",
        _cmd_check,
    )
    p.add_argument("--concurrency", type=_positive, default=32, metavar="N", help="reads in flight (default 32)")
    p.add_argument(
        "--pin",
        action="store_true",
        help="instead of checking, pin every exact target (etag, version and sha256 of its bytes; local "
        "files: sha256 only) and write the manifest to -o, or over TARGET if it is a local JSON file",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="with --pin: the manifest file to write")
    _add_json(p, "one JSON object per problem (JSON Lines), nothing when there is none")
    _add_policy(p)

    p = _sub(sub, "validate", "check a manifest against the specification", _cmd_validate)
    _add_json(p, "one JSON object: valid or not, and why not")
    _add_policy(p)

    p = _sub(
        sub, "compose", "write the manifest of a zarr group whose members live elsewhere", _cmd_compose, target=False
    )
    p.add_argument(
        "members",
        nargs="+",
        type=_member,
        metavar="NAME=TARGET",
        help="a member: its name in the group and its root (a path, URL or pipeline)",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the manifest file to write")
    p.add_argument(
        "--attr",
        dest="attrs",
        action="append",
        type=_attribute,
        metavar="KEY=VALUE",
        help="a root attribute (repeatable); VALUE is JSON, or else a string",
    )
    p.add_argument(
        "--consolidated",
        action="store_true",
        help="put the members' metadata in the root (opens without listing; a snapshot: compose again to refresh)",
    )
    p.add_argument(
        "--zarr-format",
        choices=("2", "3", "auto"),
        default="auto",
        help="the group's zarr format (auto: the one the members share; default)",
    )
    p.add_argument(
        "--root",
        metavar="URL",
        help="a directory where the root metadata is a real object (root attributes and new variables go there)",
    )
    _add_json(p, "one JSON object: what was written")
    _add_policy(p)

    names = ", ".join(sorted(FORMATS))
    p = _sub(
        sub,
        "convert",
        "convert a manifest between formats (kvmap, kerchunk, kvstack, Icechunk...)",
        _cmd_convert,
        target=False,
    )
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
    p.add_argument(
        "--memory",
        type=_positive,
        default=DEFAULT_BUILD_MEMORY >> 20,
        metavar="MIB",
        help="about the most a columnar build holds, in MiB (larger JSON inputs are streamed; default %(default)s)",
    )
    _add_json(p, "one JSON object: what was written")
    _add_policy(p)

    p = _sub(
        sub, "concat", "write the manifest of arrays (or groups) joined along an axis, copying no bytes", _cmd_concat,
        target=False,
    )  # fmt: skip
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="an array (or group): a path, URL or pipeline")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the manifest file to write")
    join = p.add_mutually_exclusive_group()
    join.add_argument("--axis", type=int, metavar="N", help="join arrays along axis N (default 0)")
    join.add_argument("--dim", metavar="NAME", help="join groups: each array with dimension NAME along it")
    p.add_argument(
        "--attr",
        dest="attrs",
        action="append",
        type=_attribute,
        metavar="KEY=VALUE",
        help="an attribute of the result (repeatable); VALUE is JSON, or else a string",
    )
    _add_json(p, "one JSON object: what was written")
    _add_policy(p)

    p = _sub(sub, "squash", "write a base manifest with an overlay's newest commit on top as one manifest", _cmd_squash)
    p.add_argument("overlay", metavar="OVERLAY", help="the overlay's location (a directory path or URL)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the manifest to write (a path or URL)")
    p.add_argument("--allow-base-change", action="store_true", help="squash even if the base changed since")
    _add_json(p, "one JSON object: what was written")

    p = _sub(sub, "gc", "delete the objects of an overlay that no commit references", _cmd_gc, target=False)
    p.add_argument("overlay", metavar="OVERLAY", help="the overlay's location (a directory path or URL)")
    p.add_argument(
        "--grace", type=float, default=24.0, metavar="HOURS", help="keep objects younger than this (default 24)"
    )
    p.add_argument("--keep-commits", type=_positive, metavar="N", help="also delete all but the newest N commits")
    _add_json(p, "one JSON object: what was removed")

    p = _sub(
        sub, "demo", "build a small composite zarr group offline and show what kvmap does", _cmd_demo, target=False
    )
    p.add_argument("--keep", metavar="DIR", help="leave the files in DIR and print the commands to try next")
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
    on standard error and exit status 1; usage errors exit with status 2 (argparse),
    as does ``compose`` given one member name twice.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "compose":
        names = [name for name, _ in args.members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            parser.error(f"compose: member {twice[0]!r} is given twice")
    # Icechunk's Rust core logs warnings (a local repository is "not safe for concurrent
    # commits") to the terminal, which would break --json output and the one-line errors:
    # errors only, unless the user set ICECHUNK_LOG (read when icechunk is first imported).
    os.environ.setdefault("ICECHUNK_LOG", "error")
    try:
        return int(args.run(args))
    except KvmapError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {exc.filename or getattr(args, 'manifest', None)}: {exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
