"""Sparse input (issue 16): BCOO / scipy sparse in the functional core and the drop-in.

Every result is compared with the dense path on the same data: labels equal, centers
and losses within float tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps
from jax.experimental import sparse as jsparse

import jaxkmeans
from jaxkmeans.kernels import native
from jaxkmeans.kernels import sparse as sparse_kernels

KERNELS = [
    "xla",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            not native.sparse_available(), reason="native sparse kernel not built/loaded"
        ),
    ),
]


def _data(n=1500, d=400, density=0.02, seed=0, dtype=np.float32):
    x = sps.random(n, d, density=density, format="csr", random_state=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 2.0, n).astype(dtype)
    return x, w


def _centers(x, k, seed=1):
    rng = np.random.default_rng(seed)
    return x[rng.choice(x.shape[0], k, replace=False)].toarray()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("as_bcoo", [False, True])
def test_assign_inertia_match_dense(kernel, as_bcoo):
    x, w = _data()
    c = _centers(x, 9)
    xs = jsparse.BCOO.from_scipy_sparse(x) if as_bcoo else x
    labels, dist = jaxkmeans.assign(xs, c, kernel=kernel)
    dl, dd = jaxkmeans.assign(x.toarray(), c)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(dl))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(dd), rtol=1e-5, atol=1e-5)
    got = float(jaxkmeans.inertia(xs, c, sample_weight=w, kernel=kernel))
    want = float(jaxkmeans.inertia(x.toarray(), c, sample_weight=w))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_lloyd_step_matches_dense(kernel):
    x, w = _data()
    c = _centers(x, 12)
    new, st = jaxkmeans.lloyd_step(x, c, sample_weight=w, kernel=kernel)
    dnew, dst = jaxkmeans.lloyd_step(x.toarray(), c, sample_weight=w)
    np.testing.assert_allclose(np.asarray(new), np.asarray(dnew), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(st.counts), np.asarray(dst.counts), rtol=1e-5)
    np.testing.assert_allclose(float(st.loss), float(dst.loss), rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_fit_matches_dense_with_weights(kernel):
    x, w = _data(n=3000, d=500)
    c = _centers(x, 15)
    key = jax.random.PRNGKey(0)
    r = jaxkmeans.fit(key, x, 15, init=c, max_iter=30, sample_weight=w, kernel=kernel)
    rd = jaxkmeans.fit(key, x.toarray(), 15, init=c, max_iter=30, sample_weight=w)
    np.testing.assert_array_equal(np.asarray(r.labels), np.asarray(rd.labels))
    np.testing.assert_allclose(np.asarray(r.centers), np.asarray(rd.centers), atol=1e-5)
    np.testing.assert_allclose(float(r.loss), float(rd.loss), rtol=1e-5)
    assert int(r.n_iter) == int(rd.n_iter)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_clusters_relocate_like_dense(kernel):
    x, w = _data(n=800, d=200, seed=3)
    c = _centers(x, 6, seed=4)
    c[4] = 50.0  # far from every row: empty after the first assignment
    c[5] = 60.0
    new, st = jaxkmeans.lloyd_step(x, c, sample_weight=w, kernel=kernel)
    dnew, dst = jaxkmeans.lloyd_step(x.toarray(), c, sample_weight=w)
    assert float(st.counts[4]) == 0.0 and float(st.counts[5]) == 0.0
    np.testing.assert_allclose(np.asarray(new), np.asarray(dnew), rtol=1e-5, atol=1e-6)
    assert np.isfinite(np.asarray(new)).all()
    # The relocated centers are data points, not the origin.
    assert np.abs(np.asarray(new)[4:]).sum() > 0
    r = jaxkmeans.fit(jax.random.PRNGKey(0), x, 6, init=c, max_iter=20, kernel=kernel)
    rd = jaxkmeans.fit(jax.random.PRNGKey(0), x.toarray(), 6, init=c, max_iter=20)
    np.testing.assert_array_equal(np.asarray(r.labels), np.asarray(rd.labels))
    np.testing.assert_allclose(float(r.loss), float(rd.loss), rtol=1e-5)


def test_cosine_matches_dense():
    x, w = _data(n=1200, d=300, seed=5)
    c = _centers(x, 8, seed=6)
    key = jax.random.PRNGKey(0)
    r = jaxkmeans.fit(key, x, 8, init=c, metric="cosine", max_iter=20, sample_weight=w)
    rd = jaxkmeans.fit(key, x.toarray(), 8, init=c, metric="cosine", max_iter=20, sample_weight=w)
    np.testing.assert_array_equal(np.asarray(r.labels), np.asarray(rd.labels))
    np.testing.assert_allclose(np.asarray(r.centers), np.asarray(rd.centers), atol=1e-5)
    np.testing.assert_allclose(float(r.loss), float(rd.loss), rtol=1e-5)


def test_native_and_xla_kernels_agree():
    if not native.sparse_available():
        pytest.skip("native sparse kernel not built/loaded")
    x, w = _data(n=2500, d=600, seed=7)
    c = _centers(x, 20, seed=8)
    a, sa = jaxkmeans.lloyd_step(x, c, sample_weight=w, kernel="xla")
    b, sb = jaxkmeans.lloyd_step(x, c, sample_weight=w, kernel="native")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sa.counts), np.asarray(sb.counts), rtol=1e-5)
    la, _ = jaxkmeans.assign(x, c, kernel="xla")
    lb, _ = jaxkmeans.assign(x, c, kernel="native")
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


@pytest.mark.parametrize("method", ["random", "kmeans_plus_plus", "kmeans_parallel"])
@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_init_centers_are_distinct_rows(method, metric):
    x, w = _data(n=1000, d=150, seed=9)
    w[:500] = 0.0  # never chosen
    key = jax.random.PRNGKey(3)
    c = np.asarray(jaxkmeans.init_centers(key, x, 10, method, metric=metric, sample_weight=w))
    again = np.asarray(jaxkmeans.init_centers(key, x, 10, method, metric=metric, sample_weight=w))
    np.testing.assert_array_equal(c, again)
    dense = x.toarray()
    if metric == "cosine":
        norms = np.linalg.norm(dense, axis=1, keepdims=True)
        dense = np.where(norms > 0, dense / np.where(norms > 0, norms, 1), 0)
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
    # Each center is a row with positive weight (rows may repeat: compare to all of them).
    for ci in c:
        assert np.abs(dense[500:] - ci).sum(axis=1).min() < 1e-5
    assert len({tuple(np.round(ci, 5)) for ci in c}) == 10


def test_kmeans_plus_plus_spreads_centers():
    # Three far-apart groups of rows: k-means++ picks one center in each.
    rng = np.random.default_rng(0)
    blocks = []
    for g in range(3):
        b = np.zeros((100, 90), np.float32)
        b[:, g * 30 : (g + 1) * 30] = 5.0 + rng.uniform(0, 0.1, (100, 30))
        blocks.append(b)
    x = sps.csr_matrix(np.concatenate(blocks))
    c = np.asarray(jaxkmeans.init_centers(jax.random.PRNGKey(0), x, 3, "kmeans_plus_plus"))
    groups = sorted(int(np.argmax([ci[g * 30 : (g + 1) * 30].sum() for g in range(3)])) for ci in c)
    assert groups == [0, 1, 2]


def test_sparse_never_densified_wide_data():
    # 2000 x 2,000,000 with 10 nonzeros per row: 16 GB dense, a few MB sparse.
    rng = np.random.default_rng(0)
    n, d = 2000, 2_000_000
    cols = rng.integers(0, d, (n, 10))
    x = sps.csr_matrix(
        (
            rng.uniform(0.1, 1, n * 10).astype(np.float32),
            cols.ravel(),
            np.arange(0, n * 10 + 1, 10),
        ),
        shape=(n, d),
    )
    r = jaxkmeans.fit(jax.random.PRNGKey(0), x, 4, init="random", max_iter=3)
    assert r.centers.shape == (4, d)
    assert np.asarray(r.labels).shape == (n,)
    assert np.isfinite(float(r.loss))


def test_nearby_sizes_share_a_program():
    from jaxkmeans._validation import bucket_rows

    xa = sps.random(3000, 500, density=0.010, format="csr", random_state=0)
    xb = sps.random(3010, 500, density=0.0101, format="csr", random_state=1)
    a = sparse_kernels.from_host(xa, rows=bucket_rows(3000))
    b = sparse_kernels.from_host(xb, rows=bucket_rows(3010))
    assert a.vals.shape[0] >= xa.nnz + a.block_nnz
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    shapes = lambda t: [leaf.shape for leaf in jax.tree_util.tree_leaves(t)]  # noqa: E731
    assert a.n == b.n
    assert sa == sb
    assert shapes(a) == shapes(b)


def test_padded_rows_change_nothing():
    x, w = _data(n=1000, d=100, seed=11)
    c = _centers(x, 5)
    a = jaxkmeans.lloyd_step(x, c, sample_weight=w, pad_rows=True)
    b = jaxkmeans.lloyd_step(x, c, sample_weight=w, pad_rows=False)
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-6, atol=1e-7)


def test_duplicates_and_explicit_zeros():
    # Duplicate coordinates are summed; explicit zeros are dropped.
    rows = np.array([0, 0, 1, 2, 2, 3])
    cols = np.array([1, 1, 0, 2, 2, 3])
    vals = np.array([1.0, 2.0, 4.0, 0.0, 0.0, 5.0], np.float32)
    coo = sps.coo_matrix((vals, (rows, cols)), shape=(4, 4))
    c = np.eye(4, dtype=np.float32) * 3.0
    labels, dist = jaxkmeans.assign(coo, c)
    dl, dd = jaxkmeans.assign(coo.toarray(), c)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(dl))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(dd), rtol=1e-6)
    bcoo = jsparse.BCOO((jnp.asarray(vals), jnp.asarray(np.stack([rows, cols], 1))), shape=(4, 4))
    np.testing.assert_array_equal(np.asarray(jaxkmeans.assign(bcoo, c)[0]), np.asarray(dl))


def test_errors():
    x, _ = _data(n=50, d=10)
    c = _centers(x, 3)
    bad = x.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        jaxkmeans.assign(bad, c)
    with pytest.raises(ValueError, match="columns"):
        jaxkmeans.assign(x, np.zeros((3, 11), np.float32))
    with pytest.raises(ValueError, match="kmc2"):
        jaxkmeans.init_centers(jax.random.PRNGKey(0), x, 3, "kmc2")
    with pytest.raises(ValueError, match="kmc2"):
        jaxkmeans.fit(jax.random.PRNGKey(0), x, 3, init="kmc2")
    with pytest.raises(ValueError, match="mesh"):
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        jaxkmeans.fit(jax.random.PRNGKey(0), x, 3, mesh=mesh)
    with pytest.raises(ValueError, match="distinct"):
        jaxkmeans.fit(jax.random.PRNGKey(0), sps.csr_matrix(np.ones((20, 4), np.float32)), 3)
    batched = jsparse.BCOO.fromdense(np.ones((2, 3, 4), np.float32), n_batch=1)
    with pytest.raises(ValueError, match="2-D"):
        jaxkmeans.assign(batched, c[:, :4])
    bcoo = jsparse.BCOO.from_scipy_sparse(x)
    with pytest.raises(TypeError, match="traced"):
        jax.jit(lambda b: jaxkmeans.assign(b, c)[1])(bcoo)


# ------------------------------------------------------------------------ drop-in

sk = pytest.importorskip("sklearn")


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_dropin_kmeans_sparse_equals_dense(fmt, dtype, init):
    from jaxkmeans.sklearn import KMeans

    x, w = _data(n=1200, d=250, seed=12, dtype=dtype)
    xs = x.asformat(fmt)
    a = KMeans(8, init=init, n_init=2, random_state=0).fit(xs, sample_weight=w)
    b = KMeans(8, init=init, n_init=2, random_state=0).fit(x.toarray(), sample_weight=w)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-5)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-5)
    assert a.cluster_centers_.dtype == dtype
    np.testing.assert_array_equal(a.predict(xs), a.predict(x.toarray()))
    np.testing.assert_allclose(a.transform(xs), b.transform(x.toarray()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.score(xs), b.score(x.toarray()), rtol=1e-5)
    again = KMeans(8, init=init, n_init=2, random_state=0).fit_predict(xs, sample_weight=w)
    np.testing.assert_array_equal(again, a.labels_)


def test_dropin_transform_exact_zero_at_centers():
    from jaxkmeans.sklearn import KMeans

    x, _ = _data(n=500, d=60, seed=13)
    km = KMeans(5, random_state=0).fit(x)
    t = km.transform(sps.csr_matrix(km.cluster_centers_))
    np.testing.assert_array_equal(np.diag(t), 0.0)


def test_dropin_sparse_weights_are_repetitions():
    from jaxkmeans.sklearn import KMeans

    x, _ = _data(n=400, d=80, seed=14, dtype=np.float64)
    w = np.random.default_rng(0).integers(1, 3, 400)
    rep = sps.csr_matrix(np.repeat(x.toarray(), w, axis=0))
    a = KMeans(6, random_state=0, n_init=1).fit(x, sample_weight=w)
    b = KMeans(6, random_state=0, n_init=1).fit(rep)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-6)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-6)


def test_dropin_minibatch_sparse_equals_dense():
    from jaxkmeans.sklearn import MiniBatchKMeans

    x, w = _data(n=2000, d=200, seed=15)
    a = MiniBatchKMeans(7, batch_size=256, random_state=0).fit(x, sample_weight=w)
    b = MiniBatchKMeans(7, batch_size=256, random_state=0).fit(x.toarray(), sample_weight=w)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-5)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    p, q = MiniBatchKMeans(7, random_state=0), MiniBatchKMeans(7, random_state=0)
    for start in range(0, 2000, 500):
        p.partial_fit(x[start : start + 500])
        q.partial_fit(x[start : start + 500].toarray())
    np.testing.assert_allclose(p.cluster_centers_, q.cluster_centers_, atol=1e-5)
    np.testing.assert_allclose(p.score(x), q.score(x.toarray()), rtol=1e-5)
