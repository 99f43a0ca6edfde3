"""Tests for jaxkmeans.fitting: lloyd_step, fit and minibatch_step against numpy and
scikit-learn, jit/vmap/chunking invariance, restarts, tolerance, spherical k-means and
property tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_all_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import make_blobs

import jaxkmeans
from jaxkmeans import KMeansState

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def overlapping():
    """500 points in 6 overlapping 3-D blobs: Lloyd takes many iterations here."""
    x, _ = make_blobs(n_samples=500, centers=6, n_features=3, cluster_std=2.5, random_state=0)
    return x.astype(np.float32)


def np_lloyd(x, c, w=None, metric="squared_euclidean"):
    """One Lloyd step in float64 numpy (no empty clusters expected)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    if metric == "cosine":
        xu = x / np.linalg.norm(x, axis=1, keepdims=True)
        cu = c / np.linalg.norm(c, axis=1, keepdims=True)
        d = 1.0 - xu @ cu.T
        labels = d.argmin(1)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, w[:, None] * xu)
        new = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    else:
        d = ((x[:, None] - c[None]) ** 2).sum(-1)
        labels = d.argmin(1)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, w[:, None] * x)
        counts = np.bincount(labels, weights=w, minlength=len(c))
        new = sums / counts[:, None]
    counts = np.bincount(labels, weights=w, minlength=len(c))
    return new, (w * d.min(1)).sum(), counts


# ------------------------------------------------------------------ lloyd_step


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
def test_lloyd_step_numpy_parity(overlapping, metric, weighted):
    x = overlapping
    w = np.random.default_rng(0).uniform(0.1, 3, size=len(x)).astype(np.float32)
    w = w if weighted else None
    c0 = x[:6]
    new, stats = jaxkmeans.lloyd_step(x, c0, metric=metric, sample_weight=w)
    ref, loss, counts = np_lloyd(x, c0, w, metric)
    np.testing.assert_allclose(np.asarray(new), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(stats.loss), loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.counts), counts, rtol=1e-5)
    # Cosine centers are directions: the shift is measured from the unit old centers.
    old = c0 / np.linalg.norm(c0, axis=1, keepdims=True) if metric == "cosine" else c0
    np.testing.assert_allclose(
        float(stats.shift), ((np.asarray(new, np.float64) - old) ** 2).sum(), rtol=1e-4
    )
    if metric == "cosine":  # spherical k-means: centers are unit vectors
        np.testing.assert_allclose(np.linalg.norm(np.asarray(new), axis=1), 1.0, rtol=1e-6)


# ------------------------------------------------------------------ scikit-learn parity


def test_lloyd_trajectory_matches_sklearn(overlapping):
    """m Lloyd iterations from the same start: scikit-learn (float64) vs m lloyd_step
    calls and fit(init=c0, max_iter=m, tol=0), to float32 tolerance."""
    x = overlapping
    c0 = x[:6].copy()
    m = 8
    sk = KMeans(
        n_clusters=6, init=c0.astype(np.float64), n_init=1, max_iter=m, tol=0, algorithm="lloyd"
    ).fit(x.astype(np.float64))
    assert sk.n_iter_ == m  # not converged yet: the comparison covers m real updates
    c = c0
    for _ in range(m):
        c, _ = jaxkmeans.lloyd_step(x, c)
    np.testing.assert_allclose(np.asarray(c), sk.cluster_centers_, rtol=1e-4, atol=1e-4)
    r = jaxkmeans.fit(KEY, x, 6, init=c0, max_iter=m, tol=0.0)
    np.testing.assert_allclose(np.asarray(r.centers), sk.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(r.labels), sk.labels_)
    np.testing.assert_allclose(float(r.loss), sk.inertia_, rtol=1e-5)
    assert int(r.n_iter) == m and not bool(r.converged)
    # Run to convergence: same fixed point as scikit-learn's strict convergence.
    sk = KMeans(n_clusters=6, init=c0.astype(np.float64), n_init=1, max_iter=300, tol=0).fit(
        x.astype(np.float64)
    )
    r = jaxkmeans.fit(KEY, x, 6, init=c0, max_iter=300, tol=0.0)
    np.testing.assert_allclose(np.asarray(r.centers), sk.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(r.labels), sk.labels_)
    assert bool(r.converged)


def test_minibatch_step_matches_sklearn_partial_fit_float64(overlapping):
    """Same init and batches, reassignment_ratio=0: equal to 1e-10 in float64, with
    sample weights (scikit-learn's partial_fit uses them as given; counts start at 0)."""
    rng = np.random.default_rng(2)
    b = 50
    with jax.enable_x64(True):
        x = overlapping.astype(np.float64)
        w = rng.uniform(0.5, 2.0, size=len(x))
        c0 = x[:6].copy()
        for weighted in (False, True):
            mbk = MiniBatchKMeans(
                n_clusters=6, init=c0, n_init=1, batch_size=b, reassignment_ratio=0
            )
            state = KMeansState.create(c0)
            assert state.centers.dtype == jnp.float64
            for i in range(len(x) // b):
                xb = x[i * b : (i + 1) * b]
                wb = w[i * b : (i + 1) * b] if weighted else None
                d = ((xb[:, None] - np.asarray(state.centers)[None]) ** 2).sum(-1).min(1)
                expect_loss = (d * (1 if wb is None else wb)).sum()
                mbk.partial_fit(xb, sample_weight=wb)
                state, loss = jaxkmeans.minibatch_step(state, xb, sample_weight=wb)
                np.testing.assert_allclose(
                    np.asarray(state.centers), mbk.cluster_centers_, rtol=1e-10, atol=1e-10
                )
                np.testing.assert_allclose(np.asarray(state.counts), mbk._counts, rtol=1e-10)
                np.testing.assert_allclose(float(loss), expect_loss, rtol=1e-10)
            assert int(state.step) == len(x) // b
    assert jnp.zeros(()).dtype == jnp.float32  # x64 did not leak


# ------------------------------------------------------------------ fit


def test_fit_result_is_consistent(blobs):
    r = jaxkmeans.fit(KEY, blobs, 4)
    assert r.centers.dtype == jnp.float32 and r.loss.shape == ()
    assert r.labels.dtype == jnp.int32 and r.n_iter.dtype == jnp.int32
    assert r.converged.dtype == jnp.bool_
    labels, dist = jaxkmeans.assign(blobs, r.centers)
    np.testing.assert_array_equal(np.asarray(r.labels), np.asarray(labels))
    np.testing.assert_allclose(float(r.loss), float(dist.sum()), rtol=1e-5)
    assert bool(r.converged) and 0 < int(r.n_iter) < 300
    # The four true blobs are found.
    found = np.sort(np.round(np.asarray(r.centers) / 10), axis=0)
    np.testing.assert_array_equal(found, [[0, 0], [0, 0], [1, 1], [1, 1]])


def test_jit_equals_eager(blobs):
    fit_jit = jax.jit(
        jaxkmeans.fit,
        static_argnames=("num_clusters", "max_iter", "n_init", "metric", "chunk_size", "init"),
    )
    assert_trees_all_close(fit_jit(KEY, blobs, 4), jaxkmeans.fit(KEY, blobs, 4), 1e-5, 1e-5)
    # An array init is traced.
    c0 = blobs[:4]
    f = jax.jit(lambda c: jaxkmeans.fit(KEY, blobs, 4, init=c))
    assert_trees_all_close(f(c0), jaxkmeans.fit(KEY, blobs, 4, init=c0), 1e-5, 1e-5)


def test_vmap_over_keys(blobs):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    out = jax.vmap(lambda k: jaxkmeans.fit(k, blobs, 4))(keys)
    assert out.centers.shape == (3, 4, 2) and out.labels.shape == (3, 600)
    for i in range(3):
        one = jaxkmeans.fit(keys[i], blobs, 4)
        got = jax.tree_util.tree_map(lambda a, i=i: a[i], out)
        # Same initialization and fixed point; the tolerance rule may fire one iteration
        # apart (batched float reductions round differently).
        np.testing.assert_array_equal(np.asarray(got.labels), np.asarray(one.labels))
        np.testing.assert_allclose(np.asarray(got.centers), np.asarray(one.centers), 1e-5, 1e-4)
        np.testing.assert_allclose(float(got.loss), float(one.loss), rtol=1e-5)
        assert abs(int(got.n_iter) - int(one.n_iter)) <= 1


def test_chunked_equals_unchunked(overlapping):
    c0 = overlapping[:6]
    a = jaxkmeans.fit(KEY, overlapping, 6, init=c0, max_iter=20, chunk_size=7)  # 500 % 7 != 0
    b = jaxkmeans.fit(KEY, overlapping, 6, init=c0, max_iter=20)
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    assert int(a.n_iter) == int(b.n_iter)
    np.testing.assert_allclose(np.asarray(a.centers), np.asarray(b.centers), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(a.loss), float(b.loss), rtol=1e-5)


def test_n_init_keeps_lowest_loss(overlapping):
    # Overlapping blobs, random inits: the restarts land in different local minima.
    x = overlapping
    key = jax.random.PRNGKey(5)
    best = jaxkmeans.fit(key, x, 6, init="random", n_init=4)
    singles = [jaxkmeans.fit(k, x, 6, init="random") for k in jax.random.split(key, 4)]
    losses = [float(s.loss) for s in singles]
    assert len(set(np.round(losses, 4))) > 1  # the restarts really differ
    np.testing.assert_allclose(float(best.loss), min(losses), rtol=1e-6)
    i = int(np.argmin(losses))
    assert_trees_all_close(best, singles[i], 1e-5, 1e-5)
    # With an explicit init array, n_init is ignored (one run).
    c0 = x[:6]
    assert_trees_all_close(
        jaxkmeans.fit(key, x, 6, init=c0, n_init=3, max_iter=5),
        jaxkmeans.fit(key, x, 6, init=c0, max_iter=5),
    )


def relative_changes(x, c0, steps):
    losses = []
    c = c0
    for _ in range(steps):
        c, st = jaxkmeans.lloyd_step(x, c)
        losses.append(float(st.loss))
    losses = np.array(losses, np.float64)
    return np.abs(losses[:-1] - losses[1:]) / (1 + np.abs(losses[:-1]))


def test_tol_relative_change_rule(overlapping):
    """Stops at the first iteration i >= 1 whose pre-update loss L_i satisfies
    |L_{i-1} - L_i| / (1 + |L_{i-1}|) < tol; that iteration's update is applied."""
    c0 = overlapping[:6]
    rel = relative_changes(overlapping, c0, 12)  # rel[i - 1] belongs to iteration i
    assert (rel > 0).all()
    # A tol well between two consecutive changes, so rounding cannot flip the decision.
    for i in range(1, len(rel)):
        lo, hi = rel[i], rel[:i].min()
        if hi > 3 * lo:
            break
    else:
        pytest.fail("no well separated change")
    tol = float(np.sqrt(lo * hi))
    r = jaxkmeans.fit(KEY, overlapping, 6, init=c0, tol=tol)
    assert bool(r.converged)
    assert int(r.n_iter) == i + 2  # iterations 0..i+1, the last one stops
    # tol=0 never stops on the rule: only max_iter (or an exact fixed point) does.
    r = jaxkmeans.fit(KEY, overlapping, 6, init=c0, tol=0.0, max_iter=3)
    assert int(r.n_iter) == 3 and not bool(r.converged)
    # A huge tol stops after the second iteration (the first has no previous loss).
    r = jaxkmeans.fit(KEY, overlapping, 6, init=c0, tol=1e9)
    assert int(r.n_iter) == 2 and bool(r.converged)


def test_max_iter(overlapping):
    c0 = overlapping[:6]
    r0 = jaxkmeans.fit(KEY, overlapping, 6, init=c0, max_iter=0)
    np.testing.assert_allclose(np.asarray(r0.centers), c0, rtol=1e-6, atol=1e-5)
    assert int(r0.n_iter) == 0 and not bool(r0.converged)
    np.testing.assert_allclose(float(r0.loss), float(jaxkmeans.inertia(overlapping, c0)), rtol=1e-5)
    r1 = jaxkmeans.fit(KEY, overlapping, 6, init=c0, max_iter=1)
    new, _ = jaxkmeans.lloyd_step(overlapping, c0)
    np.testing.assert_allclose(np.asarray(r1.centers), np.asarray(new), rtol=1e-5, atol=1e-5)
    assert int(r1.n_iter) == 1


def test_fit_weighted_fixed_point(overlapping):
    """A weighted fit ends at a fixed point: every center is the weighted mean of its
    rows, the loss is the weighted inertia, and zero-weight rows change nothing."""
    x = overlapping
    w = np.random.default_rng(6).uniform(0.5, 2.0, size=len(x)).astype(np.float32)
    w[::3] = 0.0
    r = jaxkmeans.fit(KEY, x, 6, init=x[1:7], sample_weight=w, tol=0.0)
    assert bool(r.converged)
    labels = np.asarray(r.labels)
    c = np.asarray(r.centers)
    for j in range(6):
        m = labels == j
        mean = (w[m, None] * x[m]).sum(0) / w[m].sum()
        np.testing.assert_allclose(c[j], mean, rtol=1e-4, atol=1e-4)
    d = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(float(r.loss), (w * d).sum(), rtol=1e-5)


def test_fit_far_from_origin(blobs):
    """The same clustering 1e5 away from the origin, in float32."""
    c0 = blobs[:4]
    near = jaxkmeans.fit(KEY, blobs, 4, init=c0)
    shifted = (blobs.astype(np.float64) + 1e5).astype(np.float32)
    far = jaxkmeans.fit(KEY, shifted, 4, init=shifted[:4])
    np.testing.assert_array_equal(np.asarray(far.labels), np.asarray(near.labels))
    np.testing.assert_allclose(
        np.asarray(far.centers, np.float64) - 1e5, np.asarray(near.centers), atol=0.02
    )
    np.testing.assert_allclose(float(far.loss), float(near.loss), rtol=1e-2)
    assert float(far.loss) > 0


def test_fit_cosine_is_spherical():
    rng = np.random.default_rng(4)
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    x = np.concatenate([d + 0.1 * rng.normal(size=(40, 3)) for d in dirs])
    scale = rng.uniform(0.1, 100, size=(len(x), 1))
    x = x.astype(np.float32)
    r = jaxkmeans.fit(KEY, x, 3, metric="cosine", init=x[[0, 1, 2]])  # a poor start
    c = np.asarray(r.centers)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sort(np.abs(c).max(1)), [1, 1, 1], atol=0.05)
    # Rescaling rows changes nothing (only directions matter).
    r2 = jaxkmeans.fit(KEY, (x * scale).astype(np.float32), 3, metric="cosine", init=c)
    np.testing.assert_array_equal(np.asarray(r2.labels), np.asarray(r.labels))
    np.testing.assert_allclose(np.asarray(r2.centers), c, atol=1e-5)
    np.testing.assert_allclose(float(r2.loss), float(r.loss), rtol=1e-4, atol=1e-5)
    # Loss is the sum of 1 - cos.
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(float(r.loss), (1 - (xu @ c.T).max(1)).sum(), rtol=1e-4)


# ------------------------------------------------------------------ minibatch_step


def test_minibatch_step_first_batch_and_counts():
    c0 = jnp.array([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0]])
    s = KMeansState.create(c0)
    batch = jnp.array([[1.0, 1.0], [3.0, 1.0], [9.0, 9.0]])
    s, loss = jaxkmeans.minibatch_step(s, batch)
    # Counts start at 0: touched centers jump to the batch means; center 2 is untouched.
    np.testing.assert_allclose(np.asarray(s.centers), [[2.0, 1.0], [9.0, 9.0], [50.0, 50.0]])
    np.testing.assert_array_equal(np.asarray(s.counts), [2.0, 1.0, 0.0])
    np.testing.assert_allclose(float(loss), 2 + 10 + 2)
    assert int(s.step) == 1 and float(s.loss) == float(loss)
    s, _ = jaxkmeans.minibatch_step(s, jnp.array([[4.0, 1.0]]))
    np.testing.assert_allclose(np.asarray(s.centers)[0], [(2 * 2 + 4) / 3, 1.0])
    np.testing.assert_array_equal(np.asarray(s.counts), [3.0, 1.0, 0.0])


def test_minibatch_smoothed_loss():
    s = KMeansState.create(jnp.array([[0.0], [10.0]]))
    s, l1 = jaxkmeans.minibatch_step(s, jnp.array([[1.0], [9.0]]), smoothing=0.25)
    assert np.isnan(float(s.prev_loss))
    np.testing.assert_allclose(float(s.smoothed_loss), float(l1) / 2)  # first: per point
    s, l2 = jaxkmeans.minibatch_step(s, jnp.array([[3.0], [9.0]]), smoothing=0.25)
    expect = 0.75 * float(l1) / 2 + 0.25 * float(l2) / 2
    np.testing.assert_allclose(float(s.smoothed_loss), expect, rtol=1e-6)
    np.testing.assert_allclose(float(s.prev_loss), float(l1) / 2)


def test_steps_per_iteration_sync_semantics(overlapping):
    """s > 1: updates go to the working copy; every s-th step it becomes the centers and
    the counts restart. s = batches per pass gives one exact Lloyd iteration."""
    x = overlapping[:300]
    c0 = x[:6]
    batches = np.split(x, 3)
    s = KMeansState.create(c0)
    for i, b in enumerate(batches):
        s, _ = jaxkmeans.minibatch_step(s, b, steps_per_iteration=3)
        if i < 2:
            np.testing.assert_array_equal(np.asarray(s.centers), c0)  # not published yet
            assert float(s.counts.sum()) == 100.0 * (i + 1)
            assert not np.allclose(np.asarray(s.working), c0)
    np.testing.assert_array_equal(np.asarray(s.centers), np.asarray(s.working))
    np.testing.assert_array_equal(np.asarray(s.counts), np.zeros(6))
    assert int(s.step) == 3
    lloyd, stats = jaxkmeans.lloyd_step(x, c0)
    assert (np.asarray(stats.counts) > 0).all()
    np.testing.assert_allclose(np.asarray(s.centers), np.asarray(lloyd), rtol=1e-5, atol=1e-5)
    # The next iteration assigns with the published centers.
    s2, loss = jaxkmeans.minibatch_step(s, batches[0], steps_per_iteration=3)
    np.testing.assert_allclose(
        float(loss), float(jaxkmeans.inertia(batches[0], s.centers)), rtol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(s2.centers), np.asarray(s.centers))


def test_minibatch_cosine_renormalizes():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    s = KMeansState.create(x[:4] * 7.0)
    for b in np.split(x, 3):
        s, loss = jaxkmeans.minibatch_step(s, b, metric="cosine")
        assert np.isfinite(float(loss))
    c = np.asarray(s.centers)
    touched = np.asarray(s.counts) > 0
    np.testing.assert_allclose(np.linalg.norm(c[touched], axis=1), 1.0, rtol=1e-5)


def test_minibatch_segment_sum_equals_onehot(overlapping):
    s = KMeansState.create(overlapping[:6])
    a, la = jaxkmeans.minibatch_step(s, overlapping[:100], update_method="segment_sum")
    b, lb = jaxkmeans.minibatch_step(s, overlapping[:100], update_method="onehot")
    assert_trees_all_close((a, la), (b, lb), 1e-5, 1e-4)


def test_minibatch_jit_equals_eager(overlapping):
    s = KMeansState.create(overlapping[:6])
    step = jax.jit(functools.partial(jaxkmeans.minibatch_step, steps_per_iteration=2))
    a = b = s
    for i in range(3):
        xb = overlapping[i * 50 : (i + 1) * 50]
        a, la = step(a, xb)
        b, lb = jaxkmeans.minibatch_step(b, xb, steps_per_iteration=2)
        assert_trees_all_close((a, la), (b, lb), 1e-5, 1e-5)


# ------------------------------------------------------------------ properties

_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_values = st.one_of(
    st.integers(-3, 3).map(float),  # heavy duplication
    st.floats(-100, 100, width=32),
)


@_settings
@given(
    x=hnp.arrays(np.float32, (24, 2), elements=_values),
    c=hnp.arrays(np.float32, (3, 2), elements=_values),
    w=hnp.arrays(np.float32, (24,), elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])),
    metric=st.sampled_from(["squared_euclidean", "cosine"]),
)
def test_lloyd_loss_never_increases(x, c, w, metric):
    w[0] = 1.0  # at least one positive weight
    prev = np.inf
    for _ in range(4):
        c, stats = jaxkmeans.lloyd_step(x, c, metric=metric, sample_weight=w)
        loss = float(stats.loss)
        assert np.isfinite(np.asarray(c)).all() and np.isfinite(loss)
        assert loss <= prev + 1e-5 * (1 + abs(prev))
        prev = loss
    labels, dist = jaxkmeans.assign(x, c, metric)
    assert ((np.asarray(labels) >= 0) & (np.asarray(labels) < 3)).all()
    assert (np.asarray(dist) >= 0).all()


@_settings
@given(x=hnp.arrays(np.float32, (24, 2), elements=_values), seed=st.integers(0, 2**31 - 1))
def test_fit_never_nan_labels_in_range(x, seed):
    if len(np.unique(x, axis=0)) < 3:
        with pytest.raises(ValueError, match="distinct"):
            jaxkmeans.fit(jax.random.PRNGKey(seed), x, 3)
        return
    r = jaxkmeans.fit(jax.random.PRNGKey(seed), x, 3)
    assert np.isfinite(np.asarray(r.centers)).all() and np.isfinite(float(r.loss))
    labels = np.asarray(r.labels)
    assert ((labels >= 0) & (labels < 3)).all()
    assert float(r.loss) >= 0
    assert len(np.unique(np.asarray(r.centers), axis=0)) == 3
