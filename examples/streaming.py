"""Full-batch k-means over data larger than memory: a numpy memmap read in slices.

The example writes its own data file (about 2 GB by default; `--gigabytes` changes it),
then trains `jaxkmeans.KMeans(use_mini_batch=False)` on an input_fn that yields
slices of the memmap. Each step is one exact Lloyd iteration over the whole file: the
per-center sums of every slice are added up on the device, and the next slice is read
while the current one computes. Peak memory stays at a few slices, whatever the file
size. The data file and the model live in a temporary directory that is deleted at the
end, also on error or Ctrl-C (`--dir` only chooses where that directory is created).

    python examples/streaming.py [--gigabytes 2] [--batch-rows 262144] [--steps 3]
"""

import argparse
import os
import resource
import shutil
import signal
import sys
import tempfile
import time

import numpy as np

import jaxkmeans


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_data(path: str, n: int, d: int, k: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    means = rng.uniform(-50, 50, size=(k, d)).astype(np.float32)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    block = 1 << 18
    for start in range(0, n, block):
        stop = min(n, start + block)
        labels = rng.integers(0, k, stop - start)
        mm[start:stop] = means[labels] + rng.normal(size=(stop - start, d)).astype(np.float32)
    mm.flush()
    del mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--batch-rows", type=int, default=1 << 18)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--dir",
        default=None,
        help="where to create the temporary working directory (deleted at the end)",
    )
    parser.add_argument(
        "--compare-in-memory",
        action="store_true",
        help="also time one in-memory Lloyd step on the whole file",
    )
    args = parser.parse_args()

    d, k = args.dims, args.clusters
    n = int(args.gigabytes * 2**30 / (4 * d))
    # SIGTERM as an exception too, so that the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    workdir = tempfile.mkdtemp(prefix="jaxkmeans-stream-", dir=args.dir)
    try:
        run(args, workdir, n, d, k)
    finally:  # the data file is gigabytes: never leave it behind
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {workdir}")


def run(args: argparse.Namespace, workdir: str, n: int, d: int, k: int) -> None:
    path = os.path.join(workdir, "data.npy")
    t0 = time.perf_counter()
    write_data(path, n, d, k)
    print(
        f"wrote {n:,} x {d} float32 ({os.path.getsize(path) / 2**30:.2f} GiB) to {path} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    rss_before = peak_rss_mb()

    data = np.load(path, mmap_mode="r")

    def input_fn():
        # A fresh pass over the file each time train() asks for one.
        for start in range(0, n, args.batch_rows):
            yield np.asarray(data[start : start + args.batch_rows])

    kmeans = jaxkmeans.KMeans(
        num_clusters=k,
        use_mini_batch=False,
        initial_clusters="kmeans_plus_plus",
        seed=0,
        model_dir=os.path.join(workdir, "model"),
    )
    kmeans.train(input_fn, steps=1)  # initialization + first step (includes compiling)
    t0 = time.perf_counter()
    kmeans.train(input_fn, steps=args.steps)
    per_step = (time.perf_counter() - t0) / args.steps
    print(
        f"streaming: {per_step:.2f} s per full-batch Lloyd step over "
        f"{-(-n // args.batch_rows)} slices; global_step {kmeans.global_step}; "
        f"loss {kmeans.loss_history[-1][1]:.4g}"
    )
    print(
        f"peak RSS {peak_rss_mb():.0f} MB (before training {rss_before:.0f} MB; "
        f"the file is {os.path.getsize(path) / 2**20:.0f} MB)"
    )

    if args.compare_in_memory:
        import jax

        x = jax.numpy.asarray(np.load(path))
        centers = kmeans.cluster_centers()
        step = jax.jit(lambda x, c: jaxkmeans.lloyd_step(x, c)[0])
        jax.block_until_ready(step(x, centers))
        t0 = time.perf_counter()
        for _ in range(args.steps):
            centers = step(x, centers)
        jax.block_until_ready(centers)
        print(f"in memory: {(time.perf_counter() - t0) / args.steps:.2f} s per Lloyd step")


if __name__ == "__main__":
    main()
