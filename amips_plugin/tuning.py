"""`amips tune`: measure every serving policy in this store, keep the cheapest that meets a declared
recall@1, and publish it in the collection's "policy" manifest slot (amips_plugin/serving_policy.py).

1. The query sample is split at random (`split_sample`) into a fit part (the classifier certificate's
   training data and the guard's feature range: FIT_SHARE of the sample, at least FIT_MIN queries or
   half) and a held-out part, itself halved: on the *select* half each certificate's passes (ef₁, ef₂)
   are picked, on the disjoint *certify* half its threshold is set and the recall it promises is
   measured. Picking the cheapest of a hundred calibrated plans on the queries that calibrated them
   flatters the winner (the winner's curse: on squad-train, 9 of 13 such policies promised ≥ 0.99 and
   measured 0.9855–0.9895 on the test questions); a threshold scan from the most to the least
   escalating on fresh queries is a fixed-sequence test, so its Wilson lower bound holds for the pick.
   A pick must clear the target on the select half with more room (PICK_Z) than the promise asks, and of
   the plans predicted within MIN_GAIN of the cheapest, the one whose passes reach the most (escalating
   every query) is picked: else the pick is often a plan at the edge of what its passes can reach, which
   the fresh half then refuses.
   The promise is that bound, whose margin below the measured recall shrinks as 1/√n (1.645·√(0.0099/n):
   0.0030 at n = 3,000, 0.0015 at n = 12,000), and every point of that margin is paid for in escalated
   queries; a logistic regression on at most four features needs far fewer. Exact answers come from a
   scan of the collection's keys.
2. Plain search is run at every setting of the grid (limit max(limit, DEPTH)); these runs are also
   the two-pass policies' first and second passes, so every (certificate, ef₁ < ef₂) pair is
   calibrated on the select half (`calibrate_threshold`) and its batch cost predicted from the
   measured per-query time t(ef): t(ef₁) + t(σ̂) + (escalated share)·t(ef₂). Plain search's settings
   form an ordered sequence with no threshold to fit, so they are read on the whole held-out part.
3. The cheapest plain ef whose recall's lower bound clears the target, and each certificate's
   cheapest predicted plan (thresholded on the certify half), are then served end to end (`serve`) on
   the held-out part, interleaved, best of `repeats` (so machine noise hits every policy alike). From
   plain search up through ever more complex plans (the s1 rule, a classifier without σ̂, the
   certificates reading σ̂), a plan replaces the one kept so far only when, still meeting the target
   end to end, it measures at least MIN_GAIN× its batch throughput: within noise, the simpler policy
   (no model, so no model forward per call and no staleness with the model) is kept. A two-pass winner is
   then timed one query a call against that plain search: its per-call work (the certificate, the merge) can
   cost more than it saves on a small call, so it stores the fewest queries a call must bring
   (`smallest_paying_call`); a smaller call, as an application's one query per request, gets plain search.
4. Publication is a compare-and-swap under the store's manifest lock: the policy slot must still
   hold what it held when tuning began. The policy records the keys' fingerprint and, when its
   certificate reads σ̂, the model's SHA-256; it is stale when either changes. A two-pass policy also
   records the plain hnsw_ef meeting the target and its break-even escalated share (t_plain − t₁)/t₂,
   clipped to [0, 1], for the query path's shift guard (serving_policy.ShiftGuard); a first pass at a
   larger hnsw_ef than that plain one is never a candidate. A policy the query path would refuse
   (Policy.problem: a NaN, ef₂ ≤ ef₁, ...) is never stored.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from amips_plugin.adapters.base import SearchParams, SearchResult, VectorStore, WriteStamp

from . import model_registry
from .arrays import check_vectors
from .collection_ops import read_keys
from .core.errors import ArtifactError, InputError
from .core.timing import best_times
from .freshness import storage_key
from .query_bounds import check_search_inputs
from .rewriting import QueryRewriter
from .calibration import (Z_ONE_SIDED_95, Calibration, calibrate_threshold, fit_classifier, guard_range,
                          wilson_lower_bound)
from .serving_policy import (
    CERTIFICATES,
    DEPTH,
    SLOT,
    Effort,
    Policy,
    features,
    serve,
    support_values,
    suspicion,
    used_columns,
)
from .targets import exact_top1

if TYPE_CHECKING:
    from .models import MIPSModel

EF_GRID = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
OVERSAMPLING_GRID = (1.0, 2.0, 4.0)  # on a quantized vector: int8 candidates per result, rescored exactly
MIN_QUERIES = 200
DEFAULT_REPEATS = 3
SINGLES = 200  # held-out queries a chosen two-pass plan and plain search are timed on, one query a call
FIT_SHARE, FIT_MIN = 0.25, 2000  # the fit part of the sample (`fit_size`)
ROOM = 0.25  # min_held_out: the share of the target's allowed misses a policy may have and still be promised
MIN_GAIN = 1.05  # a more complex policy must measure this much faster than a simpler one to be chosen (noise)
PICK_Z = 2.326  # one-sided 99%: a pick must clear the target with this much room on the select half (module doc, 1)


@dataclass(frozen=True)
class SampleSplit:
    """Rows of the query sample (module docstring, 1): `fit` trains the classifier and the guard's range,
    `select` picks each certificate's passes, `certify` sets its threshold and measures what it promises."""

    fit: np.ndarray
    select: np.ndarray
    certify: np.ndarray

    @property
    def held(self) -> np.ndarray:
        """The held-out rows, select then certify (so certify's positions in it are `certify_positions`)."""
        return np.concatenate([self.select, self.certify])

    @property
    def certify_positions(self) -> slice:
        return slice(len(self.select), len(self.select) + len(self.certify))


@dataclass
class Measurements:
    """Every grid setting's search of the whole sample, and what each costs per query."""

    queries: np.ndarray
    first: dict[Effort, SearchResult]  # (limit max(limit, DEPTH)) per setting
    hits: dict[Effort, np.ndarray]  # per setting and query: the exact argmax ranked first
    per_query: dict[Any, float]  # seconds per held-out query, per setting and "sigma" (a σ̂ forward)
    sigma: np.ndarray | None  # σ̂(x) per query, None without a model


@dataclass
class FrontierRow:
    """One policy measured on the held-out part."""

    name: str
    policy: Policy
    recall: float  # plain search: on the held-out part; a two-pass plan: on its certify half
    lower_bound: float
    escalated: float  # share of queries searched twice
    qps: float | None = None  # measured batch throughput (queries per second), end to end
    predicted_qps: float | None = None
    singles: dict[str, float] = field(default_factory=dict)  # a chosen two-pass plan: one query a call, q/s

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy.to_manifest(), "recall": self.recall,
                "lower_bound": self.lower_bound, "escalated": self.escalated, "qps": self.qps,
                "predicted_qps": self.predicted_qps}


@dataclass
class TuneReport:
    target: float
    held_out: int
    chosen: FrontierRow
    plain: FrontierRow
    rows: list[FrontierRow] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # knobs this store does not have

    @property
    def speedup(self) -> float:
        return (self.chosen.qps or 0.0) / (self.plain.qps or float("nan"))

    def verdict(self) -> str:
        plain = self.plain.policy.first.describe()
        if self.notes:
            return f"{'; '.join(self.notes)}; the stored policy is plain search"
        if self.chosen.policy.kind == "plain":
            return (f"plain search wins: no two-pass policy beat {plain} at recall@1 ≥ {self.target} here; the "
                    f"stored policy is plain search at {plain}")
        verdict = (f"{self.chosen.name} wins: {self.speedup:.2f}× the batch throughput of plain search at {plain}, "
                   f"the cheapest plain search meeting recall@1 ≥ {self.target}")
        singles, min_batch = self.chosen.singles, self.chosen.policy.min_batch or 1
        if min_batch > 1 and singles:
            verdict += (f"; one query a call it measured {singles['single_qps']:,.0f} q/s against plain's "
                        f"{singles['plain_single_qps']:,.0f}, so calls of fewer than {min_batch} queries get plain "
                        f"search at {plain}")
        return verdict

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "held_out": self.held_out, "chosen": self.chosen.to_dict(),
                "plain": self.plain.to_dict(), "speedup": self.speedup, "verdict": self.verdict(),
                "rows": [r.to_dict() for r in self.rows], "manifest": self.manifest, "notes": self.notes}


def tune(store: VectorStore, collection: str, queries: np.ndarray, target: float, limit: int = 10,
         repeats: int = DEFAULT_REPEATS, ef_grid: tuple[int, ...] = EF_GRID, seed: int = 0,
         certificates: tuple[str, ...] = CERTIFICATES, publish: bool = True,
         params: SearchParams = SearchParams(),
         oversampling_grid: tuple[float, ...] | None = None, progress: bool = False) -> TuneReport:
    """Measure, choose and (with `publish`) store the cheapest policy meeting recall@1 ≥ `target`.

    Every search pass is one `Effort` of the grid: an hnsw_ef of `ef_grid` and, on a vector with int8
    copies, an oversampling of `oversampling_grid` (default OVERSAMPLING_GRID; rescored with the
    originals). A store that searches exactly (qdrant-client local mode) has no such knob: one plain
    policy is measured and stored, and the report says so. `progress`: a bar over the settings' searches
    (each runs every sample query once; timing rounds follow, `repeats` more passes over the held-out part)."""
    check_target(target)
    check_search_inputs(limit, None, params)  # limit ≤ MAX_LIMIT, as for any search
    info = store.info(collection)
    queries = check_vectors(np.asarray(queries), "queries", dim=info.dim)
    if len(queries) < MIN_QUERIES:
        raise InputError(f"tune needs at least {MIN_QUERIES} sample queries, got {len(queries)}")
    check_sample_size(len(queries), target)
    grid, notes = search_grid(store, collection, ef_grid, oversampling_grid, params)
    expected = model_registry.read_for_replace(store, collection, SLOT)  # a broken policy is replaced
    stamp = store.write_stamp(collection, create=publish)  # before the keys: a write while tuning makes it stale
    keys, ids, fingerprint = read_keys(store, collection)
    truth = ids[exact_top1(keys, queries).index]
    del keys
    model, manifest, _ = QueryRewriter(store).model_for(collection, info.dim, info.count)
    split = split_sample(len(queries), seed)
    held = split.held
    depth = max(limit, DEPTH)

    first = {effort: store.search(collection, queries, depth, effort.params(params))
             for effort in tqdm(grid, desc=f"tune {collection}: search settings", unit="setting", disable=not progress)}
    held_queries = queries[held]
    tasks: dict[Any, Callable[[], Any]] = {
        effort: partial(store.search, collection, held_queries, depth, effort.params(params)) for effort in grid}
    if model is not None:
        tasks["sigma"] = lambda: support_values(model, held_queries)
    seconds = best_times(tasks, repeats)
    measured = Measurements(queries, first, {effort: first[effort].ids[:, 0] == truth for effort in grid},
                            {name: s / len(held) for name, s in seconds.items()},
                            support_values(model, queries) if model is not None else None)
    per_query = measured.per_query

    def plain_row(effort: Effort) -> FrontierRow:
        k = int(measured.hits[effort][held].sum())
        policy = Policy("plain", effort.ef, target=target, oversampling=effort.oversampling)
        return FrontierRow(f"plain {effort.label}", policy, k / len(held), wilson_lower_bound(k, len(held)), 0.0,
                           predicted_qps=1 / per_query[effort])

    plain_rows = sorted((plain_row(effort) for effort in grid), key=lambda r: per_query[r.policy.first])
    meeting = [r for r in plain_rows if r.lower_bound >= target]
    if not meeting:
        best = max(plain_rows, key=lambda r: r.recall)
        raise InputError(f"no search setting up to {grid[-1].describe()} reaches recall@1 {target} on the held-out "
                         f"queries with margin (best: {best.recall:.4f} at {best.policy.first.describe()}); lower the "
                         "target")
    least = [r for r in meeting if not any(o.policy.first.below(r.policy.first) for o in meeting)]
    plain = least[0]  # of the least efforts meeting the target (the smallest ef, on one knob), the fastest measured
    plain_cost = per_query[plain.policy.first]
    if not notes and len(split.certify) < min_held_out(target):
        notes.append(f"{len(queries):,} sample queries certify two-pass plans on {len(split.certify):,}; recall@1 "
                     f"{target} needs {min_held_out(target):,} (a sample of {two_pass_sample_size(target):,})")
    first_passes = first_passes_that_can_pay(grid, plain.policy.first, per_query)
    candidates = [plain] + ([] if notes else _two_pass_candidates(certificates, grid, first_passes, measured, split,
                                                                  target, model is not None))
    for row in candidates[1:]:
        policy = row.policy
        first_cost = per_query[policy.first] + (per_query.get("sigma", 0.0) if policy.uses_model else 0.0)
        row.policy = replace(policy,
                             model_sha256=manifest.sha256 if manifest and policy.uses_model else None,
                             fallback_ef=plain.policy.ef, fallback_oversampling=plain.policy.oversampling,
                             break_even=min(1.0, max(0.0, (plain_cost - first_cost) / per_query[policy.second])))
    timed = best_times({row.name: partial(serve, store, collection, held_queries, limit, row.policy, model, params)
                        for row in candidates}, repeats)
    for row in candidates:
        row.qps = len(held) / timed[row.name]
        result, escalated = serve(store, collection, held_queries, limit, row.policy, model, params)
        rows = slice(None) if row is plain else split.certify_positions  # where this row's promise was made
        found = result.ids[rows, 0] == truth[held][rows]
        k, n = int(found.sum()), len(found)
        row.recall, row.lower_bound, row.escalated = k / n, wilson_lower_bound(k, n), float(escalated[rows].mean())
    chosen = choose(plain, candidates[1:], target)
    if chosen.policy.kind == "two-pass":
        chosen.policy = with_min_batch(store, collection, held_queries, limit, chosen, plain, model, params, repeats)
    report = TuneReport(target, len(held), chosen, plain, plain_rows[: plain_rows.index(plain) + 1] + candidates[1:],
                        notes=notes)
    if publish:
        policy = replace(chosen.policy, target=target,
                         measured={"recall": chosen.recall, "lower_bound": chosen.lower_bound,
                                   "escalated": chosen.escalated, "qps": chosen.qps, "plain_ef": plain.policy.ef,
                                   "plain_oversampling": plain.policy.oversampling, "plain_qps": plain.qps,
                                   "held_out": len(held), "limit": limit, **chosen.singles})
        report.manifest = publish_policy(store, collection, policy, fingerprint, expected, stamp)
    return report


def search_grid(store: VectorStore, collection: str, ef_grid: tuple[int, ...],
                oversampling_grid: tuple[float, ...] | None, params: SearchParams) -> tuple[list[Effort], list[str]]:
    """The search settings to measure, cheapest knobs first, and notes on knobs this store does not have."""
    scans = store.exact_scan_reason(collection)
    if scans:
        advice = "" if store.searches_exactly else (
            f"; `amips advise {collection}` measures an HNSW-indexed copy, and its --apply moves the collection to it")
        # the most thorough setting: should the collection be indexed later (`advise --apply`, growth) before it
        # is tuned again, the stored policy still searches thoroughly rather than at the cheapest hnsw_ef
        return [Effort(max(ef_grid))], [f"{scans}: hnsw_ef and oversampling do not apply, and plain search is "
                                        f"stored untuned{advice}"]
    quantized = store.quantized(collection)
    if not quantized or params.oversampling is not None:  # no int8 copies, or the caller fixed it
        return [Effort(ef) for ef in sorted(set(ef_grid))], []
    return [Effort(ef, factor) for ef in sorted(set(ef_grid))
            for factor in sorted(set(oversampling_grid or OVERSAMPLING_GRID))], []


def check_target(target: float) -> None:
    """InputError unless the declared recall@1 lies strictly between 0 and 1."""
    if not 0 < target < 1:
        raise InputError(f"--target-recall must lie strictly between 0 and 1, got {target}")


def split_sample(samples: int, seed: int) -> SampleSplit:
    """The sample's rows, drawn at random: `fit_size` of them fit, the rest are held out and halved."""
    rows = np.random.default_rng(seed).permutation(samples)
    fit, held = rows[: fit_size(samples)], rows[fit_size(samples):]
    return SampleSplit(fit, held[: len(held) // 2], held[len(held) // 2:])


def check_sample_size(samples: int, target: float) -> None:
    """InputError, naming the sample size needed, when `samples` queries hold out too few for `target`."""
    held_out, needed = samples - fit_size(samples), min_held_out(target)
    if held_out < needed:
        raise InputError(f"{samples:,} sample queries hold out {held_out:,} for calibration; recall@1 {target} "
                         f"needs at least {needed:,} (a sample of {sample_size_for(needed):,}) to be promised with "
                         "margin — pass more queries, or lower the target")


def min_held_out(target: float) -> int:
    """The fewest held-out queries on which a policy missing ROOM of the misses `target` allows still clears
    it (Wilson lower bound). On fewer, only a policy that misses (almost) nothing can be stored, and picking
    the cheapest such among many measured flatters it: 0.9832 on unseen queries for a 0.99 target tuned on
    404 held-out queries (issue 24.4). 477 for 0.99, 156 for 0.97, 92 for 0.95."""
    def clears(n: int) -> bool:
        return wilson_lower_bound(n * (1 - (1 - target) * ROOM), n) >= target  # increasing in n

    high = 1
    while not clears(high):
        high *= 2
    low = high // 2  # clears(low) is False (or low is 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if clears(middle) else (middle, high)
    return high


def two_pass_sample_size(target: float) -> int:
    """The smallest sample whose certify half holds `min_held_out(target)` queries."""
    return sample_size_for(2 * min_held_out(target))


def sample_size_for(held_out: int) -> int:
    """The smallest sample of which `fit_size` leaves `held_out` queries for calibration."""
    samples = held_out
    while samples - fit_size(samples) < held_out:
        samples += 1
    return samples


def fit_size(samples: int) -> int:
    """Queries of the sample that fit the classifier and the guard's range: FIT_SHARE of them, but at
    least FIT_MIN (or half the sample, if that is fewer); the rest are held out for calibration."""
    return max(int(FIT_SHARE * samples), min(samples // 2, FIT_MIN))


def first_passes_that_can_pay(grid: list[Effort], plain: Effort, per_query: dict[Any, float]) -> list[Effort]:
    """The efforts a two-pass plan may start with: a plan costs t(first) + p·t(second), so a first pass that is
    plain's own effort, beyond it, or measured no cheaper than it costs at least plain search for any share p
    escalated (its break-even share is 0)."""
    cost = per_query[plain]
    return [effort for effort in grid if not plain.below(effort) and per_query[effort] < cost]  # plain's: not <


def with_min_batch(store: VectorStore, collection: str, held_queries: np.ndarray, limit: int, chosen: FrontierRow,
                   plain: FrontierRow, model: MIPSModel | None, params: SearchParams, repeats: int) -> Policy:
    """The chosen two-pass policy with its `min_batch` (`Policy.two_pass_for`): the first SINGLES held-out queries
    served one a call by the plan and by plain search, interleaved, best of `repeats`; `chosen.singles` gets both
    throughputs."""
    singles = held_queries[:SINGLES]

    def one_a_call(policy: Policy) -> Callable[[], Any]:
        return lambda: [serve(store, collection, singles[row:row + 1], limit, policy, model, params)
                        for row in range(len(singles))]

    seconds = best_times({"plan": one_a_call(chosen.policy), "plain": one_a_call(plain.policy)}, repeats)
    chosen.singles = {"single_qps": len(singles) / seconds["plan"], "plain_single_qps": len(singles) / seconds["plain"]}
    assert chosen.qps and plain.qps  # measured end to end just before
    return replace(chosen.policy, min_batch=smallest_paying_call(
        plan=(seconds["plan"] / len(singles), 1 / chosen.qps), plain=(seconds["plain"] / len(singles), 1 / plain.qps),
        batch=len(held_queries)))


def smallest_paying_call(plan: tuple[float, float], plain: tuple[float, float], batch: int) -> int:
    """The fewest queries a call must bring for a two-pass plan to cost less than plain search, from each one's
    seconds per query measured one query a call and in a call of `batch` queries, (t(1), t(batch)).

    Per query, a call of m queries costs t(m) = a/m + b: a, the call's own work (a two-pass plan's certificate
    and merge are a few numpy calls at any m), b, each query's. Two measurements give a = (t(1) − t(batch))·
    batch/(batch − 1) and b = t(1) − a; the plan costs less from m* = (a_plan − a_plain)/(b_plain − b_plan) on.
    1 when the plan costs less one query a call; when it costs less only in the batch, m* lies in [1, batch)
    and the answer in [2, batch]."""
    if plan[0] < plain[0] or batch <= 1:
        return 1

    def call_and_query_costs(t: tuple[float, float]) -> tuple[float, float]:
        per_call = (t[0] - t[1]) * batch / (batch - 1)
        return per_call, t[0] - per_call

    (a_plan, b_plan), (a_plain, b_plain) = call_and_query_costs(plan), call_and_query_costs(plain)
    if b_plan >= b_plain:  # no cheaper per query either: the plan never pays (it then lost the batch too)
        return batch
    return int(min(batch, max(2, np.floor((a_plan - a_plain) / (b_plain - b_plan)) + 1)))


def choose(plain: FrontierRow, two_pass: list[FrontierRow], target: float) -> FrontierRow:
    """Plain search, replaced by a more complex plan (simplest first) only when that plan meets the
    target end to end and measures at least MIN_GAIN× the throughput of the one kept so far."""
    chosen = plain
    for row in sorted(two_pass, key=_complexity):
        if row.lower_bound >= target and (row.qps or 0.0) >= MIN_GAIN * (chosen.qps or 0.0):
            chosen = row
    return chosen


def _complexity(row: FrontierRow) -> int:
    """Simplest first: the s1 rule (no model), then a classifier without σ̂, then the certificates reading σ̂."""
    return 2 if row.policy.uses_model else 1 if row.policy.certificate == "classifier" else 0


def _two_pass_candidates(certificates: tuple[str, ...], grid: list[Effort], first_passes: list[Effort],
                         measured: Measurements, split: SampleSplit, target: float,
                         with_model: bool) -> list[FrontierRow]:
    """Per certificate, the (first pass of `first_passes`, more effortful second pass of `grid`) whose calibrated
    plan is cheapest on the select half, thresholded and measured on the certify half (module docstring, 1)."""
    rows = []
    for certificate in certificates:
        if certificate == "margin" and not with_model:
            continue
        picks: list[tuple[float, float, Policy, Effort, np.ndarray, np.ndarray]] = []  # (cost, reach, ...)
        for effort1 in first_passes:
            z = features(measured.queries, measured.first[effort1].scores, measured.sigma)
            columns = used_columns(certificate, with_model)
            missed = ~measured.hits[effort1]
            classifier = fit_classifier(z[split.fit][:, columns], missed[split.fit]) if certificate == "classifier" \
                else None
            low, high = guard_range(z[split.fit], columns)
            probe = Policy("two-pass", effort1.ef, second_ef=grid[-1].ef, certificate=certificate,
                           threshold=float("inf"), classifier=classifier, guard_low=low, guard_high=high,
                           oversampling=effort1.oversampling, target=target)
            always, score = probe.escalate(z), suspicion(certificate, z, classifier)
            for effort2 in (effort for effort in grid if effort1.below(effort)):
                calibration = _calibrate(measured, effort1, effort2, score, always, split.select, target, PICK_Z)
                if calibration is None:
                    continue
                reach = float(np.mean(measured.hits[effort1][split.select] | measured.hits[effort2][split.select]))
                picks.append((_cost(measured, probe, effort2, calibration.escalated / len(split.select)), reach,
                              probe, effort2, score, always))
        if not picks:
            continue
        cheapest = min(pick[0] for pick in picks)  # of the plans within noise of it, the one reaching the most
        _, _, probe, effort2, score, always = max((p for p in picks if p[0] <= MIN_GAIN * cheapest),
                                                  key=lambda p: (p[1], -p[0]))
        calibration = _calibrate(measured, probe.first, effort2, score, always, split.certify, target)
        if calibration is None:  # the pick does not clear the target on fresh queries
            continue
        share = calibration.escalated / len(split.certify)
        policy = replace(probe, second_ef=effort2.ef, second_oversampling=effort2.oversampling,
                         threshold=calibration.threshold)
        rows.append(FrontierRow(f"two-pass {certificate} {probe.first.label}→{effort2.label}", policy,
                                calibration.recall, calibration.lower_bound, share,
                                predicted_qps=1 / _cost(measured, probe, effort2, share)))
    return rows


def _calibrate(measured: Measurements, effort1: Effort, effort2: Effort, score: np.ndarray, always: np.ndarray,
               rows: np.ndarray, target: float, z: float = Z_ONE_SIDED_95) -> Calibration | None:
    """`calibrate_threshold` of the plan (effort1, then effort2 for the suspicious) on the sample's `rows`."""
    hit1 = measured.hits[effort1][rows]
    return calibrate_threshold(score[rows], hit1, hit1 | measured.hits[effort2][rows], target, z, always=always[rows])


def _cost(measured: Measurements, probe: Policy, effort2: Effort, share: float) -> float:
    """Predicted seconds per query: t(ef₁) + t(σ̂) + share·t(ef₂)."""
    sigma = measured.per_query["sigma"] if probe.uses_model else 0.0
    return measured.per_query[probe.first] + sigma + share * measured.per_query[effort2]


def publish_policy(store: VectorStore, collection: str, policy: Policy, fingerprint: dict[str, Any],
                   expected: model_registry.Read,
                   bound_to: WriteStamp | None = model_registry.READ_NOW) -> dict[str, Any]:
    """Commit the policy manifest (model_registry.commit_manifest: the compare-and-swap every publish uses;
    a manifest that does not validate is replaced, not an error). `bound_to`: the collection's write stamp
    when tuning read the keys (default: as it is now). ArtifactError, nothing written, for a policy that the query
    path would refuse (Policy.problem)."""
    problem = policy.problem()
    if problem:
        raise ArtifactError(f"refusing to store a serving policy of {collection!r} "
                            f"that would not read back ({problem})")
    if bound_to is model_registry.READ_NOW:
        bound_to = store.write_stamp(collection, create=True)
    stored_as = store.storage(collection)
    fields = {**policy.to_manifest(), "fingerprint": fingerprint, "id": secrets.randbits(40),
              "storage": None if stored_as is None else storage_key(stored_as)}
    return model_registry.commit_manifest(store, collection, SLOT, fields, expected, bound_to)[0]


def format_frontier(report: TuneReport) -> str:
    """The frontier as a text table, the chosen policy marked, and the verdict."""
    lines = [f"held-out queries: {report.held_out}; target recall@1 ≥ {report.target} (Wilson lower bound, 95%)",
             f"{'policy':<34} {'recall@1':>9} {'lower b.':>9} {'escalated':>9} "
             f"{'q/s measured':>13} {'q/s predicted':>14}"]
    for row in report.rows:
        mark = " *" if row is report.chosen else ""
        measured = f"{row.qps:,.0f}" if row.qps else "-"
        predicted = f"{row.predicted_qps:,.0f}" if row.predicted_qps else "-"
        lines.append(f"{row.name + mark:<34} {row.recall:>9.4f} {row.lower_bound:>9.4f} {row.escalated:>9.1%} "
                     f"{measured:>13} {predicted:>14}")
    lines.append(report.verdict())
    if report.manifest:
        lines.append(f"stored as policy v{report.manifest['version']}; `amips search --mode auto` uses it")
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib's pyplot (Agg), or InputError when it is not installed (checked before tuning starts)."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install 'amips[bench]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(report: TuneReport, path: str) -> None:
    """Recall@1 against predicted batch throughput; the measured end-to-end points on top."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in report.rows:
        kind = "plain" if row.policy.kind == "plain" else row.policy.certificate
        ax.scatter(row.predicted_qps or 0, row.recall, marker="o" if kind == "plain" else "s", label=row.name)
        if row.qps:
            ax.scatter(row.qps, row.recall, marker="x", color="black")
    ax.axhline(report.target, linestyle="--", color="grey")
    ax.set_xlabel("batch throughput, queries/s (o/s: predicted, x: measured)")
    ax.set_ylabel("recall@1, held-out queries")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
