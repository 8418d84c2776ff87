"""A sha256 pin under an outer entry's window (spec 3.4): the pin is of the pinning entry's
bytes, so a read through a narrower outer window still hashes the whole pinned window."""

from __future__ import annotations

import hashlib
import json
import uuid

import obstore
import pytest

import kvmap

DATA = b"0123456789"


def _world(inner_entry: dict[str, object], outer_window: tuple[int, int]) -> str:
    name = f"pins-windows-{uuid.uuid4().hex[:12]}"
    store = kvmap.memory_store(name)
    obstore.put(store, "data.bin", DATA)
    obstore.put(store, "inner.json", json.dumps([{"key": "x", "path": "data.bin", **inner_entry}]).encode())
    offset, length = outer_window
    outer = [{"key": "k", "path": "inner.json|kvmap:x", "offset": offset, "length": length}]
    obstore.put(store, "outer.json", json.dumps(outer).encode())
    return name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("inner_entry", "window", "expected"),
    [
        ({"offset": 2, "length": 6, "sha256": _sha(DATA[2:8])}, (1, 3), DATA[3:6]),
        ({"offset": 2, "length": 6, "sha256": _sha(DATA[2:8])}, (0, 6), DATA[2:8]),
        ({"sha256": _sha(DATA)}, (4, 5), DATA[4:9]),
    ],
)
def test_an_outer_window_reads_the_pinned_bytes_it_narrows(
    inner_entry: dict[str, object], window: tuple[int, int], expected: bytes
) -> None:
    reader = kvmap.Reader(f"memory://{_world(inner_entry, window)}/outer.json")
    assert reader.get_sync("k") == expected
    assert reader.get_sync("k", (1, 3)) == expected[1:3]
    assert reader.get_many_sync(["k"], [None]) == [expected]


def test_a_changed_object_under_an_outer_window_is_refused() -> None:
    name = _world({"offset": 2, "length": 6, "sha256": _sha(DATA[2:8])}, (1, 3))
    obstore.put(kvmap.memory_store(name), "data.bin", b"0123X56789")  # outside [3, 6), inside [2, 8)
    with pytest.raises(kvmap.ObjectChangedError):
        kvmap.Reader(f"memory://{name}/outer.json").get_sync("k")


def test_an_outer_window_past_a_whole_pinned_object_is_a_window_error() -> None:
    name = _world({"sha256": _sha(DATA)}, (8, 5))
    with pytest.raises(kvmap.WindowError):
        kvmap.Reader(f"memory://{name}/outer.json").get_sync("k")
