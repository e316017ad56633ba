"""What refusing hostile stored state costs: peak memory and time, each case in a fresh process.

    python -m bench.hostile_state [--bomb-gib 4] [--npy-gib 400] [--queries 200]

Cases: a checksum-valid artifact of a few hundred bytes declaring a keynet of --width × --depth
(default 65536 × 64: 275 G parameters); a checksum-valid model artifact followed, in the same zstd
frame, by --bomb-gib GiB of zeros (the frame declaring its size, and not); a `.npy` header
declaring --npy-gib GiB. For each: the growth of peak RSS (ru_maxrss) over the process's baseline
(imports done, one valid artifact decoded, the hostile bytes in memory) and the seconds to refuse. \
Then the query path with
such an artifact planted as a collection's model (Edge, 300 keys × 16): searches of one query
each, against plain searches (mode off) on the same store in the same run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CASE = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    sys.path[:0] = [{repo!r}, {tests!r}]
    import test_hostile_files as h
    from amips_plugin.core.errors import AmipsError
    case, folder = {case!r}, Path({folder!r})
    if case == "huge-model":
        blob = h.huge_model_artifact(dim={dim}, width={width}, depth={depth})
        refuse = lambda: h.decode_model(blob); size = len(blob)
    elif case == "zstd-bomb":
        blob = h.bomb_artifact(gib={bomb}, declare_size=True); refuse = lambda: h.decode_model(blob); size = len(blob)
    elif case == "zstd-bomb-undeclared":
        blob = h.bomb_artifact(gib={bomb}); refuse = lambda: h.decode_model(blob); size = len(blob)
    else:
        path = h.huge_npy(folder / "huge.npy", gib={npy})
        refuse = lambda: h.load_vectors(path); size = path.stat().st_size
    h.decode_model(h.VALID)  # warm-up: torch's lazy imports are not the refusal's cost
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        refuse(); outcome = "accepted"
    except AmipsError as exc:
        outcome = str(exc)[:90]
    except MemoryError:
        outcome = "MemoryError"
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({{"case": case, "file_bytes": size, "peak_rss_growth_mib": round(grown, 1),
                       "seconds": round(seconds, 3), "outcome": outcome}}))
""")

_QUERY_PATH = textwrap.dedent("""
    import hashlib, json, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    import numpy as np, torch
    torch.set_num_threads(1)
    import test_hostile_files as h
    from amips_plugin.adapters import SearchParams, open_store
    from amips_plugin import collection_ops as ops
    from amips_plugin.rewriting import QueryRewriter
    from amips_plugin.synthetic import gaussian_mixture
    keys, queries = gaussian_mixture(num_keys=300, num_queries={queries}, dim=16, clusters=8, seed=13)
    store = open_store("edge:{folder}/store")
    ops.ingest(store, "c", keys)
    declared = {{**h.HUGE_MODEL, "dim": 16, "width": {width}, "depth": {depth}}}
    blob = h.huge_model_artifact(**declared)
    store.write_blob("c", 7, blob)
    fields = {{"version": 1, "blob": 7, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
               "model": declared, "dtype": "fp32", "fingerprint": {{"count": 300}}, "stale": False}}
    store.write_manifest("c", fields)
    def run(mode):
        rewriter = QueryRewriter(store)
        started = time.perf_counter()
        for row in range(len(queries)):
            _, report = rewriter.search("c", queries[row:row + 1], 10, mode, params=SearchParams(exact=True))
        return (time.perf_counter() - started) / len(queries), report.fallback_reason
    plain, _ = run("off")
    planted, reason = run("hybrid")
    print(json.dumps({{"queries": len(queries), "plain_ms_per_query": round(1000 * plain, 3),
                       "planted_ms_per_query": round(1000 * planted, 3), "ratio": round(planted / plain, 2),
                       "fallback_reason": reason[:90]}}))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bomb-gib", type=int, default=4)
    parser.add_argument("--npy-gib", type=int, default=400)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--width", type=int, default=65536, help="Width of the declared keynet.")
    parser.add_argument("--depth", type=int, default=64, help="Depth of the declared keynet.")
    parser.add_argument("--dim", type=int, default=65536, help="Dimension of the declared keynet (file case).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for case in ("huge-model", "zstd-bomb", "zstd-bomb-undeclared", "npy-header"):
            script = _CASE.format(repo=str(REPO), tests=str(REPO / "tests"), case=case, folder=folder,
                                  bomb=args.bomb_gib, npy=args.npy_gib, width=args.width, depth=args.depth,
                                  dim=args.dim)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
            print(out.stdout.strip() or json.dumps({"case": case, "exit_status": out.returncode,
                                                    "stderr": out.stderr.strip()[-200:]}))
        script = _QUERY_PATH.format(repo=str(REPO), tests=str(REPO / "tests"), folder=folder, queries=args.queries,
                               width=args.width, depth=args.depth)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
        print(out.stdout.strip() or out.stderr.strip()[-400:])


if __name__ == "__main__":
    main()
