"""The query path: rewrite queries to predicted keys before the vector-store lookup (DESIGN.md §4).

    off      plain search with x
    replace  prefetch L candidates with ŷ, rescore them by <x, ·>, return the top k
    hybrid   prefetch L candidates with ŷ and L with x, rescore the union by <x, ·> (default):
             never worse than plain search with the same candidate limit

One store call per batch in every mode (Qdrant's Query API: prefetch + outer query). Queries the
model is unsure about (its confidence gate) are answered by plain search, as is every query when
the collection's model is missing, stale, or cannot be loaded; those cases log a warning and
never raise. Bad *queries* (wrong dimension, NaN) are the caller's error and do raise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from adapters.base import SearchParams, SearchResult, VectorStore

from . import model_registry
from .arrays import check_vectors
from .errors import AmipsError, InputError
from .models import MIPSModel

log = logging.getLogger("amips")
MODES = ("off", "replace", "hybrid")


@dataclass
class SearchReport:
    """What the query path did: the mode asked for, how many queries were rewritten, why not."""

    mode: str
    rewritten: int = 0
    plain: int = 0
    fallback_reason: str | None = None
    model_version: int | None = None
    notes: list[str] = field(default_factory=list)


def default_candidates(limit: int) -> int:
    return max(limit, 10)


class QueryRewriter:
    """Searches a store, rewriting queries with each collection's stored model (cached by version)."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[str, MIPSModel]] = {}

    def model_for(self, collection: str, dim: int) -> tuple[MIPSModel | None, dict | None, str | None]:
        """(model, manifest, reason it cannot be used); never raises for model problems."""
        try:
            manifest = self.store.read_manifest(collection)
            if not manifest:
                return None, None, "no model trained for this collection"
            if model_registry.is_stale(manifest):
                return None, manifest, "the model is stale (keys changed since training); run `amips train`"
            cached = self._cache.get(collection)
            if cached and cached[0] == manifest.get("sha256"):
                return cached[1], manifest, None
            stored = model_registry.load(self.store, collection)
            model = stored.loaded.model if stored else None
        except AmipsError as exc:
            return None, None, f"the model cannot be loaded: {exc}"
        if model is None:
            return None, None, "no model trained for this collection"
        if model.config.dim != dim:
            return None, manifest, f"the model expects dimension {model.config.dim}, the collection has {dim}"
        self._cache[collection] = (manifest["sha256"], model)
        return model, manifest, None

    def search(self, collection: str, queries: np.ndarray, limit: int, mode: str = "hybrid",
               candidates: int | None = None, params: SearchParams = SearchParams()) -> tuple[SearchResult, SearchReport]:
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {MODES}")
        if limit < 1:
            raise InputError(f"limit must be ≥ 1, got {limit}")
        info = self.store.info(collection)
        queries = check_vectors(np.asarray(queries), "queries", dim=info.dim)
        report = SearchReport(mode=mode)
        if mode == "off":
            report.plain = len(queries)
            return self.store.search(collection, queries, limit, params), report

        model, manifest, reason = self.model_for(collection, info.dim)
        report.model_version = (manifest or {}).get("version")
        if model is None:
            log.warning("amips: plain search for %r: %s", collection, reason)
            report.fallback_reason, report.plain = reason, len(queries)
            return self.store.search(collection, queries, limit, params), report

        with torch.no_grad():
            predicted, confident = model.predict_with_confidence(torch.from_numpy(queries))
        predicted, confident = predicted.numpy(), confident.numpy()
        result = SearchResult(np.full((len(queries), limit), -1, np.int64), np.full((len(queries), limit), -np.inf, np.float32))
        L = candidates or default_candidates(limit)
        if confident.any():
            rows = np.flatnonzero(confident)
            prefetch = [predicted[rows]] + ([queries[rows]] if mode == "hybrid" else [])
            part = self.store.search_prefetched(collection, queries[rows], prefetch, L, limit, params)
            result.ids[rows], result.scores[rows] = part.ids, part.scores
        if not confident.all():
            rows = np.flatnonzero(~confident)
            part = self.store.search(collection, queries[rows], limit, params)
            result.ids[rows], result.scores[rows] = part.ids, part.scores
        report.rewritten, report.plain = int(confident.sum()), int((~confident).sum())
        return result, report
