"""mkdocs hooks (mkdocs.yml ``hooks:``): the pages that are made, not written.

- ``cli.md``: the command-line reference, from the parser itself (``kvmap.cli._parser()``): every
  subcommand with its usage, arguments and help, so it cannot drift from ``kvmap --help``;
- ``api.md``: the API reference of everything in ``kvmap.__all__``, rendered by mkdocstrings from the
  docstrings (a name added to ``__all__`` appears without editing a page);
- ``spec.md`` and ``benchmark-notes.md``: ``spec/kvmap-spec.md`` and ``bench/README.md``, included as
  they are in the repository (they stay where they are, and are read on GitHub too).

Links in the pages that point out of ``docs/`` (``../spec/kvmap-spec.md#...``, right on GitHub) are
rewritten to the included pages; a link to any other file of the repository becomes its text and the
repository path, since the site has no copy of it.
"""

from __future__ import annotations

import argparse
import html
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

#: Repository files included as pages of the site: repository path -> page.
INCLUDED = {"spec/kvmap-spec.md": "spec.md", "bench/README.md": "benchmark-notes.md"}

#: The API reference's sections, in order; a public name in none of them goes under "Other".
API_GROUPS: dict[str, list[str]] = {
    "Manifests and resolving keys": [
        "Manifest",
        "Entry",
        "KeyRange",
        "compile",
        "CompiledMap",
        "Resolution",
        "Explanation",
        "Piece",
        "KeyMap",
    ],
    "Reading bytes": ["Reader", "Explained", "Hop", "Location", "Policy", "memory_store"],
    "Checking a manifest's targets": ["check", "CheckReport"],
    "zarr and xarray": ["KVMapStore", "compose", "open_zarr"],
    "Formats and pipelines": ["convert", "Converted", "Pipeline", "Adapter"],
    "Errors": [
        "KvmapError",
        "ManifestError",
        "InvalidKeyError",
        "ResolveError",
        "ChainError",
        "PipelineError",
        "PolicyError",
        "TargetError",
        "DanglingReferenceError",
        "WriteError",
        "SaveError",
        "ConvertError",
        "MissingDependencyError",
    ],
}

#: The pages made by on_files.
GENERATED = {*INCLUDED.values(), "cli.md", "api.md"}

_LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


# -- links out of docs/ ---------------------------------------------------------------------------


def rewrite_links(markdown: str, source: str, page: str) -> str:
    """``markdown`` (the text of repository file ``source``, shown as site page ``page``) with its
    relative links to repository files outside ``docs/`` made right for the site."""
    source_dir = posixpath.dirname(source)
    page_dir = posixpath.dirname(page)

    def fix(match: re.Match[str]) -> str:
        text, target = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.IGNORECASE):
            return match.group(0)  # a URL, an anchor on the page, or site-absolute
        path, hashmark, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(source_dir, path))
        if repo_path in INCLUDED:
            site_path = INCLUDED[repo_path]
        elif repo_path.startswith("docs/"):
            site_path = repo_path.removeprefix("docs/")
        else:  # a file the site does not have: name it
            shown = repo_path + ("/" if path.endswith("/") else "")
            return f"{text} (`{shown}` in the repository)"
        relative = posixpath.relpath(site_path, page_dir or ".")
        return f"[{text}]({relative}{hashmark}{anchor})"

    out: list[str] = []
    fenced = False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(fix, line))
    return "".join(out)


# -- the CLI reference ----------------------------------------------------------------------------


def _md(text: str) -> str:
    """Plain help text as Markdown text (no emphasis, no HTML, no links)."""
    return re.sub(r"([\\`*_\[\]])", r"\\\1", html.escape(text, quote=False))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        metavar = formatter._format_args(action, action.dest.upper()) if action.nargs != 0 else ""
        if action.option_strings:
            name = ", ".join(action.option_strings) + (f" {metavar}" if metavar else "")
        else:
            name = metavar or action.dest
        help_text = formatter._expand_help(action) if action.help else ""
        extra = []
        if action.required and action.option_strings:
            extra.append("required")
        line = f"- `{name}`" + (f": {_md(help_text)}" if help_text else "")
        if extra:
            line += f" ({'; '.join(extra)})"
        lines.append(line)
    return lines


def _help_text(parser: argparse.ArgumentParser, usage_only: bool = False) -> str:
    """``parser``'s help (or usage) as argparse prints it 100 columns wide: the same on every machine."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    try:
        return parser.format_usage() if usage_only else parser.format_help()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def cli_reference() -> str:
    from kvmap import cli

    parser = cli._parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help or "" for a in commands._choices_actions}
    out = [
        "# Command-line reference",
        "",
        "Generated from the parser of `kvmap` (`kvmap/cli.py`) when the site is built, so it says what",
        "`kvmap --help` and `kvmap COMMAND --help` say. Every `TARGET` is a manifest path (relative,",
        "absolute, `~/...`), a URL or a URL pipeline (`refs.json|kerchunk:`), the same in every command;",
        "`--allow PREFIX` and `--allow-all` widen the security policy where a manifest is followed",
        "([allow-lists](howto-allow.md)).",
        "",
        "| command | what it does |",
        "|---|---|",
        *(
            f"| [`kvmap {name}`](#kvmap-{name}) | {_md(summaries[name]).replace('|', '&#124;')} |"
            for name in commands.choices
        ),
        "",
        "```text",
        _help_text(parser).rstrip(),
        "```",
    ]
    for name, sub in commands.choices.items():
        out += [
            "",
            f"## `kvmap {name}` {{#kvmap-{name}}}",
            "",
            _sentence(_md(summaries[name])),
            "",
            "```text",
            _help_text(sub, usage_only=True).strip(),
            "```",
            "",
            *_arguments(sub),
            "",
            f"<details><summary><code>kvmap {name} --help</code></summary>",
            "",
            "```text",
            _help_text(sub).rstrip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(out) + "\n"


# -- the API reference ----------------------------------------------------------------------------


def api_reference() -> str:
    import kvmap

    public = list(kvmap.__all__)
    grouped = {name for names in API_GROUPS.values() for name in names}
    groups = {title: [n for n in names if n in public] for title, names in API_GROUPS.items()}
    groups["Other"] = [n for n in public if n not in grouped]
    out = [
        "# API reference",
        "",
        "Everything `kvmap` exports (`kvmap.__all__`), rendered from the docstrings when the site is",
        "built. Import it from `kvmap` itself (`kvmap.Reader`, `kvmap.compile`...); the anchor of each",
        "(`#kvmap.reader.Reader`) names the module that defines it.",
    ]
    for title, names in groups.items():
        if not names:
            continue
        out += ["", f"## {title}"]
        for name in names:
            obj = getattr(kvmap, name)
            out += ["", f"::: {obj.__module__}.{obj.__qualname__}"]
    return "\n".join(out) + "\n"


# -- mkdocs events --------------------------------------------------------------------------------


def on_files(files: Files, config: Any) -> Files:
    for source, page in INCLUDED.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=rewrite_links(text, source, page)))
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    files.append(File.generated(config, "api.md", content=api_reference()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri in GENERATED:
        return markdown  # made above, links already right
    return rewrite_links(markdown, "docs/" + page.file.src_uri, page.file.src_uri)
