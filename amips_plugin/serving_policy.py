"""Per-query search effort: a cheap first pass for every query, a second pass only where a
certificate says the first one may have missed (issue 11). Works on any VectorStore through
`store.search(..., SearchParams(hnsw_ef=...))`.

    plain     one search at hnsw_ef = ef
    two-pass  every query searched at ef₁ with limit k = max(limit, DEPTH); a suspicion score c(x)
              from that pass; the queries with c(x) > threshold — and every query whose certificate
              features fall outside the range seen at calibration (unusual queries look suspicious) —
              searched again at ef₂; an escalated query's answer is the top `limit` of the union of both
              passes, so no query is answered worse than by plain search at ef₁

Certificates, on scores normalised by ‖x‖ (s_i: the first pass's i-th best score, σ̂(x) the stored
model's support function: SupportNet f(x), KeyNet <g(x), x>):

    s1          c = −s₁/‖x‖                       (no model: the issue's baseline)
    margin      c = (σ̂(x) − s₁)/‖x‖               (the predicted best score not yet reached)
    classifier  c = b + w·z, a logistic regression of P(the first pass misses the argmax) on the
                standardised z = (s₁, s₁ − s₂, s₁ − s_k[, σ̂ − s₁]) / ‖x‖, fitted in numpy

Shift guard (`ShiftGuard`): a two-pass policy pays only while the share p of queries it escalates stays
below the break-even p* = (t_plain − t₁)/t₂ measured at tuning (t₁, t₂: the passes' per-query times;
t_plain: plain search at the cheapest hnsw_ef meeting the target, the policy's `fallback_ef`), and its
calibration holds only for queries like the tuning sample. Queries from elsewhere (new topics) are
flagged far more often, so the guard keeps an exponentially weighted share over about GUARD_WINDOW
queries and, while it exceeds `Policy.shift_limit` (p*, or the tuned share plus SHIFT_SIGMAS binomial
standard deviations if lower), answers queries
by plain search at `fallback_ef` — plain search's own cost and recall — except the head (at most
GUARD_CHUNK queries) of every PROBE_EVERY-th batch, still served two-pass so that the share stays
measured and the guard lets go.

Tune-time calibration (the threshold, the classifier, the guard's range) is amips_plugin/calibration.py.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from amips_plugin.core import point_ids
from amips_plugin.adapters.base import SearchParams, SearchResult, VectorStore

from .core.errors import AmipsError, ArtifactError
from .core.manifest_schema import ModelManifestSchema, PolicyFields, PolicyManifestSchema, as_schema, parse_policy
from .core.limits import MAX_OVERSAMPLING
from .freshness import NOT_CHECKED, stale_reason

if TYPE_CHECKING:  # torch: imported only by a policy that reads a model
    from .models import MIPSModel

SLOT = "policy"
KINDS = ("plain", "two-pass")
CERTIFICATES = ("s1", "margin", "classifier")
DEPTH = 10  # the first pass returns at least this many hits: s_k is its last score
FEW_QUERIES = 8  # a call of at most this many queries gets its certificate on Python floats (Policy.flag)
_NORM_FLOOR = 1e-12
GUARD_WINDOW = 256  # queries the shift guard's escalation share averages over (its weight per chunk)
GUARD_CHUNK = 256  # a batch's head: served and observed before the guard decides on the rest
PROBE_EVERY = 8  # while the guard serves plain search, one batch head in this many is still served two-pass
SHIFT_SIGMAS = 4.0  # an escalated share this many standard deviations above tuning's means a shifted stream


def support_values(model: MIPSModel, queries: np.ndarray) -> np.ndarray:
    """σ̂(x) for a batch, no gradient, in bounded row chunks (`inference.forward_in_chunks`)."""
    from .inference import forward_in_chunks  # torch, as the model itself: a policy reading no σ̂ never needs it

    return forward_in_chunks(model, queries, lambda x: (model.head_scores(x)[:, 0],))[0]


def _squared_norms(queries: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", queries, queries, dtype=np.float64)


def query_norms(queries: np.ndarray) -> np.ndarray:
    """‖x‖ per query in float64, floored (a zero query scores 0 everywhere: its features are then 0)."""
    return np.maximum(np.sqrt(_squared_norms(queries)), _NORM_FLOOR)


def features(queries: np.ndarray, scores: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """Per query (s₁, s₁ − s₂, s₁ − s_k[, σ̂ − s₁]) / ‖x‖ from the first pass's scores (n, k), best first, in
    float64. Rows with fewer than k hits get NaN where a score is missing, which the guard escalates."""
    norm = query_norms(queries)
    s = scores.astype(np.float64) / norm[:, None]
    s[~np.isfinite(s)] = np.nan
    z = np.empty((len(s), 3 if sigma is None else 4))
    z[:, 0] = s[:, 0]
    np.subtract(s[:, 0], s[:, min(1, s.shape[1] - 1)], out=z[:, 1])
    np.subtract(s[:, 0], s[:, -1], out=z[:, 2])
    if sigma is not None:
        z[:, 3] = np.asarray(sigma, dtype=np.float64) / norm - s[:, 0]
    return z


@dataclass(frozen=True)
class Classifier:
    """Logistic regression on standardised features: c = b + w·(z − mean)/scale (a log-odds of a miss)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]  # (b, w₁, …, w_F)

    def logits(self, z: np.ndarray) -> np.ndarray:
        return self._bias + z @ self._slopes - self._offset

    @functools.cached_property  # c = b + w·(z − mean)/scale = (b − Σ w·mean/scale) + z·(w/scale): folded once
    def _slopes(self) -> np.ndarray:
        return np.asarray(self.weights[1:]) / np.asarray(self.scale)

    @functools.cached_property
    def _offset(self) -> float:
        return float(np.asarray(self.mean) @ self._slopes)

    @property
    def _bias(self) -> float:
        return self.weights[0]

    def logit(self, z: Sequence[float]) -> float:
        """`logits` of one row, on Python floats."""
        return self._bias + sum(v * w for v, w in zip(z, self._slope_list)) - self._offset

    @functools.cached_property
    def _slope_list(self) -> list[float]:
        return self._slopes.tolist()


def used_columns(certificate: str, with_model: bool) -> list[int]:
    """Which feature columns a certificate reads (and the guard checks)."""
    if certificate == "s1":
        return [0]
    if certificate == "margin":
        return [3]
    return [0, 1, 2, 3] if with_model else [0, 1, 2]


def suspicion(certificate: str, z: np.ndarray, classifier: Classifier | None = None) -> np.ndarray:
    """c(x): larger means more likely that the first pass missed the best key."""
    if certificate == "s1":
        return -z[:, 0]
    if certificate == "margin":
        return z[:, 3]
    assert classifier is not None
    return classifier.logits(z[:, : len(classifier.mean)])


@dataclass(frozen=True)
class Effort:
    """The engine knobs of one search pass: its hnsw_ef and, on a vector with int8 copies, the oversampling
    of its quantized search (oversampling × limit candidates rescored with the original vectors; None:
    the caller's, or the engine's default)."""

    ef: int
    oversampling: float | None = None

    def params(self, base: SearchParams) -> SearchParams:
        """`base` (a filter, ...) with this pass's knobs (built directly: `dataclasses.replace` costs 4× as much, on
        every call of the query path; with no knob of the caller's, built once)."""
        if base.filter is None and base.oversampling is None and not base.exact and not base.ignore_quantization:
            return self._own_params
        return SearchParams(hnsw_ef=self.ef, exact=base.exact, filter=base.filter,
                            oversampling=base.oversampling if self.oversampling is None else self.oversampling,
                            ignore_quantization=base.ignore_quantization)

    @functools.cached_property
    def _own_params(self) -> SearchParams:
        return SearchParams(hnsw_ef=self.ef, oversampling=self.oversampling)

    def below(self, other: "Effort") -> bool:
        """Strictly less search effort: no knob higher than `other`'s, and not the same knobs."""
        return (self.ef <= other.ef and (self.oversampling or 1.0) <= (other.oversampling or 1.0)
                and self != other)

    def describe(self) -> str:
        return f"hnsw_ef {self.ef}" + ("" if self.oversampling is None else f", oversampling {self.oversampling:g}")

    @property
    def label(self) -> str:
        """"ef 16", or "ef 16×2" with oversampling 2: how frontier rows name a pass."""
        return f"ef {self.ef}" + ("" if self.oversampling is None else f"×{self.oversampling:g}")


@dataclass(frozen=True)
class Policy:
    """A serving policy as stored in the collection's "policy" manifest slot."""

    kind: str
    ef: int  # plain: its hnsw_ef; two-pass: the first pass's
    second_ef: int | None = None
    certificate: str | None = None
    threshold: float | None = None
    classifier: Classifier | None = None
    guard_low: tuple[float, ...] | None = None  # per used feature column
    guard_high: tuple[float, ...] | None = None
    target: float | None = None
    model_sha256: str | None = None  # the model whose σ̂ the certificate reads (None: it reads none)
    fallback_ef: int | None = None  # two-pass: plain search's hnsw_ef meeting the target (the shift guard's)
    break_even: float | None = None  # two-pass: the escalated share at which it costs as much as that
    measured: dict[str, Any] = field(default_factory=dict)
    oversampling: float | None = None  # on a quantized vector, each pass's oversampling (Effort)
    second_oversampling: float | None = None
    fallback_oversampling: float | None = None
    min_batch: int | None = None  # two-pass: the fewest queries a call must bring to be served two-pass (None: 1)

    @functools.cached_property  # the query path asks every call; the fields are frozen
    def first(self) -> Effort:
        """Plain: its one pass; two-pass: the first pass."""
        return Effort(self.ef, self.oversampling)

    @property
    def second(self) -> Effort:
        assert self.second_ef is not None, "a two-pass policy"
        return Effort(self.second_ef, self.second_oversampling)

    @functools.cached_property  # the query path asks every call; the fields are frozen
    def fallback(self) -> Effort | None:
        return None if self.fallback_ef is None else Effort(self.fallback_ef, self.fallback_oversampling)

    @property
    def shift_limit(self) -> float | None:
        """The escalated share above which the shift guard serves plain search: the break-even share, or —
        lower — the share escalated at tuning plus SHIFT_SIGMAS binomial standard deviations over a
        GUARD_WINDOW of queries (a share that far above calibration means queries unlike the tuning
        sample, for which the calibrated recall is not promised). The deviation's share is floored at one query
        in GUARD_WINDOW: a share measured as 0 has no spread, and a limit of 0 would take one escalated query
        for a shift, and never let go (the average only tends to 0)."""
        if self.break_even is None:
            return None
        tuned = self.tuned_share
        if tuned is None:
            return self.break_even
        spread = max(tuned, 1 / GUARD_WINDOW)
        return min(self.break_even, tuned + SHIFT_SIGMAS * math.sqrt(spread * (1 - spread) / GUARD_WINDOW))

    @property
    def tuned_share(self) -> float | None:
        """The share of queries escalated at tuning (`measured`), or None when it is not recorded as one."""
        tuned = self.measured.get("escalated")
        return tuned if isinstance(tuned, float) and 0 <= tuned <= 1 else None

    def two_pass_for(self, queries: int) -> bool:
        """Serve a call of `queries` queries two-pass? A two-pass policy's per-call work (the certificate, the
        merge: a few numpy calls whatever the call's size) can cost more than it saves on a small call, so tune
        measures one query a call against plain search and stores `min_batch`, the fewest queries a call must
        bring (`tuning.smallest_paying_call`); a smaller call gets plain search at the fallback, which meets the
        same target. Plain policies: never."""
        return self.kind == "two-pass" and (self.min_batch is None or self.fallback is None
                                            or queries >= self.min_batch)

    def plain_pass_for(self, queries: int) -> Effort | None:
        """The one plain search a call of `queries` queries gets — a plain policy's pass, or a two-pass policy's
        fallback below its `min_batch` (`two_pass_for`) — or None when the call is served two-pass."""
        if self.kind == "plain":
            return self.first
        return None if self.two_pass_for(queries) else self.fallback

    @property
    def uses_model(self) -> bool:
        return self.kind == "two-pass" and (self.certificate == "margin" or (
            self.certificate == "classifier" and self.classifier is not None and len(self.classifier.mean) == 4))

    def describe(self) -> str:
        return self._description

    @functools.cached_property  # the query path notes it on every call; the fields are frozen
    def _description(self) -> str:
        if self.kind == "plain":
            return f"plain search at {self.first.describe()}"
        share = self.measured.get("escalated")
        share_text = f", {share:.1%} of queries escalated at tuning" if isinstance(share, float) else ""
        limit, fallback = self.shift_limit, self.fallback
        guard_text = "" if limit is None or fallback is None else (
            f"; plain search at {fallback.describe()} while more than {limit:.{0 if limit >= 0.01 else 1}%} are "
            "escalated")
        small_text = "" if (self.min_batch or 1) <= 1 or fallback is None else (
            f"; calls of fewer than {self.min_batch} queries: plain search at {fallback.describe()}")
        return (f"two-pass: {self.first.describe()} for every query, {self.second.describe()} for those the "
                f"{self.certificate} certificate flags{share_text}{guard_text}{small_text}")

    def escalate(self, z: np.ndarray) -> np.ndarray:
        """Queries to search again: suspicious, or outside the calibrated feature range (or NaN; a comparison
        with NaN is false, so a NaN feature is never "in range" and never "not suspicious")."""
        used = z[:, self._used_columns]
        unusual = ~np.isfinite(used).all(axis=1)
        if self._guard_box is not None:
            low, high = self._guard_box
            unusual |= ((used < low) | (used > high)).any(axis=1)
        return (suspicion(self.certificate or "s1", z, self.classifier) > self.threshold) | unusual

    def flag(self, queries: np.ndarray, scores: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
        """`escalate(features(queries, scores, sigma))`: for a call of at most FEW_QUERIES queries worked out on
        Python floats, row by row — numpy's fixed cost per operation (~1 µs, two dozen of them) is most of a
        one-query call's certificate, and the arithmetic is the same float64 (tests/test_serving_policy_math.py
        checks that both ways agree)."""
        if len(queries) > FEW_QUERIES:
            return self.escalate(features(queries, scores, sigma))
        norms = [max(math.sqrt(v), _NORM_FLOOR) for v in _squared_norms(queries).tolist()]
        sigmas = [None] * len(norms) if sigma is None else np.asarray(sigma, dtype=np.float64).tolist()
        return np.array([self._flag_one(row, norm, value)
                         for row, norm, value in zip(scores.tolist(), norms, sigmas)], dtype=bool)

    def _flag_one(self, scores: list[float], norm: float, sigma: float | None) -> bool:
        """One query's `escalate` row on Python floats (see `flag`). A missing score (−inf) makes its feature
        ±inf or NaN here where `features` writes NaN: either way not finite, so escalated alike."""
        top = scores[0] / norm
        z = (top, top - scores[min(1, len(scores) - 1)] / norm, top - scores[-1] / norm,
             math.nan if sigma is None else sigma / norm - top)
        for column, low, high in self._checked_columns:
            value = z[column]
            if not (math.isfinite(value) and low <= value <= high):
                return True
        assert self.threshold is not None  # a two-pass policy's (_shape_problem)
        if self.certificate == "classifier":
            assert self.classifier is not None
            return self.classifier.logit(z) > self.threshold
        return (z[3] if self.certificate == "margin" else -z[0]) > self.threshold

    @functools.cached_property
    def _checked_columns(self) -> list[tuple[int, float, float]]:
        """(column, low, high) of each used feature column: its calibrated range, or all reals without one."""
        columns = self._used_columns
        low, high = ((self.guard_low, self.guard_high) if self.guard_low is not None and self.guard_high is not None
                     else ((-math.inf,) * len(columns), (math.inf,) * len(columns)))
        return list(zip(columns, low, high))

    @functools.cached_property  # the query path asks on every two-pass call; the fields are frozen
    def _used_columns(self) -> list[int]:
        return used_columns(self.certificate or "s1", self.uses_model)

    @functools.cached_property
    def _guard_box(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.guard_low is None or self.guard_high is None:
            return None
        return np.asarray(self.guard_low), np.asarray(self.guard_high)

    def problem(self) -> str | None:
        """Why `amips tune` could not have written this policy, in a few words (None: it could)."""
        return _shape_problem(self) or _value_problem(self)

    def to_manifest(self) -> dict[str, Any]:
        """The policy's fields as JSON holds them (tuples as lists), so that `from_manifest` reads them back."""
        data = asdict(self)
        data["classifier"] = ({name: list(values) for name, values in asdict(self.classifier).items()}
                              if self.classifier else None)
        for name in ("guard_low", "guard_high"):
            data[name] = None if data[name] is None else list(data[name])
        return data

    @classmethod
    def from_manifest(cls, data: PolicyFields | dict[str, Any]) -> Policy:
        """The policy of a manifest's fields: typed already (a stored policy as read) or a dict (`to_manifest`'s)
        typed here, by core/manifest_schema.PolicyFields (one definition of each field); ArtifactError for
        anything malformed (the query path then searches plainly)."""
        fields = data if isinstance(data, PolicyFields) else parse_policy(data)
        raw, low, high = fields.classifier, fields.guard_low, fields.guard_high
        policy = cls(kind=fields.kind, ef=fields.ef, second_ef=fields.second_ef, certificate=fields.certificate,
                     threshold=_float(fields.threshold),
                     classifier=None if raw is None else Classifier(*(tuple(map(float, values)) for values in (
                         raw.mean, raw.scale, raw.weights))),
                     guard_low=None if low is None else tuple(map(float, low)),
                     guard_high=None if high is None else tuple(map(float, high)),
                     target=_float(fields.target), model_sha256=fields.model_sha256,
                     fallback_ef=fields.fallback_ef, break_even=_float(fields.break_even),
                     measured=dict(fields.measured or {}), oversampling=_float(fields.oversampling),
                     second_oversampling=_float(fields.second_oversampling),
                     fallback_oversampling=_float(fields.fallback_oversampling), min_batch=fields.min_batch)
        problem = policy.problem()
        if problem:
            raise ArtifactError(f"the stored serving policy is malformed ({problem})")
        return policy


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _shape_problem(policy: Policy) -> str | None:
    """Fields missing, or of the wrong length, for the policy's kind and certificate (None: none are)."""
    classifier = policy.classifier
    two_pass = policy.kind == "two-pass" and (
        policy.certificate in CERTIFICATES and policy.second_ef is not None and policy.threshold is not None
        and (policy.certificate != "classifier" or classifier is not None)
        and (classifier is None or len(classifier.weights) == len(classifier.mean) + 1 == len(classifier.scale) + 1)
        and (policy.fallback_ef is None) == (policy.break_even is None)
        and (policy.guard_low is None) == (policy.guard_high is None)
        and (policy.min_batch is None or (policy.fallback_ef is not None and policy.min_batch >= 1)))
    well_formed = policy.ef >= 1 and (policy.kind == "plain" and policy.min_batch is None or two_pass)
    if well_formed and policy.kind == "two-pass":
        assert policy.certificate is not None  # checked to be one of CERTIFICATES just above
        columns = len(used_columns(policy.certificate, policy.uses_model))
        well_formed = (classifier is None or len(classifier.mean) in (3, 4)) and all(
            bound is None or len(bound) == columns for bound in (policy.guard_low, policy.guard_high))
    return None if well_formed else "inconsistent fields"


def _value_problem(policy: Policy) -> str | None:
    """Numbers `amips tune` never writes (None: none): not finite, out of range or out of order. Each would
    cost recall without a word — a NaN or too high threshold escalates nothing, a break-even below 0 or a
    fallback_ef under ef hands queries to plain search cheaper than the target needs."""
    classifier = policy.classifier
    oversampling = (policy.oversampling, policy.second_oversampling, policy.fallback_oversampling)
    if not all(x is None or 1 <= x <= MAX_OVERSAMPLING for x in oversampling):  # NaN fails too
        return f"an oversampling is not in [1, {MAX_OVERSAMPLING:g}]"
    numbers = (policy.threshold, policy.target, policy.break_even, *(policy.guard_low or ()),
               *(policy.guard_high or ()), *((*classifier.mean, *classifier.scale, *classifier.weights)
                                             if classifier else ()))
    if not all(math.isfinite(x) for x in numbers if x is not None):
        return "a number is not finite"
    if policy.target is not None and not 0 < policy.target < 1:
        return f"target {policy.target:g} is not in (0, 1)"
    if policy.kind == "plain":
        return None
    assert policy.second_ef is not None  # _shape_problem
    low, high = policy.guard_low or (), policy.guard_high or ()
    rules = ((policy.first.below(policy.second),
              f"the second pass ({policy.second.describe()}) is not above the first ({policy.first.describe()})"),
             (policy.fallback is None or not policy.fallback.below(policy.first),
              f"the fallback ({policy.fallback.describe() if policy.fallback else ''}) is below the first pass "
              f"({policy.first.describe()})"),
             (policy.break_even is None or 0 <= policy.break_even <= 1,
              f"break_even {policy.break_even} is not in [0, 1]"),
             (classifier is None or min(classifier.scale) > 0, "a classifier scale is not positive"),
             (all(a <= b for a, b in zip(low, high)), "guard_low exceeds guard_high"))
    return next((reason for ok, reason in rules if not ok), None) or _threshold_problem(policy)


def _threshold_problem(policy: Policy) -> str | None:
    """Why the threshold cuts outside the suspicions c(x) that the calibrated feature range allows (None: it
    does not, or the policy stores no range). Above them it flags no query in range, below them every one;
    tune's calibration cuts between suspicions of in-range queries (the slack allows for rounding)."""
    if policy.guard_low is None or policy.guard_high is None:
        return None
    assert policy.certificate is not None and policy.threshold is not None  # _shape_problem
    low, high = suspicion_span(policy.certificate, policy.guard_low, policy.guard_high, policy.classifier)
    slack = 1e-6 * (1.0 + abs(low) + abs(high))
    if low - slack <= policy.threshold <= high + slack:
        return None
    return f"threshold {policy.threshold:g} is outside [{low:g}, {high:g}], the suspicions of its calibrated range"


def suspicion_span(certificate: str, low: tuple[float, ...], high: tuple[float, ...],
                   classifier: Classifier | None = None) -> tuple[float, float]:
    """The least and greatest c(x) over the box low ≤ z ≤ high of the certificate's used feature columns."""
    if certificate == "s1":
        return -high[0], -low[0]
    if certificate == "margin":
        return low[0], high[0]
    assert classifier is not None
    w = np.asarray(classifier.weights)
    ends = w[1:] * (np.array([low, high]) - np.asarray(classifier.mean)) / np.asarray(classifier.scale)
    return float(w[0] + ends.min(axis=0).sum()), float(w[0] + ends.max(axis=0).sum())


def merge(first: SearchResult, second: SearchResult, rows: np.ndarray, limit: int) -> SearchResult:
    """Top `limit` of the union of both passes for `rows` (second holds only those rows), first's elsewhere."""
    first_ids, second_ids = point_ids.common([first.ids, second.ids])  # int64 ids, or UUIDs as text
    ids, scores = first_ids[:, :limit].copy(), first.scores[:, :limit].copy()
    has_versions = first.versions is not None and second.versions is not None
    first_versions = first.versions if first.versions is not None else np.zeros(first.ids.shape, dtype=np.int64)
    second_versions = second.versions if second.versions is not None else np.zeros(second.ids.shape, dtype=np.int64)
    versions = first_versions[:, :limit].copy()
    for at, row in enumerate(rows):
        pool_ids = np.concatenate([first_ids[row], second_ids[at]])
        pool_scores = np.concatenate([first.scores[row], second.scores[at]])
        pool_versions = np.concatenate([first_versions[row], second_versions[at]])
        keep = point_ids.present(pool_ids)
        pool_ids, pool_scores, pool_versions = pool_ids[keep], pool_scores[keep], pool_versions[keep]
        order = np.argsort(-pool_scores, kind="stable")
        _, first_seen = np.unique(pool_ids[order], return_index=True)
        best = order[np.sort(first_seen)][:limit]
        ids[row], scores[row], versions[row] = point_ids.padding(ids), -np.inf, 0
        ids[row, :len(best)], scores[row, :len(best)] = pool_ids[best], pool_scores[best]
        versions[row, :len(best)] = pool_versions[best]
    return SearchResult(ids, scores, versions if has_versions else None)


class ShiftGuard:
    """The escalated share of a two-pass policy's recent queries, and whether plain search is cheaper now."""

    def __init__(self, limit: float, prior: float | None = None) -> None:
        """`prior`: the share escalated at tuning, which the average starts from as if GUARD_WINDOW queries had
        shown it (None: the first observation sets it), so one unlucky first query moves it by 1/GUARD_WINDOW
        and cannot hand a whole stream to plain search."""
        self.limit = limit  # Policy.shift_limit
        self.share: float | None = prior  # exponentially weighted over ≈ GUARD_WINDOW queries
        self.probes = 0  # heads seen while plain search was cheaper (every PROBE_EVERY-th is served two-pass)
        self.answered_plain = 0  # queries the guard sent to plain search, in all

    def plain_now(self, may_probe: bool = True) -> bool:
        """Serve the next piece by plain search? While the share is above break-even, yes — except every
        PROBE_EVERY-th piece that `may_probe` (a batch's head, at most GUARD_CHUNK queries), served two-pass."""
        if self.share is None or self.share <= self.limit:
            return False
        if not may_probe:
            return True
        self.probes += 1
        return self.probes % PROBE_EVERY != 0

    def observe(self, escalated: np.ndarray) -> None:
        weight = min(1.0, len(escalated) / GUARD_WINDOW)
        share = np.count_nonzero(escalated) / len(escalated) if len(escalated) else 0.0
        self.share = share if self.share is None else (1 - weight) * self.share + weight * share


def serve(store: VectorStore, collection: str, queries: np.ndarray, limit: int, policy: Policy,
          model: MIPSModel | None = None, params: SearchParams = SearchParams(),
          guard: ShiftGuard | None = None) -> tuple[SearchResult, np.ndarray]:
    """Answer `queries` with `policy`; returns the results and which queries were escalated.
    `params` supplies the engine knobs other than hnsw_ef (oversampling, a filter); a policy that reads σ̂
    needs `model`. A plain policy, and a call of fewer queries than a two-pass policy's `min_batch`, get one plain
    search (`Policy.plain_pass_for`), escalating none. With a `guard` (and a policy that names its fallback_ef), the
    first GUARD_CHUNK queries and then the rest are each served two-pass or — while the guard sees the
    escalated share above break-even — by plain search at fallback_ef (two pieces at most, so that a large
    batch of unusual queries is noticed after its head, and a usual one costs one more store call, not one
    per chunk)."""
    plain_pass = policy.plain_pass_for(len(queries))
    if plain_pass is not None:
        return store.search(collection, queries, limit, plain_pass.params(params)), np.zeros(len(queries), dtype=bool)
    fallback = policy.fallback
    if guard is None or fallback is None:
        return _serve(store, collection, queries, limit, policy, model, params)

    def piece(part: np.ndarray, head: bool) -> tuple[SearchResult, np.ndarray]:
        if guard.plain_now(may_probe=head):
            guard.answered_plain += len(part)
            return store.search(collection, part, limit, fallback.params(params)), np.zeros(len(part), dtype=bool)
        answer, escalated = _serve(store, collection, part, limit, policy, model, params)
        guard.observe(escalated)
        return answer, escalated

    if len(queries) <= GUARD_CHUNK:
        return piece(queries, head=True)
    (first, first_escalated), (rest, rest_escalated) = piece(queries[:GUARD_CHUNK], True), piece(
        queries[GUARD_CHUNK:], False)
    result = SearchResult.empty(len(queries), limit).assign(slice(0, GUARD_CHUNK), first)
    return result.assign(slice(GUARD_CHUNK, None), rest), np.concatenate([first_escalated, rest_escalated])


def _serve(store: VectorStore, collection: str, queries: np.ndarray, limit: int, policy: Policy,
           model: MIPSModel | None, params: SearchParams) -> tuple[SearchResult, np.ndarray]:
    """Two passes: the first for every query, the second for those the certificate flags."""
    depth = max(limit, DEPTH)
    first = store.search(collection, queries, depth, policy.first.params(params))
    sigma = support_values(model, queries) if policy.uses_model and model is not None else None
    if policy.uses_model and sigma is None:
        raise ValueError("this policy's certificate reads σ̂: pass the collection's model")
    escalated = policy.flag(queries, first.scores, sigma)
    rows = escalated.nonzero()[0]
    if not len(rows):
        return first.head(limit), escalated
    second = store.search(collection, queries[rows], limit, policy.second.params(params))
    return merge(first, second, rows, limit), escalated


ModelLookup = Callable[[str, int, "int | None"], "tuple[MIPSModel | None, ModelManifestSchema | None, str | None]"]


def stored_policy(store: VectorStore, collection: str, dim: int, count: int,
                  model_for: ModelLookup) -> tuple[Policy | None, MIPSModel | None, str | None]:
    """(policy, the model its certificate reads, None), or (None, None, why plain search instead).
    Never raises for a missing, stale, malformed or model-less policy; stale is amips_plugin/freshness.py's
    one rule."""
    try:
        manifest = as_schema(store.read_manifest(collection, SLOT), PolicyManifestSchema)
        if manifest is None:
            return None, None, "no serving policy for this collection (run `amips tune`)"
        policy = Policy.from_manifest(manifest)
        stamp, storage = store.write_stamp(collection), store.storage(collection)
    except AmipsError as exc:
        return None, None, f"the serving policy cannot be read: {exc}"
    model, model_manifest, reason = model_for(collection, dim, count) if policy.uses_model else (None, None, None)
    why = stale_reason(manifest, stamp, count, storage=storage,
                       model_sha256=model_manifest.sha256 if model_manifest else NOT_CHECKED)
    if why:
        return None, None, f"the serving policy is stale ({why}); run `amips tune`"
    if policy.uses_model and model is None:
        return None, None, f"the serving policy reads the model, which cannot be used: {reason}"
    return policy, model, None


def policy_status(manifest: PolicyManifestSchema | None, stale: bool) -> dict[str, Any] | None:
    """What `amips status` shows of a stored policy: what it does, its target, measured figures, and
    `stale` (amips_plugin/freshness.py's rule, the model it reads included)."""
    if manifest is None:
        return None
    try:
        policy = Policy.from_manifest(manifest)
    except ArtifactError as exc:
        return {"version": manifest.version, "stale": True, "describe": f"unreadable: {exc}"}
    return {"version": manifest.version, "stale": stale, "describe": policy.describe(),
            "target": policy.target, "measured": policy.measured}
