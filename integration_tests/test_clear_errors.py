"""Never a wrong answer in silence (issue 22.14), on real stores: what used to be an OverflowError, a file system
error half-way through, an empty collection left behind, a silent default or a misleading hint is now one clear
line naming the parameter (or id, or file) at fault, raised before anything is written."""
import math

import numpy as np
import pytest
import torch

from amips_plugin import collection_ops
from amips_plugin import model_registry
from amips_plugin.adapters import open_store
from amips_plugin.cli import _status_line
from amips_plugin.client import AmipsClient
from amips_plugin.model_artifact import encode_model
from amips_plugin.core.errors import InputError, InvalidRequestError, StoreError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.train_config import TrainConfig

BACKENDS = ("local-dir", "edge")


def _spec(backend: str, folder) -> str:
    return f"edge:{folder}" if backend == "edge" else str(folder)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    store = open_store(_spec(request.param, tmp_path / "store"))
    yield store
    store.close()


def _keys(rows: int = 20, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)


@pytest.mark.parametrize("largest", [2**63 - 1, 2**63 + 5, 2**64 - 1])
def test_appending_after_the_largest_int64_id_asks_for_ids(store, largest):
    """The next free integers would pass 2**63-1 (int64, or text beyond it): an InputError naming the id and
    --ids, not an OverflowError; nothing is written, and appending with explicit ids still works."""
    collection_ops.ingest(store, "c", _keys(2), ids=[0, largest])
    with pytest.raises(InputError, match=rf"^ids: 'c' already holds integer id {largest}, so the next 3 ids would "
                                         r"pass 2\*\*63-1, .*pass --ids"):
        collection_ops.ingest(store, "c", _keys(3))
    assert store.info("c").count == 2
    assert collection_ops.ingest(store, "c", _keys(3), ids=[1, 2, 3]).count == 5


def test_names_are_bounded_in_bytes_not_characters(store):
    """127 'é' are 254 bytes: refused at ingest (a file name holds 255 bytes, and local mode adds "__amips" for the
    model's blobs); 100 'é' (200 bytes) ingest and train."""
    with pytest.raises(InputError, match="254 bytes in UTF-8, over the 200 a name may take"):
        collection_ops.ingest(store, "é" * 127, _keys())
    assert store.collections() == []
    if store.location.startswith("edge:"):
        return  # Edge takes ASCII names only
    collection_ops.ingest(store, "é" * 100, _keys(64, 8))
    queries = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    trained = collection_ops.train(store, "é" * 100, queries, TrainConfig(steps=5, eval_every=5, noise_copies=0,
                                                                          device="cpu", min_match=0.0), progress=False)
    assert trained.manifest["version"] == 1


@pytest.mark.parametrize("payload, expected", [
    ({"score": float("nan")}, r"payloads\[1\] is not storable as JSON \(Out of range float values"),
    ({"when": object()}, r"payloads\[1\] is not storable as JSON \(a object is not a JSON value\)"),
    ([1, 2], r"payloads\[1\] is a list, not a dict or None"),
])
def test_payloads_are_checked_before_the_collection_is_made(store, payload, expected):
    """Edge refused a NaN payload only mid-write, leaving an empty collection behind; numpy scalars stay welcome."""
    with pytest.raises(InputError, match=expected):
        collection_ops.ingest(store, "c", _keys(3), payloads=[{"n": 0}, payload, None])
    assert store.collections() == []
    if store.location.startswith("edge:"):  # Edge stores numpy scalars (local mode's serializer does not)
        collection_ops.ingest(store, "c", _keys(2), payloads=[{"n": np.int64(1)}, {"x": np.float32(0.5)}])
        assert store.records("c", np.arange(2))[1][0] == {"x": 0.5}


@pytest.mark.parametrize("kwargs, expected", [
    (dict(limit=0), r"^limit must be an integer in \[1, 10,000\], got 0$"),
    (dict(offset=-5), r"^offset must be an integer in \[0, 9,990\] \(offset \+ limit ≤ 10,000\), got -5$"),
    (dict(offset=10**9), r"^offset must be an integer in \[0, 9,990\] .*got 1000000000$"),
    (dict(score_threshold=math.nan), r"^score_threshold is NaN"),
])
def test_client_query_arguments_out_of_range_are_refused_like_qdrant_client(store, kwargs, expected):
    """qdrant-client raises a ValueError for limit 0 and a negative offset; AmipsClient did not (limit 0 meant 10,
    offset -5 sliced from the end, offset 10**9 blamed `limit`, a NaN threshold returned nothing)."""
    collection_ops.ingest(store, "c", _keys())
    client = AmipsClient(store)
    with pytest.raises(InvalidRequestError, match=expected) as raised:
        client.query_points("c", query=_keys(1)[0].tolist(), **kwargs)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, InputError)
    assert len(client.query_points("c", query=_keys(1)[0].tolist(), limit=3, offset=2,
                                   score_threshold=-1e9).points) == 3


def test_an_edge_shard_that_fails_to_open_blames_another_process_only_for_its_lock(tmp_path):
    """A corrupt segment is named as it is, without "is another process using DIR?" (kept for the WAL lock:
    tests/test_cli.py::test_a_store_held_by_another_process_is_one_clear_line)."""
    store = open_store(f"edge:{tmp_path}")
    collection_ops.ingest(store, "c", _keys())
    store.close()
    for segment in (tmp_path / "c" / "shard" / "segments").glob("*/segment.json"):
        segment.write_text("garbage")
    reopened = open_store(f"edge:{tmp_path}")
    try:
        with pytest.raises(StoreError, match="Failed to deserialize") as raised:
            reopened.info("c")
        assert "another process" not in str(raised.value)
    finally:
        reopened.close()


@pytest.mark.parametrize("verify", [True, False])
def test_status_names_a_model_whose_blob_is_gone(store, verify):
    """The model's blob deleted under a valid manifest: status (with --no-verify too) calls the model unusable,
    names the blob and the command that clears it — no search could load it."""
    collection_ops.ingest(store, "c", _keys(20, 8))
    torch.manual_seed(0)
    blob = encode_model(build_model(ModelConfig(kind="smoothmax", dim=8, width=4, points=20)))
    manifest = model_registry.publish(store, "c", blob, model_registry.current_fingerprint(store, "c"))
    assert "error" not in collection_ops.status(store, "c", verify)["model"]
    store.delete_blob("c", manifest["blob"])
    model = collection_ops.status(store, "c", verify)["model"]
    assert model["version"] == 1
    assert (f"model blob {manifest['blob']} of 'c' is missing from the store; clear it with `amips drop-model c` "
            "and build it again") == model["error"]
    report = collection_ops.status_reports(store, "c", verify)[0]
    assert f"model UNUSABLE (model blob {manifest['blob']} of 'c' is missing" in _status_line(report)
