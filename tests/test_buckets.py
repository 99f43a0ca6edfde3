"""Size buckets: row counts padded with zero-weight rows so that nearby sizes share one
compiled program, with results identical to the unpadded run."""

import jax
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import _validation, assignment, fitting


def _blobs(n, d=5, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-8, 8, size=(6, d))
    x = centers[rng.integers(0, 6, n)] + rng.normal(size=(n, d))
    if integer:
        x = np.round(x * 3)
    return x.astype(np.float32)


def test_bucket_rows_is_idempotent_monotone_and_tight():
    assert _validation.bucket_rows(1) == 256
    assert _validation.bucket_rows(256) == 256
    assert _validation.bucket_rows(257) == 288
    assert _validation.bucket_rows(12345) == 13312
    prev = 0
    for n in list(range(1, 5000, 7)) + [2**20 + 1, 10**7 + 3]:
        b = _validation.bucket_rows(n)
        assert b >= n and b >= prev
        assert _validation.bucket_rows(b) == b
        if n > 256:
            assert b - n < n / 8  # at most 1/8 of the rows are padding
        prev = b


def _same_fit(a, b):
    assert int(a.n_iter) == int(b.n_iter)
    assert a.labels.shape == b.labels.shape
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_allclose(np.asarray(a.centers), np.asarray(b.centers), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(a.loss), float(b.loss), rtol=1e-6)


@pytest.mark.parametrize(
    "init, metric, weighted, integer",
    [
        ("kmeans_plus_plus", "squared_euclidean", False, False),
        ("kmeans_plus_plus", "squared_euclidean", True, True),
        ("random", "squared_euclidean", True, False),
        ("kmc2", "squared_euclidean", False, True),
        ("kmeans_parallel", "squared_euclidean", False, False),
        ("kmeans_plus_plus", "cosine", True, False),
    ],
)
def test_fit_padded_equals_unpadded(init, metric, weighted, integer):
    n = 3001  # bucket 3072
    x = _blobs(n, integer=integer)
    w = np.random.default_rng(1).uniform(0.5, 2.0, n).astype(np.float32) if weighted else None
    key = jax.random.PRNGKey(3)
    kw = dict(init=init, metric=metric, sample_weight=w, max_iter=20)
    padded = jaxkmeans.fit(key, x, 6, pad_rows=True, **kw)
    plain = jaxkmeans.fit(key, x, 6, pad_rows=False, **kw)
    _same_fit(padded, plain)
    assert padded.labels.shape == (n,)


def test_fit_with_given_centers_and_empty_clusters_padded_equals_unpadded():
    # Duplicates and far-away initial centers: empty clusters are relocated, and the
    # zero-weight padding (copies of row 0) must never be chosen.
    base = np.array([[10, 10], [10, 0], [0, 10], [0, 0]], np.float32)
    x = np.concatenate([np.repeat(base, 20, axis=0), [[5, 5]]]).astype(np.float32)
    init = np.array([[6, 6], [1000, 1000], [-1000, 1000], [1000, -1000], [2000, 2000]], np.float32)
    key = jax.random.PRNGKey(0)
    a = jaxkmeans.fit(key, x, 5, init=init, max_iter=3, pad_rows=True)
    b = jaxkmeans.fit(key, x, 5, init=init, max_iter=3, pad_rows=False)
    _same_fit(a, b)


def test_lloyd_step_assign_inertia_padded_equal_unpadded():
    x = _blobs(1000, integer=True)
    c = x[:7]
    w = np.random.default_rng(2).uniform(0, 3, 1000).astype(np.float32)
    for kw in ({}, {"sample_weight": w}):
        a, sa = jaxkmeans.lloyd_step(x, c, pad_rows=True, **kw)
        b, sb = jaxkmeans.lloyd_step(x, c, pad_rows=False, **kw)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(sa.counts), np.asarray(sb.counts))
        np.testing.assert_allclose(float(sa.loss), float(sb.loss), rtol=1e-6)
        ia = jaxkmeans.inertia(x, c, pad_rows=True, **kw)
        ib = jaxkmeans.inertia(x, c, pad_rows=False, **kw)
        np.testing.assert_allclose(float(ia), float(ib), rtol=1e-6)
    la, da = jaxkmeans.assign(x, c, pad_rows=True)
    lb, db = jaxkmeans.assign(x, c, pad_rows=False)
    assert la.shape == (1000,) and da.shape == (1000,)
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
    np.testing.assert_array_equal(np.asarray(da), np.asarray(db))


def _fit_programs() -> int:
    """Compiled Lloyd loops and starts (both compile-option variants) of the host-driven
    fit."""
    start = fitting._run_start_programs
    return sum(f._cache_size() for f in (fitting._run_until_empty, start.usual, start.quick))


def test_nearby_sizes_share_one_compiled_program():
    x = _blobs(1200)
    key = jax.random.PRNGKey(0)
    jaxkmeans.fit(key, x[:1100], 4, max_iter=5)
    jaxkmeans.assign(x[:1100], x[:4])
    fits = _fit_programs()
    assigns = assignment.nearest_impl._cache_size()
    for n in (1030, 1090, 1151):  # all in the 1152-row bucket
        r = jaxkmeans.fit(key, x[:n], 4, max_iter=5)
        assert r.labels.shape == (n,)
        labels, _ = jaxkmeans.assign(x[:n], x[:4])
        assert labels.shape == (n,)
    assert _fit_programs() == fits
    assert assignment.nearest_impl._cache_size() == assigns
    # pad_rows=False compiles for the exact size.
    jaxkmeans.fit(key, x[:1151], 4, max_iter=5, pad_rows=False)
    assert _fit_programs() == fits + 2


def test_too_few_rows_is_still_an_error_after_padding():
    x = _blobs(5)
    with pytest.raises(ValueError, match="num_clusters"):
        jaxkmeans.fit(jax.random.PRNGKey(0), x, 6)


def test_pad_rows_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="pad_rows"):
        jaxkmeans.assign(_blobs(10), _blobs(2), pad_rows="yes")


def test_padding_under_jit_is_skipped():
    x = _blobs(300)

    @jax.jit
    def f(x):
        return jaxkmeans.assign(x, x[:3])[0]

    assert f(x).shape == (300,)


# ----------------------------------------------- the host-stepped loop = the one program


@pytest.mark.parametrize("placed", [False, True])
@pytest.mark.parametrize("n_init", [1, 3])
def test_host_stepped_fit_equals_the_one_program_fit(n_init, placed):
    # Heavy duplicates and far initial centers: passes leave clusters empty, so the
    # host-stepped driver must run its relocating step, and land where fit_impl (one
    # program, relocation inside the loop) lands. Placed on the CPU device, the rows
    # make the host-stepped programs trace the CPU branches only (engine.on_platform).
    base = np.array([[10, 10], [10, 0], [0, 10], [0, 0]], np.float32)
    x = np.concatenate([np.repeat(base, 20, axis=0), [[5, 5]]]).astype(np.float32)
    if placed:
        x = jax.device_put(x)
    init = np.array([[6, 6], [1000, 1000], [-1000, 1000], [1000, -1000], [2000, 2000]], np.float32)
    key = jax.random.PRNGKey(0)
    passes = fitting.engine.make_pass(dtype=np.float32)
    for spec, start in [
        (fitting.FitSpec(5, None, 1, False, "loss", passes), init),
        (
            fitting.FitSpec(
                5,
                fitting.make_init("random", 5, "squared_euclidean", -1, None),
                n_init,
                False,
                "shift",
                passes,
            ),
            None,
        ),
    ]:
        tol = np.float32(1e-4)
        one = fitting.fit_impl(key, x, None, start, tol, np.int32(10), spec)
        stepped = fitting.lloyd_run(key, x, None, start, tol, 10, spec)
        for a, b in zip(one, stepped, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_fit_without_empty_clusters_never_compiles_the_relocating_finish():
    x = _blobs(2000, seed=5)
    before = fitting._run_relocating_finish._cache_size()
    r = jaxkmeans.fit(jax.random.PRNGKey(1), x, 6, max_iter=50)
    assert int(r.n_iter) > 1
    assert fitting._run_relocating_finish._cache_size() == before


def test_fit_under_jit_and_vmap_still_runs_the_one_program():
    x = _blobs(500)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    out = jax.vmap(lambda k: jaxkmeans.fit(k, x, 4, max_iter=5).loss)(keys)
    eager = [float(jaxkmeans.fit(k, x, 4, max_iter=5).loss) for k in keys]
    np.testing.assert_allclose(np.asarray(out), eager, rtol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("place", ["numpy", "device"])
def test_host_count_of_distinct_rows_matches_the_device_count(weighted, place, monkeypatch):
    """count_distinct counts a few rows on the CPU on the host (nothing compiled): the
    same number as the compiled count, with duplicates, -0.0 and zero weights."""
    from jaxkmeans import _validation

    rng = np.random.default_rng(0)
    base = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    x = np.concatenate([base, base[:10], -0.0 * np.ones((3, 3), np.float32), np.zeros((2, 3))])
    x = x.astype(np.float32)
    w = rng.integers(0, 3, size=x.shape[0]).astype(np.float32) if weighted else None
    if place == "device":
        x = jax.device_put(x)
        w = None if w is None else jax.device_put(w)
    counts = []
    for elements in (1 << 16, 0):  # on the host, then compiled
        monkeypatch.setattr(_validation, "_HOST_COUNT_ELEMENTS", elements)
        counts.append([_validation.count_distinct(x, w=w, at_least=a) for a in (None, 5, 50)])
    assert counts[0] == counts[1]
    keep = np.ones(x.shape[0], bool) if w is None else np.asarray(w) > 0
    rows = {tuple(r) for r in (np.asarray(x)[keep] + 0.0).tolist()}
    assert counts[0][0] == len(rows)


# ------------------------------------------------- programs compiled for one platform


def _platform_branches(fn, *args):
    return str(jax.make_jaxpr(fn)(*args)).count("platform_index")


def test_on_platform_marks_specs_for_cpu_arrays_only():
    passes = fitting.engine.make_pass(dtype=np.float32, kernel="native")
    init = fitting.make_init("kmeans_plus_plus", 4, "squared_euclidean", -1, None, kernel="native")
    spec = fitting.FitSpec(4, init, 1, False, "loss", passes)
    x = np.ones((10, 2), np.float32)
    on_cpu = fitting.engine.on_platform(spec, jax.device_put(x), None)
    assert on_cpu.passes.platform == "cpu" and on_cpu.init.platform == "cpu"
    assert on_cpu.passes.kernel == passes.kernel and on_cpu.init.k == 4
    assert fitting.engine.on_platform(spec, x) is spec  # a host array: not placed yet
    assert fitting.engine.on_platform(spec, None) is spec

    seen = []
    jax.jit(lambda a: seen.append(fitting.engine.on_platform(spec, a)) or a)(x)
    assert seen == [spec]  # under a trace: lowered anywhere


def test_a_program_for_cpu_traces_no_other_platform_branch():
    from jaxkmeans import initializers

    if not fitting.engine.kernels.native.available():
        pytest.skip("native kernel not built")
    x = jax.device_put(_blobs(300))
    passes = fitting.engine.make_pass(dtype=np.float32, kernel="native")
    init = fitting.make_init("kmeans_plus_plus", 4, "squared_euclidean", -1, None, kernel="native")
    frame = fitting.engine.frame_of(x[:4], x.mean(0), passes.metric)
    key = jax.random.PRNGKey(0)
    cpu_pass = fitting.engine.on_platform(passes, x)
    cpu_init = fitting.engine.on_platform(init, x)
    assert _platform_branches(lambda a: fitting.engine.nearest(passes, a, frame), x) > 0
    assert _platform_branches(lambda a: fitting.engine.nearest(cpu_pass, a, frame), x) == 0
    assert _platform_branches(lambda a: initializers._init_impl(key, a, None, init), x) > 0
    assert _platform_branches(lambda a: initializers._init_impl(key, a, None, cpu_init), x) == 0
    # the same centers either way
    np.testing.assert_array_equal(
        initializers.init_impl(key, x, None, init), initializers.init_impl(key, x, None, cpu_init)
    )


def test_quick_programs_leave_out_a_compile_option_the_jaxlib_rejects(monkeypatch):
    monkeypatch.setitem(_validation.FAST_COMPILE_OPTIONS, "xla_no_such_option_for_test", True)
    monkeypatch.setattr(_validation, "_REJECTED_OPTIONS", set())
    f = _validation.SizeAwareJit(lambda a: a * 2 + 1)
    h = _validation.SizeAwareJit(lambda a: a - 1)  # built before the rejection
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(f.for_data(x)(x), x * 2 + 1)
    assert _validation._REJECTED_OPTIONS == {"xla_no_such_option_for_test"}
    np.testing.assert_array_equal(h.for_data(x)(x), x - 1)
    np.testing.assert_array_equal(_validation.SizeAwareJit(lambda a: -a).for_data(x)(x), -x)
    # other errors are raised
    g = _validation.SizeAwareJit(lambda a: a.reshape(4))
    with pytest.raises(TypeError):
        g.for_data(x)(x)
