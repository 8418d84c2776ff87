"""The command line, in process and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmap.cli import main

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "composite.json")


def test_resolve_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    keys = ["temperature/c/2001/0/0", "zarr.json", "temperature/c/2024/13/1", "precip/c/0 1"]
    assert main(["resolve", EXAMPLE, *keys, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == {
        "key": "temperature/c/2001/0/0",
        "entry": 6,
        "url": "s3://era5-fixes/reprocessed.bin",
        "offset": 4096,
        "length": 1024,
        "inline": None,
    }
    assert rows[1]["entry"] == 0
    assert rows[1]["inline"]
    assert rows[1]["url"] is None
    # An absent key has the same members, null (JSON Lines records all look alike).
    assert rows[2] == {
        "key": "temperature/c/2024/13/1",
        "entry": None,
        "url": None,
        "offset": None,
        "length": None,
        "inline": None,
    }
    assert rows[3]["url"] == (Path(EXAMPLE).parent / "precip.zarr").as_uri() + "/c/0%201"


def test_resolve_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", EXAMPLE, "temperature/c/1995/3/4", "nowhere"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "temperature/c/1995/3/4\ts3://era5-archive/temperature/c/1995/3/4\t(entry 3)",
        "nowhere\tabsent",
    ]


def test_explain_shows_the_winner_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", EXAMPLE, "temperature/c/2024/13/1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[1:4]] == ["5", "4", "1"]
    assert "wins" in lines[1]
    assert "whiteout" in lines[1]
    assert lines[4:6] == [
        "chain:",
        f"  1. {Path(EXAMPLE).resolve().as_uri()} ['temperature/c/2024/13/1']: entry 5 -> whiteout (absent)",
    ]
    assert lines[-1] == "resolves to: absent"


def test_validate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", EXAMPLE]) == 0
    assert "valid, 7 entries" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"key": "a", "path": "s3://b", "offset": -1}]', "entry 0: field 'offset': must be between"),
        ('{"kvmap": 7, "entries": []}', "field 'kvmap': unsupported manifest version 7"),
        ("[1", "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    run = subprocess.run(
        [sys.executable, "-m", "kvmap", "resolve", str(path), "a"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1
    # Every command names a manifest by the URL it read (the same for paths and URLs).
    assert run.stderr.startswith(f"kvmap: {path.as_uri()}: ")
    assert message in run.stderr


def test_missing_file_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent/m.json"]) == 1
    assert capsys.readouterr().err == "kvmap: file:///nonexistent/m.json: manifest not found\n"
    with pytest.raises(SystemExit) as info:
        main(["resolve", EXAMPLE])  # no key
    assert info.value.code == 2
