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
