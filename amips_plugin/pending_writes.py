"""An append that is interrupted can be run again without writing anything twice (issue 22.7).

Before `ingest` writes its first point it records, with the collection, what it is about to write: a
digest of its input (vectors, given ids, payloads) and the first id it numbered the points from. The
record is removed once every point is written. Run again on the same input after a kill, the append
finds the record and writes the same points under the same ids (an idempotent overwrite), instead of
numbering them anew after the ones that landed and storing those twice. A different input finds a
record that is not its own: it says which ids the interrupted append left, and goes on with fresh ids
(nothing is lost or duplicated by that).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from amips_plugin.core.point_ids import id_bytes

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PendingWrite:
    sha256: str  # of the input: vectors, given ids, payloads
    count: int  # points in the input
    first_id: int | None  # the first of the ids ingest numbered them with; None when the input gave ids

    def ids(self, given: np.ndarray | None) -> np.ndarray:
        """The ids the interrupted append wrote its points under: those its input gave, or the ones it numbered."""
        if given is not None:
            return given
        assert self.first_id is not None  # the same input gave no ids, so ingest numbered them
        return np.arange(self.first_id, self.first_id + self.count, dtype=np.int64)

    def describe(self) -> str:
        span = (f"ids {self.first_id}..{self.first_id + self.count - 1}" if self.first_id is not None
                else "the ids its input gave")
        return f"an append of {self.count:,} points ({span})"

    @classmethod
    def parse(cls, raw: Any) -> "PendingWrite | None":
        """A stored record, or None for anything that is not one (stored state is untrusted)."""
        if not isinstance(raw, dict):
            return None
        sha256, count, first_id = raw.get("sha256"), raw.get("count"), raw.get("first_id")
        if (not isinstance(sha256, str) or not _HEX64.fullmatch(sha256) or type(count) is not int
                or not 1 <= count < 2**62
                or not (first_id is None or (type(first_id) is int and 0 <= first_id < 2**63))):
            return None
        return cls(sha256, count, first_id)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def input_digest(vectors: np.ndarray, ids: np.ndarray | None,
                 payloads: Sequence[dict[str, Any] | None] | None) -> str:
    """SHA-256 of what an append writes, in order: the float32 vectors, the given ids, the payloads as JSON."""
    digest = hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    digest.update(b"ids" + (id_bytes(np.asarray(ids)) if ids is not None else b"-"))
    digest.update(b"payloads" + (json.dumps(list(payloads), sort_keys=True, default=str).encode("utf-8")
                                 if payloads is not None else b"-"))
    return digest.hexdigest()
