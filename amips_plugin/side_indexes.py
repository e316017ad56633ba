"""The side indexes kept alongside a collection, behind one protocol and one registry.

A side index is built from the collection's keys (`collection_ops.build_and_publish`, like the model),
kept in its own manifest slot, marked stale by appends, and at query time proposes candidate point ids
per probe vector, which the query path (`rewriting`) rescores exactly with the query:

    pq     the compressed key store: the top candidates by asymmetric PQ score (amips_plugin/pq_store.py;
           built by pq_build.py)
    route  the routed lists: the keys of the best-ranked fine lists (router_store.py; route_build.py)

Everything that names a side index — search's `--candidates-from`, `drop-index`, `status`, the client's
`build_index` — reads this registry. Each entry names its builder as a module, imported only when
something is built: the query path loads side indexes and imports no training or building code.
Adding one takes its slot in core/manifest_schema.py's SLOTS (file, schema, fix command: every store and
error message reads them from there), its module (loader) and builder, and an entry here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from amips_plugin.adapters.base import VectorStore
from amips_plugin import pq_store

from . import router_store
from .core.manifest_schema import BlobManifestSchema


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
    builder: str  # the module whose build(store, collection, **options) publishes it and returns the manifest
    load: Callable[[VectorStore, str], tuple[CandidateIndex, BlobManifestSchema] | None]

    def build(self, store: VectorStore, collection: str, **options: Any) -> dict[str, Any]:
        """Build and publish the index (tune-time: its builder is imported here, not on the query path)."""
        return importlib.import_module(self.builder).build(store, collection, **options)


SIDE_INDEXES: dict[str, SideIndexKind] = {kind.name: kind for kind in (
    SideIndexKind("pq", pq_store.SLOT, pq_store.DESCRIPTION, pq_store.BUILD_COMMAND, "amips_plugin.pq_build",
                  pq_store.load),
    SideIndexKind("route", router_store.SLOT, router_store.DESCRIPTION, router_store.BUILD_COMMAND,
                  "amips_plugin.route_build", router_store.load),
)}
BY_SLOT: dict[str, SideIndexKind] = {kind.slot: kind for kind in SIDE_INDEXES.values()}
