"""Backends behind one small interface (base.VectorStore), opened from a --store string."""
from __future__ import annotations

from pathlib import Path

from amips_plugin.core.errors import InputError

from .base import CollectionInfo, SearchParams, SearchResult, VectorStore


def open_store(spec: str, api_key: str | None = None) -> VectorStore:
    """`edge:DIR` (Qdrant Edge), `http(s)://host:port` (a server), `:memory:` or a directory (local mode)."""
    if spec.startswith("edge:"):
        from .edge_store import EdgeStore

        return EdgeStore(spec[len("edge:"):] or ".")
    if not spec.startswith(("http://", "https://")) and spec != ":memory:" and _holds_edge_shards(Path(spec)):
        raise InputError(f"{spec!r} holds Qdrant Edge collections: open it as 'edge:{spec}'")
    from .qdrant_client_store import QdrantClientStore

    return QdrantClientStore(spec, api_key=api_key)


__all__ = ["CollectionInfo", "SearchParams", "SearchResult", "VectorStore", "open_store"]


def _holds_edge_shards(folder: Path) -> bool:
    return folder.is_dir() and any((p / "shard" / "edge_config.json").is_file() for p in folder.iterdir())
