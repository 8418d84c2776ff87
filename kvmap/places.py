"""Places the way people write them: a path or a URL, turned into the URL kvmap reads.

Everywhere a manifest or a target is named — the Python API and every CLI command — it may
be written as a relative or absolute path, ``~/...``, a :class:`pathlib.Path`, a
``file://`` URL, any other URL, or a URL pipeline whose root is any of these. A path
becomes the ``file://`` URL of its real path (made absolute against the working directory
at the time of the call, symbolic links resolved as far as it exists, spec 11.5;
percent-encoded: a path is literal text, so ``100%.json`` is the file of that name);
URLs are kept as written. A trailing ``/`` (a directory) is kept. In a
string, ``|`` separates a pipeline's adapters; a :class:`pathlib.Path` is never a pipeline.

>>> place_url("s3://bucket/m.json|kvmap:")
's3://bucket/m.json|kvmap:'
>>> place_url("/data/my refs.json|kerchunk:")
'file:///data/my%20refs.json|kerchunk:'
>>> place_url(Path("/data/a|b.json"))
'file:///data/a%7Cb.json'
"""

from __future__ import annotations

import os
from pathlib import Path

from kvmap.url import PIPELINE_SEPARATOR, is_absolute, is_local_path

__all__ = ["path_url", "place_url", "working_directory_url"]


def place_url(place: str | os.PathLike[str]) -> str:
    """The URL or URL pipeline that ``place`` names (see the module).

    Raises ``ValueError`` for an empty string and ``TypeError`` for something that is
    neither a string nor a path.
    """
    if isinstance(place, os.PathLike):
        return path_url(os.fspath(place))
    if not isinstance(place, str):
        raise TypeError(f"a place is a path or a URL, not {type(place).__name__}")
    if not place:
        raise ValueError("an empty string names no place")
    root, sep, rest = place.partition(PIPELINE_SEPARATOR)
    if is_absolute(root) and not is_local_path(root):
        return place
    return path_url(root) + sep + rest


def path_url(path: str) -> str:
    """The ``file://`` URL of the local ``path`` (``~`` expanded, its real path: absolute, links
    resolved; percent-encoded), keeping a trailing ``/``."""
    if not path:
        raise ValueError("an empty string names no place")
    absolute = os.path.realpath(os.path.expanduser(path))
    url = Path(absolute).as_uri()
    directory = path.endswith(("/", os.sep)) or path in (".", "..", "~")
    return url + "/" if directory and not url.endswith("/") else url


def working_directory_url() -> str:
    """The working directory as a ``file://`` URL ending in ``/``: the base of a manifest built
    without a URL."""
    url = Path.cwd().as_uri()
    return url if url.endswith("/") else url + "/"
