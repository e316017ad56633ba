"""Wrong answers and faults an operator meets (issue 22), run as a user runs them: `amips` commands in
fresh processes on a real Qdrant Edge store, one temporary folder per case.

    python -m bench.fault_cases [--package DIR] [--cases hybrid,recreated,...]

--package runs the same cases against another build of amips (`pip install --no-deps --target DIR
<checkout>`), e.g. the commit before a fix, so before and after come from one run on one machine.

Cases and what each prints:
  hybrid       20,000 × 64 random-normal keys, a small model (30 steps, ρ 0.005), 300 queries:
               recall@1 and short rows of `--mode off` and `--mode hybrid` / `replace` at hnsw_ef 128
  recreated    a model, a compressed key store; the shard deleted by hand and the collection ingested
               again from other keys of the same shape: what `status` says, and recall@1 of
               `--candidates-from pq` and `--mode replace`
  truncated    the collection's vector file cut to a third: `status --no-verify`, and search's recall@1
  killed       an append of 20,000 points SIGKILLed after its first batch, then run again: points held
  full-disk    a 64 MiB tmpfs (root only): ingest of 60,000 × 128 keys, then `status` — exit codes, output
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_LAUNCH = textwrap.dedent("""
    import os, sys
    package = os.environ.get("AMIPS_BENCH_PACKAGE")
    if package:  # that build, not the checkout installed in this venv
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, package)
    if os.environ.get("AMIPS_BENCH_KILL_AT"):  # SIGKILL this process at the n-th store write
        import signal
        from amips_plugin.adapters.edge_store import EdgeStore
        real, calls = EdgeStore.upsert, []
        def upsert(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == int(os.environ["AMIPS_BENCH_KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, *args, **kwargs)
        EdgeStore.upsert = upsert
    from amips_plugin.cli import main
    main(sys.argv[1:])
""")


class Runner:
    """`amips` in a fresh process, from this checkout or from --package."""

    def __init__(self, package: str | None, folder: Path) -> None:
        self.env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if package:
            self.env["AMIPS_BENCH_PACKAGE"] = package
        self.folder = folder

    def __call__(self, *args: Any, kill_at: int | None = None) -> subprocess.CompletedProcess:
        env = {**self.env, **({"AMIPS_BENCH_KILL_AT": str(kill_at)} if kill_at else {})}
        return subprocess.run([sys.executable, "-c", _LAUNCH, "--store", f"edge:{self.folder / 'st'}",
                               *map(str, args)], capture_output=True, text=True, env=env, cwd=self.folder)

    def search(self, *args: Any) -> dict[str, Any]:
        out = self("search", *args, "--json")
        if out.returncode:
            return {"exit": out.returncode, "error": _last_line(out)}
        report = json.loads(out.stdout)
        ids = np.load(self.folder / "ids.npy") if (self.folder / "ids.npy").exists() else None
        return {"recall@1": report.get("recall@1"), "notes": report.get("notes"),
                "fallback": report.get("fallback_reason"),
                "short_rows": None if ids is None else int((ids < 0).any(axis=1).sum())}


def _last_line(out: subprocess.CompletedProcess) -> str:
    lines = (out.stderr.strip() or out.stdout.strip()).splitlines()
    return lines[-1][:240] if lines else f"exit {out.returncode}"


def _save(folder: Path, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)


def hybrid(run: Runner) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((20000, 64)).astype(np.float32)
    train, test = rng.standard_normal((3000, 64)).astype(np.float32), rng.standard_normal((300, 64)).astype(np.float32)
    _save(run.folder, keys=keys, train=train, test=test, truth=(test @ keys.T).argmax(axis=1))
    run("ingest", "c", "keys.npy", "--quiet")
    run("train", "c", "--queries", "train.npy", "--steps", "30", "--params-fraction", "0.005", "--quiet")
    return {mode: run.search("c", "--queries", "test.npy", "--truth", "truth.npy", "--limit", "10", "--mode", mode,
                             "--hnsw-ef", "128", "-o", "ids.npy")
            for mode in ("off", "hybrid", "replace")}


def recreated(run: Runner) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    first, second = (rng.standard_normal((3000, 32)).astype(np.float32) for _ in range(2))
    train, test = rng.standard_normal((2000, 32)).astype(np.float32), rng.standard_normal((300, 32)).astype(np.float32)
    _save(run.folder, first=first, second=second, train=train, test=test, truth=(test @ second.T).argmax(axis=1))
    run("ingest", "c", "first.npy", "--quiet")
    run("train", "c", "--queries", "train.npy", "--steps", "60", "--quiet")
    run("pq-build", "c", "--subspaces", "8", "--quiet")
    shutil.rmtree(run.folder / "st" / "c" / "shard")
    made = run("ingest", "c", "second.npy", "--quiet")
    status = run("status", "c", "--no-verify")
    common = ("c", "--queries", "test.npy", "--truth", "truth.npy", "--limit", "10", "-o", "ids.npy")
    return {"ingest": made.stdout.strip()[:120], "status": status.stdout.strip()[:300],
            "pq": run.search(*common, "--mode", "off", "--candidates-from", "pq", "--candidates", "50"),
            "replace": run.search(*common, "--mode", "replace"), "off": run.search(*common, "--mode", "off")}


def truncated(run: Runner) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    keys, test = rng.standard_normal((3000, 32)).astype(np.float32), rng.standard_normal((300, 32)).astype(np.float32)
    _save(run.folder, keys=keys, test=test, truth=(test @ keys.T).argmax(axis=1))
    run("ingest", "c", "keys.npy", "--quiet")
    (matrix,) = (run.folder / "st").glob("c/shard/segments/*/vector_storage/matrix.dat")
    os.truncate(matrix, matrix.stat().st_size // 3)
    status = run("status", "c", "--no-verify")
    return {"status": {"exit": status.returncode, "says": _last_line(status)},
            "search": run.search("c", "--queries", "test.npy", "--truth", "truth.npy", "--mode", "off",
                                 "-o", "ids.npy")}


def killed(run: Runner) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    _save(run.folder, base=rng.standard_normal((3000, 32)).astype(np.float32),
          extra=rng.standard_normal((20000, 32)).astype(np.float32))
    run("ingest", "c", "base.npy", "--quiet")
    first = run("ingest", "c", "extra.npy", "--quiet", kill_at=2)
    after_kill = run("status", "c", "--no-verify").stdout.strip()[:80]
    again = run("ingest", "c", "extra.npy", "--quiet")
    return {"first_run_exit": first.returncode, "after_kill": after_kill, "rerun": _last_line(again),
            "expected_points": 23000}


def full_disk(run: Runner) -> dict[str, Any]:
    mount = run.folder / "st"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        return {"skipped": "cannot mount a tmpfs here (needs root)"}
    try:
        _save(run.folder, big=np.random.default_rng(4).standard_normal((60000, 128)).astype(np.float32))
        ingest = run("ingest", "c", "big.npy", "--quiet")
        status = run("status")
        return {"ingest": {"exit": ingest.returncode, "says": _last_line(ingest)},
                "status": {"exit": status.returncode, "says": _last_line(status)}}
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


CASES: dict[str, Callable[[Runner], dict[str, Any]]] = {
    "hybrid": hybrid, "recreated": recreated, "truncated": truncated, "killed": killed, "full-disk": full_disk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", help="Run the cases against this build of amips (pip install --target DIR).")
    parser.add_argument("--cases", default=",".join(CASES), help="Comma-separated, from: " + ", ".join(CASES))
    args = parser.parse_args()
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory() as folder:
            try:
                outcome = CASES[name](Runner(args.package, Path(folder)))
            except Exception as exc:  # noqa: BLE001 - a case that breaks is reported, the others still run
                outcome = {"bench_error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps({"case": name, "build": args.package or "this checkout", **outcome}), flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
