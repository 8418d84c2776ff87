"""Python values built from fuzz bytes through a ``FuzzedDataProvider`` (atheris' or ``fuzz._fdp``'s).

Each builder takes the provider first. The values lean towards the edges kvmap has
rules about: lone surrogates, U+10FFFF and NUL in text, integers at and past
``2**53``, ``2**63`` and ``2**64``, huge integers, NaN and infinities, and JSON nested
deeper than serialisers like.
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["BOUNDARY_INTS", "EDGE_TEXTS", "integer", "json_value", "text", "url"]

#: Pieces that keys, prefixes and URLs are glued from: short, and full of meaning somewhere.
EDGE_TEXTS = [
    "",
    "a",
    "b",
    "/",
    "c/",
    "0",
    "1",
    ".",
    "..",
    "%",
    "%2e",
    "%2E%2E",
    "%2F",
    "%7C",
    "%00",
    "%ff",
    "|",
    "zip:",
    "kvmap:",
    ":",
    "#",
    "?",
    " ",
    "\\",
    "\x00",
    "\x7f",
    "é",
    "e\u0301",
    "\ud7ff",
    "\ue000",
    "\uffff",
    "\U00010000",
    "\U0010ffff",
    "\ud800",
    "\udfff",
    "\n",
    "~",
    "_",
]

BOUNDARY_INTS = [
    0,
    1,
    2,
    7,
    -1,
    2**31 - 1,
    2**31,
    2**32,
    2**53 - 1,
    2**53,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**30,
    -(10**30),
]

URL_ROOTS = [
    "s3://bucket/",
    "s3://bucket/dir/",
    "memory://m/",
    "file:///data/",
    "https://h/p/",
    "gs://g/",
    "../",
    "./",
    "/",
    "//other/",
    "sub/",
    "",
    "a.zip|zip:",
    "m.json|kvmap:",
    "x:",
]


def text(fdp: Any, *, max_pieces: int = 6) -> str:
    """A short string: glued edge pieces, or raw Unicode (lone surrogates included)."""
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return str(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8)))
    if kind == 1:
        return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 8)))
    if kind == 2:  # a run: long keys, many slashes, deep prefixes
        return str(fdp.PickValueInList(EDGE_TEXTS)) * fdp.ConsumeIntInRange(0, 300)
    return "".join(fdp.PickValueInList(EDGE_TEXTS) for _ in range(fdp.ConsumeIntInRange(0, max_pieces)))


def scalar_text(fdp: Any) -> str:
    """:func:`text` without lone surrogates (a valid key)."""
    return text(fdp).encode("utf-8", "replace").decode("utf-8")


def integer(fdp: Any) -> int:
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind in (0, 4):
        return int(fdp.ConsumeIntInRange(0, 12))
    if kind in (1, 5):
        return int(fdp.PickValueInList(BOUNDARY_INTS)) + fdp.ConsumeIntInRange(-1, 1)
    if kind == 2:
        return int(fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 40)))  # up to 320 bits
    if kind == 3:
        return int(fdp.ConsumeIntInRange(0, 2**53 + 2))
    # Enormous: past the 4,300 digits Python turns into text (str() of it raises ValueError).
    return 1 << fdp.ConsumeIntInRange(14_000, 20_000)


def url(fdp: Any) -> str:
    return str(fdp.PickValueInList(URL_ROOTS)) + scalar_text(fdp)


def b64(fdp: Any) -> str:
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
    encoded = base64.b64encode(raw).decode("ascii")
    if fdp.ConsumeIntInRange(0, 7) == 0:  # damaged: no padding, a stray character, whitespace
        cut = fdp.ConsumeIntInRange(0, len(encoded))
        encoded = encoded[:cut] + str(fdp.PickValueInList(["", "=", "*", " ", "\n", "é", "A"])) + encoded[cut + 1 :]
    return encoded


def json_value(fdp: Any, depth: int = 0) -> Any:
    """Any JSON value as Python objects, and some that JSON text cannot hold
    (NaN, infinities, integers beyond 64 bits, lone surrogates, non-string member names)."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return integer(fdp) * (-1 if fdp.ConsumeBool() else 1)
    if kind == 3:
        return float(fdp.ConsumeFloat())
    if kind in (4, 5):
        return text(fdp)
    if kind in (6, 7):
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 8:
        out: dict[Any, Any] = {}
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            name: Any = text(fdp) if fdp.ConsumeIntInRange(0, 7) else integer(fdp)
            out[name] = json_value(fdp, depth + 1)
        return out
    # Deep: the same value wrapped in arrays or objects, around the depth serialisers refuse.
    inner = json_value(fdp, depth + 1)
    levels = fdp.ConsumeIntInRange(0, 300) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(240, 270)
    wrap_in_object = fdp.ConsumeBool()
    for _ in range(levels):
        inner = {"k": inner} if wrap_in_object else [inner]
    return inner
