"""Compression experiment: how small a model can stand in for the keys, and PQ bits against recall.

    python -m bench.compression_experiment [--dataset squad-dev] [--rho 0.001 0.003 0.01 0.03 0.1 0.2] \
        [--pq bench/results/pq.json] [--out bench/results/compression]

For every ρ the default model is trained once on the train queries; its artifact is then written
as fp32, fp16 and int8 and each copy is scored on the test queries. Table columns: compressed
artifact bytes / fp32 key bytes, match rate, E_rel, FLOPs per query (and FLOPs / 2d, the cost in
inner-product equivalents against N for a full scan). The PQ curve comes from bench/pq.py's JSON
(run it first) for the same dataset. Writes <out>.json and <out>.png (needs matplotlib: pip
install -e '.[bench]').
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.datasets import load_dataset

from amips_plugin.inference import predict_keys  # noqa: E402
from amips_plugin.metrics import evaluate_predictions  # noqa: E402
from amips_plugin.training import TrainConfig, fit  # noqa: E402
from amips_plugin.model_artifact import decode_model, encode_model  # noqa: E402
from amips_plugin.compression.quantization import STORAGE_DTYPES  # noqa: E402


def model_rows(data, rhos: list[float]) -> list[dict]:
    key_bytes = data.keys.astype(np.float32).nbytes
    rows = []
    print(f"{'rho':>6} {'dtype':>5} {'params':>8} {'bytes':>9} {'/keys':>7} {'match':>6} {'E_rel':>6} {'IPE':>7}")
    for rho in rhos:
        model = fit(data.keys, data.train_queries, TrainConfig(params_fraction=rho), progress=False).model.cpu()
        for dtype in STORAGE_DTYPES:
            blob = encode_model(model, dtype=dtype)
            restored = decode_model(blob).model
            quality = evaluate_predictions(data.keys, data.test_queries, predict_keys(restored, data.test_queries),
                                           data.test_argmax)
            flops = restored.flops_per_query()
            row = {"rho": rho, "dtype": dtype, "params": restored.num_parameters(), "bytes": len(blob),
                   "bytes_over_keys": len(blob) / key_bytes, "match_rate": quality.match_rate, "e_rel": quality.e_rel,
                   "flops_per_query": flops, "ipe": flops / (2 * data.keys.shape[1])}
            rows.append(row)
            print(f"{rho:>6} {dtype:>5} {row['params']:>8} {row['bytes']:>9} {row['bytes_over_keys']:>7.4f} "
                  f"{row['match_rate']:>6.3f} {row['e_rel']:>6.3f} {row['ipe']:>7.0f}", flush=True)
    return rows


def plot(rows: list[dict], pq_rows: list[dict], dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for dtype in STORAGE_DTYPES:
        mine = [r for r in rows if r["dtype"] == dtype]
        left.plot([r["bytes_over_keys"] for r in mine], [r["e_rel"] for r in mine], "o-", label=f"E_rel, {dtype}")
        left.plot([r["bytes_over_keys"] for r in mine], [r["match_rate"] for r in mine], "s--", label=f"match, {dtype}")
    left.set_xscale("log")
    left.set_xlabel("model artifact bytes / fp32 key bytes")
    left.set_title(f"{dataset}: model as a compact surrogate of the keys")
    left.legend(fontsize=7)
    for method in sorted({r["method"] for r in pq_rows}):
        mine = sorted((r for r in pq_rows if r["method"] == method), key=lambda r: r["bits"])
        right.plot([r["bits"] for r in mine], [r["recall1@10"] for r in mine], "o-", label=method)
    right.set_xlabel("bits per key")
    right.set_ylabel("recall1@10")
    right.set_title(f"{dataset}: product quantization of the keys")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="squad-dev")
    parser.add_argument("--rho", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.2])
    parser.add_argument("--pq", type=Path, default=Path("bench/results/pq.json"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/compression"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    rows = model_rows(data, args.rho)
    pq_rows = [r for r in json.loads(args.pq.read_text()) if r["set"] == args.dataset] if args.pq.is_file() else []
    if pq_rows:
        print(f"{'bits':>5} {'method':>22} {'recall1@10':>11} {'recall10@10':>12}")
        for r in pq_rows:
            print(f"{r['bits']:>5} {r['method']:>22} {r['recall1@10']:>11.4f} {r['recall10@10']:>12.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"models": rows, "pq": pq_rows}, indent=1))
    plot(rows, pq_rows, data.name, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
