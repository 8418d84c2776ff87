"""Type stubs for kvmap's optional C fast path (``kvmap/_speedups.c``)."""

from collections.abc import Callable
from typing import Generic, TypeVar

_R = TypeVar("_R", bound=tuple[object, ...])

class RangeIndex(Generic[_R]):
    """Resolve keys against range pieces: ``targets[bisect_right(bounds, key)]``, made into a ``resolution``."""

    def __new__(
        cls,
        bounds: list[str],
        targets: list[tuple[int, str, int] | None],
        resolution: type[_R],
        encode: Callable[[str], str],
        check_key: Callable[[str], object],
        safe: str,
    ) -> RangeIndex[_R]: ...
    def resolve(self, key: str, /) -> _R | None: ...
    def resolve_many(self, keys: list[str], /) -> list[_R | None]: ...
    def position(self, key: str, /) -> int: ...
    @property
    def levels(self) -> int: ...
