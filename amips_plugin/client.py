"""A drop-in for qdrant-client's `query_points` / `query_batch_points` that rewrites queries with each
collection's stored model, and lets the application retrain while it serves.

    from qdrant_client import QdrantClient, models
    from amips_plugin.client import AmipsClient

    client = AmipsClient(QdrantClient(url="http://localhost:6333"))   # wrap the application's client
    # or AmipsClient("edge:./amips-data"), AmipsClient("./local-dir"), AmipsClient(":memory:")
    hits = client.query_points("docs", query=vector, limit=10,
                               query_filter=models.Filter(must=[...]), with_payload=True).points

Same signatures and return types as qdrant-client (`QueryResponse` of `ScoredPoint`, with payloads and
vectors as asked). A dense-vector query on a collection with a usable model is answered by the amips
query path (`rewriting.QueryRewriter`, the code the CLI and the benchmarks run): the filter applies
to every prefetch and to the final query; `score_threshold` and `offset` apply to the final, exactly
rescored ranking, as in Qdrant; `using` picks a named vector (each has its own model). Anything amips
does not rewrite — other query kinds, user prefetches, `lookup_from`, a sparse or multivector `using` —
goes to the wrapped QdrantClient untouched (on Edge, where there is none, it is an InputError). Any
other attribute is the wrapped client's, so the object can stand in for it.

Refreshing a model without stopping: `client.train(...)` / `client.build_index(...)` publish with
the same compare-and-swap as the CLI; queries are served by the old model until the new one commits,
then by the new one (the query path re-reads the manifest and loads a model whose checksum changed).
They may run on a background thread.
"""
from __future__ import annotations

import math
import sys
import threading
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.models import QueryResponse

from amips_plugin.adapters import SearchParams, VectorStore, open_store
from amips_plugin.core import point_ids
from amips_plugin.adapters.qdrant_client_store import QdrantClientStore
from amips_plugin.adapters.vector_view import for_vector

from .core.errors import InputError, InvalidRequestError
from .core.gc_pause import paused_for
from .core.limits import MAX_LIMIT
from .rewriting import QueryRewriter, SearchReport
from .side_indexes import SIDE_INDEXES

if TYPE_CHECKING:
    from .train_config import TrainConfig
    from .tuning import TuneReport

# QdrantClient calls that change which vectors a collection holds
POINT_WRITES = frozenset({"upsert", "delete", "update_vectors", "delete_vectors", "batch_update_points",
                          "upload_points", "upload_collection"})
DEFAULT_MODE = "auto"  # the collection's tuned serving policy (`amips tune`); plain search until there is one
_REWRITABLE = (list, tuple, np.ndarray)
_NO_PARAMS = models.SearchParams()
_OPTIONS = ("using", "filter", "params", "limit", "offset", "with_payload", "with_vector", "score_threshold")


class AmipsClient:
    def __init__(self, store: QdrantClient | VectorStore | str, api_key: str | None = None,
                 mode: str = DEFAULT_MODE, candidates: int | None = None) -> None:
        """`store`: an application's QdrantClient (wrapped, not closed by `close`), a VectorStore, or a
        store spec (`edge:DIR`, a local directory, `:memory:`, or a URL). `mode` and `candidates` are
        the defaults of every query (see `rewriting`)."""
        self._qdrant: QdrantClient | None = store if isinstance(store, QdrantClient) else None
        if isinstance(store, QdrantClient):
            self.store: VectorStore = QdrantClientStore.wrap(store)
        elif isinstance(store, str):
            self.store = open_store(store, api_key)
            self._qdrant = getattr(getattr(self.store, "client", None), "_client", None)
        else:
            self.store = store
        self._rewriters: dict[str | None, QueryRewriter] = {}
        self.mode, self.candidates = mode, candidates
        self._local = threading.local()

    @property
    def last_report(self) -> SearchReport | None:
        """What the query path did for this thread's last rewritten call (mode, rewritten, fallback reason)."""
        return getattr(self._local, "report", None)

    # queries ------------------------------------------------------------------------------------
    def query_points(self, collection_name: str, query: Any = None, using: str | None = None,
                     prefetch: Any = None, query_filter: models.Filter | None = None,
                     search_params: models.SearchParams | None = None, limit: int = 10, offset: int | None = None,
                     with_payload: Any = True, with_vectors: Any = False, score_threshold: float | None = None,
                     lookup_from: Any = None, mode: str | None = None, candidates: int | None = None,
                     **kwargs: Any) -> QueryResponse:
        """qdrant-client's `query_points`; `mode` / `candidates` override the client's defaults."""
        dense = isinstance(query, np.ndarray) and query.ndim == 1  # kept as it is: not a list to validate
        request = models.QueryRequest(query=None if dense else _as_query(query), using=using, prefetch=prefetch,
                                      filter=query_filter, params=search_params, limit=limit, offset=offset,
                                      with_payload=with_payload, with_vector=with_vectors,
                                      score_threshold=score_threshold, lookup_from=lookup_from)
        if dense:
            request.query = query  # a vector of any numeric dtype: _rewritable checks it, qdrant-client takes arrays
        return self.query_batch_points(collection_name, [request], mode=mode, candidates=candidates, **kwargs)[0]

    def query_batch_points(self, collection_name: str, requests: Sequence[models.QueryRequest],
                           mode: str | None = None, candidates: int | None = None,
                           **kwargs: Any) -> list[QueryResponse]:
        """qdrant-client's `query_batch_points`. Rewritable requests that share their options are
        answered together, in one store call per group; the rest pass through."""
        responses: list[QueryResponse | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        described: dict[int, tuple[Any, str]] = {}  # _options_key's reprs, by id() of the options they describe
        for index, request in enumerate(requests):
            if _rewritable(request) and self._servable(collection_name, request.using):
                groups.setdefault(_options_key(request, described) if len(requests) > 1 else (), []).append(index)
            else:
                responses[index] = self._pass_through(collection_name, request, **kwargs)
        for indexes in groups.values():
            batch = [requests[i] for i in indexes]
            with paused_for(len(batch)):  # qdrant-client's objects of the answer too (core/gc_pause.py)
                answers = self._rewritten(collection_name, batch, mode, candidates)
            for i, response in zip(indexes, answers):
                responses[i] = response
        return [r for r in responses if r is not None]

    def query_arrays(self, collection_name: str, queries: np.ndarray, limit: int = 10, using: str | None = None,
                     query_filter: models.Filter | None = None,
                     mode: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dense queries (M, d) as arrays in and out: (ids, scores), each (M, limit), best first; ids int64, or
        UUIDs as text on a collection that has them; a row the search could not fill is padded with -1 (or "")
        and -inf. The query path of `query_points` (the mode, the tuned policy, the filter, `last_report`)
        without qdrant-client's request and `ScoredPoint` objects: building those costs more than the engine's
        own search of a query on Edge (docs/performance.md, "the client's layer")."""
        result, report = self.rewriter(using).search(collection_name, np.asarray(queries), limit, mode or self.mode,
                                                     self.candidates, SearchParams(filter=query_filter))
        self._local.report = report
        return result.ids, result.scores

    def _rewritten(self, collection: str, requests: list[models.QueryRequest], mode: str | None,
                   candidates: int | None) -> list[QueryResponse]:
        first = requests[0]
        offset, limit = _paging(first)
        engine = first.params or _NO_PARAMS
        quantization = engine.quantization
        params = SearchParams(hnsw_ef=engine.hnsw_ef, exact=bool(engine.exact), filter=first.filter,
                              oversampling=quantization.oversampling if quantization else None)
        queries = np.array([_vector(r.query) for r in requests], dtype=np.float32)
        result, report = self.rewriter(first.using).search(collection, queries, offset + limit, mode or self.mode,
                                                           candidates or self.candidates, params)
        self._local.report = report
        versions = result.versions if result.versions is not None else np.zeros(result.ids.shape, dtype=np.int64)
        rows: list[list[np.ndarray]]  # ids, scores and versions, one array per response
        if offset == 0 and first.score_threshold is None and point_ids.present(result.ids[:, -1]).all():
            rows = [list(result.ids), list(result.scores), list(versions)]  # all full (rows fill from the left)
        else:
            keep = point_ids.present(result.ids)
            if first.score_threshold is not None:
                keep &= result.scores >= first.score_threshold
            rows = [[part[mask][offset:] for part, mask in zip(array, keep)]
                    for array in (result.ids, result.scores, versions)]
        extras = self._extras(collection, rows[0], first.with_payload, first.with_vector)
        return [_response(point_ids.to_qdrant_list(ids), scores.tolist(), version.tolist(), extras)
                for ids, scores, version in zip(*rows)]

    def rewriter(self, using: str | None = None) -> QueryRewriter:
        """The query path of one vector (the default one for None); each caches its model."""
        if using not in self._rewriters:
            self._rewriters[using] = QueryRewriter(for_vector(self.store, using))
        return self._rewriters[using]

    def _servable(self, collection: str, using: str | None) -> bool:
        """Whether amips can answer queries on this vector (a dense one); the rest pass through."""
        if using is None or self._qdrant is None:
            return True  # the query path answers, or says clearly why not
        try:
            self.store.resolve_vector(collection, using)
        except InputError:
            return False
        return True

    def _extras(self, collection: str, rows: list[np.ndarray], with_payload: Any,
                with_vectors: Any) -> dict[Any, tuple[Any, Any]]:
        """Payloads and vectors of every returned point (`rows`: each response's ids), in one store call."""
        if not with_payload and not with_vectors:
            return {}
        ids = point_ids.concatenate(rows)
        if not len(ids):
            return {}
        payload, exclude = _payload_selector(with_payload)
        found = self.store.records(collection, np.unique(ids), payload, with_vectors if with_vectors else False)
        if exclude:
            found = {i: ({k: v for k, v in (p or {}).items() if k not in exclude}, vec)
                     for i, (p, vec) in found.items()}
        return found

    def _pass_through(self, collection: str, request: models.QueryRequest, **kwargs: Any) -> QueryResponse:
        if self._qdrant is None:
            raise InputError("amips answers only dense-vector queries on this store (Edge); use qdrant_edge "
                             "directly for other query kinds, prefetches or named vectors")
        fields = {name: getattr(request, name) for name in ("query", "using", "prefetch", "limit", "offset",
                                                            "with_payload", "score_threshold", "lookup_from")}
        # QueryRequest.with_vector may be None (the server's default); query_points' annotation omits None.
        return self._qdrant.query_points(collection, query_filter=request.filter, search_params=request.params,
                                         with_vectors=request.with_vector, **fields, **kwargs)  # type: ignore[arg-type]

    # serving policy, models and side indexes --------------------------------------------------------
    def tune(self, collection_name: str, queries: np.ndarray, target_recall: float = 0.99, limit: int = 10,
             using: str | None = None, progress: bool | None = None) -> "TuneReport":
        """Measure the serving policies on a sample of the collection's queries and store the cheapest whose
        recall@1 meets `target_recall` (what `amips tune` runs); `query_points` then serves it under the
        default mode "auto". The sample needs at least 200 queries, and for a high target more (0.99: 953);
        the report's `verdict()` says what was chosen and why."""
        from .tuning import tune  # tune-time code, kept off the query path

        shown = sys.stderr.isatty() if progress is None else progress
        return tune(for_vector(self.store, using), collection_name, np.asarray(queries), target_recall, limit,
                    progress=shown)

    def train(self, collection_name: str, queries: np.ndarray, config: TrainConfig | None = None,
              using: str | None = None, progress: bool | None = None) -> dict[str, Any]:
        """Train and publish the model of a collection's vector while this client keeps serving; returns
        the manifest. `config`: TrainConfig() by default, bounded by its `time_budget` (five minutes); `progress`:
        a progress bar on stderr (None: when stderr is a terminal)."""
        from . import collection_ops  # training code, kept off the query path
        from .train_config import TrainConfig

        shown = sys.stderr.isatty() if progress is None else progress
        return collection_ops.train(for_vector(self.store, using), collection_name, np.asarray(queries),
                                    config or TrainConfig(), progress=shown).manifest

    def build_index(self, collection_name: str, kind: str, queries: np.ndarray | None = None,
                    using: str | None = None, **options: Any) -> dict[str, Any]:
        """Build and publish a side index (`side_indexes.SIDE_INDEXES`): "pq" (options: subspaces,
        relative_threshold) or "route" (trained on `queries`; options: lists, sublists, coarse_candidates,
        training); returns its manifest."""
        if kind not in SIDE_INDEXES:
            raise InputError(f"unknown side index {kind!r}; expected one of {sorted(SIDE_INDEXES)}")
        if queries is not None:
            options["queries"] = np.asarray(queries, dtype=np.float32)
        elif kind == "route":
            raise InputError("a route index is trained on a query sample: pass queries=")
        return SIDE_INDEXES[kind].build(for_vector(self.store, using), collection_name, **options)

    def close(self) -> None:
        self.store.close()

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped QdrantClient's (scroll, create_collection, ...). Its writes to points
        (POINT_WRITES) first bump the collection's write stamp, so that every model, side index and policy built
        before them is stale from that moment (amips_plugin/freshness.py), as with `amips ingest`."""
        qdrant = self.__dict__.get("_qdrant")
        if qdrant is None:
            raise AttributeError(f"AmipsClient has no attribute {name!r} (no QdrantClient behind this store)")
        attr = getattr(qdrant, name)
        if name not in POINT_WRITES:
            return attr

        def write(collection_name: str, *args: Any, **kwargs: Any) -> Any:
            self.store.bump_generation(collection_name)
            return attr(collection_name, *args, **kwargs)

        return write


def _as_query(query: Any) -> Any:
    return query.tolist() if isinstance(query, np.ndarray) else query


def _vector(query: Any) -> Any:
    """The dense vector of a rewritable query (a list, tuple or array; see `_rewritable`)."""
    return query.nearest if isinstance(query, models.NearestQuery) else query


def _rewritable(request: models.QueryRequest) -> bool:
    """A plain dense-vector query, without user prefetches."""
    query = request.query
    if isinstance(query, models.NearestQuery):
        query = query.nearest if query.mmr is None else None
    return (isinstance(query, _REWRITABLE) and _numbers(query) and request.prefetch is None
            and request.lookup_from is None and request.shard_key is None)


def _numbers(vector: Any) -> bool:
    """A non-empty flat sequence of real numbers. A list inside a QueryRequest was validated by qdrant-client as
    a dense vector (floats) or a multivector (lists): its first element tells which. Otherwise one numpy
    conversion (a check per element cost 0.1 ms a query)."""
    if type(vector) is list and vector and type(vector[0]) in (float, int):
        return True
    try:
        array = np.asarray(vector)
    except (ValueError, TypeError):  # ragged nesting
        return False
    return array.ndim == 1 and array.size > 0 and array.dtype.kind in "fiu"


def _paging(request: models.QueryRequest) -> tuple[int, int]:
    """(offset, limit) of a rewritable request, None meaning 0 and 10 as in qdrant-client, which refuses limit < 1
    and offset < 0 (so does this, and offset + limit > MAX_LIMIT); a NaN score_threshold, which would drop
    every hit, is refused too. InvalidRequestError naming the parameter."""
    limit = 10 if request.limit is None else request.limit
    offset = 0 if request.offset is None else request.offset
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be an integer in [1, {MAX_LIMIT:,}], got {str(limit)[:40]}")
    if type(offset) is not int or not 0 <= offset <= MAX_LIMIT - limit:
        raise InvalidRequestError(f"offset must be an integer in [0, {MAX_LIMIT - limit:,}] (offset + limit ≤ "
                                  f"{MAX_LIMIT:,}), got {str(offset)[:40]}")
    if request.score_threshold is not None and math.isnan(request.score_threshold):
        raise InvalidRequestError("score_threshold is NaN; pass a number, or None for no threshold")
    return offset, limit


def _options_key(request: models.QueryRequest, described: dict[int, tuple[Any, str]]) -> tuple[Any, ...]:
    """Requests with equal options share one store call. Each option by its repr, kept in `described` by the
    object's id with the object itself (so that no other object takes that id during the call): the repr of a
    filter or of SearchParams costs ~10 µs, and a batch's requests usually share the same objects."""
    key = []
    for name in _OPTIONS:
        value = getattr(request, name)
        known = described.get(id(value))
        if known is None:
            known = described[id(value)] = (value, repr(value))
        key.append(known[1])
    return tuple(key)


def _payload_selector(with_payload: Any) -> tuple[Any, set[str]]:
    """qdrant-client's with_payload as (what the store reads, keys to drop afterwards)."""
    if isinstance(with_payload, models.PayloadSelectorInclude):
        return list(with_payload.include), set()
    if isinstance(with_payload, models.PayloadSelectorExclude):
        return True, set(with_payload.exclude)
    return with_payload, set()


def _response(ids: list[Any], scores: list[float], versions: list[int],
              extras: dict[Any, tuple[Any, Any]]) -> QueryResponse:
    """One query's hits as qdrant-client returns them, validated in one call rather than a ScoredPoint per hit."""
    points = [{"id": i, "version": v, "score": s} for i, s, v in zip(ids, scores, versions)]
    if extras:
        for point in points:
            point["payload"], point["vector"] = extras.get(point["id"], (None, None))
    return QueryResponse.model_validate({"points": points})
