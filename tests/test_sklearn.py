"""jaxkmeans.sklearn: scikit-learn's estimator checks, parity with scikit-learn's KMeans
and MiniBatchKMeans, Pipeline / GridSearchCV / pickle, and mini-batch steps equal to
jaxkmeans.minibatch_step.

Compiling is most of the cost here: small problems are padded to one shape, so tests use
small data and the cluster counts scikit-learn's checks use (1, 2, 3, 8) where they can.
"""

import os
import pickle
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import jaxkmeans
from jaxkmeans import sklearn as jsk
from jaxkmeans.sklearn import KMeans, MiniBatchKMeans

ESTIMATORS = (KMeans, MiniBatchKMeans)


@pytest.fixture(scope="module")
def blobs3():
    """150 points in 3 well separated 2-D blobs (float64), with their true labels."""
    return make_blobs(n_samples=150, centers=3, cluster_std=0.6, random_state=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits().data


# ------------------------------------------------------------------ scikit-learn checks


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([KMeans(), MiniBatchKMeans()])
def test_sklearn_check_estimator(estimator, check):
    """Every check of sklearn.utils.estimator_checks, none expected to fail."""
    check(estimator)


def test_import_jaxkmeans_does_not_import_sklearn():
    code = (
        "import sys, jaxkmeans; "
        "bad = [m for m in sys.modules if m == 'sklearn' or m.startswith('sklearn.') "
        "or m == 'jaxkmeans.sklearn']; "
        "assert not bad, bad"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------- parity with scikit-learn


def test_same_init_gives_sklearn_iterates(blobs3):
    """From the same starting centers, Lloyd's iterates, the stopping iteration (tol scaled
    by the mean variance, checked on the center shift) and the labels are scikit-learn's."""
    X, _ = blobs3
    init = X[[0, 1, 2]]
    for tol in (0.0, 1e-4, 1e-1):
        ours = KMeans(3, init=init, n_init=1, tol=tol).fit(X)
        ref = SkKMeans(3, init=init, n_init=1, tol=tol).fit(X)
        assert ours.n_iter_ == ref.n_iter_, tol
        np.testing.assert_array_equal(ours.labels_, ref.labels_)
        np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-5)
        np.testing.assert_allclose(ours.inertia_, ref.inertia_, rtol=1e-5)


def test_tol_stops_on_scaled_center_shift(blobs3):
    """A huge tol stops after the first iteration; tol=0 runs to a fixed point."""
    X, _ = blobs3
    init = X[[0, 1, 2]]
    assert KMeans(3, init=init, tol=1e6).fit(X).n_iter_ == 1
    fixed = KMeans(3, init=init, tol=0.0).fit(X)
    again = KMeans(3, init=fixed.cluster_centers_, tol=0.0).fit(X)
    assert again.n_iter_ == 1
    np.testing.assert_array_equal(again.cluster_centers_, fixed.cluster_centers_)


@pytest.mark.slow
def test_digits_inertia_within_1pct_of_sklearn(digits):
    """k=10 on load_digits, n_init=4, 3 seeds: medians and bests within 1%."""
    ours = [KMeans(10, n_init=4, random_state=s).fit(digits).inertia_ for s in range(3)]
    ref = [SkKMeans(10, n_init=4, random_state=s).fit(digits).inertia_ for s in range(3)]
    assert np.median(ours) / np.median(ref) < 1.01
    assert min(ours) / min(ref) < 1.01
    # and not suspiciously better either (same objective, same data)
    assert np.median(ours) / np.median(ref) > 0.99


@pytest.mark.slow
def test_minibatch_digits_inertia_close_to_sklearn(digits):
    """MiniBatchKMeans on load_digits (k=10, batch 1024): median inertia over 3 seeds
    within 5% of scikit-learn's (reassignment_ratio=0 on both sides)."""
    ours = [MiniBatchKMeans(10, random_state=s).fit(digits).inertia_ for s in range(3)]
    ref = [
        SkMiniBatchKMeans(10, random_state=s, reassignment_ratio=0.0).fit(digits).inertia_
        for s in range(3)
    ]
    assert np.median(ours) / np.median(ref) < 1.05


# ------------------------------------------------------------------------ mini-batch


def test_partial_fit_is_minibatch_step(blobs3):
    X, _ = blobs3
    init = X[:8]
    est = MiniBatchKMeans(8, init=init)
    # float64 input is computed in float64 (64-bit mode on for the drop-in's calls).
    with jax.enable_x64(True):
        state = jaxkmeans.KMeansState.create(init)
    rng = np.random.default_rng(0)
    for i in range(4):
        batch = X[rng.choice(len(X), 30, replace=False)]
        w = rng.uniform(0.5, 2.0, size=30)
        est.partial_fit(batch, sample_weight=w)
        with jax.enable_x64(True):
            state, _ = jaxkmeans.minibatch_step(state, batch, sample_weight=w)
        assert est.cluster_centers_.dtype == np.float64
        assert est.n_steps_ == i + 1
        np.testing.assert_array_equal(est.cluster_centers_, np.asarray(state.centers, np.float64))
        np.testing.assert_array_equal(est._state.counts, state.counts)
        np.testing.assert_array_equal(est.labels_, est.predict(batch))


def test_minibatch_fit_continues_with_partial_fit(blobs3):
    X, _ = blobs3
    est = MiniBatchKMeans(3, random_state=0).fit(X)
    state = est._state
    est.partial_fit(X[:40])
    with jax.enable_x64(True):  # float64 input: the drop-in computes in float64
        expected, _ = jaxkmeans.minibatch_step(state, X[:40])
    np.testing.assert_array_equal(est.cluster_centers_, np.asarray(expected.centers, np.float64))
    assert est.n_steps_ > 1


def test_minibatch_stopping_rules(blobs3):
    X, _ = blobs3
    # no early stopping: max_iter * n // batch steps exactly
    est = MiniBatchKMeans(3, batch_size=50, max_iter=4, max_no_improvement=None, random_state=0)
    est.fit(X)
    assert est.n_steps_ == 4 * 150 // 50
    assert est.n_iter_ == 4
    # a huge tol stops at the second step (the first is ignored, as in scikit-learn)
    est = MiniBatchKMeans(3, batch_size=50, tol=1e6, random_state=0).fit(X)
    assert est.n_steps_ == 2
    # compute_labels=False: no labels_, inertia_ is the smoothed estimate
    est = MiniBatchKMeans(3, compute_labels=False, random_state=0).fit(X)
    assert not hasattr(est, "labels_")
    assert np.isfinite(est.inertia_) and est.inertia_ > 0


def test_reassignment_ratio_moves_empty_center(blobs3):
    """A center no point is near has count 0: with reassignment_ratio > 0 it is moved to a
    row of the batch (scikit-learn's rule); with 0 it stays."""
    X, _ = blobs3
    init = np.concatenate([X[:2], [[1e3, 1e3]]])
    stays = MiniBatchKMeans(3, init=init).partial_fit(X[:50])
    np.testing.assert_array_equal(stays.cluster_centers_[2], [1e3, 1e3])
    moved = MiniBatchKMeans(3, init=init, reassignment_ratio=0.1, random_state=0)
    moved.partial_fit(X[:50])
    assert any(np.allclose(moved.cluster_centers_[2], row, atol=1e-5) for row in X[:50])


@pytest.mark.slow
def test_reassignment_ratio_in_fit(blobs3):
    X, _ = blobs3
    init = np.concatenate([X[:2], [[1e3, 1e3]]])
    stuck = MiniBatchKMeans(3, init=init, batch_size=50, random_state=0).fit(X)
    assert np.abs(stuck.cluster_centers_).max() == 1e3
    fitted = MiniBatchKMeans(3, init=init, batch_size=50, reassignment_ratio=0.1, random_state=0)
    fitted.fit(X)
    assert np.abs(fitted.cluster_centers_).max() < 100
    assert fitted.inertia_ < stuck.inertia_


# --------------------------------------------------------------- scikit-learn plumbing


def test_pipeline_and_grid_search(blobs3):
    X, y = blobs3
    pipe = make_pipeline(StandardScaler(), KMeans(3, random_state=0)).fit(X)
    labels = pipe.predict(X)
    assert len(set(zip(labels, y, strict=True))) == 3  # the 3 blobs recovered exactly
    assert pipe.transform(X).shape == (150, 3)
    search = GridSearchCV(KMeans(random_state=0), {"n_clusters": [2, 3, 8]}, cv=3).fit(X)
    assert search.best_params_ == {"n_clusters": 8}  # score = -inertia favours large k
    assert search.predict(X).shape == (150,)
    search = GridSearchCV(MiniBatchKMeans(random_state=0), {"n_clusters": [3, 8]}, cv=3).fit(X)
    assert search.best_estimator_.cluster_centers_.shape == (8, 2)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_pickle_round_trip(cls, blobs3):
    X, _ = blobs3
    est = cls(3, random_state=0).fit(X)
    back = pickle.loads(pickle.dumps(est))
    for name in ("cluster_centers_", "labels_", "inertia_", "n_iter_", "n_features_in_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(est, name))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    np.testing.assert_array_equal(back.transform(X), est.transform(X))
    assert back.get_params() == est.get_params()
    if cls is MiniBatchKMeans:
        est.partial_fit(X[:30])
        back.partial_fit(X[:30])
        np.testing.assert_array_equal(back.cluster_centers_, est.cluster_centers_)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_sample_weight_is_repetition_and_row_order_does_not_matter(cls):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    sw = rng.integers(0, 4, size=40)
    weighted = cls(3, random_state=0).fit(X, sample_weight=sw)
    repeated = np.repeat(X, sw, axis=0)
    shuffled = cls(3, random_state=0).fit(repeated[rng.permutation(len(repeated))])
    np.testing.assert_array_equal(weighted.cluster_centers_, shuffled.cluster_centers_)
    # inertia_ is summed over the rows as given (another order): equal up to rounding
    np.testing.assert_allclose(weighted.inertia_, shuffled.inertia_, rtol=1e-6)


def test_distinct_rows_hash_collision_falls_back_to_exact(monkeypatch, blobs3):
    X, _ = blobs3
    expected = KMeans(3, random_state=0).fit(X).cluster_centers_
    x = np.array([[1.0], [2.0], [1.0], [3.0], [-0.0], [0.0]], np.float32)
    w = np.array([1.0, 2.0, 3.0, 0.0, 1.0, 1.0], np.float32)
    # the real keys: equal rows (-0.0 == 0.0) share a key, different rows do not
    keys = jsk._row_keys(x)
    assert keys.dtype == np.uint64 and keys.shape == (6,)
    assert keys[0] == keys[2] and keys[4] == keys[5]
    assert len(set(keys[[0, 1, 3, 4]].tolist())) == 4
    expected_rows = [(0.0, 2.0), (1.0, 4.0), (2.0, 2.0)]  # weight-0 row dropped
    xu, wu = jsk._distinct_rows(x, w)
    assert sorted(zip(xu.ravel().tolist(), wu.tolist(), strict=True)) == expected_rows
    # every row collides: only the exact fallback can tell them apart
    monkeypatch.setattr(jsk, "_row_keys", lambda x: np.zeros(len(x), np.uint64))
    xu, wu = jsk._distinct_rows(x, w)
    assert sorted(zip(xu.ravel().tolist(), wu.tolist(), strict=True)) == expected_rows
    assert not np.signbit(xu).any()
    centers = KMeans(3, random_state=0).fit(X).cluster_centers_  # another row order
    np.testing.assert_allclose(np.sort(centers, axis=0), np.sort(expected, axis=0), atol=1e-5)


@pytest.mark.parametrize(
    ("cls", "init", "n_init", "runs"),
    [
        (KMeans, "k-means++", "auto", 1),
        (KMeans, "random", "auto", 10),
        (KMeans, "callable", "auto", 10),
        (KMeans, "array", "auto", 1),
        (KMeans, "random", 2, 2),
        (MiniBatchKMeans, "random", "auto", 3),
        (MiniBatchKMeans, "k-means++", "auto", 1),
    ],
)
def test_n_init_auto(cls, init, n_init, runs, blobs3, monkeypatch):
    X, _ = blobs3
    if init == "array":
        init = X[:3]
    elif init == "callable":
        init = lambda X, k, random_state: X[random_state.choice(len(X), k, replace=False)]  # noqa: E731
    calls = []
    # KMeans runs are its Lloyd loops (an init method runs inside the loop's program),
    # MiniBatchKMeans runs its initializations.
    owner, name = (jsk, "_lloyd_program") if cls is KMeans else (jsk._BaseKMeans, "_init_run")
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    cls(3, init=init, n_init=n_init, random_state=0).fit(X)
    assert len(calls) == runs


def test_explicit_init_array_warns_for_n_init(blobs3):
    X, _ = blobs3
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        KMeans(3, init=X[:3], n_init=5).fit(X)


def test_callable_init_gets_sklearn_arguments(blobs3):
    X, _ = blobs3
    seen = {}

    def init(data, n_clusters, random_state):
        seen.update(shape=data.shape, k=n_clusters, rs=random_state)
        return data[:n_clusters]

    est = KMeans(3, init=init, n_init=1, max_iter=1).fit(X)
    assert seen["shape"] == X.shape and seen["k"] == 3
    assert isinstance(seen["rs"], np.random.RandomState)
    expected = SkKMeans(3, init=X[:3], n_init=1, max_iter=1).fit(X)
    np.testing.assert_allclose(est.cluster_centers_, expected.cluster_centers_, atol=1e-5)
    with pytest.raises(ValueError, match="does not match the number of clusters"):
        KMeans(3, init=lambda X, k, random_state: X[:2], n_init=1).fit(X)


def test_random_state_determinism(blobs3):
    X, _ = blobs3
    a = KMeans(3, init="random", random_state=7).fit(X)
    b = KMeans(3, init="random", random_state=7).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    c = KMeans(3, init="random", random_state=np.random.RandomState(7)).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, c.cluster_centers_)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_dtypes_transform_score(cls, blobs3):
    X, _ = blobs3
    for dtype, expected in ((np.float32, np.float32), (np.float64, np.float64), (int, np.float64)):
        Xc = (X * 10).astype(dtype)
        est = cls(3, random_state=0).fit(Xc)
        assert est.cluster_centers_.dtype == expected
        assert est.transform(Xc).dtype == expected
        assert est.labels_.dtype == np.int32
    est = cls(3, random_state=0)
    dist = est.fit_transform(X)
    c = est.cluster_centers_
    expected = np.sqrt(((X[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(est.predict(X), expected.argmin(axis=1))
    np.testing.assert_allclose(est.score(X), -est.inertia_, rtol=1e-6)
    np.testing.assert_allclose(est.inertia_, (expected.min(axis=1) ** 2).sum(), rtol=1e-5)
    np.testing.assert_array_equal(est.fit_predict(X), est.labels_)
    assert list(est.get_feature_names_out()) == [f"{cls.__name__.lower()}{i}" for i in range(3)]


def test_far_from_origin_data():
    X, _ = make_blobs(n_samples=150, centers=3, cluster_std=0.5, random_state=3)
    X = X + 1e5
    est = KMeans(3, random_state=0).fit(X)
    ref = SkKMeans(3, random_state=0, n_init=1).fit(X)
    np.testing.assert_allclose(est.inertia_, ref.inertia_, rtol=1e-3)
    assert est.transform(X).min() >= 0


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_fewer_distinct_points_than_clusters(cls):
    X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]] * 4)
    with pytest.warns(ConvergenceWarning, match="Number of distinct clusters"):
        est = cls(8, random_state=0).fit(X)
    assert est.inertia_ == 0.0
    assert sorted(map(tuple, np.unique(est.cluster_centers_, axis=0))) == sorted(map(tuple, X[:3]))
    np.testing.assert_array_equal(est.cluster_centers_[est.labels_], X)


def test_unfitted_raises_not_fitted(blobs3):
    X, _ = blobs3
    for cls in ESTIMATORS:
        with pytest.raises(NotFittedError):
            cls().predict(X)


@pytest.mark.parametrize(
    ("cls", "params", "error", "match"),
    [
        (KMeans, {"n_clusters": 0}, ValueError, "n_clusters"),
        (KMeans, {"n_clusters": 2.5}, TypeError, "n_clusters"),
        (KMeans, {"n_init": 0}, ValueError, "n_init"),
        (KMeans, {"n_init": "many"}, TypeError, "n_init"),
        (KMeans, {"max_iter": 0}, ValueError, "max_iter"),
        (KMeans, {"tol": -1.0}, ValueError, "tol"),
        (KMeans, {"init": "kmeans"}, ValueError, "init"),
        (KMeans, {"init": 3}, TypeError, "init"),
        (KMeans, {"init": np.zeros((3, 5))}, ValueError, "number of features"),
        (KMeans, {"algorithm": "full"}, ValueError, "algorithm"),
        (KMeans, {"n_clusters": 500}, ValueError, "n_samples=150 should be >= n_clusters=500"),
        (MiniBatchKMeans, {"batch_size": 0}, ValueError, "batch_size"),
        (MiniBatchKMeans, {"reassignment_ratio": -0.1}, ValueError, "reassignment_ratio"),
        (MiniBatchKMeans, {"max_no_improvement": -1}, ValueError, "max_no_improvement"),
        (MiniBatchKMeans, {"init_size": 0}, ValueError, "init_size"),
    ],
)
def test_bad_parameters(cls, params, error, match, blobs3):
    X, _ = blobs3
    est = cls(**{"n_clusters": 3, **params})  # __init__ only stores
    with pytest.raises(error, match=match):
        est.fit(X)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_bad_input(cls, blobs3):
    X, _ = blobs3
    scipy_sparse = pytest.importorskip("scipy.sparse")
    # Sparse input is accepted (issue 16): the same model as the dense rows.
    sparse_fit = cls(3, random_state=0).fit(scipy_sparse.csr_matrix(X))
    np.testing.assert_array_equal(sparse_fit.labels_, cls(3, random_state=0).fit(X).labels_)
    with pytest.raises(TypeError, match="[Ss]parse"):
        cls(3).fit(scipy_sparse.csr_matrix(X), sample_weight=scipy_sparse.csr_matrix(X[:, :1]))
    with pytest.raises(ValueError, match="[Nn]egative"):
        cls(3).fit(X, sample_weight=-np.ones(len(X)))
    with pytest.raises(ValueError, match="non-zero|positive weight"):
        cls(3).fit(X, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="NaN"):
        cls(3).fit(np.where(np.eye(150, 2) > 0, np.nan, X))


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    X, _ = make_blobs(n_samples=60, centers=3, random_state=0)
    df = pd.DataFrame(X, columns=["a", "b"])
    est = KMeans(3, random_state=0).fit(df)
    assert list(est.feature_names_in_) == ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.predict(df)


def test_n_init_resolved_attribute():
    """`_n_init` records the runs done, as scikit-learn's fitted estimator does (issue 16)."""
    X = np.random.RandomState(0).normal(size=(60, 2)).astype(np.float32)
    assert KMeans(3, random_state=0).fit(X)._n_init == 1  # "auto" with k-means++
    assert KMeans(3, init="random", random_state=0).fit(X)._n_init == 10
    assert MiniBatchKMeans(3, init="random", random_state=0).fit(X)._n_init == 3
    assert KMeans(3, n_init=2, random_state=0).fit(X)._n_init == 2


@pytest.mark.parametrize("Estimator", [KMeans, MiniBatchKMeans])
def test_transform_of_centers_has_exact_zero_diagonal(Estimator):
    """A row equal to a center is at distance exactly 0 (issue 16, scikit-learn's
    test_transform); the rest still matches pairwise distances."""
    from sklearn.metrics import pairwise_distances

    X, _ = make_blobs(n_samples=100, centers=3, n_features=5, random_state=0)
    km = Estimator(n_clusters=3, random_state=0).fit(X)
    Xt = km.transform(km.cluster_centers_)
    np.testing.assert_array_equal(Xt.diagonal(), np.zeros(3))
    np.testing.assert_allclose(Xt, pairwise_distances(km.cluster_centers_), rtol=1e-6)
    expected = pairwise_distances(X, km.cluster_centers_)
    np.testing.assert_allclose(km.transform(X), expected, rtol=1e-5)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_init_centroids_uses_sample_weight(init):
    """`_init_centroids` (scikit-learn's hook) weights its draws: zero-weight rows are
    never centers, and weights change the result (issue 16)."""
    X, _ = make_blobs(n_samples=100, n_features=5, centers=5, random_state=0)
    sw = np.random.RandomState(0).uniform(size=100)
    sw[::2] = 0
    km = KMeans()
    c = km._init_centroids(X, None, init, np.random.RandomState(0), sw, n_centroids=10)
    assert c.shape == (10, 5) and c.dtype == X.dtype
    from sklearn.metrics.pairwise import euclidean_distances

    assert not np.any(np.isclose(euclidean_distances(X[::2], c), 0))
    c1 = km._init_centroids(X, None, init, np.random.RandomState(0), np.ones(100), n_centroids=10)
    assert not np.allclose(c, c1)


def test_minibatch_init_size_attribute():
    """`_init_size` as scikit-learn sets it: 3 * batch_size, at least 3 * n_clusters,
    at most n_samples (issue 16)."""
    X = np.random.RandomState(0).normal(size=(100, 2))
    assert MiniBatchKMeans(10, batch_size=5, n_init=1).fit(X)._init_size == 15
    assert MiniBatchKMeans(10, batch_size=1, n_init=1).fit(X)._init_size == 30
    assert MiniBatchKMeans(10, batch_size=5, n_init=1, init_size=101).fit(X)._init_size == 100


@pytest.mark.parametrize("tol", [1e-2, 0])
def test_kmeans_verbose_messages(tol, capsys):
    """scikit-learn's verbose wording for KMeans (issue 16): initialization, the last
    iteration's inertia, and why it stopped."""
    X = np.random.RandomState(0).normal(size=(2000, 10))
    KMeans(8, random_state=42, init="random", n_init=1, tol=tol, verbose=1).fit(X)
    out = capsys.readouterr().out
    assert "Initialization complete" in out
    assert re.search(r"Iteration [0-9]+, inertia", out)
    if tol == 0:
        assert "strict convergence" in out
    else:
        assert re.search(r"center shift .* within tolerance", out)


@pytest.mark.parametrize("tol, max_no_improvement", [(1e-4, None), (0, 10)])
def test_minibatch_verbose_convergence_reason(tol, max_no_improvement, capsys):
    X, _, centers = make_blobs(centers=3, random_state=0, return_centers=True)
    km = MiniBatchKMeans(
        3,
        init=centers,
        batch_size=20,
        tol=tol,
        random_state=0,
        max_iter=10,
        n_init=1,
        verbose=1,
        max_no_improvement=max_no_improvement,
    ).fit(X)
    out = capsys.readouterr().out
    assert 1 < km.n_iter_ < 10
    if max_no_improvement is None:
        assert "Converged (small centers change)" in out
    else:
        assert "Converged (lack of improvement in inertia)" in out


def test_elkan_single_cluster_warns():
    """As scikit-learn: Elkan with one cluster warns and runs Lloyd (issue 16)."""
    X = np.random.RandomState(0).normal(size=(20, 2))
    with pytest.warns(RuntimeWarning, match="algorithm='elkan' doesn't make sense"):
        KMeans(n_clusters=1, algorithm="elkan").fit(X)


def test_large_data_is_placed_unpadded_with_the_same_result(monkeypatch):
    """Beyond PAD_LIMIT_ELEMENTS the drop-in places its distinct rows without padding
    them to their size bucket (up to 1/8 more rows in every pass); the fit is the same."""
    import jaxkmeans.sklearn as dropin
    from jaxkmeans import _validation

    X = np.random.default_rng(3).normal(size=(3001, 4)).astype(np.float32)

    def fit():
        shapes = []
        placed = dropin._placed

        def spy(*args, **kwargs):
            out = placed(*args, **kwargs)
            shapes.append(out[0].shape)
            return out

        monkeypatch.setattr(dropin, "_placed", spy)
        km = dropin.KMeans(5, n_init=1, max_iter=20, random_state=0).fit(X)
        monkeypatch.setattr(dropin, "_placed", placed)
        return km, shapes

    padded, shapes = fit()
    assert shapes == [(_validation.bucket_rows(3001), 32)]  # 32: the small column bucket
    monkeypatch.setattr(_validation, "PAD_LIMIT_ELEMENTS", 3001 * 32)
    exact, shapes = fit()
    assert shapes == [(3001, 32)]
    np.testing.assert_array_equal(exact.cluster_centers_, padded.cluster_centers_)
    np.testing.assert_array_equal(exact.labels_, padded.labels_)
    assert exact.inertia_ == padded.inertia_ and exact.n_iter_ == padded.n_iter_


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 2, 2**32 - 1])
@pytest.mark.parametrize("num", [None, 1, 3, 10])
def test_host_keys_are_jax_keys(seed, num):
    """The drop-in's keys, made on the host (no program compiled for them), have the
    bits of jax.random.PRNGKey and jax.random.split."""
    from jaxkmeans.sklearn import _split_keys

    key = jax.random.PRNGKey(seed)
    want = key if num is None else jax.random.split(key, num)
    got = _split_keys(seed, num)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_a_first_fit_compiles_no_program_for_keys_scalars_or_final_labels():
    """The labels and distances of the drop-in's fit come from its last pass (no
    assign after it), and its keys and scalars from the host."""
    code = """
import logging, numpy as np, jax
jax.config.update("jax_log_compiles", True)
names = []
class H(logging.Handler):
    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            names.append(msg.split()[1])
logging.getLogger("jax").addHandler(H())
from jaxkmeans.sklearn import KMeans
X = np.random.default_rng(0).normal(size=(3000, 5))
km = KMeans(4, n_init=2, random_state=0).fit(X)
print(sorted(set(names)))
"""
    env = dict(os.environ, JAXKMEANS_COMPILATION_CACHE="0")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = out.stdout.strip()
    for unwanted in ("threefry", "squeeze", "convert_element_type", "nearest_impl", "stage"):
        assert unwanted not in names, names


def test_host_row_hash_is_the_device_hash():
    """Small dense data is hashed on the host: the same keys as the compiled hash
    (so small and large, dense and sparse data order their distinct rows alike)."""
    from jaxkmeans.kernels import sparse
    from jaxkmeans.sklearn import _host_dense_identity

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0.0
    x[5, :] = -0.0
    x[6, 2] = -0.0
    x[7] = np.float32([1e38, -1e-38, 3.0, 0, 0, 0, 1])
    want = np.asarray(jax.jit(sparse.dense_identity)(x))
    np.testing.assert_array_equal(_host_dense_identity(x), want)
