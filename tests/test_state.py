"""Tests for jaxkmeans.state: KMeansState / FitResult / StepStats are pytrees."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_all_close

import jaxkmeans
from jaxkmeans import KMeansState


def make_state():
    return KMeansState.create(jnp.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))


def test_create_defaults():
    s = make_state()
    assert s.centers.shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(s.counts), np.zeros(3))
    assert s.counts.dtype == s.centers.dtype
    assert int(s.step) == 0 and s.step.dtype == jnp.int32 and s.step.shape == ()
    assert np.isnan(float(s.loss)) and s.loss.shape == ()
    np.testing.assert_array_equal(np.asarray(s.working), np.asarray(s.centers))
    np.testing.assert_array_equal(np.asarray(s.key), np.asarray(jax.random.PRNGKey(0)))


def test_create_accepts_typed_and_raw_keys():
    raw = KMeansState.create(np.ones((2, 2)), key=jax.random.PRNGKey(7))
    typed = KMeansState.create(np.ones((2, 2)), key=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(raw.key), np.asarray(typed.key))
    assert raw.key.dtype == jnp.uint32


def test_frozen_and_replace():
    s = make_state()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.step = 3  # type: ignore[misc]
    t = s.replace(step=jnp.int32(4))
    assert int(t.step) == 4 and int(s.step) == 0
    t2 = dataclasses.replace(s, step=jnp.int32(5))
    assert int(t2.step) == 5


def test_is_a_pytree():
    s = make_state()
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert len(leaves) == len(dataclasses.fields(KMeansState))
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(back, KMeansState)
    assert_trees_all_close(back, s)
    doubled = jax.tree_util.tree_map(lambda a: a * 2, s)
    assert isinstance(doubled, KMeansState)
    np.testing.assert_array_equal(np.asarray(doubled.centers), 2 * np.asarray(s.centers))
    assert int(doubled.step) == 0


def test_jit_through_state():
    s = make_state()

    @jax.jit
    def bump(state):
        return state.replace(step=state.step + 1, centers=state.centers + 1.0)

    t = bump(s)
    assert isinstance(t, KMeansState)
    assert int(t.step) == 1
    np.testing.assert_array_equal(np.asarray(t.centers), np.asarray(s.centers) + 1)
    # A state goes through minibatch_step under jit and through vmap.
    batch = jnp.array([[0.0, 0.0], [4.0, 4.0]])
    step = jax.jit(lambda st, b: jaxkmeans.minibatch_step(st, b))
    t2, loss = step(s, batch)
    assert isinstance(t2, KMeansState) and int(t2.step) == 1 and np.isfinite(float(loss))
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), s)
    out = jax.vmap(lambda st: st.replace(step=st.step + 1))(stacked)
    np.testing.assert_array_equal(np.asarray(out.step), [1, 1])


def test_fit_result_and_step_stats_are_pytrees(blobs):
    r = jaxkmeans.fit(jax.random.PRNGKey(0), blobs, 4)
    assert isinstance(r, jaxkmeans.FitResult)
    assert r._fields == ("centers", "labels", "loss", "n_iter", "converged")
    assert len(jax.tree_util.tree_leaves(r)) == 5
    shapes = jax.tree_util.tree_map(jnp.shape, r)
    assert shapes == jaxkmeans.FitResult((4, 2), (600,), (), (), ())
    c0 = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [1e3, -1e3], [10.0, 10.0]], np.float32)
    _, st = jaxkmeans.lloyd_step(blobs, c0)
    assert isinstance(st, jaxkmeans.StepStats)
    assert st._fields == ("loss", "counts", "shift")
    assert jax.tree_util.tree_map(jnp.shape, st) == jaxkmeans.StepStats((), (5,), ())
