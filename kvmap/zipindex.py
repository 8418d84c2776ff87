"""The central directory of a zip archive, parsed from bytes (no I/O).

kvmap reads zip members with range requests: the archive's tail once (end of
central directory record, and usually the whole central directory with it),
then for each member its local header and its data. This module turns those
bytes into member positions, and checks members' bytes (bounded inflation,
CRC-32); :mod:`kvmap.chain` decides what to read.

Supported: stored (0) and deflated (8) members, ZIP64, UTF-8 and CP437 names.
Encrypted members and other compression methods are reported, not guessed at.

Every function here takes bytes from a possibly hostile archive: whatever they
hold, the only exception that comes out is :class:`ZipFormatError`.
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass

__all__ = [
    "TAIL_SIZE",
    "ZipFormatError",
    "ZipIndex",
    "ZipMember",
    "check_crc",
    "inflate",
    "local_header_size",
]

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
# signature, disk numbers (2), entry counts (2), directory size, offset, comment length
_EOCD_FIXED = struct.Struct("<4s4H2LH")  # 22 bytes
# signature, disk of the ZIP64 end record, its offset, number of disks
_LOCATOR_FIXED = struct.Struct("<4sLQL")  # 20 bytes
# signature, record size, versions (2), disk numbers (2), entry counts (2), directory size, offset
_ZIP64_EOCD_FIXED = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_CENTRAL_FIXED = struct.Struct("<4s6H3L5H2L")  # 46 bytes
_LOCAL_FIXED_SIZE = 30
_LOCAL_NAME_EXTRA = struct.Struct("<HH")  # name and extra lengths, at byte 26 of a local header
_EXTRA_HEADER = struct.Struct("<HH")  # tag, data length
_FULL32 = 0xFFFFFFFF
_ZIP64_TAG = 0x0001

#: Bytes to read from the end of an archive to be sure of finding its end record
#: (22 bytes) after a comment of at most 65,535 bytes, the ZIP64 locator (20) and
#: the fixed part of the ZIP64 end record (56) before them.
TAIL_SIZE = _EOCD_FIXED.size + 0xFFFF + _LOCATOR_FIXED.size + _ZIP64_EOCD_FIXED.size


class ZipFormatError(ValueError):
    """The bytes are not a zip archive (or member) kvmap can read."""


@dataclass(frozen=True, slots=True)
class ZipMember:
    """A member's entry in the central directory (ZIP64 values already applied)."""

    name: str
    method: int  # 0 stored, 8 deflate
    compressed_size: int
    size: int
    header_offset: int  # of the local header, from the start of the archive
    encrypted: bool
    crc: int  # CRC-32 of the uncompressed bytes, as the central directory records it


@dataclass(frozen=True, slots=True)
class ZipIndex:
    """Where the central directory is, and (once parsed) its members by name."""

    cd_offset: int
    cd_size: int
    members: dict[str, ZipMember]

    @staticmethod
    def locate(tail: bytes, archive_size: int) -> tuple[int, int]:
        """(offset, size) of the central directory, from the archive's last bytes ``tail``.

        ``tail`` must be the last ``len(tail)`` bytes of an archive of
        ``archive_size`` bytes (:data:`TAIL_SIZE` of them, or the whole archive if
        it is smaller). The directory returned lies within the archive, before its
        end record. Raises :class:`ZipFormatError` if ``tail`` holds no usable end
        record, if a ZIP64 end record is needed but is missing, damaged or not
        wholly inside ``tail``, or if the directory it names does not fit.
        """
        if archive_size < len(tail):
            raise ZipFormatError(f"{len(tail)} bytes cannot be the tail of an archive of {archive_size} bytes")
        at = _end_record(tail)
        record_position = archive_size - len(tail) + at
        (_, _, _, _, _, cd_size, cd_offset, _) = _EOCD_FIXED.unpack_from(tail, at)
        if cd_size == _FULL32 or cd_offset == _FULL32:
            loc = at - _LOCATOR_FIXED.size
            if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR:
                raise ZipFormatError("ZIP64 sizes without a ZIP64 locator")
            (_, _, eocd64, _) = _LOCATOR_FIXED.unpack_from(tail, loc)
            start = eocd64 - (archive_size - len(tail))
            # The record (fixed part) must lie wholly before the locator, within the
            # bytes we have: a record running into the locator or beyond the tail is
            # damaged, and one before the tail was never written by a real archiver.
            if not 0 <= start <= loc - _ZIP64_EOCD_FIXED.size:
                raise ZipFormatError("ZIP64 end record not found where its locator says")
            fields = _ZIP64_EOCD_FIXED.unpack_from(tail, start)
            if fields[0] != _ZIP64_EOCD:
                raise ZipFormatError("ZIP64 end record not found where its locator says")
            cd_size, cd_offset = fields[8], fields[9]
            record_position = eocd64
        if cd_offset + cd_size > record_position:
            raise ZipFormatError("central directory lies past its end record or the end of the archive")
        return cd_offset, cd_size

    @classmethod
    def parse(cls, cd_offset: int, directory: bytes) -> ZipIndex:
        """Parse the central directory bytes, which start at byte ``cd_offset`` of the archive.

        Every member's local header and data must lie before the directory. When
        two members have the same name the later one is kept (as :mod:`zipfile`
        does). Raises :class:`ZipFormatError` if the directory is damaged: a bad
        signature, an entry running past its end, a name that is not valid UTF-8
        when its flag says it is, a missing or malformed ZIP64 extra field, or a
        member that overlaps the directory.
        """
        if cd_offset < 0:
            raise ZipFormatError(f"central directory offset {cd_offset} is negative")
        members: dict[str, ZipMember] = {}
        end = len(directory)
        pos = 0
        while pos + _CENTRAL_FIXED.size <= end:
            fields = _CENTRAL_FIXED.unpack_from(directory, pos)
            if fields[0] != _CENTRAL:
                raise ZipFormatError(f"bad central directory entry at byte {cd_offset + pos}")
            flags, method, crc = fields[3], fields[4], fields[7]
            compressed, size = fields[8], fields[9]
            name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
            header = fields[16]
            name_end = pos + _CENTRAL_FIXED.size + name_len
            extra_end = name_end + extra_len
            next_pos = extra_end + comment_len
            # Slicing past the end would silently shorten the name or the extra field.
            if next_pos > end:
                raise ZipFormatError(f"central directory entry at byte {cd_offset + pos} runs past the directory")
            raw = directory[pos + _CENTRAL_FIXED.size : name_end]
            try:
                name = raw.decode("utf-8" if flags & 0x800 else "cp437", errors="strict")
            except UnicodeDecodeError:
                raise ZipFormatError(f"the member name at byte {cd_offset + pos} is not valid UTF-8") from None
            if _FULL32 in (compressed, size, header):
                size, compressed, header = _zip64_extra(directory[name_end:extra_end], size, compressed, header, name)
            if header + _LOCAL_FIXED_SIZE + compressed > cd_offset:
                raise ZipFormatError(f"zip member {name!r} overlaps the central directory")
            members[name] = ZipMember(name, method, compressed, size, header, bool(flags & 1), crc)
            pos = next_pos
        if pos != end:
            raise ZipFormatError("central directory is truncated")
        return cls(cd_offset, end, members)


def local_header_size(header: bytes) -> int:
    """Bytes from a member's local header to its data, from the header's first 30 bytes.

    Raises :class:`ZipFormatError` if ``header`` is shorter than 30 bytes or is
    not a local header.
    """
    if len(header) < _LOCAL_FIXED_SIZE or header[:4] != _LOCAL:
        raise ZipFormatError("bad local file header")
    name_len, extra_len = _LOCAL_NAME_EXTRA.unpack_from(header, 26)
    return _LOCAL_FIXED_SIZE + int(name_len) + int(extra_len)


def inflate(raw: bytes, size: int, crc: int | None = None) -> bytes:
    """The ``size`` bytes that the raw deflate stream ``raw`` (a deflated member) holds.

    At most ``size + 1`` bytes are ever inflated, so a member that declares a
    small size but inflates to much more (a zip bomb) costs about ``size`` bytes
    of memory, never what it would inflate to. Bytes after the end of the stream
    are ignored. Raises :class:`ZipFormatError` if the stream is corrupt or
    incomplete, if it inflates to more or fewer than ``size`` bytes, if ``crc``
    is given and the CRC-32 of the result differs, or if ``size`` is negative or
    too large to hold in memory.
    """
    if not 0 <= size < sys.maxsize:
        raise ZipFormatError(f"a zip member of {size} bytes cannot be inflated in memory")
    inflater = zlib.decompressobj(-15)
    try:
        # One byte over the declared size is enough to tell that the stream holds more.
        data = inflater.decompress(raw, size + 1)
    except zlib.error as exc:
        raise ZipFormatError(f"zip member does not inflate: {exc}") from None
    if len(data) > size:
        raise ZipFormatError(f"zip member inflates to more than the {size} bytes its directory entry says")
    if not inflater.eof:
        raise ZipFormatError(f"zip member's deflate stream is incomplete ({len(data)} of {size} bytes)")
    if len(data) != size:
        raise ZipFormatError(f"zip member inflates to {len(data)} bytes, not {size}")
    if crc is not None:
        _check_crc(data, crc, None)
    return data


def check_crc(data: bytes | memoryview, crc: int, name: str) -> None:
    """Check that ``data``, the whole of member ``name``, has the CRC-32 ``crc``.

    Raises :class:`ZipFormatError` naming the member if it does not.
    """
    _check_crc(data, crc, name)


def _check_crc(data: bytes | memoryview, crc: int, name: str | None) -> None:
    if isinstance(data, memoryview) and not data.c_contiguous:
        data = data.tobytes()  # zlib reads contiguous buffers only
    actual = zlib.crc32(data)
    if actual != crc:
        member = "zip member" if name is None else f"zip member {name!r}"
        raise ZipFormatError(f"{member} is damaged: its CRC-32 is {actual:08x}, its directory entry says {crc:08x}")


def _end_record(tail: bytes) -> int:
    """Where the end of central directory record is in ``tail``.

    The record whose comment reaches exactly to the end of ``tail`` wins, so that
    a comment holding the record's signature cannot pass for the record; failing
    that (bytes appended after the archive), the last complete record.
    """
    last = -1
    at = tail.rfind(_EOCD)
    while at >= 0:
        if at + _EOCD_FIXED.size <= len(tail):
            (comment_len,) = struct.unpack_from("<H", tail, at + 20)
            if at + _EOCD_FIXED.size + comment_len == len(tail):
                return at
            if last < 0:
                last = at
        at = tail.rfind(_EOCD, 0, at)
    if last < 0:
        raise ZipFormatError("no end of central directory record (not a zip archive?)")
    return last


def _zip64_extra(extra: bytes, size: int, compressed: int, header: int, name: str) -> tuple[int, int, int]:
    """(size, compressed size, header offset), each 0xFFFFFFFF one replaced from the ZIP64 extra field.

    The field holds 8-byte values for exactly the 0xFFFFFFFF fields, in this order,
    and then possibly more of them (some archivers write all three) and a 4-byte
    disk number. Raises :class:`ZipFormatError` if ``extra`` has no ZIP64 field,
    if a field runs past the end of ``extra``, or if the ZIP64 field is too short
    for the values it must hold or its length is not 8 per value (plus 4).
    """
    wanted = (size == _FULL32) + (compressed == _FULL32) + (header == _FULL32)
    pos = 0
    while pos + _EXTRA_HEADER.size <= len(extra):
        tag, length = _EXTRA_HEADER.unpack_from(extra, pos)
        start = pos + _EXTRA_HEADER.size
        if start + length > len(extra):
            raise ZipFormatError(f"zip member {name!r}: an extra field runs past the end of its entry")
        if tag == _ZIP64_TAG:
            if length < 8 * wanted or length % 8 not in (0, 4):
                raise ZipFormatError(
                    f"zip member {name!r}: a ZIP64 extra field of {length} bytes cannot hold its {wanted} values"
                )
            values = struct.unpack_from(f"<{wanted}Q", extra, start)
            i = 0
            if size == _FULL32:
                size, i = values[i], i + 1
            if compressed == _FULL32:
                compressed, i = values[i], i + 1
            if header == _FULL32:
                header = values[i]
            return size, compressed, header
        pos = start + length
    raise ZipFormatError(f"zip member {name!r}: ZIP64 sizes without a ZIP64 extra field")
