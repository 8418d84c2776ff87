"""A compact, read-only hash table from exact keys to fixed-size rows.

Why not a ``dict``: at a million keys a ``dict[str, int]`` costs ~140 bytes per
key (the str objects, the table, one int object per value) before any payload.
Here all keys live in one UTF-8 byte buffer and every slot is four int64 words in one
flat array, which is ~60-90 bytes per key *including* the payload, and a lookup
touches about as many cache lines as a ``dict`` lookup does.

Layout: the keys' UTF-8 bytes, concatenated, form ``buf``. Open addressing with
linear probing at load factor 1/2: slot ``s`` occupies ``table[4*s : 4*s+4]``,
a ``word`` (``start << 29 | byte_length << 8 | tag``, or -1 when empty) and
three payload words. ``tag`` is 8 bits of the key's hash, so
most probes of other keys are rejected without touching the key buffer. The table
is built in one vectorised pass: sorted by home slot, each key goes to
``max(home, previous + 1)``; probing never wraps because the array is long
enough to hold every overflow, plus one empty sentinel slot.

The table uses the process's ``str`` hash, so it is only valid in the process
that built it (it is never pickled: rebuild it from the manifest).

>>> t = KeyTable.build(["a/0", "é/1"], np.array([[7, 8, 9], [1, 2, 3]], dtype=np.int64))
>>> t.row(t.find("é/1")), t.find("zz"), len(t)
((1, 2, 3), -1, 2)
>>> t.find_many(["é/1", "zz", "a/0"]).tolist() == [t.find("é/1"), -1, t.find("a/0")]
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_KEY_LENGTH", "KeyTable", "KeyTooLongError"]

_WIDTH = 4
_TAG_BITS = 8
_LEN_BITS = 21
_START_SHIFT = _LEN_BITS + _TAG_BITS
_MATCH_MASK = (1 << _START_SHIFT) - 1
#: Longest key the table stores, in UTF-8 bytes.
MAX_KEY_LENGTH = (1 << _LEN_BITS) - 1
_MAX_BUFFER = 1 << (63 - _START_SHIFT)


_PAD = bytes(8)
_ALL_ONES = np.uint64(2**64 - 1)


def _word_view(data: bytes) -> npt.NDArray[np.uint64]:
    """The little-endian uint64 starting at every byte offset of ``data`` (zero-copy, unaligned)."""
    return np.ndarray(shape=(max(len(data) - 7, 0),), dtype="<u8", buffer=data, strides=(1,))


class KeyTooLongError(ValueError):
    """A key is longer than :data:`MAX_KEY_LENGTH` bytes; ``position`` is its index."""

    def __init__(self, position: int) -> None:
        super().__init__(f"key {position} is longer than {MAX_KEY_LENGTH} UTF-8 bytes")
        self.position = position


def _utf8(keys: Sequence[str], joined: str) -> tuple[bytes, npt.NDArray[np.int64]]:
    """The keys' UTF-8 bytes, concatenated and padded with 8 zero bytes, and each key's byte length.

    ``joined`` is ``"".join(keys)``: when it is ASCII, one encode serves all keys.
    Raises ``UnicodeEncodeError`` if a key holds a lone surrogate.
    """
    if joined.isascii():
        return joined.encode("ascii") + _PAD, np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    encoded = [k.encode("utf-8") for k in keys]
    return b"".join(encoded) + _PAD, np.fromiter(map(len, encoded), dtype=np.int64, count=len(keys))


def _tag(h: int) -> int:
    return (h >> 40) & 0xFF


class KeyTable:
    """Exact keys (distinct) → rows of three int64 payload words."""

    __slots__ = ("_array", "_n", "_words", "buf", "cap", "table")

    buf: bytes
    cap: int
    table: memoryview
    _array: npt.NDArray[np.int64]
    _words: npt.NDArray[np.uint64]
    _n: int

    @classmethod
    def build(
        cls, keys: Sequence[str], payload: npt.NDArray[np.int64], hashes: npt.NDArray[np.int64] | None = None
    ) -> KeyTable:
        """Build a table of the *distinct* ``keys``; ``payload[i]`` is row ``i``'s three words.

        ``hashes`` may pass ``hash(key)`` of every key, if the caller has them.

        Raises :class:`KeyTooLongError` if a key is longer than
        :data:`MAX_KEY_LENGTH` bytes, ``ValueError`` if the keys together exceed
        the buffer the word can address.
        """
        n = len(keys)
        self = object.__new__(cls)
        self._n = n
        self.cap = cap = max(8, 2 * n + 1)
        # The 8 trailing zero bytes let the word view read a full word at every key.
        self.buf, lengths = _utf8(keys, "".join(keys))
        if len(self.buf) >= _MAX_BUFFER:
            raise ValueError("the keys are too long in total for one key table")
        if n and int(np.max(lengths)) > MAX_KEY_LENGTH:
            raise KeyTooLongError(int(np.argmax(lengths > MAX_KEY_LENGTH)))
        self._words = _word_view(self.buf)
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        if hashes is None:
            hashes = np.fromiter(map(hash, keys), dtype=np.int64, count=n)
        home = hashes % cap  # numpy's % on int64 is floor modulo, as Python's
        order = np.argsort(home)  # any order among equal homes makes a valid table
        ranks = np.arange(n, dtype=np.int64)
        pos = np.maximum.accumulate(home[order] - ranks) + ranks if n else ranks
        slots = max(cap, int(pos[-1]) + 1 if n else 0) + 1  # + one empty sentinel
        array = np.full(slots * _WIDTH, -1, dtype=np.int64)
        at = pos * _WIDTH
        array[at] = (starts << _START_SHIFT | lengths << _TAG_BITS | ((hashes >> 40) & 0xFF))[order]
        rows = np.take(payload, order, axis=0)
        for j in range(3):
            array[at + 1 + j] = rows[:, j]
        self._array = array
        self.table = array.data  # a memoryview: indexing it gives Python ints
        return self

    def __len__(self) -> int:
        return self._n

    def find(self, key: str) -> int:
        """The index of ``key``'s slot in :attr:`table` (a multiple of 4), or -1.

        Raises ``UnicodeEncodeError`` if ``key`` holds a lone surrogate.
        """
        h = hash(key)
        k = key.encode("utf-8")  # UnicodeEncodeError for a lone surrogate
        i = (h % self.cap) * _WIDTH
        want = len(k) << _TAG_BITS | _tag(h)
        table, buf = self.table, self.buf
        while True:
            w = table[i]
            if w < 0:
                return -1
            if w & _MATCH_MASK == want and buf.startswith(k, w >> _START_SHIFT):
                return i
            i += _WIDTH

    def find_many(self, keys: Sequence[str], joined: str | None = None) -> npt.NDArray[np.int64]:
        """:meth:`find` for each key, vectorised: probes and byte comparisons run in numpy.

        ``joined`` may pass ``"".join(keys)`` if the caller has it. Raises
        ``UnicodeEncodeError`` if a key holds a lone surrogate.
        """
        n = len(keys)
        query, lengths = _utf8(keys, "".join(keys) if joined is None else joined)
        qbytes = _word_view(query)
        qstarts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=qstarts[1:])
        hashes = np.fromiter(map(hash, keys), dtype=np.int64, count=n)
        want = lengths << _TAG_BITS | ((hashes >> 40) & 0xFF)
        slot = (hashes % self.cap) * _WIDTH
        found = np.full(n, -1, dtype=np.int64)
        todo = np.arange(n)
        array = self._array
        while todo.size:
            words = array[slot[todo]]
            live = words >= 0
            todo, words = todo[live], words[live]
            maybe = (words & _MATCH_MASK) == want[todo]
            if maybe.any():
                cand = todo[maybe]
                hit = self._same_bytes(words[maybe] >> _START_SHIFT, qbytes, qstarts[cand], lengths[cand])
                found[cand[hit]] = slot[cand[hit]]
                todo = np.concatenate((todo[~maybe], cand[~hit]))
            slot[todo] += _WIDTH
        return found

    def _same_bytes(
        self,
        starts: npt.NDArray[np.int64],
        query: npt.NDArray[np.uint64],
        qstarts: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.bool_]:
        """Whether ``buf[starts[i]:+lengths[i]] == query bytes [qstarts[i]:+lengths[i]]`` for each i.

        Compares eight bytes at a time through unaligned little-endian uint64
        views (both buffers are padded with 8 bytes); the last word of a key is
        masked to the bytes that belong to it.
        """
        words = (lengths + 7) >> 3
        segment = np.repeat(np.arange(len(lengths)), words)
        within = (np.arange(int(words.sum())) - np.repeat(np.cumsum(words) - words, words)) << 3
        left = lengths[segment] - within
        mask = np.where(left >= 8, _ALL_ONES, (np.uint64(1) << (left.astype(np.uint64) << np.uint64(3))) - np.uint64(1))
        differ = ((self._words[starts[segment] + within] ^ query[qstarts[segment] + within]) & mask) != 0
        same: npt.NDArray[np.bool_] = np.bincount(segment[differ], minlength=len(lengths)) == 0
        return same

    def row(self, i: int) -> tuple[int, int, int]:
        """The three payload words of slot index ``i`` (from :meth:`find`)."""
        t = self.table
        return t[i + 1], t[i + 2], t[i + 3]

    def items(self) -> Iterator[tuple[str, int]]:
        """Every ``(key, slot index)``, in table order."""
        t, buf = self._array, self.buf
        for i in np.flatnonzero(t[::_WIDTH] >= 0).tolist():
            w = int(t[i * _WIDTH])
            start = w >> _START_SHIFT
            yield buf[start : start + ((w >> _TAG_BITS) & MAX_KEY_LENGTH)].decode("utf-8"), i * _WIDTH
