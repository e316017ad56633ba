"""Train a model on one collection's keys and a sample of its queries.

The recipe (docs/design.md §1): Adam; global gradient-norm clipping; linear warm-up then cosine decay;
an exponential moving average (EMA) of the weights, which is what is evaluated, early-stopped on
and returned; noise augmentation with exact targets; validation on held-out *base* queries.
Seeded and deterministic on CPU.

Memory: the SmoothMax model scores every query against each of its n points, so a batch of B queries
holds several B×n tensors. Every pass over queries (optimisation steps, validation, gate calibration)
is therefore cut into row chunks of at most SCORE_BUDGET scores each — the optimisation step
accumulates the gradients of its chunks, which sum to the full batch's gradient — so what a step
holds stays bounded however many keys the collection has (measured: bench/train_memory.py).
"""
from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, cast

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .core.errors import InputError
from .data import TargetedQueries, augment, is_unit_norm, split_by_base_query
from .inference import DEFAULT_BATCH, SCORE_BUDGET, predict_keys, resolve_device, rows_per_chunk
from .losses import LossParts, amortized_mips_loss
from .metrics import Quality, evaluate_predictions
from .train_config import TrainConfig
from .models import MIPSModel, ModelConfig, SmoothMaxSupportNet, build_model, oversize_reason, width_for_budget

MAX_VALIDATION_QUERIES = 2000
CALIBRATION_STEPS = 10
SMOOTHMAX_MIN_RANK = 16
SMOOTHMAX_MIN_POINTS = 32


@dataclass
class FitResult:
    model: MIPSModel  # EMA weights of the best validation checkpoint
    config: TrainConfig
    validation: Quality
    steps_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    gate: GateCalibration | None = None  # smoothmax with a gate: how it was calibrated
    budget_steps: int | None = None  # the steps the time budget allowed, when fewer than config.steps

    def metadata(self, keys: np.ndarray, num_queries: int, fingerprint: dict[str, Any],
                 **extra: Any) -> dict[str, Any]:
        """What a model artifact records about its training, the same for `amips fit` and `amips train`."""
        from . import __version__  # the package's version, set in its __init__
        from .models import params_fraction

        params = self.model.num_parameters()
        return {"training": self.config.to_dict(), "steps_run": self.steps_run, "train_seconds": round(self.seconds, 2),
                "num_keys": len(keys), "num_queries": num_queries, "fingerprint": fingerprint,
                "validation": self.validation.to_dict(), "params": params,
                "gate": None if self.gate is None else asdict(self.gate),
                "params_fraction": params_fraction(params, keys.shape[0], keys.shape[1]),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": {"amips": __version__, "torch": torch.__version__, "numpy": np.__version__,
                             "python": platform.python_version()}, **extra}


def learning_rate_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up over the first `warmup_fraction` of steps, then cosine decay to zero."""
    warmup = max(1, int(warmup_fraction * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def model_config_for(config: TrainConfig, num_keys: int, dim: int) -> ModelConfig:
    """The architecture: explicit width, or the largest width within ρ·N·d parameters; InputError when it
    is larger than a collection of `num_keys` keys warrants (models.sizing), which could not serve."""
    budget = int(config.params_fraction * num_keys * dim)
    points = 0
    if config.model == "smoothmax":
        points = config.points or default_smoothmax_points(budget, num_keys, dim)
    base = ModelConfig(kind=config.model, dim=dim, width=config.width or 1, depth=config.depth,
                       reinject_every=config.reinject_every, points=points)
    chosen = base if config.width is not None else replace(base, width=width_for_budget(base, budget))
    problem = oversize_reason(chosen, num_keys)
    if problem:
        raise InputError(problem)
    return chosen


def default_smoothmax_points(budget: int, num_keys: int, dim: int) -> int:
    """One point per key while a rank of at least SMOOTHMAX_MIN_RANK fits the budget; below that,
    fewer points at that rank (measured on squad-dev at ρ = 0.02: 512 points × rank 17 reach
    E_rel 0.861 against 0.872 for 2,067 points × rank 6, at the same gated match rate)."""
    affordable = budget // SMOOTHMAX_MIN_RANK - dim  # points n with n·r + r·d ≤ budget at r = min rank
    return int(min(num_keys, max(affordable, min(num_keys, SMOOTHMAX_MIN_POINTS))))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _validate(model: MIPSModel, keys: np.ndarray, validation: TargetedQueries) -> Quality:
    queries = validation.queries.cpu().numpy()
    predicted = predict_keys(model, queries, batch_size=rows_per_chunk(model, DEFAULT_BATCH, SCORE_BUDGET))
    return evaluate_predictions(keys, queries, predicted, validation.target_index.cpu().numpy())


@dataclass(frozen=True)
class GateCalibration:
    """The confidence gate on the validation queries: its threshold, the match rate without and with
    it, and the share of queries it answers with the radial key (i.e. sends to plain search)."""

    threshold: float
    ungated_match: float
    gated_match: float
    gated_share: float


def calibrate_gate(model: SmoothMaxSupportNet, keys_t: torch.Tensor, validation: TargetedQueries,
                   min_match: float) -> GateCalibration:
    """Set the smallest confidence threshold whose gated validation match rate reaches `min_match`.

    Queries below the threshold get the radial key, which ranks like the query itself. Scanning
    the validation queries' own confidences from low to high, the first threshold that reaches
    the target sends the fewest queries to the fallback.
    """
    step = max(1, min(rows_per_chunk(model, len(validation), SCORE_BUDGET), SCORE_BUDGET // len(keys_t)))
    hits_key, hits_radial, confidences = [], [], []
    for start in range(0, len(validation), step):  # row chunks: no M×n or M×N matrix is ever whole
        part = slice(start, start + step)
        key, radial, confidence = model.gate_inputs(validation.queries[part])
        hits_key.append((key @ keys_t.T).argmax(dim=1) == validation.target_index[part])
        hits_radial.append((radial @ keys_t.T).argmax(dim=1) == validation.target_index[part])
        confidences.append(confidence)
    hit_key, hit_radial, confidence = torch.cat(hits_key), torch.cat(hits_radial), torch.cat(confidences)
    never_gated = torch.zeros(1, device=confidence.device)
    always_gated = torch.full((1,), 1.0 + 1e-6, device=confidence.device)
    threshold = always_gated[0]
    for candidate in torch.cat([never_gated, torch.sort(confidence).values, always_gated]):
        if torch.where(confidence < candidate, hit_radial, hit_key).float().mean().item() >= min_match:
            threshold = candidate
            break
    model.gate_threshold.fill_(float(threshold))
    gated = confidence < threshold
    return GateCalibration(float(threshold), hit_key.float().mean().item(),
                           torch.where(gated, hit_radial, hit_key).float().mean().item(), gated.float().mean().item())


def _accumulate_gradients(model: MIPSModel, train: TargetedQueries, keys_t: torch.Tensor, batch: torch.Tensor,
                          micro_batch: int, config: TrainConfig) -> LossParts:
    """Backpropagate the batch's loss in row chunks of `micro_batch`; returns the batch's loss (for logging).

    The loss is a mean over the batch, so chunk c contributes its own mean weighted by |c|/|batch|: the
    accumulated gradient is the full batch's. One chunk (the common case) is the plain computation.
    """
    parts = batch.split(micro_batch)
    totals: dict[str, float | torch.Tensor] = {"total": 0.0, "score": 0.0, "key": 0.0}
    for part in parts:
        scores, predicted = model.score_and_key(train.queries[part], create_graph=True)
        loss = amortized_mips_loss(
            scores, predicted, train.target_scores[part], keys_t[train.target_index[part]],
            config.score_weight, config.key_weight,
        )
        if len(parts) == 1:
            loss.total.backward()
            return loss
        weight = len(part) / len(batch)
        (loss.total * weight).backward()
        for name in totals:
            totals[name] += weight * getattr(loss, name).detach()
    return LossParts(**cast("dict[str, torch.Tensor]", totals))  # every entry is a tensor once a chunk is added


def fit(
    keys: np.ndarray,
    queries: np.ndarray,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train a model for `keys` (N, d) on training queries (M, d); both float32."""
    started = time.perf_counter()
    _seed_everything(config.seed)
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)

    train_ids, validation_ids = split_by_base_query(len(queries), config.validation_fraction, config.seed)
    validation_ids = validation_ids[:MAX_VALIDATION_QUERIES]
    train_queries = augment(queries[train_ids], config.noise_copies, config.noise_std, is_unit_norm(keys), rng)
    train = TargetedQueries.build(keys, train_queries, device)
    validation = TargetedQueries.build(keys, queries[validation_ids], device)
    keys_t = torch.from_numpy(keys).to(device)

    model = build_model(model_config_for(config, len(keys), keys.shape[1]))
    model.initialise_from_keys(keys)
    model = model.to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    averaged = cast(MIPSModel, ema.module)  # AveragedModel's deep copy of `model` (typed as a plain Module)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)

    total_steps = config.steps
    best: tuple[float, float] = (-1.0, math.inf)  # (match rate, E_rel) of the best checkpoint
    best_state: dict[str, torch.Tensor] | None = None
    best_quality: Quality | None = None
    evals_without_gain = 0
    history: list[dict[str, float]] = []
    order = torch.randperm(len(train), generator=generator)
    micro_batch = rows_per_chunk(model, config.batch_size, SCORE_BUDGET)
    cursor = 0
    loop_started = time.perf_counter()
    bar = tqdm(total=total_steps, disable=not progress, unit="step", dynamic_ncols=True, leave=False)
    step, budget_steps = 0, None
    while step < total_steps:
        if cursor + config.batch_size > len(train):
            order, cursor = torch.randperm(len(train), generator=generator), 0
        batch = order[cursor : cursor + config.batch_size].to(device)
        cursor += config.batch_size

        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(step, total_steps, config.learning_rate, config.warmup_fraction)
        model.train()
        optimiser.zero_grad(set_to_none=True)
        loss = _accumulate_gradients(model, train, keys_t, batch, micro_batch, config)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        ema.update_parameters(model)
        step += 1
        bar.update(1)

        if step == CALIBRATION_STEPS and config.time_budget is not None:
            per_step = (time.perf_counter() - loop_started) / CALIBRATION_STEPS
            affordable = int(0.9 * config.time_budget / per_step)  # 10% for validation passes
            total_steps = max(step + 1, min(total_steps, affordable))
            budget_steps = total_steps if total_steps < config.steps else None
            bar.total = total_steps
            bar.refresh()

        if step % config.eval_every == 0 or step == total_steps:
            quality = _validate(averaged, keys, validation)
            record = {"step": step, "loss": loss.total.item(), "key_loss": loss.key.item(),
                      "score_loss": loss.score.item(), "val_match_rate": quality.match_rate,
                      "val_e_rel": quality.e_rel, "seconds": time.perf_counter() - started}
            history.append(record)
            if on_log is not None:
                on_log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", val_match=f"{quality.match_rate:.3f}",
                            val_e_rel=f"{quality.e_rel:.3f}")
            candidate = (quality.match_rate, quality.e_rel)
            if candidate[0] > best[0] or (candidate[0] == best[0] and candidate[1] < best[1]):
                best, best_quality, evals_without_gain = candidate, quality, 0
                best_state = copy.deepcopy(averaged.state_dict())
            else:
                evals_without_gain += 1
                if evals_without_gain >= config.patience:
                    break
    bar.close()

    final = averaged
    if best_state is not None:
        final.load_state_dict(best_state)
    final.eval()
    assert best_quality is not None  # at least one validation pass runs (step == total_steps)
    gate = None
    if isinstance(final, SmoothMaxSupportNet) and config.min_match > 0:
        gate = calibrate_gate(final, keys_t, validation, config.min_match)
        best_quality = _validate(final, keys, validation)
    return FitResult(model=final, config=config, validation=best_quality, steps_run=step,
                     seconds=time.perf_counter() - started, history=history, gate=gate, budget_steps=budget_steps)
