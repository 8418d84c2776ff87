"""Local files for ``file://`` targets, each operation confined by real path at the moment of I/O.

kvmap's policy says a ``file://`` target must lie, by real path (every symbolic link
resolved), strictly inside the real path of a directory that grants it. Checking that once
and then handing the path to something that opens it again leaves a window: a directory
inside replaced by a link to the outside after the check lets the next open read, or a
write land, outside. So every function here checks *what it opened*, not the path it was
given: it opens the object (or, to write or delete, its parent directory) and verifies
the real path of the open descriptor, then does the I/O on that descriptor. A swap after
the check cannot redirect I/O that is already bound to the checked descriptor.

Every function takes an absolute local path (``/``-separated, as a ``file://`` URL's path)
and a keyword ``inside``: the real path of a directory (resolved, no trailing ``/`` except
``"/"`` itself) that the object must lie strictly inside, by real path, or ``None`` for no
confinement. Links that stay inside are followed. A path whose real path lies outside
raises :class:`EscapeError`, whether or not anything is there and whatever else fails (so
the answer does not tell what is outside). Other failures of the system propagate as
:class:`OSError`. The functions keep no state: any number of threads may call them at once.

Objects are regular files, as in obstore's ``LocalStore``: a missing path, a path through a
regular file (``ENOTDIR``) and a directory, FIFO, socket or device are all "no object"
(``None``), never read. Listings follow ``LocalStore``'s conventions (see :func:`list_keys`).

How the descriptor's real path is found:

* Linux: ``readlink("/proc/self/fd/N")`` (the kernel's name for what is open); one system call.
* macOS: ``fcntl(F_GETPATH)``, likewise.
* elsewhere (or Linux without ``/proc``): ``os.path.realpath`` of the path after opening,
  accepted only if the file at that real path is the one open (same device and inode), so a
  swap between open and check is refused, not trusted. Slower (one ``lstat`` per path
  component) and it can refuse spuriously while the tree is being changed.
* without directory descriptors (Windows): reads as above; writes, deletes and listings check
  the real path of the directory and then use paths, so a directory swapped for a link
  between that check and the I/O is not caught: a documented window that the descriptor
  platforms do not have.

>>> import os, tempfile
>>> home = os.path.realpath(tempfile.mkdtemp())
>>> write(f"{home}/a/b.bin", b"0123456789", inside=home)
>>> read(f"{home}/a/b.bin", 2, 5, inside=home), read(f"{home}/a/b.bin", suffix=3, inside=home)
(b'234', b'789')
>>> read(f"{home}/a/nothing", inside=home) is None, list_keys(home, inside=home), list_dir(home, inside=home)
(True, ['a/b.bin'], (['a'], []))
>>> outside = os.path.realpath(tempfile.mkdtemp())
>>> os.symlink(outside, f"{home}/out")
>>> read(f"{home}/out/secret", inside=home)
Traceback (most recent call last):
  ...
kvmap.localfs.EscapeError: .../out/secret resolves to .../secret, outside ...
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12 on

__all__ = [
    "EscapeError",
    "TooLarge",
    "delete",
    "list_dir",
    "list_keys",
    "read",
    "read_ranges",
    "size",
    "status",
    "write",
]


class EscapeError(Exception):
    """A path whose real path lies outside the directory ``inside`` that must hold it.

    ``path`` is the path as given, ``real`` its real path as found at the moment of I/O,
    ``inside`` the confining directory. With ``changed``, the object that was opened was not
    the one at ``real`` when checked (the tree changed meanwhile; only on platforms that
    check by identity), so it could not be shown to lie inside.
    """

    def __init__(self, path: str, real: str, inside: str, changed: bool = False) -> None:
        super().__init__(path, real, inside, changed)
        self.path = path
        self.real = real
        self.inside = inside
        self.changed = changed

    def __str__(self) -> str:
        if self.changed:
            return f"{self.path} changed while it was opened (now {self.real}); not shown to be inside {self.inside}"
        return f"{self.path} resolves to {self.real}, outside {self.inside}"


class TooLarge(Exception):  # noqa: N818 (the name kvmap's callers use)
    """A read would return ``size`` bytes of ``path``, more than its ``limit``; nothing was read."""

    def __init__(self, path: str, limit: int, size: int) -> None:
        super().__init__(path, limit, size)
        self.path = path
        self.limit = limit
        self.size = size

    def __str__(self) -> str:
        return f"{self.path}: {self.size} bytes requested, more than the limit of {self.limit}"


# -- platform ------------------------------------------------------------------------------

# O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a regular
# file); it changes nothing for regular files. O_BINARY: Windows would translate newlines.
# O_NOCTTY: a terminal device is refused too, and must not become the controlling terminal.
_O_FILE = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_O_FILE |= getattr(os, "O_NOCTTY", 0)
_O_DIR = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

# Directory descriptors (openat, mkdirat, renameat, unlinkat, fdopendir): every Unix.
_DIRFD: bool = (
    hasattr(os, "O_DIRECTORY")
    and {os.open, os.mkdir, os.rename, os.unlink, os.stat} <= os.supports_dir_fd
    and os.scandir in os.supports_fd
)

# "No object here": missing, a path through a regular file, or (ENXIO) a socket.
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ENXIO)

# One pread/write is kept under 1 GiB: macOS refuses more than INT_MAX bytes at once.
_CHUNK = 1 << 30


def _proc_real(fd: int, path: str) -> str | None:
    return os.readlink(f"/proc/self/fd/{fd}")


def _identity_real(fd: int, path: str) -> str | None:
    # The path's real path now, trusted only if the file there is the one we hold open.
    real = os.path.realpath(path)
    try:
        there = os.stat(real)
    except (OSError, ValueError):
        return None
    held = os.fstat(fd)
    return real if (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino) else None


_fd_real: Callable[[int, str], str | None]
"""The real path of the open descriptor ``fd`` (opened as ``path``), ``None`` if it cannot be
shown (the identity check failed)."""

if sys.platform == "darwin":
    import fcntl

    def _getpath_real(fd: int, path: str) -> str | None:
        buffer = fcntl.fcntl(fd, fcntl.F_GETPATH, bytes(1024))  # MAXPATHLEN
        return os.fsdecode(buffer.split(b"\0", 1)[0])

    _fd_real = _getpath_real
elif sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd"):
    _fd_real = _proc_real
else:
    _fd_real = _identity_real


def _pread_portable(fd: int, n: int, offset: int) -> bytes:
    # Only here (Windows) is the descriptor's position used; it is private to this call.
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


_pread: Callable[[int, int, int], bytes] = getattr(os, "pread", _pread_portable)


# -- checks ----------------------------------------------------------------------------------


def _holds(inside: str, real: str, *, strict: bool) -> bool:
    """Whether ``real`` lies inside ``inside`` (strictly, or also equal to it when not ``strict``)."""
    base = inside if inside[-1:] == "/" else inside + "/"
    if len(real) > len(base) and real.startswith(base):
        return True
    return not strict and (real == inside or real + "/" == base)


def _escape(path: str, real: str | None, inside: str) -> EscapeError:
    if real is None:
        return EscapeError(path, os.path.realpath(path), inside, changed=True)
    return EscapeError(path, real, inside)


def _verify(fd: int, path: str, inside: str, *, strict: bool) -> str:
    """The real path of ``fd``, opened as ``path``; raises EscapeError (closing ``fd``) unless inside."""
    try:
        real = _fd_real(fd, path)
        if real is None or not _holds(inside, real, strict=strict):
            raise _escape(path, real, inside)
    except BaseException:
        os.close(fd)
        raise
    return real


def _refuse_missing(path: str, inside: str | None, *, strict: bool) -> None:
    # Nothing was opened, so nothing was read: only the answer is at stake. A path that leads
    # outside is refused as it would be if something were there, rather than answered with
    # what is (or is not) there.
    if inside is not None:
        real = os.path.realpath(path)
        if not _holds(inside, real, strict=strict):
            raise EscapeError(path, real, inside)


def _not_opened(exc: OSError, path: str, inside: str | None) -> None:
    """Returns if the failed open means "no object here"; otherwise raises: EscapeError if the
    path leads outside (whatever the failure), else ``exc``."""
    _refuse_missing(path, inside, strict=True)
    if exc.errno in _MISSING:
        return
    if exc.errno == errno.EACCES and not _DIRFD and os.path.isdir(path):
        return  # Windows cannot open a directory as a file: no object there either
    raise exc


def _open_file(path: str, inside: str | None) -> int | None:
    """A descriptor of ``path`` opened for reading and verified inside, ``None`` if nothing is there."""
    try:
        fd = os.open(path, _O_FILE)
    except OSError as exc:
        _not_opened(exc, path, inside)
        return None
    if inside is not None:
        _verify(fd, path, inside, strict=True)
    return fd


def _span(size: int, start: int, end: int | None) -> tuple[int, int]:
    return start, size if end is None or end > size else end


def _read_at(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes at ``offset``, fewer only at the end of the file."""
    data = _pread(fd, min(n, _CHUNK), offset)
    if len(data) == n or not data:
        return data
    # A short read that is not the end of the file (over 1 GiB, or a network or FUSE file system).
    parts = [data]
    got = len(data)
    while got < n:
        part = _pread(fd, min(n - got, _CHUNK), offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range: start={start}, end={end}")


def _check_request(start: int, end: int | None, suffix: int | None) -> None:
    if suffix is None:
        _check_range(start, end)
    elif suffix < 0 or start or end is not None:
        raise ValueError(f"invalid suffix request: suffix={suffix}, start={start}, end={end}")


# -- reads -----------------------------------------------------------------------------------


def read(
    path: str,
    start: int = 0,
    end: int | None = None,
    suffix: int | None = None,
    *,
    inside: str | None = None,
    limit: int | None = None,
    check: Callable[[os.stat_result], None] | None = None,
) -> bytes | None:
    """The bytes of the regular file ``path``: all of it, ``start`` to ``end`` (half-open),
    ``start`` to its end (``end=None``), or its last ``suffix`` bytes.

    An ``end`` past the end of the file reads what is there; a request that starts at or
    after the end (of an empty file too) is ``b""``; a ``suffix`` longer than the file is
    the whole file. ``None`` if there is no object: nothing at ``path``, a path through a
    regular file, a directory or other non-regular file.

    The file is opened once (following links), its descriptor's real path checked against
    ``inside`` and the bytes read from that descriptor, so what is read is what was checked.
    ``check`` is called with the descriptor's ``fstat`` before anything is read, and may raise
    (the caller's own conditions on the object: its size, its identity). Raises
    :class:`EscapeError` if the real path lies outside ``inside``; :class:`TooLarge`,
    before reading, if more than ``limit`` bytes would be returned; ``ValueError`` for a
    negative ``start``, ``end < start``, a negative ``suffix`` or a ``suffix`` with
    ``start``/``end``; :class:`OSError` for other failures of the system.
    """
    # The hot path (a cached chunk is a few microseconds of system calls): calls inlined.
    if suffix is not None or start < 0 or (end is not None and end < start):
        _check_request(start, end, suffix)
    try:
        fd = os.open(path, _O_FILE)
    except OSError as exc:
        _not_opened(exc, path, inside)
        return None
    try:
        if inside is not None:
            real = _fd_real(fd, path)
            if real is None or not _holds(inside, real, strict=True):
                raise _escape(path, real, inside)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if check is not None:
            check(st)
        total = st.st_size
        if suffix is not None:
            start = max(0, total - suffix)
        if end is None or end > total:
            end = total
        if end <= start:
            return b""
        if limit is not None and end - start > limit:
            raise TooLarge(path, limit, end - start)
        return _read_at(fd, end - start, start)
    finally:
        os.close(fd)


def read_ranges(
    path: str,
    starts: Sequence[int],
    ends: Sequence[int],
    *,
    inside: str | None = None,
    check: Callable[[os.stat_result], None] | None = None,
) -> list[bytes] | None:
    """The bytes ``starts[i]:ends[i]`` of the regular file ``path``, one opening for all: each
    range clamped to the file as :func:`read` clamps it (past the end: ``b""``); ``check``
    as :func:`read`.

    ``None`` if there is no object (as :func:`read`). Raises ``ValueError`` if the sequences
    differ in length or a range is invalid (negative start, end before start), before any
    I/O; :class:`EscapeError` and :class:`OSError` as :func:`read`.
    """
    if len(starts) != len(ends):
        raise ValueError(f"{len(starts)} starts but {len(ends)} ends")
    for s, e in zip(starts, ends, strict=True):
        _check_range(s, e)
    fd = _open_file(path, inside)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if check is not None:
            check(st)
        out = []
        for s, e in zip(starts, ends, strict=True):
            lo, hi = _span(st.st_size, s, e)
            out.append(_read_at(fd, hi - lo, lo) if hi > lo else b"")
        return out
    finally:
        os.close(fd)


def size(path: str, *, inside: str | None = None) -> int | None:
    """The size in bytes of the regular file ``path``, ``None`` if there is no object (as
    :func:`read`). Measured on the opened, checked descriptor (``fstat``), not on the path.
    Raises :class:`EscapeError` and :class:`OSError` as :func:`read`."""
    st = status(path, inside=inside)
    return None if st is None else st.st_size


def status(path: str, *, inside: str | None = None) -> os.stat_result | None:
    """The ``fstat`` of the regular file ``path`` opened and checked as :func:`read` does;
    ``None`` if there is no object. Raises as :func:`read` does."""
    fd = _open_file(path, inside)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        return st if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


# -- writes ----------------------------------------------------------------------------------


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    if not path.startswith("/") or name in ("", ".", ".."):
        raise ValueError(f"not an absolute path to a file: {path!r}")
    return parent or "/", name


def _open_dir(path: str, inside: str | None, *, create: bool, on_the_way: bool = False) -> tuple[int, str]:
    """A descriptor of the directory ``path`` and its real path (``""`` without ``inside``),
    checked to be ``inside`` or inside it. With ``create``, missing directories are made, each
    with ``mkdir`` in a directory already opened and checked, so none is made through a link
    that leads outside; ``inside`` itself may be among them (an allowed directory that does not
    exist yet), so the directories it is made in (``on_the_way``) may be its ancestors too."""
    try:
        fd = os.open(path, _O_DIR)
    except FileNotFoundError:
        parent, _, name = path.rpartition("/")
        if not create or name in ("", ".", ".."):
            raise
        above, real_above = _open_dir(parent or "/", inside, create=True, on_the_way=True)
        try:
            made = real_above.rstrip("/") + "/" + name
            if inside is not None and not (_holds(inside, made, strict=False) or _holds(made, inside, strict=True)):
                raise EscapeError(path, made, inside)  # neither inside nor on the way to it: not made
            with contextlib.suppress(FileExistsError):  # a concurrent writer made it, or a link is there
                os.mkdir(name, 0o777, dir_fd=above)
            fd = os.open(name, _O_DIR, dir_fd=above)
        finally:
            os.close(above)
    if inside is None:
        return fd, ""
    if on_the_way:
        real = _fd_real(fd, path)
        if real is not None and _holds(real, inside, strict=True):
            return fd, real  # an ancestor of inside, by real path: only directories are made in it
    return fd, _verify(fd, path, inside, strict=False)


def _temp_names(name: str) -> Iterable[str]:
    # "NAME#DIGITS": the name LocalStore gives its staged uploads and leaves out of listings
    # (so does list_keys). A name that holds "#" or is long gets "#DIGITS": left out as well.
    for _ in range(100):
        token = int.from_bytes(os.urandom(6), "big")
        short = "#" in name or len(os.fsencode(name)) > 200
        yield f"#{token}" if short else f"{name}#{token}"


def _create_temp(directory: int | str, name: str) -> tuple[str, int]:
    """A new temporary file beside ``name`` (mode 0o666 less the umask, as a normal file)."""
    for temp in _temp_names(name):
        try:
            if isinstance(directory, int):
                return temp, os.open(temp, _O_TEMP, 0o666, dir_fd=directory)
            return temp, os.open(os.path.join(directory, temp), _O_TEMP, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", name)


def _write_all(fd: int, view: memoryview, durable: bool) -> None:
    while view:
        view = view[os.write(fd, view[:_CHUNK]) :]
    if durable:
        os.fsync(fd)


def write(path: str, data: Buffer, *, inside: str | None = None, durable: bool = False) -> None:
    """Replace the file ``path`` with ``data`` (any contiguous buffer), atomically: a reader
    sees the old bytes or the new ones, never a part.

    Missing parent directories are made (as obstore's ``put`` makes them), never through a
    link that leads outside ``inside``. The parent is opened and its descriptor's real path
    checked (it may be ``inside`` itself); the data goes to a new temporary file in it
    (``NAME#DIGITS``, which listings leave out), which is then renamed over ``NAME``
    relative to the same descriptor. If ``NAME`` is a symbolic link, the link itself is
    replaced by the new file; nothing is written through it.

    Like obstore's ``LocalStore``, the data is not flushed to disk unless ``durable``
    (``fsync`` of the file before the rename and of the directory after it): the rename
    makes the write atomic for readers, not durable across a crash.

    Raises ``ValueError`` if ``path`` does not name a file, ``TypeError`` if ``data`` is not
    a contiguous buffer (both before any I/O), :class:`EscapeError` if the parent's real path
    lies outside ``inside``, :class:`OSError` for failures of the system (``ENOSPC``,
    ``EROFS``, ``EACCES``, ``EFBIG``, ``EISDIR`` for a directory at ``path``, ``ENOTDIR``
    for a path through a regular file, ...). On any failure the temporary file is removed
    and the old file at ``path``, if any, is intact.
    """
    parent, name = _split(path)
    view = memoryview(data).cast("B")  # a TypeError now, before anything is made
    if not _DIRFD:
        _write_by_path(parent, name, view, inside, durable)
        return
    try:
        directory, _ = _open_dir(parent, inside, create=True)
    except OSError:  # a dangling link on the way, say: refused if it leads outside
        _refuse_missing(parent, inside, strict=False)
        raise
    try:
        temp, fd = _create_temp(directory, name)
        try:
            try:
                _write_all(fd, view, durable)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=directory)
            raise
        if durable:
            os.fsync(directory)
    finally:
        os.close(directory)


def _write_by_path(parent: str, name: str, view: memoryview, inside: str | None, durable: bool) -> None:
    # Without directory descriptors: check the parent's real path, make it, check it again and
    # use the real path from then on (the window: see the module).
    _refuse_missing(parent, inside, strict=False)
    os.makedirs(parent, exist_ok=True)
    real = os.path.realpath(parent)
    if inside is not None and not _holds(inside, real, strict=False):
        raise EscapeError(parent, real, inside)
    temp, fd = _create_temp(real, name)
    try:
        try:
            _write_all(fd, view, durable)
        finally:
            os.close(fd)
        os.replace(os.path.join(real, temp), os.path.join(real, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(real, temp))
        raise


def delete(path: str, *, inside: str | None = None) -> None:
    """Remove the file (or symbolic link: not what it points to) ``path``.

    Nothing there, or a missing parent or one that is a regular file, is not an error (an
    object store's delete of nothing succeeds; obstore's ``LocalStore`` raises NotFound). The
    parent is opened and its real path checked before the name is unlinked relative to it.
    Emptied parent directories are left, as ``LocalStore`` leaves them; :func:`list_dir` and
    :func:`list_keys` do not show directories without files. Raises ``ValueError`` if
    ``path`` does not name a file, :class:`EscapeError` if the parent's real path lies
    outside ``inside``, :class:`OSError` for a directory at ``path`` (``EISDIR`` on Linux,
    ``EPERM`` on macOS) and other failures of the system.
    """
    parent, name = _split(path)
    if not _DIRFD:
        _refuse_missing(parent, inside, strict=False)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(os.path.join(os.path.realpath(parent), name))
        return
    try:
        directory, _ = _open_dir(parent, inside, create=False)
    except OSError as exc:
        _refuse_missing(parent, inside, strict=False)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=directory)
    finally:
        os.close(directory)


# -- listings --------------------------------------------------------------------------------


class _Dir(NamedTuple):
    """An open directory: a descriptor (or, without directory descriptors, its real path),
    its real path (``""`` when nothing confines the walk) and its (device, inode)."""

    handle: int | str
    real: str
    ident: tuple[int, int]


class _Entry(NamedTuple):
    order: str  # the name, with "/" after a directory's: sorting these sorts the keys
    name: str
    is_dir: bool


# What obstore's PathPart refuses in a segment: ASCII control characters; and what is not UTF-8
# (a name that is not decodes to lone surrogates here). "." and ".." are never listed.
_INVALID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _valid(name: str) -> bool:
    """Whether ``name`` can be a segment of an object path (obstore's ``PathPart``)."""
    return _INVALID.search(name) is None


def _staged(name: str) -> bool:
    """Whether ``name`` is a staged upload's (``LocalStore``: text after the first ``#`` all digits)."""
    _, mark, after = name.partition("#")
    return bool(mark) and after.isascii() and after.isdigit()


def _join(real: str, name: str) -> str:
    return f"{real}/{name}" if real != "/" else f"/{name}"


def _ident(fd: int) -> tuple[int, int]:
    """The (device, inode) of the open directory ``fd``, which is closed if that fails."""
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return st.st_dev, st.st_ino


def _close(d: _Dir) -> None:
    if isinstance(d.handle, int):
        os.close(d.handle)


def _open_root(path: str, inside: str | None) -> _Dir | None:
    """The directory ``path`` to list, ``None`` if it is missing or not a directory."""
    if not _DIRFD:
        real = os.path.realpath(path)
        if inside is not None and not _holds(inside, real, strict=False):
            raise EscapeError(path, real, inside)
        try:
            st = os.stat(real)
        except OSError as exc:
            if exc.errno in _MISSING:
                return None
            raise
        return _Dir(real, real, (st.st_dev, st.st_ino)) if stat.S_ISDIR(st.st_mode) else None
    try:
        fd, real = _open_dir(path, inside, create=False)
    except OSError as exc:
        _refuse_missing(path, inside, strict=False)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    return _Dir(fd, real, _ident(fd))


def _child(parent: _Dir, name: str, inside: str | None, path: set[tuple[int, int]]) -> _Dir | None:
    """The subdirectory ``name`` of ``parent``, ``None`` (skipped) if it is gone, a link whose
    real path is not ``inside`` or inside it, or a directory already on the walk's ``path``
    (a loop). Opened relative to ``parent``'s descriptor without following a link first, so a
    directory swapped for a link meanwhile is seen as a link and checked."""
    if isinstance(parent.handle, int):
        try:
            fd = os.open(name, _O_DIR | _O_NOFOLLOW, dir_fd=parent.handle)
            real = parent.real and _join(parent.real, name)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # a link (Linux: ENOTDIR), or a file now
                if exc.errno == errno.ENOENT:
                    return None
                raise
            try:
                fd = os.open(name, _O_DIR, dir_fd=parent.handle)
            except OSError as again:
                if again.errno in (*_MISSING, errno.ELOOP):
                    return None
                raise
            real = ""
            if inside is not None:
                real = _fd_real(fd, _join(parent.real, name)) or ""
                if not real or not _holds(inside, real, strict=False):
                    os.close(fd)
                    return None
        child = _Dir(fd, real, _ident(fd))
    else:
        text = os.path.join(parent.handle, name)
        try:
            st = os.lstat(text)
            if stat.S_ISLNK(st.st_mode):
                text = os.path.realpath(text)
                if inside is not None and not _holds(inside, text, strict=False):
                    return None
                st = os.stat(text)
        except OSError as exc:
            if exc.errno in (*_MISSING, errno.ELOOP):
                return None
            raise
        if not stat.S_ISDIR(st.st_mode):
            return None
        child = _Dir(text, text, (st.st_dev, st.st_ino))
    if child.ident in path:
        _close(child)
        return None
    path.add(child.ident)
    return child


def _shown(d: _Dir, name: str, inside: str | None) -> bool:
    """Whether the link to a file ``name`` in ``d`` leads strictly inside ``inside``. Only the
    name is listed, and a read of it checks again, at that moment, on what it opens."""
    return inside is None or _holds(inside, os.path.realpath(_join(d.real, name)), strict=True)


_SKIP, _FILE, _SUBDIR = 0, 1, 2


def _kind(d: _Dir, entry: os.DirEntry[str], inside: str | None) -> int:
    """What the listing makes of ``entry`` of ``d``: a directory (a link to one too: checked when
    opened, by :func:`_child`), a regular file (a link to one whose real path lies strictly
    inside ``inside`` too), or nothing (any other kind, a name that is not obstore-valid, a
    staged file's name, a dangling link, a link loop, an entry gone meanwhile)."""
    name = entry.name
    if not _valid(name):
        return _SKIP
    try:
        if entry.is_symlink():
            st = os.stat(name, dir_fd=d.handle) if isinstance(d.handle, int) else os.stat(entry.path)
            if stat.S_ISDIR(st.st_mode):
                return _SUBDIR
            return _FILE if stat.S_ISREG(st.st_mode) and not _staged(name) and _shown(d, name, inside) else _SKIP
        if entry.is_dir(follow_symlinks=False):  # the kind of the entry itself (d_type: no system call)
            return _SUBDIR
        return _FILE if entry.is_file(follow_symlinks=False) and not _staged(name) else _SKIP
    except OSError as exc:
        if exc.errno not in (*_MISSING, errno.ELOOP):
            raise
        return _SKIP


def _entries(d: _Dir, start: str, inside: str | None) -> list[_Entry]:
    """The children of ``d`` whose names start with ``start`` that a listing shows (:func:`_kind`),
    sorted so that walking them in order lists keys in code-point order."""
    out: list[_Entry] = []
    with os.scandir(d.handle) as names:
        for entry in names:
            if entry.name.startswith(start):
                kind = _kind(d, entry, inside)
                if kind == _FILE:
                    out.append(_Entry(entry.name, entry.name, False))
                elif kind == _SUBDIR:
                    out.append(_Entry(entry.name + "/", entry.name, True))
    out.sort()
    return out


def _scan(d: _Dir, inside: str | None) -> list[str] | None:
    """``None`` if ``d`` holds a listable file, else the names of its subdirectories."""
    subdirs = []
    with os.scandir(d.handle) as names:
        for entry in names:
            kind = _kind(d, entry, inside)
            if kind == _FILE:
                return None
            if kind == _SUBDIR:
                subdirs.append(entry.name)
    return subdirs


def _any_file(top: _Dir, inside: str | None, seen: set[tuple[int, int]]) -> bool:
    """Whether a listable file lies somewhere below ``top`` (left open). Stops at the first one
    found, in directory order: no directory is read to its end for sorting. ``seen`` holds the
    directories already searched (or on the way here), which are not searched again."""
    subdirs = _scan(top, inside)
    if subdirs is None:
        return True
    stack = [(top, subdirs)]
    try:
        while stack:
            d, subdirs = stack[-1]
            if not subdirs:
                stack.pop()
                if d is not top:
                    _close(d)
                continue
            child = _child(d, subdirs.pop(), inside, seen)
            if child is None:
                continue
            try:
                below = _scan(child, inside)
            except BaseException:
                _close(child)
                raise
            if below is None:
                _close(child)
                return True
            stack.append((child, below))
        return False
    finally:
        for d, _ in stack:
            if d is not top:
                _close(d)


def _walk(
    root: _Dir,
    start: str,
    rel: str,
    inside: str | None,
    limit: int | None,
    path: set[tuple[int, int]],
    out: list[str],
) -> None:
    """Append to ``out`` the keys (``rel`` + path below ``root``) of every listable file below
    ``root`` whose first name starts with ``start``, in code-point order, stopping at ``limit``
    keys. ``path`` holds the directories from the listing's root down to ``root``, so that no
    link leads back into them. Depth-first with an explicit stack (no recursion limit); each
    level holds one open directory."""
    stack: list[tuple[_Dir, str, list[_Entry], int]] = [(root, rel, _entries(root, start, inside), 0)]
    try:
        while stack:
            d, prefix, entries, i = stack.pop()
            if i == len(entries):
                if d is not root:
                    path.discard(d.ident)
                    _close(d)
                continue
            stack.append((d, prefix, entries, i + 1))
            entry = entries[i]
            if not entry.is_dir:
                out.append(prefix + entry.name)
                if limit is not None and len(out) >= limit:
                    return
                continue
            child = _child(d, entry.name, inside, path)
            if child is not None:
                try:
                    listed = _entries(child, "", inside)
                except BaseException:
                    _close(child)
                    raise
                stack.append((child, prefix + entry.name + "/", listed, 0))
    finally:
        for d, *_ in stack:
            if d is not root:
                _close(d)


def list_keys(directory: str, prefix: str = "", *, inside: str | None = None, limit: int | None = None) -> list[str]:
    """Every regular file below ``directory`` (an absolute path, with or without a final ``/``)
    as a path relative to it joined with ``/``, that starts with ``prefix``, sorted by code
    point; the first ``limit`` of them with ``limit``. Only the subtree ``prefix`` needs is read.

    Conventions of obstore's ``LocalStore`` listing, kept: links to directories and files are
    followed; a dangling link is left out; names that cannot be object paths (not UTF-8,
    ASCII control characters) are left out; files named like ``LocalStore``'s staged uploads
    (``NAME#DIGITS``, ``#DIGITS``) are left out (:func:`write` stages its files so). Changed,
    where ``LocalStore`` fails the whole listing: a link that leads back to a directory on
    its own path (a loop) and, with ``inside``, a link whose real path is not inside
    ``inside`` (for a directory: is not ``inside`` or inside it) are left out. Non-regular
    files (FIFOs, sockets, devices) are left out.

    A missing ``directory`` (or one that is a file) lists as ``[]``. Directories are opened
    relative to their parents' descriptors, so one swapped for a link during the walk is
    checked as a link. Raises :class:`EscapeError` if ``directory`` itself lies outside
    ``inside``, ``ValueError`` for a negative ``limit``, :class:`OSError` for failures of
    the system (a directory that cannot be read, ...).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"negative limit: {limit}")
    head, sep, start = prefix.rpartition("/")
    segments = head.split("/") if sep else []
    if limit == 0 or any(s in ("", ".", "..") or not _valid(s) for s in segments):
        return []  # no object path holds an empty, "." or ".." segment
    root = _open_root(directory.rstrip("/") or "/", inside)
    if root is None:
        return []
    out: list[str] = []
    opened = [root]
    try:
        path = {root.ident}
        for segment in segments:  # as the walk would go down, link rules and all
            child = _child(opened[-1], segment, inside, path)
            if child is None:
                return []
            opened.append(child)
        _walk(opened[-1], start, head + "/" if head else "", inside, limit, path, out)
    finally:
        for d in opened:
            _close(d)
    return out


def list_dir(directory: str, *, inside: str | None = None) -> tuple[list[str], list[str]]:
    """One level of ``directory``: the names of its subdirectories that hold a listable file
    somewhere below them, and the names of its listable files, each list sorted.

    A directory with no file below it (left empty by :func:`delete`, say) is not listed, as
    an object store has no such prefix (obstore's ``LocalStore`` lists it). Same link and
    name rules as :func:`list_keys`; missing ``directory``: ``([], [])``. Raises as
    :func:`list_keys`.
    """
    root = _open_root(directory.rstrip("/") or "/", inside)
    if root is None:
        return [], []
    dirs: list[str] = []
    files: list[str] = []
    try:
        for entry in _entries(root, "", inside):
            if not entry.is_dir:
                files.append(entry.name)
                continue
            child = _child(root, entry.name, inside, {root.ident})
            if child is None:
                continue
            try:
                if _any_file(child, inside, {root.ident, child.ident}):
                    dirs.append(entry.name)
            finally:
                _close(child)
    finally:
        _close(root)
    dirs.sort()
    files.sort()
    return dirs, files
