"""Tests for jaxkmeans.updates (and the XLA kernel's sums): segment_sum == onehot, center
updates, the empty-cluster policy and the mini-batch optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_all_close

import jaxkmeans
from jaxkmeans import engine, updates
from jaxkmeans._validation import row_identity
from jaxkmeans.kernels import native, xla


def np_nearest(x, c):
    d = ((np.asarray(x, np.float64)[:, None] - np.asarray(c, np.float64)[None]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


# ------------------------------------------------------------------ statistics


def test_accumulate_segment_sum_equals_onehot():
    rng = np.random.default_rng(0)
    xp = jnp.asarray(rng.normal(size=(50, 3)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 5, size=50).astype(np.int32))  # 5 of k=6 used
    w = jnp.asarray(rng.uniform(0, 2, size=50).astype(np.float32))
    acc = jax.jit(xla.accumulate, static_argnums=(3, 4))  # one program, not op by op
    s1, c1 = acc(xp, labels, w, 6, "segment_sum")
    s2, c2 = acc(xp, labels, w, 6, "onehot")
    assert_trees_all_close((s1, c1), (s2, c2), rtol=1e-5, atol=1e-5)
    ref_s = np.zeros((6, 3))
    ref_c = np.zeros(6)
    np.add.at(ref_s, np.asarray(labels), np.asarray(w)[:, None] * np.asarray(xp))
    np.add.at(ref_c, np.asarray(labels), np.asarray(w))
    np.testing.assert_allclose(np.asarray(s1), ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c1), ref_c, rtol=1e-5)
    assert float(c1[5]) == 0.0


def test_auto_kernel():
    expect = "native" if native.enabled() else "xla"
    assert engine.make_pass().kernel == expect
    assert engine.make_pass(dtype=np.float64).kernel == "xla"
    assert engine.make_pass("cosine").kernel == "xla"
    assert engine.make_pass(precision="bfloat16").kernel == "xla"
    assert engine.make_pass(update_method="onehot") == engine.Pass(kernel="xla", sums="onehot")


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_lloyd_step_segment_sum_equals_onehot(blobs, metric):
    w = np.random.default_rng(1).uniform(0.5, 2, size=len(blobs)).astype(np.float32)
    c0 = np.concatenate([blobs[:4], [[1e3, 1e3]]]).astype(np.float32)  # one empty cluster
    a = jaxkmeans.lloyd_step(blobs, c0, metric=metric, sample_weight=w, update_method="segment_sum")
    b = jaxkmeans.lloyd_step(blobs, c0, metric=metric, sample_weight=w, update_method="onehot")
    assert_trees_all_close(a, b, rtol=1e-5, atol=1e-4)


def test_centers_from_stats():
    sums = jnp.array([[2.0, 4.0], [0.0, 0.0], [3.0, 0.0]])
    counts = jnp.array([2.0, 0.0, 3.0])
    old = jnp.array([[9.0, 9.0], [7.0, 7.0], [5.0, 5.0]])
    cfs = jax.jit(updates.centers_from_stats, static_argnums=3)
    new = cfs(sums, counts, old, "squared_euclidean")
    np.testing.assert_allclose(np.asarray(new), [[1.0, 2.0], [7.0, 7.0], [1.0, 0.0]])
    # Cosine: the normalized sum (spherical k-means); an empty cluster keeps its center.
    new = cfs(sums, counts, old, "cosine")
    s5 = 1 / np.sqrt(5)
    np.testing.assert_allclose(np.asarray(new), [[s5, 2 * s5], [7.0, 7.0], [1.0, 0.0]], atol=1e-6)


# ------------------------------------------------------------------ empty clusters


def test_far_center_goes_to_farthest_point(blobs):
    c0 = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [1e3, -1e3], [10.0, 10.0]], np.float32)
    new, stats = jaxkmeans.lloyd_step(blobs, c0)
    new = np.asarray(new)
    labels, dist = np_nearest(blobs, c0)
    assert (labels != 3).all() and float(stats.counts[3]) == 0.0
    far = int(np.argmax(dist))
    np.testing.assert_allclose(new[3], blobs[far], rtol=1e-6, atol=1e-6)  # the farthest point
    # That point left its cluster (as in scikit-learn).
    donor = labels[far]
    members = (labels == donor) & (np.arange(len(blobs)) != far)
    np.testing.assert_allclose(new[donor], blobs[members].mean(0), rtol=1e-5, atol=1e-5)
    # The loss reported is the one before the update, with the far center unused.
    np.testing.assert_allclose(float(stats.loss), dist.sum(), rtol=1e-5)


def test_several_empty_clusters_take_distinct_points(blobs):
    far = np.array([[1e3, 1e3], [-1e3, 1e3], [1e3, -1e3]], np.float32)
    c0 = np.concatenate([blobs[:2], far])  # 5 centers, 3 far from everything
    new, stats = jaxkmeans.lloyd_step(blobs, c0)
    new = np.asarray(new)
    assert np.isfinite(new).all()
    assert (np.asarray(stats.counts)[2:] == 0).all()
    _, dist = np_nearest(blobs, c0)
    farthest3 = blobs[np.argsort(-dist, kind="stable")[:3]]
    # The i-th empty cluster takes the i-th farthest point.
    np.testing.assert_allclose(new[2:], farthest3, rtol=1e-6, atol=1e-6)
    assert len(np.unique(new, axis=0)) == 5
    assert not (new == 0).all(axis=1).any()


def test_empty_clusters_with_duplicated_data_take_different_points():
    # The farthest points are 20 copies of (10, 10): only one empty cluster may go there.
    pts = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 5]], np.float32)
    x = np.repeat(pts, [20, 20, 20, 20, 1], axis=0)
    c0 = np.array([[0, 0], [1e3, 1e3], [1e3, -1e3], [-1e3, 1e3], [-1e3, -1e3]], np.float32)
    w = np.ones(len(x), np.float32)
    w[60] = 0.0  # the first copy of (10, 10) cannot be taken, the others can
    for weights in (None, w):
        new, _ = jaxkmeans.lloyd_step(x, c0, sample_weight=weights)
        new = np.asarray(new)
        np.testing.assert_allclose(new[[1, 4]], [[10, 10], [5, 5]], atol=1e-5)
        # (10, 0) and (0, 10) are equally far: identity order decides, not row order.
        assert {tuple(r) for r in np.round(new[2:4], 4).tolist()} == {(10.0, 0.0), (0.0, 10.0)}


def test_relocate_empty_skips_copies_of_a_candidate():
    far = updates.Far(
        rows=jnp.array([[4.0, 0.0], [4.0, 0.0], [3.0, 0.0]]),
        dist=jnp.array([9.0, 9.0, 4.0]),
        labels=jnp.array([0, 0, 0], jnp.int32),
        weights=jnp.array([1.0, 1.0, 1.0]),
        ident=row_identity(jnp.array([[4.0, 0.0], [4.0, 0.0], [3.0, 0.0]])),
        copies=jnp.array([1, 1, 1], jnp.int32),
    )
    sums = jnp.array([[12.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # 4, 4, 3, 1
    counts = jnp.array([4.0, 0.0, 0.0, 0.0])
    s, c = jax.jit(updates.relocate_empty)(sums, counts, far, jnp.array([4, 0, 0, 0]))
    # Clusters 1 and 2 take (4, 0) and (3, 0); cluster 3 finds no other point and stays
    # empty; the donor keeps (4, 0) and (1, 0).
    np.testing.assert_allclose(np.asarray(s), [[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(c), [2.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_empty_clusters_far_from_origin_never_nan_or_origin(metric):
    rng = np.random.default_rng(2)
    x = (1e5 + rng.normal(size=(80, 3))).astype(np.float32)
    c0 = np.concatenate([x[:2], -x[:3]])  # 3 centers on the other side of the origin
    c = c0
    for _ in range(3):
        c, stats = jaxkmeans.lloyd_step(x, c, metric=metric)
        c = np.asarray(c)
        assert np.isfinite(c).all() and np.isfinite(float(stats.loss))
        assert not (np.abs(c) < 1e-3).all(axis=1).any()
    assert len(np.unique(c, axis=0)) == 5
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
    else:
        assert (np.abs(c - 1e5) < 10).all()


def test_empty_cluster_with_only_duplicate_points_keeps_center():
    # Every point sits exactly on a center (distance 0): nothing can be taken.
    x = np.array([[0.0, 0.0]] * 3 + [[5.0, 5.0]] * 3, np.float32)
    c0 = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]], np.float32)
    new, stats = jaxkmeans.lloyd_step(x, c0)
    np.testing.assert_allclose(np.asarray(new), c0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(stats.counts), [3.0, 3.0, 0.0])
    assert float(stats.loss) == 0.0


def test_empty_cluster_never_takes_zero_weight_point(blobs):
    c0 = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [1e3, 1e3]], np.float32)
    _, dist = np_nearest(blobs, c0)
    w = np.ones(len(blobs), np.float32)
    far = int(np.argmax(dist))
    w[far] = 0.0
    new, stats = jaxkmeans.lloyd_step(blobs, c0, sample_weight=w)
    new = np.asarray(new)
    dist_w = np.where(w > 0, dist, -1)
    np.testing.assert_allclose(new[4], blobs[int(np.argmax(dist_w))], rtol=1e-6, atol=1e-6)
    assert not np.allclose(new[4], blobs[far])
    np.testing.assert_allclose(float(stats.loss), (w * dist).sum(), rtol=1e-5)


def test_relocate_empty_unit():
    # Two empty clusters, two candidates from donor 0; donor keeps the rest.
    far = updates.Far(
        rows=jnp.array([[4.0, 0.0], [3.0, 0.0]]),
        dist=jnp.array([9.0, 4.0]),
        labels=jnp.array([0, 0], jnp.int32),
        weights=jnp.array([1.0, 1.0]),
        ident=row_identity(jnp.array([[4.0, 0.0], [3.0, 0.0]])),
        copies=jnp.array([1, 1], jnp.int32),
    )
    sums = jnp.array([[8.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # rows 4, 3, 1 in cluster 0
    counts = jnp.array([3.0, 0.0, 0.0])
    s, c = jax.jit(updates.relocate_empty)(sums, counts, far, jnp.array([3, 0, 0]))
    np.testing.assert_allclose(np.asarray(s), [[1.0, 0.0], [4.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(np.asarray(c), [1.0, 1.0, 1.0])


# ------------------------------------------------------------------ optax transformation


def test_minibatch_optimizer_is_optax_transformation():
    opt = jaxkmeans.minibatch_optimizer()
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    c = jnp.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    state = opt.init(c)
    np.testing.assert_array_equal(np.asarray(state.counts), [0.0, 0.0, 0.0])
    # Batch 1: 2 points with mean (2, 0) on center 0, 1 point at (3, 3) on center 1.
    means = jnp.array([[2.0, 0.0], [3.0, 3.0], [0.0, 0.0]])
    bc = jnp.array([2.0, 1.0, 0.0])
    grads = jnp.where((bc > 0)[:, None], c - means, 0.0)
    u, state = jax.jit(opt.update)(grads, state, c, batch_counts=bc)
    c1 = optax.apply_updates(c, u)
    # First visit: counts start at 0, so lr = 1 and centers jump to the batch means.
    np.testing.assert_allclose(np.asarray(c1), [[2.0, 0.0], [3.0, 3.0], [5.0, 5.0]])
    np.testing.assert_array_equal(np.asarray(state.counts), [2.0, 1.0, 0.0])
    # Batch 2: 2 more points with mean (4, 0) on center 0 -> (2*2 + 2*4) / 4 = 3.
    means2 = jnp.array([[4.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    bc2 = jnp.array([2.0, 0.0, 0.0])
    grads2 = jnp.where((bc2 > 0)[:, None], c1 - means2, 0.0)
    u2, state2 = jax.jit(opt.update)(grads2, state, c1, batch_counts=bc2)
    c2 = optax.apply_updates(c1, u2)
    np.testing.assert_allclose(np.asarray(c2), [[3.0, 0.0], [3.0, 3.0], [5.0, 5.0]])
    np.testing.assert_array_equal(np.asarray(state2.counts), [4.0, 1.0, 0.0])
    # It composes like any optax transformation (extra args pass through chain).
    chained = optax.chain(jaxkmeans.minibatch_optimizer())
    cs = chained.init(c1)
    u3, _ = chained.update(grads2, cs, c1, batch_counts=bc2)
    # chain's fresh counts are 0, so this step jumps to the batch mean (4, 0).
    np.testing.assert_allclose(np.asarray(optax.apply_updates(c1, u3))[0], [4.0, 0.0])


def test_minibatch_optimizer_matches_sklearn_rule():
    """(c * counts + batch_sums) / (counts + batch_counts), for random counts."""
    rng = np.random.default_rng(3)
    c = rng.normal(size=(5, 3))
    counts = rng.uniform(0, 10, size=5)
    counts[0] = 0.0
    bc = rng.uniform(0, 4, size=5)
    bc[1] = 0.0
    sums = rng.normal(size=(5, 3)) * bc[:, None]
    expect = np.where((bc > 0)[:, None], (c * counts[:, None] + sums) / (counts + bc)[:, None], c)
    opt = jaxkmeans.minibatch_optimizer()
    with jax.enable_x64(True):
        state = opt.init(jnp.asarray(c))._replace(counts=jnp.asarray(counts))
        means = sums / np.where(bc > 0, bc, 1)[:, None]
        grads = jnp.asarray(np.where((bc > 0)[:, None], c - means, 0.0))
        u, state = opt.update(grads, state, jnp.asarray(c), batch_counts=jnp.asarray(bc))
        got = np.asarray(optax.apply_updates(jnp.asarray(c), u))
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.counts), counts + bc, rtol=1e-12)


def _ref_farthest_distinct(x, dist, m):
    best = {}
    for i, (row, dd) in enumerate(zip(x, dist, strict=True)):
        key = (row + 0.0).tobytes()  # -0.0 counts as 0.0
        if key not in best or dd > dist[best[key]]:
            best[key] = i
    cand = sorted(best.values(), key=lambda i: (-dist[i], i))[:m]
    return [float(dist[i]) for i in cand], cand


@pytest.mark.parametrize("case", ["few_copies", "copies_beyond_pool", "mostly_copies", "small_n"])
def test_farthest_distinct_pool_matches_full_definition(case):
    rng = np.random.default_rng(7)
    n, m = (12, 5) if case == "small_n" else (400, 10)
    x = rng.integers(0, 50, size=(n, 2)).astype(np.float32)
    dist = rng.integers(0, 30, size=n).astype(np.float32)  # many equal distances
    if case == "copies_beyond_pool":
        top = np.argsort(-dist, kind="stable")[:15]
        x[top] = x[top[0]]  # the 15 farthest rows are one point: the pool of 2m has < m
    if case == "mostly_copies":
        x[: n - 3] = x[0]
    w = np.ones(n, np.float32)
    far = updates.farthest(
        jnp.asarray(x),
        jnp.asarray(w),
        jnp.zeros(n, jnp.int32),
        jnp.asarray(dist),
        m,
        "squared_euclidean",
        jnp.zeros(2, jnp.float32),
    )
    ref_d, ref_i = _ref_farthest_distinct(x, dist, m)
    got_d = np.asarray(far.dist).tolist()
    assert got_d[: len(ref_d)] == ref_d  # farthest first
    assert all(v == -1.0 for v in got_d[len(ref_d) :])
    # The same points (equal distances come in identity order, not row order).
    got = sorted(zip(got_d, map(tuple, np.asarray(far.rows)[: len(ref_i)].tolist()), strict=False))
    assert got == sorted(zip(ref_d, map(tuple, x[ref_i].tolist()), strict=True))
