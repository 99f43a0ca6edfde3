"""Data dtypes: float16/bfloat16 are computed in float32; float64 in float64 with
jax_enable_x64, else in float32 with one UserWarning per process."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkmeans

KEY = jax.random.PRNGKey(0)


def far_blobs():
    """200 float16 points in 4 blobs near 3e4 (squared distances overflow float16:
    every function returned NaN when it computed in float16)."""
    rng = np.random.default_rng(0)
    means = [[0, 0], [300, 0], [0, 300], [300, 300]]
    x = np.concatenate([rng.normal(size=(50, 2)) * 20 + m for m in means])
    return (rng.permutation(x) + 30000).astype(np.float16)


LOW = {
    "float16": lambda x: x,
    "float16 jax": jnp.asarray,
    "bfloat16": lambda x: x.astype(jnp.bfloat16),
    "bfloat16 jax": lambda x: jnp.asarray(x, jnp.bfloat16),
}


def run_all(x, c, w):
    """Every public function on (x, centers, weights): a dict of numpy results."""
    out = {}
    r = jaxkmeans.fit(KEY, x, 4, sample_weight=w)
    out.update(fit_centers=r.centers, fit_labels=r.labels, fit_loss=r.loss)
    out["assign_labels"], out["assign_dist"] = jaxkmeans.assign(x, c)
    out["pairwise"] = jaxkmeans.pairwise_distances(x, c)
    out["inertia"] = jaxkmeans.inertia(x, c, sample_weight=w)
    out["lloyd_centers"], stats = jaxkmeans.lloyd_step(x, c, sample_weight=w)
    out["lloyd_loss"], out["lloyd_counts"] = stats.loss, stats.counts
    state, out["mb_loss"] = jaxkmeans.minibatch_step(
        jaxkmeans.KMeansState.create(c), x, sample_weight=w
    )
    out["mb_centers"] = state.centers
    out["init"] = jaxkmeans.init_centers(KEY, x, 4)
    return out


@pytest.mark.parametrize("kind", list(LOW))
def test_low_precision_computes_in_float32(kind):
    x16 = far_blobs()
    w16 = np.linspace(0.5, 2, len(x16)).astype(np.float16)
    to = LOW[kind]
    got = run_all(to(x16), to(x16[:4]), to(w16))
    # The bfloat16 values are not the float16 ones: the reference is the float32 run of
    # exactly the values passed.
    ref_x = np.asarray(to(x16), np.float32)
    ref = run_all(ref_x, ref_x[:4], np.asarray(to(w16), np.float32))
    for name, value in got.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            assert value.dtype == np.float32, (name, value.dtype)
            assert np.isfinite(value).all(), name
            np.testing.assert_allclose(value, np.asarray(ref[name]), rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(value, np.asarray(ref[name]), err_msg=name)
    # And the clustering is the right one (the blobs), not just finite.
    assert sorted(np.bincount(np.asarray(got["fit_labels"]), minlength=4)) == [50] * 4


def test_float16_under_jit():
    x16 = jnp.asarray(far_blobs())
    fit = jax.jit(jaxkmeans.fit, static_argnums=2)
    got = fit(KEY, x16, 4)
    ref = jaxkmeans.fit(KEY, np.asarray(x16, np.float32), 4)
    assert got.centers.dtype == jnp.float32
    np.testing.assert_allclose(got.centers, ref.centers, rtol=1e-6)
    d = jax.jit(jaxkmeans.pairwise_distances)(x16, x16[:4])
    assert d.dtype == jnp.float32 and bool(jnp.isfinite(d).all())


def test_float16_minibatch_state_and_mixed_centers():
    x16 = far_blobs()
    # float16 centers with float32 data (and the reverse) compute in float32.
    labels, dist = jaxkmeans.assign(x16.astype(np.float32), x16[:4])
    assert dist.dtype == jnp.float32 and bool(jnp.isfinite(dist).all())
    state = jaxkmeans.KMeansState.create(x16[:4])
    assert state.centers.dtype == jnp.float32
    state, loss = jaxkmeans.minibatch_step(state, x16)
    assert state.centers.dtype == jnp.float32 and np.isfinite(float(loss))


# ---------------------------------------------------------------- float64 (subprocess)


def run_script(code: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_ENABLE_X64", None)
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


X64_SCRIPT = """
import json, warnings
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jaxkmeans

warnings.simplefilter("error")  # no float64 warning with x64 on
rng = np.random.default_rng(0)
means = np.array([[0.0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]])
x = 1e8 + np.concatenate([m + rng.normal(size=(100, 3)) for m in means])
x = x[rng.permutation(len(x))]
c = x[[0, 1, 2, 3]]
ref_d = ((x[:, None, :] - c[None]) ** 2).sum(-1)  # exact-ish: x - c is exact here

def check(name, got, want, rtol=1e-9, atol=0.0):
    got = np.asarray(got)
    assert got.dtype == np.float64, (name, got.dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)

out = {}
for kernel in ["auto", "xla", "pallas"]:
    labels, dist = jaxkmeans.assign(x, c, kernel=kernel)
    np.testing.assert_array_equal(labels, ref_d.argmin(1))
    check("assign " + kernel, dist, ref_d.min(1), atol=1e-9)
check("pairwise", jaxkmeans.pairwise_distances(x, c), ref_d, atol=1e-9)
check("inertia", jaxkmeans.inertia(x, c), ref_d.min(1).sum())

lab = ref_d.argmin(1)
means_np = np.stack([x[lab == j].mean(0) for j in range(4)])
new, stats = jaxkmeans.lloyd_step(x, c)
check("lloyd centers", new, means_np, rtol=0, atol=1e-6)  # ulp at 1e8 is 1.5e-8
check("lloyd loss", stats.loss, ref_d.min(1).sum())

state, loss = jaxkmeans.minibatch_step(jaxkmeans.KMeansState.create(c), x)
assert state.centers.dtype == np.float64 and np.asarray(loss).dtype == np.float64

r = jaxkmeans.fit(jax.random.PRNGKey(0), x, 4)
fl = np.asarray(r.labels)
fc = np.stack([x[fl == j].mean(0) for j in range(4)])  # a fixed point of Lloyd
check("fit centers", r.centers, fc, rtol=0, atol=1e-6)
fd = ((x - fc[fl]) ** 2).sum()
check("fit loss", r.loss, fd)
assert sorted(np.bincount(fl, minlength=4).tolist()) == [100] * 4
# The distances are float64 accurate: float32 would be off by ~1e-7 relative or worse.
labels, dist = jaxkmeans.assign(x, r.centers)
np.testing.assert_array_equal(labels, fl)
check("fit assign", dist, ((x - np.asarray(r.centers)[fl]) ** 2).sum(1), atol=1e-9)
print(json.dumps({"ok": True}))
"""


@pytest.mark.slow
def test_float64_with_x64_computes_in_float64():
    assert run_script(X64_SCRIPT) == {"ok": True}


NO_X64_SCRIPT = """
import json, warnings
import numpy as np
import jax
import jaxkmeans

rng = np.random.default_rng(0)
x64 = rng.normal(size=(60, 2))
records = []
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    # No warning for float32 / integer data, nested lists, or float64 centers/weights
    # with float32 data (the data decides the computation).
    x32 = x64.astype(np.float32)
    jaxkmeans.assign(x32, x64[:3])
    jaxkmeans.inertia(x32, x64[:3], sample_weight=np.ones(60))
    jaxkmeans.assign(np.arange(12).reshape(6, 2), x32[:2])
    jaxkmeans.assign(x64.tolist(), x32[:2])
    try:
        from jaxkmeans.sklearn import KMeans as SKKMeans
    except ImportError:
        SKKMeans = None
    if SKKMeans is not None:  # the drop-in documents its own dtype rule
        SKKMeans(3, n_init=1, random_state=0).fit(x64).predict(x64)
    before = sum("jax_enable_x64" in str(w.message) for w in caught)
    first = jaxkmeans.fit(jax.random.PRNGKey(0), x64, 3)  # <- the one warning
    jaxkmeans.assign(x64, x64[:3])
    jaxkmeans.pairwise_distances(x64, x64[:3])
    jaxkmeans.lloyd_step(x64, x64[:3])
    jaxkmeans.inertia(x64, x64[:3])
    jaxkmeans.minibatch_step(jaxkmeans.KMeansState.create(x64[:3]), x64)
    jaxkmeans.fit(jax.random.PRNGKey(1), x64, 3)
records = [
    {"category": w.category.__name__, "message": str(w.message), "file": w.filename}
    for w in caught
]
print(json.dumps({"before": before, "records": records, "dtype": str(first.centers.dtype)}))
"""


@pytest.mark.slow
def test_float64_without_x64_warns_once():
    out = run_script(NO_X64_SCRIPT)
    assert out["before"] == 0, out["records"]
    assert out["dtype"] == "float32"
    ours = [r for r in out["records"] if "jax_enable_x64" in r["message"]]
    assert len(ours) == 1, out["records"]
    (w,) = ours
    assert w["category"] == "UserWarning"
    assert "float64" in w["message"] and "float32" in w["message"]
    assert 'jax.config.update("jax_enable_x64", True)' in w["message"]
    assert w["file"] == "<string>"  # attributed to the user's call, not the package
