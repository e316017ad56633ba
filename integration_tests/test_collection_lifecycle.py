"""ingest → train → search → status → append → stale → retrain → export/import, on real backends.

Everything goes through the `amips` CLI (one store per command, as a user would run it), except
where a test looks inside the store to check that the model really lives alongside the collection.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from amips_plugin.adapters import open_store
from amips_plugin import rewriting
from amips_plugin.cli import main
from amips_plugin.core.errors import ArtifactError
from amips_plugin.model_artifact import decode_model

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

TRAIN = ["--steps", "400", "--quiet", "--noise-copies", "1", "--device", "cpu"]


def amips(store_spec, *args, ok=True):
    result = CliRunner().invoke(main, ["--store", store_spec, *[str(a) for a in args]])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def status(store_spec, collection):
    return json.loads(amips(store_spec, "status", collection, "--json").output)


def search(store_spec, collection, queries_path, truth_path, *extra):
    return json.loads(amips(store_spec, "search", collection, "--queries", queries_path, "--truth", truth_path,
                            "--json", *extra).output)


@pytest.fixture
def files(tmp_path, mixture, mixture_truth):
    keys, train, test = mixture
    paths = {n: tmp_path / f"{n}.npy" for n in ("keys", "train", "test", "truth", "extra")}
    np.save(paths["keys"], keys)
    np.save(paths["train"], train)
    np.save(paths["test"], test)
    np.save(paths["truth"], mixture_truth)
    np.save(paths["extra"], 3.0 * test[:20])  # new keys, far out along the test queries' directions
    return paths


def test_full_lifecycle(store_spec, collection_name, files, tmp_path):
    c = collection_name
    amips(store_spec, "ingest", c, files["keys"])
    assert status(store_spec, c)["model"] is None

    before = search(store_spec, c, files["test"], files["truth"], "--mode", "hybrid")
    assert before["fallback_reason"] == "no model trained for this collection"
    assert before["recall@1"] == pytest.approx(
        search(store_spec, c, files["test"], files["truth"], "--mode", "off")["recall@1"])

    amips(store_spec, "train", c, "--queries", files["train"], *TRAIN)
    fresh = status(store_spec, c)
    assert fresh["model"]["version"] == 1 and fresh["model"]["stale"] is False
    assert fresh["model"]["fingerprint"]["count"] == 600

    # hybrid ⊇ plain holds when its x prefetch is plain search itself: the same limit, so the same HNSW
    # beam (a prefetch of 10 is a different approximate search and need not contain plain's top 5)
    hybrid = search(store_spec, c, files["test"], files["truth"], "--mode", "hybrid", "--limit", "5",
                    "--candidates", "5")
    plain = search(store_spec, c, files["test"], files["truth"], "--mode", "off", "--limit", "5")
    assert hybrid["fallback_reason"] is None and hybrid["rewritten"] > 0
    assert hybrid["recall@1"] >= plain["recall@1"]

    # append: the model goes stale, queries fall back to plain search and still find the new keys
    amips(store_spec, "ingest", c, files["extra"])
    stale = status(store_spec, c)
    assert stale["points"] == 620 and stale["model"]["stale"] is True
    new_truth = tmp_path / "new_truth.npy"
    all_keys = np.concatenate([np.load(files["keys"]), np.load(files["extra"])])
    truth = (np.load(files["extra"]) @ all_keys.T).argmax(axis=1)
    assert (truth >= 600).all()  # these queries' best keys are all among the appended ones
    np.save(new_truth, truth)
    found = search(store_spec, c, files["extra"], new_truth, "--mode", "hybrid")
    assert found["fallback_reason"].startswith("the model is stale") and found["recall@1"] == 1.0

    amips(store_spec, "train", c, "--queries", files["train"], *TRAIN)
    retrained = status(store_spec, c)["model"]
    assert retrained["version"] == 2 and retrained["stale"] is False

    # export → drop → import round trip: same bytes, fresh again
    exported = tmp_path / "exported.amips"
    amips(store_spec, "export", c, "-o", exported)
    amips(store_spec, "drop-model", c)
    assert status(store_spec, c)["model"] is None
    amips(store_spec, "import", c, exported)
    reimported = status(store_spec, c)["model"]
    assert reimported["version"] == 3 and reimported["stale"] is False  # versions keep rising after a drop
    again = tmp_path / "again.amips"
    amips(store_spec, "export", c, "-o", again)
    assert again.read_bytes() == exported.read_bytes()


def test_model_lives_alongside_the_collection(store_spec, collection_name, files):
    c = collection_name
    amips(store_spec, "ingest", c, files["keys"])
    amips(store_spec, "train", c, "--queries", files["train"], *TRAIN)
    store = open_store(store_spec)
    first = store.read_manifest(c)
    store.close()
    amips(store_spec, "train", c, "--queries", files["train"], *TRAIN)
    store = open_store(store_spec)
    try:
        manifest = store.read_manifest(c)
        assert manifest.version == 2
        blob = store.read_blob(c, manifest.blob)
        assert decode_model(blob).model.config.dim == 32
        with pytest.raises(ArtifactError):
            store.read_blob(c, first.blob)  # the replaced blob was removed after the new manifest landed
        assert c in store.collections() and all(not n.endswith("__amips") for n in store.collections())
    finally:
        store.close()


def test_imported_file_models_are_fresh_only_for_the_keys_they_were_fit_on(store_spec, collection_name, files,
                                                                           tmp_path):
    same, other = tmp_path / "same.amips", tmp_path / "other.amips"
    other_keys = tmp_path / "other_keys.npy"
    np.save(other_keys, np.load(files["keys"])[::-1].copy())
    for keys, model in ((files["keys"], same), (other_keys, other)):
        fitted = CliRunner().invoke(main, ["fit", str(keys), str(files["train"]), "-o", str(model), *TRAIN])
        assert fitted.exit_code == 0, fitted.output
    amips(store_spec, "ingest", collection_name, files["keys"])
    assert "STALE" not in amips(store_spec, "import", collection_name, same).output
    assert status(store_spec, collection_name)["model"]["stale"] is False
    assert "STALE" in amips(store_spec, "import", collection_name, other).output
    assert status(store_spec, collection_name)["model"]["stale"] is True


def test_bad_requests_are_clear_errors(store_spec, collection_name, files, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 31), np.float32))
    amips(store_spec, "ingest", collection_name, files["keys"])
    for args in (["search", "nope", "--queries", files["test"]],
                 ["search", collection_name, "--queries", wrong],
                 ["ingest", collection_name, wrong],
                 ["train", "nope", "--queries", files["train"], *TRAIN],
                 ["export", collection_name, "-o", tmp_path / "none.amips"]):
        result = amips(store_spec, *args, ok=False)
        assert result.exit_code == 1 and result.output.startswith("Error: "), (args, result.output)
        assert "Traceback" not in result.output


def test_compressed_key_store_serves_as_the_candidate_stage(store_spec, collection_name, files):
    c = collection_name
    amips(store_spec, "ingest", c, files["keys"])
    assert "bits per key" in amips(store_spec, "pq-build", c, "--subspaces", "8").output
    store = open_store(store_spec)
    try:
        manifest = store.read_manifest(c, "pq")
        assert manifest.bits_per_key == 64 and manifest.bytes < manifest.keys_fp32_bytes
        assert store.read_blob(c, manifest.blob)  # the codes live alongside the collection
    finally:
        store.close()
    engine = search(store_spec, c, files["test"], files["truth"], "--mode", "off", "--exact")
    pq = search(store_spec, c, files["test"], files["truth"], "--mode", "off", "--candidates-from", "pq",
                "--candidates", "20")
    assert pq["notes"] == [] and engine["recall@1"] == 1.0
    assert pq["recall@1"] >= 0.95  # 64-bit codes find the best key among 20 candidates, rescored exactly
    # appended keys are not coded: fall back to the engine
    _append_and_expect_engine_fallback(store_spec, c, files, "pq",
                                       "the compressed key store is stale (the keys changed since it was built); "
                                       "run `amips pq-build`")


def _append_and_expect_engine_fallback(store_spec, c, files, source, note):
    """Append keys; a search with the now stale side index says so and answers exactly from the engine."""
    amips(store_spec, "ingest", c, files["extra"])
    all_keys = np.concatenate([np.load(files["keys"]), np.load(files["extra"])])
    np.save(files["truth"].parent / "extra_truth.npy", (np.load(files["extra"]) @ all_keys.T).argmax(axis=1))
    after = search(store_spec, c, files["extra"], files["truth"].parent / "extra_truth.npy", "--mode", "off",
                   "--candidates-from", source, "--exact")
    assert after["notes"] == [note]
    assert after["recall@1"] == 1.0
    slot = {"pq": "pq", "route": "router"}[source]
    assert status(store_spec, c)["side_indexes"][slot]["stale"] is True
    assert "STALE — run amips" in amips(store_spec, "status", c).output


def test_routed_lists_serve_as_the_candidate_stage(store_spec, collection_name, files, monkeypatch):
    """route-build → search --candidates-from route: learned list routing, rescored exactly; stale after an append."""
    c = collection_name
    amips(store_spec, "ingest", c, files["keys"])
    built = amips(store_spec, "route-build", c, "--queries", files["train"], "--lists", "12", "--sublists", "4",
                  "--coarse-candidates", "12", "--steps", "300").output
    assert "12 × 4 lists" in built
    assert status(store_spec, c)["side_indexes"]["router"]["stale"] is False
    assert "router v1" in amips(store_spec, "status", c).output
    store = open_store(store_spec)
    try:
        manifest = store.read_manifest(c, "router")
        assert manifest.lists == 12 and manifest.fingerprint.count == 600
        assert store.read_blob(c, manifest.blob)  # the router lives alongside the collection
    finally:
        store.close()
    every = search(store_spec, c, files["test"], files["truth"], "--mode", "off", "--candidates-from", "route",
                   "--candidates", "48")
    assert every["notes"] == [] and every["recall@1"] == 1.0  # all 48 lists scanned: exact search
    monkeypatch.setattr(rewriting, "RESCORE_BATCH", 7)  # candidates fetched and rescored 7 queries at a time
    assert search(store_spec, c, files["test"], files["truth"], "--mode", "off", "--candidates-from", "route",
                  "--candidates", "48")["recall@1"] == 1.0
    one_list = files["truth"].parent / "one_list.npy"
    one = search(store_spec, c, files["test"], files["truth"], "--mode", "off", "--candidates-from", "route",
                 "--candidates", "1", "--limit", "20", "-o", one_list)
    assert one["recall@1"] >= 0.8  # the router's first list holds the best key for most queries
    assert (np.load(one_list) == -1).any(axis=1).mean() > 0.5  # one list of ~12 keys: most rows come up short
    # appended keys belong to no list: fall back to the engine
    _append_and_expect_engine_fallback(store_spec, c, files, "route",
                                       "the routed list index is stale (the keys changed since it was built); "
                                       "run `amips route-build`")
