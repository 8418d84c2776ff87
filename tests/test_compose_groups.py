"""kvmap.compose: consolidated metadata, zarr v2 groups and a real root (issue 15, section 4).

Everything here runs on real zarr hierarchies in real local directories (and the loopback S3
server), opened with real zarr and xarray.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import kvmap
from kvmap.store import KVMapStore
from tests.servers import S3Server

TIME = np.arange(6.0)
TEMPERATURE = np.linspace(250.0, 300.0, 6)
PRECIP = np.array([0.0, 1.5, 0.0, 3.25, 0.5, 0.0])


class _Recorded(KVMapStore):
    """A KVMapStore that notes every listing made through it (to show a composite opens without one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listings: list[str] = []

    async def list(self) -> AsyncIterator[str]:
        self.listings.append("list")
        async for key in super().list():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        self.listings.append(f"list_prefix {prefix}")
        async for key in super().list_prefix(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        self.listings.append(f"list_dir {prefix}")
        async for key in super().list_dir(prefix):
            yield key


@pytest.fixture
def quiet_consolidation() -> Iterator[None]:
    """zarr 3.1 warns that v3 consolidated metadata is not in the spec whenever it consolidates one
    (zarr.consolidate_metadata, xarray's to_zarr); that warning only, where a test asks zarr to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        yield


def _v3_array(path: Path, values: np.ndarray, dims: list[str], **attributes: Any) -> None:
    a = zarr.create_array(
        zarr.storage.LocalStore(path), shape=values.shape, chunks=(3,), dtype=values.dtype, dimension_names=dims
    )
    a[...] = values
    a.attrs.update(attributes)


def _v2_array(path: Path, values: np.ndarray, dims: list[str]) -> None:
    a = zarr.create_array(
        zarr.storage.LocalStore(path),
        shape=values.shape,
        chunks=(3,),
        dtype=values.dtype,
        zarr_format=2,
        fill_value=-9999.0,  # xarray masks a v2 array's fill value: one no value has
        attributes={"_ARRAY_DIMENSIONS": dims},
    )
    a[...] = values


@pytest.fixture
def v3_members(tmp_path: Path) -> Path:
    """Three v3 arrays and one v3 group (with a nested group) in directories of tmp_path/data."""
    data = tmp_path / "data"
    _v3_array(data / "time.zarr", TIME, ["time"], units="days")
    _v3_array(data / "t.zarr", TEMPERATURE, ["time"], units="K")
    _v3_array(data / "p.zarr", PRECIP, ["time"], units="mm")
    g = zarr.open_group(zarr.storage.LocalStore(data / "g.zarr"), mode="w", attributes={"kind": "station"})
    g.create_array("a", shape=(2,), dtype="i4", fill_value=1, dimension_names=["x"])
    g.create_group("sub", attributes={"deep": True}).create_array("b", shape=(3,), dtype="u1", fill_value=2)
    return data


MEMBERS = {"time": "data/time.zarr/", "temperature": "data/t.zarr/", "precip": "data/p.zarr/"}


# -- the pure case ------------------------------------------------------------------------------


def test_the_default_reads_nothing_and_is_the_manifest_it_always_was() -> None:
    # Members nowhere reachable: any read would raise (no URL: every target needs allowing).
    m = kvmap.compose({"t": "s3://nowhere/t.zarr/", "p": "gs://nowhere/p/"}, attributes={"a": 1})
    assert m.to_json()["entries"] == [
        {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group", "attributes": {"a": 1}}},
        {"prefix": "t/", "path": "s3://nowhere/t.zarr/"},
        {"prefix": "p/", "path": "gs://nowhere/p/"},
    ]
    v2 = kvmap.compose({"t": "s3://nowhere/t.zarr/"}, zarr_format=2, attributes={"a": 1})
    assert v2.to_json()["entries"] == [
        {"key": ".zgroup", "json": {"zarr_format": 2}},
        {"key": ".zattrs", "json": {"a": 1}},
        {"prefix": "t/", "path": "s3://nowhere/t.zarr/"},
    ]


@pytest.mark.parametrize(
    "name", ["", "a/b", ".", "..", "zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata", "__x"]
)
def test_names_that_are_no_member_names_are_refused(name: str) -> None:
    with pytest.raises(kvmap.ManifestError, match=r"entry 2: field 'prefix': .* is not a zarr member name"):
        kvmap.compose({"ok": "s3://b/ok/", name: "s3://b/x/"})


def test_bad_targets_root_and_format_are_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(kvmap.ManifestError, match=r"entry 1: field 'path': member 't': target .* must end in '/'"):
        kvmap.compose({"t": "s3://b/t.zarr"})
    with pytest.raises(kvmap.ManifestError, match=r"entry 0: field 'path': root 's3://b/r' must be a directory"):
        kvmap.compose({"t": "s3://b/t/"}, root="s3://b/r")
    with pytest.raises(kvmap.ManifestError, match="zarr_format must be 2, 3 or None, not 4"):
        kvmap.compose({"t": "s3://b/t/"}, zarr_format=4)
    with pytest.raises(kvmap.ManifestError, match="relative reference"):
        kvmap.compose({"t": "s3://b/t/"}, root="root/")  # no url to resolve it against


# -- consolidated metadata -----------------------------------------------------------------------


def test_a_consolidated_composite_opens_in_xarray_without_listing_or_warning(tmp_path: Path, v3_members: Path) -> None:
    m = kvmap.compose(MEMBERS, url=str(tmp_path / "group.json"), consolidated=True, attributes={"title": "both"})
    store = _Recorded(m, read_only=True)
    ds = xr.open_zarr(store)  # filterwarnings=error: the fallback warning would fail this
    assert sorted(ds.data_vars) == ["precip", "temperature"]
    np.testing.assert_array_equal(ds["time"].values, TIME)  # a member named as its dimension: the coordinate
    np.testing.assert_array_equal(ds["temperature"].values, TEMPERATURE)
    np.testing.assert_array_equal(ds["precip"].values, PRECIP)
    assert ds["temperature"].attrs["units"] == "K"
    assert ds.attrs == {"title": "both"}
    assert store.listings == []


def test_consolidated_metadata_is_what_zarr_consolidates(
    tmp_path: Path, v3_members: Path, quiet_consolidation: None
) -> None:
    """The composite's consolidated metadata equals what zarr.consolidate_metadata makes of one real
    directory holding the same hierarchy (nested groups included), as zarr parses both."""
    members = {**MEMBERS, "stations": "data/g.zarr/"}
    m = kvmap.compose(members, url=str(tmp_path / "group.json"), consolidated=True, attributes={"title": "both"})
    real = tmp_path / "real.zarr"
    zarr.open_group(zarr.storage.LocalStore(real), mode="w", attributes={"title": "both"})
    for member, target in members.items():
        shutil.copytree(tmp_path / target, real / member)
    zarr.consolidate_metadata(zarr.storage.LocalStore(real))
    expected = zarr.open_consolidated(zarr.storage.LocalStore(real), mode="r").metadata
    store = _Recorded(m, read_only=True)
    got = zarr.open_consolidated(store, mode="r")
    assert got.metadata == expected
    assert sorted(got.members(max_depth=None), key=lambda kv: kv[0])[-1][0] == "time"  # from the snapshot
    assert got["stations/sub/b"].fill_value == 2
    assert store.listings == []


def test_consolidated_is_a_snapshot_refreshed_by_composing_again(tmp_path: Path, v3_members: Path) -> None:
    url = str(tmp_path / "group.json")
    old = kvmap.compose({"stations": "data/g.zarr/"}, url=url, consolidated=True)
    zarr.open_group(zarr.storage.LocalStore(v3_members / "g.zarr")).create_array("new", shape=(1,), dtype="i1")
    assert "new" not in zarr.open_group(KVMapStore(old, read_only=True), mode="r")["stations"]
    new = kvmap.compose({"stations": "data/g.zarr/"}, url=url, consolidated=True)
    assert "new" in zarr.open_group(KVMapStore(new, read_only=True), mode="r")["stations"]


def test_a_v2_composite_of_v2_members_consolidates_as_zarr_2_does(tmp_path: Path) -> None:
    _v2_array(tmp_path / "data" / "t.zarr", TEMPERATURE, ["time"])
    _v2_array(tmp_path / "data" / "p.zarr", PRECIP, ["time"])
    g = zarr.open_group(zarr.storage.LocalStore(tmp_path / "data" / "g.zarr"), mode="w", zarr_format=2)
    g.create_group("sub").create_array("b", shape=(3,), dtype="u1", fill_value=2)
    members = {"temperature": "data/t.zarr/", "precip": "data/p.zarr/", "g": "data/g.zarr/"}
    m = kvmap.compose(members, url=str(tmp_path / "group.json"), zarr_format=None, consolidated=True)
    cm = kvmap.compile(m)
    assert [cm.resolve(k).entry for k in (".zgroup", ".zattrs", ".zmetadata")] == [0, 1, 2]
    zmetadata = json.loads(cm.resolve(".zmetadata").data)
    assert zmetadata["zarr_consolidated_format"] == 1
    assert sorted(zmetadata["metadata"]) == [
        ".zattrs",
        ".zgroup",
        "g/.zattrs",
        "g/.zgroup",
        "g/sub/.zattrs",
        "g/sub/.zgroup",
        "g/sub/b/.zarray",
        "g/sub/b/.zattrs",
        "precip/.zarray",
        "precip/.zattrs",
        "temperature/.zarray",
        "temperature/.zattrs",
    ]
    assert zmetadata["metadata"]["precip/.zarray"] == json.loads((tmp_path / "data/p.zarr/.zarray").read_bytes())
    store = _Recorded(m, read_only=True)
    ds = xr.open_zarr(store)
    np.testing.assert_array_equal(ds["temperature"].values, TEMPERATURE)
    np.testing.assert_array_equal(ds["precip"].values, PRECIP)
    assert zarr.open_group(store, mode="r")["g/sub/b"].fill_value == 2
    assert store.listings == []


def test_non_finite_numbers_in_metadata_are_kept_as_zarr_writes_them(tmp_path: Path) -> None:
    """zarr writes NaN attributes as the JSON extension NaN; the consolidated root keeps them."""
    _v2_array(tmp_path / "t.zarr", TEMPERATURE, ["time"])
    (tmp_path / "t.zarr" / ".zattrs").write_text('{"_ARRAY_DIMENSIONS": ["time"], "missing": NaN}')
    m = kvmap.compose({"t": "t.zarr/"}, url=str(tmp_path / "g.json"), zarr_format=2, consolidated=True)
    g = zarr.open_group(KVMapStore(m, read_only=True), mode="r", use_consolidated=True)
    assert np.isnan(g["t"].attrs["missing"])


# -- formats: found, mixed, missing ----------------------------------------------------------------


def test_zarr_format_none_finds_the_members_format(tmp_path: Path, v3_members: Path) -> None:
    m = kvmap.compose(MEMBERS, url=str(tmp_path / "g.json"), zarr_format=None)
    assert m.to_json()["entries"][0]["key"] == "zarr.json"
    _v2_array(tmp_path / "v2.zarr", TIME, ["time"])
    m2 = kvmap.compose({"t": "v2.zarr/"}, url=str(tmp_path / "g.json"), zarr_format=None)
    assert [e.get("key") for e in m2.to_json()["entries"][:2]] == [".zgroup", ".zattrs"]
    assert zarr.open_group(KVMapStore(m2, read_only=True), mode="r")["t"].shape == (6,)


def test_a_mix_of_formats_is_refused_naming_both_members(tmp_path: Path, v3_members: Path) -> None:
    _v2_array(tmp_path / "data" / "old.zarr", TIME, ["time"])
    with pytest.raises(kvmap.ManifestError, match=r"entry 2: .*'temperature' \(zarr v3\) and 'old' \(zarr v2\)") as e:
        kvmap.compose(
            {"temperature": "data/t.zarr/", "old": "data/old.zarr/"}, url=str(tmp_path / "g.json"), zarr_format=None
        )
    assert "a zarr v3 group does not show v2 children" in str(e.value)
    with pytest.raises(kvmap.ManifestError, match=r"member 'old' is a zarr v2 hierarchy, but the group is zarr v3"):
        kvmap.compose({"old": "data/old.zarr/"}, url=str(tmp_path / "g.json"), consolidated=True)
    with pytest.raises(
        kvmap.ManifestError, match=r"member 'temperature' is a zarr v3 hierarchy, but the group is zarr v2"
    ):
        kvmap.compose({"temperature": "data/t.zarr/"}, url=str(tmp_path / "g.json"), zarr_format=2, consolidated=True)


def test_a_member_that_does_not_exist_is_refused_when_read(tmp_path: Path, v3_members: Path) -> None:
    url = str(tmp_path / "g.json")
    with pytest.raises(
        kvmap.ManifestError, match=r"entry 2: field 'path': member 'typo': no zarr metadata at 'data/tpyo.zarr/'"
    ):
        kvmap.compose({"time": "data/time.zarr/", "typo": "data/tpyo.zarr/"}, url=url, consolidated=True)
    with pytest.raises(kvmap.ManifestError, match="member 'typo': no zarr metadata"):
        kvmap.compose({"typo": "data/tpyo.zarr/"}, url=url, zarr_format=None)
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(kvmap.ManifestError, match=r"entry 1: field 'path': zarr metadata 'bad/zarr.json' is not JSON"):
        kvmap.compose({"bad": "bad.zarr/"}, url=url, consolidated=True)


def test_reads_are_held_to_the_manifests_policy(tmp_path: Path) -> None:
    _v3_array(tmp_path / "elsewhere" / "t.zarr", TEMPERATURE, ["time"])
    (tmp_path / "views").mkdir()
    url = str(tmp_path / "views" / "g.json")
    target = (tmp_path / "elsewhere" / "t.zarr").as_uri() + "/"
    with pytest.raises(kvmap.PolicyError, match="not allowed"):
        kvmap.compose({"t": target}, url=url, consolidated=True)
    m = kvmap.compose({"t": target}, url=url, consolidated=True, allow=[(tmp_path / "elsewhere").as_uri() + "/"])
    store = KVMapStore(m, read_only=True, allow=[(tmp_path / "elsewhere").as_uri() + "/"])
    np.testing.assert_array_equal(xr.open_zarr(store)["t"].values, TEMPERATURE)


def test_members_on_s3_consolidate_through_the_stores_given(s3_server: S3Server) -> None:
    bucket = f"compose-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    root, stores = s3_server.kvmap_stores(retry_config={"max_retries": 0})
    for name, values in [("t.zarr", TEMPERATURE), ("p.zarr", PRECIP)]:
        a = zarr.create_array(
            zarr.storage.ObjectStore(s3_server.store(bucket, prefix=name)),
            shape=values.shape,
            chunks=(3,),
            dtype="f8",
            dimension_names=["time"],
        )
        a[...] = values
    url = f"{root}{bucket}/group.json"
    m = kvmap.compose({"temperature": "t.zarr/", "precip": "p.zarr/"}, url=url, consolidated=True, stores=stores)
    store = _Recorded(m, read_only=True, stores=stores)
    ds = xr.open_zarr(store)
    np.testing.assert_array_equal(ds["precip"].values, PRECIP)
    assert store.listings == []


# -- root= : a real root ---------------------------------------------------------------------------


def test_root_makes_attributes_consolidation_and_new_variables_write_there(
    tmp_path: Path, v3_members: Path, quiet_consolidation: None
) -> None:
    url = str(tmp_path / "group.json")
    m = kvmap.compose(MEMBERS, url=url, root="root/", attributes={"title": "both"})
    assert m.to_json()["entries"][:2] == [
        {"prefix": "", "path": "root/"},
        {"key": "zarr.json", "path": "root/zarr.json"},
    ]
    root = tmp_path / "root"
    assert json.loads((root / "zarr.json").read_bytes())["attributes"] == {"title": "both"}
    m.save(url)
    store = KVMapStore(url)

    g = zarr.open_group(store)
    g.attrs["history"] = "set through the composite"
    assert json.loads((root / "zarr.json").read_bytes())["attributes"]["history"] == "set through the composite"

    zarr.consolidate_metadata(store)
    on_disk = json.loads((root / "zarr.json").read_bytes())
    assert sorted(on_disk["consolidated_metadata"]["metadata"]) == ["precip", "temperature", "time"]

    xr.Dataset({"wind": ("time", np.full(6, 3.0))}, attrs={"title": "both"}).to_zarr(store, mode="a")
    assert (root / "wind" / "zarr.json").exists()
    assert not any("wind" in p.name for p in (tmp_path / "data").rglob("*"))  # the members are untouched
    reopened = _Recorded(url, read_only=True)
    ds = xr.open_zarr(reopened)  # to_zarr consolidated again: nothing is listed
    assert sorted(ds.data_vars) == ["precip", "temperature", "wind"]
    np.testing.assert_array_equal(ds["wind"].values, np.full(6, 3.0))
    np.testing.assert_array_equal(ds["temperature"].values, TEMPERATURE)
    assert reopened.listings == []

    # Composing again keeps the root (its attributes) and consolidates what was written there too.
    again = kvmap.compose(MEMBERS, url=url, root="root/", consolidated=True)
    assert again == m
    refreshed = json.loads((root / "zarr.json").read_bytes())
    assert refreshed["attributes"] == {"title": "both"}
    assert sorted(refreshed["consolidated_metadata"]["metadata"]) == ["precip", "temperature", "time", "wind"]


def test_an_existing_root_is_kept_unless_told(tmp_path: Path, v3_members: Path) -> None:
    url = str(tmp_path / "group.json")
    kvmap.compose(MEMBERS, url=url, root="root/", attributes={"keep": 1})
    written = (tmp_path / "root" / "zarr.json").read_bytes()
    kvmap.compose(MEMBERS, url=url, root="root/")
    assert (tmp_path / "root" / "zarr.json").read_bytes() == written  # not rewritten
    kvmap.compose(MEMBERS, url=url, root="root/", attributes={"new": 2})
    assert json.loads((tmp_path / "root" / "zarr.json").read_bytes())["attributes"] == {"new": 2}

    _v3_array(tmp_path / "array-root", TIME, ["time"])
    with pytest.raises(kvmap.ManifestError, match=r"entry 0: field 'path': root 'array-root/' holds a zarr array"):
        kvmap.compose(MEMBERS, url=url, root="array-root/")
    zarr.open_group(zarr.storage.LocalStore(tmp_path / "v2-root"), mode="w", zarr_format=2)
    with pytest.raises(
        kvmap.ManifestError, match=r"root 'v2-root/' holds zarr v2 metadata .* but the group is zarr v3"
    ):
        kvmap.compose(MEMBERS, url=url, root="v2-root/")
    with pytest.raises(kvmap.ManifestError, match=r"root 'root/' holds zarr v3 metadata .* but the group is zarr v2"):
        kvmap.compose({}, url=url, root="root/", zarr_format=2)


def test_a_v2_root_takes_attributes_and_consolidation(tmp_path: Path, quiet_consolidation: None) -> None:
    _v2_array(tmp_path / "data" / "t.zarr", TEMPERATURE, ["time"])
    url = str(tmp_path / "group.json")
    m = kvmap.compose({"temperature": "data/t.zarr/"}, url=url, root="root/", zarr_format=2, consolidated=True)
    assert [e.get("key") for e in m.to_json()["entries"][:4]] == [None, ".zgroup", ".zattrs", ".zmetadata"]
    root = tmp_path / "root"
    assert sorted(p.name for p in root.iterdir()) == [".zattrs", ".zgroup", ".zmetadata"]
    store = KVMapStore(m)
    zarr.open_group(store, zarr_format=2).attrs["title"] = "v2"
    assert json.loads((root / ".zattrs").read_bytes()) == {"title": "v2"}
    xr.Dataset({"wind": ("time", np.full(6, 3.0))}, attrs={"title": "v2"}).to_zarr(store, mode="a", zarr_format=2)
    assert (root / "wind" / ".zarray").exists()
    ds = xr.open_zarr(KVMapStore(m, read_only=True))
    assert sorted(ds.data_vars) == ["temperature", "wind"]
    assert "wind/.zarray" in json.loads((root / ".zmetadata").read_bytes())["metadata"]


def test_writes_to_the_root_are_held_to_the_policy(tmp_path: Path, v3_members: Path) -> None:
    (tmp_path / "views").mkdir()
    outside = (tmp_path / "outside").as_uri() + "/"
    members = {"time": (v3_members / "time.zarr").as_uri() + "/"}
    allow = [v3_members.as_uri() + "/"]
    (tmp_path / "outside").mkdir()  # kvmap creates directories below an allowed one, not the allowed one
    with pytest.raises(kvmap.PolicyError):
        kvmap.compose(members, url=str(tmp_path / "views" / "g.json"), root=outside, allow=allow)
    assert not (tmp_path / "outside" / "zarr.json").exists()
    kvmap.compose(members, url=str(tmp_path / "views" / "g.json"), root=outside, allow=[*allow, outside])
    assert (tmp_path / "outside" / "zarr.json").exists()


# -- property: what zarr would consolidate ----------------------------------------------------------

_NAMES = st.sampled_from(["a", "B", "c1", "d-e", "é", "x.y"])


@st.composite
def _trees(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A zarr hierarchy: name -> an array's shape (a tuple) or a subgroup (a dict)."""
    names = draw(st.lists(_NAMES, max_size=3, unique_by=lambda n: n.casefold()))
    tree: dict[str, Any] = {}
    for name in names:
        if depth < 2 and draw(st.booleans()):
            tree[name] = draw(_trees(depth + 1))
        else:
            tree[name] = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    return tree


def _build(group: zarr.Group, tree: dict[str, Any]) -> None:
    for name, node in tree.items():
        if isinstance(node, dict):
            _build(group.create_group(name, attributes={"name": name}), node)
        else:
            group.create_array(name, shape=node, dtype="i2", fill_value=len(name), attributes={"n": len(node)})


@settings(max_examples=25, deadline=None)
@given(members=st.dictionaries(_NAMES, _trees(), min_size=1, max_size=3))
def test_property_consolidated_equals_zarr_consolidate(members: dict[str, dict[str, Any]]) -> None:
    tag = uuid.uuid4().hex[:12]
    real = zarr.storage.MemoryStore()
    zarr.open_group(real, mode="w", attributes={"tag": tag})
    targets = {}
    for i, (member, tree) in enumerate(members.items()):
        where = kvmap.memory_store(f"prop-{tag}-{i}")
        _build(zarr.open_group(zarr.storage.ObjectStore(where), mode="w", attributes={"m": member}), tree)
        _build(zarr.open_group(real, path=member, mode="w", attributes={"m": member}), tree)
        targets[member] = f"memory://prop-{tag}-{i}/"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(real)
    m = kvmap.compose(targets, attributes={"tag": tag}, consolidated=True, allow_all=True)
    got = zarr.open_consolidated(KVMapStore(m, read_only=True, allow_all=True), mode="r").metadata
    assert got == zarr.open_consolidated(real, mode="r").metadata
    for i in range(len(members)):
        obstore.delete(
            kvmap.memory_store(f"prop-{tag}-{i}"),
            [meta["path"] for meta in obstore.list(kvmap.memory_store(f"prop-{tag}-{i}")).collect()],
        )
