"""Manifest.save is atomic: under SIGKILL at random moments, between concurrent savers, on errors.

The kill loop runs writers in processes forked by one helper (a plain ``python -c``
child that imports kvmap once), so that each of the many kills costs a fork, not an
interpreter start. ``KVMAP_HYPOTHESIS=long`` kills ten times as often, with larger
manifests.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import kvmap
from kvmap.errors import SaveError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, fork and flock")

if sys.platform != "win32":
    import fcntl

LONG = os.environ.get("KVMAP_HYPOTHESIS") == "long"
KILLS = 400 if LONG else 40
ENTRIES = 200_000 if LONG else 25_000  # a save takes tens of milliseconds (about 30 ms at 25k here)
ROOT = Path(__file__).resolve().parents[1]


def _manifest(n: int, tag: str) -> kvmap.Manifest:
    text = ",".join(
        f'{{"key":"k/{i:07d}","path":"s3://bucket/{tag}/{i // 64}","offset":{(i % 64) * 4096},"length":4096}}'
        for i in range(n)
    )
    return kvmap.Manifest.loads(f"[{text}]", url="s3://bucket/m.json")


def _temps(directory: Path, name: str = "m.json") -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}.kvmap-"))


def _temp_pattern(name: str, pid: int | str = r"\d+") -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.kvmap-({pid})-[0-9a-f]{{16}}\.tmp")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- the helper that forks writers and kills them ---------------------------------------

_HELPER = r"""
import os, select, signal, sys, time, traceback
from kvmap import Manifest

target, a_path, b_path, probe = sys.argv[1:5]
contents = [Manifest.load(a_path), Manifest.load(b_path)]
directory = os.path.dirname(target)
prefix = "." + os.path.basename(target) + ".kvmap-"
start = time.perf_counter()
contents[0].save(probe)
save_seconds = time.perf_counter() - start


def reply(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


def fork(body):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            body(w)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(w)
    return pid, r


def read_byte(r, timeout=60):
    return os.read(r, 1) if select.select([r], [], [], timeout)[0] else b""


def drain(r):
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    return data


def arm():
    # The next writer, forked ahead: it touches its objects (the copy-on-write faults of
    # a fork) while the test checks the last kill, then waits for the word to go.
    go_r, go_w = os.pipe()

    def writer(w):
        os.close(go_w)
        for m in contents:
            m.dumps()
        os.write(w, b"w")
        i = int(os.read(go_r, 1))
        while True:  # alternate the two contents; one byte down the pipe per completed save
            contents[i % 2].save(target)
            os.write(w, b".")
            i += 1

    pid, r = fork(writer)
    os.close(go_r)
    return pid, r, go_w


def temp_present(pid):
    mine = f"{prefix}{pid}-"
    with os.scandir(directory) as listing:
        return any(e.name.startswith(mine) for e in listing)


armed = arm()
reply("ready", save_seconds)
for line in sys.stdin:
    command, *args = line.split()
    if command == "kill":  # kill <first content> <delay seconds> <any|temp> <saves to wait for>
        first, delay, mode, wait = args[0], float(args[1]), args[2], int(args[3])
        pid, r, go_w = armed
        started = read_byte(r) == b"w"
        if started:
            os.write(go_w, first.encode())
            started = all(read_byte(r) == b"." for _ in range(wait))
        if started and mode == "temp":  # a moment when a save has its temporary file
            deadline = time.monotonic() + 10
            while not temp_present(pid) and time.monotonic() < deadline:
                pass
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(go_w)
        saves = drain(r).count(b".") + wait
        sigkilled = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        armed = arm()
        reply("killed", pid, saves, int(started and sigkilled))
    elif command == "race":  # race <processes> <saves each>: all save at once, each its content
        processes, count = int(args[0]), int(args[1])

        def save_n(j, w):
            os.read(go_r, 1)
            for _ in range(count):
                contents[j % 2].save(target)

        go_r, go_w = os.pipe()
        children = [fork(lambda w, j=j: save_n(j, w)) for j in range(processes)]
        os.write(go_w, b"." * processes)
        statuses = []
        for pid, r in children:
            drain(r)
            statuses.append(os.waitpid(pid, 0)[1])
        os.close(go_r)
        os.close(go_w)
        reply("raced", *statuses)
    elif command == "quit":
        break
os.kill(armed[0], signal.SIGKILL)
os.waitpid(armed[0], 0)
"""


class Helper:
    def __init__(self, directory: Path, contents: tuple[kvmap.Manifest, kvmap.Manifest]) -> None:
        self.target = directory / "m.json"
        self.expected = tuple(m.dumps() for m in contents)
        self.lengths = tuple(len(m) for m in contents)
        scratch = directory.parent / f"{directory.name}-scratch"
        scratch.mkdir()
        for name, m in zip("ab", contents, strict=True):
            m.save(scratch / f"{name}.json")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER, str(self.target), *(str(scratch / n) for n in ("a.json", "b.json")),
             str(scratch / "probe.json")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, cwd=ROOT,
        )  # fmt: skip
        word, seconds = self.ask()
        assert word == "ready"
        self.save_seconds = float(seconds)

    def ask(self, *words: object) -> list[str]:
        stdin: IO[str] | None = self.proc.stdin
        stdout: IO[str] | None = self.proc.stdout
        assert stdin is not None
        assert stdout is not None
        if words:
            stdin.write(" ".join(map(str, words)) + "\n")
            stdin.flush()
        line = stdout.readline()
        assert line, f"the helper died (exit status {self.proc.wait()})"
        return line.split()

    def close(self) -> None:
        if self.proc.poll() is None:
            with_stdin: Any = self.proc.stdin
            try:
                with_stdin.write("quit\n")
                with_stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def check_whole(self) -> int:
        """The file is one of the two contents, whole; which one."""
        raw = self.target.read_bytes()
        assert raw in self.expected, f"partial or foreign file: {len(raw)} bytes"
        which = self.expected.index(raw)
        assert len(kvmap.Manifest.load(self.target)) == self.lengths[which]
        return which


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helper]:
    directory = tmp_path_factory.mktemp("kill") / "d"
    directory.mkdir()
    h = Helper(directory, (_manifest(ENTRIES, "a"), _manifest(ENTRIES + 1, "b")))
    try:
        yield h
    finally:
        h.close()


def test_sigkill_at_random_moments_leaves_a_whole_manifest(helper: Helper) -> None:
    rng = random.Random(20240605)
    directory = helper.target.parent
    seen: set[int] = set()
    writers: list[tuple[int, int]] = []  # (pid, saves completed) of each killed writer, in order
    left_temp = 0
    for kill in range(KILLS):
        # Half the kills at any moment of a writer's first few saves (the first kill only
        # after a save), half while its first, second or third save has its temporary file.
        if kill % 2:
            mode, delay, wait = "temp", rng.uniform(0, 0.004), rng.randrange(3)
        else:
            mode, delay, wait = "any", rng.uniform(0, 3 * helper.save_seconds), int(kill == 0)
        word, pid, saves, sigkilled = helper.ask("kill", rng.randrange(2), f"{delay:.6f}", mode, wait)
        assert word == "killed"
        assert sigkilled == "1", f"writer {pid} failed, or ended before the kill"
        writers.append((int(pid), int(saves)))
        seen.add(helper.check_whole())  # never partial, never missing
        # Each killed save leaves at most one temporary file, its own; a later save that
        # completed has removed those of the writers before it.
        temps = _temps(directory)
        owners = [int(m[1]) for m in map(_temp_pattern("m.json").fullmatch, temps) if m]
        assert len(owners) == len(temps), temps
        assert len(set(owners)) == len(owners), temps
        last_saver = max((i for i, (_, n) in enumerate(writers) if n), default=0)
        assert set(owners) <= {p for p, _ in writers[last_saver:]}, (temps, writers[last_saver:])
        left_temp += int(pid) in owners
    assert seen == {0, 1}
    assert left_temp >= 1  # some kills did land while a save was half-way
    assert sum(n > 0 for _, n in writers) >= KILLS // 4  # many after a completed save, its cleanup included
    kvmap.Manifest.from_json([{"key": "x", "path": None}]).save(helper.target)
    assert sorted(p.name for p in directory.iterdir()) == ["m.json"]  # the next save removed the stale ones


def test_concurrent_processes_both_complete_and_one_wins_whole(helper: Helper) -> None:
    helper.ask("kill", 0, "0", "any", 1)  # a first file for the readers
    stop = threading.Event()
    reads: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                raw = helper.target.read_bytes()  # once: the savers may replace it at any moment
                assert raw in helper.expected, f"partial or foreign file: {len(raw)} bytes"
                reads.append(len(kvmap.Manifest.loads(raw)))
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        word, *statuses = helper.ask("race", 2, 12)
    finally:
        stop.set()
        reader.join()
    assert word == "raced"
    assert statuses == ["0", "0"]  # both savers completed every save
    assert errors == []
    assert reads
    assert set(reads) <= set(helper.lengths)
    helper.check_whole()
    assert _temps(helper.target.parent) == []


def test_concurrent_threads_each_save_their_own_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    contents = [_manifest(2000 + i, f"t{i}") for i in range(4)]
    expected = {m.dumps() for m in contents}
    contents[0].save(path)
    barrier = threading.Barrier(len(contents) + 1)
    errors: list[BaseException] = []
    reads = 0

    def save(m: kvmap.Manifest) -> None:
        barrier.wait()
        try:
            for _ in range(15):
                m.save(path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(m,)) for m in contents]
    for t in threads:
        t.start()
    barrier.wait()
    while any(t.is_alive() for t in threads):
        assert path.read_bytes() in expected
        reads += 1
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in expected
    assert kvmap.Manifest.load(path).dumps() in expected
    assert reads > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


# -- the temporary file and stale ones --------------------------------------------------


def test_temporary_file_is_named_locked_and_permissioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.json"
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            (temp,) = _temps(tmp_path)
            assert _temp_pattern("m.json", os.getpid()).fullmatch(temp)
            assert stat.S_IMODE(mode) == 0o640  # 0o666 less the umask, like any new file
            with open(tmp_path / temp, "rb") as other, pytest.raises(BlockingIOError):  # held under a lock
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            events.append(("fsync file", temp))
        else:
            events.append(("fsync directory",))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    old = os.umask(0o027)
    try:
        kvmap.Manifest.from_json([{"key": "a", "path": None}]).save(path)
    finally:
        os.umask(old)
    (_, temp), replaced, directory_synced = events
    assert replaced == ("replace", temp, "m.json")  # the file is flushed, renamed, then its directory flushed
    assert directory_synced == ("fsync directory",)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_file_has_normal_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        kvmap.Manifest.from_json([]).save(tmp_path / "m.json")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "m.json").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_long_names_are_shortened_in_the_temporary_name(tmp_path: Path) -> None:
    name = "é" * 120 + ".json"  # 245 bytes
    m = kvmap.Manifest.from_json([{"key": "a", "path": None}])
    m.save(tmp_path / name)
    assert kvmap.Manifest.load(tmp_path / name) == kvmap.Manifest.from_json(m.to_json(), url=(tmp_path / name).as_uri())
    stale = tmp_path / f".{'é' * 100}.kvmap-{_dead_pid()}-{'0' * 16}.tmp"  # 100 x 2 bytes: the 200 kept
    stale.write_bytes(b"partial")
    m.save(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_save_removes_stale_temporary_files_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    m = kvmap.Manifest.from_json([{"key": "a", "path": None}])
    m.save(path)
    dead, other_dead, token = _dead_pid(), _dead_pid(), "0123456789abcdef"
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    files = {
        "stale": f".m.json.kvmap-{dead}-{token}.tmp",  # writer gone, lock free: removed
        "live pid": f".m.json.kvmap-{os.getpid()}-{token}.tmp",  # a save just creating it: kept
        "locked": f".m.json.kvmap-{other_dead}-{token}.tmp",  # pid unknown here but locked: a live save
        "other name": f".n.json.kvmap-{dead}-{token}.tmp",  # another file's: not this save's business
        "not ours": f".m.json.kvmap-{dead}-xyz.tmp",
        "suffix": f".m.json.kvmap-{dead}-{token}.tmp.bak",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"partial")
    link = tmp_path / f".m.json.kvmap-{dead}-{'f' * 16}.tmp"
    link.symlink_to(outside)
    directory = tmp_path / f".m.json.kvmap-{dead}-{'e' * 16}.tmp"
    directory.mkdir()
    with open(tmp_path / files["locked"], "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another open file: conflicts even in this process
        m.save(path)
    kept = {k for k, name in files.items() if (tmp_path / name).exists()}
    assert kept == set(files) - {"stale"}
    assert link.is_symlink()
    assert outside.read_bytes() == b"keep me"
    assert directory.is_dir()
    m.save(path)  # the lock is released now: that file is stale too
    kept = {k for k, name in files.items() if (tmp_path / name).exists()}
    assert kept == set(files) - {"stale", "locked"}
    assert kvmap.Manifest.load(path).to_json() == m.to_json()


# -- symbolic links and errors ----------------------------------------------------------


def test_saving_over_a_symlink_replaces_the_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(b"old")
    link = tmp_path / "m.json"
    link.symlink_to(elsewhere)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "missing" / "x.json")
    m = kvmap.Manifest.from_json([{"key": "a", "path": None}])
    for p in (link, dangling):
        m.save(p)
        assert not p.is_symlink()
        assert kvmap.Manifest.load(p).to_json() == m.to_json()
    assert elsewhere.read_bytes() == b"old"
    assert not (tmp_path / "missing").exists()


def test_failing_saves_raise_kvmap_errors_and_leave_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = kvmap.Manifest.from_json([{"key": str(i), "path": None} for i in range(5000)])
    with pytest.raises(SaveError) as info:
        m.save(tmp_path / "missing" / "m.json")
    assert isinstance(info.value, kvmap.KvmapError)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmp_path / "missing" / "m.json")
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "dir.json").mkdir()
    (tmp_path / "dir.json" / "inside").write_bytes(b"x")
    for p in (tmp_path / "dir.json", f"{tmp_path / 'dir.json'}/"):
        with pytest.raises(SaveError) as info:
            m.save(p)
        assert info.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json"]
    assert [p.name for p in (tmp_path / "dir.json").iterdir()] == ["inside"]

    with pytest.raises(SaveError) as info:
        m.save(tmp_path / "nul\0.json")
    assert info.value.errno == errno.EINVAL
    again = pickle.loads(pickle.dumps(info.value))
    assert (type(again), again.errno, str(again)) == (SaveError, errno.EINVAL, str(info.value))

    path = tmp_path / "m.json"
    kvmap.Manifest.from_json([]).save(path)
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    for name, fake, expected in [
        ("write", half_then_full, SaveError),
        ("fsync", eio, SaveError),
        ("fsync", interrupted, KeyboardInterrupt),  # not an error of the save: passed on as it is
    ]:
        with monkeypatch.context() as patch:
            patch.setattr(os, name, fake)
            with pytest.raises(expected) as raised:
                m.save(path)
        if expected is SaveError:
            assert isinstance(raised.value, SaveError)
            assert raised.value.filename == str(path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "m.json"]  # no temporary file


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_saving_into_a_read_only_directory_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    kvmap.Manifest.from_json([]).save(path)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(SaveError) as info:
            kvmap.Manifest.from_json([{"key": "a", "path": None}]).save(path)
    finally:
        tmp_path.chmod(0o755)
    assert info.value.errno == errno.EACCES
    assert kvmap.Manifest.load(path).to_json() == {"kvmap": 1, "entries": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
