"""The files amips keeps beside a Qdrant Edge collection (<root>/<collection>/amips/): leftovers of interrupted
writes are listed by `status` and removed (by the next commit, or `status --clean`) without ever touching a
file a reader or a live writer uses; planted symbolic links are never followed out of the folder; and new
files honour the umask, so a serving account in the group can read every model a retrain publishes."""
import json
import os
import stat
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amips_plugin import model_registry
from amips_plugin.adapters import open_store
from amips_plugin.cli import main
from amips_plugin.model_artifact import encode_model
from amips_plugin.core.errors import ArtifactError, StoreBusyError, StoreError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.rewriting import QueryRewriter

OLD = 3600.0  # seconds: far beyond the grace (twice the 30 s manifest-lock timeout)


def _blob(seed: int) -> bytes:
    torch.manual_seed(seed)
    return encode_model(build_model(ModelConfig(kind="keynet", dim=8, width=4, depth=1)))


@pytest.fixture
def edge(tmp_path):
    """(spec, an Edge store holding "c": 50 points in 8-d and a published model, its amips/ folder)."""
    spec = f"edge:{tmp_path / 'store'}"
    store = open_store(spec)
    store.create("c", 8, "dot")
    store.upsert("c", np.arange(50), np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32))
    model_registry.publish(store, "c", _blob(1), {"count": 50})
    yield spec, store, tmp_path / "store" / "c" / "amips"
    store.close()


def _age(path, seconds: float = OLD) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _plant_leftovers(folder) -> dict[str, bytes]:
    """What kill -9 leaves: an unnamed blob and temporary files of the blob, manifest and policy writes."""
    planted = {"blob-777.amips": b"x" * 100, ".blob-777.amips.k3j_9xq2": b"y" * 10,
               ".manifest.json.ab12cd34": b"{", ".policy.json.zz0099aa": b"{}"}
    for name, data in planted.items():
        (folder / name).write_bytes(data)
        _age(folder / name)
    return planted


def _status(spec, *args):
    result = CliRunner().invoke(main, ["--store", spec, "status", "c", "--no-verify", *args])
    assert result.exit_code == 0, result.output
    return result.output


# -- item 8: leftovers --------------------------------------------------------------------------------------------

def test_status_lists_leftovers_and_clean_removes_only_them(edge):
    spec, store, folder = edge
    planted = _plant_leftovers(folder)
    live = store.read_manifest("c")
    _age(folder / f"blob-{live.blob}.amips")  # old, but named: never a leftover
    fresh = folder / "blob-888.amips"  # a live writer's blob, not committed yet
    fresh.write_bytes(b"z")
    store.close()

    size = sum(map(len, planted.values()))
    listed = _status(spec)
    assert f"c: 4 leftover file(s), {size} bytes" in listed and "`amips status c --clean`" in listed
    assert json.loads(_status(spec, "--json"))["leftovers"] == {"files": 4, "bytes": size, "removed": False}

    assert f"c: removed 4 leftover file(s), {size} bytes" in _status(spec, "--clean")
    assert not any((folder / name).exists() for name in planted)
    assert fresh.exists() and (folder / f"blob-{live.blob}.amips").exists() and (folder / ".manifest.lock").exists()
    assert "leftover" not in _status(spec)
    reopened = open_store(spec)
    assert model_registry.load(reopened, "c").manifest == live
    reopened.close()


def test_a_publish_removes_old_leftovers_but_not_a_concurrent_writers_blob(edge):
    spec, store, folder = edge
    planted = _plant_leftovers(folder)
    in_flight = folder / "blob-999.amips"
    in_flight.write_bytes(b"still being committed")
    _age(in_flight, 2 * store.manifest_lock_timeout - 5)  # inside the grace
    model_registry.publish(store, "c", _blob(2), {"count": 50})
    assert not any((folder / name).exists() for name in planted)
    assert in_flight.exists()
    assert model_registry.load(store, "c").manifest.version == 2


def test_a_blob_any_manifest_names_or_might_name_is_never_a_leftover(edge):
    spec, store, folder = edge
    named = folder / "blob-4242.amips"
    named.write_bytes(b"named by the model slot of a vector 'text' (as another client could have left it)")
    manifest = {key: value for key, value in store.read_manifest("c").to_dict().items() if key != "slot"}
    (folder / "manifest@text.json").write_text(json.dumps({**manifest, "blob": 4242}))
    unnamed = folder / "blob-5151.amips"
    unnamed.write_bytes(b"orphan")
    for path in (named, unnamed):
        _age(path)
    assert {f.name for f in model_registry.leftovers(store, "c")} == {"blob-5151.amips"}

    (folder / "router.json").write_bytes(b"{ unreadable")  # might name any blob: no blob is a leftover
    temp = folder / ".router.json.0a1b2c3d"
    temp.write_bytes(b"{")
    _age(temp)
    assert [f.name for f in model_registry.clean_leftovers(store, "c")] == [temp.name]
    assert named.exists() and unnamed.exists()


# -- item 10: planted symbolic links ------------------------------------------------------------------------------

def test_a_lock_file_linked_elsewhere_is_never_created_or_locked(edge, tmp_path):
    spec, store, folder = edge
    target = tmp_path / "elsewhere" / "created-by-amips"
    target.parent.mkdir()
    (folder / ".manifest.lock").unlink()
    (folder / ".manifest.lock").symlink_to(target)
    with pytest.raises(StoreError, match=r"\.manifest\.lock is a symbolic link"):
        model_registry.publish(store, "c", _blob(2), {"count": 50})
    assert not target.exists()
    assert model_registry.load(store, "c").manifest.version == 1


def test_the_lock_keeps_its_timeout_and_busy_error(edge):
    spec, store, folder = edge
    store.manifest_lock_timeout = 0.2
    with store.manifest_lock("c"):
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="another writer kept the manifest lock of 'c' for over 0.2s"):
            with store.manifest_lock("c"):
                pass
        assert 0.2 <= time.monotonic() - started < 5
    with store.manifest_lock("c"):  # released by the holder
        pass


def test_an_amips_folder_linked_elsewhere_is_refused_and_nothing_there_is_deleted(edge, tmp_path):
    spec, store, folder = edge
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "blob-1.amips"
    victim.write_bytes(b"someone else's file")
    manifest = store.read_manifest("c").to_dict()
    (outside / "manifest.json").write_text(json.dumps({**manifest, "blob": 1}))
    folder.rename(tmp_path / "moved-amips")
    folder.symlink_to(outside)
    store.close()
    for command in (["drop-model", "c"], ["drop-index", "c", "pq"], ["status", "c"]):
        result = CliRunner().invoke(main, ["--store", spec, *command])
        assert result.exit_code == 1 and "is a symbolic link" in result.output, result.output
    assert victim.read_bytes() == b"someone else's file" and (outside / "manifest.json").exists()
    reopened = open_store(spec)
    with pytest.raises(StoreError, match="amips is a symbolic link"):
        model_registry.clean_leftovers(reopened, "c")
    reopened.close()


def test_manifest_and_blob_links_are_neither_read_nor_written_through(edge, tmp_path):
    spec, store, folder = edge
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(store.read_manifest("c").to_dict()))  # valid: read through a link, it would serve
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(secret)
    result, report = QueryRewriter(store).search("c", np.ones((1, 8), np.float32), 3)
    assert "symbolic link" in report.fallback_reason and "drop-model" in report.fallback_reason
    model_registry.publish(store, "c", _blob(2), model_registry.current_fingerprint(store, "c"))
    assert not (folder / "manifest.json").is_symlink()  # the link was replaced, its target untouched
    assert json.loads(secret.read_text())["version"] == 1
    blob = store.read_manifest("c").blob
    real = folder / f"blob-{blob}.amips"
    (tmp_path / "real-blob").write_bytes(real.read_bytes())
    real.unlink()
    real.symlink_to(tmp_path / "real-blob")
    with pytest.raises(ArtifactError, match="symbolic link"):
        store.read_blob("c", blob)


# -- item 11: the umask -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_artifacts_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store = open_store(f"edge:{tmp_path / 'store'}")
        store.create("c", 8, "dot")
        store.upsert("c", np.arange(50), np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32))
        for seed in (1, 2):  # a new manifest, then one replaced
            manifest = model_registry.publish(store, "c", _blob(seed), {"count": 50})
        store.close()
    finally:
        os.umask(previous)
    folder = tmp_path / "store" / "c" / "amips"
    for name in ("manifest.json", f"blob-{manifest['blob']}.amips", ".manifest.lock"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == mode, name
