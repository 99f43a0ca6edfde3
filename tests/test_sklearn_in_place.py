"""The drop-in reads data beyond its padding limit in place (no copy of the rows).

Up to ``PAD_LIMIT_ELEMENTS`` values, ``jaxkmeans.sklearn`` copies the distinct rows into
their size bucket, in an order of their values (the model does not depend on the row
order). Beyond it, the distinct rows keep the order of their first occurrences, and the
passes read the caller's float32 rows where they are (through an index of the distinct
rows when some were merged or dropped). The tests lower the limit so that small data
takes the large-data path; the result must be bit-identical to the same rows gathered
into a copy.
"""

import numpy as np
import pytest

from jaxkmeans import _validation
from jaxkmeans import sklearn as jsk
from jaxkmeans.kernels import native

pytestmark = pytest.mark.skipif(
    not native.flat_available(), reason="the native flat-row kernels are not built"
)

LIMIT = 1 << 12  # values: every dataset below is "large"


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(_validation, "PAD_LIMIT_ELEMENTS", LIMIT)


def _misaligned(a: np.ndarray, by: int = 16) -> np.ndarray:
    """A C-contiguous copy of `a` starting `by` bytes past a 64-byte boundary (as
    numpy's large arrays do)."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + by
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(5, d))
    return _misaligned((means[rng.integers(0, 5, n)] + rng.normal(size=(n, d))).astype(np.float32))


def _fit(x, w, init, monkeypatch, in_place):
    with monkeypatch.context() as mp:
        if not in_place:
            mp.setattr(jsk, "_in_place", lambda *a: None)
        seen = []
        placed = jsk._placed

        def spy(xu, *args):
            seen.append(type(xu))
            return placed(xu, *args)

        mp.setattr(jsk, "_placed", spy)
        km = jsk.KMeans(6, init=init, n_init=2, max_iter=20, random_state=0)
        km.fit(x, sample_weight=w)
    assert seen == [_validation.InPlaceRows if in_place else np.ndarray]
    return km


@pytest.mark.parametrize("init", ["random", "k-means++"])
@pytest.mark.parametrize("case", ["distinct", "duplicates+weights", "narrow"])
def test_fit_reads_rows_in_place_bit_identical_to_a_gathered_copy(
    small_limit, monkeypatch, init, case
):
    d = 5 if case == "narrow" else 40  # narrow: the copy pads its columns, in place not
    x = _data(3000, d)
    w = None
    if case == "duplicates+weights":
        x[2000:2300] = x[100:400]  # merged with their first occurrences
        w = np.random.default_rng(1).integers(0, 3, 3000).astype(np.float32)
    a = _fit(x, w, init, monkeypatch, in_place=True)
    b = _fit(x, w, init, monkeypatch, in_place=False)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.n_iter_ == b.n_iter_
    if case == "narrow":
        # The copy's 27 zero columns change how the kernel groups a distance's terms.
        np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-7)
    else:
        assert a.inertia_ == b.inertia_


def test_distinct_rows_are_read_where_they_are(small_limit):
    x = _data(3000, 40)
    x[2500:] = x[:500]
    rows = jsk._distinct_dense(x, np.ones(3000, np.float32), in_place=True)
    assert isinstance(rows.xu, _validation.InPlaceRows) and rows.padded is None
    assert rows.xu.flat.unsafe_buffer_pointer() == x.ctypes.data - 16  # no copy
    np.testing.assert_array_equal(np.asarray(rows.xu.index), np.arange(2500))
    np.testing.assert_array_equal(rows.inverse, np.r_[np.arange(2500), np.arange(500)])
    np.testing.assert_array_equal(rows.wu, np.r_[np.full(500, 2.0), np.ones(2000)])
    # every row distinct: no index at all (the rows in their order)
    rows = jsk._distinct_dense(_data(3000, 40), np.ones(3000, np.float32), in_place=True)
    assert rows.xu.index is None and rows.xu.shape == (3000, 40)


def test_large_data_keeps_first_occurrences_small_data_value_order(monkeypatch):
    x = _data(3000, 40)
    x[:, :16] = 0.0  # equal 16-column prefixes: the full row keys tell the rows apart
    x[1500:2000] = x[:500]
    w = np.ones(3000, np.float32)
    first = np.arange(1500).tolist() + list(range(2000, 3000))
    small = jsk._distinct_rows(x, w)[0]
    assert sorted(map(tuple, small.tolist())) == sorted(map(tuple, x[first].tolist()))
    assert not np.array_equal(small, x[first])  # value order
    monkeypatch.setattr(_validation, "PAD_LIMIT_ELEMENTS", LIMIT)
    xu, wu = jsk._distinct_rows(x, w)
    np.testing.assert_array_equal(xu, x[first])
    np.testing.assert_array_equal(wu, np.where(np.arange(2500) < 500, 2.0, 1.0))
    # sparse rows are ordered alike
    sp = pytest.importorskip("scipy.sparse")
    xs, ws = jsk._distinct_sparse_rows(sp.csr_matrix(x), w)
    np.testing.assert_array_equal(xs.toarray(), x[first])
    np.testing.assert_array_equal(ws, wu)


@pytest.mark.parametrize("in_place", [True, False])
def test_large_data_weights_are_repetition_bit_for_bit(small_limit, monkeypatch, in_place):
    """Rows repeated where they are (numpy's repeat keeps first occurrences in order)
    give the model of their integer weights, read in place or copied."""
    x = _data(1500, 40)
    sw = np.random.default_rng(2).integers(0, 4, 1500)
    repeated = _misaligned(np.repeat(x, sw, axis=0))
    a = _fit(x, sw.astype(np.float32), "k-means++", monkeypatch, in_place)
    b = _fit(repeated, None, "k-means++", monkeypatch, in_place)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=1e-6)


def test_negative_zeros_read_in_place_give_the_copy_bits(small_limit, monkeypatch):
    """The copy makes -0.0 into 0.0 and rows read in place keep it: the fitted model
    is the same, bit for bit (sign bits included)."""
    rng = np.random.default_rng(0)
    x = _misaligned(rng.integers(-2, 3, (3000, 40)).astype(np.float32) * 0.5)
    x[x == 0] = -0.0
    x[::7] = 0.0  # equal to rows of -0.0 where those are all zero
    a = _fit(x, None, "random", monkeypatch, in_place=True)
    b = _fit(x, None, "random", monkeypatch, in_place=False)
    np.testing.assert_array_equal(
        a.cluster_centers_.view(np.uint32), b.cluster_centers_.view(np.uint32)
    )
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert (a.inertia_, a.n_iter_) == (b.inertia_, b.n_iter_)
