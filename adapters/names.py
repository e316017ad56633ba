"""Collection names every backend accepts: the checks that keep a name from escaping its place.

Refused: the empty name, `.` and `..` (on Edge a collection is a folder: `..` would put its shard
outside the store), any control character (a trailing newline included: it would make a second,
invisible name for the same folder on some tools and is never what a user meant), `/` and `\\`,
names longer than MAX_NAME_BYTES in UTF-8 (a file name holds at most 255 bytes, not characters, and
backends add suffixes to it), and names ending in the reserved SIDECAR_SUFFIX, which the qdrant-client
backend uses for the collection that holds a collection's model blobs.
"""
from __future__ import annotations

import unicodedata

from amips_plugin.core.errors import InputError

SIDECAR_SUFFIX = "__amips"
MAX_NAME_BYTES = 200


def check_collection_name(name: object) -> str:
    """`name` if it is a usable collection name; InputError (one line) saying why not otherwise."""
    if not isinstance(name, str) or not name:
        raise InputError(f"invalid collection name {name!r}: it must be a non-empty string")
    problem = None
    size = len(name.encode("utf-8", "surrogatepass"))
    if name in (".", ".."):
        problem = "'.' and '..' name folders, not collections"
    elif size > MAX_NAME_BYTES:
        problem = f"{size} bytes in UTF-8, over the {MAX_NAME_BYTES} a name may take (a file name holds 255)"
    elif any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        problem = "it contains a control character (a newline, a tab, …)"
    elif "/" in name or "\\" in name:
        problem = "it contains a path separator"
    elif name.endswith(SIDECAR_SUFFIX):
        problem = f"the suffix {SIDECAR_SUFFIX!r} is reserved for amips's own sidecar collections"
    if problem:
        raise InputError(f"invalid collection name {name[:80]!r}: {problem}")
    return name
