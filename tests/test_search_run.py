"""amips_plugin/search_run.py: one call per query adds up what every call did."""
import numpy as np

from amips_plugin.adapters.base import SearchResult
from amips_plugin.rewriting import SearchReport
from amips_plugin.search_run import run_queries, summary


class EscalatesOddRows:
    """A query path answering row i with id i; the queries whose first coordinate is odd are escalated."""

    store = None

    def search(self, collection, queries, limit, mode, candidates, params, candidate_source):
        rows = queries[:, 0].astype(np.int64)
        ids = np.repeat(rows[:, None], limit, axis=1)
        report = SearchReport(mode=mode, plain=len(rows), escalated=int((rows % 2).sum()))
        return SearchResult(ids, np.zeros(ids.shape, dtype=np.float32)), report


def test_single_queries_add_up_the_escalated_and_plain_counts_of_every_call():
    """--single once reported the escalated count of its last query only."""
    queries = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), dtype=np.float32)
    batch = run_queries(EscalatesOddRows(), "c", queries, 3, "auto")
    single = run_queries(EscalatesOddRows(), "c", queries, 3, "auto", single=True)
    np.testing.assert_array_equal(single.ids, batch.ids)
    assert batch.report.escalated == single.report.escalated == 5
    assert single.report.plain == 10 and single.latencies is not None and len(single.latencies) == 10
    out = summary(EscalatesOddRows(), "c", single, "auto", "engine", 3)
    assert out["escalated"] == 5 and out["latency_ms_p50"] <= out["latency_ms_p99"] and "recall@1" not in out
