"""Build a model from its configuration."""
from __future__ import annotations

from .base import MIPSModel, ModelConfig
from .keynet import KeyNet
from .supportnet import SupportNet


def build_model(config: ModelConfig) -> MIPSModel:
    return KeyNet(config) if config.kind == "keynet" else SupportNet(config)
