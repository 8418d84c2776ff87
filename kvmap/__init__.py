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

from kvmap.compiled import CompiledMap, Explanation, Piece, Resolution, compile
from kvmap.entries import Entry
from kvmap.errors import InvalidKeyError, KvmapError, ManifestError
from kvmap.keyrange import KeyRange
from kvmap.manifest import Manifest

__all__ = [
    "CompiledMap",
    "Entry",
    "Explanation",
    "InvalidKeyError",
    "KeyRange",
    "KvmapError",
    "Manifest",
    "ManifestError",
    "Piece",
    "Resolution",
    "compile",
]

__version__ = "0.1.0"
