"""Test configuration: loud broadcasting errors, CPU only, shared helpers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6):
    """Every leaf of two pytrees equal up to tolerance."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture
def blobs():
    """600 points in 4 well separated 2-D blobs (float32)."""
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = np.concatenate([m + rng.normal(size=(150, 2)) for m in means]).astype(np.float32)
    return x[rng.permutation(len(x))]
