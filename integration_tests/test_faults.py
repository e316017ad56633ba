"""Faults during training and publishing, on real stores: `amips train` processes killed (SIGKILL) or
interrupted (SIGINT) mid-training, a second trainer and a reader started while one trains, and a store
that fails part-way through an operation. In every case the previous model stays the live one, intact
and serving the same answers, no stray blob is left or ever read, and running the command again works.

Processes are real (`amips` as a user runs it); cases run side by side on separate stores to keep the
suite fast.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amips_plugin.adapters import SearchParams, open_store
from amips_plugin import collection_ops
from amips_plugin import model_registry
from amips_plugin.cli import main
from amips_plugin.core.errors import StoreError
from amips_plugin.core.manifest_schema import ModelManifestSchema
from amips_plugin.rewriting import QueryRewriter
from amips_plugin.synthetic import gaussian_mixture
from amips_plugin.train_config import TrainConfig

pytestmark = pytest.mark.slow  # trains models and drives real stores; `pytest -m 'not slow'` skips it

REPO = Path(__file__).resolve().parents[1]
EXACT = SearchParams(exact=True)
QUICK = TrainConfig(steps=40, eval_every=20, noise_copies=0, device="cpu", min_match=0.0)
ENDLESS = ["--steps", "1000000", "--noise-copies", "1", "--device", "cpu"]  # runs until stopped


BACKENDS = ("local-dir", "edge")


def _spec(backend: str, folder: Path) -> str:
    return f"edge:{folder}" if backend == "edge" else str(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The files (80 keys in 16-d), and per backend a closed store folder holding collection "c" with a
    trained model as version 1, built once: each test works on a copy (local mode on disk commits every
    point to SQLite on its own, which takes seconds)."""
    keys, queries = gaussian_mixture(num_keys=80, num_queries=700, dim=16, clusters=8, seed=13)
    train, test = queries[:600], queries[600:]
    folder = tmp_path_factory.mktemp("faults")
    paths = {n: folder / f"{n}.npy" for n in ("keys", "train", "test")}
    for name, array in zip(paths, (keys, train, test)):
        np.save(paths[name], array)
    blob = None
    for backend in ("edge", "local-dir"):  # trained once, on Edge; the same model published into local mode
        store = open_store(_spec(backend, folder / backend))
        collection_ops.ingest(store, "c", keys)
        if blob is None:
            collection_ops.train(store, "c", train, QUICK, progress=False)
            blob = model_registry.read_blob(store, "c")
        else:
            model_registry.publish(store, "c", blob, model_registry.current_fingerprint(store, "c"))
        store.close()
    return paths, folder


def _prepare(backend: str, folder: Path, trained) -> str:
    """A copy of the backend's template store in `folder`; returns its --store spec."""
    shutil.copytree(trained[1] / backend, folder)
    return _spec(backend, folder)


def _amips(spec: str, *args: str) -> subprocess.Popen:
    """`amips --store SPEC ARGS…` in its own process; SIGINT at its default even if this test runs where
    it is ignored (a background job), so that Python turns it into KeyboardInterrupt as in a terminal."""
    return subprocess.Popen(
        [sys.executable, "-c", "from amips_plugin.cli import main; main()", "--store", spec, *map(str, args)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop_mid_training(procs: dict, after: dict, timeout: float = 120) -> dict:
    """Read each process's stderr until its progress bar appears (drawn when the optimisation loop starts),
    let it train `after[name]` seconds more, then freeze it with SIGSTOP, mid-training, so that it holds its
    store without using the CPU the others need. Returns the stderr read so far, per process."""
    seen = {key: b"" for key in procs}
    started: dict = {}
    deadline = time.monotonic() + timeout
    while len(started) < len(procs) or any(time.monotonic() < t + after[key] for key, t in started.items()):
        for key, proc in procs.items():
            if key in started:
                if time.monotonic() >= started[key] + after[key] and proc.poll() is None:
                    proc.send_signal(signal.SIGSTOP)
                    started[key] = -float("inf")
                continue
            if time.monotonic() > deadline or proc.poll() is not None:
                for other in procs.values():
                    other.kill()
                pytest.fail(f"{key}: training never started (exit {proc.returncode}): "
                            f"{(seen[key] + proc.communicate()[1]).decode()[-2000:]}")
            ready, _, _ = select.select([proc.stderr], [], [], 0.02)
            if ready:
                seen[key] += os.read(proc.stderr.fileno(), 65536)
                if b"step" in seen[key]:
                    started[key] = time.monotonic()
                    if after[key] <= 0:
                        proc.send_signal(signal.SIGSTOP)
                        started[key] = -float("inf")
    return seen


def _finish(proc: subprocess.Popen, seen: bytes = b"", timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), (seen + err).decode()


def _last_line(stderr: str) -> str:
    return stderr.replace("\r", "\n").strip().splitlines()[-1].strip()


def _blob_ids(store, collection: str = "c") -> set[int]:
    """Every blob the store holds for the collection, referenced by a manifest or not."""
    if hasattr(store, "root"):  # Edge: files, the temporary ones of interrupted writes included
        names = [p.name for p in (store.root / collection / "amips").iterdir()
                 if p.name.startswith(("blob-", ".blob-"))]
        return {int(n.split("-")[1].split(".")[0]) for n in names}
    if not store.client.collection_exists(f"{collection}__amips"):
        return set()
    records, _ = store.client.scroll(f"{collection}__amips", limit=100_000, with_payload=["blob"])
    return {int(r.payload["blob"]) for r in records if r.payload and "blob" in r.payload}


def _answers(store, test: np.ndarray) -> tuple[ModelManifestSchema, np.ndarray]:
    """The live manifest and what replace mode answers with it (exact scoring: deterministic)."""
    result, report = QueryRewriter(store).search("c", test, 5, "replace", candidates=20, params=EXACT)
    assert report.fallback_reason is None, report.fallback_reason
    return store.read_manifest("c"), result.ids


def _snapshot(spec: str, test: np.ndarray) -> tuple[ModelManifestSchema, np.ndarray, set[int]]:
    store = open_store(spec)
    try:
        manifest, ids = _answers(store, test)
        return manifest, ids, _blob_ids(store)
    finally:
        store.close()


INTERRUPTED = ("Error: interrupted; a model is only replaced once it is complete, "
               "so the previous one (if any) still serves")
RACERS = {  # process → (backend, how it ends)
    "kill local-dir": ("local-dir", signal.SIGKILL),
    "kill edge": ("edge", signal.SIGKILL),
    "ctrl-c edge": ("edge", signal.SIGINT),
    "finish local-dir": ("local-dir", None),
    "finish edge": ("edge", None),
}


def test_trainer_processes_killed_interrupted_or_raced(tmp_path, trained):
    """Five `amips train` processes on five copies of a store with model version 1, each frozen with SIGSTOP
    mid-training (so nothing below races on timing). Meanwhile a second trainer and a searcher start on the
    stores of the two that will finish: each gets one clear line and exit 1 (Edge and local mode admit one
    process per store) and changes nothing. Then: SIGKILL (both backends) and Ctrl-C leave version 1 live,
    whole, answering as before, with no stray blob, and training again works; the two left alone finish and
    publish version 2. (Readers *during* a model swap are threads of one process: test_races.py.)"""
    paths, _ = trained
    test = np.load(paths["test"])
    specs = {name: _prepare(backend, tmp_path / name.replace(" ", "-"), trained)
             for name, (backend, _) in RACERS.items()}
    before = {name: _snapshot(spec, test) for name, spec in specs.items()}
    # the two left to finish run 500 steps (about half a second flat out) and are frozen as soon as they start
    procs = {name: _amips(spec, "train", "c", "--queries", paths["train"], "--noise-copies", "0", "--device", "cpu",
                          "--steps", "1000000" if RACERS[name][1] else "500") for name, spec in specs.items()}
    seen = _stop_mid_training(procs, after={name: 0.3 if RACERS[name][1] else 0.0 for name in procs})
    assert all(proc.poll() is None for proc in procs.values()), "a trainer ended before it could be frozen"
    try:
        others = {(name, "second trainer"): _amips(specs[name], "train", "c", "--queries", paths["train"], "--steps",
                                                   "40", "--quiet", "--device", "cpu")
                  for name in ("finish local-dir", "finish edge")}
        others["finish edge", "reader"] = _amips(specs["finish edge"], "search", "c", "--queries", paths["test"],
                                                 "--json")
        for name, proc in procs.items():
            if RACERS[name][1]:
                proc.send_signal(RACERS[name][1])
        for case, proc in others.items():
            code, out, err = _finish(proc)
            assert code == 1 and out == "" and "Traceback" not in err, (case, code, err)
            line = err.strip()
            assert len(line.splitlines()) == 1 and line.startswith("Error: cannot open "), (case, line)
            assert ("another process" if "edge" in case[0] else "already accessed") in line, (case, line)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGCONT)  # a frozen process handles SIGINT once it runs again

    for name, proc in procs.items():
        backend, sig = RACERS[name]
        code, out, err = _finish(proc, seen[name])
        manifest, ids, blobs = _snapshot(specs[name], test)
        old_manifest, old_ids, old_blobs = before[name]
        if sig is None:  # the first trainer, undisturbed by the second: it wins cleanly
            assert code == 0 and "model version 2" in out, (name, code, err[-2000:])
            assert manifest.version == 2 and not manifest.stale and blobs == {manifest.blob}, name
            continue
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, (name, code)
        else:  # Ctrl-C: one clear line and the shell's status for SIGINT, no traceback
            assert code == 130 and "Traceback" not in err and _last_line(err) == INTERRUPTED, (name, code, err[-2000:])
        assert manifest == old_manifest, name  # same version, blob id, checksum, fingerprint
        np.testing.assert_array_equal(ids, old_ids, err_msg=name)  # and it answers as before
        assert blobs == old_blobs == {old_manifest.blob}, name  # nothing stray, nothing partial
        status = json.loads(CliRunner().invoke(main, ["--store", specs[name], "status", "c", "--json"]).output)
        assert status["model"]["version"] == 1 and status["model"]["stale"] is False, name
        if sig == signal.SIGKILL:  # what a kill leaves (locks, write-ahead logs) does not stand in the way
            result = CliRunner().invoke(main, ["--store", specs[name], "train", "c", "--queries", str(paths["train"]),
                                               "--steps", "20", "--noise-copies", "0", "--quiet", "--device", "cpu"])
            assert result.exit_code == 0 and "model version 2" in result.output, (name, result.output)


class FaultyStore:
    """A real store that fails part-way through one operation, the way a lost connection or a full disk
    would: `fault` names the operation; everything else goes straight to the store."""

    def __init__(self, store, fault: str) -> None:
        self._store, self.fault = store, fault

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _fail(self, what: str):
        raise StoreError(f"injected: the store failed during {what}")

    def scroll(self, collection, batch_size, using=None):
        for number, batch in enumerate(self._store.scroll(collection, batch_size, using)):
            if self.fault == "scroll" and number == 2:
                self._fail("scroll")
            yield batch

    def write_blob(self, collection, blob_id, data):
        if self.fault == "write_blob":  # half the bytes land, then the connection drops
            self._store.write_blob(collection, blob_id, data[: len(data) // 2])
            self._fail("write_blob")
        if self.fault == "interrupt_write_blob":
            self._store.write_blob(collection, blob_id, data)
            raise KeyboardInterrupt
        if self.fault == "silent_truncation":  # a store that drops bytes without saying so
            data = data[: len(data) // 2]
        self._store.write_blob(collection, blob_id, data)

    def write_manifest(self, collection, manifest, slot="model"):
        if self.fault == "write_manifest" and manifest is not None:
            self._fail("write_manifest")
        self._store.write_manifest(collection, manifest, slot)
        if self.fault == "lost_reply" and manifest is not None:
            self._fail("the reply to write_manifest")  # it landed, but the writer cannot know

    def delete_blob(self, collection, blob_id):
        if self.fault == "delete_blob":
            self._fail("delete_blob")
        self._store.delete_blob(collection, blob_id)

    def upsert(self, collection, ids, vectors, payloads=None, using=None):
        if self.fault == "upsert":
            self._store.upsert(collection, ids[: len(ids) // 2], vectors[: len(ids) // 2], None, using)
            self._fail("upsert")
        self._store.upsert(collection, ids, vectors, payloads, using)


@pytest.fixture(params=[":memory:", "edge"])
def store_with_model(request, tmp_path, trained, monkeypatch):
    """A store with the model as version 1: qdrant-client in memory (the same adapter as local mode on disk,
    without its per-point SQLite commits) and Edge."""
    monkeypatch.setattr(model_registry, "SCROLL_BATCH", 20)  # several batches, so a scroll can fail part-way
    if request.param == "edge":
        store = open_store(_prepare("edge", tmp_path / "edge", trained))
    else:
        store = open_store(":memory:")
        collection_ops.ingest(store, "c", np.load(trained[0]["keys"]))
        collection_ops.train(store, "c", np.load(trained[0]["train"]), QUICK, progress=False)
    yield store
    store.close()


@pytest.mark.parametrize("fault", ["scroll", "write_blob", "silent_truncation", "write_manifest",
                                   "interrupt_write_blob"])
def test_a_store_failing_mid_publish_leaves_the_previous_model_intact(store_with_model, trained, fault):
    paths, _ = trained
    store, test = store_with_model, np.load(paths["test"])
    before, answers = _answers(store, test)
    with pytest.raises(KeyboardInterrupt if fault.startswith("interrupt") else StoreError):
        collection_ops.train(FaultyStore(store, fault), "c", np.load(paths["train"]), QUICK, progress=False)
    manifest, ids = _answers(store, test)
    assert manifest == before and model_registry.load(store, "c").manifest == before
    np.testing.assert_array_equal(ids, answers)
    assert _blob_ids(store) == {before.blob}  # the partial or unchecked blob was removed, never published
    retried = collection_ops.train(store, "c", np.load(paths["train"]), QUICK, progress=False).manifest
    assert retried["version"] == 2 and _answers(store, test)[0].to_dict() == retried


@pytest.mark.parametrize("fault", ["lost_reply", "delete_blob"])
def test_a_store_failing_after_the_commit_keeps_the_new_model(store_with_model, trained, fault):
    """The manifest landed (its reply was lost, or removing the replaced blob failed): the new model is
    live and whole; at worst the replaced blob stays behind, named by no manifest and never read."""
    paths, _ = trained
    store, test = store_with_model, np.load(paths["test"])
    before, _ = _answers(store, test)
    new = collection_ops.train(FaultyStore(store, fault), "c", np.load(paths["train"]), QUICK, progress=False).manifest
    assert new["version"] == 2 and _answers(store, test)[0].to_dict() == new
    assert model_registry.load(store, "c").manifest.to_dict() == new
    leftover = {before.blob} if fault == "delete_blob" else set()
    assert _blob_ids(store) == {new["blob"]} | leftover


def test_an_append_failing_part_way_leaves_the_model_marked_stale(store_with_model, trained):
    paths, _ = trained
    store = store_with_model
    with pytest.raises(StoreError):
        collection_ops.ingest(FaultyStore(store, "upsert"), "c", np.load(paths["test"])[:40])
    assert store.info("c").count == 100  # half of the append landed
    assert store.read_manifest("c").stale is True  # so the model no longer claims to describe every key
    status = collection_ops.status(store, "c", verify=False)
    assert status["model"]["stale"] is True
