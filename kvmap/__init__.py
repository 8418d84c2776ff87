"""kvmap: map keys onto URLs — exact keys, prefixes and key ranges, later entries winning.

>>> import kvmap
>>> cm = kvmap.compile([{"prefix": "temperature/", "path": "s3://a/t.zarr/"},
...                     {"key": "zarr.json", "json": {"zarr_format": 3, "node_type": "group"}}])
>>> cm.resolve("temperature/c/0").url
's3://a/t.zarr/c/0'
>>> cm.resolve("zarr.json").data
b'{"zarr_format":3,"node_type":"group"}'
>>> cm.resolve("precip/c/0") is None
True
"""

from typing import TYPE_CHECKING

from kvmap.chain import Hop, Location
from kvmap.check import CheckReport, check
from kvmap.compiled import CompiledMap, Explanation, Piece, Resolution, compile
from kvmap.compose import compose
from kvmap.concat import ConcatError, concatenate, concatenate_datasets
from kvmap.convert import Converted, convert
from kvmap.editable import EditableMap
from kvmap.entries import Entry, Pins
from kvmap.errors import (
    ChainError,
    ConvertError,
    DanglingReferenceError,
    InvalidKeyError,
    KvmapError,
    ManifestError,
    MissingDependencyError,
    ObjectChangedError,
    OverlayBaseChangedError,
    OverlayConflictError,
    OverlayCorruptError,
    OverlayError,
    OverlayLocationError,
    PipelineError,
    PolicyError,
    ResolveError,
    SaveError,
    TargetError,
    WindowError,
    WriteError,
)
from kvmap.keymap import KeyMap
from kvmap.keyrange import KeyRange
from kvmap.manifest import Manifest
from kvmap.opening import open_zarr
from kvmap.overlay import collect_garbage, squash
from kvmap.pipeline import Adapter, Pipeline
from kvmap.policy import Policy
from kvmap.reader import Explained, Reader
from kvmap.roots import memory_store

__all__ = [
    "Adapter",
    "ChainError",
    "CheckReport",
    "CompiledMap",
    "ConcatError",
    "ConvertError",
    "Converted",
    "DanglingReferenceError",
    "EditableMap",
    "Entry",
    "Explained",
    "Explanation",
    "Hop",
    "InvalidKeyError",
    "KVMapStore",
    "KeyMap",
    "KeyRange",
    "KvmapError",
    "Location",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "ObjectChangedError",
    "OverlayBaseChangedError",
    "OverlayConflictError",
    "OverlayCorruptError",
    "OverlayError",
    "OverlayLocationError",
    "Piece",
    "Pins",
    "Pipeline",
    "PipelineError",
    "Policy",
    "PolicyError",
    "Reader",
    "Resolution",
    "ResolveError",
    "SaveError",
    "TargetError",
    "WindowError",
    "WriteError",
    "check",
    "collect_garbage",
    "compile",
    "compose",
    "concatenate",
    "concatenate_datasets",
    "convert",
    "memory_store",
    "open_zarr",
    "squash",
]

__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers only: at run time the store is imported on first use
    from kvmap.store import KVMapStore


def __getattr__(name: str) -> object:
    # KVMapStore imports zarr (a few hundred ms): only code that uses the store pays for it.
    if name == "KVMapStore":
        from kvmap.store import KVMapStore

        return KVMapStore
    raise AttributeError(f"module 'kvmap' has no attribute {name!r}")
