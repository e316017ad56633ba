"""FAISS adapters: exact answers where the index is exhaustive, and costs counted as computed."""
from __future__ import annotations

import numpy as np
import pytest

from amips_plugin.adapters.base import SearchParams
from bench.faiss_store import FlatIndex, HNSWIndex, IVFIndex
from amips_plugin.synthetic import gaussian_mixture


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys, queries = gaussian_mixture(3000, 200, 24, clusters=12, seed=3)
    truth = np.argmax(queries @ keys.T, axis=1)
    return keys, queries, truth


def test_flat_is_exact_and_costs_n(data):
    keys, queries, truth = data
    hits = FlatIndex(keys).search(queries, 1)
    assert np.array_equal(hits.ids[:, 0], truth)
    assert hits.ipe == len(keys)


def test_ivf_probing_every_list_is_exact_and_costs_lists_plus_keys(data):
    keys, queries, truth = data
    ivf = IVFIndex(keys, nlist=30)
    assert ivf.list_sizes.sum() == len(keys)
    full = ivf.search(queries, 1, nprobe=30)
    assert np.array_equal(full.ids[:, 0], truth)
    assert full.ipe == pytest.approx(30 + len(keys))
    one = ivf.search(queries, 1, nprobe=1)
    assert 30 < one.ipe < 30 + ivf.list_sizes.max() + 1
    assert np.mean(one.ids[:, 0] == truth) < 1.0  # one list misses some answers on this mixture


def test_ivf_over_a_given_partition_scans_exactly_the_chosen_lists(data):
    keys, queries, _ = data
    assignment = np.arange(len(keys)) % 7
    centroids = np.stack([keys[assignment == j].mean(axis=0) for j in range(7)])
    ivf = IVFIndex(keys, nlist=7, centroids=centroids, assignment=assignment)
    lists = np.tile([2, 5], (len(queries), 1))
    hits = ivf.search_lists(queries, 3, lists)
    allowed = np.flatnonzero(np.isin(assignment, [2, 5]))
    expected = allowed[np.argmax(queries @ keys[allowed].T, axis=1)]
    assert np.array_equal(hits.ids[:, 0], expected)
    assert np.isin(hits.ids, allowed).all()
    assert hits.ipe == pytest.approx(ivf.list_sizes[[2, 5]].sum())


def test_hnsw_counts_distances_and_widens_with_ef(data):
    keys, queries, truth = data
    hnsw = HNSWIndex(keys, links=16)
    narrow, wide = hnsw.search(queries, 1, ef_search=1), hnsw.search(queries, 1, ef_search=128)
    assert 0 < narrow.ipe < wide.ipe < len(keys)
    assert np.mean(wide.ids[:, 0] == truth) >= np.mean(narrow.ids[:, 0] == truth)
    assert np.mean(wide.ids[:, 0] == truth) > 0.9


def test_the_benchmarks_faiss_store_runs_the_products_query_path():
    """bench's FAISS HNSW store is a VectorStore: the product's QueryRewriter runs on it unchanged, and
    its prefetch + exact rescoring counts one inner product per rescored candidate."""
    from amips_plugin.rewriting import QueryRewriter
    from amips_plugin.synthetic import gaussian_mixture
    from bench.faiss_policy_store import FaissHNSWStore

    keys, queries = gaussian_mixture(2000, 100, 32, clusters=8, seed=1)
    store = FaissHNSWStore("c", keys)
    plain, _ = QueryRewriter(store).search("c", queries, 5, "off", params=SearchParams(hnsw_ef=64))
    before = store.inner_products
    union = store.search_prefetched("c", queries, [queries], 5, 5, SearchParams(hnsw_ef=64))
    np.testing.assert_array_equal(union.ids, plain.ids)  # prefetching x alone is plain search
    assert store.inner_products - before == before + 5 * len(queries)  # the same graph search + 5 rescored each


def test_the_benchmarks_ivf_store_counts_the_quantizer_and_the_probed_lists():
    """bench's FAISS IVF store: a search costs nlist inner products (the coarse step) plus the keys of the
    nprobe lists nearest the query; its knob is SearchParams.hnsw_ef, and short rows pad with −inf."""
    from bench.faiss_policy_store import FaissIVFStore

    keys, queries = gaussian_mixture(1600, 50, 16, clusters=8, seed=2)
    store = FaissIVFStore("c", keys)
    nlist = store.index.nlist
    assert nlist == 160  # ≈ 4·√N
    _, nearest = store.index.quantizer.search(queries, 3)
    store.search("c", queries, 5, SearchParams(hnsw_ef=3))
    assert store.inner_products == pytest.approx(len(queries) * nlist + store.index.list_sizes[nearest].sum())
    everything = store.search("c", queries, 5, SearchParams(hnsw_ef=nlist))
    np.testing.assert_array_equal(everything.ids[:, 0], np.argmax(queries @ keys.T, axis=1))
    short = store.search("c", queries, 40, SearchParams(hnsw_ef=1))  # one list of ≈ 10 keys: rows come back short
    assert (short.ids < 0).any() and np.all(np.isneginf(short.scores[short.ids < 0]))
