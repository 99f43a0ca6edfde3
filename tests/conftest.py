"""Test configuration: loud broadcasting errors, CPU only, shared helpers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI and the drop-in keep compiled programs in the user's cache directory by default;
# the suite (and the processes it starts) leaves that directory alone. tests/test_config.py
# checks the default with a private XDG_CACHE_HOME.
os.environ.setdefault("JAXKMEANS_COMPILATION_CACHE", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6):
    """Every leaf of two pytrees equal up to tolerance."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture
def blobs():
    """600 points in 4 well separated 2-D blobs (float32)."""
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = np.concatenate([m + rng.normal(size=(150, 2)) for m in means]).astype(np.float32)
    return x[rng.permutation(len(x))]


# Every compiled XLA CPU executable holds ~3 memory mappings while it is alive, and JAX
# keeps compiled programs in its caches for the life of the process. A long pytest
# process compiles thousands of distinct programs (test_engine + test_sklearn alone reach
# ~22,000 mappings); past the kernel's vm.max_map_count (65530 by default) LLVM's JIT
# cannot map new code and the next compilation segfaults inside backend_compile_and_load.
# So: free the compiled programs after every test module, and in between when a module
# alone gets close.
_MAPS = "/proc/self/maps"
_MAP_BUDGET = 30_000


def _map_count() -> int:
    try:
        with open(_MAPS, "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_after_module():
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _free_compiled_programs_when_many():
    yield
    if _map_count() > _MAP_BUDGET:
        jax.clear_caches()
