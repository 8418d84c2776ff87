"""A pure-Python stand-in for ``atheris.FuzzedDataProvider`` (the methods the targets use).

The targets build Python values from the fuzz bytes with ``atheris.FuzzedDataProvider``
when atheris is installed, and with this class when it is not (CI runs every target's
``check`` on its seed corpus without atheris). Both must turn the same bytes into the
same values, or a corpus unit found by the fuzzer would mean something else under
pytest: ``tests/test_fuzz_targets.py`` compares the two on random inputs whenever
atheris is importable.

The semantics are libFuzzer's (and atheris 3.0's): bytes, booleans, strings and
floats are taken from the front of the data; integers in a range from the back,
big-endian, reduced modulo the range's size.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FuzzedDataProvider", "provider"]

_U64 = (1 << 64) - 1
_DOUBLE_MAX = 1.7976931348623157e308
_SPECIAL_FLOATS = (
    0.0,
    -0.0,
    float("inf"),
    float("-inf"),
    float("nan"),
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    -2.2250738585072014e-308,
    _DOUBLE_MAX,
    -_DOUBLE_MAX,
)


class FuzzedDataProvider:
    """The subset of ``atheris.FuzzedDataProvider`` the fuzz targets call, byte for byte."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)

    def remaining_bytes(self) -> int:
        return self._end - self._pos

    def _advance(self, n: int) -> None:
        self._pos = self._end if n > self.remaining_bytes() else self._pos + n

    def ConsumeBytes(self, count: int) -> bytes:  # noqa: N802 (atheris' name)
        n = min(count, self.remaining_bytes())
        out = self._data[self._pos : self._pos + n]
        self._advance(n)
        return out

    def ConsumeBool(self) -> bool:  # noqa: N802
        if not self.remaining_bytes():
            return False
        bit = bool(self._data[self._pos] & 1)
        self._advance(1)
        return bit

    def ConsumeInt(self, size: int) -> int:  # noqa: N802
        """A signed little-endian integer of ``size`` bytes (fewer if the data runs out)."""
        return int.from_bytes(self.ConsumeBytes(size), "little", signed=True)

    def _small_int(self, bits: int, span: int) -> int:
        # Bytes from the back, big-endian, as many as ``span`` needs (at most ``bits``).
        result = 0
        offset = 0
        while offset < bits and (span >> offset) > 0 and self._end > self._pos:
            self._end -= 1
            result = (result << 8) | self._data[self._end]
            offset += 8
        if span != _U64:
            result %= span + 1
        return result

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:  # noqa: N802
        span = hi - lo
        if span < 0:
            raise RuntimeError("ConsumeIntInRange: min must be <= max")
        bits = span.bit_length()
        if bits <= 64:
            return lo + self._small_int(bits, span)
        return lo + self.ConsumeInt(bits // 8) % (span + 1)

    def PickValueInList(self, values: list[Any]) -> Any:  # noqa: N802
        n = len(values)
        bits = 8 if n <= 0xFF else 16 if n <= 0xFFFF else 32 if n <= 0xFFFFFFFF else 64
        return values[self._small_int(bits, n - 1)]

    def _unicode(self, count: int, no_surrogates: bool) -> str:
        if count == 0 or not self.remaining_bytes():
            return ""
        if self.remaining_bytes() == 1:
            self._advance(1)
            return ""
        spec = self._data[self._pos]
        self._advance(1)
        if spec & 1:  # ASCII
            return bytes(b & 0x7F for b in self.ConsumeBytes(count)).decode("ascii")
        if spec & 2:  # UTF-16 code units (surrogates unpaired)
            raw = self.ConsumeBytes(count * 2)
            units = [int.from_bytes(raw[i : i + 2], "little") for i in range(0, len(raw) - 1, 2)]
            if no_surrogates:
                units = [u - 0xD800 if 0xD800 <= u < 0xE000 else u for u in units]
            return "".join(map(chr, units))
        raw = self.ConsumeBytes(count * 4)
        points = []
        for i in range(0, len(raw) - 3, 4):
            c = int.from_bytes(raw[i : i + 4], "little") & 0x1FFFFF
            if c & 0x100000:
                c &= ~0x0F0000
            if no_surrogates and 0xD800 <= c < 0xE000:
                c -= 0xD800
            points.append(c)
        return "".join(map(chr, points))

    def ConsumeUnicode(self, count: int) -> str:  # noqa: N802
        return self._unicode(count, no_surrogates=False)

    def ConsumeUnicodeNoSurrogates(self, count: int) -> str:  # noqa: N802
        return self._unicode(count, no_surrogates=True)

    def ConsumeProbability(self) -> float:  # noqa: N802
        n = min(8, self.remaining_bytes())
        integral = int.from_bytes(self._data[self._pos : self._pos + n], "little")
        self._advance(n)
        return float(integral) / float(_U64)

    def ConsumeFloat(self) -> float:  # noqa: N802
        if not self.remaining_bytes():
            return 0.0
        kind = self._data[self._pos]
        self._advance(1)
        if kind <= 10:
            self._advance(min(9, self.remaining_bytes()))
            return _SPECIAL_FLOATS[kind]
        # ConsumeFloatInRange(-max, max): half the span, and a coin for which half.
        result = -_DOUBLE_MAX
        span = _DOUBLE_MAX / 2 - (-_DOUBLE_MAX / 2)
        if self.ConsumeBool():
            result += span
        return result + span * self.ConsumeProbability()


def _implementation() -> Any:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        return FuzzedDataProvider
    return atheris.FuzzedDataProvider


_PROVIDER = _implementation()


def provider(data: bytes) -> Any:
    """atheris' ``FuzzedDataProvider`` over ``data`` if atheris is installed, else this module's."""
    return _PROVIDER(data)
