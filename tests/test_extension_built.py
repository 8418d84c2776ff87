"""The optional C extension (kvmap/_speedups.c) is there wherever it could have been built.

The install skips it silently when it cannot compile it, and kvmap then resolves in pure Python (the
same answers, slower). Where a C compiler and Python's headers are present it should have been built:
if not, the install went wrong (or an older build is stale), and the speed targets are not what is tested.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from kvmap import compiled


def test_the_extension_is_built_where_it_can_be() -> None:
    cc = (sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not cc or shutil.which(cc[0]) is None or not headers.exists():
        pytest.skip("no C compiler or no Python headers: kvmap runs in pure Python here")
    importlib.import_module("kvmap._speedups")  # ImportError: not built (reinstall: pip install -e .)
    if os.environ.get("KVMAP_PURE_PYTHON", "") in ("", "0"):
        assert compiled._RangeIndex is not None
