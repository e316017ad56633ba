"""The query path: rewrite queries to predicted keys before the vector-store lookup (docs/design.md §4).

    off      plain search with x
    replace  prefetch L candidates with ŷ, rescore them by <x, ·>, return the top k; queries the
             model's confidence gate is unsure about get plain search instead
    hybrid   prefetch L candidates with ŷ and L with x, rescore the union by <x, ·> (default):
             never worse than plain search with the same candidate limit. Every query is
             rewritten: the x prefetch already guards against a poor ŷ, and measured on
             squad-train, gating here cost recall (bench/gate.py)
    auto     the collection's tuned serving policy (`amips tune`; amips_plugin/serving_policy.py):
             plain search at its hnsw_ef, or a cheap first pass with a second one for the queries its
             certificate flags, watched by a shift guard that turns to plain search while queries are
             escalated more often than the policy pays for; a missing or stale policy means plain search
             with the caller's knobs

Candidates come from the engine (one store call per batch: Qdrant's Query API, prefetch + outer
query) or from an index kept alongside the collection, whose candidates' stored vectors are then
retrieved and rescored exactly by <x, ·>: "pq", the compressed key store (the top `candidates` keys
by asymmetric PQ score per probe vector), or "route", the routed lists (the keys of the
`candidates` fine lists the point router ranks first per probe vector). Every query is
answered by plain search when the collection's model is missing, stale, or cannot be loaded;
those cases log a warning and never raise. Bad *queries* (wrong dimension, NaN, a norm float32
cannot square) and knobs out of range (query_bounds) are the caller's error and do raise.

Stored state is untrusted: a manifest that does not validate, a blob that does not load, a rewrite
that is not finite, or a side index naming points the collection no longer has all end in plain
search or engine candidates, with the reason noted. Loads are cached per collection (and side
index) under the manifest's checksum, failures included, so a bad or stale blob costs one read,
not one per query; only store failures (StoreError), which may pass, are retried. Where the store
can tell cheaply that a manifest has not changed (`VectorStore.manifest_token`: Edge stats the file),
a usable model and a usable serving policy are also kept between calls without re-reading and
re-validating their manifests (about 75 µs a manifest, per call, on Edge).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypeVar, cast

import numpy as np

from amips_plugin.core import point_ids
from amips_plugin.adapters.base import SearchParams, SearchResult, VectorStore, WriteStamp

from . import model_registry, serving_policy
from .core.errors import AmipsError, InputError, StoreError
from .core.gc_pause import paused_for
from .core.manifest_schema import BlobManifestSchema, ModelManifestSchema, as_schema
from .freshness import stale_reason
from .query_bounds import check_queries, check_search_inputs
from .side_indexes import SIDE_INDEXES

if TYPE_CHECKING:  # torch is imported only once a collection has a model
    from .models import MIPSModel

log = logging.getLogger("amips")
MODES = ("off", "replace", "hybrid", "auto")
CANDIDATE_SOURCES = ("engine", *SIDE_INDEXES)
RESCORE_BATCH = 256  # queries whose side-index candidates are fetched from the store in one call
_Loaded = TypeVar("_Loaded")
_NOT_READ = "not read"  # a manifest token the kept answer does not depend on (a model-free policy's model)


@dataclass
class SearchReport:
    """What the query path did: the mode asked for, how many queries were rewritten, why not."""

    mode: str
    rewritten: int = 0
    plain: int = 0
    fallback_reason: str | None = None
    model_version: int | None = None
    escalated: int = 0  # mode auto: queries searched a second time
    notes: list[str] = field(default_factory=list)


def default_candidates(limit: int) -> int:
    return max(limit, 10)


def _unusable(manifest: ModelManifestSchema, dim: int, count: int | None, stamp: WriteStamp | None) -> str | None:
    """Why a (schema-valid) model manifest cannot serve, decided before its blob is read; None if it can:
    stale by the one rule of amips_plugin/freshness.py, built for another dimension, or larger than its
    keys warrant (models.sizing: its memory and time per query would grow with it)."""
    why = stale_reason(manifest, stamp, count)
    if why:
        return f"the model is stale ({why}); run `amips train`"
    if manifest.model.dim != dim:
        return f"the model expects dimension {manifest.model.dim}, the collection has {dim}"
    keys = (manifest.fingerprint.count if manifest.fingerprint else None) if count is None else count
    from .models import ModelConfig, oversize_reason  # torch: imported once a collection has a model

    try:
        return oversize_reason(ModelConfig.from_dict(manifest.model.to_dict()), keys) if keys is not None else None
    except ValueError as exc:  # schema-valid numbers that build no model (e.g. smoothmax with 0 points)
        return f"the model's architecture is invalid ({exc}); run `amips train`"


class QueryRewriter:
    """Searches a store, rewriting queries with each collection's stored model.

    Loads are cached per collection and slot as (manifest checksum, loaded object or None, reason):
    a failed load is remembered like a good one, so it is not repeated until the manifest changes."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], tuple[str, object, str | None]] = {}
        self._warned: set[str] = set()
        self._guards: dict[str, tuple[tuple, serving_policy.ShiftGuard]] = {}
        self._usable: dict[tuple[str, str], tuple[tuple, tuple]] = {}  # (collection, slot) -> (tokens, answer)

    def _warn_once(self, message: str) -> None:
        """Log a fallback once per collection and reason, not once per query (the report says it every time)."""
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def _cached_load(self, collection: str, slot: str, manifest: BlobManifestSchema,
                     load: Callable[[], _Loaded]) -> tuple[_Loaded | None, str | None]:
        """(loaded, None) or (None, reason), loading at most once per manifest checksum."""
        key = manifest.sha256
        cached = self._cache.get((collection, slot))
        if cached and cached[0] == key:
            return cast("_Loaded | None", cached[1]), cached[2]  # a slot's entry only ever holds its loader's type
        try:
            loaded, reason = load(), None
        except StoreError as exc:  # the store may recover: not remembered
            return None, str(exc)
        except AmipsError as exc:
            loaded, reason = None, str(exc)
        self._cache[(collection, slot)] = (key, loaded, reason)
        return loaded, reason

    def _kept(self, collection: str, slot: str, tokens: tuple, answer: Callable[[], tuple]) -> tuple:
        """`answer()`, or the usable answer kept from an earlier call while the manifest tokens (and the
        count and dimension they come with) are the same. Only answers naming no reason to fall back are
        kept: a failure is re-checked on the next call."""
        kept = self._usable.get((collection, slot))
        if kept is not None and kept[0] == tokens:
            return kept[1]
        found = answer()
        if found[-1] is None and None not in tokens:
            self._usable[(collection, slot)] = (tokens, found)
        return found

    def _token(self, collection: str, slot: str = "model") -> object:
        try:
            return self.store.manifest_token(collection, slot)
        except AmipsError:
            return None

    def model_for(self, collection: str, dim: int,
                  count: int | None = None) -> tuple[MIPSModel | None, ModelManifestSchema | None, str | None]:
        """(model, its validated manifest, reason it cannot be used); never raises for model problems.

        Staleness and dimension are read from the validated manifest, so a stale or mismatched
        model's blob is never read or decoded."""
        stamp = self._stamp(collection)
        return self._kept(collection, "model", (self._token(collection), dim, count, stamp),
                          lambda: self._read_model(collection, dim, count, stamp))

    def _stamp(self, collection: str) -> WriteStamp | None:
        """The collection's write stamp; StoreError (a store failure) propagates like any other."""
        return self.store.write_stamp(collection)

    def _read_model(self, collection: str, dim: int, count: int | None,
                    stamp: WriteStamp | None) -> tuple[MIPSModel | None, ModelManifestSchema | None, str | None]:
        try:
            manifest = as_schema(self.store.read_manifest(collection), ModelManifestSchema)
        except AmipsError as exc:
            return None, None, f"the model cannot be loaded: {exc}"
        if manifest is None:
            return None, None, "no model trained for this collection"
        reason = _unusable(manifest, dim, count, stamp)
        if reason:
            return None, manifest, reason
        stored, problem = self._cached_load(collection, "model", manifest,
                                            lambda: model_registry.load(self.store, collection))
        if stored is None:
            return None, None, (f"the model cannot be loaded: {problem}" if problem
                                else "no model trained for this collection")
        if stored.manifest.sha256 != manifest.sha256:  # replaced between the two reads: check the new one
            reason = _unusable(stored.manifest, dim, count, stamp)
            if reason:
                return None, stored.manifest, reason
            self._cache[(collection, "model")] = (stored.manifest.sha256, stored, None)
        return stored.loaded.model, stored.manifest, None

    def search(self, collection: str, queries: np.ndarray, limit: int, mode: str = "hybrid",
               candidates: int | None = None, params: SearchParams = SearchParams(),
               candidate_source: str = "engine") -> tuple[SearchResult, SearchReport]:
        """`queries` (M, d) answered in `mode` (see above), with Python's collector paused for a batch: the
        engine's many short-lived hits (core/gc_pause.py), for every caller of the query path."""
        queries = np.asarray(queries)
        with paused_for(len(queries) if queries.ndim else 0):
            return self._search(collection, queries, limit, mode, candidates, params, candidate_source)

    def _search(self, collection: str, queries: np.ndarray, limit: int, mode: str, candidates: int | None,
                params: SearchParams, candidate_source: str) -> tuple[SearchResult, SearchReport]:
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {MODES}")
        if candidate_source not in CANDIDATE_SOURCES:
            raise InputError(f"unknown candidate source {candidate_source!r}; expected one of {CANDIDATE_SOURCES}")
        check_search_inputs(limit, candidates, params)
        info = self.store.info(collection)
        if params.oversampling is not None and self.store.quantized(collection) is False:
            raise InputError(f"oversampling applies to a scalar-quantized collection; {collection!r} keeps no int8 "
                             "copies (create it with --scalar-quantization), so leave --oversampling out")
        queries = check_queries(queries, info.dim)
        if mode == "auto":
            if candidate_source != "engine":
                raise InputError("--mode auto searches the engine; it cannot take --candidates-from")
            return self._auto(collection, queries, limit, params, info.dim, info.count)
        if mode == "off" and candidate_source == "engine":  # plain search: one store call, nothing to group
            return self.store.search(collection, queries, limit, params), SearchReport(mode="off", plain=len(queries))
        report = SearchReport(mode=mode)
        L = candidates or default_candidates(limit)
        side_index = None
        if candidate_source != "engine" and params.filter is not None:
            report.notes.append(f"a filter is applied by the engine, so {candidate_source} candidates were not used")
        elif candidate_source != "engine":
            side_index = self._side_index(collection, candidate_source, report, info.dim, info.count)

        predicted, confident = queries, np.zeros(len(queries), dtype=bool)
        if mode != "off":
            model, manifest, reason = self.model_for(collection, info.dim, info.count)
            report.model_version = manifest.version if manifest else None
            if model is None:
                self._warn_once(f"amips: plain search for {collection!r}: {reason}")
                report.fallback_reason = reason
            else:
                from .inference import forward_in_chunks  # torch, as the model itself

                predicted, gated = forward_in_chunks(model, queries, model.predict_with_confidence)
                confident = gated if mode == "replace" else np.ones(len(queries), dtype=bool)
                finite = np.isfinite(predicted).all(axis=1)
                if not finite.all():  # never send a NaN rewrite to the store
                    confident = confident & finite
                    report.notes.append(
                        f"{int((~finite).sum())} rewrite(s) were not finite; those queries got plain search")
        report.rewritten, report.plain = int(confident.sum()), int((~confident).sum())

        groups = self._probe_groups(mode, queries, predicted, confident)
        result = SearchResult.empty(len(queries), limit) if len(groups) > 1 else None  # one group: its answer
        for rows, probes in groups:
            if side_index is not None:
                try:
                    part = self._rescored_candidates(collection, side_index, queries[rows], probes, L, limit)
                except InputError as exc:  # the side index names points that are no longer in the collection
                    reason = self._side_index_gone(collection, candidate_source, exc)
                    self._warn_once(f"amips: engine candidates for {collection!r}: {reason}")
                    report.notes.append(reason)
                    side_index = None
            if side_index is None:
                part = self._engine_candidates(collection, queries[rows], probes, L, limit, params)
            result = part if result is None else result.assign(rows, part)
        assert result is not None  # every query is in one group
        return result, report

    def _auto(self, collection: str, queries: np.ndarray, limit: int, params: SearchParams, dim: int,
              count: int) -> tuple[SearchResult, SearchReport]:
        """The stored serving policy, or plain search (with the reason) when it is missing or stale."""
        report = SearchReport(mode="auto", plain=len(queries))
        policy, model, reason = self._stored_policy(collection, dim, count)
        if policy is None:
            self._warn_once(f"amips: plain search for {collection!r}: {reason}")
            report.fallback_reason = reason
            return self.store.search(collection, queries, limit, params), report
        if params.hnsw_ef is not None or params.oversampling is not None:
            report.notes.append("hnsw_ef and oversampling come from the tuned policy; the ones given were not used "
                                "(--mode off searches with them)")
        plain = policy.fallback or policy.first
        if params.filter is not None and policy.kind == "two-pass":
            # the certificate was calibrated on unfiltered searches: under a filter the first pass's scores mean
            # something else, so filtered queries get the plain setting that met the target unfiltered
            report.notes.append(f"filtered: plain search at {plain.describe()} (the tuned two-pass policy is "
                                "calibrated without filters)")
            return self.store.search(collection, queries, limit, plain.params(params)), report
        plain_pass = policy.plain_pass_for(len(queries))  # as serve decides: one store call, no certificate
        if plain_pass is not None:
            report.notes.append(
                f"{policy.describe()}; 0 of {len(queries)} queries escalated" if policy.kind == "plain" else
                f"plain search at {plain.describe()}: the tuned two-pass policy costs less only in calls of at least "
                f"{policy.min_batch} queries (this one has {len(queries)})")
            return self.store.search(collection, queries, limit, plain_pass.params(params)), report
        guard = self._shift_guard(collection, policy)
        guarded_before = guard.answered_plain if guard else 0
        result, escalated = serving_policy.serve(self.store, collection, queries, limit, policy, model, params, guard)
        report.escalated = int(escalated.sum())
        report.notes.append(f"{policy.describe()}; {report.escalated} of {len(queries)} queries escalated")
        if guard is not None and guard.answered_plain > guarded_before:
            report.notes.append(
                f"{guard.answered_plain - guarded_before} of {len(queries)} queries got plain search at "
                f"{plain.describe()}: the policy escalated {guard.share:.0%} of the recent queries, above the "
                f"{guard.limit:.0%} it pays for and was calibrated near (queries unlike those it was tuned on)")
            self._warn_once(f"amips: plain search for part of the queries to {collection!r}: "
                            "they are escalated more often than the tuned policy pays for (new topics?); "
                            "re-run `amips tune` on such queries")
        return result, report

    def _stored_policy(self, collection: str, dim: int,
                       count: int) -> tuple[serving_policy.Policy | None, MIPSModel | None, str | None]:
        """`serving_policy.stored_policy`, kept between calls while the policy's manifest (and, for a policy that
        reads the model, the model's), the collection's count and write stamp are the same."""
        slot = (collection, serving_policy.SLOT)
        policy_token, stamp = self._token(collection, serving_policy.SLOT), self._stamp(collection)
        kept = self._usable.get(slot)
        if kept is not None:
            model_token = self._token(collection) if kept[1][0].uses_model else _NOT_READ
            if kept[0] == (policy_token, model_token, dim, count, stamp):
                return kept[1]
        model_token = self._token(collection)
        found = serving_policy.stored_policy(self.store, collection, dim, count, self.model_for)
        if found[0] is not None:  # only a usable policy is kept: a failure is re-checked on the next call
            tokens = (policy_token, model_token if found[0].uses_model else _NOT_READ, dim, count, stamp)
            if None not in tokens:
                self._usable[slot] = (tokens, found)
        return found

    def _shift_guard(self, collection: str, policy: serving_policy.Policy) -> serving_policy.ShiftGuard | None:
        """One guard per collection and policy behaviour (kept across calls: it watches the query stream)."""
        limit = policy.shift_limit
        if policy.kind != "two-pass" or limit is None:
            return None
        key = (policy.first, policy.second, policy.certificate, policy.threshold, policy.fallback, limit)
        cached = self._guards.get(collection)
        if cached is None or cached[0] != key:
            cached = self._guards[collection] = (key, serving_policy.ShiftGuard(limit, policy.tuned_share))
        return cached[1]

    @staticmethod
    def _probe_groups(mode: str, queries: np.ndarray, predicted: np.ndarray,
                      confident: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray] | None]]:
        """Rows that are rewritten (probed with ŷ, and x in hybrid mode) and rows searched plainly (None)."""
        groups: list[tuple[np.ndarray, list[np.ndarray] | None]] = []
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
        result = SearchResult.empty(len(queries), limit, text=point_ids.is_text(side_index.ids))
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
        return SearchResult(result.ids, result.scores)  # scored here: no engine versions

    def _side_index(self, collection: str, source: str, report: SearchReport, dim: int, count: int):
        """The collection's compressed key store ("pq") or routed lists ("route"), or None (engine
        candidates) with the reason noted. Like the model, an index built on another number of keys
        than the collection holds (`count`) is stale: writes by other clients cannot mark it."""
        kind = SIDE_INDEXES[source]
        name, command = kind.description, kind.build_command
        loaded, reason = None, None
        try:
            manifest = as_schema(self.store.read_manifest(collection, kind.slot), BlobManifestSchema)
        except AmipsError as exc:
            reason = f"the {name} cannot be loaded: {exc}"
        else:
            why = stale_reason(manifest, self._stamp(collection), count) if manifest else None
            if not manifest:
                reason = f"no {name} (run `amips {command}`)"
            elif why:
                reason = f"the {name} is stale ({why}); run `amips {command}`"
            else:
                loaded, problem = self._cached_load(collection, kind.slot, manifest,
                                                    lambda: kind.load(self.store, collection))
                if loaded is None:
                    reason = (f"the {name} cannot be loaded: {problem}" if problem
                              else f"no {name} (run `amips {command}`)")
                elif loaded[0].dim != dim:
                    reason = (f"the {name} expects dimension {loaded[0].dim}, the collection has {dim}; "
                              f"run `amips {command}`")
        if reason:
            self._warn_once(f"amips: engine candidates for {collection!r}: {reason}")
            report.notes.append(reason)
            return None
        assert loaded is not None  # no reason means the side index loaded
        return loaded[0]

    def _side_index_gone(self, collection: str, source: str, exc: Exception) -> str:
        """Remember that the cached side index names missing points; the reason to note."""
        kind = SIDE_INDEXES[source]
        cached = self._cache.get((collection, kind.slot))
        reason = (f"the {kind.description} names points the collection no longer has ({exc}); "
                  f"run `amips {kind.build_command}`")
        if cached:
            self._cache[(collection, kind.slot)] = (cached[0], None, reason)
        return reason
