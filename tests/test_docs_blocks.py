"""Every code block of docs/*.md runs: the documentation's examples cannot rot.

Per page, in a new temporary directory:

1. the page's ```` ```python ```` blocks, in order, in one fresh interpreter (they share state, as a
   reader going down the page does), each with its own stdout;
2. then every line starting with ``kvmap `` of its ```` ```sh ````, ```` ```console ```` and
   ```` ```bash ```` blocks (a ``$ `` prompt is allowed), as ``python -m kvmap ...`` in that
   directory, so a page can make its data in Python and then show the commands on it. A line is split
   as a shell splits it (quotes, ``#`` comments, ``\\`` continuations; ``$PWD`` is the directory);
   it must exit 0, unless its comment says ``exit status N``. Other lines
   (``pip install ...``) are installation commands and are not run.

A ```` ```text ```` block right after a code block (nothing but blank lines between) is that block's
output, and is compared with what it printed (``...`` matches anything, whitespace runs are one
space, as in doctests). ``>>>`` blocks are doctests, which pytest's ``--doctest-glob`` runs already.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SHELLS = {"sh", "console", "bash", "shell"}
SEPARATOR = "\x00--- end of block ---\x00"
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_EXIT = re.compile(r"#.*\bexit status (\d+)")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the first line of code, 1-based
    output: str | None = None  # the text block right after it, if any


@dataclass(frozen=True)
class Command:
    argv: list[str]
    line: int
    status: int
    block: int  # the index of its block among the page's shell blocks


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, each with the ``text`` block after it as output."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    last_end = -1  # the line index after the previous block's closing fence
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group("indent"), m.group("fence"), m.group("lang").lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        code = "\n".join(body) + "\n"
        follows = found and last_end >= 0 and all(not line.strip() for line in lines[last_end:i])
        if lang == "text" and follows and found[-1].output is None and found[-1].lang != "text":
            found[-1] = Block(found[-1].lang, found[-1].code, found[-1].line, code)
        else:
            found.append(Block(lang, code, i + 2))
        last_end = j + 1
        i = j + 1
    return found


def is_doctest(block: Block) -> bool:
    return block.code.lstrip().startswith(">>>")


def python_blocks(page_blocks: list[Block]) -> list[Block]:
    return [b for b in page_blocks if b.lang in {"python", "py"} and not is_doctest(b)]


def shell_blocks(page_blocks: list[Block]) -> list[Block]:
    return [b for b in page_blocks if b.lang in SHELLS]


def commands(shell: list[Block], cwd: str) -> list[Command]:
    """The ``kvmap`` lines of the shell blocks, split as a shell would."""
    out = []
    for index, block in enumerate(shell):
        logical: list[tuple[int, str]] = []
        pending = ""
        for n, raw in enumerate(block.code.splitlines()):
            line = raw.rstrip()
            if pending:
                pending += " " + line.strip()
            else:
                start, pending = n, line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            logical.append((block.line + start, pending))
            pending = ""
        for lineno, line in logical:
            line = line.removeprefix("$ ")
            if not line.startswith("kvmap "):
                continue  # an installation command, or output
            status = _EXIT.search(line)
            words = shlex.split(line.replace("${PWD}", cwd).replace("$PWD", cwd), comments=True)
            assert not any("$" in w for w in words), f"line {lineno}: only $PWD is expanded: {line}"
            out.append(Command(words[1:], lineno, int(status.group(1)) if status else 0, index))
    return out


def same_output(expected: str, got: str) -> bool:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    return checker.check_output(expected, got, flags)


def _mismatch(where: str, expected: str, got: str) -> str:
    return f"{where}: output differs\n--- documented:\n{expected}--- printed:\n{got}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update({"NO_COLOR": "1", "COLUMNS": "100", "PYTHONPATH": str(ROOT)})
    return env


_RUNNER = textwrap.dedent(
    f"""
    import json, sys
    page, blocks = json.load(open(sys.argv[1], encoding="utf-8"))
    namespace = {{"__name__": "__main__"}}
    for block in blocks:
        code = "\\n" * (block["line"] - 1) + block["code"]  # tracebacks name the page's lines
        exec(compile(code, page, "exec"), namespace)
        sys.stdout.flush()
        print({SEPARATOR!r}, flush=True)
    """
)


def run_python(page: Path, python: list[Block], cwd: Path) -> None:
    spec = cwd.parent / f"{cwd.name}-blocks.json"
    spec.write_text(json.dumps([str(page), [{"line": b.line, "code": b.code} for b in python]]), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(spec)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    name = page.name
    assert done.returncode == 0, f"{name}: a python block failed:\n{done.stderr}"
    assert not done.stderr, f"{name}: the python blocks wrote to stderr (a warning?):\n{done.stderr}"
    printed = done.stdout.split(SEPARATOR + "\n")
    assert len(printed) == len(python) + 1, f"{name}: {len(printed) - 1} blocks ran, not {len(python)}"
    for block, got in zip(python, printed, strict=False):
        if block.output is not None:
            assert same_output(block.output, got), _mismatch(f"{name}:{block.line}", block.output, got)


def run_commands(page: Path, shell: list[Block], cwd: Path) -> None:
    printed = [""] * len(shell)
    for command in commands(shell, str(cwd)):
        done = subprocess.run(
            [sys.executable, "-m", "kvmap", *command.argv], cwd=cwd, env=_env(), capture_output=True, timeout=600
        )
        stdout = done.stdout.decode("utf-8", "replace")  # kvmap cat writes bytes
        where = f"{page.name}:{command.line}: kvmap {shlex.join(command.argv)}"
        assert done.returncode == command.status, (
            f"{where}: exit status {done.returncode}, documented {command.status}\n{stdout}{done.stderr.decode()}"
        )
        printed[command.block] += stdout
    for block, got in zip(shell, printed, strict=True):
        if block.output is not None:
            assert same_output(block.output, got), _mismatch(f"{page.name}:{block.line}", block.output, got)


def _runnable(page: Path) -> bool:
    found = blocks(page.read_text(encoding="utf-8"))
    return bool(python_blocks(found) or commands(shell_blocks(found), "/"))


PAGES = [p for p in sorted(DOCS.glob("*.md")) if _runnable(p)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_blocks_run(page: Path, tmp_path: Path) -> None:
    found = blocks(page.read_text(encoding="utf-8"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    python = python_blocks(found)
    if python:
        run_python(page, python, cwd)
    run_commands(page, shell_blocks(found), cwd)


def test_the_pages_that_teach_have_runnable_blocks() -> None:
    """The block finder finds the blocks of the task pages (a parser that found none would pass)."""
    names = {p.name for p in PAGES}
    for page in ("getting-started.md", "concepts.md", "howto-patch.md", "howto-allow.md", "formats.md"):
        assert page in names


SAMPLE = """\
Text.

```python
>>> 1 + 1
2

```

```python
x = 6 * 7
print(x)
```

```text
42
```

```sh
pip install kvmap                 # not run
kvmap resolve m.json a \\
    b 'c d'                       # one command over two lines
$ kvmap check m.json              # exit status 1
kvmap cat "$PWD/m.json" a
```

Prose between.

```text
not an output: prose comes first
```
"""


def test_block_finder_on_a_sample() -> None:
    found = blocks(SAMPLE)
    assert [b.lang for b in found] == ["python", "python", "sh", "text"]
    assert is_doctest(found[0])
    assert not is_doctest(found[1])
    assert [b.code for b in python_blocks(found)] == ["x = 6 * 7\nprint(x)\n"]
    assert found[1].output == "42\n"
    assert found[1].line == 10
    assert found[2].output is None  # the text block after it has prose before it
    got = [(c.argv, c.status, c.line) for c in commands(shell_blocks(found), "/tmp/here")]
    assert got == [
        (["resolve", "m.json", "a", "b", "c d"], 0, 20),
        (["check", "m.json"], 1, 22),
        (["cat", "/tmp/here/m.json", "a"], 0, 23),
    ]


def test_output_comparison_is_a_doctest_comparison() -> None:
    assert same_output("file:///.../m.json: ok\n", "file:///tmp/x/m.json: ok\n")
    assert same_output("a  b\n", "a b\n")
    assert not same_output("ok\n", "not ok\n")
