"""The timing harness shared by `amips search --single`, `amips tune` and the benchmarks, on a fake clock."""
import numpy as np
import pytest

from amips_plugin.core import timing


@pytest.fixture
def clock(monkeypatch):
    """A clock that only moves when a task advances it."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])

    def advance(seconds):
        now[0] += seconds
    return advance


def test_timed_returns_the_result_and_the_seconds_it_took(clock):
    assert timing.timed(lambda: clock(0.25) or "done") == ("done", 0.25)


def test_one_at_a_time_answers_each_row_alone_in_order_and_times_each_call(clock):
    queries = np.arange(12, dtype=np.float32).reshape(4, 3)

    def answer(batch):
        clock(0.001 * (1 + batch[0, 0]))  # the row's first value sets its cost
        return batch.copy()

    answers, seconds = timing.one_at_a_time(answer, queries)
    assert [a.shape for a in answers] == [(1, 3)] * 4
    np.testing.assert_array_equal(np.concatenate(answers), queries)
    np.testing.assert_allclose(seconds, [0.001, 0.004, 0.007, 0.010])


def test_latency_ms_is_p50_and_p99_of_the_calls_in_milliseconds():
    seconds = np.r_[np.full(99, 0.002), 0.102]  # one slow call in a hundred
    p50, p99 = timing.latency_ms(seconds)
    assert p50 == pytest.approx(2.0)
    assert p99 == pytest.approx(2.0 + 0.01 * 100.0)  # rank 0.99·99 = 98.01: 1% of the way from 2 ms to 102 ms


def test_best_times_interleaves_the_rounds_and_keeps_each_tasks_fastest(clock):
    costs = {"a": iter([0.03, 0.01, 0.02]), "b": iter([0.005, 0.02, 0.004])}
    calls = []

    def task(name):
        calls.append(name)
        clock(next(costs[name]))

    best = timing.best_times({"a": lambda: task("a"), "b": lambda: task("b")}, repeats=3)
    assert calls == ["a", "b"] * 3
    assert best == pytest.approx({"a": 0.01, "b": 0.004})
