"""Secrets out of messages: URL credentials (scheme://user:pass@host) and API keys never reach an error line."""
from __future__ import annotations

import re
from typing import Iterable

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]*@")
_KEY_VALUE = re.compile(r"(?i)\b(api[-_]?key\b['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+")
MASK = "***"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL user-info replaced by ***@, `api-key: …`/`api_key=…` values masked, and every
    given secret (e.g. the --api-key value) replaced wherever it appears."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{MASK}", text)
