"""A model as an artifact (compression/artifact.py's container, kind "amips-model"): its architecture
("model": ModelConfig), the weights' storage dtype, free-form metadata (training settings, the keys'
fingerprint, metrics, library versions) and the state dict's tensors. Before a weight is inflated the
declared architecture is built on the meta device and must have exactly the table's tensors, so a
hostile header cannot make the reader build, or allocate for, a model its table does not describe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amips_plugin.compression import artifact
from amips_plugin.compression.quantization import STORAGE_DTYPES, encode_tensor
from amips_plugin.core.errors import ArtifactError
from amips_plugin.core.files import atomic_write, read_bounded
from amips_plugin.core.limits import MAX_BLOB_BYTES

from .models import MIPSModel, ModelConfig, build_model

MODEL_KIND = "amips-model"


@dataclass(frozen=True)
class LoadedModel:
    model: MIPSModel
    header: dict[str, Any]


def encode_model(model: MIPSModel, metadata: dict[str, Any] | None = None, dtype: str = "fp32") -> bytes:
    """Serialise `model` with weights stored as `dtype` (fp32, fp16 or int8)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {STORAGE_DTYPES}")
    tensors = [(name, encode_tensor(t.detach().cpu().numpy(), dtype)) for name, t in model.state_dict().items()]
    header = {"dtype": dtype, "model": model.config.to_dict(), "metadata": metadata or {}}
    return artifact.pack(MODEL_KIND, header, tensors)


def read_header(blob: bytes) -> dict[str, Any]:
    """The verified JSON header of a model artifact (for `amips inspect`); the tensors are not inflated."""
    return artifact.read_header(blob, MODEL_KIND)


def _check_architecture(header: dict[str, Any]) -> None:
    """The declared model, built on the meta device (no weights exist), must have exactly the table's tensors."""
    try:
        config = ModelConfig.from_dict(header["model"])
        with torch.device("meta"):
            skeleton = build_model(config)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"artifact's model config is invalid: {exc}") from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    found = {entry["name"]: tuple(entry["shape"]) for entry in header["tensors"]}
    if expected != found:
        raise ArtifactError("artifact's tensors do not match its declared architecture")


def decode_model(blob: bytes) -> LoadedModel:
    """Verify and parse an artifact; the model comes back in eval mode on the CPU."""
    header, tensors = artifact.unpack(blob, MODEL_KIND, check=_check_architecture)
    model = build_model(ModelConfig.from_dict(header["model"]))
    model.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()}, strict=True)
    model.eval()
    return LoadedModel(model=model, header=header)


def save_model(path: str | Path, model: MIPSModel, metadata: dict[str, Any] | None = None,
               dtype: str = "fp32") -> int:
    """Write atomically (temporary file + rename): a reader sees the old file or the new one."""
    blob = encode_model(model, metadata, dtype)
    atomic_write(path, blob)
    return len(blob)


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such model file: {path}")
    try:
        return decode_model(read_bounded(path, MAX_BLOB_BYTES))
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
