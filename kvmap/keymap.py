"""The map interface the walk, listing and the store use: lookups that may read.

A compiled manifest held in memory (:class:`~kvmap.CompiledMap`) answers at once; a map
too large to hold — a columnar manifest of tens of millions of entries
(:mod:`kvmap.formats.kvmap_parquet`) — reads blocks of its document as it goes. Both are
a :class:`KeyMap`: every lookup is a generator that may yield
:class:`~kvmap.fetch.Fetch` requests (ranges of the map's own document) and
returns its answer, so one walk drives either through the sync, async and batched
drivers alike. The walk keeps a fast path for in-memory maps (``isinstance(m,
CompiledMap)``: call :meth:`CompiledMap.resolve` directly). A format's *opener*
(:class:`kvmap.formats.Format`) gives such a map; its *loader* gives the whole
:class:`~kvmap.Manifest` (for ``kvmap convert``).

Answers are the same for the same entries whatever the implementation: the conformance
vectors and the property tests hold every implementation to :class:`~kvmap.CompiledMap`.

>>> import kvmap
>>> from kvmap.fetch import drive
>>> cm = kvmap.compile([{"prefix": "a/", "path": "s3://b/x/"}])
>>> drive(cm.resolve_io("a/1"), {}.get).url
's3://b/x/1'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from kvmap.fetch import Fetch, Loading

if TYPE_CHECKING:
    from kvmap.compiled import Explanation, RangeTarget, Resolution
    from kvmap.keyrange import KeyRange

__all__ = ["KeyMap", "ready"]

T = TypeVar("T")


@runtime_checkable
class KeyMap(Protocol):
    """A compiled manifest whose lookups may read its document.

    Every ``*_io`` method returns a :data:`~kvmap.fetch.Loading` generator: it
    yields the reads it needs (``Fetch("", (start, end))``: a byte range of the map's own
    document), receives the bytes, and returns what the method of the same name without
    ``_io`` on :class:`~kvmap.CompiledMap` returns — the same answers and the same errors
    (an invalid key raises :class:`~kvmap.InvalidKeyError`).
    """

    #: The document's URL (relative targets resolved against it), ``None`` if it has none.
    url: str | None
    #: What errors call the map.
    name: str | None
    #: How many entries the manifest has (explanations number them from 0).
    n_entries: int

    def resolve_io(self, key: str) -> Loading[Resolution | None]:
        """Where ``key``'s value is; ``None`` if no entry gives it one."""
        ...

    def known(self, key: str) -> tuple[Resolution | None, bool] | None:
        """What :meth:`resolve_io` and :meth:`is_exact_io` answer for ``key``, if the map knows
        it without reading (a key looked up before, or any key of a map in memory); ``None``
        otherwise. The walk's one-step fast path asks this first."""
        ...

    def resolve_many_io(self, keys: Sequence[str]) -> Loading[list[Resolution | None]]:
        """:meth:`resolve_io` of each key, reading each block it needs once."""
        ...

    def explain_io(self, key: str) -> Loading[Explanation]:
        """Every entry that covers ``key``, winner first (it may read more than a lookup)."""
        ...

    def is_exact_io(self, key: str) -> Loading[bool]:
        """Whether an exact entry (a value or a whiteout) decides ``key``."""
        ...

    def exact_keys_io(self, prefix: str = "", *, whiteouts: bool = False) -> Loading[list[str]]:
        """The keys of winning exact entries that start with ``prefix``, sorted (with
        ``whiteouts``, whited-out ones too)."""
        ...

    def range_targets_io(self, within: KeyRange) -> Loading[list[RangeTarget]]:
        """The range pieces with a URL target that meet ``within``, clipped, in key order."""
        ...

    def target_roots(self) -> set[str]:
        """Root URLs (or URL prefixes) that cover every target: what the policy must allow."""
        ...

    def pipeline_roots(self) -> set[str]:
        """The root URLs of every pipeline an entry names: what writes must never touch."""
        ...


def ready(value: T) -> Loading[T]:
    """A lookup that needs no read: a generator that returns ``value`` at once.

    >>> from kvmap.fetch import drive
    >>> drive(ready(3), {}.get)
    3
    """
    if False:  # a generator function that asks for nothing
        yield Fetch()
    return value


class InMemory:
    """The ``*_io`` lookups and :meth:`known` of a map that answers every lookup in memory
    (:class:`~kvmap.CompiledMap`, :class:`~kvmap.EditableMap`), from its plain methods of the
    same names: each a generator that asks for nothing."""

    __slots__ = ()

    def resolve_io(self, key: str) -> Loading[Resolution | None]:
        """:meth:`resolve` as a :class:`KeyMap` lookup (it reads nothing)."""
        return ready(self.resolve(key))  # type: ignore[attr-defined]

    def known(self, key: str) -> tuple[Resolution | None, bool]:
        """:meth:`resolve` and :meth:`is_exact` of ``key`` (a map in memory knows every key)."""
        return self.resolve(key), self.is_exact(key)  # type: ignore[attr-defined]

    def resolve_many_io(self, keys: Sequence[str]) -> Loading[list[Resolution | None]]:
        """:meth:`resolve_many` as a :class:`KeyMap` lookup."""
        return ready(self.resolve_many(keys))  # type: ignore[attr-defined]

    def explain_io(self, key: str) -> Loading[Explanation]:
        """:meth:`explain` as a :class:`KeyMap` lookup."""
        return ready(self.explain(key))  # type: ignore[attr-defined]

    def is_exact_io(self, key: str) -> Loading[bool]:
        """:meth:`is_exact` as a :class:`KeyMap` lookup."""
        return ready(self.is_exact(key))  # type: ignore[attr-defined]

    def exact_keys_io(self, prefix: str = "", *, whiteouts: bool = False) -> Loading[list[str]]:
        """:meth:`exact_keys` as a :class:`KeyMap` lookup."""
        return ready(self.exact_keys(prefix, whiteouts=whiteouts))  # type: ignore[attr-defined]

    def range_targets_io(self, within: KeyRange) -> Loading[list[RangeTarget]]:
        """:meth:`range_targets` as a :class:`KeyMap` lookup."""
        return ready(list(self.range_targets(within)))  # type: ignore[attr-defined]
