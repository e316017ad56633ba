"""The `amips` command line: fit, predict, evaluate, inspect and quantize model files.

Inputs are `.npy` files of vectors (2-D, float16/32/64, finite). Every error a user can cause
ends in one line on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
import torch

from compression.artifact import load_model, read_header, save_model
from compression.quantization import STORAGE_DTYPES

from . import __version__
from .arrays import load_vectors
from .errors import AmipsError, InputError
from .fingerprint import keys_fingerprint
from .inference import predict_keys, resolve_device
from .metrics import evaluate_predictions, relative_key_error
from .models import MODEL_KINDS, params_fraction
from .targets import exact_top1
from .training import TrainConfig, fit

DEFAULTS = TrainConfig()


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into click's one-line 'Error: …' and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (AmipsError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _library_versions() -> dict[str, str]:
    return {"amips": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _check_model_dim(model_dim: int, array: np.ndarray, what: str) -> None:
    if array.shape[1] != model_dim:
        raise InputError(f"{what}: dimension {array.shape[1]} does not match the model's {model_dim}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amips")
def main() -> None:
    """amips: learn a collection's maximum-inner-product answers, and rewrite queries with them.

    A model maps a query x to a predicted best key ŷ(x) ≈ argmax_i <x, y_i>. Train one with
    `fit`, apply it with `predict`, and score it with `evaluate`.
    """


@main.command("fit")
@click.argument("keys_path", metavar="KEYS.npy", type=click.Path(dir_okay=False))
@click.argument("queries_path", metavar="QUERIES.npy", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--model", type=click.Choice(MODEL_KINDS), default=DEFAULTS.model, show_default=True,
              help="smoothmax: convex smooth maximum over learned low-rank points, key = gradient, with a "
                   "confidence gate; supportnet: the paper's input-convex network; keynet: regresses the key.")
@click.option("--params-fraction", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.params_fraction,
              show_default=True, help="Parameter budget ρ as a fraction of the key table's N·d numbers.")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Hidden width (overrides --params-fraction).")
@click.option("--depth", type=click.IntRange(min=1), default=DEFAULTS.depth, show_default=True, help="Hidden layers.")
@click.option("--points", type=click.IntRange(min=1), default=None,
              help="smoothmax: number of learned points (default: one per key); the rank follows from the budget.")
@click.option("--min-match", type=click.FloatRange(0, 1), default=DEFAULTS.min_match, show_default=True,
              help="smoothmax: calibrate the confidence gate to this validation match rate (0: no gate).")
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULTS.steps, show_default=True,
              help="Maximum optimisation steps (early stopping may end sooner).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.learning_rate,
              show_default=True, help="Peak Adam learning rate (warm-up, then cosine decay).")
@click.option("--noise-copies", type=click.IntRange(min=0), default=DEFAULTS.noise_copies, show_default=True,
              help="Noisy copies per training query, each with exact targets.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds for the optimisation loop; the schedule is shortened to fit.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(STORAGE_DTYPES), default="fp32", show_default=True,
              help="Storage dtype of the weights in the model file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def fit_command(keys_path: str, queries_path: str, output: str, model: str, params_fraction: float,
                width: int | None, depth: int, points: int | None, min_match: float, steps: int, batch_size: int, learning_rate: float,
                noise_copies: int, time_budget: float | None, seed: int, device: str, dtype: str,
                quiet: bool) -> None:
    """Train a model on KEYS.npy (N×d) and a sample of queries QUERIES.npy (M×d).

    Targets are the exact maximum-inner-product keys. Training holds out 10% of the queries for
    validation (early stopping) and writes the best exponential-moving-average weights.
    """
    keys = load_vectors(keys_path, "KEYS")
    queries = load_vectors(queries_path, "QUERIES", dim=keys.shape[1])
    config = TrainConfig(model=model, params_fraction=params_fraction, width=width, depth=depth, points=points,
                         min_match=min_match, steps=steps,
                         batch_size=batch_size, learning_rate=learning_rate, noise_copies=noise_copies,
                         time_budget=time_budget, seed=seed, device=device)
    resolve_device(device)  # fail before any work when the device is unavailable
    result = fit(keys, queries, config, progress=not quiet)
    trained = result.model.cpu()
    metadata = {
        "training": config.to_dict(), "steps_run": result.steps_run, "train_seconds": round(result.seconds, 2),
        "num_keys": len(keys), "num_queries": len(queries), "fingerprint": keys_fingerprint(keys),
        "validation": result.validation.to_dict(), "params": trained.num_parameters(),
        "params_fraction": params_fraction_of(trained.num_parameters(), keys),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _library_versions(),
    }
    size = save_model(output, trained, metadata, dtype)
    v = result.validation
    click.echo(f"wrote {output} ({size:,} bytes, {trained.num_parameters():,} parameters, "
               f"ρ = {metadata['params_fraction']:.4f}) after {result.steps_run} steps in {result.seconds:.0f}s; "
               f"validation match rate {v.match_rate:.3f}, E_rel {v.e_rel:.3f}")


def params_fraction_of(num_parameters: int, keys: np.ndarray) -> float:
    return params_fraction(num_parameters, keys.shape[0], keys.shape[1])


@main.command("predict")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.argument("queries_path", metavar="QUERIES.npy", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write ŷ (float32 .npy).")
@_friendly_errors
def predict_command(model_path: str, queries_path: str, output: str) -> None:
    """Write the predicted keys ŷ(x), one float32 row per query, to a .npy file."""
    model = load_model(model_path).model
    queries = load_vectors(queries_path, "QUERIES")
    _check_model_dim(model.config.dim, queries, "QUERIES")
    np.save(output, predict_keys(model, queries))
    click.echo(f"wrote {output} ({len(queries)} × {queries.shape[1]} float32)")


@main.command("evaluate")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.argument("keys_path", metavar="KEYS.npy", type=click.Path(dir_okay=False))
@click.argument("queries_path", metavar="QUERIES.npy", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_friendly_errors
def evaluate_command(model_path: str, keys_path: str, queries_path: str, as_json: bool) -> None:
    """Score a model on queries against the exact answers over KEYS.npy.

    Reports match rate (recall@1 of the predictor), MRR, recall@1/5/10, E_rel, the model's size
    (parameters, ρ = parameters / N·d) and its FLOPs per query. For scale it also gives the E_rel
    of the trivial predictor ŷ = ᾱ·x (ᾱ: mean σ(x)), whose match rate is 1 by construction.
    """
    model = load_model(model_path).model
    keys = load_vectors(keys_path, "KEYS")
    queries = load_vectors(queries_path, "QUERIES", dim=keys.shape[1])
    _check_model_dim(model.config.dim, keys, "KEYS")
    started = time.perf_counter()
    predicted = predict_keys(model, queries)
    predict_seconds = time.perf_counter() - started
    targets = exact_top1(keys, queries)
    quality = evaluate_predictions(keys, queries, predicted, targets.index)
    alpha = float(targets.score.mean())
    report = {
        **quality.to_dict(),
        "params": model.num_parameters(),
        "params_fraction": params_fraction_of(model.num_parameters(), keys),
        "flops_per_query": model.flops_per_query(),
        "predict_seconds": round(predict_seconds, 4),
        "baseline_scaled_query_e_rel": relative_key_error(queries, alpha * queries, keys[targets.index]),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    for name, value in report.items():
        click.echo(f"{name:>28}  {value:.4f}" if isinstance(value, float) else f"{name:>28}  {value}")


@main.command("inspect")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole header as JSON.")
@_friendly_errors
def inspect_command(model_path: str, as_json: bool) -> None:
    """Verify a model file's checksum and print its header (architecture, training, metrics)."""
    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"no such model file: {path}")
    header = read_header(path.read_bytes())
    if as_json:
        click.echo(json.dumps(header, indent=2, sort_keys=True))
        return
    meta = header.get("metadata", {})
    click.echo(f"model     {json.dumps(header['model'])}")
    click.echo(f"dtype     {header['dtype']}   bytes {path.stat().st_size:,}   tensors {len(header['tensors'])}")
    for key in ("params", "params_fraction", "num_keys", "steps_run", "validation", "fingerprint", "created"):
        if key in meta:
            click.echo(f"{key:<9} {json.dumps(meta[key])}")


@main.command("quantize")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(STORAGE_DTYPES), required=True,
              help="fp16 halves the weights; int8 stores matrices with per-output-channel scales.")
@_friendly_errors
def quantize_command(model_path: str, output: str, dtype: str) -> None:
    """Rewrite a model file with its weights stored as fp16 or int8."""
    loaded = load_model(model_path)
    metadata = {**loaded.header.get("metadata", {}), "quantized_from": loaded.header["dtype"]}
    size = save_model(output, loaded.model, metadata, dtype)
    click.echo(f"wrote {output} ({size:,} bytes, {dtype}; was {Path(model_path).stat().st_size:,} bytes)")
