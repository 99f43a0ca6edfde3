"""Tests for jaxkmeans.assignment: nearest center, inertia, chunking, ties, accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans.kernels import xla


def np_dists(x, c, metric):
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    if metric == "cosine":
        xu = x / np.linalg.norm(x, axis=1, keepdims=True)
        cu = c / np.linalg.norm(c, axis=1, keepdims=True)
        return 1.0 - xu @ cu.T
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def data(n=101, k=6, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, d)).astype(np.float32),
        rng.normal(size=(k, d)).astype(np.float32),
    )


def test_hand_computed():
    labels, d = jaxkmeans.assign(jnp.array([[0.0], [9.0], [4.0]]), jnp.array([[1.0], [10.0]]))
    assert labels.dtype == jnp.int32
    assert labels.tolist() == [0, 1, 0]
    np.testing.assert_allclose(np.asarray(d), [1.0, 1.0, 9.0])


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_assign_numpy_parity(metric, chunk_size):
    x, c = data()
    labels, dist = jaxkmeans.assign(x, c, metric, chunk_size=chunk_size)
    ref = np_dists(x, c, metric)
    assert labels.shape == (101,) and dist.shape == (101,)
    np.testing.assert_array_equal(np.asarray(labels), ref.argmin(1))
    np.testing.assert_allclose(np.asarray(dist), ref.min(1), rtol=1e-5, atol=1e-5)
    assert (np.asarray(dist) >= 0).all()


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_inertia_numpy_parity_with_weights(metric):
    x, c = data()
    w = np.random.default_rng(1).uniform(0, 3, size=101).astype(np.float32)
    w[::5] = 0.0
    ref = np_dists(x, c, metric).min(1)
    np.testing.assert_allclose(float(jaxkmeans.inertia(x, c, metric)), ref.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        float(jaxkmeans.inertia(x, c, metric, sample_weight=w)), (w * ref).sum(), rtol=1e-5
    )
    # Chunked (7 does not divide 101: the last chunk overlaps and must not double count).
    np.testing.assert_allclose(
        float(jaxkmeans.inertia(x, c, metric, sample_weight=w, chunk_size=7)),
        (w * ref).sum(),
        rtol=1e-5,
    )
    # A scalar weight broadcasts.
    np.testing.assert_allclose(
        float(jaxkmeans.inertia(x, c, metric, sample_weight=2.0)), 2 * ref.sum(), rtol=1e-5
    )


def test_chunked_equals_unchunked():
    x, c = data(n=101)
    l0, d0 = jaxkmeans.assign(x, c, chunk_size=None)
    l7, d7 = jaxkmeans.assign(x, c, chunk_size=7)
    np.testing.assert_array_equal(np.asarray(l0), np.asarray(l7))
    np.testing.assert_allclose(np.asarray(d0), np.asarray(d7), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        float(jaxkmeans.inertia(x, c, chunk_size=7)),
        float(jaxkmeans.inertia(x, c)),
        rtol=1e-6,
    )


def test_ties_go_to_lowest_index():
    # Duplicate centers: always the first copy.
    x, c = data(n=101, k=6)
    c_dup = np.concatenate([c[:2], c[:2], c[2:]])  # (8, d); centers 2, 3 copy 0, 1
    labels, _ = jaxkmeans.assign(x, c_dup, chunk_size=7)
    assert not np.isin(np.asarray(labels), [2, 3]).any()
    # An exact tie between distinct centers (0 is equidistant from -1 and +1).
    xs = jnp.array([[-1.0], [0.0], [1.0]])
    assert jaxkmeans.assign(xs, jnp.array([[1.0], [-1.0]]))[0].tolist() == [1, 0, 0]
    assert jaxkmeans.assign(xs, jnp.array([[-1.0], [1.0]]))[0].tolist() == [0, 0, 1]
    # Cosine: a zero row is equidistant (1 - 0) from everything.
    xz = jnp.array([[0.0, 0.0], [0.0, 1.0]])
    labels, d = jaxkmeans.assign(xz, jnp.array([[1.0, 0.0], [0.0, 1.0]]), "cosine")
    assert labels.tolist() == [0, 1]
    np.testing.assert_allclose(np.asarray(d), [1.0, 0.0], atol=1e-6)


def test_far_from_origin():
    """Points near 1e5 with spread 1 (float32): labels and distances as in float64, also
    with one center far from all the data (at the origin)."""
    rng = np.random.default_rng(3)
    means = 1e5 + 6.0 * np.eye(4)  # 4 blobs 6 apart, all near 1e5
    x = np.concatenate([m + rng.normal(size=(50, 4)) * 0.5 for m in means]).astype(np.float32)
    c = np.concatenate([means, np.zeros((1, 4))]).astype(np.float32)
    ref = np_dists(x, c, "squared_euclidean")
    for chunk in (None, 7):
        labels, dist = jaxkmeans.assign(x, c, chunk_size=chunk)
        np.testing.assert_array_equal(np.asarray(labels), ref.argmin(1))
        dist = np.asarray(dist)
        assert (dist >= 0).all()
        np.testing.assert_allclose(dist, ref.min(1), rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(
            float(jaxkmeans.inertia(x, c, chunk_size=chunk)), ref.min(1).sum(), rtol=1e-4
        )


def test_jit_and_vmap():
    x, c = data()
    f = jax.jit(jaxkmeans.assign, static_argnames=("metric", "chunk_size"))
    l1, d1 = f(x, c, chunk_size=7)
    l0, d0 = jaxkmeans.assign(x, c, chunk_size=7)
    np.testing.assert_array_equal(np.asarray(l0), np.asarray(l1))
    np.testing.assert_allclose(np.asarray(d0), np.asarray(d1), rtol=1e-6, atol=1e-6)
    # vmap over several center sets.
    cs = np.stack([c, c[::-1], c + 1.0])
    lv, dv = jax.vmap(lambda cc: jaxkmeans.assign(x, cc, chunk_size=7))(cs)
    for i in range(3):
        li, di = jaxkmeans.assign(x, cs[i], chunk_size=7)
        np.testing.assert_array_equal(np.asarray(lv[i]), np.asarray(li))
        np.testing.assert_allclose(np.asarray(dv[i]), np.asarray(di), rtol=1e-6, atol=1e-6)
    inert = jax.jit(jaxkmeans.inertia, static_argnames=("metric", "chunk_size"))
    np.testing.assert_allclose(
        float(inert(x, c, chunk_size=7)), float(jaxkmeans.inertia(x, c)), rtol=1e-6
    )


def test_auto_chunk_size():
    assert jaxkmeans.auto_chunk_size(5, 3, 2) == 5  # never more than n
    big = jaxkmeans.auto_chunk_size(10**9, 100, 64, backend="cpu")
    assert big == jaxkmeans.auto_chunk_size(10**7, 100, 64, backend="cpu")  # independent of n
    assert 1 <= big < 10**7
    assert big * 100 <= xla.BLOCK_ELEMENTS["cpu"]
    # Wider types get fewer rows; accelerators get bigger blocks.
    assert jaxkmeans.auto_chunk_size(10**9, 100, 64, jnp.float64, "cpu") <= big
    assert jaxkmeans.auto_chunk_size(10**9, 100, 64, backend="gpu") >= big
    # Huge k still gives a usable chunk.
    assert jaxkmeans.auto_chunk_size(10**9, 10**7, 8, backend="cpu") >= 1
