"""A griffe extension for the API reference: kvmap's docstrings are written in reST-flavoured prose
(Sphinx roles, doctest examples); mkdocstrings renders Markdown. This turns the few reST forms they
use into Markdown before rendering (mkdocs.yml names it under mkdocstrings' python handler):

- ``:class:`~kvmap.Reader``` and the other roles become code spans (``Reader``; the ``~`` form keeps
  the last name, as Sphinx shows it);
- doctest runs (``>>>`` lines and their output, up to a blank line) become fenced ``pycon`` blocks,
  where Markdown would read ``>>>`` as nested block quotes;
- a paragraph ending in ``::`` (a reST literal block follows) ends in ``:``; the indented block after
  it is a Markdown code block already.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]*?)(?:\s*<([^`>]*)>)?`")


def _role(match: re.Match[str]) -> str:
    tilde, text, target = match.groups()
    if target:  # :role:`text <target>`: the text is what Sphinx shows
        return f"`{text.strip()}`"
    if tilde:
        text = text.rsplit(".", 1)[-1]
    return f"`{text}`"


def markdown(text: str) -> str:
    """``text`` (a docstring) with its reST forms in Markdown."""
    out: list[str] = []
    fence: str | None = None  # the indentation of an open doctest fence
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if fence is None and stripped.startswith(">>>"):
            fence = indent
            out.append(f"{indent}```pycon")
        elif fence is not None and not stripped:
            out.append(f"{fence}```")
            fence = None
        if fence is None:
            line = _ROLE.sub(_role, line)
            if line.endswith("::") and not line.endswith(" ::"):
                line = line[:-1]
            elif line.endswith(" ::"):
                line = line[:-3]
        out.append(line)
    if fence is not None:
        out.append(f"{fence}```")
    return "\n".join(out)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring of the loaded package (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()  # docstrings already rewritten (older griffe sends both events)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None and id(obj.docstring) not in self._done:
                self._done.add(id(obj.docstring))
                obj.docstring.value = markdown(obj.docstring.value)

    on_package_loaded = on_package  # the same event, as older griffe versions name it
