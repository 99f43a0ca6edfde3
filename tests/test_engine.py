"""The engine: every mode computes the same Lloyd iteration on hard data, kernels agree,
and programs lowered for GPU/TPU use that platform's block sizes.

Modes: ``lloyd_step``, ``fit``, ``fit`` on a mesh (one device here, four forced devices
in a subprocess), the estimator in full batch over one and three batches (and on a
mesh), and the scikit-learn drop-in. Hard data: duplicated points with empty clusters,
exact ties on integer data far from the origin, positive multiples under cosine, float
data far from the origin, weights 0 and 1e6.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans
from jaxkmeans import engine

KEY = jax.random.PRNGKey(0)


def _hard(name: str):
    """``(x, w, c0, metric)`` of one hard data set."""
    rng = np.random.default_rng(0)
    if name == "duplicates":
        pts = np.array([[10, 10], [10, 0], [0, 10], [0, 0], [5, 5]], np.float32)
        x = np.repeat(pts, [20, 20, 20, 20, 1], axis=0)
        c0 = [[6, 6], [1000, 1000], [-1000, 1000], [1000, -1000], [-2000, -2000]]
        return x, None, np.asarray(c0, np.float32), "squared_euclidean"
    if name == "integer_ties":
        x = (1e5 + rng.integers(0, 5, size=(300, 3))).astype(np.float32)
        c0 = np.unique(x, axis=0)[[0, 7, 19, 31, 44, 60]]
        return x, None, c0, "squared_euclidean"
    if name == "cosine_multiples":
        dirs = rng.normal(size=(5, 3)).astype(np.float32)
        mult = np.array([1.0, 3.0, 0.5, 7.0, 2.0], np.float32)
        x = (dirs[:, None, :] * mult[None, :, None]).reshape(-1, 3)
        x = np.concatenate([x, rng.normal(size=(20, 3)).astype(np.float32)])
        c0 = np.stack([x[0], 4.0 * x[5], x[10], x[30]])  # 4.0 * x[5]: a multiple of a row
        return x, None, c0, "cosine"
    if name == "far_from_origin":
        means = rng.uniform(-40, 40, size=(5, 4))
        x = (1e5 + means[rng.integers(0, 5, 500)] + rng.normal(size=(500, 4))).astype(np.float32)
        return x, None, x[:6].copy(), "squared_euclidean"
    if name == "weights":
        x = rng.normal(size=(400, 3)).astype(np.float32) * 5
        w = np.ones(len(x), np.float32)
        w[::7] = 0.0
        w[3::50] = 1e6
        c0 = np.concatenate([x[1:5], [[1e3, 1e3, 1e3]]]).astype(np.float32)  # one far center
        return x, w, c0, "squared_euclidean"
    raise ValueError(name)


DATASETS = ["duplicates", "integer_ties", "cosine_multiples", "far_from_origin", "weights"]


def _mesh1():
    return jax.make_mesh((1,), ("data",))


def _lloyd_step(x, w, c0, metric, steps):
    c = c0
    for _ in range(steps):
        c, _ = jaxkmeans.lloyd_step(x, c, metric=metric, sample_weight=w)
    return np.asarray(c)


def _fit(x, w, c0, metric, steps, mesh=None):
    r = jaxkmeans.fit(
        KEY, x, len(c0), init=c0, metric=metric, max_iter=steps, tol=0.0, sample_weight=w,
        mesh=mesh,
    )  # fmt: skip
    return np.asarray(r.centers)


def _estimator(x, w, c0, metric, steps, batches=1, mesh=None, tmp=None):
    assert w is None
    km = jaxkmeans.KMeans(
        len(c0),
        model_dir=tmp,
        initial_clusters=c0,
        distance_metric=metric,
        use_mini_batch=False,
        config=jaxkmeans.RunConfig(mesh=mesh),
    )
    km.train(np.array_split(x, batches) if batches > 1 else x, steps=steps)
    return km.cluster_centers()


def _dropin(x, w, c0, metric, steps):
    from jaxkmeans.sklearn import KMeans

    assert metric == "squared_euclidean"
    km = KMeans(len(c0), init=c0, n_init=1, max_iter=steps, tol=0.0).fit(x, sample_weight=w)
    return km.cluster_centers_


MODES = {
    "fit": _fit,
    "fit_mesh": functools.partial(_fit, mesh="mesh1"),
    "estimator_1_batch": _estimator,
    "estimator_3_batches": functools.partial(_estimator, batches=3),
    "estimator_mesh": functools.partial(_estimator, batches=3, mesh="mesh1"),
    "dropin": _dropin,
}


def _applies(mode: str, w, metric: str) -> bool:
    if mode.startswith("estimator") and w is not None:
        return False  # the estimator's input has no weights
    return not (mode == "dropin" and metric != "squared_euclidean")


def _close(a, b, x):
    # A few float32 ulps at the data's magnitude: different frames round differently,
    # but one point assigned differently moves a center by far more.
    atol = 8 * float(np.spacing(np.float32(np.abs(x).max()))) + 1e-5
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_computes_the_same_iteration(mode, name, steps, tmp_path):
    x, w, c0, metric = _hard(name)
    if not _applies(mode, w, metric):
        pytest.skip(f"{mode} does not take this input")
    fn = MODES[mode]
    kwargs = {}
    if isinstance(fn, functools.partial) and fn.keywords.get("mesh") == "mesh1":
        kwargs["mesh"] = _mesh1()
    if mode.startswith("estimator"):
        kwargs["tmp"] = str(tmp_path / "m")
    got = fn(x, w, c0, metric, steps, **kwargs)
    ref = _lloyd_step(x, w, c0, metric, steps)
    _close(got, ref, x)


def test_empty_clusters_take_distinct_points_in_every_mode(tmp_path):
    """The issue's example: four empty clusters, duplicated farthest points."""
    x, _, c0, metric = _hard("duplicates")
    want = {(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0), (5.0, 5.0)}
    for mode, fn in [("lloyd_step", _lloyd_step)] + list(MODES.items()):
        kwargs = {"tmp": str(tmp_path / mode)} if mode.startswith("estimator") else {}
        if isinstance(fn, functools.partial) and fn.keywords.get("mesh") == "mesh1":
            kwargs["mesh"] = _mesh1()
        c = fn(x, None, c0, metric, 1, **kwargs)
        assert {tuple(np.round(r, 4)) for r in np.asarray(c, np.float64)} == want, mode


def test_integer_ties_go_to_the_lowest_index():
    """Integer data near 1e5: every exact tie goes to the lowest center index."""
    x, _, c0, _ = _hard("integer_ties")
    d = ((x[:, None, :].astype(np.float64) - c0[None].astype(np.float64)) ** 2).sum(-1)
    ref = d.argmin(1)  # numpy's argmin: first index of the minimum
    assert (np.sort(d, axis=1)[:, 0] == np.sort(d, axis=1)[:, 1]).sum() > 10  # many ties
    for kernel in ("auto", "xla"):
        labels, dist = jaxkmeans.assign(x, c0, kernel=kernel)
        np.testing.assert_array_equal(np.asarray(labels), ref)
        np.testing.assert_array_equal(np.asarray(dist), d.min(1).astype(np.float32))


def test_cosine_distinct_directions_are_counted_alike_in_every_mode(tmp_path):
    """Rows [a, 3a, e3]: fit and the estimator agree on whether 3a is a's direction (one
    row-identity rule); exact multiples (2a) are always refused for k=3."""
    rng = np.random.default_rng(5)
    refused = 0
    for i in range(8):
        a = rng.normal(size=3).astype(np.float32)
        for mult in (np.float32(3), np.float32(2)):
            x = np.stack([a, mult * a, np.array([0, 0, 1], np.float32)])
            outcomes = []
            for run in ("fit", "estimator"):
                try:
                    if run == "fit":
                        jaxkmeans.fit(KEY, x, 3, metric="cosine")
                    else:
                        path = str(tmp_path / f"c{i}{mult}")
                        jaxkmeans.KMeans(3, distance_metric="cosine", model_dir=path).train(x)
                    outcomes.append("trained")
                except ValueError as e:
                    assert "distinct non-zero directions" in str(e)
                    outcomes.append("refused")
            assert outcomes[0] == outcomes[1], (a, mult, outcomes)
            refused += outcomes[0] == "refused"
            if mult == 2:
                assert outcomes[0] == "refused"
    assert refused >= 11  # 8 exact (2a) + most of the 3a


FORCED_CODE = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_engine import DATASETS, _applies, _estimator, _fit, _hard
mesh = jax.make_mesh((jax.device_count(),), ("data",))
out = {{}}
for name in DATASETS:
    x, w, c0, metric = _hard(name)
    for steps in (1, 3):
        out[f"fit/{{name}}/{{steps}}"] = _fit(x, w, c0, metric, steps, mesh=mesh).tolist()
        if _applies("estimator", w, metric):
            c = _estimator(x, w, c0, metric, steps, batches=3, mesh=mesh)
            out[f"estimator/{{name}}/{{steps}}"] = np.asarray(c).tolist()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_four_forced_devices_compute_the_same_iteration():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    code = FORCED_CODE.format(tests=os.path.dirname(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(got) == 2 * (len(DATASETS) + 4)
    for key, centers in got.items():
        _, name, steps = key.split("/")
        x, w, c0, metric = _hard(name)
        _close(np.asarray(centers, np.float32), _lloyd_step(x, w, c0, metric, int(steps)), x)


# ------------------------------------------------------------------- kernels


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [None, 1, 7, 64, 599])
def test_xla_and_default_kernel_agree_on_chunks_and_tails(metric, chunk):
    """Every chunk size (the last chunk overlaps the previous one) on the XLA kernel
    explicitly, against the default kernel and a float64 reference."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(600, 5)) + 20).astype(np.float32)
    c = x[rng.choice(600, 9, replace=False)]
    w = rng.uniform(0, 2, size=600).astype(np.float32)
    ref_new, ref_st = jaxkmeans.lloyd_step(x, c, metric=metric, sample_weight=w)
    for kernel in ("xla", "auto"):
        labels, dist = jaxkmeans.assign(x, c, metric, chunk_size=chunk, kernel=kernel)
        if metric == "squared_euclidean":
            d = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
            np.testing.assert_array_equal(np.asarray(labels), d.argmin(1))
            np.testing.assert_allclose(np.asarray(dist), d.min(1), rtol=1e-4, atol=1e-4)
        new, st = jaxkmeans.lloyd_step(
            x, c, metric=metric, sample_weight=w, chunk_size=chunk, kernel=kernel
        )
        np.testing.assert_allclose(np.asarray(new), np.asarray(ref_new), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.asarray(st.counts), np.asarray(ref_st.counts), rtol=1e-5)
        np.testing.assert_allclose(float(st.loss), float(ref_st.loss), rtol=1e-5)
        total = jaxkmeans.inertia(x, c, metric, sample_weight=w, chunk_size=chunk, kernel=kernel)
        np.testing.assert_allclose(float(total), float(ref_st.loss), rtol=1e-5)


def test_make_pass_checks_and_resolves():
    with pytest.warns(DeprecationWarning, match="update_method"):
        assert engine.make_pass(update_method="segment_sum") == engine.Pass(sums="segment_sum")
    with pytest.raises(ValueError, match=r"`kernel` must be one of .*got 'gpu'"):
        engine.make_pass(kernel="gpu")
    with pytest.raises(ValueError, match=r"`update_method` must be one of .*got 'scatter'"):
        engine.make_pass(update_method="scatter")
    spec = engine.make_pass(mesh=_mesh1())
    assert spec.axes == ("data",)
    assert hash(spec) == hash(engine.make_pass(mesh=_mesh1()))


# ---------------------------------------------------------- lowering for GPU / TPU


def _lowered(fn, platform, *shapes):
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    exported = jax.export.export(jax.jit(fn), platforms=[platform])(*args)
    return exported.mlir_module()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowering_for_an_accelerator_uses_its_block_sizes(platform):
    """Lowered from this CPU host, the blocks are the accelerator's, not the CPU's, and
    the native CPU kernel is not in the program."""
    n, k, d = 200_000, 1000, 16
    acc = jaxkmeans.auto_chunk_size(n, k, d, backend="gpu" if platform == "cuda" else "tpu")
    cpu = jaxkmeans.auto_chunk_size(n, k, d, backend="cpu")
    assert acc != cpu
    programs = {
        "assign": (lambda x, c: jaxkmeans.assign(x, c), (n, d), (k, d)),
        "lloyd_step": (lambda x, c: jaxkmeans.lloyd_step(x, c), (n, d), (k, d)),
        "fit": (lambda x, c: jaxkmeans.fit(KEY, x, k, init=c, max_iter=3), (n, d), (k, d)),
    }
    for name, (fn, *shapes) in programs.items():
        text = _lowered(fn, platform, *shapes)
        assert f"tensor<{acc}x{k}xf32>" in text, name
        assert f"tensor<{cpu}x{k}xf32>" not in text, name
        assert "jaxkmeans_" not in text, name  # no native custom call


def test_lowering_for_cpu_uses_the_cpu_blocks():
    n, k, d = 200_000, 1000, 16
    cpu = jaxkmeans.auto_chunk_size(n, k, d, backend="cpu")
    text = _lowered(lambda x, c: jaxkmeans.assign(x, c, kernel="xla"), "cpu", (n, d), (k, d))
    assert f"tensor<{cpu}x{k}xf32>" in text


@pytest.mark.parametrize(
    "platform,target", [("cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu_custom_call")]
)
def test_pallas_kernel_lowers_into_every_public_entry_point(platform, target):
    """kernel="pallas": assign, lloyd_step and fit lowered for GPU/TPU from this host hold
    the Pallas kernel and no (rows, k) float32 score buffer."""
    n, k, d = 5000, 300, 16
    programs = {
        "assign": lambda x, c: jaxkmeans.assign(x, c, kernel="pallas"),
        "lloyd_step": lambda x, c: jaxkmeans.lloyd_step(x, c, kernel="pallas"),
        "fit": lambda x, c: jaxkmeans.fit(KEY, x, k, init=c, max_iter=3, kernel="pallas"),
    }
    checks = [jax.export.DisabledSafetyCheck.custom_call(target)]
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (k, d))]
    for name, fn in programs.items():
        export = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)
        text = export(*args).mlir_module()
        assert target in text, name
        blocks = {(int(a), int(b)) for a, b in re.findall(r"tensor<(\d+)x(\d+)xf32>", text)}
        assert not [s for s in blocks if s[0] >= 1000 and s[1] >= k], (name, sorted(blocks))
