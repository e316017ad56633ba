"""Wall-clock timing of searches: the one harness of `amips search --single`, `amips tune` and the benchmarks.

A call's time is `time.perf_counter()` after it minus before it. Latency is taken one query per call;
its percentiles p50 and p99 are those of the per-call times (numpy's linear interpolation), in
milliseconds. Throughput comparisons take, per task, the best of `repeats` interleaved rounds: every
task runs once per round, so a change in the machine's load reaches all tasks alike, and the minimum
drops the rounds that other work slowed down. A task with state across calls (a query stream watched
by the shift guard) is compared by its mean over rounds instead (`round_times`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Hashable, TypeVar

import numpy as np

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)  # a task's name


def timed(call: Callable[[], T]) -> tuple[T, float]:
    """`call()`'s result and the seconds it took."""
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def one_at_a_time(answer: Callable[[np.ndarray], T], queries: np.ndarray) -> tuple[list[T], np.ndarray]:
    """Answer the rows of `queries` (M, d) one per call: the M answers and each call's seconds (M,)."""
    answers: list[T] = []
    seconds = np.empty(len(queries))
    for row in range(len(queries)):
        answer_row, seconds[row] = timed(lambda: answer(queries[row:row + 1]))
        answers.append(answer_row)
    return answers, seconds


def latency_ms(seconds: np.ndarray) -> tuple[float, float]:
    """(p50, p99) of per-call seconds, in milliseconds."""
    p50, p99 = np.percentile(seconds, [50, 99])
    return 1000 * float(p50), 1000 * float(p99)


def round_times(tasks: dict[K, Callable[[], Any]], repeats: int) -> dict[K, np.ndarray]:
    """Seconds per task in each of `repeats` interleaved rounds (every task once per round, in order)."""
    seconds = {name: np.empty(repeats) for name in tasks}
    for round_ in range(repeats):
        for name, task in tasks.items():
            seconds[name][round_] = timed(task)[1]
    return seconds


def best_times(tasks: dict[K, Callable[[], Any]], repeats: int) -> dict[K, float]:
    """Seconds per task, best of `repeats` interleaved rounds."""
    return {name: float(times.min()) for name, times in round_times(tasks, repeats).items()}
