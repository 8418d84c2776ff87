"""``kvmap demo`` (in process and as ``python -m kvmap.demo``) and every script in ``examples/``,
run for real: real files, real zarr and xarray, real subprocesses."""

from __future__ import annotations

import io
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr

import kvmap
from kvmap import demo

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# What each example must print: lines that only a run that worked can print.
EXPECTED = {
    "composite_group.py": [
        "zarr: group 'ocean and atmosphere, one group' with members ['atmosphere', 'ocean']",
        "xarray: ocean/sst = [14.0, 14.5, 15.0, 15.5] degC",
        "xarray: atmosphere/t2m = [9.0, 11.0, 12.5, 10.0] degC",
    ],
    "chunk_patch.py": [
        "patched:   [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]",
        "retracted: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, nan, nan]  (c/3 whited out: the fill value)",
        "original unchanged on disk: [-999.0, -999.0]",
    ],
    "redirect_config.py": [
        "before promotion: stable -> v1: [0.0, 1.0, 2.0, 3.0]",
        "after promotion:  stable -> v2: [100.0, 101.0, 102.0, 103.0]",
        "stable/c/1 resolves to releases/v2.zarr/c/1",
    ],
    "kerchunk_migration.py": [
        "converted: 8 entries, kerchunk -> kvmap",
        "temperature (4, 6) [K], row 0: [270.5, 271.5, 272.5, 273.5, 274.5, 275.5]",
        "OK: the kvmap manifest reads the same values as h5py",
    ],
    "dask_array.py": [
        "dask array (100,), 10 chunks; sum = 4950 (numpy: 4950)",
        "c/4 from disk-1/x.zarr/c/4",
        "c/5 from disk-2/x.zarr/c/5",
    ],
}


def _env(tmp: Path) -> dict[str, str]:
    """The environment of a subprocess: this checkout's kvmap, temporary files in ``tmp``."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """``args`` run in the repository root (warnings are errors); fails the test unless it exits 0."""
    tmp.mkdir(exist_ok=True)
    done = subprocess.run(args, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert done.stderr == "", done.stderr
    return done


def _after(report: str, label: str) -> list[float]:
    """The values the demo's report says ``label`` reads after the edits."""
    found = re.search(rf"^  {re.escape(label)} +before \[[^]]*\] +after \[([^]]*)\]$", report, re.M)
    assert found, f"no data line for {label}:\n{report}"
    return [float(v) for v in found.group(1).split()]


def _check_report(report: str) -> None:
    """What every demo report shows: the tree of both members, two traces, the patch, the fill."""
    lines = report.splitlines()
    assert len(lines) <= 62, f"the report should be short, it has {len(lines)} lines"
    assert "\033" not in report  # plain text: not a terminal
    # The composite tree: both members, the patched chunks listed, the whited-out one not.
    assert "members precip, temperature" in report
    tree = {line.split()[0]: line.split()[1:] for line in lines if re.match(r"^  [a-z0-9/]+/ +\S", line)}
    assert tree["precip/"] == ["zarr.json"]
    assert tree["precip/c/"] == ["0", "1"]
    assert tree["temperature/"] == ["zarr.json"]
    assert tree["temperature/c/0/"] == tree["temperature/c/1/"] == ["0", "1"]
    # Two explain traces as the command prints them: the winner, what it shadows, the chain.
    assert "  key 'precip/c/1' in " in report
    assert re.search(r"entry 5 +wins +key 'precip/c/1' -> fixes/pack.bin", report)
    assert re.search(r"entry 2 +shadowed +prefix 'precip/'", report)
    header = len(demo._PACK_HEADER)
    assert re.search(rf"resolves to: file://\S+/fixes/pack.bin \[offset {header}, length \d+\]", report)
    assert "  key 'temperature/c/0/0' in " in report
    assert re.search(r"entry 3 +wins +prefix 'temperature/' \(strip 12\) -> site-b/reprocessed/", report)
    assert re.search(r"entry 1 +shadowed +prefix 'temperature/' \(strip 12\) -> site-a/", report)
    assert "/site-b/reprocessed/temperature.zarr/c/0/0 [offset 0, to the end]" in report
    # The data: before and after the patch, the whiteout as the fill value, xarray's view.
    assert "precip          before [0 1 2 3 4 5]              after [10 11 12 13 nan nan]" in report
    assert "temperature[0]  before [0 1 2 3 4 5]              after [0.5 1.5 2.5 3.5 4.5 5.5]" in report
    assert "precip/c/2 -> absent (Reader.explain_sync: entry 6 wins), so zarr gives the fill value nan" in report
    assert "xarray.open_zarr: precip(time: 6), temperature(y: 4, x: 6); precip = [10 11 12 13 nan nan]" in report


def _same(got: object, want: object) -> None:
    np.testing.assert_array_equal(np.asarray(got, dtype="f4"), np.asarray(want, dtype="f4"))  # NaN == NaN


def test_demo_keep_leaves_files_a_fresh_store_reads_the_same(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    out = io.StringIO()
    assert demo.main(keep=str(keep), out=out) == 0
    report = out.getvalue()
    _check_report(report)

    # A fresh store on the saved manifest reads what the demo printed, and what it promises.
    store = kvmap.KVMapStore(keep / demo.MANIFEST_NAME, read_only=True)
    group = zarr.open_group(store, mode="r")
    assert group.attrs["title"] == "kvmap demo"
    precip, temperature = group["precip"], group["temperature"]
    assert isinstance(precip, zarr.Array)
    assert isinstance(temperature, zarr.Array)
    _same(precip[...], _after(report, "precip"))
    _same(temperature[0], _after(report, "temperature[0]"))
    _same(precip[...], demo.PATCHED)
    _same(temperature[...], demo.TEMPERATURE)
    assert math.isnan(float(precip.fill_value))
    # The original member data is untouched: only the manifest changed.
    _same(zarr.open_array(str(keep / "site-b" / "precip.zarr"), mode="r")[...], np.arange(6))
    _same(zarr.open_array(str(keep / "site-a" / "temperature.zarr"), mode="r")[0], np.arange(6))


def test_demo_keep_prints_commands_that_work_on_the_kept_files(tmp_path: Path) -> None:
    keep = tmp_path / "my demo"  # a space: the printed commands must quote it
    out = io.StringIO()
    assert demo.main(keep=keep, out=out) == 0
    commands = out.getvalue().split("\nnext, try\n", 1)[1].splitlines()
    names = [shlex.split(line)[:2] for line in commands]
    assert names == [
        ["kvmap", "ls"],
        ["kvmap", "resolve"],
        ["kvmap", "explain"],
        ["kvmap", "cat"],
        ["kvmap", "check"],
        ["python", "-c"],
    ]
    results = {}
    for line in commands:
        args = shlex.split(line)
        assert args[2] == str(keep.resolve() / demo.MANIFEST_NAME) or args[0] == "python"
        argv = [sys.executable, "-m", "kvmap", *args[1:]] if args[0] == "kvmap" else [sys.executable, *args[1:]]
        results[args[1] if args[0] == "kvmap" else "python"] = _run(argv, tmp_path / "t").stdout
    assert "precip/c/2\tabsent" in results["resolve"]
    window = r"precip/c/1\tfile://\S+/fixes/pack.bin \[offset \d+, length \d+\]\t\(entry 5\)"
    assert re.search(window, results["resolve"])
    assert "absent (whiteout)" in results["explain"]
    assert '"title":"kvmap demo"' in results["cat"]
    assert "precip/c/0" in results["ls"]
    assert "precip/c/2" not in results["ls"]
    assert results["python"].strip() == "[10. 11. 12. 13. nan nan]"


def test_demo_without_keep_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = io.StringIO()
    assert demo.main(out=out) == 0
    report = out.getvalue()
    _check_report(report)
    where = re.match(r"kvmap demo: .* in (\S+)\n", report)
    assert where
    assert Path(where.group(1)).parent == scratch.resolve()  # it did use a directory in there...
    assert not Path(where.group(1)).exists()
    assert list(scratch.iterdir()) == []  # ...and removed it, and every scratch directory
    assert "next, try" not in report
    assert "--keep DIR" in report


def test_python_m_kvmap_demo(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    report = _run([sys.executable, "-W", "error", "-m", "kvmap.demo"], scratch).stdout
    _check_report(report)
    assert list(scratch.iterdir()) == []


def test_python_m_kvmap_demo_keep(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    report = _run([sys.executable, "-W", "error", "-m", "kvmap.demo", "--keep", str(keep)], tmp_path / "t").stdout
    _check_report(report)
    assert "next, try" in report
    assert sorted(p.name for p in keep.iterdir()) == ["composite.json", "fixes", "site-a", "site-b"]


def test_demo_keep_refuses_a_directory_that_holds_anything(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(kvmap.SaveError, match="new or empty directory"):
        demo.main(keep=tmp_path, out=io.StringIO())
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]
    with pytest.raises(kvmap.SaveError, match="not a file"):
        demo.main(keep=tmp_path / "precious.txt", out=io.StringIO())
    assert (tmp_path / "precious.txt").read_text() == "mine"
    # As a command: one error line, exit status 1.
    done = subprocess.run(
        [sys.executable, "-m", "kvmap.demo", "--keep", str(tmp_path)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert re.fullmatch(r"kvmap: .*new or empty directory.*\n", done.stderr)


def test_every_example_has_an_expectation() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_its_result(name: str, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    printed = _run([sys.executable, "-W", "error", f"examples/{name}"], scratch).stdout.splitlines()
    for line in EXPECTED[name]:
        assert line in printed, f"{name} did not print {line!r}:\n" + "\n".join(printed)
    assert list(scratch.iterdir()) == []  # its data was made, and removed, in a temporary directory


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal, as a console's standard output does."""

    def isatty(self) -> bool:
        return True


def test_demo_on_a_terminal_has_bold_headings_only(tmp_path: Path) -> None:
    out = _Terminal()
    assert demo.main(keep=tmp_path / "d", out=out) == 0
    bold = re.findall(r"\033\[1m([^\033]*)\033\[0m", out.getvalue())
    assert bold[0].startswith("composite.json: kvmap.compose")
    assert bold[-1] == "next, try"
    plain = re.sub(r"\033\[[01]m", "", out.getvalue())
    assert "\033" not in plain
