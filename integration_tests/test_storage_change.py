"""Moving a collection to another storage (`amips advise --apply`, issue 23): every point, id, payload and
vector kept, atomic under a kill, and the serving policy tuned on the old storage no longer served."""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as edge
from click.testing import CliRunner

from amips_plugin import collection_ops as ops
from amips_plugin import tuning
from amips_plugin.adapters import open_store
from amips_plugin.adapters.edge_store import EdgeStore
from amips_plugin.cli import main
from amips_plugin.core.errors import InputError
from amips_plugin.rewriting import QueryRewriter

ROOT = Path(__file__).resolve().parents[1]
POINTS = 3000


def _users_collection(root: Path, rng) -> None:
    """Made without amips: UUID ids, a dense vector "text" (cosine), a dense "title" (dot), a sparse vector,
    payloads and a payload index."""
    shard_dir = root / "docs" / "shard"
    shard_dir.mkdir(parents=True)
    shard = edge.EdgeShard.create(str(shard_dir), edge.EdgeConfig(
        vectors={"text": edge.EdgeVectorParams(size=32, distance=edge.Distance.Cosine),
                 "title": edge.EdgeVectorParams(size=8, distance=edge.Distance.Dot)},
        sparse_vectors={"bm25": edge.EdgeSparseVectorParams()}))
    text, title = rng.standard_normal((POINTS, 32)), rng.standard_normal((POINTS, 8))
    shard.update(edge.UpdateOperation.upsert_points([
        edge.Point(str(uuid.UUID(int=i + 1)),
                   {"text": text[i].tolist(), "title": title[i].tolist(),
                    "bm25": edge.SparseVector(indices=[i % 50, 60 + i % 7], values=[1.0, 0.5])},
                   {"n": i, "lang": "en" if i % 3 else "fr", "tags": ["a"] * (i % 4)})
        for i in range(POINTS)]))
    shard.update(edge.UpdateOperation.create_field_index("lang", edge.PayloadSchemaType.Keyword))
    shard.flush()
    shard.close()


def _contents(root: Path) -> tuple[str, dict]:
    """A digest of every id and payload, and every vector (rounded to 1e-5: a cosine vector is normalised again
    on insert), read by the engine itself; and the payload indexes."""
    shard = edge.EdgeShard.load(str(root / "docs" / "shard"))
    digest, offset = hashlib.sha256(), None
    while True:
        records, offset = shard.scroll(edge.ScrollRequest(offset=offset, limit=500, with_vector=True,
                                                          with_payload=True))
        for r in records:
            digest.update(f"{r.id}|{json.dumps(r.payload, sort_keys=True)}|".encode())
            for name in sorted(r.vector):
                v = r.vector[name]
                values = list(v.indices) + list(v.values) if isinstance(v, edge.SparseVector) else v
                digest.update(np.round(np.asarray(values, dtype=np.float64), 5).tobytes())
        if offset is None:
            break
    indexes = {field: str(info.data_type) for field, info in shard.info().payload_schema.items()}
    shard.close()
    return digest.hexdigest(), indexes


def test_a_storage_change_keeps_every_point_and_the_model_but_not_the_policy(tmp_path):
    rng = np.random.default_rng(0)
    _users_collection(tmp_path, rng)
    before = _contents(tmp_path)
    store = open_store(f"edge:{tmp_path}")
    view = ops.for_vector(store, "text")
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    tuning.tune(view, "docs", queries, 0.9, repeats=1, ef_grid=(16, 32))
    assert QueryRewriter(view).search("docs", queries[:5], 3, mode="auto")[1].fallback_reason is None
    said = view.change_storage("docs", "int8")
    assert f"{POINTS:,} points moved from float32 to int8" in said
    assert view.storage("docs") == ("int8", False) and ops.for_vector(store, "title").storage("docs") == ("none", False)
    _, report = QueryRewriter(view).search("docs", queries[:5], 3, mode="auto")
    assert "measured on none storage; the vector is stored as int8 now" in report.fallback_reason
    assert ops.status(view, "docs")["policy"]["stale"] is True
    tuning.tune(view, "docs", queries, 0.9, repeats=1, ef_grid=(16, 32))
    assert QueryRewriter(view).search("docs", queries[:5], 3, mode="auto")[1].fallback_reason is None
    store.close()
    assert _contents(tmp_path) == before
    assert sorted(os.listdir(tmp_path / "docs")) == ["amips", "shard"]


def test_a_collection_without_an_hnsw_index_is_moved_to_an_indexed_copy_of_itself(tmp_path):
    """Made with Qdrant's defaults, 3,000 points hold no HNSW index (every search scores every vector). Moving
    it to the storage it already has was refused as a no-op, and a move to another storage kept the defaults,
    so `advise --apply` could not give it the index `tune` points it to. Now the move builds one, keeping every
    id, payload and vector."""
    rng = np.random.default_rng(4)
    _users_collection(tmp_path, rng)
    before = _contents(tmp_path)
    store = open_store(f"edge:{tmp_path}")
    view = ops.for_vector(store, "text")
    said = "3,000 vectors (0.4 MiB) are below the optimizer's indexing_threshold (10,000 KB)"
    assert said in view.exact_scan_reason("docs")
    said = view.change_storage("docs", "none")
    assert f"{POINTS:,} points moved from float32 to float32, now HNSW-indexed" in said
    assert view.exact_scan_reason("docs") is None and store._shard("docs").info().indexed_vectors_count > 0
    assert "already stores its vectors as float32" in view.change_storage("docs", "none")
    store.close()
    assert _contents(tmp_path) == before


def test_a_server_store_changes_quantization_and_local_mode_says_it_has_none(tmp_path):
    store = open_store(str(tmp_path / "local"))
    ops.ingest(store, "c", np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32))
    with pytest.raises(InputError, match="local mode, which searches exactly and keeps no quantization"):
        store.change_storage("c", "int8")
    store.close()


_CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from amips_plugin.adapters import edge_storage_change as change
    from amips_plugin.adapters.edge_store import EdgeStore
    where, root = sys.argv[1], sys.argv[2]
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if where == "copying":
        real_copy = change.copy_points
        change.copy_points = lambda source, target, progress: real_copy(source, target, die)
    elif where == "checking":
        change.check_copy = die
    elif where == "removing-old":
        real_rmtree = shutil.rmtree
        shutil.rmtree = lambda path, *a, **k: die() if str(path).endswith("shard.old") else real_rmtree(path, *a, **k)
    else:
        calls, real_rename, nth = [0], os.rename, {"first-rename": 1, "second-rename": 2}[where]
        def rename(*a, **k):
            calls[0] += 1
            if calls[0] == nth:
                die()
            return real_rename(*a, **k)
        os.rename = rename
    EdgeStore(root).change_storage("docs", "turbo4", using="text")
    print("finished")
""")


@pytest.mark.parametrize("where,storage", [("copying", "none"), ("checking", "none"), ("first-rename", "turbo4"),
                                           ("second-rename", "turbo4"), ("removing-old", "turbo4")])
def test_a_kill_anywhere_in_a_storage_change_leaves_the_collection_whole(tmp_path, where, storage):
    """SIGKILL at each step; the next open finishes or undoes the change: the same points, in the old storage
    (killed while building) or the new (killed while swapping), and no leftover folder."""
    _users_collection(tmp_path, np.random.default_rng(2))
    before = _contents(tmp_path)
    child = subprocess.run([sys.executable, "-c", _CHILD, where, str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == -9 and "finished" not in child.stdout, child.stderr[-2000:]
    assert (tmp_path / "docs" / "storage-change.json").exists()
    store = EdgeStore(tmp_path)
    assert store.collections() == ["docs"]  # recovered before listing
    assert ops.for_vector(store, "text").storage("docs") == (storage, False)
    assert store.info("docs", "text").count == POINTS
    store.close()
    assert set(os.listdir(tmp_path / "docs")) <= {"amips", "shard"}  # amips/: the lock file the change took
    assert _contents(tmp_path) == before


def test_advise_apply_moves_the_collection_and_tunes_it_there(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 24))
    keys = (centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 24))).astype(np.float32)
    queries = (centres[rng.integers(0, 40, 1000)] + 0.3 * rng.standard_normal((1000, 24))).astype(np.float32)
    np.save(tmp_path / "keys.npy", keys)
    np.save(tmp_path / "queries.npy", queries)
    store = ["--store", f"edge:{tmp_path / 'store'}"]
    runner = CliRunner()
    assert runner.invoke(main, [*store, "ingest", "c", str(tmp_path / "keys.npy"), "--payload",
                                str(_payloads(tmp_path, len(keys)))]).exit_code == 0
    result = runner.invoke(main, [*store, "advise", "c", "--queries", str(tmp_path / "queries.npy"), "--target-recall",
                                  "0.9", "--configs", "none,int8", "--max-bytes-per-key", "40", "--repeats", "1",
                                  "--apply", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    advice = json.loads(result.output)
    assert [c["configuration"] for c in advice["configurations"]] == ["as is", "none", "int8", "int8+disk"]
    assert all(type(c["rss_growth_bytes"]) is int and c["rss_growth_bytes"] >= 0 for c in advice["configurations"][1:])
    recommended = [c for c in advice["configurations"] if c["recommended"]]
    assert advice["recommended"] == "int8" and [c["on_disk"] for c in recommended] == [True]
    assert "points moved from float32 to int8 (originals on disk)" in advice["applied"]["moved"]
    status = json.loads(runner.invoke(main, [*store, "status", "c", "--json"]).output)
    entry = status[0] if isinstance(status, list) else status
    assert entry["storage"] == {"quantization": "int8", "on_disk": True}
    assert entry["policy"]["stale"] is False and entry["points"] == 4000
    moved = open_store(f"edge:{tmp_path / 'store'}")
    assert moved.records("c", np.array([17]), True)[17][0] == {"n": 17}
    moved.close()


def _payloads(folder: Path, n: int) -> Path:
    path = folder / "payloads.jsonl"
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(n)))
    return path


def test_advise_reads_every_copy_against_the_collection_as_it_is_and_apply_keeps_it_when_it_wins(tmp_path):
    """The collection itself is tuned where it stands (nothing stored) and timed beside the copies; when it is
    the fastest, --apply leaves it as it is, else it moves (and an unindexed collection gets its index)."""
    from amips_plugin import advise as adv

    rng = np.random.default_rng(6)
    _users_collection(tmp_path, rng)
    before = _contents(tmp_path)
    store = open_store(f"edge:{tmp_path}")
    view = ops.for_vector(store, "text")
    queries = rng.standard_normal((800, 32)).astype(np.float32)
    advice = adv.advise(view, "docs", queries, 0.9, ("none",), repeats=1)
    rows = advice.to_dict()["configurations"]
    assert [(r["configuration"], r["storage"], r["as_is"]) for r in rows] == [("as is", "float32", True),
                                                                             ("none", "float32", False)]
    assert "no HNSW index" in advice.configurations[0].report.verdict() and view.read_manifest("docs", "policy") is None
    assert all(r["queries_per_second"] > 0 and r["recall@1"] >= 0.9 for r in rows)
    assert sum(r["recommended"] for r in rows) == 1
    moved, report = adv.apply(view, "docs", advice, queries, repeats=1)
    if advice.recommended.as_is:
        assert "stays as it is" in moved and view.exact_scan_reason("docs") is not None
    else:
        assert "now HNSW-indexed" in moved and view.exact_scan_reason("docs") is None
    assert report.manifest is not None and view.read_manifest("docs", "policy") is not None
    store.close()
    assert _contents(tmp_path) == before
