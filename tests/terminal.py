"""Running a command with its standard error on a pseudo-terminal (what a progress bar needs)."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Sequence


def run_with_terminal_stderr(args: Sequence[str]) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run ``args`` with standard output piped and standard error on a new pseudo-terminal; the
    finished process and everything shown on the terminal."""
    leader, follower = pty.openpty()
    try:
        run = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=follower, check=False)
        os.close(follower)
        shown = b""
        while True:
            try:
                part = os.read(leader, 1 << 16)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not part:
                break
            shown += part
    finally:
        os.close(leader)
    return run, shown
