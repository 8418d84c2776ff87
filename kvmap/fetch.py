"""The request protocol of format loaders: what a loader asks for, without doing I/O.

A loader is a generator function ``load(url)`` (``url``: the document's URL, against which
its relative references resolve; ``None`` for a document that has none) that *yields*
:class:`Fetch` requests and receives, for each, the bytes asked for or ``None`` if that
object does not exist; it returns the :class:`~kvmap.Manifest`. The walk answers the
requests through its own reads (so the policy, the limits, shared reads and both the sync
and async drivers apply), tests answer them from a dict:

>>> def load(url):
...     text = yield Fetch()
...     return text.upper()
>>> drive(load("file:///m.json"), {"": b"abc"}.get)
b'ABC'
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Fetch", "Loading", "drive"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Fetch:
    """A read a loader needs: the object ``name`` below the document — ``""`` the document
    itself, otherwise the object at the document's URL + ``"/"`` + ``name`` (a document
    that is a directory, such as kerchunk's parquet references) — whole, or
    ``byte_range`` of it (``(start, end)`` half-open, ``(start, None)`` to the end,
    ``(None, n)`` the last ``n`` bytes)."""

    name: str = ""
    byte_range: tuple[int, int] | tuple[int, None] | tuple[None, int] | None = None


#: What a loader is: yields fetches, receives bytes or ``None``, returns its result.
Loading = Generator[Fetch, "bytes | None", T]


def drive(loading: Generator[Fetch, bytes | None, T], answer: Callable[[str], bytes | None]) -> T:
    """Run ``loading`` to its end, answering each fetch with ``answer(name)`` cut to the
    fetch's byte range (or ``None``). For tests and for documents already in memory."""
    try:
        request = next(loading)
        while True:
            data = answer(request.name)
            if data is not None and request.byte_range is not None:
                data = _cut(data, request.byte_range)
            request = loading.send(data)
    except StopIteration as stop:
        result: T = stop.value
        return result


def _cut(data: bytes, byte_range: tuple[int, int] | tuple[int, None] | tuple[None, int]) -> bytes:
    start, end = byte_range
    if start is None:
        return data[len(data) - (end or 0) :] if end else b""
    return data[start:end]
