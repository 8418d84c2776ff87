"""The obviously-correct model of kvmap resolution: scan the entries from last to first.

It shares nothing with kvmap's compiled map but the definition of the default
``strip_prefix`` of a range (``kvmap.keyrange``, which has its own tests) and
RFC 3986 relative resolution (``kvmap.url.join``, tested against the RFC's
examples). It works on plain JSON entries, so it also checks the parser.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote

from kvmap.keyrange import range_common_prefix_length
from kvmap.url import join


def covers(entry: dict[str, Any], key: str) -> bool:
    if "key" in entry:
        return key == entry["key"]
    if "prefix" in entry:
        return key.startswith(entry["prefix"])
    return entry.get("min", "") <= key and ("max" not in entry or key < entry["max"])


def default_strip(entry: dict[str, Any]) -> int:
    if "prefix" in entry:
        return len(entry["prefix"])
    return range_common_prefix_length(entry.get("min", ""), entry.get("max"))


def absolute(path: str, base: str | None) -> str:
    root, sep, rest = path.partition("|")
    local = base is None or base.lower().startswith("file:")
    if local and re.match(r"[A-Za-z]:[\\/]", root):  # spec 5.1: a drive path in a local document
        return "file:///" + root.replace("\\", "/") + sep + rest
    if re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:", root):  # spec 5.1: RFC 3986 scheme
        return path
    if base is None:  # spec 5.1: only an absolute OS path is allowed in a document without a URL
        assert root.startswith("/"), root
        assert not root.startswith("//"), root
        return join("file:///", root) + sep + rest
    return join(base, root) + sep + rest


def expected(entries: list[dict[str, Any]], key: str, base: str | None = None) -> tuple[Any, ...] | None:
    """``(entry, url, offset, length, data)`` as the spec says, or ``None`` if absent."""
    for i in reversed(range(len(entries))):
        e = entries[i]
        if not covers(e, key):
            continue
        if "data" in e:
            return (i, None, None, None, base64.b64decode(e["data"]))
        if "json" in e:
            return (i, None, None, None, json.loads(json.dumps(e["json"])))
        if e["path"] is None:
            return None
        if "key" in e:
            return (i, absolute(e["path"], base), e.get("offset"), e.get("length"), None)
        rest = key[e.get("strip_prefix", default_strip(e)) :]
        return (i, absolute(e["path"], base) + quote(rest, safe="/"), None, None, None)
    return None


def covering(entries: list[dict[str, Any]], key: str) -> list[int]:
    """Indices of every entry covering ``key``, winner (highest) first."""
    return [i for i in reversed(range(len(entries))) if covers(entries[i], key)]
