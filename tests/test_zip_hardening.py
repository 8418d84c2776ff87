"""kvmap.zipindex on hostile bytes: only ZipFormatError comes out, and valid archives (made by
Python's zipfile, ZIP64 included) parse to exactly what zipfile reports."""

from __future__ import annotations

import contextlib
import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kvmap.zipindex import (
    TAIL_SIZE,
    ZipFormatError,
    ZipIndex,
    ZipMember,
    check_crc,
    inflate,
    local_header_size,
)

FULL32 = 0xFFFFFFFF
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

# zipfile cuts a name at its first NUL and cannot write lone surrogates: neither would compare.
NAMES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
DATA = st.one_of(st.binary(max_size=300), st.integers(0, 2000).map(lambda n: b"ab" * n))
# Each example of the archive properties runs zipfile (with its compressors): a quarter as many.
FEWER = settings(
    max_examples=max(50, settings.default.max_examples // 4),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class Built:
    archive: bytes
    contents: dict[str, bytes]


@st.composite
def archives(draw: st.DrawFn) -> Built:
    """A valid archive made by zipfile: stored/deflated/bzip2/lzma members, a comment, and
    with small ZIP64 limits patched in, ZIP64 extra fields and a ZIP64 end record."""
    names = draw(st.lists(NAMES, max_size=6, unique=True))
    members = [(name, draw(DATA), draw(st.sampled_from(METHODS))) for name in names]
    comment = draw(st.binary(max_size=40))
    assume(b"PK\x05\x06" not in comment)  # zipfile would take it for the end record
    zip64_limit = draw(st.none() | st.integers(0, 2000))
    force = zip64_limit is not None or draw(st.booleans())
    buf = io.BytesIO()
    with _zip64_limits(zip64_limit), zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=force) as f:
                f.write(data)
        zf.comment = comment
    archive = buf.getvalue()
    if _has_zip64_end_record(archive) and draw(st.booleans()):
        archive = _full32_end_record(archive)
    return Built(archive, {name: data for name, data, _ in members})


def _zip64_limits(limit: int | None) -> contextlib.AbstractContextManager[Any]:
    """zipfile writing ZIP64 extra fields for sizes and offsets above ``limit``, and a ZIP64 end
    record for any archive past byte ``limit`` (its limits are module globals it reads per call)."""
    if limit is None:
        return contextlib.nullcontext()
    return mock.patch.multiple(zipfile, ZIP64_LIMIT=limit, ZIP_FILECOUNT_LIMIT=0)


def _has_zip64_end_record(archive: bytes) -> bool:
    at = archive.rfind(b"PK\x05\x06")
    return archive[at - 20 : at - 16] == b"PK\x06\x07"


def _full32_end_record(archive: bytes) -> bytes:
    """The archive with 0xFFFFFFFF for the directory's size and offset in its end record, so
    that a reader must take them from the ZIP64 end record (zipfile writes them only > 4 GiB)."""
    at = archive.rfind(b"PK\x05\x06")
    assert _has_zip64_end_record(archive)
    return archive[: at + 12] + struct.pack("<LL", FULL32, FULL32) + archive[at + 20 :]


def _index(archive: bytes) -> ZipIndex:
    tail = archive[-TAIL_SIZE:]
    cd_offset, cd_size = ZipIndex.locate(tail, len(archive))
    return ZipIndex.parse(cd_offset, archive[cd_offset : cd_offset + cd_size])


def _read(archive: bytes, member: ZipMember) -> bytes:
    """A member's bytes, the way kvmap.chain reads them: local header, then data, checked."""
    start = member.header_offset + local_header_size(archive[member.header_offset : member.header_offset + 30])
    raw = archive[start : start + member.compressed_size]
    if member.method == zipfile.ZIP_DEFLATED:
        return inflate(raw, member.size, member.crc)
    check_crc(raw, member.crc, member.name)
    return raw


def _read_everything(archive: bytes) -> None:
    """Every step of reading every member; raises whatever they raise."""
    for member in _index(archive).members.values():
        if member.method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            _read(archive, member)


# -- valid archives ----------------------------------------------------------------------


@FEWER
@given(archives())
def test_valid_archives_parse_to_what_zipfile_reports(built: Built) -> None:
    index = _index(built.archive)
    with zipfile.ZipFile(io.BytesIO(built.archive)) as zf:
        expected = {
            i.filename: (i.compress_type, i.compress_size, i.file_size, i.header_offset, bool(i.flag_bits & 1), i.CRC)
            for i in zf.infolist()
        }
    got = {
        m.name: (m.method, m.compressed_size, m.size, m.header_offset, m.encrypted, m.crc)
        for m in index.members.values()
    }
    assert got == expected
    assert all(name == m.name for name, m in index.members.items())
    for name, data in built.contents.items():
        member = index.members[name]
        assert member.crc == zlib.crc32(data)
        if member.method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            assert _read(built.archive, member) == data


def test_zip64_end_record_and_extra_fields_are_used() -> None:
    """A sample of the property above, pinned: every ZIP64 structure present at once."""
    buf = io.BytesIO()
    with mock.patch.multiple(zipfile, ZIP64_LIMIT=0, ZIP_FILECOUNT_LIMIT=0), zipfile.ZipFile(buf, "w") as zf:
        for name in ("a", "b/c", "é"):
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(name.encode() * 100)
    archive = _full32_end_record(buf.getvalue())
    cd_at = archive.find(b"PK\x01\x02")
    assert struct.unpack_from("<3L", archive, cd_at + 16)[1:] == (FULL32, FULL32)  # sizes in the extra field
    index = _index(archive)
    assert {n: _read(archive, m) for n, m in index.members.items()} == {
        "a": b"a" * 100,
        "b/c": b"b/c" * 100,
        "é": "é".encode() * 100,
    }


def test_a_comment_holding_an_end_record_signature_is_not_taken_for_it() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m", b"member")
    plain = buf.getvalue()
    # A fake record (a directory of 10 bytes at 0, no comment) inside the real record's comment:
    # zipfile takes the last signature for the record; its comment does not reach the end.
    comment = b"PK\x05\x06" + bytes(8) + struct.pack("<LLH", 10, 0, 0) + b" and more comment"
    at = plain.rfind(b"PK\x05\x06")
    archive = plain[: at + 20] + struct.pack("<H", len(comment)) + comment
    assert ZipIndex.locate(archive, len(archive)) == ZipIndex.locate(plain, len(plain))
    assert _read(archive, _index(archive).members["m"]) == b"member"


# -- hostile bytes -------------------------------------------------------------------------

SIGNATURES = [b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"PK\x01\x02", b"PK\x03\x04"]
INTERESTING_32 = [0, 1, 22, 30, 46, 0xFFFF, 0xFFFFFFFE, FULL32]
CHUNKS = st.one_of(
    st.sampled_from(SIGNATURES),
    st.binary(max_size=24),
    st.sampled_from(INTERESTING_32).map(lambda v: struct.pack("<L", v)),
    st.sampled_from([0, 4, 8, 9, 16, 24, 28, 0xFFFF]).map(lambda v: struct.pack("<HH", 1, v)),
    st.integers(0, 2**64 - 1).map(lambda v: struct.pack("<Q", v)),
)


def _only_zip_format_errors(archive: bytes, archive_size: int | None = None) -> None:
    size = len(archive) if archive_size is None else archive_size
    try:
        cd_offset, cd_size = ZipIndex.locate(archive[-TAIL_SIZE:], size)
    except ZipFormatError:
        pass
    else:
        assert 0 <= cd_offset <= cd_offset + cd_size <= size
    # local_header_size and parse wherever their records may start, and at a few other places.
    starts = {0, len(archive) // 2, max(0, len(archive) - 30)}
    for signature in (b"PK\x01\x02", b"PK\x03\x04"):
        at = archive.find(signature)
        while at >= 0 and len(starts) < 40:
            starts.add(at)
            at = archive.find(signature, at + 1)
    for start in sorted(starts):
        with _maybe_raises():
            local_header_size(archive[start : start + 30])
        for end in (len(archive), len(archive) - 22):
            with _maybe_raises():
                ZipIndex.parse(start, archive[start:end])
    with _maybe_raises():
        _read_everything(archive)


class _maybe_raises:  # noqa: N801 - used like pytest.raises
    """A context in which ZipFormatError may be raised (and is swallowed); anything else escapes."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> bool:
        return kind is not None and issubclass(kind, ZipFormatError)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_zip_format_errors(data: bytes) -> None:
    _only_zip_format_errors(data)


@given(st.lists(CHUNKS, max_size=30).map(b"".join), st.integers(0, 2**64))
def test_signature_soup_raises_only_zip_format_errors(data: bytes, extra_size: int) -> None:
    _only_zip_format_errors(data)
    _only_zip_format_errors(data, len(data) + extra_size)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    archive = bytearray(draw(archives()).archive)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["byte", "u16", "u32", "u64", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(archive) - 1)))
        if how == "byte" and archive:
            archive[at] = draw(st.integers(0, 255))
        elif how == "u16":
            archive[at : at + 2] = struct.pack("<H", draw(st.sampled_from([0, 1, 8, 0xFFFF]) | st.integers(0, 0xFFFF)))
        elif how == "u32":
            archive[at : at + 4] = struct.pack("<L", draw(st.sampled_from(INTERESTING_32) | st.integers(0, FULL32)))
        elif how == "u64":
            archive[at : at + 8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        elif how == "cut":
            archive = archive[at:] if draw(st.booleans()) else archive[:at]
        elif how == "insert":
            archive[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del archive[at : at + draw(st.integers(1, 8))]
    return bytes(archive)


@FEWER
@given(mutated())
def test_mutated_archives_raise_only_zip_format_errors(archive: bytes) -> None:
    _only_zip_format_errors(archive)


# -- crafted central directories: every malformed ZIP64 extra field --------------------------


def _central_entry(
    name: bytes = b"m",
    *,
    extra: bytes = b"",
    comment: bytes = b"",
    compressed: int = 0,
    size: int = 0,
    header: int = 0,
    flags: int = 0,
    method: int = 0,
    name_len: int | None = None,
    extra_len: int | None = None,
) -> bytes:
    fixed = struct.pack(
        "<4s6H3L5H2L",
        b"PK\x01\x02",
        20,
        20,
        flags,
        method,
        0,
        0,
        0,
        compressed,
        size,
        len(name) if name_len is None else name_len,
        len(extra) if extra_len is None else extra_len,
        len(comment),
        0,
        0,
        0,
        header,
    )
    return fixed + name + extra + comment


def _zip64(length: int, values: list[int], tail: bytes = b"") -> bytes:
    return struct.pack("<HH", 1, length) + b"".join(struct.pack("<Q", v) for v in values) + tail


HUGE_OFFSET = 1 << 31


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(_central_entry(size=FULL32), id="zip64-needed-no-extra"),
        pytest.param(_central_entry(size=FULL32, extra=b"\x01\x00"), id="extra-shorter-than-a-header"),
        pytest.param(_central_entry(size=FULL32, extra=struct.pack("<HH", 1, 0)), id="zip64-empty"),
        pytest.param(_central_entry(size=FULL32, compressed=FULL32, extra=_zip64(8, [5])), id="zip64-short"),
        pytest.param(_central_entry(size=FULL32, extra=_zip64(24, [5])), id="zip64-overlong"),
        pytest.param(_central_entry(size=FULL32, extra=_zip64(9, [5], b"x")), id="zip64-length-9"),
        pytest.param(_central_entry(size=FULL32, extra=_zip64(15, [5], b"1234567")), id="zip64-length-15"),
        pytest.param(
            _central_entry(size=FULL32, compressed=FULL32, header=FULL32, extra=_zip64(16, [1, 2])),
            id="zip64-missing-header-offset",
        ),
        pytest.param(
            _central_entry(size=FULL32, extra=struct.pack("<HH", 9, 40) + _zip64(8, [5])), id="other-field-overlong"
        ),
        pytest.param(_central_entry(name_len=200), id="name-past-directory"),
        pytest.param(_central_entry(extra_len=200), id="extra-past-directory"),
        pytest.param(_central_entry(b"\xff\xfe", flags=0x800), id="name-not-utf8"),
        pytest.param(_central_entry(header=HUGE_OFFSET), id="header-offset-past-directory"),
        pytest.param(_central_entry(header=FULL32, extra=_zip64(8, [2**64 - 1])), id="zip64-header-offset-huge"),
        pytest.param(_central_entry(compressed=HUGE_OFFSET), id="data-runs-into-directory"),
        pytest.param(_central_entry()[:45], id="truncated-fixed-part"),
        pytest.param(b"PK\x01\x03" + _central_entry()[4:], id="bad-signature"),
    ],
)
def test_malformed_directory_entries_raise_zip_format_error(entry: bytes) -> None:
    with pytest.raises(ZipFormatError):
        ZipIndex.parse(1000, entry)


def test_well_formed_zip64_variants_are_read() -> None:
    # Only the 0xFFFFFFFF fields, in order; more values than needed (some archivers write all
    # three); a trailing 4-byte disk number; another extra field first.
    assert ZipIndex.parse(1000, _central_entry(header=FULL32, extra=_zip64(8, [7]))).members["m"].header_offset == 7
    m = ZipIndex.parse(1000, _central_entry(size=FULL32, compressed=FULL32, extra=_zip64(24, [9, 8, 7]))).members["m"]
    assert (m.size, m.compressed_size, m.header_offset) == (9, 8, 0)
    m = ZipIndex.parse(1000, _central_entry(compressed=FULL32, extra=_zip64(12, [9], b"\0\0\0\0"))).members["m"]
    assert (m.size, m.compressed_size) == (0, 9)
    extra = struct.pack("<HH", 0x5455, 5) + b"12345" + _zip64(8, [3])
    assert ZipIndex.parse(1000, _central_entry(size=FULL32, extra=extra)).members["m"].size == 3


@given(
    st.sampled_from([0, 1, 5, FULL32]),
    st.sampled_from([0, 1, 5, FULL32]),
    st.sampled_from([0, 1, FULL32]),
    st.lists(CHUNKS, max_size=6).map(b"".join),
    st.binary(max_size=8),
    st.integers(0, 2**64),
)
def test_crafted_entries_raise_only_zip_format_errors(
    size: int, compressed: int, header: int, extra: bytes, comment: bytes, cd_offset: int
) -> None:
    entry = _central_entry(extra=extra, comment=comment, size=size, compressed=compressed, header=header)
    for directory in (entry, entry + entry, entry[:-1], entry + b"PK\x01\x02"):
        with _maybe_raises():
            ZipIndex.parse(cd_offset, directory)


# -- crafted end records ------------------------------------------------------------------


def _end_records(eocd64_at: int, cd_size: int = FULL32, cd_offset: int = FULL32, record: bytes | None = None) -> bytes:
    zip64 = record if record is not None else struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 0, 0, 0, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd64_at, 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, cd_size, cd_offset, 0)
    return zip64 + locator + eocd


@pytest.mark.parametrize(
    ("tail", "archive_size"),
    [
        pytest.param(b"", 0, id="empty"),
        pytest.param(b"PK\x05\x06" + bytes(10), 14, id="end-record-cut-short"),
        pytest.param(_end_records(0)[56:], 42, id="zip64-without-record"),
        pytest.param(_end_records(0)[76:], 22, id="zip64-without-locator"),
        pytest.param(_end_records(0)[20:], 10**9, id="zip64-record-partly-before-tail"),
        pytest.param(_end_records(2**64 - 1), 98, id="zip64-record-offset-huge"),
        pytest.param(_end_records(30), 98, id="zip64-record-overlaps-locator"),
        pytest.param(bytes(100) + _end_records(90)[:76] + _end_records(0)[76:], 198, id="zip64-record-misplaced"),
        pytest.param(
            _end_records(0, record=struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 0, 0, 9, 0)),
            98,
            id="zip64-directory-overlaps-records",
        ),
        pytest.param(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 10, 20, 0), 22, id="directory-past-end"),
        pytest.param(bytes(10), 5, id="tail-longer-than-archive"),
    ],
)
def test_malformed_end_records_raise_zip_format_error(tail: bytes, archive_size: int) -> None:
    with pytest.raises(ZipFormatError):
        ZipIndex.locate(tail, archive_size)


def test_empty_archives_locate() -> None:
    assert ZipIndex.locate(_end_records(0, 0, 0)[76:], 22) == (0, 0)
    assert ZipIndex.locate(_end_records(0), 98) == (0, 0)  # through the ZIP64 end record
    assert ZipIndex.parse(0, b"").members == {}


# -- inflation and CRC --------------------------------------------------------------------


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


@given(st.binary(max_size=2000))
def test_inflate_gives_exactly_the_declared_bytes(data: bytes) -> None:
    raw = _deflate(data)
    assert inflate(raw, len(data), zlib.crc32(data)) == data
    assert inflate(raw + b"trailing", len(data)) == data  # bytes after the stream's end are not read
    for size in {0, len(data) - 1, len(data) + 1} - {-1, len(data)}:
        with pytest.raises(ZipFormatError, match="inflates to"):
            inflate(raw, size)
    for cut in {0, len(raw) // 2, len(raw) - 1}:
        with pytest.raises(ZipFormatError):
            inflate(raw[:cut], len(data))
    with pytest.raises(ZipFormatError, match="CRC-32"):
        inflate(raw, len(data), zlib.crc32(data) ^ 1)


def test_inflate_refuses_corrupt_streams_and_impossible_sizes() -> None:
    with pytest.raises(ZipFormatError, match="does not inflate"):
        inflate(b"\xff\xff\xff", 3)
    with pytest.raises(ZipFormatError):
        inflate(_deflate(b"x"), -1)
    with pytest.raises(ZipFormatError):
        inflate(_deflate(b"x"), 2**64 - 1)


def test_check_crc_names_the_member() -> None:
    check_crc(b"abc", zlib.crc32(b"abc"), "m")
    check_crc(memoryview(b"xabcx")[1:4], zlib.crc32(b"abc"), "m")
    check_crc(memoryview(b"a-b-c")[::2], zlib.crc32(b"abc"), "m")  # not contiguous
    with pytest.raises(ZipFormatError, match=r"zip member 'd/m\.bin' is damaged"):
        check_crc(b"abd", zlib.crc32(b"abc"), "d/m.bin")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """100 MiB of zeros as a raw deflate stream of about 100 KiB, made 1 MiB at a time."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    return b"".join([*(c.compress(chunk) for _ in range(100)), c.flush()])


@pytest.mark.parametrize("declared", [10, 1 << 20])
def test_a_zip_bomb_costs_only_its_declared_size(bomb: bytes, declared: int) -> None:
    assert len(bomb) < 200_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ZipFormatError, match="more than"):
            inflate(bomb, declared)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 0.5
    # The result is built in blocks and joined once: up to twice the declared size at the peak.
    assert peak < 2 * declared + 256 * 1024


def test_a_zip_bomb_member_fails_fast(bomb: bytes) -> None:
    """The same through the directory: a member that says 10 bytes and holds 100 MiB."""
    raw = bomb
    name = b"bomb"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, zlib.crc32(bytes(10)), len(raw), 10, 4, 0)
    cd_offset = len(local) + len(name) + len(raw)
    central = _central_entry(name, compressed=len(raw), size=10, method=8)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), cd_offset, 0)
    archive = local + name + raw + central + eocd
    member = _index(archive).members["bomb"]
    assert (member.method, member.size) == (8, 10)
    started = time.perf_counter()
    with pytest.raises(ZipFormatError, match="more than the 10 bytes"):
        _read(archive, member)
    assert time.perf_counter() - started < 0.5
