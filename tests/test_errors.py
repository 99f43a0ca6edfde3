"""The error table: bad input gets a ValueError / TypeError naming the argument, the
expectation and the value, raised on the host before anything is compiled."""

import jax
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import KMeansState

KEY = jax.random.PRNGKey(0)
X = np.arange(40, dtype=np.float32).reshape(20, 2)
C = X[:3]


def with_nan():
    x = X.copy()
    x[3, 1] = np.nan
    return x


def with_inf():
    x = X.copy()
    x[0, 0] = -np.inf
    return x


DUPS = np.repeat(X[:2], 10, axis=0)  # 20 rows, 2 distinct points

# (call, exception, message regex)
CASES = {
    # keys
    "int key (fit)": (lambda: jaxkmeans.fit(0, X, 3), TypeError, r"`key`.*PRNG key.*got int 0"),
    "float key (init_centers)": (
        lambda: jaxkmeans.init_centers(np.zeros(2, np.float32), X, 3),
        TypeError,
        r"`key`.*PRNG key.*got ndarray",
    ),
    # data values
    "nan in x (fit)": (lambda: jaxkmeans.fit(KEY, with_nan(), 3), ValueError, r"`x`.*finite"),
    "inf in x (assign)": (lambda: jaxkmeans.assign(with_inf(), C), ValueError, r"`x`.*finite"),
    "nan in x (pairwise)": (
        lambda: jaxkmeans.pairwise_distances(with_nan(), C),
        ValueError,
        r"`x`.*NaN or inf",
    ),
    "nan in x (lloyd_step)": (
        lambda: jaxkmeans.lloyd_step(with_nan(), C),
        ValueError,
        r"`x`.*finite",
    ),
    "nan in x (init_centers)": (
        lambda: jaxkmeans.init_centers(KEY, with_nan(), 3),
        ValueError,
        r"`x`.*finite",
    ),
    "nan in batch": (
        lambda: jaxkmeans.minibatch_step(KeyState(), with_nan()),
        ValueError,
        r"`batch`.*finite",
    ),
    "nan in centers": (
        lambda: jaxkmeans.assign(X, with_nan()[3:6]),
        ValueError,
        r"`centers`.*finite",
    ),
    "float64 overflow to float32": (
        lambda: jaxkmeans.assign(np.full((3, 2), 1e300), C),
        ValueError,
        r"`x`.*finite",
    ),
    "inf in float16 x (computed in float32)": (
        lambda: jaxkmeans.assign(with_inf().astype(np.float16), C),
        ValueError,
        r"`x`.*finite",
    ),
    "inf in bfloat16 centers": (
        lambda: jaxkmeans.assign(X, with_inf()[:3].astype(jax.numpy.bfloat16)),
        ValueError,
        r"`centers`.*finite",
    ),
    # rank / shape / type
    "x 1-D": (lambda: jaxkmeans.fit(KEY, X[:, 0], 3), ValueError, r"`x`.*2-D.*\(20,\)"),
    "x 3-D": (lambda: jaxkmeans.assign(X[None], C), ValueError, r"`x`.*2-D.*\(1, 20, 2\)"),
    "x scalar": (lambda: jaxkmeans.inertia(1.0, C), ValueError, r"`x`.*2-D"),
    "x empty": (lambda: jaxkmeans.assign(X[:0], C), ValueError, r"`x`.*at least one row"),
    "x no columns": (
        lambda: jaxkmeans.assign(np.zeros((3, 0)), C),
        ValueError,
        r"`x`.*at least one row and one column",
    ),
    "x None": (lambda: jaxkmeans.fit(KEY, None, 3), TypeError, r"`x`.*got None"),
    "x string": (lambda: jaxkmeans.assign("abc", C), TypeError, r"`x`.*got str"),
    "x ragged": (lambda: jaxkmeans.assign([[1.0, 2.0], [3.0]], C), ValueError, r"`x`"),
    "x complex": (
        lambda: jaxkmeans.assign(X.astype(np.complex64), C),
        TypeError,
        r"`x`.*real numeric",
    ),
    "centers 1-D": (lambda: jaxkmeans.assign(X, C[0]), ValueError, r"`centers`.*2-D"),
    "mismatched d (assign)": (
        lambda: jaxkmeans.assign(X, np.zeros((3, 5))),
        ValueError,
        r"`centers` must have 2 columns.*\(3, 5\)",
    ),
    "mismatched d (pairwise)": (
        lambda: jaxkmeans.pairwise_distances(X, np.zeros((3, 1))),
        ValueError,
        r"`centers` must have 2 columns",
    ),
    "mismatched d (lloyd_step)": (
        lambda: jaxkmeans.lloyd_step(X, np.zeros((3, 3))),
        ValueError,
        r"`centers` must have 2 columns",
    ),
    "mismatched d (minibatch)": (
        lambda: jaxkmeans.minibatch_step(KeyState(), np.zeros((4, 3))),
        ValueError,
        r"`batch` must have 2 columns.*\(4, 3\)",
    ),
    # num_clusters
    "k = 0": (lambda: jaxkmeans.fit(KEY, X, 0), ValueError, r"`num_clusters`.*>= 1.*got 0"),
    "k < 0 (init)": (
        lambda: jaxkmeans.init_centers(KEY, X, -2),
        ValueError,
        r"`num_clusters`.*got -2",
    ),
    "k float": (lambda: jaxkmeans.fit(KEY, X, 2.5), TypeError, r"`num_clusters`.*int.*2.5"),
    "k bool": (lambda: jaxkmeans.fit(KEY, X, True), TypeError, r"`num_clusters`"),
    "k > n (fit)": (
        lambda: jaxkmeans.fit(KEY, X, 21),
        ValueError,
        r"`num_clusters` must be <= the number of samples.*21",
    ),
    "k > n (init)": (
        lambda: jaxkmeans.init_centers(KEY, X, 25),
        ValueError,
        r"`num_clusters` must be <= the number of samples",
    ),
    "fewer distinct points than k (fit)": (
        lambda: jaxkmeans.fit(KEY, DUPS, 3),
        ValueError,
        r"`x` must have at least num_clusters=3 distinct points.*got 2",
    ),
    "fewer distinct points than k (init)": (
        lambda: jaxkmeans.init_centers(KEY, DUPS, 3, "random"),
        ValueError,
        r"at least num_clusters=3 distinct points.*got 2",
    ),
    "fewer distinct points with positive weight": (
        lambda: jaxkmeans.fit(KEY, X, 3, sample_weight=np.r_[1.0, 1.0, np.zeros(18)]),
        ValueError,
        r"distinct points \(with positive weight\).*got 2",
    ),
    "fewer distinct directions (cosine)": (
        lambda: jaxkmeans.fit(KEY, np.r_[X[1:2], 2 * X[1:2], 3 * X[1:2]], 2, metric="cosine"),
        ValueError,
        r"distinct non-zero directions.*got 1",
    ),
    # metric / init
    "unknown metric (fit)": (
        lambda: jaxkmeans.fit(KEY, X, 3, metric="manhattan"),
        ValueError,
        r"`metric` must be one of.*squared_euclidean.*cosine.*'manhattan'",
    ),
    "unknown metric (assign)": (
        lambda: jaxkmeans.assign(X, C, "l1"),
        ValueError,
        r"`metric`.*'l1'",
    ),
    "unknown metric (pairwise)": (
        lambda: jaxkmeans.pairwise_distances(X, C, metric=None),
        ValueError,
        r"`metric`.*None",
    ),
    "unknown metric (minibatch)": (
        lambda: jaxkmeans.minibatch_step(KeyState(), X, metric="euclid"),
        ValueError,
        r"`metric`.*'euclid'",
    ),
    "unknown init (fit)": (
        lambda: jaxkmeans.fit(KEY, X, 3, init="k-means++"),
        ValueError,
        r"`init` must be one of.*kmeans_plus_plus.*'k-means\+\+'",
    ),
    "unknown init method (init_centers)": (
        lambda: jaxkmeans.init_centers(KEY, X, 3, "farthest"),
        ValueError,
        r"`method` must be one of.*'farthest'",
    ),
    "unknown init option": (
        lambda: jaxkmeans.init_centers(KEY, X, 3, "kmc2", rounds=3),
        TypeError,
        r"'kmc2' accepts options.*chain_length.*rounds",
    ),
    "bad kmc2 chain_length": (
        lambda: jaxkmeans.init_centers(KEY, X, 3, "kmc2", chain_length=1),
        ValueError,
        r"`chain_length`.*>= 2",
    ),
    "bad oversampling_factor": (
        lambda: jaxkmeans.init_centers(KEY, X, 3, "kmeans_parallel", oversampling_factor=0),
        ValueError,
        r"`oversampling_factor`.*> 0",
    ),
    "bad num_retries": (
        lambda: jaxkmeans.init_centers(KEY, X, 3, num_retries=1.5),
        TypeError,
        r"`num_retries`.*int",
    ),
    # sample_weight
    "sample_weight wrong shape": (
        lambda: jaxkmeans.fit(KEY, X, 3, sample_weight=np.ones(19)),
        ValueError,
        r"`sample_weight` must have shape \(20,\).*\(19,\)",
    ),
    "sample_weight 2-D": (
        lambda: jaxkmeans.inertia(X, C, sample_weight=np.ones((20, 1))),
        ValueError,
        r"`sample_weight` must have shape \(20,\)",
    ),
    "sample_weight negative": (
        lambda: jaxkmeans.fit(KEY, X, 3, sample_weight=np.r_[-1.0, np.ones(19)]),
        ValueError,
        r"`sample_weight` must be non-negative",
    ),
    "sample_weight NaN": (
        lambda: jaxkmeans.lloyd_step(X, C, sample_weight=np.r_[np.nan, np.ones(19)]),
        ValueError,
        r"`sample_weight` must contain only finite values",
    ),
    "sample_weight inf": (
        lambda: jaxkmeans.inertia(X, C, sample_weight=np.r_[np.inf, np.ones(19)]),
        ValueError,
        r"`sample_weight`.*finite",
    ),
    "sample_weight all zero": (
        lambda: jaxkmeans.fit(KEY, X, 3, sample_weight=np.zeros(20)),
        ValueError,
        r"`sample_weight` must have at least one positive weight",
    ),
    "sample_weight strings": (
        lambda: jaxkmeans.fit(KEY, X, 3, sample_weight=np.array(["a"] * 20)),
        TypeError,
        r"`sample_weight` must be a real numeric array",
    ),
    "sample_weight wrong shape (minibatch)": (
        lambda: jaxkmeans.minibatch_step(KeyState(), X, sample_weight=np.ones(3)),
        ValueError,
        r"`sample_weight` must have shape \(20,\)",
    ),
    # chunk_size
    "chunk_size 0": (
        lambda: jaxkmeans.assign(X, C, chunk_size=0),
        ValueError,
        r"`chunk_size` must be an int >= 1; got 0",
    ),
    "chunk_size negative (fit)": (
        lambda: jaxkmeans.fit(KEY, X, 3, chunk_size=-4),
        ValueError,
        r"`chunk_size`.*got -4",
    ),
    "chunk_size float": (
        lambda: jaxkmeans.inertia(X, C, chunk_size=2.5),
        TypeError,
        r"`chunk_size`.*int.*2.5",
    ),
    "chunk_size string (lloyd_step)": (
        lambda: jaxkmeans.lloyd_step(X, C, chunk_size="8"),
        TypeError,
        r"`chunk_size`",
    ),
    # tol / max_iter / n_init / others
    "tol negative": (lambda: jaxkmeans.fit(KEY, X, 3, tol=-1e-3), ValueError, r"`tol`.*>= 0"),
    "tol NaN": (lambda: jaxkmeans.fit(KEY, X, 3, tol=float("nan")), ValueError, r"`tol`.*nan"),
    "tol string": (lambda: jaxkmeans.fit(KEY, X, 3, tol="small"), TypeError, r"`tol`.*'small'"),
    "tol None": (lambda: jaxkmeans.fit(KEY, X, 3, tol=None), TypeError, r"`tol`"),
    "max_iter negative": (
        lambda: jaxkmeans.fit(KEY, X, 3, max_iter=-1),
        ValueError,
        r"`max_iter`.*>= 0",
    ),
    "n_init 0": (lambda: jaxkmeans.fit(KEY, X, 3, n_init=0), ValueError, r"`n_init`.*>= 1"),
    "mesh not a Mesh": (
        lambda: jaxkmeans.fit(KEY, X, 3, mesh="mesh"),
        TypeError,
        r"`mesh` must be None or a jax.sharding.Mesh; got str",
    ),
    "unknown update_method": (
        lambda: jaxkmeans.lloyd_step(X, C, update_method="scatter"),
        ValueError,
        r"`update_method`.*'scatter'",
    ),
    "unknown precision": (
        lambda: jaxkmeans.assign(X, C, precision="float16"),
        ValueError,
        r"`precision`.*'float16'",
    ),
    # init array
    "init array wrong k": (
        lambda: jaxkmeans.fit(KEY, X, 3, init=X[:4]),
        ValueError,
        r"`init` must have num_clusters=3 rows.*\(4, 2\)",
    ),
    "init array wrong d": (
        lambda: jaxkmeans.fit(KEY, X, 3, init=np.zeros((3, 4))),
        ValueError,
        r"`init` must have 2 columns.*\(3, 4\)",
    ),
    "init array 1-D": (
        lambda: jaxkmeans.fit(KEY, X, 3, init=np.zeros(6)),
        ValueError,
        r"`init`.*2-D",
    ),
    "init array with NaN": (
        lambda: jaxkmeans.fit(KEY, X, 3, init=with_nan()[2:5]),
        ValueError,
        r"`init`.*finite",
    ),
    "init_centers array wrong k": (
        lambda: jaxkmeans.init_centers(KEY, X, 3, X[:2]),
        ValueError,
        r"`method` must have num_clusters=3 rows",
    ),
    # minibatch specifics
    "minibatch state not a KMeansState": (
        lambda: jaxkmeans.minibatch_step({"centers": C}, X),
        TypeError,
        r"`state` must be a KMeansState; got dict",
    ),
    "steps_per_iteration 0": (
        lambda: jaxkmeans.minibatch_step(KeyState(), X, steps_per_iteration=0),
        ValueError,
        r"`steps_per_iteration`.*>= 1",
    ),
    "smoothing out of range": (
        lambda: jaxkmeans.minibatch_step(KeyState(), X, smoothing=1.5),
        ValueError,
        r"`smoothing` must be in \(0, 1\]",
    ),
    "KMeansState centers with NaN": (
        lambda: KMeansState.create(with_nan()[2:5]),
        ValueError,
        r"`centers`.*finite",
    ),
}


def KeyState():
    return KMeansState.create(C)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_error_table(case):
    call, exc, match = CASES[case]
    with pytest.raises(exc, match=match):
        call()


def test_not_found_errors_are_plain_exceptions():
    # Every message names its argument in backticks and says what was given.
    with pytest.raises(ValueError) as info:
        jaxkmeans.fit(KEY, X, 0)
    msg = str(info.value)
    assert msg.startswith("`num_clusters`") and msg.endswith("got 0.")


def test_checks_run_before_compilation(monkeypatch):
    """Bad input never reaches the jitted core."""
    from jaxkmeans import fitting

    def boom(*args, **kwargs):
        raise AssertionError("the jitted core was called")

    monkeypatch.setattr(fitting, "fit_impl", boom)
    for case in ("nan in x (fit)", "k > n (fit)", "tol negative", "init array wrong d"):
        call, exc, match = CASES[case]
        with pytest.raises(exc, match=match):
            call()
