"""The central directory of a zip archive, parsed from bytes (no I/O).

kvmap reads zip members with range requests: the archive's tail once (end of
central directory record, and usually the whole central directory with it),
then for each member its local header and its data. This module turns those
bytes into member positions; :mod:`kvmap.chain` decides what to read.

Supported: stored (0) and deflated (8) members, ZIP64, UTF-8 and CP437 names.
Encrypted members and other compression methods are reported, not guessed at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["TAIL_SIZE", "ZipFormatError", "ZipIndex", "ZipMember", "local_header_size"]

#: Bytes to read from the end of an archive to be sure of finding its end record
#: (22 bytes) after a comment of at most 65,535 bytes, plus the ZIP64 locator.
TAIL_SIZE = 22 + 0xFFFF + 20

_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_CENTRAL_FIXED = struct.Struct("<4s6H3L5H2L")  # 46 bytes
_LOCAL_FIXED = struct.Struct("<4s5H3L2H")  # 30 bytes
_FULL32 = 0xFFFFFFFF


class ZipFormatError(ValueError):
    """The bytes are not a zip archive kvmap can read."""


@dataclass(frozen=True, slots=True)
class ZipMember:
    """A member's entry in the central directory."""

    name: str
    method: int  # 0 stored, 8 deflate
    compressed_size: int
    size: int
    header_offset: int  # of the local header, from the start of the archive
    encrypted: bool


@dataclass(frozen=True, slots=True)
class ZipIndex:
    """Where the central directory is, and (once parsed) its members by name."""

    cd_offset: int
    cd_size: int
    members: dict[str, ZipMember]

    @staticmethod
    def locate(tail: bytes, archive_size: int) -> tuple[int, int]:
        """(offset, size) of the central directory, from the archive's last bytes ``tail``.

        Raises :class:`ZipFormatError` if ``tail`` holds no end record.
        """
        at = tail.rfind(_EOCD)
        while at >= 0 and at + 22 > len(tail):
            at = tail.rfind(_EOCD, 0, at)
        if at < 0:
            raise ZipFormatError("no end of central directory record (not a zip archive?)")
        (cd_size, cd_offset) = struct.unpack_from("<LL", tail, at + 12)
        if cd_size == _FULL32 or cd_offset == _FULL32:
            loc = at - 20
            if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR:
                raise ZipFormatError("ZIP64 sizes without a ZIP64 locator")
            (eocd64,) = struct.unpack_from("<Q", tail, loc + 8)
            start = eocd64 - (archive_size - len(tail))
            if start < 0 or tail[start : start + 4] != _ZIP64_EOCD:
                raise ZipFormatError("ZIP64 end record not found where its locator says")
            cd_size, cd_offset = struct.unpack_from("<QQ", tail, start + 40)
        if cd_offset + cd_size > archive_size:
            raise ZipFormatError("central directory lies past the end of the archive")
        return cd_offset, cd_size

    @classmethod
    def parse(cls, cd_offset: int, directory: bytes) -> ZipIndex:
        """Parse the central directory bytes. Raises :class:`ZipFormatError` if they are damaged."""
        members: dict[str, ZipMember] = {}
        pos = 0
        while pos + 46 <= len(directory):
            fields = _CENTRAL_FIXED.unpack_from(directory, pos)
            if fields[0] != _CENTRAL:
                raise ZipFormatError(f"bad central directory entry at byte {cd_offset + pos}")
            flags, method = fields[3], fields[4]
            compressed, size = fields[8], fields[9]
            name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
            header = fields[16]
            name_end = pos + 46 + name_len
            raw = directory[pos + 46 : name_end]
            name = raw.decode("utf-8" if flags & 0x800 else "cp437", errors="strict")
            if _FULL32 in (compressed, size, header):
                size, compressed, header = _zip64_extra(
                    directory[name_end : name_end + extra_len], size, compressed, header
                )
            members[name] = ZipMember(name, method, compressed, size, header, bool(flags & 1))
            pos = name_end + extra_len + comment_len
        if pos != len(directory):
            raise ZipFormatError("central directory is truncated")
        return cls(cd_offset, len(directory), members)


def local_header_size(header: bytes) -> int:
    """Bytes from a member's local header to its data, from the header's first 30 bytes.

    Raises :class:`ZipFormatError` if ``header`` is not a local header.
    """
    if len(header) < 30 or header[:4] != _LOCAL:
        raise ZipFormatError("bad local file header")
    fields = _LOCAL_FIXED.unpack_from(header)
    return 30 + int(fields[9]) + int(fields[10])


def _zip64_extra(extra: bytes, size: int, compressed: int, header: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
            # Only the fields that are 0xFFFFFFFF in the fixed part appear, in this order.
            if size == _FULL32:
                size = next(values)
            if compressed == _FULL32:
                compressed = next(values)
            if header == _FULL32:
                header = next(values)
            return size, compressed, header
        pos += 4 + length
    raise ZipFormatError("ZIP64 sizes without a ZIP64 extra field")
