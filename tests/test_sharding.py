"""Data-parallel runs: forced host devices and several processes on loopback.

Each case runs in a subprocess, because the device count must be fixed before jax is
imported and ``jax.distributed`` can be initialized once per process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jaxkmeans

pytestmark = pytest.mark.slow

COMMON = """
import json, os, sys
import numpy as np
def data(n=1501, d=5, k=6, seed=0, spread=10.0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-spread, spread, size=(k, d))
    return (means[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)
"""


def _run(code: str, devices: int = 1, timeout: float = 240, env_extra=None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", COMMON + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reference(init: str | np.ndarray, n_init: int = 1, weights: bool = False):
    ns: dict = {}
    exec(COMMON, ns)
    x = ns["data"]()
    w = np.linspace(0.5, 2.0, len(x)).astype(np.float32) if weights else None
    import jax

    init_arg = x[:6] if isinstance(init, str) and init == "array" else init
    return jaxkmeans.fit(jax.random.PRNGKey(0), x, 6, init=init_arg, n_init=n_init, sample_weight=w)


FIT_CODE = """
import jax, jaxkmeans
mesh = jax.make_mesh((jax.device_count(),), ("data",))
x = data()
out = {}
for name, init, n_init, weighted in [("pp", "kmeans_plus_plus", 1, False),
                                     ("array", x[:6], 1, True),
                                     ("restarts", "kmeans_parallel", 2, False)]:
    w = np.linspace(0.5, 2.0, len(x)).astype(np.float32) if weighted else None
    r = jaxkmeans.fit(jax.random.PRNGKey(0), x, 6, init=init, n_init=n_init,
                      sample_weight=w, mesh=mesh)
    out[name] = {"centers": np.asarray(r.centers).tolist(), "loss": float(r.loss),
                 "labels": np.asarray(r.labels).tolist(), "n_iter": int(r.n_iter)}
out["devices"] = jax.device_count()
print(json.dumps(out))
"""


@pytest.mark.parametrize("devices", [2, 4, 8])
def test_fit_on_forced_devices_matches_one_device(devices):
    got = _run(FIT_CODE, devices)
    assert got["devices"] == devices
    for name, init, n_init, weighted in [
        ("pp", "kmeans_plus_plus", 1, False),
        ("array", "array", 1, True),
        ("restarts", "kmeans_parallel", 2, False),
    ]:
        ref = _reference(init, n_init, weighted)
        np.testing.assert_allclose(got[name]["centers"], np.asarray(ref.centers), atol=1e-4)
        np.testing.assert_allclose(got[name]["loss"], float(ref.loss), rtol=1e-5)
        assert got[name]["labels"] == np.asarray(ref.labels).tolist()
        assert got[name]["n_iter"] == int(ref.n_iter)


MP_CODE = """
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                           initialization_timeout=60)
import jaxkmeans
mesh = jax.make_mesh((jax.device_count(),), ("data",))
x = data()
mine = np.array_split(x, nproc)[pid]          # different rows (and counts) per process
r = jaxkmeans.fit(jax.random.PRNGKey(0), mine, 6, init=x[:6], mesh=mesh)
print(json.dumps({"pid": pid, "centers": np.asarray(r.centers).tolist(), "loss": float(r.loss),
                  "labels": np.asarray(r.labels).tolist(), "n_iter": int(r.n_iter),
                  "devices": jax.device_count()}))
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(code: str, nproc: int, *args: str) -> list[dict]:
    """Runs `code` in `nproc` processes joined by jax.distributed on loopback; returns
    each one's last JSON line, ordered by process id."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                COMMON + textwrap.dedent(code),
                str(i),
                str(nproc),
                str(port),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(nproc)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


@pytest.mark.parametrize("nproc", [2, 3])
def test_fit_over_processes_matches_single_process(nproc):
    outs = _launch(MP_CODE, nproc)
    ref = _reference("array")
    labels = []
    for o in sorted(outs, key=lambda o: o["pid"]):
        assert o["devices"] == nproc
        np.testing.assert_allclose(o["centers"], np.asarray(ref.centers), atol=1e-4)
        np.testing.assert_allclose(o["loss"], float(ref.loss), rtol=1e-5)
        assert o["n_iter"] == int(ref.n_iter)
        labels += o["labels"]
    assert labels == np.asarray(ref.labels).tolist()


def test_mesh_argument_is_checked():
    import jax

    x = np.zeros((10, 2), np.float32)
    with pytest.raises(TypeError, match="mesh"):
        jaxkmeans.fit(jax.random.PRNGKey(0), x, 2, mesh="data")


def test_local_rows_drops_padding_on_an_explicit_mesh():
    # jax.make_mesh gives Explicit axes, where slicing a sharded dimension unevenly is
    # refused; local_rows must still give back the real rows of a padded 2-D array.
    out = _run(
        """
        import jax
        from jaxkmeans import sharding
        mesh = jax.make_mesh((4,), ("data",))
        x = np.arange(6, dtype=np.float32).reshape(3, 2)
        xs, _, _ = sharding.shard_rows(x, None, mesh)
        print(json.dumps({"padded": list(xs.shape),
                          "rows": np.asarray(sharding.local_rows(xs, 3)).tolist(),
                          "col": np.asarray(sharding.local_rows(xs[:, 0], 3)).tolist()}))
        """,
        devices=4,
    )
    assert out["padded"] == [4, 2]
    assert out["rows"] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert out["col"] == [0.0, 2.0, 4.0]


ESTIMATOR_CODE = """
import jax, jaxkmeans, tempfile
mesh = jax.make_mesh((jax.device_count(),), ("data",)) if jax.device_count() > 1 else None
x = data(spread=40.0)  # separated blobs: no label flips from float reduction order
init = [0]  # farthest-first: one initial center per blob (no center splits a blob)
for _ in range(5):
    init.append(int(((x[:, None] - x[init][None]) ** 2).sum(-1).min(1).argmax()))
batches = np.array_split(x, 4)
out = {}
for mode in ["full", "mini"]:
    d = tempfile.mkdtemp()
    km = jaxkmeans.KMeans(6, model_dir=d, initial_clusters=x[init], use_mini_batch=(mode == "mini"),
                          seed=0, config=jaxkmeans.RunConfig(mesh=mesh))
    km.train(batches, steps=6)
    again = jaxkmeans.KMeans(6, model_dir=d, use_mini_batch=(mode == "mini"),
                            config=jaxkmeans.RunConfig(mesh=mesh))
    out[mode] = {"centers": km.cluster_centers().tolist(), "step": again.global_step,
                 "restored": again.cluster_centers().tolist(), "score": km.score(x)}
print(json.dumps(out))
"""


@pytest.mark.parametrize("devices", [4])
def test_estimator_on_forced_devices_matches_one_device(devices):
    got = _run(ESTIMATOR_CODE, devices)
    ref = _run(ESTIMATOR_CODE, 1)
    for mode in ["full", "mini"]:
        np.testing.assert_allclose(got[mode]["centers"], ref[mode]["centers"], atol=1e-4)
        assert got[mode]["restored"] == got[mode]["centers"]
        assert got[mode]["step"] == 6
        np.testing.assert_allclose(got[mode]["score"], ref[mode]["score"], rtol=1e-5)


MP_ESTIMATOR_CODE = """
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, nproc, port, model_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                           initialization_timeout=60)
import jaxkmeans
mesh = jax.make_mesh((jax.device_count(),), ("data",))
x = data()
mine = np.array_split(x, nproc)[pid]
km = jaxkmeans.KMeans(6, model_dir=model_dir, initial_clusters=x[:6], use_mini_batch=False,
                      seed=0, config=jaxkmeans.RunConfig(mesh=mesh))
km.train(np.array_split(mine, 2 + pid), steps=4)     # different batch counts per process
print(json.dumps({"pid": pid, "centers": km.cluster_centers().tolist(),
                  "step": km.global_step}))
jax.distributed.shutdown()
"""


def test_estimator_over_processes_matches_single_process(tmp_path):
    model_dir = str(tmp_path / "model")
    outs = _launch(MP_ESTIMATOR_CODE, 2, model_dir)
    ns: dict = {}
    exec(COMMON, ns)
    x = ns["data"]()
    single = jaxkmeans.KMeans(6, initial_clusters=x[:6], use_mini_batch=False, seed=0)
    single.train(x, steps=4)
    for o in outs:
        assert o["step"] == 4
        np.testing.assert_allclose(o["centers"], single.cluster_centers(), atol=1e-4)
    # Process 0 wrote the checkpoints; they restore in a plain single process.
    np.testing.assert_allclose(
        jaxkmeans.load_variable(model_dir, "clusters"), single.cluster_centers(), atol=1e-4
    )


def test_streaming_memmap_keeps_memory_bounded(tmp_path):
    """examples/streaming.py on a 400 MB memmap: training adds far less than the file."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "examples", "streaming.py"),
            "--gigabytes",
            "0.4",
            "--batch-rows",
            "65536",
            "--steps",
            "2",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "global_step 3" in out
    import re

    peak, before = map(
        float, re.search(r"peak RSS (\d+) MB \(before training (\d+) MB", out).groups()
    )
    # The file is 410 MB, batches 16 MB: growth must stay well below the file. (Seen: 201
    # to 277 MB; allocator arenas vary with what else runs, hence the margin.)
    assert peak - before < 330, out


NO_GATHER_CODE = """
import re, jax, jax.numpy as jnp
from jaxkmeans import engine, initializers, sharding
mesh = engine.make_pass(mesh=jax.make_mesh((jax.device_count(),), ("data",))).mesh
x = data(n=4000, d=7)
xs, ws, n = sharding.shard_rows(x, None, mesh)
out = {}
for method in ["kmeans_plus_plus", "kmeans_parallel", "random", "kmc2"]:
    for kernel in ["auto", "xla"]:  # auto: the native kernel on CPU
        # as fit(mesh=...) makes it; small chunks, so that k-means|| loops over chunks
        options = {"chunk_size": 256} if method == "kmeans_parallel" else None
        spec = initializers.make_init(method, 6, "squared_euclidean", -1, options, "init",
                                      kernel, mesh)
        f = jax.jit(lambda key, xs, ws: initializers.init_impl(key, xs, ws, spec))
        hlo = f.lower(jax.random.PRNGKey(0), xs, ws).compile().as_text()
        gathers = [l for l in hlo.splitlines() if "all-gather(" in l]
        shapes = [g.split("=")[1].split("all-gather")[0] for g in gathers]
        out[f"{method} {kernel}"] = [g for g in shapes if re.search(r"\\[\\d+,7\\]", g)]
print(json.dumps(out))
"""


def test_initializers_on_sharded_data_do_not_gather_the_points():
    """Only per-row scalars (weights, distances, hashes) cross devices, never (n, d)."""
    got = _run(NO_GATHER_CODE, 4)
    methods = ["kmeans_plus_plus", "kmeans_parallel", "random", "kmc2"]
    assert got == {f"{m} {kernel}": [] for m in methods for kernel in ["auto", "xla"]}
