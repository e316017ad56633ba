"""Disks and interrupted writes (issue 22.5–22.7): a truncated vector file, a full disk, an append killed
part-way. Each gets one clear line and loses or doubles nothing; none is answered from what survived.

Real engines and real processes: the full-disk cases run on a small tmpfs when this machine lets the
test mount one (root in CI), and on a disk whose free space is reported low otherwise.
"""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amips_plugin import collection_ops as ops
from amips_plugin.adapters import open_store
from amips_plugin.cli import main
from amips_plugin.core.errors import StoreError

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(17)
BASE = RNG.standard_normal((3000, 32)).astype(np.float32)
APPEND = RNG.standard_normal((20000, 32)).astype(np.float32)  # three ingest batches of 8,192


def amips(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _edge_with_base(folder: Path, quantization: str = "none") -> str:
    store = open_store(f"edge:{folder}")
    ops.ingest(store, "c", BASE, quantization=quantization)
    store.close()
    return f"edge:{folder}"


# -- a truncated vector file (22.5) -------------------------------------------------------------------------------

@pytest.mark.parametrize("quantization", ["none", "float16"])  # 4 and 2 bytes a coordinate
def test_a_truncated_vector_file_is_refused_not_answered_from(tmp_path, quantization):
    spec = _edge_with_base(tmp_path, quantization)
    (matrix,) = tmp_path.glob("c/shard/segments/*/vector_storage/matrix.dat")
    size = matrix.stat().st_size
    os.truncate(matrix, size // 3)
    np.save(tmp_path / "q.npy", BASE[:10])
    for args in (["status", "c", "--no-verify"], ["status", "c"], ["search", "c", "--queries", tmp_path / "q.npy"],
                 ["train", "c", "--queries", tmp_path / "q.npy", "--steps", "1"]):
        result = amips("--store", spec, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "is damaged" in result.output and "999 of its 3,000 vectors" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert matrix.stat().st_size == size // 3  # the engine never opened it (it would pad it with zeros)
    listing = amips("--store", spec, "status")
    assert "UNREADABLE" in listing.output and "is damaged" in listing.output


# -- an interrupted append (22.7) --------------------------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from amips_plugin.adapters.edge_store import EdgeStore
    from amips_plugin.cli import main
    calls = 0
    real = EdgeStore.upsert
    def upsert(self, *args, **kwargs):  # SIGKILL on the second batch, after the first landed
        global calls
        calls += 1
        if calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)
    EdgeStore.upsert = upsert
    main(sys.argv[1:])
""")


def test_an_append_killed_part_way_is_finished_by_running_it_again(tmp_path):
    spec = _edge_with_base(tmp_path)
    np.save(tmp_path / "append.npy", APPEND)
    killed = subprocess.run([sys.executable, "-c", KILLER, "--store", spec, "ingest", "c", str(tmp_path / "append.npy"),
                             "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    store = open_store(spec)
    assert store.info("c").count == 3000 + 8192
    store.close()

    again = amips("--store", spec, "ingest", "c", tmp_path / "append.npy", "--quiet")
    assert again.exit_code == 0, again.output
    assert "ids 3000..22999" in again.output and "had written 8,192 of them" in again.output
    store = open_store(spec)
    try:
        assert store.info("c").count == 3000 + 20000  # nothing stored twice
        np.testing.assert_array_equal(store.retrieve("c", np.arange(3000, 23000)), APPEND)
        assert store.read_pending_write("c") is None
    finally:
        store.close()
    # once finished, the same file again is an ordinary append: new ids
    assert "ids 23000..42999" in amips("--store", spec, "ingest", "c", tmp_path / "append.npy", "--quiet").output


@pytest.mark.parametrize("backend", ["edge", "local-dir"])
def test_an_append_failing_part_way_says_what_was_written_and_resumes(tmp_path, backend, monkeypatch):
    store = open_store(f"edge:{tmp_path}" if backend == "edge" else str(tmp_path / "local"))
    try:
        ops.ingest(store, "c", BASE)
        real, calls = store.upsert, []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise StoreError("cannot write points to 'c': No space left on device (os error 28)")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, "upsert", failing)
        with pytest.raises(StoreError, match=r"^8,192 of 20,000 points written \(ids 3000\.\.11191\) when the write "
                                             r"failed: .*No space left.* run the same ingest again to finish it$"):
            ops.ingest(store, "c", APPEND)
        monkeypatch.setattr(store, "upsert", real)
        other = RNG.standard_normal((10, 32)).astype(np.float32)
        done = ops.ingest(store, "c", APPEND)
        assert done.resumed == 8192 and done.ids[0] == 3000 and done.count == 23000
        # an interrupted append that is not re-run stays as written; the next different one gets fresh ids
        monkeypatch.setattr(store, "upsert", failing)
        calls.clear()
        with pytest.raises(StoreError):
            ops.ingest(store, "c", APPEND)
        monkeypatch.setattr(store, "upsert", real)
        different = ops.ingest(store, "c", other)
        assert different.resumed is None and different.ids[0] == 23000 + 8192 and different.count == 23000 + 8192 + 10
    finally:
        store.close()


# -- a full disk (22.6) ------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs, or None where this machine does not let the test mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?): the low-free-space test below covers the logic")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("store_kind", ["edge", "local-dir"])
def test_a_write_that_cannot_fit_is_refused_before_anything_is_written(small_disk, store_kind):
    spec = f"edge:{small_disk / 'st'}" if store_kind == "edge" else str(small_disk / "local")
    np.save(small_disk.parent / "big.npy", RNG.standard_normal((30000, 128)).astype(np.float32))  # 15 MiB
    refused = amips("--store", spec, "ingest", "c", small_disk.parent / "big.npy", "--quiet")
    assert refused.exit_code == 1 and "not enough disk space" in refused.output and "MiB free" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert "no collections" in amips("--store", spec, "status").output  # nothing created, nothing to clean up
    np.save(small_disk.parent / "small.npy", BASE)
    assert amips("--store", spec, "ingest", "c", small_disk.parent / "small.npy", "--quiet").exit_code == 0
    assert "3,000 points" in amips("--store", spec, "status", "c").output


def test_a_nearly_full_disk_is_one_line_everywhere_never_a_crash(tmp_path):
    """Free space reported below what a write or Edge's log replay may need: ingest, status and search
    each say so in one line (a full disk made Edge die of SIGBUS); the points on disk are untouched."""
    spec = _edge_with_base(tmp_path)
    np.save(tmp_path / "q.npy", BASE[:5])
    code = textwrap.dedent("""
        import shutil, sys
        from collections import namedtuple
        Usage = namedtuple("Usage", "total used free")
        shutil.disk_usage = lambda path: Usage(1 << 30, (1 << 30) - (5 << 20), 5 << 20)  # 5 MiB free
        from amips_plugin.cli import main
        main(sys.argv[1:])
    """)
    for args in (["ingest", "c", tmp_path / "q.npy"], ["status", "c"],
                 ["search", "c", "--queries", tmp_path / "q.npy"]):
        run = subprocess.run([sys.executable, "-c", code, "--store", spec, *map(str, args)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, (args, run.stdout, run.stderr)
        assert "5.0 MiB free" in run.stderr or "5 MiB free" in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    store = open_store(spec)
    assert store.info("c").count == 3000
    store.close()
