"""`amips tune`: measure every serving policy in this store, keep the cheapest that meets a declared
recall@1, and publish it in the collection's "policy" manifest slot (amips_plugin/serving_policy.py).

1. The query sample is split in two at random (`fit_size`): a fit part (the classifier certificate's
   training data and the guard's feature range: FIT_SHARE of the sample, at least FIT_MIN queries or
   half) and a held-out part, on which thresholds are calibrated and every policy is measured. The
   held-out part gets the larger share because the recall promised is its Wilson lower bound, whose
   margin below the measured recall shrinks as 1/√n (1.645·√(0.0099/n): 0.0030 at n = 3,000, 0.0015 at
   n = 12,000), and every point of that margin is paid for in escalated queries; a logistic regression
   on at most four features needs far fewer. Exact answers come from a scan of the collection's keys.
2. Plain search is run at every hnsw_ef of the grid (limit max(limit, DEPTH)); these runs are also
   the two-pass policies' first and second passes, so every (certificate, ef₁ < ef₂) pair is
   calibrated (`calibrate_threshold`) and its batch cost predicted from the measured per-query time
   t(ef): t(ef₁) + t(σ̂) + (escalated share)·t(ef₂).
3. The cheapest plain ef whose recall's lower bound clears the target, and each certificate's
   cheapest predicted plan, are then served end to end (`serve`) on the held-out part, interleaved,
   best of `repeats` (so machine noise hits every policy alike). From plain search up through
   ever more complex plans (the s1 rule, a classifier without σ̂, the certificates reading σ̂), a plan
   replaces the one kept so far only when, still meeting the target end to end, it measures at
   least MIN_GAIN× its batch throughput: within noise, the simpler policy (no model, so no model
   forward per call and no staleness with the model) is kept.
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
from typing import Any

import numpy as np
from tqdm import tqdm

from amips_plugin.adapters.base import SearchParams, VectorStore, WriteStamp

from . import model_registry
from .arrays import check_vectors
from .collection_ops import read_keys
from .core.errors import ArtifactError, InputError
from .core.timing import best_times
from .freshness import storage_key
from .query_bounds import check_search_inputs
from .rewriting import QueryRewriter
from .serving_policy import (
    CERTIFICATES,
    DEPTH,
    SLOT,
    Effort,
    Policy,
    calibrate_threshold,
    features,
    fit_classifier,
    guard_range,
    serve,
    support_values,
    suspicion,
    used_columns,
    wilson_lower_bound,
)
from .targets import exact_top1

EF_GRID = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
OVERSAMPLING_GRID = (1.0, 2.0, 4.0)  # on a quantized vector: int8 candidates per result, rescored exactly
MIN_QUERIES = 200
DEFAULT_REPEATS = 3
FIT_SHARE, FIT_MIN = 0.25, 2000  # the fit part of the sample (`fit_size`)
ROOM = 0.25  # min_held_out: the share of the target's allowed misses a policy may have and still be promised
MIN_GAIN = 1.05  # a more complex policy must measure this much faster than a simpler one to be chosen (noise)


@dataclass
class FrontierRow:
    """One policy measured on the held-out part."""

    name: str
    policy: Policy
    recall: float
    lower_bound: float
    escalated: float  # share of queries searched twice
    qps: float | None = None  # measured batch throughput (queries per second), end to end
    predicted_qps: float | None = None

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
        return (f"{self.chosen.name} wins: {self.speedup:.2f}× the batch throughput of plain search at {plain}, the "
                f"cheapest plain search meeting recall@1 ≥ {self.target}")

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
    stamp = store.write_stamp(collection, create=True)  # before the keys: a write while tuning makes it stale
    keys, ids, fingerprint = read_keys(store, collection)
    truth = ids[exact_top1(keys, queries).index]
    del keys
    model, manifest, _ = QueryRewriter(store).model_for(collection, info.dim, info.count)
    fit, held = split_sample(len(queries), seed)
    depth = max(limit, DEPTH)

    first = {effort: store.search(collection, queries, depth, effort.params(params))
             for effort in tqdm(grid, desc=f"tune {collection}: search settings", unit="setting", disable=not progress)}
    hits = {effort: first[effort].ids[:, 0] == truth for effort in grid}
    held_queries = queries[held]
    tasks: dict[Any, Callable[[], Any]] = {
        effort: partial(store.search, collection, held_queries, depth, effort.params(params)) for effort in grid}
    if model is not None:
        tasks["sigma"] = lambda: support_values(model, held_queries)
    seconds = best_times(tasks, repeats)
    per_query = {name: s / len(held) for name, s in seconds.items()}
    sigma = support_values(model, queries) if model is not None else None

    def plain_row(effort: Effort) -> FrontierRow:
        k = int(hits[effort][held].sum())
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
    candidates = [plain] + ([] if notes else [
        row for row in _two_pass_candidates(certificates, grid, first, hits, queries, sigma, fit, held, target,
                                            per_query, model is not None)
        if not plain.policy.first.below(row.policy.first)])  # a first pass beyond plain search's cannot pay
    for row in candidates[1:]:
        policy = row.policy
        first_cost = per_query[policy.first] + (per_query.get("sigma", 0.0) if policy.uses_model else 0.0)
        row.policy = replace(policy, key_count=info.count,
                             model_sha256=(manifest or {}).get("sha256") if policy.uses_model else None,
                             fallback_ef=plain.policy.ef, fallback_oversampling=plain.policy.oversampling,
                             break_even=min(1.0, max(0.0, (plain_cost - first_cost) / per_query[policy.second])))
    measured = best_times({row.name: partial(serve, store, collection, held_queries, limit, row.policy, model, params)
                           for row in candidates}, repeats)
    for row in candidates:
        row.qps = len(held) / measured[row.name]
        result, escalated = serve(store, collection, held_queries, limit, row.policy, model, params)
        k = int(np.sum(result.ids[:, 0] == truth[held]))
        row.recall, row.lower_bound, row.escalated = (k / len(held), wilson_lower_bound(k, len(held)),
                                                      float(escalated.mean()))
    chosen = choose(plain, candidates[1:], target)
    report = TuneReport(target, len(held), chosen, plain, plain_rows[: plain_rows.index(plain) + 1] + candidates[1:],
                        notes=notes)
    if publish:
        policy = replace(chosen.policy, target=target, key_count=info.count,
                         measured={"recall": chosen.recall, "lower_bound": chosen.lower_bound,
                                   "escalated": chosen.escalated, "qps": chosen.qps, "plain_ef": plain.policy.ef,
                                   "plain_oversampling": plain.policy.oversampling, "plain_qps": plain.qps,
                                   "held_out": len(held), "limit": limit})
        report.manifest = publish_policy(store, collection, policy, fingerprint, expected, stamp)
    return report


def search_grid(store: VectorStore, collection: str, ef_grid: tuple[int, ...],
                oversampling_grid: tuple[float, ...] | None, params: SearchParams) -> tuple[list[Effort], list[str]]:
    """The search settings to measure, cheapest knobs first, and notes on knobs this store does not have."""
    if store.searches_exactly:
        return [Effort(min(ef_grid))], [f"{store.location} searches exactly (brute force: qdrant-client's local mode), "
                                        "so hnsw_ef and oversampling do not apply: plain search is stored, untuned"]
    quantized = store.quantized(collection)
    if not quantized or params.oversampling is not None:  # no int8 copies, or the caller fixed it
        return [Effort(ef) for ef in sorted(set(ef_grid))], []
    return [Effort(ef, factor) for ef in sorted(set(ef_grid))
            for factor in sorted(set(oversampling_grid or OVERSAMPLING_GRID))], []


def check_target(target: float) -> None:
    """InputError unless the declared recall@1 lies strictly between 0 and 1."""
    if not 0 < target < 1:
        raise InputError(f"--target-recall must lie strictly between 0 and 1, got {target}")


def split_sample(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of a sample of `samples` queries, drawn at random (`fit_size` of them fit)."""
    rows = np.random.default_rng(seed).permutation(samples)
    return rows[: fit_size(samples)], rows[fit_size(samples):]


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


def _two_pass_candidates(certificates: tuple[str, ...], grid: list[Effort], first: dict, hits: dict,
                         queries: np.ndarray, sigma: np.ndarray | None, fit: np.ndarray, held: np.ndarray,
                         target: float, per_query: dict[Any, float], with_model: bool) -> list[FrontierRow]:
    """Each certificate's cheapest calibrated (first pass, more effortful second pass, threshold) by predicted cost."""
    rows = []
    for certificate in certificates:
        if certificate == "margin" and not with_model:
            continue
        best: tuple[float, FrontierRow] | None = None
        for effort1 in grid:
            z = features(queries, first[effort1].scores, sigma)
            columns = used_columns(certificate, with_model)
            classifier = (fit_classifier(z[fit][:, columns], ~hits[effort1][fit]) if certificate == "classifier"
                          else None)
            low, high = guard_range(z[fit], columns)
            probe = Policy("two-pass", effort1.ef, second_ef=grid[-1].ef, certificate=certificate,
                           threshold=float("inf"), classifier=classifier, guard_low=low, guard_high=high,
                           oversampling=effort1.oversampling)
            always = probe.escalate(z[held])
            score = suspicion(certificate, z[held], classifier)
            cost_first = per_query[effort1] + (per_query["sigma"] if probe.uses_model else 0.0)
            for effort2 in (effort for effort in grid if effort1.below(effort)):
                calibration = calibrate_threshold(score, hits[effort1][held], hits[effort1][held] | hits[effort2][held],
                                                  target, always=always)
                if calibration is None:
                    continue
                share = calibration.escalated / len(held)
                cost = cost_first + share * per_query[effort2]
                if best is None or cost < best[0]:
                    policy = replace(probe, second_ef=effort2.ef, second_oversampling=effort2.oversampling,
                                     threshold=calibration.threshold, target=target)
                    name = f"two-pass {certificate} {effort1.label}→{effort2.label}"
                    best = (cost, FrontierRow(name, policy, calibration.recall, calibration.lower_bound, share,
                                              predicted_qps=1 / cost))
        if best is not None:
            rows.append(best[1])
    return rows


def publish_policy(store: VectorStore, collection: str, policy: Policy, fingerprint: dict[str, Any],
                   expected: dict[str, Any] | model_registry.BrokenManifest | None,
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
