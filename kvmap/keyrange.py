"""Key-range algebra over Unicode keys ordered by code point.

A :class:`KeyRange` is the half-open interval ``[min, max)``; ``max=None``
means unbounded. Keys are strings of Unicode scalar values, so a bound never
needs to be a surrogate: successors skip the surrogate block, and every bound
this module makes is itself a valid key (it can be written as UTF-8).

>>> prefix_range("c/")
KeyRange(min='c/', max='c0')
>>> range_common_prefix_length("c/0", "c/10")
2
>>> KeyRange("a", "b").contains("az")
True
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "MAX_CODE_POINT",
    "KeyRange",
    "key_successor",
    "prefix_range",
    "prefix_successor",
    "range_common_prefix_length",
]

MAX_CODE_POINT = 0x10FFFF
_SURROGATES_START = 0xD800
_AFTER_SURROGATES = 0xE000


class KeyRange(NamedTuple):
    """The keys ``k`` with ``min <= k`` and (``max is None`` or ``k < max``)."""

    min: str
    max: str | None

    def contains(self, key: str) -> bool:
        """Whether ``key`` lies in the range."""
        return self.min <= key and (self.max is None or key < self.max)

    def is_empty(self) -> bool:
        """Whether no key lies in the range."""
        return self.max is not None and self.max <= self.min

    def intersect(self, other: KeyRange) -> KeyRange:
        """The keys in both ranges (possibly an empty range)."""
        lo = max(self.min, other.min)
        if self.max is None:
            hi = other.max
        elif other.max is None:
            hi = self.max
        else:
            hi = min(self.max, other.max)
        return KeyRange(lo, hi)


def key_successor(key: str) -> str:
    """The smallest key greater than ``key``: ``[key, key_successor(key))`` is ``{key}``."""
    return key + "\x00"


def prefix_successor(prefix: str) -> str | None:
    """The smallest key greater than every key that starts with ``prefix``.

    Returns ``None`` (unbounded) when no such key exists, i.e. when ``prefix``
    is empty or consists only of U+10FFFF.

    >>> prefix_successor("0.1.")
    '0.1/'
    >>> prefix_successor("a\\U0010ffff") , prefix_successor("") , prefix_successor("\\ud7ff")
    ('b', None, '\\ue000')
    """
    stripped = prefix.rstrip(chr(MAX_CODE_POINT))
    if not stripped:
        return None
    last = ord(stripped[-1]) + 1
    if last == _SURROGATES_START:
        last = _AFTER_SURROGATES
    return stripped[:-1] + chr(last)


def prefix_range(prefix: str) -> KeyRange:
    """The range of keys that start with ``prefix``."""
    return KeyRange(prefix, prefix_successor(prefix))


def _at_most(a: str | None, b: str | None) -> bool:
    """``a <= b`` for upper bounds, where ``None`` is +infinity."""
    if b is None:
        return True
    return a is not None and a <= b


def range_common_prefix_length(lo: str, hi: str | None) -> int:
    """Length of the longest string that every key of ``[lo, hi)`` starts with.

    It is the largest ``n <= len(lo)`` with ``hi <= prefix_successor(lo[:n])``:
    a common prefix must be a prefix of ``lo`` (``lo`` is in the range), and the
    keys starting with ``lo[:n]`` are exactly ``[lo[:n], prefix_successor(lo[:n]))``.
    The range must not be empty.

    >>> [range_common_prefix_length(a, b) for a, b in [("0.1", "0.9"), ("c/3", "c/4"), ("a", "b"), ("a", None)]]
    [2, 3, 1, 0]
    """
    # Every n up to the common prefix of lo and hi qualifies, so only the few
    # lengths beyond it need the successor test.
    common = 0
    if hi is not None:
        limit = min(len(lo), len(hi))
        while common < limit and lo[common] == hi[common]:
            common += 1
    for n in range(len(lo), common, -1):
        if _at_most(hi, prefix_successor(lo[:n])):
            return n
    return common
