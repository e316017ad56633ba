"""Fuzzing the parsers that read untrusted bytes: every outcome is a model or a typed error."""
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amips_plugin.arrays import load_vectors
from amips_plugin.core.errors import ArtifactError, InputError
from amips_plugin.models import ModelConfig, build_model
from amips_plugin.compression.artifact import FORMAT_VERSION, MAGIC, unpack
from amips_plugin.model_artifact import decode_model, encode_model

torch.manual_seed(0)
VALID = encode_model(build_model(ModelConfig(kind="smoothmax", dim=6, width=3, points=5)), {"k": "v"}, dtype="int8")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_refused_cleanly(blob):
    with pytest.raises(ArtifactError):
        decode_model(blob)


@FUZZ
@given(st.binary(max_size=64))
def test_random_bodies_behind_a_valid_prefix_are_refused(tail):
    with pytest.raises(ArtifactError):
        decode_model(MAGIC + FORMAT_VERSION.to_bytes(4, "little") + tail)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8,
                unique_by=lambda flip: flip[0]))
def test_mutated_valid_files_are_refused(flips):
    mutated = bytearray(VALID)
    for position, mask in flips:
        mutated[position] ^= mask
    with pytest.raises(ArtifactError):
        decode_model(bytes(mutated))


@FUZZ
@given(st.integers(0, len(VALID) - 1))
def test_every_truncation_is_refused(cut):
    with pytest.raises(ArtifactError):
        decode_model(VALID[:cut])


def test_a_model_file_is_not_accepted_as_another_kind():
    with pytest.raises(ArtifactError, match="expected 'amips-pq'"):
        unpack(VALID, "amips-pq")


@FUZZ
@given(st.binary(max_size=256))
def test_the_array_loader_refuses_junk_with_input_errors(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "junk.npy"
    path.write_bytes(blob)
    with pytest.raises(InputError):
        load_vectors(path)


@FUZZ
@given(st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.bool_, np.complex64]),
       st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_the_array_loader_accepts_exactly_finite_2d_float_arrays(tmp_path_factory, dtype, shape):
    buffer = io.BytesIO()
    np.save(buffer, np.ones(shape, dtype=dtype))
    path = tmp_path_factory.mktemp("fuzz") / "a.npy"
    path.write_bytes(buffer.getvalue())
    valid = np.dtype(dtype).kind == "f" and len(shape) == 2 and 0 not in shape
    if valid:
        assert load_vectors(path).shape == tuple(shape)
    else:
        with pytest.raises(InputError):
            load_vectors(path)
