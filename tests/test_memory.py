"""Host copies of the data are freed when the call that made them returns.

On CPU a device array made from an aligned host buffer uses it in place, and jaxlib
frees that buffer only at Python's next garbage collection (its release is queued from
XLA's threads). Without ``_validation.release_host_copies`` a fit's copy of the data
stayed alive after it returned, and the next copy (the next fit, or the first pass
after the initializer's sample) doubled the peak memory. Automatic garbage collection
is off in these tests, so only the library's own release can free the copies.
"""

import gc

import jax
import numpy as np
import pytest

import jaxkmeans
import jaxkmeans.sklearn
from jaxkmeans import _validation


def _unaligned(n: int, d: int) -> np.ndarray:
    """Float32 data whose address is not 64-byte aligned (so every call copies it)."""
    raw = np.empty(n * d * 4 + 64, np.uint8)
    start = (-raw.ctypes.data) % 64 + 16
    x = raw[start : start + n * d * 4].view(np.float32).reshape(n, d)
    x[:] = np.random.default_rng(0).normal(size=(n, d))
    return x


def _misaligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` at an address 16 bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + 16
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _own_buffers_alive() -> int:
    return sum(ref() is not None for ref in list(_validation._OWN_BUFFERS.values()))


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _train(x: np.ndarray) -> None:
    est = jaxkmeans.KMeans(4, initial_clusters="random", use_mini_batch=False, seed=0)
    est.train(lambda: x, max_steps=2)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: jaxkmeans.fit(jax.random.key(0), x, 4, init="random", max_iter=3),
        lambda x: jaxkmeans.assign(x, x[:4]),
        lambda x: jaxkmeans.sklearn.KMeans(4, n_init=1, max_iter=3, random_state=0).fit(x),
        _train,
    ],
    ids=["fit", "assign", "sklearn", "train"],
)
def test_host_copies_are_freed_when_the_call_returns(call, no_gc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the estimator's temporary model_dir warning is harmless
    x = _unaligned(100_000, 8)
    assert x.ctypes.data % 64
    _validation.release_host_copies()
    before = _own_buffers_alive()
    with pytest.warns() if call is _train else _nullcontext():
        result = call(x)
    jax.block_until_ready(jax.tree_util.tree_leaves(result) if result is not None else ())
    assert _own_buffers_alive() == before


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_release_waits_only_for_dropped_arrays(no_gc):
    x = _unaligned(1000, 8)
    kept = _validation.to_device(x)
    dropped = _validation.to_device(x)
    del dropped
    _validation.release_host_copies()
    # The kept array's buffer stays (it is in use); the dropped one's is gone.
    alive = _own_buffers_alive()
    assert alive >= 1
    np.testing.assert_array_equal(np.asarray(kept), x)
    del kept
    jax.effects_barrier()
    _validation.release_host_copies()
    assert _own_buffers_alive() == alive - 1


def test_device_finiteness_check_makes_no_temporary_the_size_of_the_data():
    shape = jax.ShapeDtypeStruct((4096, 64), np.float32)
    compiled = _validation._device_all_finite.lower(shape).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 4096
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((50, 3), np.float32)
        x[17, 2] = bad
        assert not bool(_validation._device_all_finite(x))
    assert bool(_validation._device_all_finite(np.full((4, 4), 3e38, np.float32)))
    with pytest.raises(ValueError, match="finite"):
        jaxkmeans.assign(jax.numpy.asarray(np.where(np.eye(3) > 0, np.nan, 1.0)), np.ones((1, 3)))


@pytest.fixture
def small_blocks(monkeypatch):
    """aligned_copy in blocks of 3 rows of 4 values, with threads from 64 bytes on."""
    monkeypatch.setattr(_validation, "_COPY_BLOCK_BYTES", 48)
    monkeypatch.setattr(_validation, "_PARALLEL_COPY_BYTES", 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("layout", ["unaligned", "fortran", "strided"])
def test_aligned_copy_is_exact_aligned_and_checked_in_every_block(small_blocks, dtype, layout):
    base = (_unaligned(40, 8) * (100 if dtype == np.int64 else 1)).astype(dtype)
    src = {
        "unaligned": _misaligned(base[:, :4]),
        "fortran": np.asfortranarray(base[:, :4]),
        "strided": base[::2, ::2],
    }[layout]
    assert _validation.needs_copy(src, np.float32)
    out, finite = _validation.aligned_copy(src, np.float32, check_finite=True)
    assert finite and out.dtype == np.float32 and out.flags.c_contiguous
    assert out.ctypes.data % 64 == 0
    np.testing.assert_array_equal(out, src.astype(np.float32))
    if dtype != np.int64:
        for row in (0, 7, 19, src.shape[0] - 1):  # first, middle, every thread's part, last
            bad = _misaligned(src)
            bad[row, 1] = np.nan if row % 2 else -np.inf
            assert not _validation.aligned_copy(bad, np.float32, check_finite=True)[1]


def test_one_pass_copy_reports_float64_beyond_float32_and_nan_by_name(small_blocks):
    big = _misaligned(_unaligned(20, 4).astype(np.float64))
    big[13, 2] = 1e300
    with pytest.raises(ValueError, match=r"`x` must contain only finite values in the compute"):
        jaxkmeans.fit(jax.random.key(0), big, 2, pad_rows=False)
    bad = _unaligned(20, 4)
    bad[17, 0] = np.nan
    with pytest.raises(ValueError, match=r"`x` must contain only finite values; it has NaN"):
        jaxkmeans.assign(bad, bad[:2], pad_rows=False)


def test_unpadded_host_data_is_copied_once_and_checked_in_the_same_pass(monkeypatch):
    """fit places unpadded unaligned host data through one aligned_copy with the check
    (no separate finiteness pass, no second copy for float64 cast to float32)."""
    calls = []
    copy = _validation.aligned_copy

    def counting(a, dtype=None, check_finite=False):
        calls.append((a.dtype, check_finite))
        return copy(a, dtype, check_finite)

    monkeypatch.setattr(_validation, "aligned_copy", counting)
    monkeypatch.setattr(_validation, "all_finite", lambda a: pytest.fail("separate check"))
    x = _misaligned(_unaligned(3000, 4).astype(np.float64))
    r = jaxkmeans.fit(jax.random.key(0), x, 3, init="random", max_iter=2, pad_rows=False)
    assert calls == [(np.float64, True)]
    ref = jaxkmeans.fit(
        jax.random.key(0), jax.numpy.asarray(x, np.float32), 3, init="random", max_iter=2
    )
    np.testing.assert_array_equal(r.centers, ref.centers)
