"""Races on one collection's model: trainers in threads, simultaneous commits, readers during swaps, the
server lock's lease, and writes by other clients (stale models), on real backends.

Edge and qdrant-client local mode admit one process per store, so writers racing on the manifest are
threads of one process here, except for one test of the Edge manifest lock held by another process (which
frees the shard while it holds the lock); test_faults.py shows what a second *process* gets (a clear 'busy').
"""
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin.adapters.qdrant_client_store import LOCK_POINT_ID, QdrantClientStore
from amips_plugin import collection_ops
from amips_plugin import model_registry
from amips_plugin.core.errors import ConcurrentPublishError, StoreBusyError
from amips_plugin.core.manifest_schema import ModelManifestSchema
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.synthetic import gaussian_mixture
from amips_plugin.train_config import TrainConfig
from amips_plugin.model_artifact import decode_model, encode_model

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

EXACT = SearchParams(exact=True)
FAST = TrainConfig(steps=60, eval_every=30, noise_copies=0, device="cpu", min_match=0.0)


def _blob(seed: int, dim: int = 16) -> bytes:
    torch.manual_seed(seed)
    return encode_model(build_model(ModelConfig(kind="keynet", dim=dim, width=8, depth=1)))


@pytest.fixture(scope="module")
def data():
    keys, queries = gaussian_mixture(num_keys=300, num_queries=700, dim=16, clusters=6, seed=5)
    return keys, queries[:600], queries[600:]


@pytest.fixture(params=[":memory:", "edge"])
def store(request, tmp_path, data):
    store = open_store(request.param if request.param != "edge" else f"edge:{tmp_path / 'edge'}")
    collection_ops.ingest(store, "c", data[0])
    yield store
    store.close()


def _fingerprint(store):
    return model_registry.current_fingerprint(store, "c")


def test_two_trainers_overlapping_in_time_one_wins_and_readers_see_old_or_new(store, data):
    """Both trainers start from version 1; the first to commit wins, the other gets ConcurrentPublishError.
    Reader threads query all the while and always get a whole model: version 1's or the winner's."""
    keys, train, test = data
    first = model_registry.publish(store, "c", _blob(1), _fingerprint(store))
    both_training = threading.Barrier(2, timeout=60)

    def on_log(record):  # the first validation pass: both trainers have read the manifest and the keys
        if record["step"] == FAST.eval_every:
            both_training.wait()

    outcomes: dict[int, object] = {}

    def trainer(seed):
        try:
            outcomes[seed] = collection_ops.train(store, "c", train, TrainConfig(**{**FAST.to_dict(), "seed": seed}),
                                                  progress=False, on_log=on_log).manifest
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcomes[seed] = exc

    seen: list[tuple[int | None, str | None, np.ndarray]] = []
    stop = threading.Event()

    def reader():
        rewriter = QueryRewriter(store)
        while not stop.is_set():
            result, report = rewriter.search("c", test, 3, "replace", candidates=20, params=EXACT)
            seen.append((report.model_version, report.fallback_reason, result.ids.copy()))
            time.sleep(0.005)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    trainers = [threading.Thread(target=trainer, args=(seed,)) for seed in (1, 2)]
    for thread in readers + trainers:
        thread.start()
    for thread in trainers:
        thread.join(120)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(v == first["version"] + 1 for v, _, _ in seen[-5:]):
        time.sleep(0.05)  # until the readers have queried the new model too
    stop.set()
    for thread in readers:
        thread.join(30)

    winners = [m for m in outcomes.values() if isinstance(m, dict)]
    losers = [e for e in outcomes.values() if isinstance(e, Exception)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], ConcurrentPublishError) and "run the command again" in str(losers[0])
    final = store.read_manifest("c")
    assert final.to_dict() == winners[0] and final.version == first["version"] + 1 and not final.stale
    assert _blob_ids(store) == {final.blob}  # the loser removed its blob, the winner the replaced one

    # every answer came from one whole model: the one it names, never an error or a plain-search fallback
    expected = {version: _replace_search_with(store, version, blob, test)
                for version, blob in ((first["version"], _blob(1)),
                                      (final.version, model_registry.read_blob(store, "c")))}
    assert {version for version, _, _ in seen} == set(expected)  # the readers ran across the swap
    for version, reason, ids in seen:
        assert reason is None
        np.testing.assert_array_equal(ids, expected[version])


def _replace_search_with(store, version, blob, queries):
    """What replace mode returns with this model: a rewriter that can only see it."""
    loaded = decode_model(blob)
    pinned = ModelManifestSchema.model_validate({
        "version": version, "blob": 0, "sha256": "0" * 64, "bytes": 1, "fingerprint": {"count": store.info("c").count},
        "stale": False, "model": loaded.header["model"], "dtype": loaded.header["dtype"],
        "bound_to": store.write_stamp("c").as_manifest()})
    rewriter = QueryRewriter(_PinnedManifest(store, pinned))
    rewriter._cache[("c", "model")] = (pinned.sha256, model_registry.StoredModel(loaded, pinned), None)
    result, report = rewriter.search("c", queries, 3, "replace", candidates=20, params=EXACT)
    assert report.fallback_reason is None and report.model_version == version
    return result.ids


class _PinnedManifest:
    """The store, with one fixed manifest."""

    def __init__(self, store, manifest):
        self._store, self._manifest = store, manifest

    def read_manifest(self, collection, slot="model"):
        return self._manifest

    def __getattr__(self, name):
        return getattr(self._store, name)


def _blob_ids(store) -> set[int]:
    """Every blob the store holds for collection "c", referenced or not (stray ones included)."""
    if hasattr(store, "root"):  # Edge: files, temporary ones of interrupted writes included
        folder = store.root / "c" / "amips"
        names = [p.name for p in folder.iterdir() if p.name.startswith(("blob-", ".blob-"))]
        return {int(n.split("-")[1].split(".")[0]) for n in names}
    records, _ = store.client.scroll("c__amips", limit=10_000, with_payload=["blob"])
    return {int(r.payload["blob"]) for r in records if r.payload and "blob" in r.payload}


class _SlowCheck:
    """The real store, with every manifest read made while holding the manifest lock slowed down, so
    that two writers' read-check-write sections would overlap if nothing kept them apart."""

    def __init__(self, store, pause):
        self._store, self._pause, self._inside = store, pause, threading.local()

    def manifest_lock(self, collection):
        lock = self._store.manifest_lock(collection)
        outer = self

        class _Held:
            def __enter__(self):
                lock.__enter__()
                outer._inside.held = True

            def __exit__(self, *exc):
                outer._inside.held = False
                return lock.__exit__(*exc)

        return _Held()

    def read_manifest(self, collection, slot="model"):
        manifest = self._store.read_manifest(collection, slot)
        if getattr(self._inside, "held", False):
            time.sleep(self._pause)
        return manifest

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_simultaneous_commits_are_a_compare_and_swap(store):
    """Two writers reach the commit with the same expected manifest at the same instant: the lock makes
    the check and the write one step, so exactly one commits (without it, both would, one silently lost)."""
    model_registry.publish(store, "c", _blob(1), {"count": 300})
    first = store.read_manifest("c")
    slow = _SlowCheck(store, pause=0.3)
    start = threading.Barrier(2)
    outcomes = {}

    def writer(seed):
        start.wait()
        try:
            outcomes[seed] = model_registry.publish(slow, "c", _blob(seed), {"count": 300}, expected=first)
        except ConcurrentPublishError as exc:
            outcomes[seed] = exc

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    committed = [m for m in outcomes.values() if isinstance(m, dict)]
    assert len(committed) == 1 and len(outcomes) == 2, outcomes
    assert store.read_manifest("c").to_dict() == committed[0] and committed[0]["version"] == 2
    assert _blob_ids(store) == {committed[0]["blob"]}


def test_a_reader_whose_blob_is_replaced_between_its_two_reads_gets_the_new_model(store):
    """Manifest read, then a publish commits and removes the old blob, then the blob read: the reader
    reads the manifest again and loads the new model instead of failing or falling back."""
    model_registry.publish(store, "c", _blob(1), {"count": 300})
    racing = {"done": False}
    original = store.read_blob

    def read_blob_after_a_swap(collection, blob_id, *bound):
        if not racing["done"]:
            racing["done"] = True
            model_registry.publish(store, collection, _blob(2), {"count": 300})
        return original(collection, blob_id, *bound)

    store.read_blob = read_blob_after_a_swap
    try:
        queries = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
        _, report = QueryRewriter(store).search("c", queries, 3, "hybrid", params=EXACT)
    finally:
        del store.read_blob
    assert racing["done"] and report.fallback_reason is None and report.model_version == 2


@pytest.fixture
def shared_memory_store():
    """Local mode told that other processes share it: manifest writers take the server's leased lock point."""
    store = QdrantClientStore(":memory:", shared=True)
    store.create("c", 16, "dot")
    store.upsert("c", np.arange(10), np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32))
    yield store
    store.close()


def _plant_lock(store, holder, expires):
    from qdrant_client import models

    store._ensure_sidecar("c")
    store.client.upsert("c__amips", points=[models.PointStruct(id=LOCK_POINT_ID, vector={},
                                                               payload={"lock": holder, "expires": expires})],
                        wait=True)


def _lock_point(store):
    return store.client.retrieve("c__amips", [LOCK_POINT_ID], with_payload=True)[0].payload


def test_the_server_lock_waits_for_a_live_holder_and_takes_over_an_expired_lease(shared_memory_store):
    store = shared_memory_store
    first = model_registry.publish(store, "c", _blob(1), {"count": 10})
    assert _lock_point(store)["lock"] == ""  # taken and released by that publish

    _plant_lock(store, "another-writer", time.time() + 60)  # a live writer inside its commit
    store.manifest_lock_timeout = 0.5
    with pytest.raises(StoreBusyError, match="another writer kept the manifest lock"):
        model_registry.publish(store, "c", _blob(2), {"count": 10})
    assert store.read_manifest("c").to_dict() == first and _blob_ids(store) == {first["blob"]}
    assert _lock_point(store)["lock"] == "another-writer"  # never taken from a live holder

    _plant_lock(store, "a-dead-writer", time.time() - 1)  # its lease ran out
    second = model_registry.publish(store, "c", _blob(2), {"count": 10})
    assert second["version"] == 2 and _lock_point(store)["lock"] == ""


_HOLD_EDGE_LOCK = """
import sys
from amips_plugin.adapters import open_store
store = open_store(sys.argv[1])
with store.manifest_lock("c"):
    store.close()  # frees the shard for the other process; the lock file stays locked
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def test_the_edge_manifest_lock_keeps_out_a_writer_in_another_process(tmp_path, data):
    """A second process holds the Edge manifest lock: a publish here waits the timeout, gets StoreBusyError and
    writes nothing; once the holder lets go, the same publish commits (a no-op lock would commit at once)."""
    spec = f"edge:{tmp_path / 'edge'}"
    store = open_store(spec)
    collection_ops.ingest(store, "c", data[0])
    model_registry.publish(store, "c", _blob(1), {"count": 300})
    first = store.read_manifest("c")
    store.close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_EDGE_LOCK, spec], cwd=tmp_path, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = open_store(spec)
        store.manifest_lock_timeout = 0.5
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="another writer kept the manifest lock of 'c' for over 0.5s"):
            model_registry.publish(store, "c", _blob(2), {"count": 300}, expected=first)
        assert time.monotonic() - started >= 0.5
        assert store.read_manifest("c") == first and _blob_ids(store) == {first.blob}
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released" and holder.wait(30) == 0
        second = model_registry.publish(store, "c", _blob(2), {"count": 300}, expected=first)
        assert second["version"] == first.version + 1 and store.read_manifest("c").to_dict() == second
    finally:
        holder.kill()
        store.close()


def test_writes_by_other_clients_are_caught_by_status_and_queries_stay_correct(store, data):
    """Points added straight through the store (another client: no stale mark) make the model stale:
    `status` sees it by fingerprint (and by point count with --no-verify), the query path by point
    count, and searches fall back to plain."""
    keys, train, test = data
    collection_ops.train(store, "c", train, FAST, progress=False)
    assert collection_ops.status(store, "c")["model"]["stale"] is False
    extra = 3.0 * test[:10]  # far out along these queries: each one's best key is among them
    store.upsert("c", np.arange(300, 310), extra)
    store.finish_bulk_load("c")
    assert collection_ops.status(store, "c")["model"]["stale"] is True
    assert collection_ops.status(store, "c", verify=False)["model"]["stale"] is True  # --no-verify: by the count
    truth = (extra @ np.concatenate([keys, extra]).T).argmax(axis=1)
    for mode in ("hybrid", "replace"):
        result, report = QueryRewriter(store).search("c", extra, 1, mode, params=EXACT)
        assert report.fallback_reason.startswith("the model is stale (")  # the store bumped its stamp
        np.testing.assert_array_equal(result.ids[:, 0], truth)
