"""URL pipelines (zarr ZEP 8): a root URL, then ``|``-separated adapters.

``s3://bucket/a.zip|zip:data/m.json|kvmap:c/0`` reads the object
``s3://bucket/a.zip``, takes its zip member ``data/m.json``, reads that as a
kvmap manifest and looks up the key ``c/0`` in it.

* The root is a URL, kept as written (its own percent-escapes belong to it).
* Each adapter is ``name:path``. The ``:`` may be left out when the path is
  empty. The path is percent-decoded (UTF-8); a literal ``|`` in it is ``%7C``.
* Adapter names follow RFC 3986's scheme syntax, plus ``_`` so that
  ``zarr_chunk_manifest`` parses as the original proposal writes it. Which names kvmap
  reads, and as what, is :mod:`kvmap.formats`' registry (plus ``zip``).

>>> p = Pipeline.parse("s3://b/m.json|kvmap:c/0%7C1")
>>> p.root, p.adapters[0].name, p.adapters[0].path
('s3://b/m.json', 'kvmap', 'c/0|1')
>>> p.format()
's3://b/m.json|kvmap:c/0%7C1'
>>> Pipeline.parse("file:///x.zip|zip").adapters[0].path
''
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from kvmap.errors import PipelineError
from kvmap.url import PIPELINE_SEPARATOR, encode_remainder

__all__ = ["Adapter", "Pipeline"]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]*\Z")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class Adapter:
    """One ``name:path`` step of a pipeline; ``path`` is decoded text."""

    name: str
    path: str = ""

    def format(self) -> str:
        """The adapter as URL text: ``name:`` and the path percent-encoded."""
        return f"{self.name}:{encode_remainder(self.path)}"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A parsed URL pipeline: ``root`` and the ``adapters`` applied after it, in order."""

    root: str
    adapters: tuple[Adapter, ...] = ()

    @classmethod
    def parse(cls, url: str) -> Pipeline:
        """Parse pipeline text. Raises :class:`~kvmap.PipelineError` for an empty root or
        step, an invalid adapter name, or a malformed or non-UTF-8 percent-escape."""
        if PIPELINE_SEPARATOR not in url:
            if not url:
                raise PipelineError("empty URL")
            return cls(url)
        root, *steps = url.split(PIPELINE_SEPARATOR)
        if not root:
            raise PipelineError(f"URL pipeline {url!r} has an empty root")
        return cls(root, tuple(_parse_adapter(step, url) for step in steps))

    def format(self) -> str:
        """The pipeline as text; ``Pipeline.parse(p.format()) == p``."""
        if not self.adapters:
            return self.root
        return PIPELINE_SEPARATOR.join([self.root, *(a.format() for a in self.adapters)])

    def __str__(self) -> str:
        return self.format()


def _parse_adapter(step: str, url: str) -> Adapter:
    name, _, path = step.partition(":")
    if not _NAME.match(name):
        raise PipelineError(f"URL pipeline {url!r}: {step!r} is not an adapter (expected name:path)")
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            raise PipelineError(f"URL pipeline {url!r}: malformed percent-escape in {step!r}")
        try:
            path = unquote(path, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise PipelineError(f"URL pipeline {url!r}: {step!r} does not decode as UTF-8") from None
    return Adapter(name, path)
