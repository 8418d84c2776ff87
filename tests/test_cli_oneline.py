"""The CLI's error contract: whatever goes wrong, standard error gets exactly one line and the exit
status is not 0 — also for chain errors, whose messages list the hops one a line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmap.cli import _one_line, main


def _write(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"kvmap": 1, "entries": entries}))
    return path


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    """a.json sends every key to b.json, which sends it back to a.json."""
    _write(tmp_path / "b.json", [{"prefix": "", "path": "a.json|kvmap:"}])
    return _write(tmp_path / "a.json", [{"prefix": "", "path": "b.json|kvmap:"}])


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    """m0.json -> m1.json -> ... -> m19.json: 20 manifest lookups, more than the default 16."""
    for i in range(20):
        _write(tmp_path / f"m{i}.json", [{"prefix": "", "path": f"m{i + 1}.json|kvmap:"}])
    return tmp_path / "m0.json"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmap", *args], capture_output=True, text=True, check=False)


def _assert_one_error_line(stderr: str, returncode: int, *parts: str) -> None:
    assert returncode != 0
    assert stderr.endswith("\n")
    assert stderr.count("\n") == 1, stderr
    assert len(stderr.splitlines()) == 1, stderr  # no other line boundary (\r, \u2028...) either
    assert stderr.startswith("kvmap: ")
    for part in parts:
        assert part in stderr, (part, stderr)


@pytest.mark.parametrize("command", ["cat", "explain"])
def test_a_loop_is_one_line(loop: Path, command: str) -> None:
    run = _run(command, str(loop), "k")
    _assert_one_error_line(run.stderr, run.returncode, "the chain loops: ", "a.json", "b.json", "; ")
    assert run.returncode == 1


@pytest.mark.parametrize("command", ["cat", "explain"])
def test_a_chain_too_deep_is_one_line(deep: Path, command: str) -> None:
    run = _run(command, str(deep), "k")
    _assert_one_error_line(run.stderr, run.returncode, "deeper than 16 manifests", "m0.json", "m15.json")
    assert run.returncode == 1


def test_every_hop_is_kept_on_the_line(deep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", str(deep), "k"]) == 1
    err = capsys.readouterr().err
    _assert_one_error_line(err, 1)
    assert err.count("|kvmap:k") == 17  # every hop listed: 16 and the one too many


def test_multi_line_names_in_manifest_and_os_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "two\nlines.json"
    bad.write_text('[{"key": "a", "path": "s3://b", "offset": -1}]')
    for argv in (
        ["validate", str(bad)],
        ["resolve", str(bad), "a"],
        ["validate", str(tmp_path / "missing\r\nfile.json")],
        ["cat", str(tmp_path / "no\nsuch.json"), "k"],
    ):
        assert main(argv) == 1
        captured = capsys.readouterr()
        _assert_one_error_line(captured.err, 1)
        assert captured.out == ""


def test_an_absent_key_under_a_multi_line_name_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "odd\u2028name.json", [{"key": "a", "path": None}])
    assert main(["cat", str(path), "a"]) == 1
    _assert_one_error_line(capsys.readouterr().err, 1, "does not exist")


def test_one_line() -> None:
    assert _one_line("the chain loops:\n  a ['k']: entry 0 -> b\n  b ['k']: entry 0 -> a\n") == (
        "the chain loops: a ['k']: entry 0 -> b; b ['k']: entry 0 -> a"
    )
    assert _one_line("one") == "one"
    assert _one_line("") == ""
    assert _one_line("a\r\nb\rc\x0bd\u2028e\n\n  \nf") == "a; b; c; d; e; f"
