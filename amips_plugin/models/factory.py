"""Build a model from its configuration."""
from __future__ import annotations

from .base import MIPSModel, ModelConfig
from .keynet import KeyNet
from .smoothmax import SmoothMaxSupportNet
from .supportnet import SupportNet

_CLASSES: dict[str, type[MIPSModel]] = {"keynet": KeyNet, "supportnet": SupportNet, "smoothmax": SmoothMaxSupportNet}


def build_model(config: ModelConfig) -> MIPSModel:
    return _CLASSES[config.kind](config)
