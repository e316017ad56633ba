"""Backends behind one small interface (base.VectorStore), opened from a --store string."""
from __future__ import annotations

from . import point_ids
from .base import CollectionInfo, SearchParams, SearchResult, VectorStore


def open_store(spec: str, api_key: str | None = None) -> VectorStore:
    """`edge:DIR` (Qdrant Edge), `http(s)://host:port` (a server), `:memory:` or a directory (local mode)."""
    if spec.startswith("edge:"):
        from .edge_store import EdgeStore

        return EdgeStore(spec[len("edge:"):] or ".")
    from .qdrant_client_store import QdrantClientStore

    return QdrantClientStore(spec, api_key=api_key)


__all__ = ["CollectionInfo", "SearchParams", "SearchResult", "VectorStore", "open_store", "point_ids"]
