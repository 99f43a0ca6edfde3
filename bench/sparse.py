"""Sparse k-means: jaxkmeans vs scikit-learn's sparse Lloyd on a TF-IDF-like matrix (issue 16).

A CSR matrix of ``--rows`` x ``--cols`` with about ``--nnz`` nonzeros (row lengths
log-normal, columns drawn from a Zipf-like law, values exponential, rows L2-normalized:
what TF-IDF vectors of documents look like) is clustered into k clusters, for each k of
``--clusters`` (the issue's 20 and 100 by default), by ``--iters`` (5) Lloyd iterations
from the same initial centers (k distinct rows drawn with a fixed seed), by

- ``jaxkmeans``: ``jaxkmeans.fit(key, X, k, init=centers, max_iter=5, tol=0)`` on the
  scipy CSR matrix (the functional core; conversion to its sparse layout included);
- ``jaxkmeans.sklearn``: the drop-in ``KMeans(k, init=centers, n_init=1, max_iter=5,
  tol=0)`` (distinct-row merge and the final labels included);
- ``sklearn``: scikit-learn's ``KMeans(..., algorithm="lloyd")``, same arguments;
- ``sklearn-float64``: the same on a float64 copy of the data (its labels are exact: a
  reference for how far two float32 computations drift apart over 5 iterations, since
  TF-IDF rows have many near-ties that float32 rounding decides either way).

Each runs in a fresh child process: data made, one warm-up fit (compiles), then
``--repeats`` timed fits. Extra peak memory is the peak RSS (VmHWM, reset right after
the data is made) minus the RSS at that moment: it includes the warm-up's compilation.
The parent writes ``bench/results/sparse.json``: one record per (k, contestant), each
with its ``clusters``, times, inertia, the relative inertia difference to float32 and
float64 scikit-learn at the same k and the time ratios to float32 scikit-learn. The file
is rewritten after every k, so an interrupted run keeps the cluster counts it finished.

    python bench/sparse.py [--rows 200000] [--cols 50000] [--nnz 10000000]
        [--clusters 20 100] [--iters 5] [--repeats 3] [--out bench/results/sparse.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from streaming_memory import hwm_mb, reset_hwm, rss_mb  # noqa: E402  (peak-RSS probes)

METHODS = ("jaxkmeans", "jaxkmeans.sklearn", "sklearn", "sklearn-float64")


def tfidf_like(n: int, d: int, nnz: int, seed: int = 0):
    """A CSR float32 (n, d) matrix with about `nnz` nonzeros, rows L2-normalized."""
    import scipy.sparse as sps

    rng = np.random.default_rng(seed)
    lens = rng.lognormal(0.0, 0.5, n)
    # Drawn with repetition then summed: ask for a little more than nnz.
    lens = np.clip(np.round(lens * 1.09 * nnz / lens.sum()), 1, d).astype(np.int64)
    p = 1.0 / np.arange(1, d + 1) ** 0.9
    p /= p.sum()
    cols = rng.choice(d, size=int(lens.sum()), p=p).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    vals = rng.exponential(1.0, cols.shape[0]).astype(np.float32)
    x = sps.csr_matrix((vals, cols, indptr), shape=(n, d))
    x.sum_duplicates()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sps.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ x
    x = x.tocsr().astype(np.float32)
    x.sort_indices()
    return x


def _fit_fn(method: str, x, c0: np.ndarray, iters: int):
    k = c0.shape[0]
    if method == "jaxkmeans":
        import jax

        import jaxkmeans

        key = jax.random.PRNGKey(0)

        def run():
            r = jaxkmeans.fit(key, x, k, init=c0, max_iter=iters, tol=0.0)
            return float(r.loss), int(r.n_iter)

        return run
    if method == "jaxkmeans.sklearn":
        from jaxkmeans.sklearn import KMeans
    else:
        from sklearn.cluster import KMeans
    if method == "sklearn-float64":
        x, c0 = x.astype(np.float64), c0.astype(np.float64)

    def run():
        km = KMeans(k, init=c0, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)
        run.centers = km.cluster_centers_
        return float(km.inertia_), int(km.n_iter_)

    return run


def child(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    x = tfidf_like(args.rows, args.cols, args.nnz, args.seed)
    make_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    c0 = x[rng.choice(x.shape[0], args.clusters, replace=False)].toarray()
    run = _fit_fn(args.method, x, c0, args.iters)
    rss0 = rss_mb()
    reset = reset_hwm()
    t = time.perf_counter()
    run()
    warmup = time.perf_counter() - t
    times, result = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t)
    peak = hwm_mb()
    out = dict(
        method=args.method,
        rows=args.rows,
        cols=args.cols,
        nnz=int(x.nnz),
        clusters=args.clusters,
        iters=args.iters,
        make_data_s=round(make_s, 3),
        warmup_s=round(warmup, 3),
        times_s=[round(v, 3) for v in times],
        min_s=round(min(times), 3),
        median_s=round(statistics.median(times), 3),
        inertia=result[0],
        n_iter=result[1],
        rss_before_mb=round(rss0, 1),
        peak_rss_mb=round(peak, 1),
        extra_peak_mb=round(peak - rss0, 1),
        vmhwm_reset=reset,
    )
    if args.method.startswith("sklearn"):
        # The same centers measured by jaxkmeans (after the timing and the peak): how
        # far the two computations of one inertia are, apart from the iterations.
        import jaxkmeans

        same = float(jaxkmeans.inertia(x.astype(np.float32), run.centers.astype(np.float32)))
        out["jaxkmeans_inertia_of_these_centers"] = same
        out["same_centers_rel_diff"] = abs(same - result[0]) / result[0]
    if args.method.startswith("jaxkmeans"):
        import jax

        from jaxkmeans.kernels import native

        out.update(jax=jax.__version__, native_sparse=native.sparse_available())
    else:
        import sklearn

        out.update(sklearn=sklearn.__version__)
    return out


def _commit() -> str | None:
    """The measured checkout's git commit (``-dirty`` when its tree has changes)."""
    try:
        proc = subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cols", type=int, default=50_000)
    parser.add_argument("--nnz", type=int, default=10_000_000)
    parser.add_argument("--clusters", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sparse.json"))
    args = parser.parse_args()
    if args.method:  # child
        args.clusters = args.clusters[0]
        print(json.dumps(child(args)))
        return
    results = []
    doc = dict(
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        commit=_commit(),
        machine=dict(
            cpus=os.cpu_count(),
            platform=platform.platform(),
            load_average=os.getloadavg(),
        ),
        clusters=args.clusters,
        note=(
            f"{args.iters} Lloyd iterations from the same initial centers, per K; times "
            "are whole warm fits (after one warm-up fit in the same process); "
            "extra_peak_mb is the peak RSS above the RSS once the data is made, warm-up "
            "(compilation) included. sklearn-float64 is scikit-learn on a float64 copy "
            "(exact labels; a reference for how far float32 runs drift apart through "
            "near-ties, not part of the time ratios' reference, which is float32 sklearn "
            "at the same K: inertia_rel_diff_vs_sklearn). same_centers_rel_diff: "
            "scikit-learn's inertia of its final centers vs jaxkmeans.inertia of them."
        ),
        results=results,
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in args.clusters:
        by = {}
        for method in args.methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--method", method]
            cmd += ["--rows", str(args.rows), "--cols", str(args.cols), "--nnz", str(args.nnz)]
            cmd += ["--clusters", str(k), "--iters", str(args.iters)]
            cmd += ["--repeats", str(args.repeats), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{method} (k={k}) failed:\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(r), flush=True)
            by[method] = r
        ref = by.get("sklearn")
        ref64 = by.get("sklearn-float64")
        for r in by.values():
            if ref64 is not None:
                r["inertia_rel_diff_vs_sklearn_float64"] = (
                    abs(r["inertia"] - ref64["inertia"]) / ref64["inertia"]
                )
            if ref is not None:
                r["inertia_rel_diff_vs_sklearn"] = (
                    abs(r["inertia"] - ref["inertia"]) / ref["inertia"]
                )
                r["min_time_ratio_vs_sklearn"] = round(r["min_s"] / ref["min_s"], 3)
                r["median_time_ratio_vs_sklearn"] = round(r["median_s"] / ref["median_s"], 3)
            results.append(r)
        # Rewritten after every K: an interrupted run keeps the cluster counts it finished.
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.out} (k={k})", flush=True)


if __name__ == "__main__":
    main()
