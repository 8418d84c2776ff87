"""Opening from the ecosystem (issue 15, section 5): kvmap.open_zarr, xarray's engine="kvmap",
and the zarr URL-pipeline adapters, tested against a stand-in resolver that follows zarr-python
PR #4192 (no released zarr resolves URL pipelines).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.sync import sync

import kvmap
from kvmap.store import KVMapStore
from kvmap.xarray_backend import KvmapBackendEntrypoint

TEMPERATURE = np.linspace(250.0, 300.0, 6)
PRECIP = np.array([0.0, 1.5, 0.0, 3.25, 0.5, 0.0])


# -- a stand-in for zarr's URL-pipeline resolver (zarr-python PR #4192) ------------------------------
# The PR's data model (zarr.abc.url_pipeline) and resolution (zarr.storage._url_pipeline), reduced to
# what an adapter meets: the parser splits at "|", lowercases and checks each adapter scheme; the
# adapter is found by scheme among the "zarr.url_adapters" entry points; it is called as
# `await cls.open_pipeline_segment(last_segment, PipelineContext(preceding, mode, storage_options))`
# on zarr's I/O loop; mode="r" must give a read-only store; zarr opens the residual path in it.

_ADAPTER_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*$")  # RFC 3986, as the PR checks it
_ROOT_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*):")


class URLPipelineError(ValueError):
    pass


@dataclass(frozen=True)
class PipelineSegment:
    scheme: str
    body: str
    query: str | None
    raw: str


@dataclass(frozen=True)
class AdapterResolution:
    store: Any
    path: str = ""
    zarr_format: int | None = None


@dataclass(frozen=True)
class PipelineContext:
    preceding: tuple[PipelineSegment, ...]
    mode: str | None
    storage_options: dict[str, Any] | None

    @property
    def read_only(self) -> bool:
        return self.mode == "r"

    @property
    def preceding_url(self) -> str:
        return "|".join(segment.raw for segment in self.preceding)

    async def resolve_preceding(self, **_overrides: Any) -> AdapterResolution:
        # The PR resolves the segments to the left with their own adapters; kvmap's adapters take
        # preceding_url instead (they have their own I/O), so the stand-in does not model it.
        raise URLPipelineError("the stand-in does not resolve preceding segments")


def parse_pipeline(url: str) -> tuple[PipelineSegment, ...]:
    parts = url.split("|")
    if any(not part for part in parts):
        raise URLPipelineError(f"empty sub-URL in {url!r}")
    segments = []
    for index, part in enumerate(parts):
        if "#" in part:
            raise URLPipelineError(f"fragment in {part!r}")
        text, sep, query = part.partition("?")
        if index == 0:
            match = _ROOT_SCHEME.match(text)
            scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else ""
            body = text[len(scheme) + 1 :] if scheme else text
        else:
            scheme, _, body = text.partition(":")
            scheme = scheme.lower()
            if not _ADAPTER_SCHEME.match(scheme):
                raise URLPipelineError(f"invalid adapter scheme {scheme!r} in {part!r}")
        segments.append(PipelineSegment(scheme, body, query if sep else None, part))
    return tuple(segments)


def _registry() -> dict[str, Any]:
    return {ep.name.lower(): ep for ep in entry_points(group="zarr.url_adapters")}


async def resolve_pipeline(
    url: str, *, mode: str | None = None, storage_options: dict[str, Any] | None = None
) -> AdapterResolution:
    segments = parse_pipeline(url)
    registry = _registry()
    *preceding, last = segments
    if last.scheme not in registry:
        raise URLPipelineError(f"no URL pipeline adapter for scheme {last.scheme!r}")
    adapter = registry[last.scheme].load()
    resolution = await adapter.open_pipeline_segment(last, PipelineContext(tuple(preceding), mode, storage_options))
    if mode == "r" and not resolution.store.read_only:
        raise URLPipelineError("the adapter gave a writable store for mode='r'")
    return resolution  # type: ignore[no-any-return]


def open_url(url: str, *, mode: str = "r", storage_options: dict[str, Any] | None = None) -> Any:
    """zarr.open(url) as a zarr with the PR resolves it (the adapter runs on zarr's I/O loop)."""
    resolution = sync(resolve_pipeline(url, mode=mode, storage_options=storage_options))
    return zarr.open(resolution.store, path=resolution.path or None, mode=mode)


# -- data ------------------------------------------------------------------------------------------


def _v3_array(path: Path, values: np.ndarray) -> None:
    a = zarr.create_array(
        zarr.storage.LocalStore(path), shape=values.shape, chunks=(3,), dtype="f8", dimension_names=["time"]
    )
    a[...] = values


@pytest.fixture
def composite(tmp_path: Path) -> Path:
    """tmp_path/group.json: a composite of two arrays and a group with a subgroup, consolidated."""
    _v3_array(tmp_path / "data" / "t.zarr", TEMPERATURE)
    _v3_array(tmp_path / "data" / "p.zarr", PRECIP)
    g = zarr.open_group(zarr.storage.LocalStore(tmp_path / "data" / "g.zarr"), mode="w", attributes={"kind": "g"})
    g.create_group("my sub", attributes={"deep": True}).create_array(
        "b", shape=(3,), dtype="u1", fill_value=2, dimension_names=["x"]
    )
    members = {"temperature": "data/t.zarr/", "precip": "data/p.zarr/", "stations": "data/g.zarr/"}
    path = tmp_path / "group.json"
    kvmap.compose(members, url=str(path), consolidated=True, attributes={"title": "both"}).save(path)
    return path


# -- kvmap.open_zarr ----------------------------------------------------------------------------------


def test_open_zarr_opens_the_group_or_an_array_read_only(composite: Path) -> None:
    for target in (composite, str(composite), composite.as_uri(), kvmap.Manifest.load(composite)):
        g = kvmap.open_zarr(target)
        assert isinstance(g, zarr.Group)
        assert g.attrs["title"] == "both"
        np.testing.assert_array_equal(g["temperature"][...], TEMPERATURE)
    a = kvmap.open_zarr(composite, path="precip")
    assert isinstance(a, zarr.Array)
    np.testing.assert_array_equal(a[...], PRECIP)
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 1.0


def test_open_zarr_reads_pipelines(tmp_path: Path, composite: Path) -> None:
    with zipfile.ZipFile(tmp_path / "views.zip", "w") as z:
        z.writestr("v.json", json.dumps([{"prefix": "", "path": (tmp_path / "data" / "p.zarr").as_uri() + "/"}]))
    a = kvmap.open_zarr(f"{tmp_path / 'views.zip'}|zip:v.json|kvmap:")
    np.testing.assert_array_equal(a[...], PRECIP)
    sub = kvmap.open_zarr(f"{composite}|kvmap:stations/")
    assert sub.attrs["kind"] == "g"


def test_open_zarr_writes_through_redirects_when_asked(tmp_path: Path, composite: Path) -> None:
    a = kvmap.open_zarr(composite, mode="r+", path="precip")
    a[0] = 9.0
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path / "data" / "p.zarr"))[:1], [9.0])


def test_open_zarr_is_held_to_the_policy_and_names_a_missing_manifest(tmp_path: Path) -> None:
    _v3_array(tmp_path / "elsewhere" / "t.zarr", TEMPERATURE)
    (tmp_path / "views").mkdir()
    outside = (tmp_path / "elsewhere").as_uri() + "/"
    path = tmp_path / "views" / "g.json"
    kvmap.compose({"t": outside + "t.zarr/"}, url=str(path)).save(path)
    with pytest.raises(kvmap.PolicyError, match="not allowed"):
        kvmap.open_zarr(path)["t"]
    np.testing.assert_array_equal(kvmap.open_zarr(path, allow=[outside])["t"][...], TEMPERATURE)
    with pytest.raises(kvmap.TargetError, match="manifest not found"):
        kvmap.open_zarr(tmp_path / "nope.json")


# -- xarray: engine="kvmap" ------------------------------------------------------------------------------


def test_the_xarray_engine_is_registered() -> None:
    points = {ep.name: ep.value for ep in entry_points(group="xarray.backends")}
    assert points["kvmap"] == "kvmap.xarray_backend:KvmapBackendEntrypoint"
    assert isinstance(xr.backends.list_engines()["kvmap"], KvmapBackendEntrypoint)


def test_open_dataset_with_engine_kvmap(tmp_path: Path, composite: Path) -> None:
    ds = xr.open_dataset(composite, engine="kvmap")
    assert ds.attrs == {"title": "both"}
    np.testing.assert_array_equal(ds["temperature"].values, TEMPERATURE)
    lazy = xr.open_dataset(str(composite), engine="kvmap", chunks={})
    assert lazy["precip"].chunks == ((3, 3),)
    np.testing.assert_array_equal(lazy["precip"].values, PRECIP)
    sub = xr.open_dataset(kvmap.Manifest.load(composite), engine="kvmap", group="stations/my sub")
    assert sub.attrs == {"deep": True}
    np.testing.assert_array_equal(sub["b"].values, [2, 2, 2])


def test_open_dataset_takes_kvmaps_options_as_backend_kwargs(tmp_path: Path) -> None:
    _v3_array(tmp_path / "elsewhere" / "t.zarr", TEMPERATURE)
    (tmp_path / "views").mkdir()
    outside = (tmp_path / "elsewhere").as_uri() + "/"
    path = tmp_path / "views" / "g.json"
    kvmap.compose({"t": outside + "t.zarr/"}, url=str(path), consolidated=True, allow=[outside]).save(path)
    with pytest.raises(kvmap.PolicyError):
        xr.open_dataset(path, engine="kvmap").load()
    ds = xr.open_dataset(path, engine="kvmap", backend_kwargs={"allow": [outside]})
    np.testing.assert_array_equal(ds["t"].values, TEMPERATURE)
    store = KVMapStore(path, read_only=True, allow=[outside])
    np.testing.assert_array_equal(xr.open_dataset(store, engine="kvmap")["t"].values, TEMPERATURE)
    with pytest.raises(TypeError, match="a KVMapStore's own"):
        xr.open_dataset(store, engine="kvmap", backend_kwargs={"allow": [outside]})


def test_a_pipeline_opens_without_naming_the_engine(tmp_path: Path, composite: Path) -> None:
    ds = xr.open_dataset(f"{composite}|kvmap:")
    np.testing.assert_array_equal(ds["precip"].values, PRECIP)


def test_open_datatree_with_engine_kvmap(composite: Path) -> None:
    tree = xr.open_datatree(composite, engine="kvmap")
    assert sorted(tree.children) == ["stations"]
    np.testing.assert_array_equal(tree["stations/my sub/b"].values, [2, 2, 2])
    np.testing.assert_array_equal(tree["temperature"].values, TEMPERATURE)


@pytest.mark.parametrize(
    ("target", "claimed"),
    [
        ("s3://b/m.json|kvmap:", True),
        ("m.json|kvmap:group/sub", True),
        ("s3://b/a.zip|zip:m.json|kvmap:", True),
        ("chunks.json|zarr-chunk-manifest:", True),
        ("refs.json|kerchunk:", False),  # kerchunk's own engine may claim its references
        ("s3://b/a.zip|zip:m.json", False),
        ("/data/group.kvmap.json", True),
        ("/data/big.kvmap.parquet", True),
        (Path("/data/group.kvmap.json"), True),
        ("/data/group.json", False),
        ("data.nc", False),
        ("bad|", False),
        ("", False),
        (b"bytes", False),
    ],
)
def test_guess_can_open(target: Any, claimed: bool) -> None:
    assert KvmapBackendEntrypoint().guess_can_open(target) is claimed


def test_guess_can_open_a_manifest_or_a_store() -> None:
    m = kvmap.compose({"t": "s3://b/t/"})
    assert KvmapBackendEntrypoint().guess_can_open(m)
    assert KvmapBackendEntrypoint().guess_can_open(KVMapStore(m))


# -- zarr's URL pipelines: the adapters, through the stand-in resolver -----------------------------------


def test_the_adapters_are_entry_points_named_by_legal_schemes() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="zarr.url_adapters")}
    assert found == {
        "kvmap": "kvmap.zarr_adapter:KvmapAdapter",
        "zarr-chunk-manifest": "kvmap.zarr_adapter:ChunkManifestAdapter",
        "kerchunk": "kvmap.zarr_adapter:KerchunkAdapter",
        "kvstack": "kvmap.zarr_adapter:KvstackAdapter",
    }
    for name in found:
        assert _ADAPTER_SCHEME.match(name), name
        assert _registry()[name].load().scheme == name


def test_a_manifest_pipeline_resolves_to_the_store_and_the_residual_path(composite: Path) -> None:
    for url in (f"{composite}|kvmap:", f"file:{composite}|kvmap:", f"{composite.as_uri()}|KVMAP:"):
        g = open_url(url)
        assert isinstance(g.store, KVMapStore)
        assert g.store.read_only
        assert g.attrs["title"] == "both"
    a = open_url(f"file:{composite}|kvmap:temperature")
    np.testing.assert_array_equal(a[...], TEMPERATURE)
    resolution = sync(resolve_pipeline(f"{composite}|kvmap:/stations/my%20sub/", mode="r"))
    assert (resolution.path, resolution.zarr_format) == ("stations/my sub", None)
    sub = open_url(f"{composite}|kvmap:stations/my%20sub")
    assert sub.attrs["deep"] is True


def test_preceding_segments_kvmap_reads(tmp_path: Path) -> None:
    """zip: before kvmap:, and the other manifest adapters: a chunk manifest and kerchunk references."""
    t = tmp_path / "data" / "t.zarr"
    _v3_array(t, TEMPERATURE)
    files = {key: t / key for key in ("zarr.json", "c/0", "c/1")}
    chunks = {k: {"path": f.as_uri(), "offset": 0, "length": f.stat().st_size} for k, f in files.items()}
    (tmp_path / "chunks.json").write_text(json.dumps(chunks))
    np.testing.assert_array_equal(open_url(f"{tmp_path / 'chunks.json'}|zarr-chunk-manifest:")[...], TEMPERATURE)

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("in/chunks.json", json.dumps(chunks))
    np.testing.assert_array_equal(
        open_url(f"{tmp_path / 'a.zip'}|zip:in/chunks.json|zarr-chunk-manifest:")[...], TEMPERATURE
    )

    v2 = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "v2.zarr"), shape=(6,), chunks=(3,), dtype="f8", zarr_format=2
    )
    v2[...] = PRECIP
    refs = {".zgroup": json.dumps({"zarr_format": 2}), "p/.zarray": (tmp_path / "v2.zarr" / ".zarray").read_text()}
    refs |= {f"p/{i}": [(tmp_path / "v2.zarr" / str(i)).as_uri()] for i in (0, 1)}
    (tmp_path / "refs.json").write_text(json.dumps({"version": 1, "refs": refs}))
    np.testing.assert_array_equal(open_url(f"{tmp_path / 'refs.json'}|kerchunk:")["p"][...], PRECIP)


def test_mode_and_storage_options_reach_the_store(tmp_path: Path, composite: Path) -> None:
    writable = sync(resolve_pipeline(f"{composite}|kvmap:", mode="a"))
    assert not writable.store.read_only
    zarr.open_array(writable.store, path="precip", mode="r+")[5] = 7.0
    assert open_url(f"{composite}|kvmap:precip")[5] == 7.0
    read_only = sync(resolve_pipeline(f"{composite}|kvmap:", mode="a", storage_options={"read_only": True}))
    assert read_only.store.read_only

    _v3_array(tmp_path / "elsewhere" / "t.zarr", TEMPERATURE)
    (tmp_path / "views").mkdir()
    outside = (tmp_path / "elsewhere").as_uri() + "/"
    path = tmp_path / "views" / "g.json"
    kvmap.compose({"t": outside + "t.zarr/"}, url=str(path)).save(path)
    with pytest.raises(kvmap.PolicyError):
        open_url(f"{path}|kvmap:t")
    np.testing.assert_array_equal(open_url(f"{path}|kvmap:t", storage_options={"allow": [outside]})[...], TEMPERATURE)


@pytest.mark.parametrize(
    ("url", "options", "error", "match"),
    [
        ("{m}|kvmap:", {"anon": True}, kvmap.PipelineError, r"unknown storage_options \['anon'\]"),
        ("{m}|gzip:|kvmap:", None, kvmap.PipelineError, "unknown URL adapter 'gzip'"),
        ("kvmap:", None, kvmap.PipelineError, "reads the manifest to its left, and there is none"),
        ("{m}|kvmap:?version=2", None, kvmap.PipelineError, "takes no query"),
        ("{m}|zip:x?y=1|kvmap:", None, kvmap.PipelineError, "without a query"),
        ("{d}/missing.json|kvmap:", None, kvmap.TargetError, "manifest not found"),
    ],
)
def test_what_the_adapter_refuses(
    composite: Path, url: str, options: dict[str, Any] | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sync(resolve_pipeline(url.format(m=composite, d=composite.parent), mode="r", storage_options=options))
