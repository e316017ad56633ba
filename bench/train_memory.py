"""Peak memory of training, against the bytes of the key table it trains on.

    nice -n 10 python -m bench.train_memory --keys 200000 --dim 384 [--queries 20000] [--steps 20]
        [--model smoothmax] [--noise-copies 8] [--time-budget 120] [--json bench/results/train_memory.json]

A synthetic collection (amips_plugin.synthetic.gaussian_mixture) is generated in one child process and
written to a temporary folder (deleted afterwards; nothing is kept); `amips_plugin.training.fit` then
runs in a fresh child that loads the arrays, so the generator's float64 temporaries never count. The
child reports its peak resident set (resource.getrusage ru_maxrss) and, per phase of `fit` (noise
augmentation, exact targets, model initialisation, the optimisation steps, validation, gate
calibration), the peak reached inside it (Linux VmHWM, reset between phases via /proc/self/clear_refs),
each as a multiple of the keys' bytes (N·d·4). "Base" is the process after importing torch and loading
the arrays; "above base" is what training itself adds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _generate(folder: str, num_keys: int, num_queries: int, dim: int, seed: int) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from amips_plugin.synthetic import gaussian_mixture

    keys, queries = gaussian_mixture(num_keys, num_queries, dim, clusters=256, seed=seed)
    np.save(Path(folder) / "keys.npy", keys)
    np.save(Path(folder) / "queries.npy", queries)


def _train(folder: str, config_fields: dict, threads: int, out: "mp.Queue") -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from amips_plugin import training
    from amips_plugin.models import SmoothMaxSupportNet

    torch.set_num_threads(threads)
    imported_kib = _status_kib("VmRSS")
    keys = np.load(Path(folder) / "keys.npy")
    queries = np.load(Path(folder) / "queries.npy")
    base_kib = _status_kib("VmRSS")
    can_reset = _reset_peak()
    phases: list[dict] = []
    state = {"last": "start"}

    def close_interval(name: str) -> None:
        phases.append({"phase": name, "peak_mib": _status_kib("VmHWM") / 1024, "rss_mib": _status_kib("VmRSS") / 1024})
        _reset_peak()

    def phase(name: str, function):
        def wrapped(*args, **kwargs):
            close_interval(f"(before {name})" if state["last"] != "start" else "(set-up)")
            started = time.perf_counter()
            result = function(*args, **kwargs)
            close_interval(name)
            phases[-1]["seconds"] = round(time.perf_counter() - started, 2)
            state["last"] = name
            return result
        return wrapped

    training.augment = phase("augment queries", training.augment)
    build = training.TargetedQueries.build.__func__
    training.TargetedQueries.build = classmethod(lambda cls, *a, **k: phase("exact targets", build)(cls, *a, **k))
    SmoothMaxSupportNet.initialise_from_keys = phase("initialise from keys", SmoothMaxSupportNet.initialise_from_keys)
    training._validate = phase("validate", training._validate)
    training.calibrate_gate = phase("calibrate gate", training.calibrate_gate)

    started = time.perf_counter()
    result = training.fit(keys, queries, training.TrainConfig(**config_fields), progress=False)
    seconds = time.perf_counter() - started
    close_interval("(after the last phase)")
    # ru_maxrss is the kernel's high-water mark, which the resets above lower too: the peak is the largest
    # of the phases' peaks (all of fit's time lies in one phase or between two)
    peak_kib = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss] + [p["peak_mib"] * 1024 for p in phases])
    out.put({
        "keys_mib": keys.nbytes / MIB, "queries_mib": queries.nbytes / MIB, "imported_mib": imported_kib / 1024,
        "base_mib": base_kib / 1024, "peak_mib": peak_kib / 1024,
        "phases": phases if can_reset else [], "steps_run": result.steps_run, "fit_seconds": round(seconds, 1),
        "params": result.model.num_parameters(), "model": result.model.config.kind,
        "points": result.model.config.points, "width": result.model.config.width,
        "match_rate": result.validation.match_rate,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--model", default="smoothmax")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--noise-copies", type=int, default=8)
    parser.add_argument("--params-fraction", type=float, default=0.2)
    parser.add_argument("--time-budget", type=float, default=None, help="Seconds for the optimisation loop.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="Append the result as one JSON line.")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="amips-train-memory-")
    try:
        started = time.perf_counter()
        generator = context.Process(target=_generate, args=(folder, args.keys, args.queries, args.dim, args.seed))
        generator.start()
        generator.join()
        if generator.exitcode != 0:
            raise SystemExit(f"generating the collection failed (exit {generator.exitcode})")
        generated = time.perf_counter() - started
        config = {"model": args.model, "steps": args.steps, "eval_every": args.eval_every,
                  "noise_copies": args.noise_copies, "params_fraction": args.params_fraction,
                  "time_budget": args.time_budget, "device": "cpu", "seed": args.seed}
        queue = context.Queue()
        trainer = context.Process(target=_train, args=(folder, config, args.threads, queue))
        trainer.start()
        trainer.join()
        if trainer.exitcode != 0:
            raise SystemExit(f"training failed (exit {trainer.exitcode}; -9 is the kernel's OOM killer)")
        report = queue.get()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    keys_mib = report["keys_mib"]
    report.update(keys=args.keys, dim=args.dim, queries=args.queries, config=config,
                  generate_seconds=round(generated, 1),
                  peak_over_keys=round(report["peak_mib"] / keys_mib, 2),
                  above_base_over_keys=round((report["peak_mib"] - report["base_mib"]) / keys_mib, 2))
    print(f"{args.keys:,} keys × {args.dim} ({keys_mib:,.0f} MiB), "
          f"{args.queries:,} queries ({report['queries_mib']:,.0f} MiB), "
          f"{report['model']} with {report['points']:,} points, rank/width {report['width']}, "
          f"{report['params']:,} parameters; {report['steps_run']} steps in {report['fit_seconds']}s")
    print(f"RSS after importing torch {report['imported_mib']:,.0f} MiB, "
          f"after loading the arrays {report['base_mib']:,.0f} MiB; "
          f"peak {report['peak_mib']:,.0f} MiB = {report['peak_over_keys']}× the keys "
          f"({report['above_base_over_keys']}× above base)")
    for phase in report["phases"]:
        print(f"  {phase['phase']:<34} peak {phase['peak_mib']:>8,.0f} MiB  "
              f"({(phase['peak_mib'] - report['base_mib']) / keys_mib:5.2f}× keys "
              f"above base){'  ' + str(phase['seconds']) + 's' if 'seconds' in phase else ''}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            fh.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
