"""The fused Pallas kernels (GPU/Triton and TPU/Mosaic) against the XLA reference.

On CPU both run in Pallas interpret mode (``platform="cpu"``); the export tests lower
them for CUDA / TPU from this host and check that no (rows, k) score buffer appears
between kernels. ``@pytest.mark.gpu`` tests run only with a GPU backend.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxkmeans.engine import Pass, frame_of
from jaxkmeans.kernels import pallas_gpu, pallas_tpu, xla
from jaxkmeans.metrics import frame_origin

MODULES = {"gpu": pallas_gpu, "tpu": pallas_tpu}
TARGETS = {"gpu": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
PRECISIONS = ("float32", "tf32", "bfloat16")


def spec_of(metric="squared_euclidean", precision="float32"):
    return Pass(metric=metric, precision=precision, kernel="xla")


def frame_for(x, centers, metric):
    return frame_of(centers, frame_origin(x, metric), metric)


def check_stats(mod, spec, x, w, centers, exact_dist=False):
    frame = frame_for(x, centers, spec.metric)
    got = mod.statistics(spec, "cpu", x, w, frame)
    ref = xla.statistics(spec, "cpu", x, w, frame)
    sums, counts, loss, labels, dist = (np.asarray(a) for a in got)
    rs, rc, rl, rlab, rd = (np.asarray(a) for a in ref)
    np.testing.assert_array_equal(labels, rlab)
    assert labels.dtype == np.int32 and dist.dtype == np.asarray(x).dtype
    tol = 0 if exact_dist else 2e-6
    np.testing.assert_allclose(dist, rd, rtol=tol, atol=tol)
    scale = max(1.0, float(np.abs(rs).max()))
    np.testing.assert_allclose(sums, rs, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(counts, rc, rtol=1e-6)
    np.testing.assert_allclose(loss, rl, rtol=1e-5, atol=1e-5)
    nl, nd = mod.nearest(spec, "cpu", x, frame)
    np.testing.assert_array_equal(np.asarray(nl), rlab)
    np.testing.assert_allclose(np.asarray(nd), rd, rtol=tol, atol=tol)
    return labels


@pytest.mark.parametrize("name", ["gpu", "tpu"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ties_across_tiles_go_to_lowest_index(name, precision):
    """Integer data (exact in every precision): duplicate centers in different center
    tiles (64 per tile on GPU, 256 on TPU) and rows equidistant from two centers."""
    rng = np.random.default_rng(1)
    k, d = 300, 5
    centers = rng.integers(-6, 7, size=(k, d)).astype(np.float32)
    centers[[70, 140, 290]] = centers[3]  # same as center 3, later tiles
    centers[299] = centers[260]
    centers[141] = centers[140 - 130] + np.eye(d, dtype=np.float32)[0] * 2  # 10 and 141
    x = centers[rng.integers(0, k, size=150)] + rng.integers(-1, 2, size=(150, d))
    x[:4] = centers[[70, 140, 290, 299]]
    x[4] = centers[10] + np.eye(d, dtype=np.float32)[0]  # equidistant from 10 and 141
    x = jnp.asarray(x.astype(np.float32))
    labels = check_stats(
        MODULES[name], spec_of(precision=precision), x, None, jnp.asarray(centers), True
    )
    assert list(labels[:4]) == [3, 3, 3, 260]
    assert labels[4] <= 10


@pytest.mark.parametrize("name", ["gpu", "tpu"])
@pytest.mark.parametrize(
    "n,k,d,metric,weighted",
    [
        (37, 1, 1, "squared_euclidean", False),
        (203, 70, 300, "squared_euclidean", True),
        (130, 129, 3, "cosine", True),
        (65, 5, 300, "cosine", False),
    ],
)
def test_matches_xla(name, n, k, d, metric, weighted):
    rng = np.random.default_rng(n + k + d)
    x = rng.normal(size=(n, d)).astype(np.float32) * 3 + 50  # far from the origin
    if metric == "cosine":
        x[1] = 0.0  # a zero row stays zero
    centers = x[rng.choice(n, k, replace=False)] + rng.normal(size=(k, d)).astype(np.float32)
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=n).astype(np.float32)) if weighted else None
    check_stats(MODULES[name], spec_of(metric), jnp.asarray(x), w, jnp.asarray(centers))


@pytest.mark.parametrize("name", ["gpu", "tpu"])
def test_nan_centers_never_win(name):
    mod = MODULES[name]
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(50, 4)).astype(np.float32))
    centers = rng.normal(size=(140, 4)).astype(np.float32)
    centers[[0, 65, 130]] = np.nan  # in several tiles, including the first
    spec = spec_of()
    frame = frame_for(x, jnp.asarray(centers), spec.metric)
    labels, dist = mod.nearest(spec, "cpu", x, frame)
    rlab, rdist = xla.nearest(spec, "cpu", x, frame)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(rlab))
    np.testing.assert_allclose(np.asarray(dist), np.asarray(rdist), rtol=2e-6)
    assert not np.isin(np.asarray(labels), [0, 65, 130]).any()
    # All centers NaN: label 0 (distance NaN), as the XLA kernel.
    frame = frame_for(x, jnp.full((3, 4), jnp.nan), spec.metric)
    labels, dist = mod.nearest(spec, "cpu", x, frame)
    rlab, rdist = xla.nearest(spec, "cpu", x, frame)
    np.testing.assert_array_equal(np.asarray(labels), 0)
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(rlab))
    assert np.isnan(np.asarray(dist)).all() and np.isnan(np.asarray(rdist)).all()


@pytest.mark.parametrize("name", ["gpu", "tpu"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_export_has_fused_kernel_and_no_score_block(name, precision, metric):
    n, k, d = 1000, 37, 300
    spec = spec_of(metric, precision)
    mod = MODULES[name]

    def f(x, c):
        frame = frame_of(c, frame_origin(x, metric), metric)
        return mod.statistics(spec, name, x, None, frame)[:4] + mod.nearest(spec, name, x, frame)

    exp = export.export(
        jax.jit(f),
        platforms=["cuda" if name == "gpu" else "tpu"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call(TARGETS[name])],
    )(jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((k, d), jnp.float32))
    text = exp.mlir_module()
    assert f"@{TARGETS[name]}" in text
    # Row-shaped f32 tensors are only x (n, d) and per-row (n, 1) values, never (n, k).
    widths = set(re.findall(r"tensor<1000x(\d+)xf32>", text))
    assert widths <= {str(d), "1"}, widths


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_gpu_kernel_on_device(precision, metric):
    rng = np.random.default_rng(7)
    n, k, d = 5003, 300, 130
    centers = rng.integers(-6, 7, size=(k, d)).astype(np.float32)
    centers[200] = centers[3]
    x = centers[rng.integers(0, k, size=n)] + rng.integers(-1, 2, size=(n, d))
    x = jnp.asarray(x.astype(np.float32))
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=n).astype(np.float32))
    spec = spec_of(metric, precision)
    frame = frame_for(x, jnp.asarray(centers), metric)
    got = jax.jit(lambda x, w: pallas_gpu.statistics(spec, "gpu", x, w, frame))(x, w)
    ref = xla.statistics(spec, "gpu", x, w, frame)
    np.testing.assert_array_equal(np.asarray(got[3]), np.asarray(ref[3]))
    np.testing.assert_allclose(np.asarray(got[4]), np.asarray(ref[4]), rtol=1e-5, atol=1e-5)
    scale = float(np.abs(np.asarray(ref[0])).max())
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(ref[0]), atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(ref[1]), rtol=1e-6)
