"""Peak memory of full-batch streaming training on batches read with plain file reads.

Writes a raw float32 file of N GB (once; reused if it is already there), then, in a
fresh child process per size, trains ``jaxkmeans.KMeans(k, use_mini_batch=False)`` on
an input_fn generator that reads each batch with ``np.fromfile(f, count=...)`` (or
``f.readinto`` with ``--reader readinto``): no numpy memmap, so every batch is a new
anonymous host allocation. It reports the peak RSS growth above the RSS right before
training (VmHWM reset through /proc/self/clear_refs, and an RSS sampling thread as a
cross-check) and the seconds per full-batch step.

    python bench/streaming_memory.py --gigabytes 1 2 [--batch-mb 64] [--steps 2]
        [--reader fromfile|readinto] [--keep] [--out bench/results/streaming_memory.json]

The child prints one JSON line; the parent collects them (and writes ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np

# The checkout measured (another one, e.g. a copy of an older version, through
# JAXKMEANS_ROOT).
ROOT = os.environ.get("JAXKMEANS_ROOT") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+)", f.read(), re.M).group(1))


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def hwm_mb() -> float:
    return _status_kb("VmHWM") / 1024


def reset_hwm() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_data(path: str, n: int, d: int, k: int, seed: int = 0) -> None:
    """n x d float32 Gaussian blobs around k centers, raw (no header), in blocks."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-50, 50, size=(k, d)).astype(np.float32)
    block = 1 << 18
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        for start in range(0, n, block):
            m = min(n, start + block) - start
            x = rng.standard_normal((m, d), dtype=np.float32)
            x += means[rng.integers(0, k, m)]
            x.tofile(f)
    os.replace(tmp, path)


class Sampler(threading.Thread):
    """Samples RSS every `period` seconds (a cross-check of VmHWM)."""

    def __init__(self, period: float = 0.01):
        super().__init__(daemon=True)
        self.period = period
        self.peak = rss_mb()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.period)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def child(args: argparse.Namespace) -> None:
    import jax

    import jaxkmeans

    d, k = args.dims, args.clusters
    size = os.path.getsize(args.path)
    n = size // (4 * d)
    rows = max(1, (args.batch_mb << 20) // (4 * d))

    def input_fn():
        # A fresh pass over the file each time train() asks for one: plain reads, a
        # new host array per batch.
        with open(args.path, "rb", buffering=0) as f:
            for start in range(0, n, rows):
                m = min(rows, n - start)
                if args.reader == "readinto":
                    batch = np.empty((m, d), np.float32)
                    f.readinto(memoryview(batch).cast("B"))
                else:
                    batch = np.fromfile(f, dtype=np.float32, count=m * d).reshape(m, d)
                yield batch

    # Warm up (compile) on an input with the same batch shape, so the measured
    # growth is what streaming holds, not XLA's compile-time memory.
    warm = np.random.default_rng(1).normal(size=(rows, d)).astype(np.float32)
    jaxkmeans.KMeans(k, use_mini_batch=False, initial_clusters=args.init, seed=0).train(
        [warm, warm], steps=1
    )
    del warm

    kmeans = jaxkmeans.KMeans(
        k, use_mini_batch=False, initial_clusters=args.init, seed=0, model_dir=args.model_dir
    )
    import gc

    gc.collect()
    time.sleep(0.2)
    can_reset = reset_hwm()
    before = rss_mb()
    sampler = Sampler()
    sampler.start()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        kmeans.train(input_fn, steps=1)
        times.append(time.perf_counter() - t0)
    sampled = sampler.stop()
    peak = hwm_mb() if can_reset else sampled
    out = {
        "gigabytes": size / 2**30,
        "file_mb": size / 2**20,
        "batch_mb": rows * d * 4 / 2**20,
        "batches": -(-n // rows),
        "reader": args.reader,
        "dims": d,
        "clusters": k,
        "init": args.init,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_growth_mb": round(peak - before, 1),
        "sampled_peak_growth_mb": round(sampled - before, 1),
        "rss_after_mb": round(rss_mb(), 1),
        "vmhwm_reset": can_reset,
        "seconds_per_step": [round(t, 3) for t in times],
        "global_step": kmeans.global_step,
        "loss": kmeans.loss_history[-1][1],
        "centers_sum": float(np.asarray(kmeans.cluster_centers(), np.float64).sum()),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
    }
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gigabytes", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--batch-mb", type=int, default=64)
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--clusters", type=int, default=32)
    p.add_argument(
        "--steps", type=int, default=2, help="train(steps=1) calls (the first initializes)"
    )
    p.add_argument("--init", default="kmeans_plus_plus")
    p.add_argument("--reader", choices=["fromfile", "readinto"], default="fromfile")
    p.add_argument("--dir", default="/tmp/jaxkmeans-streaming-memory")
    p.add_argument("--keep", action="store_true", help="keep the data files")
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    os.makedirs(args.dir, exist_ok=True)
    results = []
    for gb in args.gigabytes:
        n = int(gb * 2**30) // (4 * args.dims)
        path = os.path.join(args.dir, f"data-{gb:g}gb-d{args.dims}.f32")
        if not os.path.exists(path) or os.path.getsize(path) != n * 4 * args.dims:
            t0 = time.perf_counter()
            write_data(path, n, args.dims, args.clusters)
            print(f"wrote {path} ({gb:g} GB) in {time.perf_counter() - t0:.1f} s", flush=True)
        model_dir = os.path.join(args.dir, f"model-{gb:g}-{os.getpid()}")
        cmd = [
            sys.executable, os.path.abspath(__file__), "--child", "--path", path,
            "--model-dir", model_dir, "--batch-mb", str(args.batch_mb), "--dims",
            str(args.dims), "--clusters", str(args.clusters), "--steps", str(args.steps),
            "--init", args.init, "--reader", args.reader,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        subprocess.run(["rm", "-rf", model_dir])
        if not args.keep:
            os.remove(path)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"child failed for {gb} GB (rc {proc.returncode})")
        res = json.loads(line[0][7:])
        results.append(res)
        print(
            f"{res['gigabytes']:.2f} GB ({res['batches']} x {res['batch_mb']:.0f} MB, "
            f"{res['reader']}): peak RSS growth {res['peak_growth_mb']:.0f} MB "
            f"(sampled {res['sampled_peak_growth_mb']:.0f}; before {res['rss_before_mb']:.0f} MB), "
            f"s/step {res['seconds_per_step']}",
            flush=True,
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            created = time.strftime("%Y-%m-%dT%H:%M:%S")
            json.dump({"created": created, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
