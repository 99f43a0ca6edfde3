"""The native k-means++ round (jaxkmeans_pp_round_f32): agreement with the pure-JAX
rounds, determinism, the platform dispatch (CPU only, lowers for GPU/TPU) and the
switch-off."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import initializers as I
from jaxkmeans.kernels import native

pytestmark = pytest.mark.skipif(
    not (native.available() and native._info.get("pp_round")),
    reason="native k-means++ round not built",
)


@pytest.fixture(autouse=True)
def _native_pp_on(monkeypatch):
    # On by default; a user's JAXKMEANS_NATIVE_PP=0 must not hide these tests' subject.
    monkeypatch.delenv("JAXKMEANS_NATIVE_PP", raising=False)


def test_round_is_on_by_default_and_env_turns_it_off(monkeypatch):
    assert native.pp_round_available()
    for off in ("0", "off", "false"):
        monkeypatch.setenv("JAXKMEANS_NATIVE_PP", off)
        assert not native.pp_round_available()
    monkeypatch.setenv("JAXKMEANS_NATIVE_PP", "1")
    assert native.pp_round_available()


TARGET = "jaxkmeans_pp_round_f32"


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + rng.integers(0, 20, size=(n, 1)) * rng.normal(size=(1, d))
    return jnp.asarray(x.astype(np.float32))


def _pp(kernel, k):
    return jax.jit(lambda key, xp, w: I._kmeans_pp(key, xp, w, k, -1, kernel))


def test_one_round_matches_the_pure_jax_round():
    """d2' and every candidate's potential (within 1e-5 relative) as the XLA round
    computes them after folding in the previous pick; block sums add up to them."""
    n, d, t = 50_000, 32, 9
    rng = np.random.default_rng(1)
    x = _data(n, d)
    w = jnp.asarray(rng.uniform(0.5, 2, size=n).astype(np.float32))
    xp = I._prepare(x, w, "squared_euclidean")
    xsq = jnp.sum(xp * xp, axis=1)
    d2 = jnp.asarray(rng.uniform(0, 500, size=n).astype(np.float32))
    rows = jnp.asarray(rng.choice(n, t + 1, replace=False).astype(np.int32))
    c = xp[rows]
    d2n, pot, bsum = native.pp_round(xp, xsq, w, d2, c, jnp.sum(c * c, axis=1), rows, 256)
    ref_d2 = I._sq_dists(xp, xsq, c[:1])[:, 0]
    ref_d2 = jnp.minimum(d2, ref_d2).at[rows[0]].set(0.0)
    ref_pot, _ = I._candidate_potentials(xp, xsq, w, ref_d2, rows[1:])
    np.testing.assert_allclose(d2n, ref_d2, rtol=1e-4, atol=1e-3)
    assert float(d2n[rows[0]]) == 0.0
    np.testing.assert_allclose(pot, ref_pot, rtol=1e-5)
    assert bsum.shape == (t, -(-n // 256))
    np.testing.assert_allclose(np.sum(np.asarray(bsum, np.float64), axis=1), pot, rtol=1e-6)
    # Deterministic (fixed summation order, whatever the threads do).
    again = native.pp_round(xp, xsq, w, d2, c, jnp.sum(c * c, axis=1), rows, 256)
    for a, b in zip((d2n, pot, bsum), again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_same_picks_as_the_pure_jax_rounds_200k():
    """200k x 32 -> 64: the native rounds choose exactly the rows the XLA rounds do."""
    x = _data(200_000, 32)
    w = jnp.ones((x.shape[0],), jnp.float32)
    xp = I._prepare(x, w, "squared_euclidean")
    for seed in range(2):
        key = jax.random.PRNGKey(seed)
        a = np.asarray(_pp("xla", 64)(key, xp, w))
        b = np.asarray(_pp("native", 64)(key, xp, w))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "metric,retries", [("squared_euclidean", -1), ("cosine", -1), ("squared_euclidean", 20)]
)
def test_same_centers_weighted_with_duplicates(metric, retries):
    rng = np.random.default_rng(3)
    pts = _data(300, 5, seed=3)
    x = pts[rng.integers(0, 300, size=2000)]
    w = rng.uniform(0, 3, size=2000).astype(np.float32)
    w[::7] = 0.0
    got = {}
    for flag in (True, False):
        old = native.set_enabled(flag)
        try:
            got[flag] = np.asarray(
                jaxkmeans.init_centers(
                    KEY, x, 40, metric=metric, sample_weight=w, num_retries=retries
                )
            )
        finally:
            native.set_enabled(old)
    np.testing.assert_array_equal(got[True], got[False])


KEY = jax.random.PRNGKey(7)


def _kpp_text(platform):
    x = jnp.zeros((1000, 8), jnp.float32)
    spec = I.make_init("kmeans_plus_plus", 16, "squared_euclidean")
    fn = jax.jit(lambda key, x: I.init_impl(key, x, None, spec))
    if platform == "cpu":  # here (the native call has no export guarantee)
        return fn.lower(KEY, x).as_text(), spec
    exported = jax.export.export(fn, platforms=[platform])(KEY, x)
    return exported.mlir_module(), spec


def test_cpu_program_calls_the_round_and_others_do_not():
    text, spec = _kpp_text("cpu")
    assert spec.kernel == "native"
    assert TARGET in text
    for platform in ("cuda", "tpu"):
        text, _ = _kpp_text(platform)
        assert TARGET not in text


def test_switched_off_uses_the_pure_jax_rounds():
    old = native.set_enabled(False)
    try:
        text, spec = _kpp_text("cpu")
    finally:
        native.set_enabled(old)
    assert spec.kernel == "xla"
    assert TARGET not in text


def test_portable_kernel_agrees():
    """The portable (non-AVX2) round computes the same picks (separate process: the
    choice is made once per process)."""
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from jaxkmeans import initializers as I\n"
        "rng = np.random.default_rng(0)\n"
        "x = jnp.asarray(rng.normal(size=(3000, 19)).astype(np.float32))\n"
        "w = jnp.ones((3000,), jnp.float32)\n"
        "xp = I._prepare(x, w, 'squared_euclidean')\n"
        "f = lambda kern: np.asarray(jax.jit(lambda k, xp, w: "
        "I._kmeans_pp(k, xp, w, 40, 20, kern))(jax.random.PRNGKey(0), xp, w))\n"
        "assert I._use_native_round(xp, 'native')\n"
        "np.testing.assert_array_equal(f('xla'), f('native'))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, JAXKMEANS_NATIVE_PORTABLE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout
