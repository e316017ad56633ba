"""Anisotropic PQ: exact asymmetric scoring, a loss that never rises, and the weight's definition."""
import numpy as np
import pytest

from compression.anisotropic_pq import (ProductCodes, anisotropic_loss, anisotropic_pq, anisotropic_weight,
                                        assign_anisotropic, train_codebooks)


@pytest.fixture(scope="module")
def keys():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(3000, 32)) * rng.lognormal(0, 0.3, size=(3000, 1))).astype(np.float32)


def test_weight_follows_the_large_d_formula_and_is_clamped():
    eta = anisotropic_weight(np.array([1.0, 0.5, 0.1, 10.0]), threshold=0.2, dim=101)
    assert eta[0] == pytest.approx(100 * 0.04 / 0.96, rel=1e-5)
    assert eta[1] == pytest.approx(100 * 0.16 / 0.84, rel=1e-5)
    assert eta[2] == pytest.approx(1e6)  # t ≥ 1: clamped, not infinite
    assert eta[3] == 1.0  # tiny t: at least isotropic


def test_asymmetric_scores_equal_inner_products_with_the_decoded_keys(keys):
    scored, _ = anisotropic_pq(keys, 4)
    queries = np.random.default_rng(1).normal(size=(7, 32)).astype(np.float32)
    np.testing.assert_allclose(scored.scores(queries), queries @ scored.decode().T, rtol=1e-4, atol=1e-4)
    top = scored.search(queries, 5)
    assert (np.diff(np.take_along_axis(scored.scores(queries), top, axis=1), axis=1) <= 1e-6).all()


def test_coordinate_descent_never_increases_any_keys_loss(keys):
    codebooks, plain = train_codebooks(keys, 4)
    eta = anisotropic_weight(np.linalg.norm(keys, axis=1), 0.5, 32)
    before = anisotropic_loss(keys, ProductCodes(codebooks, plain).decode(), eta)
    after = anisotropic_loss(keys, ProductCodes(codebooks, assign_anisotropic(keys, codebooks, plain, eta)).decode(), eta)
    assert (after <= before + 1e-5).all()
    assert after.mean() < before.mean()  # and it does improve the score-aware loss
    # the parallel error shrinks at the cost of the orthogonal one
    scored = ProductCodes(codebooks, assign_anisotropic(keys, codebooks, plain, eta)).decode()
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    parallel = lambda decoded: np.mean(((keys - decoded) * unit).sum(axis=1) ** 2)  # noqa: E731
    assert parallel(scored) < parallel(ProductCodes(codebooks, plain).decode())


def test_isotropic_weight_reproduces_plain_pq(keys):
    codebooks, plain = train_codebooks(keys, 4)
    same = assign_anisotropic(keys, codebooks, plain, np.ones(len(keys), np.float32))
    np.testing.assert_array_equal(same, plain)


def test_refuses_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        train_codebooks(np.zeros((300, 10), np.float32), 4)
    with pytest.raises(ValueError, match="at least 256"):
        train_codebooks(np.zeros((100, 8), np.float32), 4)
