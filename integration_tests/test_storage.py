"""Collections stored with each of Qdrant's quantizations (adapters/storage.py, issue 23): created as asked,
reported by `status`, searched with full rows and rescored scores, and tuned over oversampling."""
import numpy as np
import pytest
from click.testing import CliRunner

from amips_plugin import collection_ops as ops
from amips_plugin import tuning
from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.adapters.storage import QUANTIZATIONS
from amips_plugin.cli import main
from amips_plugin.core.errors import InputError
from amips_plugin.rewriting import QueryRewriter

RNG = np.random.default_rng(8)
KEYS = RNG.standard_normal((3000, 32)).astype(np.float32)
QUERIES = RNG.standard_normal((300, 32)).astype(np.float32)
TRUTH = (QUERIES @ KEYS.T).argmax(axis=1)


@pytest.mark.parametrize("name", [n for n in QUANTIZATIONS if QUANTIZATIONS[n].quantized])
def test_each_quantization_is_created_reported_and_searched(tmp_path, name):
    store = open_store(f"edge:{tmp_path}")
    try:
        ops.ingest(store, "c", KEYS, quantization=name)
        assert store.storage("c") == (name, False) and store.quantized("c") is True
        assert ops.status(store, "c", verify=False)["storage"] == {"quantization": name, "on_disk": False}
        found = store.search("c", QUERIES, 10, SearchParams(hnsw_ef=128, oversampling=4.0))
        assert (found.ids >= 0).all()
        np.testing.assert_allclose(found.scores, np.take_along_axis(QUERIES @ KEYS.T, found.ids, axis=1), rtol=1e-4,
                                   atol=1e-4)  # rescored with the originals
        # rescoring 40 candidates: 1-bit codes of random 32-d keys rank the best key among them less often
        assert np.mean(found.ids[:, 0] == TRUTH) >= (0.6 if QUANTIZATIONS[name].bits == 1 else 0.9)
    finally:
        store.close()


def test_float16_stores_the_vectors_at_half_precision_with_no_copies_to_oversample(tmp_path):
    """Edge keeps the float16 vectors themselves: reported as float16 (not quantized, so `tune` has no oversampling
    knob), half float32's bytes, scored in float16 (keys and query), moved to and from float32 with every point."""
    store = open_store(f"edge:{tmp_path}")
    try:
        ops.ingest(store, "c", KEYS, quantization="float16")
        assert store.storage("c") == ("float16", False) and store.quantized("c") is False
        assert QUANTIZATIONS["float16"].ram_bytes_per_key(32) == 64 == QUANTIZATIONS["none"].ram_bytes_per_key(32) / 2
        assert ops.status(store, "c", verify=False)["storage"] == {"quantization": "float16", "on_disk": False}
        found = store.search("c", QUERIES, 10, SearchParams(exact=True))
        half, half_queries = (a.astype(np.float16).astype(np.float32) for a in (KEYS, QUERIES))
        scores = np.take_along_axis(half_queries @ half.T, found.ids, axis=1)  # the engine scores in float16 too
        np.testing.assert_allclose(found.scores, scores, rtol=1e-5, atol=1e-4)
        assert not np.allclose(found.scores, np.take_along_axis(QUERIES @ KEYS.T, found.ids, axis=1), atol=1e-3)
        assert np.mean(found.ids[:, 0] == TRUTH) >= 0.97
        with pytest.raises(InputError, match="oversampling applies to a scalar-quantized collection"):
            QueryRewriter(store).search("c", QUERIES[:2], 3, mode="off", params=SearchParams(oversampling=2.0))
        report = tuning.tune(store, "c", np.tile(QUERIES, (4, 1)), 0.9, repeats=1, ef_grid=(16, 64))
        assert report.chosen.policy.oversampling is None
        assert "3,000 points moved from float16 to float32" in store.change_storage("c", "none")
        assert store.storage("c") == ("none", False)
        back = store.retrieve("c", np.arange(len(KEYS)))
        np.testing.assert_array_equal(back, half)  # float16 values are float32 values: nothing more was lost
        assert "3,000 points moved from float32 to float16" in store.change_storage("c", "float16")
        np.testing.assert_array_equal(store.retrieve("c", np.arange(len(KEYS))), half)
    finally:
        store.close()


def test_the_cli_creates_a_quantized_collection_with_originals_on_disk_and_refuses_to_change_it(tmp_path):
    np.save(tmp_path / "keys.npy", KEYS)
    spec = ["--store", f"edge:{tmp_path / 'st'}"]
    made = CliRunner().invoke(main, [*spec, "ingest", "c", str(tmp_path / "keys.npy"), "--quantization", "turbo4",
                                     "--on-disk", "--quiet"])
    assert made.exit_code == 0, made.output
    assert "turbo4 (originals on disk)" in CliRunner().invoke(main, [*spec, "status", "c", "--no-verify"]).output
    other = CliRunner().invoke(main, [*spec, "ingest", "c", str(tmp_path / "keys.npy"), "--quantization", "bq1"])
    assert other.exit_code == 1 and "is stored as turbo4" in other.output
    assert "unknown quantization" in str(pytest.raises(Exception, ops.ingest, open_store(str(tmp_path / "l")), "d",
                                                       KEYS, quantization="pq9").value)


def test_a_server_or_local_store_passes_the_quantization_to_qdrant(tmp_path):
    """Local mode keeps no quantization (it searches exactly): created without error, reported as unknown."""
    store = open_store(str(tmp_path / "local"))
    try:
        ops.ingest(store, "c", KEYS[:100], quantization="bq2")
        assert store.storage("c") is None and store.quantized("c") is None
    finally:
        store.close()


def test_advise_tunes_each_storage_on_a_scratch_copy_and_recommends_one_within_the_budget(tmp_path):
    import json

    np.save(tmp_path / "keys.npy", KEYS)
    queries = RNG.standard_normal((600, 32)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    spec = ["--store", f"edge:{tmp_path / 'st'}"]
    assert CliRunner().invoke(main, [*spec, "ingest", "c", str(tmp_path / "keys.npy"), "--quiet"]).exit_code == 0
    advised = CliRunner().invoke(main, [*spec, "advise", "c", "--queries", str(tmp_path / "q.npy"), "--target-recall",
                                        "0.9", "--configs", "none,int8,bq1", "--max-bytes-per-key", "140",
                                        "--repeats", "1", "--json"])
    assert advised.exit_code == 0, advised.output
    report = json.loads(advised.stdout)  # progress lines go to stderr
    rows = {c["configuration"]: c for c in report["configurations"]}
    # int8's codes fit the budget only with the originals on disk: that variant is tried too
    # the collection as it is comes first, read against the copies (tuned where it stands, nothing stored)
    assert list(rows) == ["as is", "none", "int8", "bq1", "int8+disk"] and rows["none"]["bytes_per_key"] == 128
    assert rows["as is"]["as_is"] is True and rows["as is"]["bytes_per_key"] == 128
    assert rows["int8"]["bytes_per_key"] == 128 + 32 and rows["bq1"]["bytes_per_key"] == 128 + 4
    assert rows["int8+disk"]["bytes_per_key"] == 32 and rows["int8+disk"]["on_disk"] is True
    assert [row["storage"] for row in rows.values()] == ["float32", "float32", "int8", "bq1", "int8"]
    for row in rows.values():
        assert (row["recall@1"] is None) == (row["error"] is not None)
        assert row["error"] or (row["lower_bound"] >= 0.9 and row["queries_per_second"] > 0
                                and row["plain_queries_per_second"] > 0)
    chosen = [name for name, row in rows.items() if row["recommended"]]
    assert len(chosen) == 1 and rows[chosen[0]]["storage"] == report["recommended"]
    assert rows[chosen[0]]["bytes_per_key"] <= 140
    store = open_store(f"edge:{tmp_path / 'st'}")  # the collection itself is only read
    try:
        assert store.info("c").count == 3000 and store.read_manifest("c", "policy") is None
        assert store.collections() == ["c"]
    finally:
        store.close()
