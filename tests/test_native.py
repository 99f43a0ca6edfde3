"""The native CPU kernels (jax.ffi) against the pure-JAX path and numpy references."""

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import engine, kernels, metrics
from jaxkmeans.kernels import native as _native

needs_native = pytest.mark.skipif(
    not _native.available(), reason=f"native kernels not built: {_native.load_error()}"
)


def _headers_present() -> bool:
    import jaxlib

    inc = pathlib.Path(jaxlib.__file__).parent / "include" / "xla" / "ffi" / "api" / "ffi.h"
    return inc.is_file()


def test_native_built_where_a_compiler_exists():
    """A machine with a C++ compiler and jaxlib's FFI headers must have built the
    extension; this catches a silently failing optional build."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler here")
    if not _headers_present():
        pytest.skip("jaxlib ships no FFI headers")
    assert _native.available(), _native.load_error()


def _ref_nearest(x, c):
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


def _data(n, d, k, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) + shift).astype(np.float32)
    c = (rng.standard_normal((k, d)) + shift).astype(np.float32)
    return x, c


@needs_native
@pytest.mark.parametrize(
    "n,d,k",
    [(1, 1, 1), (5, 3, 2), (7, 2, 17), (97, 1, 16), (200, 5, 33), (1000, 130, 40), (61, 300, 7)],
)
def test_nearest_matches_reference(n, d, k):
    x, c = _data(n, d, k, seed=n + d + k, shift=50.0)
    off = metrics.frame_origin(jnp.asarray(x), "squared_euclidean")
    cp, bias = metrics.prepare_centers(jnp.asarray(c), "squared_euclidean", off)
    frame = engine.Frame(off, cp, bias)
    labels, dist = jax.jit(_native.nearest)(jnp.asarray(x), frame)
    ref_l, ref_d = _ref_nearest(x, c)
    labels, dist = np.asarray(labels), np.asarray(dist)
    # Labels may differ only where two centers are (numerically) equally near.
    exact = np.take_along_axis(
        ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1), labels[:, None], 1
    )[:, 0]
    np.testing.assert_allclose(exact, ref_d, rtol=1e-5, atol=1e-3)
    assert np.mean(labels == ref_l) > 0.99
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-3)
    assert labels.dtype == np.int32 and dist.dtype == np.float32


@needs_native
@pytest.mark.parametrize("extra", [0, 30])  # the narrow (d <= 16) and the wide kernel
def test_ties_go_to_the_lowest_index(extra):
    x = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], np.float32)
    # Centers 3, 19 and 35 are copies (same lane in different panels; other lanes too;
    # 2 and 10 share a lane in the two halves of one 16-center panel).
    c = np.full((40, 2), 100.0, np.float32)
    c[[3, 19, 35, 4]] = [1.0, 1.0]
    c[[21, 37]] = [5.0, 5.0]
    c[[2, 18, 10]] = [0.0, 0.0]
    x = np.pad(x, ((0, 0), (0, extra)))
    c = np.pad(c, ((0, 0), (0, extra)))
    labels, dist = jaxkmeans.assign(x, c)
    assert np.asarray(labels).tolist() == [2, 3, 21]
    assert np.asarray(dist).tolist() == [0.0, 0.0, 0.0]


@needs_native
@pytest.mark.parametrize("weighted", [False, True])
def test_statistics_match_pure_path(weighted):
    x, c = _data(3001, 19, 37, seed=3, shift=-20.0)
    w = np.random.default_rng(4).uniform(0, 3, size=len(x)).astype(np.float32) if weighted else None
    xj, cj = jnp.asarray(x), jnp.asarray(c)
    wj = None if w is None else jnp.asarray(w)
    off = metrics.frame_origin(xj, "squared_euclidean", wj)
    cp, bias = metrics.prepare_centers(cj, "squared_euclidean", off)
    frame = engine.Frame(off, cp, bias)

    def run(kernel):
        spec = engine.Pass(chunk=512, kernel=kernel)
        return jax.jit(lambda x, w, f: kernels.statistics(spec, x, w, f))(xj, wj, frame)

    nat, ref = run("native"), run("xla")
    for a, b, tol in zip(nat, ref, [1e-4, 1e-6, 1e-5, 0, 1e-5], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=1e-2 * tol)
    # float64 reference for the sums: accumulated in float64 natively.
    lab = np.asarray(nat[3])
    ww = np.ones(len(x)) if w is None else w.astype(np.float64)
    exp = np.zeros((37, 19))
    np.add.at(exp, lab, ww[:, None] * (x.astype(np.float64) - np.asarray(off, np.float64)))
    np.testing.assert_allclose(np.asarray(nat[0]), exp, rtol=1e-6, atol=1e-4)


@needs_native
def test_lloyd_and_fit_agree_with_pure_path(blobs):
    c0 = np.concatenate([blobs[:4], [[1e3, 1e3]]]).astype(np.float32)  # one empty cluster
    w = np.random.default_rng(1).uniform(0.5, 2, size=len(blobs)).astype(np.float32)
    a = jaxkmeans.lloyd_step(blobs, c0, sample_weight=w, kernel="native")
    b = jaxkmeans.lloyd_step(blobs, c0, sample_weight=w, kernel="xla")
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(a[1].counts), np.asarray(b[1].counts), rtol=1e-6)
    key = jax.random.PRNGKey(0)
    fa = jaxkmeans.fit(key, blobs, 4, kernel="native")
    fb = jaxkmeans.fit(key, blobs, 4, kernel="xla")
    np.testing.assert_allclose(np.asarray(fa.centers), np.asarray(fb.centers), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(fa.labels), np.asarray(fb.labels))
    assert int(fa.n_iter) == int(fb.n_iter)


@needs_native
def test_bit_reproducible_and_vmappable():
    x, c = _data(20000, 24, 70, seed=5)
    a = jaxkmeans.lloyd_step(x, c)
    b = jaxkmeans.lloyd_step(x, c)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    cs = jnp.stack([c, c[::-1]])
    batched = jax.vmap(lambda cc: jaxkmeans.lloyd_step(x, cc)[0])(cs)
    np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(a[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(batched[1]),
        np.asarray(jaxkmeans.lloyd_step(x, c[::-1])[0]),
        rtol=1e-6,
        atol=1e-6,
    )


@needs_native
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_result_does_not_depend_on_thread_count(tmp_path):
    """Sums are formed in fixed partitions: one intra-op thread or many, same bits."""
    code = (
        "import os, sys\n"
        "if sys.argv[1] == '1': os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})\n"
        "import numpy as np, jaxkmeans\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((50000, 16)).astype(np.float32)\n"
        "c, st = jaxkmeans.lloyd_step(x, x[:50])\n"
        "np.save(r'{out}', np.asarray(c))\n"
    )
    outs = []
    for one_cpu in ("0", "1"):
        out = tmp_path / f"c{one_cpu}.npy"
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        subprocess.run(
            [sys.executable, "-c", code.format(out=out), one_cpu], env=env, check=True, timeout=120
        )
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])


@needs_native
def test_switching_off_uses_the_pure_path():
    x, c = _data(500, 3, 5, seed=6)
    assert engine.make_pass().kernel == "native"
    old = _native.set_enabled(False)
    try:
        assert engine.make_pass().kernel == "xla"
        with pytest.raises(ValueError, match="kernel.*native"):
            jaxkmeans.lloyd_step(x, c, kernel="native")
        with pytest.raises(ValueError, match="update_method.*native"):
            jaxkmeans.lloyd_step(x, c, update_method="native")
        la, da = jaxkmeans.assign(x, c)
    finally:
        _native.set_enabled(old)
    lb, db = jaxkmeans.assign(x, c)
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
    np.testing.assert_allclose(np.asarray(da), np.asarray(db), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="flag"):
        _native.set_enabled(1)


def test_native_refused_where_it_does_not_apply(blobs):
    for kwargs in ({"metric": "cosine"}, {"precision": "bfloat16"}):
        with pytest.raises(ValueError, match="kernel"):
            jaxkmeans.lloyd_step(blobs, blobs[:3], kernel="native", **kwargs)


def test_pure_assign_path_still_exact(blobs):
    """The chunked pure-JAX path (GPU/TPU, float64, disabled native) on CPU."""
    c = blobs[:7]
    labels, dist = jaxkmeans.assign(blobs, c, chunk_size=64, kernel="xla")
    ref_l, ref_d = _ref_nearest(blobs, c)
    np.testing.assert_array_equal(np.asarray(labels), ref_l)
    np.testing.assert_allclose(np.asarray(dist), ref_d, rtol=1e-5, atol=1e-5)


@needs_native
def test_portable_kernel_matches_reference(tmp_path):
    """The non-AVX2 kernels (forced by JAXKMEANS_NATIVE_PORTABLE) in a subprocess."""
    code = (
        "import numpy as np, jaxkmeans\n"
        "rng = np.random.default_rng(1)\n"
        "x = (rng.standard_normal((3001, 37)) + 9).astype(np.float32)\n"
        "c = x[:45].copy(); c[7] = c[3]\n"
        "labels, dist = jaxkmeans.assign(x, c)\n"
        "new, st = jaxkmeans.lloyd_step(x, c, kernel='native')\n"
        "np.savez(r'{out}', labels=np.asarray(labels), dist=np.asarray(dist),\n"
        "         new=np.asarray(new), loss=float(st.loss))\n"
    )
    out = tmp_path / "portable.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXKMEANS_NATIVE_PORTABLE="1")
    subprocess.run([sys.executable, "-c", code.format(out=out)], env=env, check=True, timeout=120)
    got = np.load(out)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3001, 37)) + 9).astype(np.float32)
    c = x[:45].copy()
    c[7] = c[3]
    ref_l, ref_d = _ref_nearest(x, c)
    assert np.mean(got["labels"] == ref_l) > 0.999
    assert not np.any(got["labels"] == 7)  # the copy of center 3 never wins a tie
    np.testing.assert_allclose(got["dist"], ref_d, rtol=1e-4, atol=1e-3)
    ref_new, ref_st = jaxkmeans.lloyd_step(x, c, kernel="xla")
    np.testing.assert_allclose(got["new"], np.asarray(ref_new), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(got["loss"]), float(ref_st.loss), rtol=1e-5)


# --- NaN rule: a NaN distance never wins (every kernel) -------------------------------

_NAN_CENTERS = (3, 17)


def _nan_problem(d, k=20, seed=11):
    """Rows near every center (several exactly on one), centers 3 and 17 NaN; center
    12 duplicates center 4 (a tie that must go to 4). Lane partners of the NaN centers
    (11 with 3 in a 16-wide panel; 1 and 9 share lanes with 17) are finite."""
    rng = np.random.default_rng(seed + d)
    c = (4.0 * rng.standard_normal((k, d))).astype(np.float32)
    c[12] = c[4]
    x = np.repeat(c, 15, axis=0) + 0.3 * rng.standard_normal((15 * k, d)).astype(np.float32)
    x[:5] = c[11]  # exactly on a finite center whose partner lane is NaN
    c[list(_NAN_CENTERS)] = np.nan
    return x.astype(np.float32), c


def _ref_nearest_ignoring_nan(x, c):
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    d = np.where(np.isnan(d), np.inf, d)
    return d.argmin(1), d.min(1)  # argmin: first index of the minimum


def _kernel_nearest(kernel, x, c):
    xj, cj = jnp.asarray(x), jnp.asarray(c)
    off = metrics.frame_origin(xj, "squared_euclidean")
    cp, bias = metrics.prepare_centers(cj, "squared_euclidean", off)
    spec = engine.Pass(kernel=kernel)
    run = jax.jit(lambda x, f: kernels.nearest(spec, x, f))
    labels, dist = run(xj, engine.Frame(off, cp, bias))
    return np.asarray(labels), np.asarray(dist)


def _check_nan_labels(labels, dist, x, c):
    ref_l, ref_d = _ref_nearest_ignoring_nan(x, c)
    np.testing.assert_array_equal(labels, ref_l)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d", [2, 8, 16, 40])
def test_nan_centers_never_win_xla(d):
    x, c = _nan_problem(d)
    _check_nan_labels(*_kernel_nearest("xla", x, c), x, c)


@needs_native
@pytest.mark.parametrize("d", [2, 8, 16, 40])  # narrow AVX2 kernel (d <= 16) and the wide one
def test_nan_centers_never_win_native(d):
    x, c = _nan_problem(d)
    _check_nan_labels(*_kernel_nearest("native", x, c), x, c)


def _inf_and_all_nan_problem(d):
    """Row 0: every center NaN except 5 and 9, whose distances overflow to +inf (the
    lowest non-NaN one, 5, must win). Row 1 of the second set: all centers NaN."""
    x = np.zeros((2, d), np.float32)
    c = np.full((20, d), np.nan, np.float32)
    c[[5, 9]] = 3e19
    return x, c


@pytest.mark.parametrize("kernel", ["xla", "native"])
@pytest.mark.parametrize("d", [2, 40])
def test_nan_rule_edge_cases(kernel, d):
    if kernel == "native" and not _native.available():
        pytest.skip(f"native kernels not built: {_native.load_error()}")
    x, c = _inf_and_all_nan_problem(d)
    labels, dist = _kernel_nearest(kernel, x, c)
    assert labels.tolist() == [5, 5] and np.all(np.isposinf(dist))
    labels, dist = _kernel_nearest(kernel, x, np.full_like(c, np.nan))
    assert labels.tolist() == [0, 0] and np.all(np.isnan(dist))


@needs_native
def test_nan_centers_never_win_portable(tmp_path):
    """The same rule in the portable kernels (forced in a subprocess)."""
    code = (
        "import sys, numpy as np\n"
        "sys.path.insert(0, r'{tests}')\n"
        "import test_native as t\n"
        "from jaxkmeans.kernels import native\n"
        "assert native.build_info()['kernel_isa'] == 'portable', native.build_info()\n"
        "out = {{}}\n"
        "for d in (2, 8, 16, 40):\n"
        "    x, c = t._nan_problem(d)\n"
        "    out[f'l{{d}}'], out[f'd{{d}}'] = t._kernel_nearest('native', x, c)\n"
        "    x, c = t._inf_and_all_nan_problem(d)\n"
        "    out[f'il{{d}}'], _ = t._kernel_nearest('native', x, c)\n"
        "    out[f'nl{{d}}'], out[f'nd{{d}}'] = t._kernel_nearest('native', x, c * np.nan)\n"
        "np.savez(r'{out}', **out)\n"
    )
    out = tmp_path / "nan.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXKMEANS_NATIVE_PORTABLE="1")
    script = code.format(tests=pathlib.Path(__file__).parent, out=out)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=180)
    got = np.load(out)
    for d in (2, 8, 16, 40):
        x, c = _nan_problem(d)
        _check_nan_labels(got[f"l{d}"], got[f"d{d}"], x, c)
        assert got[f"il{d}"].tolist() == [5, 5]
        assert got[f"nl{d}"].tolist() == [0, 0] and np.all(np.isnan(got[f"nd{d}"]))
