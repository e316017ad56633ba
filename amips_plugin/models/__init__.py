"""Amortized-MIPS models: SmoothMax (the default: a smooth maximum over learned points), KeyNet (regress the
key) and SupportNet (convex support function); docs/models.md."""
from .activations import SoftLeakyReLU
from .base import MODEL_KINDS, MIPSModel, ModelConfig
from .factory import build_model
from .keynet import KeyNet
from .smoothmax import SmoothMaxSupportNet
from .sizing import count_parameters, oversize_reason, params_fraction, width_for_budget
from .supportnet import SupportNet

__all__ = [
    "MODEL_KINDS",
    "KeyNet",
    "MIPSModel",
    "ModelConfig",
    "SmoothMaxSupportNet",
    "SoftLeakyReLU",
    "SupportNet",
    "build_model",
    "count_parameters",
    "oversize_reason",
    "params_fraction",
    "width_for_budget",
]
