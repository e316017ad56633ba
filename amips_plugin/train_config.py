"""What `train` and `fit` are asked to do: the training settings and the model kinds, free of torch.

Kept apart from training.py (which imports torch) so that the CLI can offer these defaults as its options, and
the query path and the commands that read no model (`--help`, `ingest`, `search`, `status`) start without
importing torch (~1.6 s); `tune` and `advise` import it for the exact answers (targets.py). The loss weights
w_s and w_t are losses.py's (the paper's score and key terms).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MODEL_KINDS = ("keynet", "supportnet", "smoothmax")
SCORE_WEIGHT = 0.01  # w_s: the score term's weight (losses.py)
KEY_WEIGHT = 1.0  # w_t: the key term's weight
DEFAULT_TIME_BUDGET = 300.0  # seconds: training is optional, and should cost minutes


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults come from the squad-dev sweep (docs/models.md). `time_budget` bounds
    the optimisation loop's wall clock (the schedule is shortened to fit after CALIBRATION_STEPS): the
    default five minutes leave a 5,183-key, 384-d collection's 3,000 steps (97 s on 2 cores) untouched
    and stop a larger or busier one early, so that training costs minutes; None: no bound."""

    model: str = "smoothmax"
    params_fraction: float = 0.2
    width: int | None = None  # overrides params_fraction when given
    depth: int = 2
    reinject_every: int = 4
    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    noise_copies: int = 8
    noise_std: float = 0.02
    points: int | None = None  # smoothmax: learned points (default: one per key)
    min_match: float = 0.8  # smoothmax: the confidence gate's target validation match rate (0: no gate)
    score_weight: float = SCORE_WEIGHT
    key_weight: float = KEY_WEIGHT
    validation_fraction: float = 0.1
    eval_every: int = 250
    patience: int = 6
    time_budget: float | None = DEFAULT_TIME_BUDGET  # seconds for the optimisation loop
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
