"""Tests for jaxkmeans.initializers: shapes, distinct rows (also under heavy
duplication), weights, cosine directions, user arrays / callables, jit / vmap,
properties, and fit quality against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxkmeans

METHODS = ["random", "kmeans_plus_plus", "kmc2", "kmeans_parallel"]
KEY = jax.random.PRNGKey(0)


def rows_of(c, x):
    """Index in x of each row of c (-1 when it is not a row of x)."""
    c = np.asarray(c)
    eq = (c[:, None, :] == np.asarray(x)[None, :, :]).all(-1)
    return np.where(eq.any(1), eq.argmax(1), -1)


def dup_data(distinct):
    """(600, 2) float32 with only `distinct` different rows (heavy duplication)."""
    rng = np.random.default_rng(distinct)
    pts = rng.normal(size=(distinct, 2)).astype(np.float32) * 5
    return pts[rng.integers(0, distinct, size=600)], pts


def test_constants():
    assert jaxkmeans.RANDOM_INIT == "random"
    assert jaxkmeans.KMEANS_PLUS_PLUS_INIT == "kmeans_plus_plus"
    assert jaxkmeans.KMC2_INIT == "kmc2"
    assert jaxkmeans.KMEANS_PARALLEL_INIT == "kmeans_parallel"


@pytest.mark.parametrize("method", METHODS)
def test_shapes_rows_and_distinct(blobs, method):
    c = jaxkmeans.init_centers(KEY, blobs, 4, method)
    assert c.shape == (4, 2) and c.dtype == jnp.float32
    idx = rows_of(c, blobs)
    assert (idx >= 0).all()  # every center is a data point
    assert len(set(idx.tolist())) == 4
    # Same key, same centers; another key, other centers.
    np.testing.assert_array_equal(np.asarray(jaxkmeans.init_centers(KEY, blobs, 4, method)), c)
    other = jaxkmeans.init_centers(jax.random.PRNGKey(1), blobs, 4, method)
    assert not np.array_equal(np.asarray(other), np.asarray(c))
    # Heavy duplication, exactly k distinct points: all of them, once each.
    x, pts = dup_data(4)
    c = np.asarray(jaxkmeans.init_centers(KEY, x, 4, method))
    assert len(np.unique(c, axis=0)) == 4
    assert (rows_of(c, pts) >= 0).all()
    # Heavy duplication, a few more distinct points than k.
    x, pts = dup_data(6)
    c = np.asarray(jaxkmeans.init_centers(jax.random.PRNGKey(3), x, 4, method))
    assert len(np.unique(c, axis=0)) == 4


def test_zero_weight_points_never_chosen(blobs):
    w = np.zeros(len(blobs), np.float32)
    w[:6] = 1.0  # only 6 points may be chosen
    for seed in range(3):
        c = jaxkmeans.init_centers(jax.random.PRNGKey(seed), blobs, 4, sample_weight=w)
        idx = rows_of(c, blobs)
        assert ((idx >= 0) & (idx < 6)).all() and len(set(idx.tolist())) == 4


def test_kmeans_plus_plus_spreads_out():
    # Four tight groups far apart: greedy k-means++ takes one point from each.
    rng = np.random.default_rng(0)
    means = np.repeat(np.arange(4) * 100.0, 150)[:, None] * [1.0, 0.0]
    x = (means + rng.normal(size=(600, 2)) * 1e-2).astype(np.float32)
    for seed in range(3):
        c = np.asarray(jaxkmeans.init_centers(jax.random.PRNGKey(seed), x, 4))
        np.testing.assert_array_equal(np.sort(np.round(c[:, 0] / 100)), [0, 1, 2, 3])


@pytest.mark.parametrize("method", ["random", "kmeans_plus_plus"])
def test_cosine_distinct_directions(method):
    # Many exact multiples of 3 directions, and zero rows (no direction).
    a = np.arange(1, 41, dtype=np.float32)[:, None]
    x = np.concatenate([a * [1.0, 1.0], a * [1.0, -3.0], a * [0.0, 2.0], np.zeros((5, 2))]).astype(
        np.float32
    )
    for seed in range(4):
        c = np.asarray(
            jaxkmeans.init_centers(jax.random.PRNGKey(seed), x, 3, method, metric="cosine")
        )
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-6)
        cos = c @ c.T
        assert (cos[~np.eye(3, dtype=bool)] < 0.99).all(), c  # three different directions
    with pytest.raises(ValueError, match="distinct non-zero directions"):
        jaxkmeans.init_centers(KEY, x, 4, method, metric="cosine")


def test_kmeans_parallel_few_candidates(blobs):
    # rounds * ceil(oversampling_factor * k) + 1 = 2 < k: still k distinct centers.
    for seed in range(3):
        c = jaxkmeans.init_centers(
            jax.random.PRNGKey(seed), blobs, 4, "kmeans_parallel", rounds=1, oversampling_factor=0.1
        )
        idx = rows_of(c, blobs)
        assert (idx >= 0).all() and len(set(idx.tolist())) == 4


def test_array_and_callable_methods(blobs):
    c0 = blobs[:4] + 1.0
    np.testing.assert_array_equal(np.asarray(jaxkmeans.init_centers(KEY, blobs, 4, c0)), c0)
    unit = jaxkmeans.init_centers(KEY, blobs, 4, c0, metric="cosine")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(unit), axis=1), 1.0, rtol=1e-6)
    seen = {}

    def pick_first(key, x, k):
        seen["args"] = (x.shape, k)
        return x[:k]

    c = jaxkmeans.init_centers(KEY, blobs, 3, pick_first)
    np.testing.assert_array_equal(np.asarray(c), blobs[:3])
    assert seen["args"] == ((600, 2), 3)
    with pytest.raises(ValueError, match="num_clusters=3 rows"):
        jaxkmeans.init_centers(KEY, blobs, 3, lambda key, x, k: x[:2])


def test_jit_matches_eager(blobs):
    # (vmap over keys is covered through fit in test_fitting.py.)
    f = jax.jit(jaxkmeans.init_centers, static_argnames=("num_clusters", "method"))
    for seed in range(2):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(
            np.asarray(f(key, blobs, num_clusters=4, method="kmeans_plus_plus")),
            np.asarray(jaxkmeans.init_centers(key, blobs, 4)),
        )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=hnp.arrays(
        np.float32,
        (30, 2),
        elements=st.one_of(st.integers(-2, 2).map(float), st.floats(-1e3, 1e3, width=32)),
    ),
    method=st.sampled_from(["random", "kmeans_plus_plus"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_distinct_rows(x, method, seed):
    """k distinct rows of x whenever x has >= k distinct rows (heavy duplication
    included); a clear ValueError otherwise."""
    distinct = len(np.unique(x + np.float32(0), axis=0))
    if distinct < 4:
        with pytest.raises(ValueError, match="distinct points"):
            jaxkmeans.init_centers(jax.random.PRNGKey(seed), x, 4, method)
        return
    c = np.asarray(jaxkmeans.init_centers(jax.random.PRNGKey(seed), x, 4, method))
    assert np.isfinite(c).all()
    assert len(np.unique(c + np.float32(0), axis=0)) == 4
    assert (rows_of(c + np.float32(0), x + np.float32(0)) >= 0).all()


# ------------------------------------------------------------------ exact sampling


def test_sample_by_mass_exact_at_millions_of_rows():
    """D^2 sampling (k-means++, k-MC2) is exact at n = 2^22 near-uniform float32
    masses. One float32 prefix sum over all rows loses the small increments: rows are
    drawn up to ~20% too often or too rarely (some never), per-row chi-square z ~ 20-35
    here, and draws land on zero-mass rows (the fallback). The blockwise sampler is
    within sampling noise."""
    from jaxkmeans.initializers import _sample_by_mass

    n, num = 2**22, 2**20
    m = (1.0 + np.random.default_rng(0).random(n)).astype(np.float32)
    m[::97] = 0.0  # never drawn
    u = jax.random.uniform(jax.random.PRNGKey(0), (num, 2))
    idx = np.ravel(np.asarray(jax.jit(_sample_by_mass)(u, jnp.asarray(m), jnp.int32(n))))
    num = idx.size
    cnt = np.bincount(idx, minlength=n + 1)
    p = m.astype(np.float64) / m.astype(np.float64).sum()
    # Per-row chi-square, as a z-score with the multinomial's exact mean and variance.
    ok = p > 0
    k = ok.sum()
    e = num * p[ok]
    chi2 = np.sum((cnt[:n][ok] - e) ** 2 / e)
    var = 2 * (k - 1) + (np.sum(1 / p[ok]) - k * k - 2 * k + 2) / num
    z_rows = (chi2 - (k - 1)) / np.sqrt(var)
    assert abs(z_rows) < 5, z_rows
    # 1024 contiguous bins: each bin's share of the draws matches its mass share.
    pb = p.reshape(1024, -1).sum(1)
    z_bins = (cnt[:n].reshape(1024, -1).sum(1) - num * pb) / np.sqrt(num * pb * (1 - pb))
    assert np.abs(z_bins).max() < 5, np.abs(z_bins).max()
    assert cnt[:n][m == 0].sum() == 0
    assert cnt[n] == 0  # no fallback: the total is positive
    assert idx.shape == (2**20,)


@pytest.mark.parametrize("n", [1, 3, 1000])
def test_sample_by_mass_small_and_edge_cases(n):
    from jaxkmeans.initializers import _sample_by_mass

    rng = np.random.default_rng(n)
    m = rng.random(n).astype(np.float32) * (rng.random(n) < 0.7)
    m[-1] = 2.0  # at least one positive mass, at the very end (padding follows it)
    f = jax.jit(_sample_by_mass)
    # The extreme uniforms too: never past the last positive mass, never a zero mass.
    u = jnp.concatenate(
        [
            jax.random.uniform(KEY, (20000, 2)),
            jnp.array([[0.0, 0.0], [1 - 2**-24, 1 - 2**-24], [0.0, 1 - 2**-24]]),
        ]
    )
    idx = np.asarray(f(u, jnp.asarray(m), jnp.int32(-1)))
    assert idx.shape == (u.shape[0],)
    assert ((idx >= 0) & (idx < n)).all() and (m[idx] > 0).all()
    freq = np.bincount(idx, minlength=n) / idx.size
    np.testing.assert_allclose(freq, m / m.sum(), atol=0.02)
    # All masses 0: the fallback, every time.
    z = f(u, jnp.zeros((n,), jnp.float32), jnp.int32(7))
    np.testing.assert_array_equal(np.asarray(z), 7)
    if n == 1000:
        # vmap over independent draws (fit runs the initializers under vmap).
        uu = u[:-3].reshape(4, -1, 2)
        batched = jax.vmap(f, in_axes=(0, None, None))(uu, jnp.asarray(m), jnp.int32(-1))
        np.testing.assert_array_equal(np.asarray(batched).ravel(), idx[:-3])


def _chi2_z(cnt, p, num):
    """Per-row chi-square of counts `cnt` against probabilities `p`, as a z-score with
    the multinomial's exact mean and variance (rows with p > 0)."""
    ok = p > 0
    k = ok.sum()
    e = num * p[ok]
    chi2 = np.sum((cnt[ok] - e) ** 2 / e)
    var = 2 * (k - 1) + (np.sum(1 / p[ok]) - k * k - 2 * k + 2) / num
    return (chi2 - (k - 1)) / np.sqrt(var)


def test_sample_by_mass_few_draws_exact():
    """The few-draws path (k-means++ rounds: only the drawn blocks get prefix sums) is
    the same exact two-level distribution: 2^18 calls of 8 draws over 2^16 masses."""
    from jaxkmeans.initializers import _mass_blocks, _sample_by_mass

    n, calls, t = 2**16, 2**18, 8
    assert t * _mass_blocks(n)[0] <= n  # the few-draws path
    rng = np.random.default_rng(1)
    m = (rng.random(n) ** 3).astype(np.float32)  # uneven masses
    m[::13] = 0.0
    u = jax.random.uniform(jax.random.PRNGKey(5), (calls, t, 2))
    f = jax.jit(jax.vmap(lambda u: _sample_by_mass(u, jnp.asarray(m), jnp.int32(n))))
    idx = np.asarray(f(u)).ravel()
    cnt = np.bincount(idx, minlength=n + 1)
    assert cnt[n] == 0 and cnt[:n][m == 0].sum() == 0
    p = m.astype(np.float64) / m.astype(np.float64).sum()
    assert abs(_chi2_z(cnt[:n], p, idx.size)) < 5
    # Extreme uniforms: never past the last positive mass, never a zero mass.
    edge = jnp.array([[0.0, 0.0], [1 - 2**-24, 1 - 2**-24], [0.0, 1 - 2**-24], [0.5, 0.0]])
    e = np.asarray(jax.jit(_sample_by_mass)(edge, jnp.asarray(m), jnp.int32(-1)))
    assert ((e >= 0) & (m[e] > 0)).all()


def test_kmeans_plus_plus_first_round_is_exact_d2():
    """The candidates of the first k-means++ round are drawn with probability exactly
    proportional to w D^2 from the first center (checked on the pick's own code:
    candidates of 2 distinct clusters, many keys)."""
    from jaxkmeans import initializers as I

    rng = np.random.default_rng(2)
    n = 300
    x = rng.normal(size=(n, 3)).astype(np.float32)
    w = rng.uniform(0.2, 2.0, n).astype(np.float32)
    xp = jnp.asarray(x)
    xsq = jnp.sum(xp * xp, axis=1)
    first = 17
    d2 = I._sq_dists(xp, xsq, xp[first][None])[:, 0].at[first].set(0.0)
    mass = jnp.asarray(w) * d2

    @jax.jit
    @jax.vmap
    def draw(key):
        return I._draw(jax.random.uniform(key, (4, 2)), mass)

    keys = jax.random.split(jax.random.PRNGKey(9), 100_000)
    idx = np.asarray(draw(keys)).ravel()
    p = w.astype(np.float64) * ((x.astype(np.float64) - x[first]) ** 2).sum(1)
    p[first] = 0.0
    p /= p.sum()
    cnt = np.bincount(idx, minlength=n)
    assert cnt[first] == 0
    assert abs(_chi2_z(cnt, p, idx.size)) < 5
    # The candidates' potentials are those of the exact D^2 update, self distance 0.
    cand = jnp.array([3, 200, 3, first], jnp.int32)
    pot, dc = I._candidate_potentials(xp, xsq, jnp.asarray(w), d2, cand)
    x64, d64 = x.astype(np.float64), np.asarray(d2, np.float64)
    for j, c in enumerate(np.asarray(cand)):
        dj = np.minimum(d64, ((x64 - x64[c]) ** 2).sum(1))
        dj[c] = 0.0
        np.testing.assert_allclose(float(pot[j]), (w * dj).sum(), rtol=1e-4)
        np.testing.assert_allclose(np.asarray(dc[:, j]), dj, rtol=1e-4, atol=1e-4)


def test_random_init_by_weight_of_distinct_points():
    """Random init draws distinct points with probability proportional to the total
    weight of their copies, never a zero-weight row (the top-m path skips copies)."""
    pts = np.arange(12, dtype=np.float32).reshape(6, 2)
    reps = np.array([1, 1, 1, 1, 5, 30])  # point 5 has 30 copies
    x = np.repeat(pts, reps, axis=0)
    w = np.ones(len(x), np.float32)
    w[: reps[0]] = 0.0  # point 0: never
    w[-1] = 0.0  # one copy of point 5 weighs nothing
    tot = np.array([(w[np.repeat(np.arange(6), reps) == g]).sum() for g in range(6)])
    f = jax.jit(
        jax.vmap(
            lambda key: jaxkmeans.initializers.init_impl(
                key,
                jnp.asarray(x),
                jnp.asarray(w),
                jaxkmeans.initializers.make_init("random", 1, "squared_euclidean"),
            )
        )
    )
    c = np.asarray(f(jax.random.split(KEY, 40_000)))[:, 0]
    first = rows_of(c, pts)
    assert (first > 0).all()
    freq = np.bincount(first, minlength=6) / len(first)
    np.testing.assert_allclose(freq, tot / tot.sum(), atol=0.01)
    # k = 5 of 5 distinct positive-weight points: all of them, each once.
    for seed in range(5):
        c5 = jaxkmeans.init_centers(jax.random.PRNGKey(seed), x, 5, "random", sample_weight=w)
        assert sorted(rows_of(c5, pts).tolist()) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ fit quality


def median_inertias(x, k, init, seeds=5):
    from sklearn.cluster import KMeans

    ours = [
        float(jaxkmeans.fit(jax.random.PRNGKey(s), x, k, init=init, n_init=1).loss)
        for s in range(seeds)
    ]
    sk = [
        KMeans(n_clusters=k, n_init=1, random_state=s).fit(x.astype(np.float64)).inertia_
        for s in range(seeds)
    ]
    return float(np.median(ours)), float(np.median(sk))


@pytest.mark.slow
def test_kmeans_plus_plus_quality_digits():
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    ours, sk = median_inertias(x, 10, "kmeans_plus_plus")
    assert ours <= 1.01 * sk, (ours, sk)


@pytest.fixture(scope="module")
def blobs50():
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=2500, centers=50, n_features=2, random_state=0)
    return x.astype(np.float32)


@pytest.mark.slow
def test_kmeans_plus_plus_quality_50_blobs(blobs50):
    ours, sk = median_inertias(blobs50, 50, "kmeans_plus_plus")
    assert ours <= 1.01 * sk, (ours, sk)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "kmc2", "kmeans_parallel"])
def test_other_methods_sensible_quality(blobs50, method):
    """Lloyd from each method's centers (fit with an explicit init: one compiled fit
    program for all methods) ends near scikit-learn's k-means++ quality."""
    from sklearn.cluster import KMeans

    ours = []
    for s in range(3):
        c0 = jaxkmeans.init_centers(jax.random.PRNGKey(s), blobs50, 50, method)
        ours.append(float(jaxkmeans.fit(KEY, blobs50, 50, init=c0).loss))
    sk = [KMeans(n_clusters=50, n_init=1, random_state=s).fit(blobs50).inertia_ for s in range(3)]
    limit = 1.3 if method == "random" else 1.1
    assert np.median(ours) <= limit * np.median(sk), (ours, sk)


@pytest.mark.parametrize("method", ["kmeans_plus_plus", "kmc2"])
@pytest.mark.parametrize("n", [10, 70])
def test_padding_to_the_size_bucket_keeps_the_draws(method, n):
    """The sampler's blocks follow bucket_rows(n), so the same rows padded to their
    bucket by zero-weight copies of row 0 (as fit pads them) draw the same centers."""
    from jaxkmeans._validation import bucket_rows

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    k = 4
    m = bucket_rows(n)
    xpad = np.concatenate([x, np.repeat(x[:1], m - n, axis=0)])
    wpad = np.concatenate([np.ones(n, np.float32), np.zeros(m - n, np.float32)])
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        a = jaxkmeans.init_centers(key, x, k, method)
        b = jaxkmeans.init_centers(key, xpad, k, method, sample_weight=wpad)
        np.testing.assert_array_equal(a, b)
        fa = jaxkmeans.fit(key, x, k, init=method, pad_rows=False)
        fb = jaxkmeans.fit(key, x, k, init=method, pad_rows=True)
        np.testing.assert_array_equal(fa.centers, fb.centers)
