"""Run the fuzz targets one after the other, each in its own process, and print a table.

    python fuzz/run.py --seconds 60                       # every target, 60 s each
    python fuzz/run.py --seconds 600 --target zip --target store

Each target (``fuzz/fuzz_NAME.py``) runs under atheris (libFuzzer) with
``-max_total_time=SECONDS``, its seed corpus ``fuzz/corpus/NAME/`` (read, never written) and
a working corpus ``fuzz/work/NAME/`` (where new units go), ``-timeout``, ``-rss_limit_mb``,
``-max_len`` and, if there is one, the dictionary ``fuzz/dicts/NAME.dict``. Crashes,
timeouts and the run's log go to ``fuzz/artifacts/NAME/``. ``fuzz/work/`` and
``fuzz/artifacts/`` are gitignored.

The runs tolerate the known kvmap bugs that have an xfail regression test
(``KVMAP_FUZZ_SKIP_KNOWN=1``; ``--strict`` turns that off), so that a known bug does not
end every run in its first second.

Without atheris (or with ``--plain``), each target runs a plain loop instead for the same
time: random bytes and random mutations of the corpus, with ``random``, no coverage
feedback (``fuzz/_plain.py``); the table says so.

Exits 1 if any target crashed, hung or failed to run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
#: Largest input per target (libFuzzer's -max_len): archives need room, keys and documents less.
MAX_LEN = {"zip": 16384, "manifest": 8192, "manifest_objects": 4096}
DEFAULT_MAX_LEN = 2048
_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak)-")


@dataclass
class Result:
    target: str
    engine: str
    execs: int | None
    seconds: float
    new_units: int
    crashes: list[str]
    returncode: int

    @property
    def failed(self) -> bool:
        return bool(self.crashes) or self.returncode != 0


def targets() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def _count(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file()) if directory.is_dir() else 0


def _artifacts(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if _ARTIFACT.match(p.name)} if directory.is_dir() else set()


def _execs(log: str) -> int | None:
    found = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if found:
        return int(found[-1])
    status = re.findall(r"^#(\d+)\s", log, re.M)  # a crash ends the run before the final stats
    return int(status[-1]) if status else None


def run_one(name: str, seconds: int, args: argparse.Namespace, atheris: bool) -> Result:
    seeds = FUZZ / "corpus" / name
    work = args.out / "work" / name
    artifacts = args.out / "artifacts" / name
    for d in (seeds, work, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    before_units, before_artifacts = _count(work), _artifacts(artifacts)
    env = dict(os.environ, KVMAP_FUZZ_SKIP_KNOWN="0" if args.strict else "1")
    if atheris:
        command = [
            sys.executable,
            str(FUZZ / f"fuzz_{name}.py"),
            str(work),
            str(seeds),
            f"-max_total_time={seconds}",
            f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_limit_mb}",
            f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
        ]
        dictionary = FUZZ / "dicts" / f"{name}.dict"
        if dictionary.is_file():
            command.append(f"-dict={dictionary}")
    else:
        command = [sys.executable, str(FUZZ / "_plain.py"), name, str(seconds), str(seeds), str(work), str(artifacts)]
        command += [f"--timeout={args.timeout}"]
    log_path = artifacts / "log.txt"
    start = time.monotonic()
    with open(log_path, "wb") as log:
        # Its own session: on a hang past the deadline, the whole process group is stopped.
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=seconds + args.timeout + 120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            log.write(b"\nfuzz/run.py: the run did not end in time; stopped\n")
            returncode = returncode or -signal.SIGKILL
    elapsed = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    crashes = sorted(_artifacts(artifacts) - before_artifacts)
    if returncode != 0 and not crashes:
        crashes = [f"(exit status {returncode}; see {log_path})"]
    return Result(
        name,
        "atheris" if atheris else "plain-random",
        _execs(text),
        elapsed,
        _count(work) - before_units,
        crashes,
        returncode,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="seconds per target (default 60)")
    parser.add_argument("--target", action="append", choices=targets(), help="a target to run (repeatable)")
    parser.add_argument("--timeout", type=int, default=5, help="seconds one input may take (default 5)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--plain", action="store_true", help="the random-bytes loop even where atheris is installed")
    parser.add_argument("--strict", action="store_true", help="do not tolerate the known bugs")
    parser.add_argument("--out", type=Path, default=FUZZ, help="where work/ and artifacts/ go (default fuzz/)")
    args = parser.parse_args(argv)
    atheris = not args.plain and importlib.util.find_spec("atheris") is not None
    if not atheris:
        print("fuzz/run.py: atheris is not installed (or --plain): PLAIN RANDOM LOOP, no coverage feedback")
    results = []
    for name in args.target or targets():
        print(f"fuzz/run.py: {name} for {args.seconds} s ...", flush=True)
        results.append(run_one(name, args.seconds, args, atheris))
    rows = [("target", "engine", "execs", "seconds", "new units", "crashes")]
    for r in results:
        execs = "?" if r.execs is None else str(r.execs)
        crashes = ", ".join(r.crashes) if r.crashes else "0"
        rows.append((r.target, r.engine, execs, f"{r.seconds:.0f}", str(r.new_units), crashes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    failed = [r.target for r in results if r.failed]
    if failed:
        print(f"fuzz/run.py: FAILED: {', '.join(failed)} (artifacts in {args.out / 'artifacts'}/)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
