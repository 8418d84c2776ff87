"""Fuzz target: zip archives — ``kvmap.zipindex`` on the bytes, and a whole read through a Reader.

The input is an archive (any bytes). First ``kvmap.zipindex`` takes it apart as kvmap's
reader would: ``ZipIndex.locate`` on its tail, ``ZipIndex.parse`` on the directory, and
for every member ``local_header_size``, ``check_crc`` and (bounded) ``inflate``; nothing
but :class:`~kvmap.zipindex.ZipFormatError` may come out, and what locate/parse say must
lie within the archive. That gives, for every member name, the expected outcome: its
bytes, absent, or an error.

Then the archive goes into a memory store as ``a.zip``, behind the manifest
``[{"prefix": "", "path": "a.zip|zip:"}]``, and a :class:`kvmap.Reader` reads every
member, a few names that are not members, and the listing: every read must give the
expected bytes or ``None``, or raise a :class:`kvmap.KvmapError` where an error is
expected — nothing else, and never a hang (archives are at most ``-max_len`` bytes, and
inflation is bounded by the declared size, and by what so few bytes can inflate to).
Where Python's ``zipfile`` reads a member that kvmap's directory places at the same
offset with the same sizes and CRC, the bytes must be the same.
"""

from __future__ import annotations

import io
import sys
import zipfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import obstore

import kvmap
from fuzz._harness import attempt, main
from kvmap.zipindex import TAIL_SIZE, ZipFormatError, ZipIndex, ZipMember, check_crc, inflate, local_header_size

STORE = "kvmap-fuzz-zip"
MANIFEST_URL = f"memory://{STORE}/m.json"
MANIFEST = [{"prefix": "", "path": "a.zip|zip:"}]
ERROR = "error"
OTHER_NAMES = ["", "missing", "a", "a/", "/", "é", "%41", "a|zip:b"]

_memory = kvmap.memory_store(STORE)


def check(data: bytes) -> None:
    expected = model(data)
    _check_reader(data, expected)


def model(data: bytes) -> dict[str, bytes | str | None] | str:
    """Each member's expected read (bytes, or ``ERROR``) by name, or ``ERROR`` for an archive kvmap
    cannot read at all. Only ``ZipFormatError`` may come out of ``kvmap.zipindex``."""
    size = len(data)
    tail_start = max(0, size - TAIL_SIZE)
    try:
        cd_offset, cd_size = ZipIndex.locate(data[tail_start:], size)
    except ZipFormatError:
        return ERROR
    assert cd_offset >= 0, cd_offset
    assert cd_size >= 0, cd_size
    assert cd_offset + cd_size <= size, (cd_offset, cd_size, size)
    try:
        index = ZipIndex.parse(cd_offset, data[cd_offset : cd_offset + cd_size])
    except ZipFormatError:
        return ERROR
    assert (index.cd_offset, index.cd_size) == (cd_offset, cd_size), index
    out: dict[str, bytes | str | None] = {}
    for name, member in index.members.items():
        assert member.name == name
        assert member.header_offset + 30 + member.compressed_size <= cd_offset, ("member overlaps", member)
        out[name] = _member(data, member)
    _compare_with_zipfile(data, index, out)
    return out


def _member(data: bytes, m: ZipMember) -> bytes | str:
    if m.encrypted or m.method not in (0, 8):
        return ERROR
    try:
        start = m.header_offset + local_header_size(data[m.header_offset : m.header_offset + 30])
    except ZipFormatError:
        return ERROR
    if start + m.compressed_size > len(data):
        return ERROR  # the member (even an empty one) runs past the end of the archive
    raw = data[start : start + m.compressed_size]
    if m.method == 0:
        if m.compressed_size != m.size:
            return ERROR
        try:
            check_crc(memoryview(data)[start : start + m.size], m.crc, m.name)
        except ZipFormatError:
            return ERROR
        return raw
    try:
        out = inflate(raw, m.size, m.crc)
    except ZipFormatError:
        return ERROR
    assert len(out) == m.size, m
    assert zlib.crc32(out) == m.crc, m
    return out


def _compare_with_zipfile(data: bytes, index: ZipIndex, expected: dict[str, bytes | str | None]) -> None:
    """Where zipfile and kvmap place a member alike, they must read the same bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = {info.filename: info for info in zf.infolist()}
            for name, want in expected.items():
                info, m = infos.get(name), index.members[name]
                if not isinstance(want, bytes) or info is None or info.flag_bits & 1:
                    continue
                same = (info.header_offset, info.compress_size, info.file_size, info.CRC, info.compress_type) == (
                    m.header_offset,
                    m.compressed_size,
                    m.size,
                    m.crc,
                    m.method,
                )
                if not same:
                    continue
                try:
                    got = zf.read(info)
                except Exception:  # zipfile's own complaints (a name that differs in the local header...)
                    continue
                assert got == want, ("zipfile reads other bytes", name, got[:64], want[:64])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return


def _check_reader(data: bytes, expected: dict[str, bytes | str | None] | str) -> None:
    obstore.put(_memory, "a.zip", data)
    reader = kvmap.Reader(kvmap.Manifest.from_json(MANIFEST, url=MANIFEST_URL))
    # An archive that does not parse fails every read alike: two names are enough.
    others = OTHER_NAMES[:2] if isinstance(expected, str) else [n for n in OTHER_NAMES if n not in expected]
    for name in [*([] if isinstance(expected, str) else expected), *others]:
        want = expected if isinstance(expected, str) else expected.get(name)
        got, error = attempt(lambda name=name: reader.get_sync(name), (kvmap.KvmapError,))
        if error is not None:
            assert want == ERROR, ("the Reader fails where the archive reads", name, error, _short(want))
            continue
        assert want != ERROR, ("the Reader reads what kvmap.zipindex refuses", name, _short(got))
        assert (None if got is None else bytes(got)) == want, ("the Reader reads other bytes", name)
    try:
        listed = reader.list_prefix_sync("")
    except kvmap.KvmapError:
        assert expected == ERROR, "the Reader cannot list an archive whose directory parses"
        return
    assert expected != ERROR, ("the Reader lists an archive kvmap.zipindex refuses", listed)
    assert listed == sorted(expected), ("the listing is not the member names", listed, sorted(expected))


def _short(value: object) -> object:
    return value[:64] if isinstance(value, bytes | str) else value


if __name__ == "__main__":
    main(check)
