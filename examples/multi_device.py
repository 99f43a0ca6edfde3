"""Data-parallel k-means over several devices of one process.

On a machine without accelerators the CPU is split into forced host devices (the flag
must be set before jax is imported). On a GPU/TPU host, drop the flag: the mesh then
spans the real devices.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxkmeans  # noqa: E402

devices = jax.devices()
mesh = jax.make_mesh((len(devices),), ("data",))
print(f"{len(devices)} devices: {[str(d) for d in devices]}")

rng = np.random.default_rng(0)
means = rng.uniform(-20, 20, size=(16, 8))
x = (means[rng.integers(0, 16, 100_000)] + rng.normal(size=(100_000, 8))).astype(np.float32)
key = jax.random.PRNGKey(0)


# The functional API: rows are sharded over the mesh, statistics psum'd, centers replicated.
# Each call is run once first so that the timings below exclude compilation.
def timed(**kwargs):
    jax.block_until_ready(jaxkmeans.fit(key, x, 16, **kwargs))  # warm-up: compiles
    t0 = time.perf_counter()
    result = jax.block_until_ready(jaxkmeans.fit(key, x, 16, **kwargs))
    return result, time.perf_counter() - t0


sharded, t_sharded = timed(mesh=mesh)
single, t_single = timed()
print(
    f"fit on {mesh.size} devices: loss {float(sharded.loss):.1f}, "
    f"{int(sharded.n_iter)} iterations, {t_sharded:.3f} s (compiled beforehand)"
)
print(
    f"fit on 1 device:  loss {float(single.loss):.1f}, {int(single.n_iter)} iterations, "
    f"{t_single:.3f} s (compiled beforehand)"
)
print("max center difference:", float(np.abs(np.asarray(sharded.centers - single.centers)).max()))

# The estimator: the same code with RunConfig(mesh=...). Its checkpoints go to a
# temporary directory, deleted at the end.
with tempfile.TemporaryDirectory(prefix="jaxkmeans-md-") as model_dir:
    kmeans = jaxkmeans.KMeans(
        num_clusters=16,
        model_dir=model_dir,
        use_mini_batch=False,
        seed=0,
        initial_clusters="kmeans_plus_plus",
        config=jaxkmeans.RunConfig(mesh=mesh),
    )
    kmeans.train(np.array_split(x, 10), steps=5)
    print("estimator on the mesh: global_step", kmeans.global_step, "score", kmeans.score(x))
