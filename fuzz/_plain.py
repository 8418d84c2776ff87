"""The fallback fuzzing loop where atheris is not installed: ``random`` bytes, no coverage feedback.

    python fuzz/_plain.py NAME SECONDS SEEDS WORK ARTIFACTS [--timeout=S]

For SECONDS, feeds the target's ``check`` random bytes and random mutations (bit flips,
inserted, deleted and repeated bytes, splices) of its seed and working corpora. The first
input that raises (or runs longer than the timeout) is written to ARTIFACTS as
``crash-SHA1`` (``timeout-SHA1``), its traceback printed, and the loop exits 1. It prints
``stat::`` lines as libFuzzer does, so ``fuzz/run.py`` reads both alike. It adds nothing to
WORK: without coverage it cannot tell which inputs are new.
"""

from __future__ import annotations

import hashlib
import importlib
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Timeout


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(6)
        at = rng.randint(0, len(out))
        if kind == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 2 and out:
            del out[at : at + rng.randint(1, 16)]
        elif kind == 3 and out:
            i = rng.randrange(len(out))
            out[at:at] = out[i : i + rng.randint(1, 32)] * rng.randint(1, 4)
        elif kind == 4 and pool:
            other = rng.choice(pool)
            j = rng.randint(0, len(other))
            out = out[:at] + other[j:]
        elif kind == 5 and out:
            out[rng.randrange(len(out))] = rng.choice(b'\x00\xff\x7f\x80"[]{}|%/.:\\')
    return bytes(out)


def main(argv: list[str]) -> int:
    name, seconds, seeds, _work, artifacts = argv[:5]
    timeout = next((int(a.split("=", 1)[1]) for a in argv[5:] if a.startswith("--timeout=")), 5)
    check = importlib.import_module(f"fuzz.fuzz_{name}").check
    pool = [
        p.read_bytes() for d in (Path(seeds), Path(_work)) if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()
    ]
    rng = random.Random()
    print(f"plain random loop (not atheris): target {name}, {seconds} s, {len(pool)} corpus files")
    signal.signal(signal.SIGALRM, _alarm)
    deadline = time.monotonic() + int(seconds)
    execs = 0
    status = 0
    while time.monotonic() < deadline:
        if not pool or rng.random() < 0.25:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 256)))
        else:
            data = mutate(rng, rng.choice(pool), pool)
        signal.alarm(timeout)
        try:
            check(data)
        except _Timeout:
            status = _report(artifacts, "timeout", data, f"the input ran longer than {timeout} s")
        except Exception:
            status = _report(artifacts, "crash", data, traceback.format_exc())
        finally:
            signal.alarm(0)
        execs += 1
        if status:
            break
    print(f"stat::number_of_executed_units: {execs}")
    print("stat::new_units_added:          0")
    return status


def _report(artifacts: str, kind: str, data: bytes, why: str) -> int:
    path = Path(artifacts) / f"{kind}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    print(why)
    print(f"artifact written to {path}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
