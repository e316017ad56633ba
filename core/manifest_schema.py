"""One validated schema (pydantic) for what amips reads back from a store: the manifests of each slot
("model", "pq", "router", "policy") and the JSON headers of artifacts (compression/artifact.py).

Everything stored is untrusted input (anyone with write access to a collection can write its
metadata). Each read goes through `validate_manifest` or `validate_header`; whatever does not
validate is a ManifestError / ArtifactError with one line, which callers treat as "no usable model
/ index" (the query path answers plain, `status` reports the reason per slot). Validation is
strict about types (no "1" for 1, no true for 1) and bounded (core/limits.py), so a hostile
manifest cannot declare sizes that the code would then allocate; every number is finite (a manifest
file's NaN / Infinity literals are refused as not JSON), and amips checks each manifest it writes the
same way (`check_outgoing`).

A manifest read back is typed: validation returns its slot's model (ModelManifestSchema, ...,
PolicyManifestSchema, all ManifestSchema), which the code reads by attribute (`as_schema` narrows a
store read to its slot's class); manifests are written as plain dicts (JSON's shape: what publishing
returns). Unknown extra fields are allowed and kept (a newer amips may add some); an unknown slot (a
newer amips's side index) is read as a manifest naming a blob.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr

from . import limits
from .errors import ArtifactError

Hex64 = Field(pattern=r"^[0-9a-f]{64}$")


def _finite(value: float | int) -> float | int:
    """`value` unchanged when it is a finite float (an integer too large for one is not)."""
    try:
        if math.isfinite(value):
            return value
    except OverflowError:
        pass
    raise ValueError("must be a finite number")


Number = Annotated[StrictFloat | StrictInt, AfterValidator(_finite)]  # never NaN, ±Infinity or beyond float range
Share = Annotated[Number, Field(ge=0, le=1)]
Oversampling = Annotated[Number, Field(ge=1, le=limits.MAX_OVERSAMPLING)]


class ManifestError(ArtifactError):
    """A stored manifest is not valid JSON, not an object, or does not match its slot's schema."""


def fix_command(slot: str, collection: str = "COLLECTION") -> str:
    """The command that clears a broken manifest in `slot` (errors name it); a named vector's slot
    ("model@text") gets `--using text`."""
    base, _, vector = slot.partition("@")
    return SLOTS[base].fix.format(collection=collection, using=f" --using {vector}" if vector else "")


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """The fields as the JSON they were read from held them (defaults it left out stay out; unknown
        fields are kept): what to write back when a stored manifest is rewritten."""
        return self.model_dump(exclude_unset=True)


class FingerprintSchema(_Schema):
    """Which keys a model or index was built on; empty for a model imported from a bare file."""

    count: Optional[StrictInt] = Field(default=None, ge=0, le=limits.MAX_POINT_COUNT)
    dim: Optional[StrictInt] = Field(default=None, ge=1, le=limits.MAX_DIMENSION)
    sha256: Optional[StrictStr] = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class BoundToSchema(_Schema):
    """The collection's write stamp (adapters.base.WriteStamp) when the artifact was built from its points."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    collection: StrictStr = Field(pattern=r"^[0-9a-f]{32}$")
    generation: StrictInt = Field(ge=0, lt=2**62)


class ModelConfigSchema(_Schema):
    """models.base.ModelConfig, bounded (its own checks only require ≥ 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    kind: Literal["keynet", "supportnet", "smoothmax"]
    dim: StrictInt = Field(ge=1, le=limits.MAX_DIMENSION)
    width: StrictInt = Field(ge=1, le=limits.MAX_WIDTH)
    depth: StrictInt = Field(default=2, ge=1, le=limits.MAX_DEPTH)
    reinject_every: StrictInt = Field(default=4, ge=1, le=limits.MAX_DEPTH)
    heads: StrictInt = Field(default=1, ge=1, le=limits.MAX_HEADS)
    slope: Number = 0.1
    sharpness: Number = 20.0
    points: StrictInt = Field(default=0, ge=0, le=limits.MAX_POINTS)


class ManifestSchema(_Schema):
    """What every slot's manifest holds (model_registry.commit_manifest writes these fields)."""

    version: StrictInt = Field(ge=1, le=limits.MAX_VERSION)
    created: Optional[StrictStr] = Field(default=None, max_length=64)
    stale: StrictBool = False
    slot: Optional[StrictStr] = Field(default=None, max_length=64)
    fingerprint: Optional[FingerprintSchema] = None
    bound_to: Optional[BoundToSchema] = None


class BlobManifestSchema(ManifestSchema):
    """A manifest naming its blob (model_registry.publish_blob writes these): the model's and each side index's."""

    blob: StrictInt = Field(ge=0, lt=limits.MAX_BLOB_ID)
    sha256: StrictStr = Hex64
    bytes: StrictInt = Field(ge=1, le=limits.MAX_BLOB_BYTES)


class ModelManifestSchema(BlobManifestSchema):
    model: ModelConfigSchema
    dtype: Literal["fp32", "fp16", "int8"]
    metrics: Optional[dict[StrictStr, Optional[Number]]] = None


class PQManifestSchema(BlobManifestSchema):
    """The thresholds came later than the first compressed key stores: optional, typed when present."""

    subspaces: StrictInt = Field(ge=1, le=limits.MAX_DIMENSION)
    bits_per_key: Optional[StrictInt] = Field(default=None, ge=1, le=8 * limits.MAX_DIMENSION)
    relative_threshold: Optional[Number] = None
    score_threshold: Optional[Number] = None
    keys_fp32_bytes: Optional[StrictInt] = Field(default=None, ge=0)


class RouterManifestSchema(BlobManifestSchema):
    lists: StrictInt = Field(ge=1, le=limits.MAX_POINT_COUNT)
    sublists: StrictInt = Field(ge=1, le=limits.MAX_POINT_COUNT)
    coarse_candidates: StrictInt = Field(ge=1, le=limits.MAX_POINT_COUNT)
    router_steps: Optional[StrictInt] = Field(default=None, ge=0)


class ClassifierSchema(_Schema):
    """serving_policy.Classifier: a logistic regression over at most a few first-pass features."""

    mean: list[Number] = Field(max_length=8)
    scale: list[Annotated[Number, Field(gt=0)]] = Field(max_length=8)  # a divisor
    weights: list[Number] = Field(max_length=9)


class PolicyFields(_Schema):
    """A serving policy's own fields (serving_policy.Policy.from_manifest builds the policy from them). Its numbers
    are finite and in range here; how they fit together (ef < second_ef, guard_low ≤ guard_high, ...)
    `Policy.problem` checks."""

    kind: Literal["plain", "two-pass"]
    ef: StrictInt = Field(ge=1, le=limits.MAX_HNSW_EF)
    second_ef: Optional[StrictInt] = Field(default=None, ge=1, le=limits.MAX_HNSW_EF)
    certificate: Optional[Literal["s1", "margin", "classifier"]] = None
    threshold: Optional[Number] = None
    classifier: Optional[ClassifierSchema] = None
    guard_low: Optional[list[Number]] = Field(default=None, max_length=8)
    guard_high: Optional[list[Number]] = Field(default=None, max_length=8)
    target: Optional[Annotated[Number, Field(gt=0, lt=1)]] = None
    key_count: Optional[StrictInt] = Field(default=None, ge=0, le=limits.MAX_POINT_COUNT)  # older policies; unread
    model_sha256: Optional[StrictStr] = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    fallback_ef: Optional[StrictInt] = Field(default=None, ge=1, le=limits.MAX_HNSW_EF)
    break_even: Optional[Share] = None
    oversampling: Optional[Oversampling] = None
    second_oversampling: Optional[Oversampling] = None
    fallback_oversampling: Optional[Oversampling] = None
    min_batch: Optional[StrictInt] = Field(default=None, ge=1, le=1 << 31)  # queries a call needs to go two-pass
    measured: Optional[dict[StrictStr, Optional[Number]]] = None


class PolicyManifestSchema(PolicyFields, ManifestSchema):
    """The tuned serving policy as stored: a manifest with no blob — its fields, and the manifest's own."""

    id: Optional[StrictInt] = Field(default=None, ge=0, lt=limits.MAX_BLOB_ID)
    storage: Optional[StrictStr] = Field(default=None, max_length=64)  # freshness.storage_key at tuning


def parse_policy(data: Any) -> PolicyFields:
    """A policy's fields (a dict: `Policy.to_manifest`'s), typed; ManifestError (one line) when they do not
    validate."""
    try:
        return PolicyFields.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"the stored serving policy is malformed ({one_line(exc)})") from None


@dataclass(frozen=True)
class Slot:
    """One manifest slot, everything about it in one place: its name, the file Edge keeps it in (a named
    vector's is `<stem>@<name>.json`), its schema, and the command that clears it when it is broken."""

    name: str
    file_name: str
    schema: type[ManifestSchema]
    fix: str  # with {collection} and {using} (" --using NAME" for a named vector's slot, else "")


SLOTS: dict[str, Slot] = {slot.name: slot for slot in (
    Slot("model", "manifest.json", ModelManifestSchema, "amips drop-model {collection}{using}"),
    Slot("pq", "pq.json", PQManifestSchema, "amips drop-index {collection} pq{using}"),
    Slot("router", "router.json", RouterManifestSchema, "amips drop-index {collection} route{using}"),
    Slot("policy", "policy.json", PolicyManifestSchema, "amips tune {collection}{using} (it replaces the policy)"),
)}
MANIFEST_SCHEMAS: dict[str, type[ManifestSchema]] = {name: slot.schema for name, slot in SLOTS.items()}


class TensorEntrySchema(_Schema):
    """One row of an artifact's tensor table: a tensor's name, dtype, shape and int8 scale layout. Its offset
    and byte sizes follow from the table; artifact format 1 also stated them (checked when present)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    name: StrictStr = Field(min_length=1, max_length=256)
    dtype: Literal["fp32", "fp16", "int8", "uint8", "int64"]
    shape: list[Annotated[StrictInt, Field(ge=0, le=limits.MAX_BODY_BYTES)]] = Field(max_length=limits.MAX_TENSOR_RANK)
    offset: Optional[StrictInt] = Field(default=None, ge=0, le=limits.MAX_BODY_BYTES)
    nbytes: Optional[StrictInt] = Field(default=None, ge=0, le=limits.MAX_BODY_BYTES)
    scales_nbytes: Optional[StrictInt] = Field(default=None, ge=0, le=limits.MAX_BODY_BYTES)
    scale_axis: Optional[StrictInt] = Field(default=None, ge=0, le=1)  # int8 only; absent: per row
    scale_group: Optional[StrictInt] = Field(default=None, ge=1, le=limits.MAX_BODY_BYTES)


class ArtifactHeaderSchema(_Schema):
    format: StrictStr = Field(max_length=64)
    tensors: list[TensorEntrySchema] = Field(max_length=limits.MAX_TENSORS)
    metadata: dict[StrictStr, Any] = Field(default_factory=dict)


class ModelHeaderSchema(ArtifactHeaderSchema):
    model: ModelConfigSchema
    dtype: Literal["fp32", "fp16", "int8"]


class RouterHeaderSchema(ArtifactHeaderSchema):
    logit_scale: Number = Field(gt=0)
    min_confidence: Share  # a softmax probability's gate
    sublists: StrictInt = Field(ge=1, le=limits.MAX_POINT_COUNT)
    coarse_candidates: StrictInt = Field(ge=1, le=limits.MAX_POINT_COUNT)


HEADER_SCHEMAS: dict[str, type[ArtifactHeaderSchema]] = {
    "amips-model": ModelHeaderSchema, "amips-pq": ArtifactHeaderSchema, "amips-router": RouterHeaderSchema}


def one_line(exc: ValidationError) -> str:
    """The first problem pydantic found, as `field.path: message` (plus how many more)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"[:300]


def validate_manifest(raw: Any, slot: str, collection: str) -> ManifestSchema | None:
    """`raw` (parsed JSON, or None/empty for "no manifest") checked against `slot`'s schema.

    Returns the manifest typed by that schema, or None; ManifestError (one line that names the command
    which clears it) when it does not validate.
    """
    if raw is None or raw == {}:
        return None
    parsed = _parse(raw, slot)
    if isinstance(parsed, str):
        raise ManifestError(f"the {slot} manifest of {collection!r} is malformed ({parsed}); "
                            f"clear it with `{fix_command(slot, collection)}`")
    return parsed


def check_outgoing(manifest: dict[str, Any], slot: str, collection: str) -> ManifestSchema:
    """The manifest as a reader will read it back (as JSON), typed; ManifestError before writing one that
    readers would refuse (a NaN in it, say): amips never stores one, so a reader never meets a bad value
    that amips itself wrote."""
    try:
        parsed = _parse(json.loads(json.dumps(manifest, allow_nan=False)), slot)
    except (ValueError, TypeError) as exc:  # NaN or Infinity anywhere, or no JSON value at all
        parsed = str(exc)[:120]
    if isinstance(parsed, str):
        raise ManifestError(f"refusing to store a {slot} manifest of {collection!r} that would not read back "
                            f"({parsed}); nothing was written")
    return parsed


def _parse(raw: Any, slot: str) -> ManifestSchema | str:
    """`raw` typed by `slot`'s schema, or what keeps it from validating, in one line."""
    base = slot.partition("@")[0]  # a named vector's slot ("model@text") has its base slot's schema
    schema = MANIFEST_SCHEMAS.get(base, BlobManifestSchema)
    if not isinstance(raw, dict):
        return f"expected an object, found {type(raw).__name__}"
    try:
        parsed = schema.model_validate(raw)
    except ValidationError as exc:
        return one_line(exc)
    except (RecursionError, ValueError, TypeError) as exc:  # absurd nesting or integers
        return f"{type(exc).__name__}"
    return f"it names slot {parsed.slot!r}" if parsed.slot is not None and parsed.slot != base else parsed


Typed = TypeVar("Typed", bound=ManifestSchema)


def as_schema(manifest: ManifestSchema | None, schema: type[Typed]) -> Typed | None:
    """A manifest read from a slot (so typed by that slot's schema) as that schema's class, for the type
    checker; ManifestError should it be another (a store that does not validate what it reads)."""
    if manifest is None or isinstance(manifest, schema):
        return manifest
    raise ManifestError(f"a {schema.__name__} was expected, the store read a {type(manifest).__name__}")


def _refuse_constant(name: str) -> Any:
    """json.loads's hook for the non-standard literals NaN, Infinity and -Infinity, which JSON has no place for."""
    raise ValueError(f"{name} is not a JSON number")


def parse_manifest_json(text: bytes | str, slot: str, collection: str) -> ManifestSchema | None:
    """A manifest read from a file: bounded, parsed as strict JSON (no NaN / Infinity), then validated like
    any other."""
    if len(text) > limits.MAX_MANIFEST_BYTES:
        raise ManifestError(f"the {slot} manifest of {collection!r} is {len(text):,} bytes, over the "
                            f"{limits.MAX_MANIFEST_BYTES:,}-byte limit; "
                            f"clear it with `{fix_command(slot, collection)}`")
    try:
        raw = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        reason = str(exc).splitlines()[0][:120] if isinstance(exc, ValueError) else "nested too deeply"
        raise ManifestError(f"the {slot} manifest of {collection!r} is not valid JSON ({reason}); "
                            f"clear it with `{fix_command(slot, collection)}`") from None
    return validate_manifest(raw, slot, collection)


def validate_header(header: Any, kind: str) -> dict[str, Any]:
    """An artifact's JSON header checked against its kind's schema; ArtifactError when it does not fit."""
    if not isinstance(header, dict) or header.get("format") != kind:
        found = header.get("format") if isinstance(header, dict) else None
        raise ArtifactError(f"artifact holds {str(found)[:64]!r}, expected {kind!r}")
    try:
        HEADER_SCHEMAS.get(kind, ArtifactHeaderSchema).model_validate(header)
    except ValidationError as exc:
        raise ArtifactError(f"artifact header is invalid ({one_line(exc)})") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise ArtifactError(f"artifact header is invalid ({type(exc).__name__})") from None
    return header
