"""The numbers behind serving policies: the Wilson bound, threshold calibration, the logistic fit, the merge."""
from dataclasses import replace

import numpy as np
import pytest

from amips_plugin.adapters.base import SearchResult
from amips_plugin.core.errors import ArtifactError
from amips_plugin import calibration
from amips_plugin import serving_policy as sp
from amips_plugin import tuning


def test_wilson_lower_bound_matches_the_formula():
    assert abs(calibration.wilson_lower_bound(50, 100) - 0.41884) < 1e-4  # p̂ 0.5, n 100, z 1.645
    assert abs(calibration.wilson_lower_bound(990, 1000) - 0.98334) < 1e-4
    assert calibration.wilson_lower_bound(0, 0) == 0.0


def test_calibration_escalates_the_fewest_most_suspicious_queries_that_clear_the_bound():
    rng = np.random.default_rng(0)
    n = 4000
    score = rng.standard_normal(n)
    hit1 = score < 1.0  # the first pass misses exactly the queries scoring above 1
    hit2 = np.ones(n, dtype=bool)
    c = calibration.calibrate_threshold(score, hit1, hit2, 0.99)
    escalated = score > c.threshold
    assert escalated.sum() == c.escalated
    recall = np.mean(np.where(escalated, hit2, hit1))
    assert recall == c.recall and c.lower_bound >= 0.99 > calibration.wilson_lower_bound(recall * n - 1, n)
    # one escalation fewer would not clear the bound, so some misses (score just above 1) stay unescalated
    assert c.threshold > 1.0
    assert calibration.calibrate_threshold(score, hit1, hit1, 0.99) is None  # a second pass that finds nothing new


def test_calibration_counts_guarded_queries_as_escalated():
    score = np.linspace(0, 1, 1000)
    hit1 = score < 0.9
    always = np.zeros(1000, dtype=bool)
    always[-100:] = True  # the guard already escalates every miss
    c = calibration.calibrate_threshold(score, hit1, np.ones(1000, dtype=bool), 0.99, always=always)
    assert c.escalated == 100 and c.recall == 1.0


def test_logistic_fit_recovers_the_direction_of_a_known_model():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((20000, 3))
    logits = -1.0 + 2.0 * z[:, 0] - 1.0 * z[:, 1]
    missed = rng.random(20000) < 1 / (1 + np.exp(-logits))
    model = calibration.fit_classifier(z, missed)
    w = np.asarray(model.weights)
    assert abs(w[0] + 1.0) < 0.1 and abs(w[1] / model.scale[0] - 2.0) < 0.15 and abs(w[2] / model.scale[1] + 1.0) < 0.1
    assert abs(w[3]) < 0.1


def test_merge_keeps_the_best_of_both_passes_without_duplicates():
    first = SearchResult(np.array([[1, 2, 3], [4, 5, 6]]),
                         np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.6]], dtype=np.float32))
    second = SearchResult(np.array([[7, 1, -1]]), np.array([[0.95, 0.9, -np.inf]], dtype=np.float32))
    merged = sp.merge(first, second, np.array([0]), 3)
    assert merged.ids.tolist() == [[7, 1, 2], [4, 5, 6]]
    assert np.allclose(merged.scores[0], [0.95, 0.9, 0.5])


def test_features_normalise_by_the_query_norm_and_mark_missing_scores():
    q = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    scores = np.array([[5.0, 2.5, 0.0], [0.5, -np.inf, -np.inf]], dtype=np.float32)
    z = sp.features(q, scores, np.array([10.0, 1.0]))
    assert np.allclose(z[0], [1.0, 0.5, 1.0, 1.0])
    assert z[1, 0] == 0.5 and np.isnan(z[1, 1]) and np.isclose(z[1, 3], 0.5)


def test_tune_keeps_the_simpler_policy_unless_a_complex_one_is_clearly_faster():
    from amips_plugin.tuning import FrontierRow, choose

    def row(name, certificate, qps, bound=0.99, with_model=False):
        classifier = sp.Classifier((0,) * 4, (1,) * 4, (0,) * 5) if with_model else None
        policy = (sp.Policy("plain", 64) if certificate is None else
                  sp.Policy("two-pass", 16, 128, certificate, 0.0, classifier))
        return FrontierRow(name, policy, 0.99, bound, 0.1, qps=qps)

    plain, s1 = row("plain", None, 1000), row("s1", "s1", 1600)
    learned = row("classifier σ̂", "classifier", 1650, with_model=True)
    assert choose(plain, [learned, s1], 0.99) is s1  # 1650 is within 5% of 1600
    faster = row("classifier σ̂", "classifier", 1700, with_model=True)
    assert choose(plain, [faster, s1], 0.99) is faster
    assert choose(plain, [row("s1", "s1", 1040)], 0.99) is plain  # within noise of plain
    assert choose(plain, [row("s1", "s1", 5000, bound=0.98)], 0.99) is plain  # misses the target


def test_tune_holds_out_most_of_a_large_sample_and_half_of_a_small_one():
    from amips_plugin.tuning import FIT_MIN, MIN_QUERIES, fit_size

    assert fit_size(16_000) == 4_000  # a quarter fits; 12,000 calibrate (Wilson margin ≈ 0.0015 at 0.99)
    assert fit_size(6_000) == FIT_MIN  # never fewer than FIT_MIN fit queries while the sample has 2·FIT_MIN
    assert fit_size(3_000) == 1_500 and fit_size(MIN_QUERIES) == MIN_QUERIES // 2


def test_shift_guard_turns_to_plain_search_above_break_even_and_back_below_it():
    guard = sp.ShiftGuard(limit=0.3)
    assert not guard.plain_now()  # nothing seen yet: two-pass
    guard.observe(np.ones(256, dtype=bool))  # a whole window escalated
    decisions = [guard.plain_now() for _ in range(16)]  # batch heads: the 8th and 16th are probes
    assert decisions == [i % 8 != 0 for i in range(1, 17)]
    assert all(guard.plain_now(may_probe=False) for _ in range(16))  # the rest of a batch never probes
    guard.observe(np.zeros(256, dtype=bool))  # a probe that escalated nothing
    assert guard.share == 0.0 and not guard.plain_now()
    guard.observe(np.ones(64, dtype=bool))  # a quarter window weighs a quarter
    assert guard.share == 0.25 and not guard.plain_now()


def test_a_policy_with_one_of_fallback_ef_and_break_even_is_malformed():
    policy = sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.2)
    assert sp.Policy.from_manifest(policy.to_manifest()) == policy
    assert "plain search at hnsw_ef 32 while more than 20% are escalated" in policy.describe()
    for field in ("fallback_ef", "break_even"):
        broken = {**policy.to_manifest(), field: None}
        with pytest.raises(ArtifactError, match="malformed"):
            sp.Policy.from_manifest(broken)
    with pytest.raises(ArtifactError, match="malformed"):
        sp.Policy.from_manifest({**policy.to_manifest(), "break_even": float("nan")})


def test_min_batch_belongs_to_a_two_pass_policy_with_a_fallback_and_is_at_least_one():
    policy = sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.2, min_batch=16)
    assert sp.Policy.from_manifest(policy.to_manifest()) == policy
    assert "calls of fewer than 16 queries: plain search at hnsw_ef 32" in policy.describe()
    assert [policy.two_pass_for(n) for n in (1, 15, 16, 1000)] == [False, False, True, True]
    assert replace(policy, min_batch=None).two_pass_for(1) and not sp.Policy("plain", 32).two_pass_for(1000)
    for broken in ({"min_batch": 0}, {"min_batch": 2.5}, {"fallback_ef": None, "break_even": None},
                   {"kind": "plain"}):
        with pytest.raises(ArtifactError, match="malformed"):
            sp.Policy.from_manifest({**policy.to_manifest(), **broken})


def test_the_smallest_paying_call_is_where_per_call_and_per_query_costs_cross():
    """t(m) = a/m + b per query for a call of m queries; the plan (a 210 µs, b 100 µs) costs less than plain
    search (a 80 µs, b 120 µs) from m* = 130/20 = 6.5 on, i.e. from calls of 7 queries."""
    def t(a, b, m):
        return a / m + b

    plan, plain = (210e-6, 100e-6), (80e-6, 120e-6)
    measured = {name: (t(*cost, 1), t(*cost, 2000)) for name, cost in (("plan", plan), ("plain", plain))}
    m = tuning.smallest_paying_call(measured["plan"], measured["plain"], 2000)
    assert m == 7 and t(*plan, m) < t(*plain, m) and t(*plan, m - 1) > t(*plain, m - 1)
    assert tuning.smallest_paying_call((100e-6, 90e-6), (110e-6, 100e-6), 2000) == 1  # cheaper one a call
    assert tuning.smallest_paying_call((300e-6, 100e-6), (100e-6, 90e-6), 2000) == 2000  # never cheaper per query


def test_the_shift_limit_is_the_break_even_or_the_tuned_share_plus_four_deviations_if_lower():
    policy = sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.5, measured={"escalated": 0.05})
    assert policy.shift_limit == pytest.approx(0.05 + 4 * np.sqrt(0.05 * 0.95 / sp.GUARD_WINDOW))
    assert sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.08,
                     measured={"escalated": 0.05}).shift_limit == 0.08
    assert sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.5).shift_limit == 0.5
    assert sp.Policy("two-pass", 8, 64, "s1", 0.1).shift_limit is None


def test_one_unlucky_first_query_does_not_hand_the_stream_to_plain_search():
    """Issue 24.2: the guard starts from the share escalated at tuning, as if a whole window had shown it."""
    policy = sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.5, measured={"escalated": 0.05})
    guard = sp.ShiftGuard(policy.shift_limit, prior=0.05)
    guard.observe(np.ones(1, dtype=bool))  # the first query of a stream, escalated
    assert guard.share == pytest.approx(0.05 + (1 - 0.05) / sp.GUARD_WINDOW) and not guard.plain_now()
    for query in range(298):  # one query per call, as an application sends them, at the tuned share
        guard.observe(np.array([query % 20 == 0]))
        assert not guard.plain_now(may_probe=False)
    for _ in range(256):  # a stream escalated far more often still turns to plain search
        guard.observe(np.ones(1, dtype=bool))
    assert guard.plain_now(may_probe=False)


def test_a_policy_that_escalated_no_tuning_query_is_not_disabled_by_one_escalation():
    """A share of 0 measured at tuning has no spread: a limit of exactly 0 handed the stream to plain search
    at the first escalated query, for good (the average never returns to 0). The spread is floored at one
    query in a window, so an escalation now and then is not a shift, and a shifted stream still is one."""
    policy = sp.Policy("two-pass", 8, 64, "s1", 0.1, fallback_ef=32, break_even=0.5, measured={"escalated": 0.0})
    floor = 1 / sp.GUARD_WINDOW
    assert policy.shift_limit == pytest.approx(sp.SHIFT_SIGMAS * np.sqrt(floor * (1 - floor) / sp.GUARD_WINDOW))
    guard = sp.ShiftGuard(policy.shift_limit, prior=0.0)
    for query in range(1000):  # one escalated query in a hundred, one query per call
        guard.observe(np.array([query % 100 == 0]))
        assert not guard.plain_now(may_probe=False)
    for _ in range(64):
        guard.observe(np.ones(1, dtype=bool))
    assert guard.plain_now(may_probe=False)


def test_a_pass_keeps_every_knob_of_the_callers_params_but_its_own():
    """Effort.params builds SearchParams field by field: a field added to SearchParams must be carried too."""
    import dataclasses

    from amips_plugin.adapters.base import SearchParams

    base = SearchParams(hnsw_ef=7, exact=True, oversampling=3.0, filter={"must": []}, ignore_quantization=True)
    assert {f.name for f in dataclasses.fields(SearchParams)} == {"hnsw_ef", "exact", "oversampling", "filter",
                                                                  "ignore_quantization"}
    assert sp.Effort(64, 2.0).params(base) == replace(base, hnsw_ef=64, oversampling=2.0)
    assert sp.Effort(64).params(base) == replace(base, hnsw_ef=64)


@pytest.mark.parametrize("certificate", sp.CERTIFICATES)
def test_a_few_queries_are_flagged_on_python_floats_exactly_as_a_batch_is(certificate):
    """Policy.flag works out a call of at most FEW_QUERIES queries row by row on Python floats, a larger call
    with numpy: the same queries must be escalated either way — suspicious ones, ones outside the calibrated
    range, and ones whose first pass came back short (−inf scores)."""
    rng = np.random.default_rng(7)
    n, k = 400, 10
    queries = rng.normal(size=(n, 16)).astype(np.float32)
    queries[0] = 0.0  # a zero query: its norm is floored
    scores = -np.sort(-rng.normal(3.0, 1.0, size=(n, k)), axis=1).astype(np.float32)
    scores[1, 5:] = -np.inf  # a short first pass: s_k missing
    scores[2, :] = -np.inf  # no hit at all
    scores[3, 1:] = -np.inf  # one hit: s₂ and s_k missing
    sigma = scores[:, 0] + rng.exponential(0.5, size=n).astype(np.float32)
    with_model = certificate != "s1"
    z = sp.features(queries, scores, sigma if with_model else None)
    columns = sp.used_columns(certificate, with_model)
    finite = z[np.isfinite(z[:, columns]).all(axis=1)][:, columns]
    low, high = np.quantile(finite, 0.05, axis=0), np.quantile(finite, 0.95, axis=0)
    classifier = (sp.Classifier(tuple(finite.mean(axis=0)), tuple(finite.std(axis=0)),
                                tuple(rng.normal(size=len(columns) + 1))) if certificate == "classifier" else None)
    policy = sp.Policy("two-pass", 16, 128, certificate, 0.0, classifier, tuple(low), tuple(high))
    c = sp.suspicion(certificate, z, classifier)
    in_range = c[np.isfinite(c)]
    policy = replace(policy, threshold=float(np.median(in_range)))
    batch = policy.flag(queries, scores, sigma if with_model else None)
    assert len(queries) > sp.FEW_QUERIES and 0.2 < batch.mean() < 0.95  # both kinds of answer occur
    assert batch[2] and (certificate != "classifier" or batch[1:4].all())  # no hit; a short pass where s₂, s_k count
    few = np.concatenate([policy.flag(queries[i:i + sp.FEW_QUERIES], scores[i:i + sp.FEW_QUERIES],
                                      sigma[i:i + sp.FEW_QUERIES] if with_model else None)
                          for i in range(0, n, sp.FEW_QUERIES)])
    assert few.tolist() == batch.tolist()
    no_box = replace(policy, guard_low=None, guard_high=None)
    assert [no_box.flag(queries[i:i + 1], scores[i:i + 1], sigma[i:i + 1] if with_model else None)[0]
            for i in range(40)] == no_box.flag(queries, scores, sigma if with_model else None)[:40].tolist()
