"""Tests for jaxkmeans.metrics: pairwise distances against numpy, accuracy, clamping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import metrics


def np_sq_euclidean(x, c):
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def np_cosine(x, c):
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    xn = np.linalg.norm(x, axis=1, keepdims=True)
    cn = np.linalg.norm(c, axis=1, keepdims=True)
    xu = np.where(xn > 0, x / np.where(xn > 0, xn, 1), 0)
    cu = np.where(cn > 0, c / np.where(cn > 0, cn, 1), 0)
    return 1.0 - xu @ cu.T


def test_constants():
    assert jaxkmeans.SQUARED_EUCLIDEAN_DISTANCE == "squared_euclidean"
    assert jaxkmeans.COSINE_DISTANCE == "cosine"


def test_hand_computed():
    d = jaxkmeans.pairwise_distances(jnp.array([[0.0, 0.0], [1.0, 1.0]]), jnp.array([[3.0, 4.0]]))
    np.testing.assert_allclose(np.asarray(d), [[25.0], [13.0]])
    d = jaxkmeans.pairwise_distances(
        jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]),
        jnp.array([[5.0, 0.0], [0.0, 1.0]]),
        metric="cosine",
    )
    np.testing.assert_allclose(np.asarray(d), [[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 5, 33)])
def test_numpy_parity(metric, shape):
    n, k, d = shape
    rng = np.random.default_rng(n * 100 + k)
    x = rng.normal(size=(n, d)).astype(np.float32)
    c = rng.normal(size=(k, d)).astype(np.float32)
    got = np.asarray(jaxkmeans.pairwise_distances(x, c, metric))
    ref = np_sq_euclidean(x, c) if metric == "squared_euclidean" else np_cosine(x, c)
    assert got.shape == (n, k)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert (got >= 0).all()
    if metric == "cosine":
        assert (got <= 2).all()


def test_default_metric_is_squared_euclidean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    c = rng.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(jaxkmeans.pairwise_distances(x, c)),
        np.asarray(jaxkmeans.pairwise_distances(x, c, "squared_euclidean")),
    )


def test_zero_rows_cosine_never_nan():
    x = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    c = np.array([[0.0, 0.0], [0.0, 3.0]], np.float32)
    d = np.asarray(jaxkmeans.pairwise_distances(x, c, "cosine"))
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, [[1.0, 1.0], [1.0, 1.0]], atol=1e-6)


def test_identical_points_near_zero_and_never_negative():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(50, 8)) * 1e3).astype(np.float32)
    d = np.asarray(jaxkmeans.pairwise_distances(x, x))
    assert (d >= 0).all()
    # float32 rounding relative to the largest distance, never below zero.
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-6 * d.max())
    dc = np.asarray(jaxkmeans.pairwise_distances(x, x, "cosine"))
    assert (dc >= 0).all() and (dc <= 2).all()


@pytest.mark.parametrize("outlier_center", [False, True])
def test_far_from_origin_accuracy(outlier_center):
    """Points near 1e5 with spread 1 in float32: distances match float64 numpy on the
    same float32 inputs, and are never negative (the raw expansion is off by ~1e3)."""
    rng = np.random.default_rng(3)
    x = (1e5 + rng.normal(size=(300, 4))).astype(np.float32)
    c = (1e5 + rng.normal(size=(6, 4))).astype(np.float32)
    if outlier_center:  # one center far from all the data (e.g. a bad user init)
        c = np.concatenate([c, np.zeros((1, 4), np.float32)])
    got = np.asarray(jaxkmeans.pairwise_distances(x, c))
    ref = np_sq_euclidean(x, c)
    assert (got >= 0).all()
    np.testing.assert_allclose(got[:, :6], ref[:, :6], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_float64_inputs_under_x64():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = rng.normal(size=(20, 3))
        c = rng.normal(size=(4, 3))
        got = jaxkmeans.pairwise_distances(x, c)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), np_sq_euclidean(x, c), rtol=1e-12, atol=1e-12)


def test_integer_input_is_promoted_to_float():
    d = jaxkmeans.pairwise_distances(np.array([[0, 0], [2, 0]]), np.array([[0, 1]]))
    assert jnp.issubdtype(d.dtype, jnp.floating)
    np.testing.assert_allclose(np.asarray(d), [[1.0], [5.0]])


def test_jit_matches_eager():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    c = rng.normal(size=(5, 4)).astype(np.float32)
    for metric in ("squared_euclidean", "cosine"):
        f = jax.jit(jaxkmeans.pairwise_distances, static_argnames=("metric",))
        np.testing.assert_allclose(
            np.asarray(f(x, c, metric=metric)),
            np.asarray(jaxkmeans.pairwise_distances(x, c, metric)),
            rtol=1e-6,
            atol=1e-6,
        )


def test_normalize_rows():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(
        np.asarray(metrics.normalize_rows(x)), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]], atol=1e-7
    )
