"""The query path: rewrite queries to predicted keys before the vector-store lookup (DESIGN.md §4).

    off      plain search with x
    replace  prefetch L candidates with ŷ, rescore them by <x, ·>, return the top k; queries the
             model's confidence gate is unsure about get plain search instead
    hybrid   prefetch L candidates with ŷ and L with x, rescore the union by <x, ·> (default):
             never worse than plain search with the same candidate limit. Every query is
             rewritten: the x prefetch already guards against a poor ŷ, and measured on
             squad-train, gating here cost recall (bench/gate.py)
    auto     the collection's tuned serving policy (`amips tune`; amips_plugin/serving_policy.py):
             plain search at its hnsw_ef, or a cheap first pass with a second one for the queries its
             certificate flags; a missing or stale policy means plain search with the caller's knobs

Candidates come from the engine (one store call per batch: Qdrant's Query API, prefetch + outer
query) or from an index kept alongside the collection, whose candidates' stored vectors are then
retrieved and rescored exactly by <x, ·>: "pq", the compressed key store (the top `candidates` keys
by asymmetric PQ score per probe vector), or "route", the routed lists (the keys of the
`candidates` fine lists the point router ranks first per probe vector). Every query is
answered by plain search when the collection's model is missing, stale, or cannot be loaded;
those cases log a warning and never raise. Bad *queries* (wrong dimension, NaN) are the caller's error and do raise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from adapters.base import SearchParams, SearchResult, VectorStore

from . import model_registry, serving_policy
from .arrays import check_vectors
from .errors import AmipsError, InputError
from .models import MIPSModel

log = logging.getLogger("amips")
MODES = ("off", "replace", "hybrid", "auto")
CANDIDATE_SOURCES = ("engine", "pq", "route")
RESCORE_BATCH = 256  # queries whose side-index candidates are fetched from the store in one call


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

    def model_for(self, collection: str, dim: int,
                  count: int | None = None) -> tuple[MIPSModel | None, dict | None, str | None]:
        """(model, manifest, reason it cannot be used); never raises for model problems.

        `count`, the collection's point count, catches writes made by other clients (which cannot
        mark the model stale) whenever they changed how many keys there are.
        """
        try:
            manifest = self.store.read_manifest(collection)
            if not manifest:
                return None, None, "no model trained for this collection"
            cached = self._cache.get(collection)
            if cached and cached[0] == manifest.get("sha256"):
                model = cached[1]
            else:
                stored = model_registry.load(self.store, collection)
                model, manifest = (stored.loaded.model, stored.manifest) if stored else (None, None)
        except AmipsError as exc:
            return None, None, f"the model cannot be loaded: {exc}"
        if model is None:
            return None, None, "no model trained for this collection"
        if model_registry.is_stale(manifest):
            return None, manifest, "the model is stale (keys changed since training); run `amips train`"
        trained_on = (manifest.get("fingerprint") or {}).get("count")
        if count is not None and trained_on != count:
            return None, manifest, (f"the model is stale (trained on {trained_on} keys, the collection has "
                                    f"{count}); run `amips train`")
        if model.config.dim != dim:
            return None, manifest, f"the model expects dimension {model.config.dim}, the collection has {dim}"
        self._cache[collection] = (manifest["sha256"], model)
        return model, manifest, None

    def search(self, collection: str, queries: np.ndarray, limit: int, mode: str = "hybrid",
               candidates: int | None = None, params: SearchParams = SearchParams(),
               candidate_source: str = "engine") -> tuple[SearchResult, SearchReport]:
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {MODES}")
        if candidate_source not in CANDIDATE_SOURCES:
            raise InputError(f"unknown candidate source {candidate_source!r}; expected one of {CANDIDATE_SOURCES}")
        if limit < 1:
            raise InputError(f"limit must be ≥ 1, got {limit}")
        info = self.store.info(collection)
        queries = check_vectors(np.asarray(queries), "queries", dim=info.dim)
        report = SearchReport(mode=mode)
        if mode == "auto":
            if candidate_source != "engine":
                raise InputError("--mode auto searches the engine; it cannot take --candidates-from")
            return self._auto(collection, queries, limit, params, info.dim, info.count)
        L = candidates or default_candidates(limit)
        side_index = self._side_index(collection, candidate_source, report) if candidate_source != "engine" else None

        predicted, confident = queries, np.zeros(len(queries), dtype=bool)
        if mode != "off":
            model, manifest, reason = self.model_for(collection, info.dim, info.count)
            report.model_version = (manifest or {}).get("version")
            if model is None:
                log.warning("amips: plain search for %r: %s", collection, reason)
                report.fallback_reason = reason
            else:
                with torch.no_grad():
                    keys_t, confident_t = model.predict_with_confidence(torch.from_numpy(queries))
                predicted = keys_t.numpy()
                confident = confident_t.numpy() if mode == "replace" else np.ones(len(queries), dtype=bool)
        report.rewritten, report.plain = int(confident.sum()), int((~confident).sum())

        result = SearchResult.empty(len(queries), limit)
        for rows, probes in self._probe_groups(mode, queries, predicted, confident):
            if side_index is not None:
                part = self._rescored_candidates(collection, side_index, queries[rows], probes, L, limit)
            else:
                part = self._engine_candidates(collection, queries[rows], probes, L, limit, params)
            result.ids[rows], result.scores[rows] = part.ids, part.scores
        return result, report

    def _auto(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams, dim: int,
              count: int) -> tuple[SearchResult, SearchReport]:
        """The stored serving policy, or plain search (with the reason) when it is missing or stale."""
        report = SearchReport(mode="auto", plain=len(queries))
        policy, model, reason = serving_policy.stored_policy(self.store, collection, dim, count, self.model_for)
        if policy is None:
            log.warning("amips: plain search for %r: %s", collection, reason)
            report.fallback_reason = reason
            return self.store.search(collection, queries, limit, params), report
        result, escalated = serving_policy.serve(self.store, collection, queries, limit, policy, model, params)
        report.notes.append(f"{policy.describe()}; {int(escalated.sum())} of {len(queries)} queries escalated")
        return result, report

    @staticmethod
    def _probe_groups(mode: str, queries: np.ndarray, predicted: np.ndarray,
                      confident: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray] | None]]:
        """Rows that are rewritten (probed with ŷ, and x in hybrid mode) and rows searched plainly (None)."""
        groups = []
        if confident.any():
            rows = np.flatnonzero(confident)
            groups.append((rows, [predicted[rows]] + ([queries[rows]] if mode == "hybrid" else [])))
        if not confident.all():
            groups.append((np.flatnonzero(~confident), None))
        return groups

    def _engine_candidates(self, collection: str, queries: np.ndarray, probes: list[np.ndarray] | None,
                           candidates: int, limit: int, params: SearchParams) -> SearchResult:
        if probes is None:
            return self.store.search(collection, queries, limit, params)
        return self.store.search_prefetched(collection, queries, probes, candidates, limit, params)

    def _rescored_candidates(self, collection: str, side_index, queries: np.ndarray,
                             probes: list[np.ndarray] | None, candidates: int, limit: int) -> SearchResult:
        """Union of the side index's candidates over the probes, rescored exactly by <x, ·> with stored vectors."""
        result = SearchResult.empty(len(queries), limit)
        for start in range(0, len(queries), RESCORE_BATCH):  # bounds the vectors fetched at once
            rows = slice(start, start + RESCORE_BATCH)
            pools = [side_index.candidates(p[rows], candidates) for p in (probes or [queries])]
            union = [np.unique(np.concatenate([pool[i] for pool in pools])) for i in range(len(pools[0]))]
            unique_ids = np.unique(np.concatenate(union))
            if not len(unique_ids):
                continue
            vectors = dict(zip(unique_ids.tolist(), self.store.retrieve(collection, unique_ids)))
            for row, ids in enumerate(union, start=start):
                if not len(ids):  # only empty lists were chosen: nothing to return for this query
                    continue
                scores = np.stack([vectors[i] for i in ids.tolist()]) @ queries[row]
                best = np.argsort(-scores)[:limit]
                result.ids[row, :len(best)], result.scores[row, :len(best)] = ids[best], scores[best]
        return result

    def _side_index(self, collection: str, source: str, report: SearchReport):
        """The collection's compressed key store ("pq") or routed lists ("route"), or None (engine
        candidates) with the reason noted."""
        from compression import pq_store  # the compression package builds on this one

        from . import router_store

        module = pq_store if source == "pq" else router_store
        name, command = module.DESCRIPTION, module.BUILD_COMMAND
        try:
            loaded = module.load(self.store, collection)
        except AmipsError as exc:
            loaded, reason = None, f"the {name} cannot be loaded: {exc}"
        else:
            reason = (f"no {name} (run `amips {command}`)" if loaded is None
                      else f"the {name} is stale; run `amips {command}`" if loaded[1].get("stale") else None)
        if reason:
            log.warning("amips: engine candidates for %r: %s", collection, reason)
            report.notes.append(reason)
            return None
        return loaded[0]
