"""k-means over several processes with JAX's distributed runtime (on loopback).

Run without arguments: it starts NUM_PROCESSES workers on 127.0.0.1, each of which
joins the runtime with `jax.distributed.initialize`, reads only its own share of the
rows, and takes part in one data-parallel `fit` and one estimator `train`, both started
with k-means++ (computed over all processes' rows). On a real cluster, start one worker
per host with the coordinator's address and a shared model directory instead. The
checkpoints go to a temporary directory that is deleted at the end, also on error.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import numpy as np

NUM_PROCESSES = 2
N, D, K = 60_000, 8, 10


def data():
    rng = np.random.default_rng(0)
    means = rng.uniform(-20, 20, size=(K, D))
    return (means[rng.integers(0, K, N)] + rng.normal(size=(N, D))).astype(np.float32)


def worker(process_id: int, port: int, model_dir: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{port}",
        num_processes=NUM_PROCESSES,
        process_id=process_id,
        initialization_timeout=60,
    )
    import jaxkmeans

    x = data()
    mine = x[process_id::NUM_PROCESSES]  # each process feeds different rows
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    # k-means++ over the rows of all processes; the same key everywhere.
    result = jaxkmeans.fit(jax.random.PRNGKey(0), mine, K, init="kmeans_plus_plus", mesh=mesh)
    print(
        f"[process {process_id}] fit over {jax.device_count()} devices: rows here {len(mine)}, "
        f"loss (all rows) {float(result.loss):.1f}, iterations {int(result.n_iter)}, "
        f"labels here {result.labels.shape}",
        flush=True,
    )
    # The estimator: every process trains on its own batches; process 0 writes the
    # checkpoints into the shared model_dir.
    kmeans = jaxkmeans.KMeans(
        num_clusters=K,
        model_dir=model_dir,
        initial_clusters="kmeans_plus_plus",
        use_mini_batch=False,
        seed=0,
        config=jaxkmeans.RunConfig(mesh=mesh),
    )
    kmeans.train(np.array_split(mine, 3), steps=5)
    print(
        f"[process {process_id}] estimator: global_step {kmeans.global_step}, "
        f"loss {kmeans.loss_history[-1][1]:.1f}",
        flush=True,
    )
    jax.distributed.shutdown()


def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # SIGTERM as an exception too, so that the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    model_dir = tempfile.mkdtemp(prefix="jaxkmeans-mp-")
    procs = []
    try:
        procs = [
            subprocess.Popen([sys.executable, __file__, str(i), str(port), model_dir], env=env)
            for i in range(NUM_PROCESSES)
        ]
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=300))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(-1)
        if any(codes):
            print("worker exit codes:", codes, file=sys.stderr)
            return 1
    finally:
        for p in procs:  # on error or Ctrl-C: no worker outlives us
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(model_dir, ignore_errors=True)
    import jax

    import jaxkmeans

    x = data()
    # The same rows in the order the mesh holds them (process 0's, then process 1's).
    ordered = np.concatenate([x[i::NUM_PROCESSES] for i in range(NUM_PROCESSES)])
    single = jaxkmeans.fit(jax.random.PRNGKey(0), ordered, K, init="kmeans_plus_plus")
    print(f"[single process] loss {float(single.loss):.1f}, iterations {int(single.n_iter)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4:
        worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
