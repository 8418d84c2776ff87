"""EditableMap: every sequence of edits answers as a full recompile of the edited manifest does.

Entry numbers are compared under the documented identity rule: the editable map numbers an
entry by its slot (tombstones keep theirs), the exported manifest drops tombstones, so slot
``i`` is entry ``exported_index(i)`` of the recompiled map.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.editable import EditableMap
from kvmap.fetch import drive
from kvmap.keyrange import KeyRange
from kvmap.keytable import MAX_KEY_LENGTH
from tests.strategies import entries, manifests, probe_keys, texts

URL = "s3://bucket/m.json"


def renumbered(em: EditableMap, r: kvmap.Resolution | None) -> kvmap.Resolution | None:
    if r is None:
        return None
    index = em.exported_index(r.entry)
    assert index is not None, "a tombstone won"
    return r._replace(entry=index)


def check_against_recompile(em: EditableMap, slots: list[dict[str, Any] | None], keys: list[str]) -> None:
    """Every answer of ``em`` equals that of ``compile`` of the live entries of ``slots``."""
    live = [e for e in slots if e is not None]
    exported = em.manifest()
    assert exported.to_json()["entries"] == live
    assert em.n_entries == len(slots)
    assert len(em) == len(live)
    for i, e in enumerate(slots):
        assert (em.entry(i) is None) == (e is None)
    cm = kvmap.compile(kvmap.Manifest.from_json(live, url=URL))
    for key in keys:
        got = em.resolve(key)
        assert renumbered(em, got) == cm.resolve(key), key
        ex = em.explain(key)
        assert tuple(em.exported_index(i) for i in ex.entries) == cm.explain(key).entries, key
        assert ex.resolution == got
        assert em.is_exact(key) == cm.is_exact(key), key
        assert em.known(key) == (got, em.is_exact(key))
    assert [renumbered(em, r) for r in em.resolve_many(keys)] == cm.resolve_many(keys)
    for prefix in {"", *(k[:1] for k in keys), *(k[:2] for k in keys[:8])}:
        for whiteouts in (False, True):
            assert em.exact_keys(prefix, whiteouts=whiteouts) == cm.exact_keys(prefix, whiteouts=whiteouts), prefix
    for lo, hi in [("", None), *itertools.pairwise(keys[:7])]:
        within = KeyRange(lo, None) if hi is None else KeyRange(min(lo, hi), max(lo, hi))
        got_targets = [t._replace(entry=em.exported_index(t.entry)) for t in em.range_targets(within)]
        assert got_targets == list(cm.range_targets(within)), within
    assert em.target_roots() >= cm.target_roots()
    assert em.pipeline_roots() >= cm.pipeline_roots()


@st.composite
def edit_sequences(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]], int | None]:
    initial = draw(manifests)
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["append", "append", "replace", "replace", "remove", "remove", "merge"]))
        if kind == "merge":
            ops.append(("merge",))
        elif kind == "remove":
            ops.append(("remove", draw(st.integers(0, 1 << 16))))
        else:
            ops.append((kind, draw(st.integers(0, 1 << 16)), draw(entries())))
    merge_at = draw(st.none() | st.integers(0, 5))
    return initial, ops, merge_at


@settings(max_examples=400, deadline=None)
@given(edit_sequences(), st.lists(texts, max_size=6))
def test_every_edit_sequence_answers_as_a_recompile(
    case: tuple[list[dict[str, Any]], list[tuple[Any, ...]], int | None], extra_keys: list[str]
) -> None:
    initial, ops, merge_at = case
    em = EditableMap(kvmap.Manifest.from_json(initial, url=URL), merge_at=merge_at)
    slots: list[dict[str, Any] | None] = list(initial)
    every_entry = list(initial) + [op[-1] for op in ops if op[0] in ("append", "replace")]
    keys = probe_keys(every_entry) + extra_keys
    check_against_recompile(em, slots, keys)
    for op in ops:
        live = [i for i, e in enumerate(slots) if e is not None]
        if op[0] == "merge":
            em.merge()
            assert em.pending == 0
            assert em.resolve == em._base.resolve  # no delta left: the compiled map's own resolve
        elif op[0] == "append":
            assert em.append(op[2]) == len(slots)
            slots.append(op[2])
        elif not live:
            with pytest.raises(IndexError):
                em.remove(op[1] % (len(slots) + 1)) if op[0] == "remove" else em.replace(0, op[2])
            continue
        elif op[0] == "remove":
            i = live[op[1] % len(live)]
            em.remove(i)
            slots[i] = None
        else:
            i = live[op[1] % len(live)]
            em.replace(i, op[2])
            slots[i] = op[2]
        if merge_at is not None:
            assert em.pending <= merge_at
        check_against_recompile(em, slots, keys)
    em.merge()
    check_against_recompile(em, slots, keys)


def test_entry_numbers_survive_removals_and_merges() -> None:
    m = kvmap.Manifest.from_json(
        [
            {"prefix": "", "path": "s3://b/all/"},
            {"key": "a", "path": "s3://b/a"},
            {"key": "b", "path": "s3://b/b"},
            {"key": "c", "path": "s3://b/c"},
        ],
        url=URL,
    )
    em = EditableMap(m)
    em.remove(1)
    assert em.resolve("c").entry == 3
    assert em.resolve("a") == kvmap.Resolution(0, "s3://b/all/a", None, None, None)
    em.merge()
    assert em.resolve("c").entry == 3  # still slot 3: the tombstone compiled as a shadowed copy
    assert em.explain("c").entries == (3, 0)
    assert [em.exported_index(i) for i in range(4)] == [0, None, 1, 2]
    em.remove(2)
    em.remove(3)
    em.merge()  # trailing tombstones: left out of the compiled base
    assert em.append({"key": "c", "path": "s3://b/c2"}) == 4  # a number is never reused
    assert em.explain("c").entries == (4, 0)
    assert em.exported_index(4) == 1
    with pytest.raises(IndexError, match="removed"):
        em.remove(3)
    with pytest.raises(IndexError, match="removed"):
        em.replace(1, {"key": "x", "path": "s3://b/x"})
    with pytest.raises(IndexError, match="no entry 5"):
        em.remove(5)
    assert em.entry(1) is None
    assert em.manifest().to_json()["entries"] == [
        {"prefix": "", "path": "s3://b/all/"},
        {"key": "c", "path": "s3://b/c2"},
    ]


def test_edits_are_validated_as_entries_at_their_number() -> None:
    em = EditableMap(kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}], url=None))
    with pytest.raises(kvmap.ManifestError) as info:
        em.append({"key": "k", "path": "s3://b/x", "strip_prefix": 1})
    assert (info.value.entry, info.value.field) == (1, "strip_prefix")
    with pytest.raises(kvmap.ManifestError, match="relative reference") as info:
        em.replace(0, {"key": "a", "path": "rel/x"})
    assert info.value.entry == 0
    with pytest.raises(kvmap.ManifestError, match="UTF-8 bytes"):
        em.append({"key": "k" * (MAX_KEY_LENGTH + 1), "path": "s3://b/x"})
    with pytest.raises(kvmap.ManifestError, match="JSON object"):
        em.append(["key", "k"])  # type: ignore[arg-type]
    assert em.n_entries == 1  # nothing was added
    assert em.resolve("a").url == "s3://b/a"


def test_the_map_keeps_its_own_copy_of_an_entry() -> None:
    em = EditableMap(kvmap.Manifest.from_json([], url=URL))
    entry: dict[str, Any] = {"key": "zarr.json", "json": {"zarr_format": 3, "attributes": {"a": [1]}}}
    em.append(entry)
    entry["json"]["attributes"]["a"].append(2)
    entry["key"] = "other"
    assert em.resolve("zarr.json").data == b'{"zarr_format":3,"attributes":{"a":[1]}}'
    assert em.manifest().to_json()["entries"][0]["json"] == {"zarr_format": 3, "attributes": {"a": [1]}}


def test_invalid_keys_are_refused_inside_and_outside_the_delta() -> None:
    em = EditableMap(kvmap.Manifest.from_json([{"prefix": "", "path": "s3://b/"}], url=URL))
    em.append({"prefix": "\ud7ff", "path": "s3://b/x/"})
    for key in ("\ud800", "\ud7ff\udc00"):  # outside, then inside the dirty region
        with pytest.raises(kvmap.InvalidKeyError):
            em.resolve(key)
        with pytest.raises(kvmap.InvalidKeyError):
            em.resolve_many(["a", key])
        with pytest.raises(kvmap.InvalidKeyError):
            em.explain(key)


def test_the_delta_is_merged_past_its_bound() -> None:
    em = EditableMap(kvmap.Manifest.from_json([{"key": "a", "path": "s3://b/a"}], url=URL), merge_at=3)
    base = em._base
    for i in range(3):
        em.append({"key": f"k{i}", "path": "s3://b/k"})
    assert em.pending == 3
    assert em._base is base
    em.append({"key": "k3", "path": "s3://b/k"})
    assert em.pending == 0
    assert em._base is not base
    assert em.resolve is em._base.resolve
    assert em.merge_at == 3
    assert EditableMap(kvmap.Manifest.from_json([], url=URL)).merge_at == kvmap.editable.MERGE_MIN


def test_an_editable_map_is_a_key_map() -> None:
    em = EditableMap(kvmap.Manifest.from_json([{"prefix": "a/", "path": "s3://b/x/"}], url=URL))
    em.append({"key": "a/1", "path": None})
    assert isinstance(em, kvmap.KeyMap)
    assert drive(em.resolve_io("a/2"), {}.get).url == "s3://b/x/2"
    assert drive(em.resolve_io("a/1"), {}.get) is None
    assert drive(em.is_exact_io("a/1"), {}.get) is True
    assert drive(em.explain_io("a/1"), {}.get).entries == (1, 0)
    assert drive(em.resolve_many_io(["a/1", "a/2"]), {}.get)[1].entry == 0
    assert drive(em.exact_keys_io("a/", whiteouts=True), {}.get) == ["a/1"]
    assert drive(em.exact_keys_io("a/"), {}.get) == []
    assert drive(em.range_targets_io(KeyRange("a/", "a0")), {}.get)[0].url == "s3://b/x/"
    assert em.target_roots() == {"s3://b/x/"}
    assert "1 edits pending" in repr(em)
