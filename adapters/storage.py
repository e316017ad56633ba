"""How a collection stores its vectors: the quantizations Qdrant offers, by the names amips uses (issue 23).

Each quantization keeps compressed copies of the vectors in RAM that HNSW searches; a search's
`oversampling` × limit candidates are rescored with the float32 originals (in RAM, or read from disk
with `on_disk`). Bytes per key in RAM count the codes, plus the originals unless they are on disk
(HNSW links are the same for every storage and not counted). "float16" keeps no copies: the originals
themselves are stored (and scored) at half precision, so there is nothing to oversample or rescore.

    none     float32 originals only                        32 bits a dimension
    float16  float16 originals only                        16
    int8     scalar int8, quantile 0.99                    8
    turbo4   TurboQuant, 4 bits                            4
    turbo2   TurboQuant, 2 bits                            2
    turbo1   TurboQuant, 1 bit                             1
    bq2      binary, 2 bits, queries encoded as int8       2
    bq1      binary, 1 bit, queries encoded as int8        1
    pq8      product quantization, compression ×8          4   (one byte a code of 2 dimensions)
    pq16     product quantization, ×16                     2
    pq32     product quantization, ×32                     1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amips_plugin.core.errors import InputError

SCALAR_QUANTILE = 0.99  # int8 scalar quantization clips each vector coordinate to this quantile


@dataclass(frozen=True)
class Quantization:
    name: str
    kind: str  # "none", "float16", "scalar", "turbo", "binary", "product": the engine's configuration family
    bits: float  # per dimension, of the vectors HNSW searches (the copy, or the originals when there is none)

    @property
    def quantized(self) -> bool:
        """Whether searches use compressed copies (and `oversampling` rescoring means something)."""
        return self.kind not in ORIGINALS_ONLY

    def ram_bytes_per_key(self, dim: int, on_disk: bool = False) -> float:
        """Vector bytes in RAM per key: the codes, and the float32 originals unless they are on disk; with no
        copies, the originals (HNSW scores them, so on disk they are read into the page cache anyway)."""
        if not self.quantized:
            return self.bits * dim / 8
        return self.bits * dim / 8 + (0.0 if on_disk else 4.0 * dim)


ORIGINALS_ONLY = ("none", "float16")  # storages without quantized copies


QUANTIZATIONS: dict[str, Quantization] = {q.name: q for q in (
    Quantization("none", "none", 32), Quantization("float16", "float16", 16),
    Quantization("int8", "scalar", 8), Quantization("turbo4", "turbo", 4),
    Quantization("turbo2", "turbo", 2), Quantization("turbo1", "turbo", 1), Quantization("bq2", "binary", 2),
    Quantization("bq1", "binary", 1), Quantization("pq8", "product", 4), Quantization("pq16", "product", 2),
    Quantization("pq32", "product", 1))}


DEFAULT_STORAGES = ("none", "int8", "turbo4", "turbo2", "bq2", "bq1")  # what `amips advise` tries


def quantization(name: str) -> Quantization:
    """The named quantization; InputError naming the choices otherwise."""
    if name not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {name!r}; expected one of {', '.join(QUANTIZATIONS)}")
    return QUANTIZATIONS[name]


def label(name: str, on_disk: bool = False) -> str:
    """A storage in words: "float32", "int8", "int8 (originals on disk)"."""
    if name in ORIGINALS_ONLY:
        return ("float32" if name == "none" else name) + (" (on disk)" if on_disk else "")
    return name + (" (originals on disk)" if on_disk else "")


def name_of(config: dict[str, Any] | None, datatype: str | None = None) -> str:
    """The amips name of a quantization configuration as Qdrant stores it (JSON: {"scalar": {...}},
    {"turbo": {"bits": "bits4"}}, {"binary": {"encoding": "two_bits"}}, {"product": {"compression": "x16"}});
    without one, the originals' `datatype` names it ("float16"; "none" for float32, the default); "other" for what
    amips has no name for (other encodings, ratios and datatypes)."""
    if not config:
        kind = str(datatype or "float32").lower()
        return {"float32": "none", "float16": "float16"}.get(kind, "other")
    if "scalar" in config:
        return "int8" if str((config["scalar"] or {}).get("type", "")).lower() == "int8" else "other"
    if "turbo" in config:
        return {"bits4": "turbo4", "bits2": "turbo2", "bits1": "turbo1"}.get(str((config["turbo"] or {}).get("bits")),
                                                                            "other")
    if "binary" in config:
        return {"two_bits": "bq2", "one_bit": "bq1", None: "bq1"}.get((config["binary"] or {}).get("encoding"), "other")
    if "product" in config:
        return {"x8": "pq8", "x16": "pq16", "x32": "pq32"}.get(
            str((config["product"] or {}).get("compression")), "other")
    return "other"
