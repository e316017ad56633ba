"""Secrets out of messages: URL credentials (scheme://user:pass@host), secret query parameters (?token=…) and
API keys never reach an error line.

A URL's user-info runs to the LAST '@' before the next whitespace or quote, so that a password holding '@',
'/', '?' or '#' is masked whole (hiding a path that holds '@' too is the price). A password with a space in
it cannot be told from the text around it: whoever knows the URL passes its `userinfo` as a secret.
"""
from __future__ import annotations

import re
from typing import Iterable

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s'\"<>]*@")
_KEY_VALUE = re.compile(r"(?i)\b(api[-_]?key\b['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+")
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:token|api[-_]?key|key|password)=)[^\s'\"&;#]+")
_SCHEME = re.compile(r"(?i)^[a-z][a-z0-9+.\-]*://")
MASK = "***"


def userinfo(url: str) -> str | None:
    """The user-info of the URL `url` (`scheme://USERINFO@host…`): everything between '://' and its last '@',
    spaces included; None when it has none."""
    scheme = _SCHEME.match(url)
    rest = url[scheme.end():] if scheme else ""
    return rest.rpartition("@")[0] or None


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret (e.g. the --api-key value, a store URL's `userinfo`) replaced wherever it
    appears, URL user-info replaced by ***@, and the values of `api-key: …`/`api_key=…` and of the query
    parameters token, api_key, apikey, key and password (any case) masked."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{MASK}", text)
