"""fit reads misaligned host rows in place on CPU (no copy of the data).

XLA's CPU client uses a host buffer without a copy only at 64-byte alignment, and
numpy's large arrays start 16 bytes past a page boundary. ``as_bucketed(...,
in_place=True)`` then views the caller's memory from the 64-byte boundary below its
first row (:class:`jaxkmeans._validation.InPlaceRows`); the native kernels read that
flat buffer at an element offset, and the XLA parts of a fit (origin, initial rows,
relocation candidates) gather or take blocks from it. Results must be bit-identical to
the same fit over an aligned copy.
"""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import _validation, engine, fitting, metrics
from jaxkmeans.initializers import make_init
from jaxkmeans.kernels import native

pytestmark = pytest.mark.skipif(
    not native.flat_available(), reason="the native flat-row kernels are not built"
)


def _misaligned(a: np.ndarray, by: int = 16) -> np.ndarray:
    """A C-contiguous copy of `a` starting `by` bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + by
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _blobs(n: int, d: int, centers: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=8.0, size=(centers, d))
    return (means[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("by", [4, 16, 48])
def test_misaligned_rows_are_viewed_in_place_without_a_copy(by):
    x = _misaligned(_blobs(1000, 7, 3), by)
    rows, w, n = _validation.as_bucketed(x, None, False, in_place=True)
    assert isinstance(rows, _validation.InPlaceRows)
    assert (rows.off, rows.shape, n, w) == (by // 4, x.shape, 1000, None)
    # The device array is the caller's memory, from the 64-byte boundary below it.
    assert rows.flat.unsafe_buffer_pointer() == x.ctypes.data - by
    np.testing.assert_array_equal(rows.host(), x)
    np.testing.assert_array_equal(jax.jit(lambda r: r.dense())(rows), x)
    idx = jnp.array([0, 999, 5], jnp.int32)
    np.testing.assert_array_equal(jax.jit(lambda r, i: r.take(i))(rows, idx), x[[0, 999, 5]])
    np.testing.assert_array_equal(jax.jit(lambda r: r.block(995, 10))(rows), x[990:])


def test_aligned_padded_or_other_dtype_rows_are_not_viewed():
    aligned, _ = _validation.aligned_copy(_blobs(1000, 7, 3))
    assert not isinstance(
        _validation.as_bucketed(aligned, None, False, in_place=True)[0], _validation.InPlaceRows
    )
    x = _misaligned(_blobs(1000, 7, 3))
    assert not isinstance(_validation.as_bucketed(x, None, False)[0], _validation.InPlaceRows)
    padded = _validation.as_bucketed(x, None, True, in_place=True)[0]
    assert not isinstance(padded, _validation.InPlaceRows)
    x64 = _misaligned(_blobs(1000, 7, 3).astype(np.float64))
    with pytest.warns(UserWarning):
        cast = _validation.as_bucketed(x64, None, False, in_place=True)[0]
    assert not isinstance(cast, _validation.InPlaceRows)


def test_nan_in_rows_read_in_place_is_reported_by_name():
    x = _misaligned(_blobs(5000, 4, 3))
    x[4321, 2] = np.nan
    with pytest.raises(ValueError, match=r"`x` must contain only finite values; it has NaN"):
        jaxkmeans.fit(jax.random.key(0), x, 3, pad_rows=False)


@pytest.mark.parametrize("n", [1000, 4096, 10_001])
def test_origin_of_rows_in_place_equals_the_blocked_origin_of_the_array(n):
    x = _misaligned(_blobs(n, 5, 4) * 3.0 + 1000.0)
    rows = _validation.in_place_rows(x)
    w = jnp.asarray(np.random.default_rng(1).uniform(0.0, 2.0, n).astype(np.float32))
    a = jnp.asarray(x)
    for weights in (None, w):
        got = jax.jit(lambda r, v: metrics.frame_origin(r, "squared_euclidean", v))(rows, weights)
        want = jax.jit(
            lambda r, v: metrics.frame_origin(r, "squared_euclidean", v, in_blocks=True)
        )(a, weights)
        np.testing.assert_array_equal(got, want)


def _fit_both(x, k, **kw):
    """fit of misaligned `x` (read in place) and of an aligned device copy."""
    key = jax.random.key(3)
    seen = []
    run = fitting.lloyd_run

    def spy(key, rows, *args, **kwargs):
        seen.append(type(rows))
        return run(key, rows, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fitting, "lloyd_run", spy)
        got = jaxkmeans.fit(key, _misaligned(x), k, pad_rows=False, **kw)
    want = jaxkmeans.fit(key, jnp.asarray(x), k, pad_rows=False, **kw)
    return got, want, seen


def _assert_same(got, want):
    np.testing.assert_array_equal(got.centers, want.centers)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert float(got.loss) == float(want.loss)
    assert int(got.n_iter) == int(want.n_iter)


@pytest.mark.parametrize("init", ["random", "kmeans_plus_plus", "kmeans_parallel", "array"])
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_in_place_is_bit_identical_to_fit_of_an_aligned_copy(init, weighted):
    x = _blobs(9000, 6, 5)
    w = np.random.default_rng(2).uniform(0.0, 3.0, len(x)).astype(np.float32) if weighted else None
    start = x[:5] + 0.5 if init == "array" else init
    got, want, seen = _fit_both(x, 5, init=start, sample_weight=w, max_iter=30)
    assert seen == [_validation.InPlaceRows]
    _assert_same(got, want)


def test_fit_in_place_relocates_empty_clusters_and_counts_copies_like_the_array():
    """Heavily duplicated rows and more clusters than blobs: passes leave clusters
    empty, and the relocation's candidates come from the rows read in place."""
    base = _blobs(40, 3, 2)
    x = np.repeat(base, 150, axis=0)  # 40 distinct points, 150 copies each
    start = np.repeat(x[:1], 12, axis=0) + np.arange(12, dtype=np.float32)[:, None] * 1e-3
    got, want, seen = _fit_both(x, 12, init=start, max_iter=20)
    assert seen == [_validation.InPlaceRows]
    _assert_same(got, want)
    assert np.all(np.bincount(np.asarray(got.labels), minlength=12) > 0)


def test_fit_with_the_xla_kernel_places_one_aligned_copy():
    x = _blobs(3000, 4, 3)
    got, want, seen = _fit_both(x, 3, init="random", kernel="xla", max_iter=10)
    assert seen == [jax.Array] or all(issubclass(t, jax.Array) for t in seen)
    _assert_same(got, want)


def test_programs_over_rows_in_place_need_no_copy_of_the_data():
    """XLA's own temporaries of every program of a fit stay well below the data (per-row
    scalars only): the origin's mean runs in blocks and the rest gathers rows (a (n, d)
    slice of the flat buffer would be copied whole)."""
    n, d, k = 300_000, 32, 16
    x = _misaligned(_blobs(n, d, 8))
    rows = _validation.in_place_rows(x)
    passes = engine.on_platform(engine.make_pass(kernel="native"), rows)
    init = make_init("random", k, "squared_euclidean", -1, None, "init", "native", None)
    spec = engine.on_platform(fitting.FitSpec(k, init, 1, False, "loss", passes), rows)
    assert spec.passes.platform == "cpu"
    key = jax.random.key(0)
    c, origin = fitting._run_start_programs.usual(key, rows, None, None, spec)
    it, prev, tol = np.int32(0), np.float32(np.inf), np.float32(0.0)
    last = fitting._run_until_empty(rows, None, c, origin, it, prev, tol, np.int32(1), spec)[-1]
    programs = {
        "start": (fitting._run_start_programs.usual, (key, rows, None, None)),
        "iterations": (
            fitting._run_until_empty,
            (rows, None, c, origin, it, prev, tol, np.int32(5)),
        ),
        "relocating finish": (
            fitting._run_relocating_finish,
            (rows, None, c, origin, it, prev, tol, last),
        ),
        "end": (fitting._run_end, (rows, None, c, origin)),
    }
    for name, (f, args) in programs.items():
        temp = f.lower(*args, spec=spec).compile().memory_analysis().temp_size_in_bytes
        assert temp < x.nbytes / 2, (name, temp, x.nbytes)


def test_flat_kernel_rejects_rows_beyond_the_buffer():
    x = _misaligned(_blobs(100, 4, 2))
    rows = _validation.in_place_rows(x)
    bad = _validation.InPlaceRows(rows.flat, rows.off + 4, 100, 4)  # one row too many
    frame = engine.frame_of(jnp.asarray(x[:2]), jnp.zeros((4,)), "squared_euclidean")
    with pytest.raises(Exception, match="inconsistent shapes"):
        jax.block_until_ready(jax.jit(native.flat_nearest)(bad, frame))


def test_rows_through_an_index_are_the_gathered_rows_for_every_reader():
    """InPlaceRows with an index (rows in any order, with repeats; aligned memory too):
    dense, take, block and host are the gathered rows, and the native kernels' labels,
    distances and float64-accumulated sums are bit-identical to those of the gathered
    copy (the same rows in the same order)."""
    rng = np.random.default_rng(3)
    for x in (_misaligned(_blobs(700, 37, 4), 16), _validation.aligned_copy(_blobs(700, 37, 4))[0]):
        index = rng.integers(0, 700, 500).astype(np.int32)
        index[:3] = [699, 0, 699]
        rows = _validation.in_place_rows(x, index)
        assert rows.shape == (500, 37) and rows.flat.unsafe_buffer_pointer() <= x.ctypes.data
        want = x[index]
        np.testing.assert_array_equal(rows.host(), want)
        np.testing.assert_array_equal(jax.jit(lambda r: r.dense())(rows), want)
        idx = jnp.array([0, 499, 7], jnp.int32)
        np.testing.assert_array_equal(jax.jit(lambda r, i: r.take(i))(rows, idx), want[[0, 499, 7]])
        np.testing.assert_array_equal(jax.jit(lambda r: r.block(495, 10))(rows), want[490:])
        centers = jnp.asarray(want[:6])
        frame = engine.frame_of(centers, jnp.asarray(want.mean(0)), "squared_euclidean")
        w = jnp.asarray(rng.random(500).astype(np.float32))
        got = jax.jit(native.flat_statistics)(rows, w, frame)
        ref = jax.jit(native.statistics)(jnp.asarray(want), w, frame)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_flat_kernel_rejects_an_index_beyond_the_buffer():
    x = _misaligned(_blobs(100, 4, 2))
    frame = engine.frame_of(jnp.asarray(x[:2]), jnp.zeros((4,)), "squared_euclidean")
    rows = _validation.in_place_rows(x, np.array([0, 99, 5], np.int32))
    jax.block_until_ready(jax.jit(native.flat_nearest)(rows, frame))  # in bounds
    for bad in (100, -1):
        index = jnp.array([0, bad, 5], jnp.int32)
        broken = _validation.InPlaceRows(rows.flat, rows.off, 3, 4, index)
        with pytest.raises(Exception, match="inconsistent shapes"):
            jax.block_until_ready(jax.jit(native.flat_nearest)(broken, frame))


@pytest.mark.parametrize("kernel", ["auto", "xla"])
def test_assign_and_inertia_read_unpadded_rows_in_place(monkeypatch, kernel):
    """assign and inertia (so the drop-in's predict and score) read misaligned unpadded
    float32 rows in place with the native kernels, and copy them once for XLA's; the
    results equal those of an aligned copy."""
    from jaxkmeans import assignment

    x = _misaligned(_blobs(3000, 9, 4))
    aligned, _ = _validation.aligned_copy(x)
    c = x[:5].copy()
    w = np.random.default_rng(0).random(3000).astype(np.float32)
    seen = []
    for name in ("nearest_impl", "inertia_impl"):
        impl = getattr(assignment, name)
        monkeypatch.setattr(
            assignment, name, lambda x, *a, impl=impl: seen.append(type(x)) or impl(x, *a)
        )
    got = jaxkmeans.assign(x, c, kernel=kernel, pad_rows=False)
    loss = jaxkmeans.inertia(x, c, sample_weight=w, kernel=kernel, pad_rows=False)
    want = jaxkmeans.assign(aligned, c, kernel=kernel, pad_rows=False)
    want_loss = jaxkmeans.inertia(aligned, c, sample_weight=w, kernel=kernel, pad_rows=False)
    kind = _validation.InPlaceRows if kernel == "auto" else jax.Array
    assert [issubclass(t, kind) for t in seen[:2]] == [True, True]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(loss) == float(want_loss)


def _train(data, where, init, seen=None, batches=None):
    """KMeans.train (full batch, 4 steps) of `data` (or of `batches()`); `seen` gets the
    type of the rows each pass got."""
    add = fitting.pass_add

    def spy(acc, centers, origin, rows, *args, **kwargs):
        seen.append(type(rows))
        return add(acc, centers, origin, rows, *args, **kwargs)

    est = jaxkmeans.KMeans(5, initial_clusters=init, use_mini_batch=False, seed=0, model_dir=where)
    with pytest.MonkeyPatch.context() as mp:
        if seen is not None:
            mp.setattr(fitting, "pass_add", spy)
        est.train(batches or (lambda: data), max_steps=4)
    return np.asarray(est.cluster_centers())


@pytest.mark.parametrize("init", ["random", "kmeans_plus_plus"])
def test_train_reads_one_unpadded_batch_in_place_with_the_same_centers(init, tmp_path):
    x = _blobs(9000, 6, 5)
    seen: list = []
    got = _train(_misaligned(x), str(tmp_path / "a"), init, seen)
    assert seen and all(t is _validation.InPlaceRows for t in seen)
    want = _train(_validation.aligned_copy(x)[0], str(tmp_path / "b"), init)
    np.testing.assert_array_equal(got, want)


def test_train_keeps_no_placement_of_batches_read_in_place(tmp_path):
    """New batch objects every pass must die after their step, as copies do: a
    placement read in place holds its batch, so it is never kept for the next pass
    (that would keep a whole pass of batches alive)."""
    x = _blobs(8000, 4, 5)
    alive: list = []
    most = []

    def batches():
        for part in np.array_split(x, 4):
            gc.collect()
            most.append(sum(r() is not None for r in alive))
            b = _misaligned(part)  # a new object every pass
            alive.append(weakref.ref(b))
            yield b

    seen: list = []
    _train(None, str(tmp_path / "m"), "random", seen, batches)
    assert seen.count(_validation.InPlaceRows) >= 8
    # When a batch is read, at most the two before it (one computing, one just
    # handed over) are still alive.
    assert max(most) <= 2, most
