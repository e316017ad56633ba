"""The side indexes kept alongside a collection, behind one protocol and one registry.

A side index is built from the collection's keys (`collections.build_and_publish`, like the model),
kept in its own manifest slot, marked stale by appends, and at query time proposes candidate point ids
per probe vector, which the query path (`rewriting`) rescores exactly with the query:

    pq     the compressed key store: the top candidates by asymmetric PQ score (compression/pq_store.py)
    route  the routed lists: the keys of the best-ranked fine lists (router_store.py)

Everything that names a side index — search's `--candidates-from`, `drop-index`, `status`, the client's
`build_index` — reads this registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from amips_plugin.adapters.base import VectorStore
from amips_plugin.compression import pq_store

from . import router_store


class CandidateIndex(Protocol):
    """A loaded side index: the point ids it covers, their dimension, and candidates per probe row."""

    @property
    def ids(self) -> np.ndarray: ...

    @property
    def dim(self) -> int: ...

    def candidates(self, probes: np.ndarray, limit: int, /) -> list[np.ndarray]:
        """Candidate point ids for each row of `probes` (`limit`: keys for pq, fine lists for route)."""
        ...


@dataclass(frozen=True)
class SideIndexKind:
    name: str  # the candidate source and `drop-index` argument
    slot: str  # its manifest slot
    description: str  # how searches and `status` name it
    build_command: str  # the CLI command that (re)builds it
    build: Callable[..., dict[str, Any]]  # (store, collection, **options) -> the published manifest
    load: Callable[[VectorStore, str], tuple[CandidateIndex, dict[str, Any]] | None]


SIDE_INDEXES: dict[str, SideIndexKind] = {kind.name: kind for kind in (
    SideIndexKind("pq", pq_store.SLOT, pq_store.DESCRIPTION, pq_store.BUILD_COMMAND, pq_store.build, pq_store.load),
    SideIndexKind("route", router_store.SLOT, router_store.DESCRIPTION, router_store.BUILD_COMMAND,
                  router_store.build, router_store.load),
)}
BY_SLOT: dict[str, SideIndexKind] = {kind.slot: kind for kind in SIDE_INDEXES.values()}
