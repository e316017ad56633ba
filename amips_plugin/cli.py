"""The `amips` command line: collections (ingest, tune, search, status, advise, train, side indexes) and
model files (fit, predict, evaluate, inspect, quantize); `amips --help` lists every command.

Inputs are `.npy` files of vectors (2-D, float16/32/64, finite). Every error a user can cause
ends in one line on stderr and exit status 1, never a traceback; Ctrl-C (SIGINT) ends in one line
and exit status 130.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click
import numpy as np
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tqdm import tqdm

from amips_plugin.adapters import SearchParams, VectorStore, open_store
from amips_plugin.core import point_ids
from amips_plugin.adapters.storage import DEFAULT_STORAGES, QUANTIZATIONS, label
from amips_plugin.adapters.vector_view import for_vector
from amips_plugin.compression.quantization import STORAGE_DTYPES

from . import __version__
from .arrays import load_ids, load_payloads, load_vectors, regular_file
from . import collection_ops
from . import model_registry
from .side_indexes import BY_SLOT, SIDE_INDEXES
from .core.errors import AmipsError, InputError, StoreError
from .core.limits import MAX_BLOB_BYTES, MAX_CANDIDATES, MAX_HNSW_EF, MAX_LIMIT, MAX_OVERSAMPLING
from .core.redact import redact, userinfo
from .core.files import atomic_write, read_bounded
from .fingerprint import keys_fingerprint
from .rewriting import CANDIDATE_SOURCES, MODES, QueryRewriter
from .search_run import run_queries, summary as search_summary
from .synthetic import gaussian_mixture
from .truth import load_truth
from .train_config import MODEL_KINDS, TrainConfig

if TYPE_CHECKING:
    from .training import FitResult

DEFAULTS = TrainConfig()
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report it


class Interrupted(click.ClickException):
    exit_code = INTERRUPTED_EXIT_CODE


def _friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can cause into click's one-line 'Error: …' and exit status 1 (130 for Ctrl-C)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (AmipsError, ValueError) as exc:
            raise click.ClickException(_redacted(str(exc))) from None
        except (ResponseHandlingException, UnexpectedResponse) as exc:  # the server failed mid-command
            raise click.ClickException(_redacted(f"the Qdrant server failed: {' '.join(str(exc).split())}")) from None
        except KeyboardInterrupt:
            for bar in list(getattr(tqdm, "_instances", ())):  # a bar left drawn would swallow the line
                bar.close()
            raise Interrupted("interrupted; a model is only replaced once it is complete, so the previous "
                              "one (if any) still serves") from None

    return wrapper


def _redacted(message: str) -> str:
    """The message with URL credentials — the --store URL's whole user-info too — and the API key (--api-key /
    QDRANT_API_KEY) masked."""
    ctx = click.get_current_context(silent=True)
    obj = (ctx.find_root().obj if ctx is not None else None) or {}
    return redact(message, [obj.get("api_key"), userinfo(obj.get("store_spec") or "")])


def _json(value: Any, **options: Any) -> str:
    """Strict JSON text (RFC 8259 has no NaN or Infinity): a number left undefined — E_rel when every query
    is its own best key, say — is null. Stored manifests hold finite numbers only (manifest_schema)."""
    return json.dumps(_defined(value), allow_nan=False, **options)


def _defined(value: Any) -> Any:
    """`value` with every non-finite float, however deep in dicts, lists and tuples, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _defined(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_defined(item) for item in value]
    return value


def _number(value: Any) -> float:
    """A stored metric for display: NaN (printed nan) where it is absent or null (undefined)."""
    return float("nan") if value is None else float(value)


def _model_file(path: Path) -> bytes:
    """A model file's bytes, refused before reading when it is not a regular file of sane size."""
    try:
        return read_bounded(path, MAX_BLOB_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_model_dim(model_dim: int, array: np.ndarray, what: str) -> None:
    if array.shape[1] != model_dim:
        raise InputError(f"{what}: dimension {array.shape[1]} does not match the model's {model_dim}")


DEFAULT_STORE = "edge:amips-data"
DEFAULT_TUNE_QUERIES = 20_000  # `tune --max-queries`: enough for recall@1 0.995 (min_held_out), minutes not hours
SHOWN_PAYLOAD_CHARS = 120  # of a result's payload, as JSON, that `search --show` prints
MIN_VALIDATION_QUERIES = 100  # fewer: `train`/`fit` say their validation figures measure nothing (issue 24.4)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amips")
@click.option("--store", envvar="AMIPS_STORE", default=DEFAULT_STORE, show_default=True,
              help="Where collections live: edge:DIR (Qdrant Edge, embedded), :memory: or a DIR (qdrant-client "
                   "local mode), or http(s)://host:port (a Qdrant server or cluster). Env: AMIPS_STORE.")
@click.option("--api-key", envvar="QDRANT_API_KEY", default=None,
              help="API key for a Qdrant server. Env: QDRANT_API_KEY.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the query path does (fallbacks, gating).")
@click.pass_context
def main(ctx: click.Context, store: str, api_key: str | None, verbose: bool) -> None:
    """amips: learn a collection's maximum-inner-product answers, and rewrite queries with them.

    A model maps a query x to a predicted best key ŷ(x) ≈ argmax_i <x, y_i>.

    \b
    Start here:   ingest (or your own collection), tune, search, status, advise
    Collections:  train, export, import, drop-model, drop-index, pq-build, route-build
    Files:        fit, predict, evaluate, inspect, quantize, synth
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    logging.captureWarnings(True)  # library warnings (qdrant-client's local mode, ...) go through logging,
    logging.getLogger("py.warnings").setLevel(logging.INFO if verbose else logging.ERROR)  # shown with -v
    ctx.obj = {"store_spec": store, "api_key": api_key}


def _base_store(ctx: click.Context) -> VectorStore:
    """Open the group's store once per command; it is closed when the command ends."""
    if "store" not in ctx.obj:
        if ctx.obj["store_spec"] == ":memory:":
            click.echo("note: a :memory: store lasts for this one command; use edge:DIR or a DIR to keep it", err=True)
        try:
            ctx.obj["store"] = open_store(ctx.obj["store_spec"], ctx.obj["api_key"])
        except AmipsError:
            raise
        except Exception as exc:  # connection refused, lock held by another process, ...
            raise StoreError(f"cannot open store {ctx.obj['store_spec']!r}: {exc}") from None
        ctx.call_on_close(ctx.obj["store"].close)
    return ctx.obj["store"]


def _store(ctx: click.Context) -> VectorStore:
    """The store, seen through the vector `--using` names (the collection's only vector by default)."""
    return for_vector(_base_store(ctx), ctx.obj.get("using"))


def using_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--using NAME`: which named vector of a collection a command works on."""

    @click.option("--using", default=None, metavar="NAME",
                  help="The collection's named vector to use (default: its only dense vector). Each vector has "
                       "its own model and side indexes.")
    @functools.wraps(command)
    def wrapper(*args: Any, using: str | None, **kwargs: Any) -> Any:
        click.get_current_context().obj["using"] = using
        return command(*args, **kwargs)

    return wrapper


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `fit` and `train`, collected into a TrainConfig passed as `config`."""
    options = [
        click.option("--model", type=click.Choice(MODEL_KINDS), default=DEFAULTS.model, show_default=True,
                     help="smoothmax: convex smooth maximum over learned low-rank points, key = gradient, with a "
                          "confidence gate; supportnet: the paper's input-convex network; keynet: regresses the key."),
        click.option("--params-fraction", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.params_fraction,
                     show_default=True, help="Parameter budget ρ as a fraction of the key table's N·d numbers."),
        click.option("--width", type=click.IntRange(min=1), default=None,
                     help="Hidden width, or smoothmax's rank (overrides --params-fraction)."),
        click.option("--depth", type=click.IntRange(min=1), default=DEFAULTS.depth, show_default=True,
                     help="Hidden layers (keynet, supportnet)."),
        click.option("--points", type=click.IntRange(min=1), default=None,
                     help="smoothmax: learned points (default: one per key while rank ≥ 16 fits the budget)."),
        click.option("--min-match", type=click.FloatRange(0, 1), default=DEFAULTS.min_match, show_default=True,
                     help="smoothmax: calibrate the confidence gate to this validation match rate (0: no gate)."),
        click.option("--steps", type=click.IntRange(min=1), default=DEFAULTS.steps, show_default=True,
                     help="Maximum optimisation steps (early stopping may end sooner)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True),
        click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.learning_rate,
                     show_default=True, help="Peak Adam learning rate (warm-up, then cosine decay)."),
        click.option("--noise-copies", type=click.IntRange(min=0), default=DEFAULTS.noise_copies, show_default=True,
                     help="Noisy copies per training query, each with exact targets."),
        click.option("--time-budget", type=click.FloatRange(min=0), default=DEFAULTS.time_budget, show_default=True,
                     help="Seconds for the optimisation loop; the schedule is shortened to fit (0: no bound)."),
        click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fields = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(TrainConfig) if f.name in kwargs}
        config = TrainConfig(**{**fields, "time_budget": fields["time_budget"] or None})  # 0: no bound
        from .inference import resolve_device  # torch: only for the commands that train

        resolve_device(config.device)  # fail before any work when the device is unavailable
        return command(*args, config=config, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@main.command("fit")
@click.argument("keys_path", metavar="KEYS.npy", type=click.Path(dir_okay=False))
@click.argument("queries_path", metavar="QUERIES.npy", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@training_options
@click.option("--dtype", type=click.Choice(STORAGE_DTYPES), default="fp32", show_default=True,
              help="Storage dtype of the weights in the model file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly_errors
def fit_command(keys_path: str, queries_path: str, output: str, config: TrainConfig, dtype: str, quiet: bool) -> None:
    """Train a model on KEYS.npy (N×d) and a sample of queries QUERIES.npy (M×d), into a file.

    Targets are the exact maximum-inner-product keys. Training holds out 10% of the queries for
    validation (early stopping, gate calibration) and writes the best exponential-moving-average
    weights.
    """
    keys = load_vectors(keys_path, "KEYS")
    queries = load_vectors(queries_path, "QUERIES", dim=keys.shape[1])
    from amips_plugin.model_artifact import save_model
    from .training import fit

    result = fit(keys, queries, config, progress=not quiet)
    trained = result.model.cpu()
    metadata = result.metadata(keys, len(queries), keys_fingerprint(keys))
    size = save_model(output, trained, metadata, dtype)
    click.echo(f"wrote {output} ({size:,} bytes, {trained.num_parameters():,} parameters, "
               f"ρ = {metadata['params_fraction']:.4f}) after {result.steps_run} steps in {result.seconds:.0f}s; "
               f"{_quality_line(result)}")


def _quality_line(result: FitResult) -> str:
    """Validation quality; with a confidence gate, the match rate without and with it and its share."""
    quality, gate = result.validation, result.gate
    budget = "" if result.budget_steps is None else (
        f"the time budget ({result.config.time_budget:.0f}s) allowed {result.budget_steps:,} of "
        f"{result.config.steps:,} steps (--time-budget to train longer); ")
    if gate is None:
        line = f"validation match rate {quality.match_rate:.3f}, E_rel {quality.e_rel:.3f}"
    else:
        line = (f"validation match rate {gate.ungated_match:.3f} ungated, {gate.gated_match:.3f} with the confidence "
                f"gate, which sends {gate.gated_share:.1%} of queries to plain search; E_rel {quality.e_rel:.3f}")
    line = budget + line
    if quality.num_queries < MIN_VALIDATION_QUERIES:  # a rate over a handful of queries measures nothing
        line += (f" — on {quality.num_queries} validation queries, too few to measure (pass at least "
                 f"{MIN_VALIDATION_QUERIES * 10:,} training queries)")
    return line


@main.command("predict")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.argument("queries_path", metavar="QUERIES.npy", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write ŷ (float32 .npy).")
@_friendly_errors
def predict_command(model_path: str, queries_path: str, output: str) -> None:
    """Write the predicted keys ŷ(x), one float32 row per query, to a .npy file."""
    from amips_plugin.model_artifact import load_model
    from .inference import predict_keys

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
    from amips_plugin.model_artifact import load_model
    from .metrics import model_report

    model = load_model(model_path).model
    keys = load_vectors(keys_path, "KEYS")
    queries = load_vectors(queries_path, "QUERIES", dim=keys.shape[1])
    _check_model_dim(model.config.dim, keys, "KEYS")
    report = model_report(model, keys, queries)
    if as_json:
        click.echo(_json(report))
        return
    for name, value in report.items():
        click.echo(f"{name:>28}  {value:.4f}" if isinstance(value, float) else f"{name:>28}  {value}")


@main.command("inspect")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the whole header as JSON.")
@_friendly_errors
def inspect_command(model_path: str, as_json: bool) -> None:
    """Verify a model file's checksum and print its header (architecture, training, metrics)."""
    path = regular_file(model_path, "MODEL.amips")
    from amips_plugin.model_artifact import read_header

    header = read_header(_model_file(path))
    if as_json:
        click.echo(_json(header, indent=2, sort_keys=True))
        return
    meta = header.get("metadata", {})
    click.echo(f"model     {_json(header['model'])}")
    click.echo(f"dtype     {header['dtype']}   bytes {path.stat().st_size:,}   tensors {len(header['tensors'])}")
    for key in ("params", "params_fraction", "num_keys", "steps_run", "validation", "fingerprint", "created"):
        if key in meta:
            click.echo(f"{key:<9} {_json(meta[key])}")


@main.command("quantize")
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(STORAGE_DTYPES), required=True,
              help="fp32: full precision; fp16: half the bytes; int8: about a quarter, matrices and vectors with "
                   "scales per row, column or group (chosen per tensor).")
@_friendly_errors
def quantize_command(model_path: str, output: str, dtype: str) -> None:
    """Rewrite a model file with its weights stored as fp16 or int8."""
    from amips_plugin.model_artifact import load_model, save_model

    loaded = load_model(model_path)
    metadata = {**loaded.header.get("metadata", {}), "quantized_from": loaded.header["dtype"]}
    size = save_model(output, loaded.model, metadata, dtype)
    click.echo(f"wrote {output} ({size:,} bytes, {dtype}; was {Path(model_path).stat().st_size:,} bytes)")


# collections ---------------------------------------------------------------------------------------
@main.command("ingest")
@click.argument("collection")
@using_option
@click.argument("keys_path", metavar="KEYS.npy", type=click.Path(dir_okay=False))
@click.option("--distance", type=click.Choice(["dot", "cosine"]), default="dot", show_default=True,
              help="dot: maximum inner product; cosine: Qdrant normalises the stored vectors.")
@click.option("--ids", "ids_path", type=click.Path(dir_okay=False), default=None,
              help="The points' ids: a .npy array (integers or UUID strings) or a text file, one id a line. "
                   "Default: 0..N−1 for a new collection, else the largest integer id + 1 onwards.")
@click.option("--payload", "payload_path", type=click.Path(dir_okay=False), default=None,
              help="A JSONL file: one JSON object (the point's payload) or null per key, in order.")
@click.option("--upsert", is_flag=True,
              help="Overwrite points whose ids already exist (without it such an append is refused, nothing written).")
@click.option("--shards", type=click.IntRange(min=1), default=None, help="Shards of a new collection (server/cluster).")
@click.option("--replication-factor", type=click.IntRange(min=1), default=None,
              help="Copies of each shard of a new collection (cluster).")
@click.option("--quantization", type=click.Choice(list(QUANTIZATIONS)), default="none", show_default=True,
              help="New collection: compressed copies of the vectors in RAM that HNSW searches, candidates rescored "
                   "with the originals — int8 (4× less memory to search), turbo4 / turbo2 / turbo1 (TurboQuant, "
                   "8× / 16× / 32×), bq2 / bq1 (binary, queries as int8), pq8 / pq16 / pq32 (product quantization, "
                   "8× / 16× / 32×); or float16: the vectors themselves at half precision (2× less memory, no "
                   "copies). `amips tune` then tunes oversampling too; `amips advise` compares them.")
@click.option("--scalar-quantization", is_flag=True, help="The same as --quantization int8.")
@click.option("--on-disk", is_flag=True,
              help="New collection: keep the float32 originals on disk (rescoring reads them); with --quantization.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly_errors
def ingest_command(ctx: click.Context, collection: str, keys_path: str, distance: str, ids_path: str | None,
                   payload_path: str | None, upsert: bool, shards: int | None, replication_factor: int | None,
                   quantization: str, scalar_quantization: bool, on_disk: bool, quiet: bool) -> None:
    """Create COLLECTION from KEYS.npy, or append to it without touching the points it holds.

    An append whose ids already exist is refused before anything is written (unless --upsert);
    it marks the model and side indexes stale. An interrupted ingest (killed, disk full) is finished by
    running it again with the same files: the same points are written under the same ids, never twice.
    """
    keys = load_vectors(keys_path, "KEYS")
    if scalar_quantization and quantization not in ("none", "int8"):
        raise InputError(f"--scalar-quantization is --quantization int8; "
                         f"it cannot go with --quantization {quantization}")
    ingested = collection_ops.ingest(_store(ctx), collection, keys, distance, shards, replication_factor,
                                     "int8" if scalar_quantization else quantization, on_disk=on_disk,
                                     ids=load_ids(ids_path) if ids_path else None,
                                     payloads=load_payloads(payload_path) if payload_path else None, upsert=upsert,
                                     progress=not quiet)
    ids = ingested.ids
    span = (f"ids {ids[0]}..{ids[-1]}" if not point_ids.is_text(ids) and np.all(np.diff(ids) == 1)
            else f"{len(ids):,} ids")
    resumed = ("" if ingested.resumed is None else
               f"; an interrupted run of this ingest had written {ingested.resumed:,} of them, now finished")
    click.echo(f"{collection}: {'created with' if ingested.created else 'appended'} {len(keys):,} points "
               f"({span}); {ingested.count:,} in all{resumed}")


@main.command("train")
@click.argument("collection")
@using_option
@click.option("--queries", "queries_path", required=True, type=click.Path(dir_okay=False),
              help="A sample of the collection's query distribution (.npy, M×d).")
@training_options
@click.option("--dtype", type=click.Choice(STORAGE_DTYPES), default="fp32", show_default=True,
              help="Storage dtype of the weights in the stored model.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly_errors
def train_command(ctx: click.Context, collection: str, queries_path: str, config: TrainConfig, dtype: str,
                  quiet: bool) -> None:
    """Train a model on COLLECTION's keys and a query sample, and store it alongside the collection.

    The keys are read from the store in batches. The new model replaces the old one in one step:
    queries see the old model or the new one, never a mix.
    """
    queries = load_vectors(queries_path, "QUERIES")
    trained = collection_ops.train(_store(ctx), collection, queries, config, progress=not quiet, dtype=dtype)
    m = trained.manifest
    click.echo(f"{collection}: model version {m['version']} ({m['model']['kind']}, {m['bytes']:,} bytes) after "
               f"{trained.result.steps_run} steps in {trained.result.seconds:.0f}s; {_quality_line(trained.result)}")


@main.command("status")
@click.argument("collection", required=False)
@using_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object for a COLLECTION with one vector (or --using), else a list.")
@click.option("--no-verify", is_flag=True,
              help="Skip recomputing the keys' fingerprint (faster; trusts the stale flag).")
@click.option("--clean", is_flag=True,
              help="Remove the leftovers listed: files of writes interrupted (kill -9, power loss) over a minute "
                   "ago and model blobs no manifest names. Never a file a reader or a live writer uses. Edge only.")
@click.pass_context
@_friendly_errors
def status_command(ctx: click.Context, collection: str | None, as_json: bool, no_verify: bool, clean: bool) -> None:
    """Per collection and vector: points, the model (version, stale or fresh, size, metrics) and the side
    indexes (pq, router); vectors amips cannot serve are listed with the reason. Per collection, the
    leftovers of interrupted writes, if any (JSON: "leftovers"), which --clean removes."""
    store = _base_store(ctx)
    names = [collection] if collection else store.collections()
    reports = [report for name in names
               for report in collection_ops.status_reports(store, name, not no_verify, ctx.obj.get("using"),
                                                           quiet_errors=collection is None)]
    unreadable = {r["collection"] for r in reports if "error" in r}
    leftovers = {name: _leftovers(store, name, clean) for name in names if name not in unreadable}
    for r in reports:
        r["leftovers"] = leftovers.get(r["collection"])
    if as_json:
        click.echo(_json(reports[0] if collection and len(reports) == 1 else reports))
        return
    if not reports:
        click.echo(f"no collections in {store.location}")
    for r in reports:
        click.echo(_status_line(r))
    for name, found in leftovers.items():
        if found["files"]:
            click.echo(_leftovers_line(name, found))


def _leftovers(store: VectorStore, collection: str, clean: bool) -> dict[str, Any]:
    """The collection's leftover files (model_registry.leftovers) as {"files", "bytes", "removed"};
    with `clean`, removed first."""
    found = (model_registry.clean_leftovers if clean else model_registry.leftovers)(store, collection)
    return {"files": len(found), "bytes": sum(f.bytes for f in found), "removed": clean}


def _leftovers_line(collection: str, found: dict[str, Any]) -> str:
    what = f"{found['files']} leftover file(s), {found['bytes']:,} bytes"
    if found["removed"]:
        return f"{collection}: removed {what}"
    return (f"{collection}: {what} (interrupted writes, model blobs no manifest names); "
            f"remove them with `amips status {collection} --clean`")


def _status_line(r: dict[str, Any]) -> str:
    name = r["collection"] + (f" [{r['vector']}]" if r.get("vector") else "")
    if "error" in r:
        return f"{name}: UNREADABLE — {_redacted(r['error'])}"
    if "unsupported" in r:
        return f"{name}: not served by amips ({r['unsupported']})"
    model = r["model"]
    stored = r.get("storage")
    storage = "" if not stored or stored["quantization"] == "none" else (
        ", " + label(stored["quantization"], stored["on_disk"]))
    line = f"{name}: {r['points']:,} points, dim {r['dim']}, {r['distance']}{storage}; "
    if model is None:
        line += "no model"
    elif "error" in model:
        line += f"model UNUSABLE ({model['error']})"
    else:
        metrics = model.get("metrics") or {}
        line += (f"model v{model['version']} ({model['kind']}, {model['bytes']:,} bytes), "
                 f"{'STALE — run amips train' if model['stale'] else 'fresh'}, "
                 f"validation match {_number(metrics.get('match_rate')):.3f}")
    for slot, side in r["side_indexes"].items():
        if "error" in side:
            line += f"; {slot} UNUSABLE ({side['error']})"
            continue
        line += f"; {slot} v{side['version']} ({side['bytes']:,} bytes), " + (
            f"STALE — run amips {BY_SLOT[slot].build_command}" if side["stale"] else "fresh")
    policy = r.get("policy")
    if policy and "error" in policy:
        line += f"; policy UNUSABLE ({policy['error']})"
    elif policy:
        line += f"; policy v{policy['version']}: {policy['describe']}, " + (
            "STALE — run amips tune" if policy["stale"] else "fresh")
    return line


@main.command("search")
@click.argument("collection")
@using_option
@click.option("--queries", "queries_path", required=True, type=click.Path(dir_okay=False),
              help="The query vectors (.npy, M×d).")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=10, show_default=True, help="Results per query.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="auto (the default): the policy `amips tune` stored (plain search, with a reason, when there is "
                   "none); off (the default with --candidates-from): plain search; replace: search with ŷ, rescore "
                   "by x; hybrid: prefetch with ŷ and x, rescore by x.")
@click.option("--candidates", type=click.IntRange(1, MAX_CANDIDATES), default=None,
              help="Candidates each prefetch returns before rescoring (default: max(limit, 10)); "
                   "with --candidates-from route, the fine lists scanned per probe.")
@click.option("--candidates-from", "candidate_source", type=click.Choice(CANDIDATE_SOURCES), default="engine",
              show_default=True, help="engine: Qdrant's index; pq: the compressed key store (`amips pq-build`); "
                                      "route: the lists a learned router ranks first (`amips route-build`). "
                                      "pq and route candidates are rescored exactly.")
@click.option("--hnsw-ef", type=click.IntRange(1, MAX_HNSW_EF), default=None, help="HNSW beam width (server/Edge).")
@click.option("--exact", is_flag=True, help="Exact (brute-force) scoring in the engine.")
@click.option("--oversampling", type=click.FloatRange(1, MAX_OVERSAMPLING), default=None,
              help="Scalar-quantized collection: int8 candidates per result, rescored with the originals.")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False), default=None,
              help="True best ids (.npy: one per query, or each query's true top-k, best first): report "
                   "recall@1 and recall@limit of the true best.")
@click.option("--show", type=click.IntRange(min=0), default=0, show_default=True,
              help="Print the ids and scores of the first N queries' results.")
@click.option("--single", is_flag=True, help="Send queries one at a time and report latency percentiles.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the ids (int64, M×limit).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@_friendly_errors
def search_command(ctx: click.Context, collection: str, queries_path: str, limit: int, mode: str | None,
                   candidates: int | None, candidate_source: str, hnsw_ef: int | None, exact: bool,
                   oversampling: float | None, truth_path: str | None, show: int, single: bool,
                   output: str | None, as_json: bool) -> None:
    """Search COLLECTION for every row of QUERIES.npy, rewriting queries with the stored model."""
    queries = load_vectors(queries_path, "QUERIES")
    mode = mode or ("auto" if candidate_source == "engine" else "off")  # auto searches the engine only
    rewriter = QueryRewriter(_store(ctx))
    run = run_queries(rewriter, collection, queries, limit, mode, candidates,
                      SearchParams(hnsw_ef=hnsw_ef, exact=exact, oversampling=oversampling), candidate_source, single)
    ids, scores, store = run.ids, run.scores, rewriter.store
    truth = load_truth(truth_path, len(queries), ids)[:, 0] if truth_path else None
    summary = search_summary(rewriter, collection, run, mode, candidate_source, limit, truth)
    if output:
        np.save(output, ids)
    click.echo(_json(summary) if as_json else "  ".join(f"{k}={v}" for k, v in summary.items()))
    for row in range(min(show, len(queries))):
        found = [(i, s) for i, s in zip(ids[row].tolist(), scores[row].tolist()) if i not in (-1, "")]
        payloads = store.records(collection, point_ids.as_id_array([i for i, _ in found])) if found else {}
        click.echo(f"query {row}:")
        for i, s in found:
            payload = (payloads.get(point_ids.canonical(i)) or (None, None))[0]
            text = "" if not payload else " " + _json(payload)[:SHOWN_PAYLOAD_CHARS]
            click.echo(f"  {i}  {s:.4f}{text}")


@main.command("pq-build")
@click.argument("collection")
@using_option
@click.option("--subspaces", type=click.IntRange(min=1), required=True,
              help="m: subspaces of 8 bits each, so 8·m bits per key; must divide the dimension.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=0.2, show_default=True,
              help="Anisotropic threshold T as a fraction of the largest key norm.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly_errors
def pq_build_command(ctx: click.Context, collection: str, subspaces: int, threshold: float, quiet: bool) -> None:
    """Build COLLECTION's compressed key store (score-aware product quantization) and store it alongside.

    Searches with `--candidates-from pq` then take their candidates from it and rescore them exactly.
    """
    from . import pq_build

    manifest = pq_build.build(_store(ctx), collection, subspaces, threshold, progress=not quiet)
    ratio = manifest["bytes"] / manifest["keys_fp32_bytes"]
    click.echo(f"{collection}: compressed key store v{manifest['version']}, {manifest['bits_per_key']} bits per key, "
               f"{manifest['bytes']:,} bytes ({ratio:.1%} of the fp32 keys)")


@main.command("route-build")
@click.argument("collection")
@using_option
@click.option("--queries", "queries_path", required=True, type=click.Path(dir_okay=False),
              help="A sample of the collection's query distribution (.npy, M×d).")
@click.option("--lists", type=click.IntRange(min=1), default=None, help="Coarse lists c (default: √N).")
@click.option("--sublists", type=click.IntRange(min=1), default=8, show_default=True,
              help="Fine lists s inside each coarse list; the router ranks these.")
@click.option("--coarse-candidates", type=click.IntRange(min=1), default=16, show_default=True,
              help="M: coarse lists, nearest by centroid, whose fine lists a query ranks (routing costs c + M·s).")
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Router training steps.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly_errors
def route_build_command(ctx: click.Context, collection: str, queries_path: str, lists: int | None, sublists: int,
                        coarse_candidates: int, steps: int, quiet: bool) -> None:
    """Train a list router for COLLECTION on a query sample and store it alongside (IVF with learned routing).

    The keys are split into c coarse × s fine lists; each fine list gets a learned point, trained so
    that a query's best key lies in the list ranked first. Searches with `--candidates-from route
    --candidates P` then scan the P best-ranked fine lists and rescore their keys exactly.
    """
    queries = load_vectors(queries_path, "QUERIES")
    from . import route_build
    from .router_training import RouterTraining

    manifest = route_build.build(_store(ctx), collection, queries, lists, sublists, coarse_candidates,
                                  RouterTraining(steps=steps), progress=not quiet)
    click.echo(f"{collection}: routed list index v{manifest['version']}, {manifest['lists']} × {manifest['sublists']} "
               f"lists, {manifest['bytes']:,} bytes")


@main.command("export")
@click.argument("collection")
@using_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@click.pass_context
@_friendly_errors
def export_command(ctx: click.Context, collection: str, output: str) -> None:
    """Write COLLECTION's current model to a file (the same format `fit` writes)."""
    blob = model_registry.read_blob(_store(ctx), collection)
    Path(output).write_bytes(blob)
    click.echo(f"wrote {output} ({len(blob):,} bytes)")


@main.command("import")
@click.argument("collection")
@using_option
@click.argument("model_path", metavar="MODEL.amips", type=click.Path(dir_okay=False))
@click.pass_context
@_friendly_errors
def import_command(ctx: click.Context, collection: str, model_path: str) -> None:
    """Store MODEL.amips as COLLECTION's model; stale at once if it was trained on other keys."""
    manifest = collection_ops.import_model(_store(ctx), collection,
                                           _model_file(regular_file(model_path, "MODEL.amips")))
    stale = manifest["stale"]
    click.echo(f"{collection}: imported as model version {manifest['version']}"
               + (" — STALE: it was trained on other keys; run amips train" if stale else ""))


@main.command("drop-model")
@click.argument("collection")
@using_option
@click.pass_context
@_friendly_errors
def drop_model_command(ctx: click.Context, collection: str) -> None:
    """Remove COLLECTION's model (the collection's points are untouched); searches become plain."""
    had = model_registry.drop(_store(ctx), collection)
    click.echo(f"{collection}: model removed" if had else f"{collection}: had no model")




@main.command("drop-index")
@click.argument("collection")
@click.argument("index", type=click.Choice(sorted(SIDE_INDEXES)))
@click.pass_context
@_friendly_errors
def drop_index_command(ctx: click.Context, collection: str, index: str) -> None:
    """Remove COLLECTION's side index INDEX (pq: the compressed key store, route: the routed lists), a
    broken one included; the model and the points are untouched, and searches use engine candidates."""
    had = model_registry.drop(_store(ctx), collection, SIDE_INDEXES[index].slot)
    click.echo(f"{collection}: {index} index removed" if had else f"{collection}: had no {index} index")


@main.command("synth")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--keys", "num_keys", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--dim", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--train-queries", type=click.IntRange(min=2), default=20_000, show_default=True)
@click.option("--test-queries", type=click.IntRange(min=1), default=2_000, show_default=True)
@click.option("--clusters", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@_friendly_errors
def synth_command(output: str, num_keys: int, dim: int, train_queries: int, test_queries: int, clusters: int,
                  seed: int) -> None:
    """Write a seeded synthetic collection to OUTPUT/: a Gaussian mixture whose key norms vary
    (log-normal), so MIPS differs from cosine search; queries come from the same mixture.

    Files: keys.npy, train_queries.npy, test_queries.npy (float32) and test_argmax.i32.npy
    (the exact MIPS answer of every test query)."""
    from .targets import exact_top1  # torch

    keys, queries = gaussian_mixture(num_keys, train_queries + test_queries, dim, clusters=clusters, seed=seed)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    test = queries[train_queries:]
    for name, array in (("keys.npy", keys), ("train_queries.npy", queries[:train_queries]), ("test_queries.npy", test),
                        ("test_argmax.i32.npy", exact_top1(keys, test).index.astype(np.int32))):
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write(folder / name, buffer.getvalue())
    click.echo(f"wrote {folder}/: {num_keys:,} keys × {dim}, {train_queries:,} train / {test_queries:,} test queries "
               f"(seed {seed})")


def _query_sample(path: str, max_queries: int) -> np.ndarray:
    """The queries of `path`, or `max_queries` of them drawn at random (seeded), in file order."""
    queries = load_vectors(path, "QUERIES")
    if len(queries) <= max_queries:
        return queries
    return queries[np.sort(np.random.default_rng(0).choice(len(queries), max_queries, replace=False))]


def sample_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `tune` and `advise` share: the query sample (read and drawn here, passed as `queries`), the
    declared recall, the result limit and the timing rounds."""
    options = [
        click.option("--queries", "queries_path", required=True, type=click.Path(dir_okay=False),
                     help="A sample of the collection's queries (.npy, M×d, M ≥ 200): a quarter fits the classifier "
                          "(at most half of a small sample); of the rest, half picks each plan and half certifies "
                          "it."),
        click.option("--target-recall", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
                     required=True, help="Declared recall@1 (of the exact argmax) the policy must meet on queries "
                                         "that did not pick it."),
        click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=10, show_default=True,
                     help="Results per query."),
        click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Interleaved timing rounds (best kept)."),
        click.option("--max-queries", type=click.IntRange(min=1), default=DEFAULT_TUNE_QUERIES, show_default=True,
                     help="At most this many of the queries, drawn at random (time grows linearly with it)."),
    ]

    @_friendly_errors  # a sample that does not load is one line, as any other input error
    @functools.wraps(command)
    def wrapper(*args: Any, queries_path: str, max_queries: int, **kwargs: Any) -> Any:
        return command(*args, queries=_query_sample(queries_path, max_queries), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


@main.command("advise")
@click.argument("collection")
@using_option
@sample_options
@click.option("--configs", default=",".join(DEFAULT_STORAGES), show_default=True,
              help="Storages to try, comma-separated, from: " + ", ".join(QUANTIZATIONS) + " (none: float32); "
                   "NAME+disk keeps the float32 originals on disk (rescoring reads them).")
@click.option("--max-bytes-per-key", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Recommend only storages whose vectors take at most this many bytes per key in RAM; the +disk "
                   "variant of each quantized storage that fits only so is tried too.")
@click.option("--apply", "apply_it", is_flag=True,
              help="Then move COLLECTION to the recommended storage (every point, id and payload kept; on Edge a new "
                   "shard is built beside the old, checked and swapped in atomically) and tune it there.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.pass_context
@_friendly_errors
def advise_command(ctx: click.Context, collection: str, queries: np.ndarray, target_recall: float, limit: int,
                   repeats: int, configs: str, max_bytes_per_key: float | None, apply_it: bool, as_json: bool,
                   quiet: bool) -> None:
    """Which storage (float32, int8, TurboQuant, binary, product quantization; originals in RAM or on disk) and
    which tuned policy on it serve COLLECTION's queries fastest at --target-recall: each is built on a scratch
    copy of the collection (Qdrant Edge, in a temporary folder, HNSW-indexed; the collection is only read), tuned
    like `amips tune`, and timed in interleaved rounds beside the collection as it is ("as is": tuned where it
    stands, nothing stored). Prints the frontier and the recommendation; --apply moves the collection to it."""
    from .advise import advise, apply, format_advice

    store = _store(ctx)
    storages = tuple(name.strip() for name in configs.split(",") if name.strip())
    say = (lambda message: None) if quiet else (lambda message: click.echo(f"advise {collection}: {message}", err=True))
    advice = advise(store, collection, queries, target_recall, storages, max_bytes_per_key, limit, repeats,
                    progress=say)
    result = advice.to_dict()
    if not as_json:
        click.echo(format_advice(advice))
    if apply_it:
        with tqdm(total=store.info(collection).count, unit="pt", desc=f"move {collection}", disable=quiet,
                  leave=False) as bar:
            moved, report = apply(store, collection, advice, queries, limit, repeats, progress=bar.update)
        result["applied"] = {"moved": moved, "policy": report.chosen.policy.describe(),
                             "verdict": report.verdict(), "version": (report.manifest or {}).get("version")}
        if not as_json:
            click.echo(f"{moved}\n{report.verdict()}")
    if as_json:
        click.echo(_json(result))


@main.command("tune")
@click.argument("collection")
@using_option
@sample_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the recall / throughput frontier as a PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@_friendly_errors
def tune_command(ctx: click.Context, collection: str, queries: np.ndarray, target_recall: float, limit: int,
                 repeats: int, plot_path: str | None, as_json: bool, quiet: bool) -> None:
    """Measure every serving policy in this store, store the cheapest meeting --target-recall (`search --mode auto`).

    Every pass is a search setting: hnsw_ef and, on a quantized collection (`ingest --quantization`),
    the oversampling of its quantized search (rescored with the originals). Plain search at every setting,
    and two-pass plans (a cheap pass for every query, a costlier one for the queries a certificate flags),
    are calibrated on held-out queries (each plan picked on one half, certified on the other). A store that
    searches exactly (local mode) is not tuned: it says so.
    """
    from . import tuning

    if plot_path:
        tuning.pyplot()
    report = tuning.tune(_store(ctx), collection, queries, target_recall, limit, repeats, progress=not quiet)
    if plot_path:
        tuning.plot_frontier(report, plot_path)
    click.echo(_json(report.to_dict()) if as_json else tuning.format_frontier(report))
