"""What every fuzz target shares: the entry point, known-bug switches, helpers.

A target is a module ``fuzz/fuzz_NAME.py`` with a pure ``check(data: bytes) -> None``
that raises ``AssertionError`` on a defect (and lets nothing but documented kvmap
errors through), and ``main()``, which calls :func:`main` here.
"""

from __future__ import annotations

import gc
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["ROOT", "attempt", "has_surrogate", "known_bug", "main"]

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

#: Set (by ``fuzz/run.py``) to let the fuzzer run past bugs that are known and
#: documented by an xfail regression test: the checks then tolerate exactly those.
SKIP_KNOWN = os.environ.get("KVMAP_FUZZ_SKIP_KNOWN") == "1"

# Only kvmap and the checking code are instrumented: coverage of zarr, asyncio or
# numpy internals would be noise (and asyncio's is not even deterministic).
_INSTRUMENTED = ("kvmap", "tests.reference", "tests.strategies", "fuzz")


def known_bug(name: str) -> bool:
    """Whether the check should tolerate the known bug ``name``: a check that meets a bug which has
    an xfail regression test asks ``if known_bug("name"): return`` first, so that fuzz runs get
    past it (``fuzz/run.py`` sets ``KVMAP_FUZZ_SKIP_KNOWN=1``). The open ones are listed in
    ``fuzz/README.md`` (Findings); the checks of fixed bugs are strict again."""
    return SKIP_KNOWN


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (it is then not a kvmap key)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def attempt(call: Callable[[], T], errors: tuple[type[BaseException], ...]) -> tuple[T | None, BaseException | None]:
    """``(call(), None)``, or ``(None, error)`` if it raised one of ``errors`` (others propagate)."""
    try:
        return call(), None
    except errors as exc:
        return None, exc


def _instrument() -> None:
    import atheris  # type: ignore[import-not-found]

    for obj in gc.get_objects():
        if (
            isinstance(obj, types.FunctionType)
            and isinstance(obj.__module__, str)
            and obj.__module__.startswith(_INSTRUMENTED)
            and obj.__module__ != __name__
        ):
            try:
                atheris.instrument_func(obj)
            except Exception as exc:  # a function atheris cannot rewrite stays as it is
                print(f"fuzz: not instrumented: {obj.__qualname__}: {exc}", file=sys.stderr)


def main(check: Callable[[bytes], None], argv: list[str] | None = None) -> None:
    """Fuzz ``check`` with atheris (libFuzzer flags in ``argv``), or, without atheris, run it on
    every file named in ``argv`` (directories: every file in them) and report how many."""
    argv = sys.argv if argv is None else argv
    try:
        import atheris
    except ImportError:
        files = [p for arg in argv[1:] if not arg.startswith("-") for p in _files(Path(arg))]
        for path in files:
            check(path.read_bytes())
        print(f"fuzz: atheris is not installed; ran the check on {len(files)} file(s)")
        return
    _instrument()
    atheris.Setup(argv, check)
    atheris.Fuzz()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
