#!/usr/bin/env python
"""Benchmark harness: jaxkmeans against scikit-learn, faiss-cpu and a numpy GEMM.

Every contestant runs in this one process on the same float32 Gaussian blobs (fixed
seed) from the same initial centers. Repetitions are interleaved round-robin (every
contestant once per repetition, the starting contestant rotating) and the median is
reported. Memory and compile-time figures come from fresh subprocesses. Sections: memory,
lloyd, init, minibatch, fit (whole fits with each library's own init), compile (fresh
processes, no compilation cache). See ``bench/README.md`` for what exactly is timed.

Usage::

    nice -n 10 python bench/run.py --quick        # ~3 minutes on an idle 2-core box
    python bench/run.py --quick --sections fit,compile   # some sections only
    nice -n 10 python bench/run.py                # full grid (long)
    python bench/run.py --report-only [RESULT.json]   # regenerate RESULTS.md + PNG

Writes ``bench/results/<date>-<tag>[-quick].json`` + ``.png`` and ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# 1: lloyd, init, minibatch, memory. 2: adds "fit" (whole fits) and "compile" (fresh
# processes); the keys of schema 1 are unchanged, so report.py renders both.
SCHEMA_VERSION = 2

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
REPORTED_ENV_VARS = (
    *THREAD_ENV_VARS,
    "OPENBLAS_CORETYPE",
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
    "TF_CPP_MIN_LOG_LEVEL",
    "JAXKMEANS_COMPILATION_CACHE",
    "JAX_COMPILATION_CACHE_DIR",
)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _early_threads(argv: list[str]) -> int:
    """Reads ``--threads`` before numpy / BLAS are imported (they read the env once)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return _available_cores()


ENV_BEFORE = {name: os.environ.get(name) for name in REPORTED_ENV_VARS}
THREADS = _early_threads(sys.argv[1:])
for _name in THREAD_ENV_VARS:
    os.environ[_name] = str(THREADS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The drop-in turns on a persistent compilation cache in the user's cache directory by
# default; the bench measures without one unless told otherwise (recorded in the JSON).
os.environ.setdefault("JAXKMEANS_COMPILATION_CACHE", "0")

import numpy as np  # noqa: E402  (after the thread environment is fixed)

if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
if str(REPO_DIR) not in sys.path:
    sys.path.insert(1, str(REPO_DIR))  # jaxkmeans from this checkout, installed or not

import report  # noqa: E402

LLOYD_CONTESTANTS = (
    "jaxkmeans",
    "jaxkmeans_step",
    "jaxkmeans_xla",
    "sklearn",
    "faiss",
    "numpy_gemm",
)
PEERS = ("sklearn", "faiss")  # real k-means peers; numpy_gemm is the hardware reference
SECTIONS = ("memory", "lloyd", "init", "minibatch", "fit", "compile")

FULL = {
    "lloyd": [
        (n, d, k) for n in (200_000, 1_000_000) for d in (2, 32, 128) for k in (16, 256, 1024)
    ],
    "init": [(200_000, 32, 256), (200_000, 32, 1024), (1_000_000, 32, 256)],
    "minibatch": [(32, 256, 1024), (32, 256, 4096), (32, 1024, 1024), (32, 1024, 4096)],
    "memory": [(2_000_000, 32, 4096)],
    # Whole fits (N, D, K, init): the shapes.
    "fit": [
        (250_000, 32, 64, "random"),
        (1_000_000, 32, 64, "random"),
        (4_000_000, 32, 64, "random"),
        (2_000_000, 128, 64, "random"),
        (250_000, 32, 64, "kmeans_plus_plus"),
    ],
    "fit_memory": "all",
    "compile": (10_000, 10, 8),
    "compile_entries": "all",
    "compile_reps": 3,
    "reps": 5,
    "iters": 10,
    "mb_steps": 100,
    "mb_pool": 200_000,
}
QUICK = {
    "lloyd": [(200_000, 2, 16), (200_000, 32, 64), (200_000, 128, 256)],
    "init": [(200_000, 32, 64)],
    "minibatch": [(32, 256, 1024), (32, 256, 4096)],
    "memory": [(200_000, 32, 1024)],
    "fit": [(100_000, 32, 64, "random"), (100_000, 32, 64, "kmeans_plus_plus")],
    "fit_memory": "first",
    "compile": (10_000, 10, 8),
    "compile_entries": ["fit_kmeans_plus_plus", "assign", "sklearn_dropin", "sklearn"],
    "compile_reps": 1,
    "reps": 3,
    "iters": 3,
    "mb_steps": 30,
    "mb_pool": 200_000,
}


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def _err(exc: BaseException) -> str:
    """One line: exception type and the first line of its message (JAX appends notes)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def parse_count(text: str) -> int:
    value = float(text)
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(value)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"2e5x128x256,1e6x32x16"`` -> [(N, D, K), ...]."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"shape must be NxDxK, got {item!r}")
        shapes.append(tuple(parse_count(p) for p in parts))
    return shapes


def proc_status(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); ru_maxrss cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- data


def make_blobs(n: int, d: int, seed: int, n_blobs: int = 100, chunk: int = 65536) -> np.ndarray:
    """float32 Gaussian blobs: ``n_blobs`` centers uniform in [-5, 5]^d, unit spread.

    Generated chunk by chunk in float32 so the peak memory is the array itself.
    """
    rng = np.random.default_rng([seed, n, d])
    centers = rng.uniform(-5.0, 5.0, size=(n_blobs, d)).astype(np.float32)
    labels = rng.integers(0, n_blobs, size=n)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] += centers[labels[s:e]]
    return x


def initial_centers(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` distinct data rows, the same for every contestant."""
    rng = np.random.default_rng([seed, k, 7])
    idx = np.sort(rng.choice(x.shape[0], size=k, replace=False))
    return np.ascontiguousarray(x[idx])


# --------------------------------------------------------------------------- float64 reference


def _ref_rows(n: int, k: int, d: int) -> int:
    return max(256, min(n, (1 << 21) // max(k, 1), (1 << 19) // max(d, 1)))


def assign64(x: np.ndarray, centers: np.ndarray, stats: bool = False) -> dict[str, Any]:
    """Exact nearest centers in float64, chunked over rows.

    Returns ``{"inertia"}``, plus ``labels``, ``dmin``, ``sums`` (k, d) and ``counts`` (k,)
    when ``stats``.
    """
    import scipy.sparse as sp

    n, d = x.shape
    c = np.asarray(centers, dtype=np.float64)
    k = c.shape[0]
    cc = np.einsum("kd,kd->k", c, c)
    rows = _ref_rows(n, k, d)
    total = 0.0
    if stats:
        labels = np.empty(n, dtype=np.int64)
        dmins = np.empty(n, dtype=np.float64)
        sums = np.zeros((k, d), dtype=np.float64)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        xb = x[s:e].astype(np.float64)
        dist = xb @ c.T
        dist *= -2.0
        dist += cc[None, :]
        lab = np.argmin(dist, axis=1)  # ties: lowest index
        dmin = np.maximum(dist[np.arange(e - s), lab] + np.einsum("nd,nd->n", xb, xb), 0.0)
        total += float(dmin.sum())
        if stats:
            labels[s:e] = lab
            dmins[s:e] = dmin
            onehot = sp.csr_matrix(
                (np.ones(e - s), (lab, np.arange(e - s))), shape=(k, e - s), dtype=np.float64
            )
            sums += onehot @ xb
    if not stats:
        return {"inertia": total}
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return {"inertia": total, "labels": labels, "dmin": dmins, "sums": sums, "counts": counts}


def inertia64(x: np.ndarray, centers: np.ndarray) -> float:
    return assign64(x, centers)["inertia"]


def reference_lloyd(x: np.ndarray, init: np.ndarray, iters: int) -> dict[str, Any]:
    """Plain float64 Lloyd from ``init`` for ``iters`` updates.

    An empty cluster takes the point farthest from its center, and that point leaves its
    old cluster (scikit-learn's rule; DESIGN.md's "relocated to the point farthest from
    its center"), farthest first, empty clusters in index order.
    """
    t0 = time.perf_counter()
    c = init.astype(np.float64)
    prev = None
    fixed_point_at = None
    empty = 0
    losses = []
    for it in range(iters):
        st = assign64(x, c, stats=True)
        labels, sums, counts = st["labels"], st["sums"], st["counts"]
        losses.append(st["inertia"])
        if prev is not None and fixed_point_at is None and np.array_equal(labels, prev):
            fixed_point_at = it  # labels repeat: this and every later update is a no-op
        prev = labels
        empty_ids = np.flatnonzero(counts == 0)
        if empty_ids.size:
            empty += int(empty_ids.size)
            far = np.argsort(-st["dmin"], kind="stable")[: empty_ids.size]
            for new_id, idx in zip(empty_ids, far, strict=True):
                point = x[idx].astype(np.float64)
                sums[labels[idx]] -= point
                counts[labels[idx]] -= 1
                sums[new_id] = point
                counts[new_id] = 1
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
    return {
        "inertia": inertia64(x, c),
        "loss_per_iter": losses,
        "labels_fixed_from_update": fixed_point_at,
        "empty_cluster_events": empty,
        "empty_policy": "relocate to the farthest points (scikit-learn's rule)",
        "seconds": time.perf_counter() - t0,
        "centers": c,
    }


# --------------------------------------------------------------------------- libraries


class Libs:
    """Lazily imported contestant libraries; a failed import is recorded, not raised."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.jax = self.jnp = self.lax = self.jkm = None
        self.sklearn = self.faiss = None

    def load(self, only: tuple[str, ...] = ("jax", "sklearn", "faiss")) -> Libs:
        """Imports the groups in `only` ("jax": jax + jaxkmeans, "sklearn", "faiss")."""
        if "jax" in only:
            self._load_jax()
        if "sklearn" in only:
            self._load_sklearn()
        if "faiss" in only:
            self._load_faiss()
        return self

    def _load_jax(self) -> None:
        try:
            import jax
            import jax.numpy as jnp
            from jax import lax

            self.jax, self.jnp, self.lax = jax, jnp, lax
        except Exception as exc:  # noqa: BLE001
            self.errors["jax"] = _err(exc)
        if self.jax is not None:
            try:
                import jaxkmeans

                missing = [
                    name
                    for name in ("fit", "lloyd_step", "init_centers", "assign", "minibatch_step")
                    if not hasattr(jaxkmeans, name)
                ]
                if missing:
                    self.errors["jaxkmeans_missing"] = ", ".join(missing)
                self.jkm = jaxkmeans
            except Exception as exc:  # noqa: BLE001
                self.errors["jaxkmeans"] = _err(exc)

    def _load_sklearn(self) -> None:
        try:
            import sklearn
            import sklearn.cluster  # noqa: F401

            self.sklearn = sklearn
        except Exception as exc:  # noqa: BLE001
            self.errors["sklearn"] = _err(exc)

    def _load_faiss(self) -> None:
        try:
            import faiss

            faiss.omp_set_num_threads(THREADS)
            self.faiss = faiss
        except Exception as exc:  # noqa: BLE001
            self.errors["faiss"] = _err(exc)

    def need_jkm(self, *names: str):
        if self.jkm is None:
            why = self.errors.get("jaxkmeans", self.errors.get("jax", "?"))
            raise RuntimeError(f"jaxkmeans unavailable: {why}")
        for name in names:
            if not hasattr(self.jkm, name):
                raise RuntimeError(f"jaxkmeans has no attribute {name!r}")
        return self.jkm


# --------------------------------------------------------------------------- machine info


def machine_info(libs: Libs | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "logical_cpus": os.cpu_count(),
        "cores_available": _available_cores(),
    }
    try:
        cpu = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" not in line:
                    if cpu:
                        break
                    continue
                key, _, value = line.partition(":")
                cpu.setdefault(key.strip(), value.strip())
        flags = set(cpu.get("flags", "").split())
        info["cpu_model"] = cpu.get("model name")
        info["cpu_vendor"] = cpu.get("vendor_id")
        info["cpu_family_model"] = f"{cpu.get('cpu family')}/{cpu.get('model')}"
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        info["cpu_model"] = platform.processor()
    return info


def versions(libs: Libs) -> dict[str, Any]:
    out: dict[str, Any] = {"numpy": np.__version__}
    for mod in ("jax", "jaxlib", "sklearn", "faiss", "scipy", "matplotlib", "threadpoolctl"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    try:
        import jaxkmeans

        out["jaxkmeans"] = getattr(jaxkmeans, "__version__", "?")
        out["jaxkmeans_path"] = str(Path(jaxkmeans.__file__).parent)
        from jaxkmeans.kernels import native as _native

        out["jaxkmeans_native"] = _native.enabled()
        out["jaxkmeans_native_error"] = _native.load_error()
    except Exception as exc:  # noqa: BLE001
        out["jaxkmeans"] = None
        out["jaxkmeans_error"] = _err(exc)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "jaxkmeans"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
        ).stdout.strip()
        out["git_commit"] = commit + ("+dirty(jaxkmeans)" if dirty else "")
    except OSError:
        out["git_commit"] = None
    return out


def thread_info(libs: Libs) -> dict[str, Any]:
    out: dict[str, Any] = {
        "threads": THREADS,
        "env_before": ENV_BEFORE,
        "env_set": {name: os.environ.get(name) for name in REPORTED_ENV_VARS},
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "xla_cpu": (
            "XLA's intra-op thread pool is sized to the cores available to the process "
            f"({_available_cores()}); it has no thread-count flag"
        ),
    }
    if libs.faiss is not None:
        out["faiss_omp_max_threads"] = int(libs.faiss.omp_get_max_threads())
    if libs.jax is not None:
        try:
            out["jax_devices"] = [str(d) for d in libs.jax.devices()]
            out["jax_backend"] = libs.jax.default_backend()
        except Exception as exc:  # noqa: BLE001
            out["jax_devices"] = _err(exc)
    try:
        import threadpoolctl

        out["threadpoolctl"] = [
            {
                key: pool.get(key)
                for key in (
                    "user_api",
                    "internal_api",
                    "prefix",
                    "num_threads",
                    "version",
                    "architecture",
                    "threading_layer",
                )
            }
            | {"file": Path(pool["filepath"]).name}
            for pool in threadpoolctl.threadpool_info()
        ]
    except Exception as exc:  # noqa: BLE001
        out["threadpoolctl"] = _err(exc)
    return out


# --------------------------------------------------------------------------- interleaved timing


Runner = Callable[[], dict[str, Any]]


def interleave(runners: dict[str, Runner], reps: int, label: str) -> dict[str, dict[str, Any]]:
    """One warm-up call each, then ``reps`` rounds, every contestant once per round.

    The contestant that starts a round rotates. A runner returns at least ``{"t": seconds}``;
    the last round's result is kept under ``"last"``.
    """
    out: dict[str, dict[str, Any]] = {
        name: {"runs": [], "error": None, "warmup_s": None} for name in runners
    }
    for name, fn in runners.items():
        try:
            t0 = time.perf_counter()
            r = fn()
            out[name]["warmup_s"] = time.perf_counter() - t0
            out[name]["warmup_result"] = {k: v for k, v in r.items() if k != "centers"}
        except Exception as exc:  # noqa: BLE001
            out[name]["error"] = _err(exc)
            log(f"    {label} {name}: FAILED in warm-up: {out[name]['error']}")
    names = list(runners)
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if out[name]["error"] is not None:
                continue
            try:
                r = runners[name]()
            except Exception as exc:  # noqa: BLE001
                out[name]["error"] = _err(exc)
                log(f"    {label} {name}: FAILED in rep {rep}: {out[name]['error']}")
                continue
            out[name]["runs"].append({k: v for k, v in r.items() if k != "centers"})
            out[name]["last"] = r
    return out


# --------------------------------------------------------------------------- Lloyd contestants


def lloyd_runners(
    libs: Libs,
    names: list[str],
    x: np.ndarray,
    xj: Any,
    init: np.ndarray,
    k: int,
    iters: int,
    seed: int,
) -> tuple[dict[str, Runner], dict[str, str], dict[str, Any]]:
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    notes: dict[str, Any] = {}
    n, d = x.shape
    for name in names:
        try:
            if name == "jaxkmeans":
                runners[name] = _jax_fit_runner(libs, xj, init, k, iters, seed)
            elif name == "jaxkmeans_step":
                runners[name], notes[name] = _jax_step_runner(libs, xj, init, iters)
            elif name == "jaxkmeans_xla":  # the pure-JAX path (GPU/TPU code) on this CPU
                runners[name], notes[name] = _jax_step_runner(libs, xj, init, iters, kernel="xla")
            elif name == "sklearn":
                runners[name] = _sklearn_runner(libs, x, init, k, iters, seed)
            elif name == "faiss":
                runners[name] = _faiss_runner(libs, x, init, k, iters, seed)
            elif name == "numpy_gemm":
                runners[name], notes[name] = _gemm_runner(x, init, iters)
            else:
                raise ValueError(f"unknown contestant {name!r}")
        except Exception as exc:  # noqa: BLE001
            errors[name] = _err(exc)
    return runners, errors, notes


def _jax_fit_runner(libs: Libs, xj, init, k, iters, seed) -> Runner:
    jkm = libs.need_jkm("fit")
    jax = libs.jax
    init_j = jax.device_put(init)
    key = jax.random.key(seed)

    def run():
        t0 = time.perf_counter()
        res = jkm.fit(key, xj, k, init=init_j, max_iter=iters, tol=0.0)
        jax.block_until_ready(res)
        t = time.perf_counter() - t0
        return {
            "t": t,
            "n_iter": int(res.n_iter),
            "converged": bool(res.converged),
            "reported_loss": float(res.loss),
            "centers": np.asarray(res.centers),
        }

    return run


def _jax_step_loop(libs: Libs, xj, init_j, iters, kernel: str = "auto"):
    """``call() -> (centers, loss)``: ``iters`` x ``jaxkmeans.lloyd_step(kernel=...)`` in one
    jitted ``fori_loop`` (compiled here), or a python loop of ``lloyd_step`` calls if it
    does not trace; and a description of which."""
    jkm = libs.need_jkm("lloyd_step")
    jax, jnp, lax = libs.jax, libs.jnp, libs.lax

    def loop(x, c):
        def body(_, carry):
            c, _loss = carry
            c_new, stats = jkm.lloyd_step(x, c, kernel=kernel)
            return c_new.astype(c.dtype), jnp.asarray(stats.loss, jnp.float32)

        return lax.fori_loop(0, iters, body, (c, jnp.zeros((), jnp.float32)))

    try:
        compiled = jax.jit(loop).lower(xj, init_j).compile()
        mode = "jit(fori_loop(lloyd_step))"

        def call():
            return compiled(xj, init_j)
    except Exception as exc:  # noqa: BLE001
        mode = f"python loop of lloyd_step (jit failed: {_err(exc)})"

        def call():
            c, loss = init_j, None
            for _ in range(iters):
                c, stats = jkm.lloyd_step(xj, c, kernel=kernel)
                loss = stats.loss
            return c, loss

    return call, mode


def _jax_step_runner(
    libs: Libs, xj, init, iters, kernel: str = "auto"
) -> tuple[Runner, dict[str, Any]]:
    """``iters`` x ``jaxkmeans.lloyd_step(kernel=...)`` in one jitted ``fori_loop``.

    Falls back to a python loop of ``lloyd_step`` calls if it does not trace.
    """
    libs.need_jkm("lloyd_step")
    jax = libs.jax
    call, mode = _jax_step_loop(libs, xj, jax.device_put(init), iters, kernel)

    def run():
        t0 = time.perf_counter()
        out = call()
        jax.block_until_ready(out)
        t = time.perf_counter() - t0
        return {
            "t": t,
            "n_iter": iters,
            "reported_loss": float(out[1]),
            "centers": np.asarray(out[0]),
        }

    return run, {"mode": mode}


def _sklearn_runner(libs: Libs, x, init, k, iters, seed) -> Runner:
    if libs.sklearn is None:
        raise RuntimeError("scikit-learn unavailable: " + libs.errors.get("sklearn", "?"))
    from sklearn.cluster import KMeans

    def run():
        km = KMeans(
            n_clusters=k,
            init=init,
            n_init=1,
            algorithm="lloyd",
            tol=0.0,
            max_iter=iters,
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            km.fit(x)
            t = time.perf_counter() - t0
        return {
            "t": t,
            "n_iter": int(km.n_iter_),
            "reported_loss": float(km.inertia_),
            "centers": np.asarray(km.cluster_centers_),
        }

    return run


def _faiss_kmeans(faiss, d, k, iters, seed, **extra):
    """faiss.Kmeans on every row: no silent subsampling, no small-cluster warning."""
    return faiss.Kmeans(
        d,
        k,
        niter=iters,
        nredo=1,
        seed=seed,
        verbose=False,
        max_points_per_centroid=10**9,
        min_points_per_centroid=1,
        **extra,
    )


def _faiss_runner(libs: Libs, x, init, k, iters, seed) -> Runner:
    faiss = libs.faiss
    if faiss is None:
        raise RuntimeError("faiss unavailable: " + libs.errors.get("faiss", "?"))
    d = x.shape[1]

    def run():
        km = _faiss_kmeans(faiss, d, k, iters, seed)
        t0 = time.perf_counter()
        km.train(x, init_centroids=init)
        t = time.perf_counter() - t0
        return {
            "t": t,
            "n_iter": len(km.obj),
            "reported_loss": float(km.obj[-1]),  # faiss: loss *before* the last update
            "centers": np.array(km.centroids),
        }

    return run


def _gemm_runner(x, init, iters) -> tuple[Runner, dict[str, Any]]:
    """``x @ c.T`` in float32, ``iters`` times, blocked over rows (<= 64 MiB output block)."""
    n = x.shape[0]
    k = init.shape[0]
    rows = int(min(n, max(1024, (64 << 20) // (4 * k))))
    buf = np.empty((rows, k), dtype=np.float32)
    ct = init.T

    def run():
        t0 = time.perf_counter()
        for _ in range(iters):
            for s in range(0, n, rows):
                e = min(n, s + rows)
                np.matmul(x[s:e], ct, out=buf[: e - s])
        t = time.perf_counter() - t0
        return {"t": t, "n_iter": iters}

    return run, {"block_rows": rows}


def summarize_lloyd(
    shape: tuple[int, int, int], iters: int, timings: dict[str, dict[str, Any]], ref, x
) -> dict[str, Any]:
    n, d, k = shape
    flops = 2.0 * n * k * d
    contestants: dict[str, Any] = {}
    for name, tm in timings.items():
        entry: dict[str, Any] = {"error": tm.get("error"), "warmup_s": tm.get("warmup_s")}
        runs = tm.get("runs", [])
        if runs:
            per_iter = [r["t"] / max(r["n_iter"], 1) for r in runs]
            s = _median(per_iter)
            entry.update(
                {
                    "s_per_iter": s,
                    "s_per_iter_min": min(per_iter),
                    "s_per_iter_all": per_iter,
                    "seconds_all": [r["t"] for r in runs],
                    "n_iter_all": [r["n_iter"] for r in runs],
                    "gflops": flops / s / 1e9 if s else None,
                }
            )
            for key in ("reported_loss", "converged"):
                if key in runs[-1]:
                    entry[key] = runs[-1][key]
            centers = tm.get("last", {}).get("centers")
            if centers is not None and ref is not None:
                inert = inertia64(x, centers)
                entry["inertia_f64"] = inert
                entry["inertia_rel_diff"] = (inert - ref["inertia"]) / ref["inertia"]
        contestants[name] = entry

    def t(name):
        return contestants.get(name, {}).get("s_per_iter")

    ratios: dict[str, float] = {}
    for mine in ("jaxkmeans", "jaxkmeans_step"):
        if t(mine) is None:
            continue
        for other in (*PEERS, "numpy_gemm"):
            if t(other):
                ratios[f"{mine}/{other}"] = t(mine) / t(other)
        peer_times = [(t(p), p) for p in PEERS if t(p)]
        if peer_times:
            best, best_name = min(peer_times)
            ratios[f"{mine}/best_peer"] = t(mine) / best
            ratios[f"{mine}/best_peer_name"] = best_name  # type: ignore[assignment]
    return {
        "N": n,
        "D": d,
        "K": k,
        "iters": iters,
        "flops_per_iter": flops,
        "reference": None
        if ref is None
        else {key: value for key, value in ref.items() if key != "centers"},
        "contestants": contestants,
        "ratios": ratios,
    }


def bench_lloyd(libs: Libs, args, shapes, result, save) -> None:
    by_nd: dict[tuple[int, int], list[int]] = {}
    for n, d, k in shapes:
        by_nd.setdefault((n, d), []).append(k)
    for (n, d), ks in by_nd.items():
        x = make_blobs(n, d, args.seed)
        xj = None
        if libs.jax is not None:
            xj = libs.jax.device_put(x)
            libs.jax.block_until_ready(xj)
        for k in ks:
            log(f"  lloyd N={n} D={d} K={k} iters={args.iters} reps={args.reps}")
            init = initial_centers(x, k, args.seed)
            ref = None
            if not args.no_reference:
                ref = reference_lloyd(x, init, args.iters)
            runners, errors, notes = lloyd_runners(
                libs, args.contestants, x, xj, init, k, args.iters, args.seed
            )
            timings = interleave(runners, args.reps, f"N={n} D={d} K={k}")
            for name, msg in errors.items():
                timings[name] = {"error": msg, "runs": []}
                log(f"    {name}: unavailable: {msg}")
            row = summarize_lloyd((n, d, k), args.iters, timings, ref, x)
            row["notes"] = notes
            row["contestants"] = {c: row["contestants"][c] for c in args.contestants}
            result["lloyd"].append(row)
            log("    " + report.lloyd_line(row))
            save()
            del runners, timings
            gc.collect()
        del x, xj
        gc.collect()


# --------------------------------------------------------------------------- init


def _init_runners(libs: Libs, x: np.ndarray, k: int, seed: int):
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    d = x.shape[1]
    if libs.jkm is not None and hasattr(libs.jkm, "init_centers"):
        jax = libs.jax
        xj = jax.device_put(x)
        key = jax.random.key(seed)

        def jax_runner(method: str) -> Runner:
            def run():
                t0 = time.perf_counter()
                c = libs.jkm.init_centers(key, xj, k, method=method)
                jax.block_until_ready(c)
                return {"t": time.perf_counter() - t0, "centers": np.asarray(c)}

            return run

        for method in ("kmeans_plus_plus", "kmeans_parallel"):
            runners[f"jaxkmeans_{method}"] = jax_runner(method)
    else:
        for method in ("kmeans_plus_plus", "kmeans_parallel"):
            errors[f"jaxkmeans_{method}"] = "jaxkmeans.init_centers unavailable"
    if libs.sklearn is not None:
        from sklearn.cluster import kmeans_plusplus

        def run_sk():
            t0 = time.perf_counter()
            c, _ = kmeans_plusplus(x, k, random_state=seed)  # n_local_trials = 2 + ln(k)
            return {"t": time.perf_counter() - t0, "centers": c}

        runners["sklearn_kmeans_plusplus"] = run_sk
    faiss = libs.faiss
    if faiss is not None and hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):

        def run_faiss():
            km = _faiss_kmeans(  # niter=0: initialization only
                faiss, d, k, 0, seed, init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
            )
            t0 = time.perf_counter()
            km.train(x)
            return {"t": time.perf_counter() - t0, "centers": np.array(km.centroids)}

        runners["faiss_kmeans_plusplus"] = run_faiss
    return runners, errors


def bench_init(libs: Libs, args, shapes, result, save) -> None:
    for n, d, k in shapes:
        log(f"  init N={n} D={d} K={k} reps={args.reps}")
        x = make_blobs(n, d, args.seed)
        runners, errors = _init_runners(libs, x, k, args.seed)
        timings = interleave(runners, args.reps, f"init N={n} D={d} K={k}")
        row: dict[str, Any] = {"N": n, "D": d, "K": k, "contestants": {}}
        for name, msg in errors.items():
            row["contestants"][name] = {"error": msg}
        for name, tm in timings.items():
            entry: dict[str, Any] = {"error": tm["error"], "warmup_s": tm.get("warmup_s")}
            if tm["runs"]:
                ts = [r["t"] for r in tm["runs"]]
                entry.update({"seconds": _median(ts), "seconds_all": ts})
                entry["inertia_f64"] = inertia64(x, tm["last"]["centers"])
            row["contestants"][name] = entry
        base = row["contestants"].get("sklearn_kmeans_plusplus", {})
        for entry in row["contestants"].values():
            if base.get("inertia_f64") and entry.get("inertia_f64"):
                entry["inertia_vs_sklearn"] = entry["inertia_f64"] / base["inertia_f64"]
            if base.get("seconds") and entry.get("seconds"):
                entry["time_vs_sklearn"] = entry["seconds"] / base["seconds"]
        result["init"].append(row)
        log("    " + report.init_line(row))
        save()
        del x, runners, timings
        gc.collect()


# --------------------------------------------------------------------------- mini-batch


def _minibatch_runners(libs: Libs, batches: list[np.ndarray], init: np.ndarray, seed: int):
    """Runners for ``len(batches) - 1`` timed steps; batch 0 is an untimed first step."""
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    k = init.shape[0]
    b = batches[0].shape[0]
    steps = len(batches) - 1
    try:
        jkm = libs.need_jkm("KMeansState", "minibatch_step")
        jax = libs.jax
        step = jax.jit(jkm.minibatch_step)
        state0 = jkm.KMeansState.create(jax.device_put(init))

        def run_jax():
            state, loss = step(state0, batches[0])  # untimed, like sklearn's first partial_fit
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            for batch in batches[1:]:
                state, loss = step(state, batch)
            jax.block_until_ready((state, loss))
            t = time.perf_counter() - t0
            return {"t": t, "steps": steps, "centers": np.asarray(state.centers)}

        runners["jaxkmeans"] = run_jax
    except Exception as exc:  # noqa: BLE001
        errors["jaxkmeans"] = _err(exc)
    if libs.sklearn is not None:
        from sklearn.cluster import MiniBatchKMeans

        def run_sk():
            mbk = MiniBatchKMeans(
                n_clusters=k,
                init=init,
                n_init=1,
                batch_size=b,
                reassignment_ratio=0.0,
                random_state=seed,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mbk.partial_fit(batches[0])  # initializes from `init`, then one step
                t0 = time.perf_counter()
                for batch in batches[1:]:
                    mbk.partial_fit(batch)
                t = time.perf_counter() - t0
            return {"t": t, "steps": steps, "centers": np.asarray(mbk.cluster_centers_)}

        runners["sklearn"] = run_sk
    else:
        errors["sklearn"] = libs.errors.get("sklearn", "unavailable")
    return runners, errors


def bench_minibatch(libs: Libs, args, shapes, result, save) -> None:
    steps = args.mb_steps
    for d, k, b in shapes:
        log(f"  minibatch D={d} K={k} batch={b} steps={steps} reps={args.reps}")
        pool = make_blobs(args.mb_pool, d, args.seed)
        rng = np.random.default_rng([args.seed, d, k, b])
        batches = [
            np.ascontiguousarray(pool[rng.choice(pool.shape[0], b, replace=False)])
            for _ in range(steps + 1)
        ]
        init = initial_centers(pool, k, args.seed)
        runners, errors = _minibatch_runners(libs, batches, init, args.seed)
        timings = interleave(runners, args.reps, f"minibatch D={d} K={k} B={b}")
        row: dict[str, Any] = {"D": d, "K": k, "batch": b, "steps": steps, "contestants": {}}
        for name, msg in errors.items():
            row["contestants"][name] = {"error": msg}
        for name, tm in timings.items():
            entry: dict[str, Any] = {"error": tm["error"], "warmup_s": tm.get("warmup_s")}
            if tm["runs"]:
                rates = [r["steps"] / r["t"] for r in tm["runs"]]
                entry.update({"steps_per_s": _median(rates), "steps_per_s_all": rates})
                entry["inertia_f64"] = inertia64(pool, tm["last"]["centers"])
            row["contestants"][name] = entry
        jx = row["contestants"].get("jaxkmeans", {})
        sk = row["contestants"].get("sklearn", {})
        if jx.get("steps_per_s") and sk.get("steps_per_s"):
            row["speedup_jax_over_sklearn"] = jx["steps_per_s"] / sk["steps_per_s"]
        if jx.get("inertia_f64") and sk.get("inertia_f64"):
            rel = (jx["inertia_f64"] - sk["inertia_f64"]) / sk["inertia_f64"]
            row["inertia_rel_diff_jax_vs_sklearn"] = rel
        result["minibatch"].append(row)
        log("    " + report.minibatch_line(row))
        save()
        del pool, batches, runners, timings
        gc.collect()


# --------------------------------------------------------------------------- memory


def memory_probe(n: int, d: int, k: int, seed: int) -> dict[str, Any]:
    """Runs in a fresh subprocess: peak memory of ``jaxkmeans.assign(x, centers)``."""
    out: dict[str, Any] = {"N": n, "D": d, "K": k}
    out["ru_maxrss_at_start"] = ru_maxrss_bytes()
    out["rss_at_start"] = proc_status("VmRSS")
    import jax

    import jaxkmeans

    out["rss_after_import"] = proc_status("VmRSS")
    x = make_blobs(n, d, seed)
    centers = initial_centers(x, k, seed)
    rss_data = proc_status("VmRSS")
    ru_data = ru_maxrss_bytes()
    out.update({"rss_after_data": rss_data, "ru_maxrss_after_data": ru_data})
    out["hwm_resettable"] = reset_peak_rss()

    def call(xa, ca, tag):
        before = proc_status("VmRSS")
        reset_peak_rss()
        t0 = time.perf_counter()
        labels, dist = jaxkmeans.assign(xa, ca)
        jax.block_until_ready((labels, dist))
        out[f"{tag}_s"] = time.perf_counter() - t0
        out[f"{tag}_rss_before"] = before
        out[f"{tag}_peak_extra"] = proc_status("VmHWM") - before
        del labels, dist

    call(x, centers, "first_call")  # includes compile + host checks
    # The spec's measure: peak RSS of the process (ru_maxrss) - RSS after the data exists.
    out["ru_maxrss_after_first_call"] = ru_maxrss_bytes()
    out["peak_extra_ru_maxrss"] = out["ru_maxrss_after_first_call"] - rss_data
    out["ru_maxrss_valid"] = ru_data <= rss_data + (64 << 20)
    call(x, centers, "numpy_input")  # compiled; numpy in, as users call it
    xj = jax.device_put(x)
    cj = jax.device_put(centers)
    jax.block_until_ready((xj, cj))
    out["rss_after_device_put"] = proc_status("VmRSS")
    call(xj, cj, "device_input")  # compiled; arrays already on the device
    out["x_bytes"] = int(x.nbytes)
    out["naive_nk_bytes"] = int(n) * int(k) * 4
    out["gflops_device_input"] = 2.0 * n * k * d / out["device_input_s"] / 1e9
    return out


def run_probe(
    probe_args: list[str],
    marker: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs ``run.py --threads T <probe_args>`` in a fresh process and returns the JSON
    it printed after ``marker``, or ``{"error": ...}`` (never raises)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(THREADS), *probe_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker + " ")]
    if lines:
        return json.loads(lines[-1].split(" ", 1)[1])
    return {
        "error": f"probe exited {proc.returncode}: "
        + (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:500]
    }


def bench_memory(args, shapes, result, save) -> None:
    for n, d, k in shapes:
        log(f"  memory N={n} D={d} K={k} (subprocess)")
        row: dict[str, Any] = {"N": n, "D": d, "K": k, "parent_ru_maxrss": ru_maxrss_bytes()}
        probe = ["--memory-probe", f"{n}x{d}x{k}", "--seed", str(args.seed)]
        row.update(run_probe(probe, "MEMPROBE_JSON", args.memory_timeout))
        result["memory"].append(row)
        log("    " + report.memory_line(row))
        save()


# --------------------------------------------------------------------------- whole fit

FIT_INITS = {  # init name -> (jaxkmeans, scikit-learn)
    "random": ("random", "random"),
    "kmeans_plus_plus": ("kmeans_plus_plus", "k-means++"),
}
FIT_INIT_ALIASES = {"kpp": "kmeans_plus_plus", "k-means++": "kmeans_plus_plus", "rand": "random"}
# What users call, end to end (own init + iterations + labels).
FIT_CONTESTANTS = ("jaxkmeans_fit", "jaxkmeans_train", "jaxkmeans_sklearn", "sklearn", "faiss")
# The consistency pair, both from the same given centers on a device array.
FIT_PAIR = ("jaxkmeans_fit_from_centers", "jaxkmeans_steps_assign")
FIT_PROBE_LIBS = {
    "jaxkmeans_fit": ("jax",),
    "jaxkmeans_train": ("jax",),
    "jaxkmeans_sklearn": ("jax", "sklearn"),
    "sklearn": ("sklearn",),
    "faiss": ("faiss",),
}


def parse_fit_shapes(text: str) -> list[tuple[int, int, int, str]]:
    """``"1e6x32x64,25e4x32x64:kmeans_plus_plus"`` -> [(N, D, K, init), ...] (default random)."""
    shapes = []
    for item in text.split(","):
        spec, _, init = item.strip().partition(":")
        init = FIT_INIT_ALIASES.get(init.strip().lower(), init.strip().lower() or "random")
        if init not in FIT_INITS:
            raise argparse.ArgumentTypeError(
                f"init must be one of {sorted(FIT_INITS)} (or kpp), got {item!r}"
            )
        shapes.extend((*shape, init) for shape in parse_shapes(spec))
    return shapes


def fit_shape_text(shape: tuple[int, int, int, str]) -> str:
    n, d, k, init = shape
    return f"{n}x{d}x{k}:{init}"


def whole_fit_runner(
    libs: Libs, name: str, x: np.ndarray, k: int, init: str, iters: int, seed: int
) -> Runner:
    """One whole fit of contestant `name` (one of ``FIT_CONTESTANTS``) on host data `x`.

    A runner returns ``{"t", "n_iter", "centers"}``; the time includes the library's own
    initialization, the iterations and the final labels (blocked on).
    """
    jkm_init, sk_init = FIT_INITS[init]
    n, d = x.shape
    if name == "jaxkmeans_fit":
        jkm = libs.need_jkm("fit")
        jax = libs.jax

        def run():
            t0 = time.perf_counter()
            res = jkm.fit(jax.random.key(seed), x, k, init=jkm_init, max_iter=iters, tol=0.0)
            jax.block_until_ready((res.centers, res.labels))
            t = time.perf_counter() - t0
            return {"t": t, "n_iter": int(res.n_iter), "centers": np.asarray(res.centers)}

        return run
    if name == "jaxkmeans_train":
        import shutil
        import tempfile

        jkm = libs.need_jkm("KMeans")

        def run():
            model_dir = tempfile.mkdtemp(prefix="jaxkmeans-bench-")
            try:
                est = jkm.KMeans(
                    k,
                    model_dir=model_dir,
                    initial_clusters=jkm_init,
                    seed=seed,
                    use_mini_batch=False,
                    kmeans_plus_plus_num_retries=-1,  # 2 + ln k, as scikit-learn
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    est.train(lambda: x, steps=iters)
                    centers = np.asarray(est.cluster_centers())
                    t = time.perf_counter() - t0
                n_iter = len(getattr(est, "loss_history", None) or []) or iters
            finally:
                shutil.rmtree(model_dir, ignore_errors=True)
            return {"t": t, "n_iter": n_iter, "centers": centers}

        return run
    if name in ("jaxkmeans_sklearn", "sklearn"):
        if libs.sklearn is None:
            raise RuntimeError("scikit-learn unavailable: " + libs.errors.get("sklearn", "?"))
        if name == "sklearn":
            from sklearn.cluster import KMeans
        else:
            libs.need_jkm()
            from jaxkmeans.sklearn import KMeans

        def run():
            km = KMeans(
                n_clusters=k,
                init=sk_init,
                n_init=1,
                max_iter=iters,
                tol=0.0,
                algorithm="lloyd",
                random_state=seed,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                km.fit(x)
                np.asarray(km.labels_)
                t = time.perf_counter() - t0
            return {"t": t, "n_iter": int(km.n_iter_), "centers": np.asarray(km.cluster_centers_)}

        return run
    if name == "faiss":
        faiss = libs.faiss
        if faiss is None:
            raise RuntimeError("faiss unavailable: " + libs.errors.get("faiss", "?"))
        extra: dict[str, Any] = {}
        if init == "kmeans_plus_plus":
            if not hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
                raise RuntimeError(f"faiss {faiss.__version__} has no k-means++ init")
            extra["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS

        def run():
            km = _faiss_kmeans(faiss, d, k, iters, seed, **extra)
            t0 = time.perf_counter()
            km.train(x)
            km.index.search(x, 1)  # the labels
            t = time.perf_counter() - t0
            return {"t": t, "n_iter": len(km.obj), "centers": np.array(km.centroids)}

        return run
    raise ValueError(f"unknown whole-fit contestant {name!r}")


def _fit_pair_runners(libs: Libs, x: np.ndarray, k: int, iters: int, seed: int):
    """fit(init=centers) vs ``iters`` jitted lloyd_steps + one assign, same centers, both
    on a device array (the issue's consistency figure)."""
    jkm = libs.need_jkm("fit", "lloyd_step", "assign")
    jax = libs.jax
    xj = jax.device_put(x)
    c0 = jax.device_put(initial_centers(x, k, seed))
    jax.block_until_ready((xj, c0))
    key = jax.random.key(seed)

    def run_fit():
        t0 = time.perf_counter()
        res = jkm.fit(key, xj, k, init=c0, max_iter=iters, tol=0.0)
        jax.block_until_ready((res.centers, res.labels))
        t = time.perf_counter() - t0
        return {"t": t, "n_iter": int(res.n_iter), "centers": np.asarray(res.centers)}

    call, mode = _jax_step_loop(libs, xj, c0, iters)

    def run_steps():
        t0 = time.perf_counter()
        c, _loss = call()
        labels, dist = jkm.assign(xj, c)
        jax.block_until_ready((c, labels, dist))
        t = time.perf_counter() - t0
        return {"t": t, "n_iter": iters, "centers": np.asarray(c)}

    return {FIT_PAIR[0]: run_fit, FIT_PAIR[1]: run_steps}, {"steps_mode": mode}


def fit_memory_probe(shape: tuple[int, int, int, str], name: str, iters: int, seed: int):
    """Runs in a fresh subprocess: peak RSS of one contestant's whole fit above the RSS
    with the data loaded (first call, compile included; then a second call)."""
    n, d, k, init = shape
    out: dict[str, Any] = {"contestant": name, "ru_maxrss_at_start": ru_maxrss_bytes()}
    libs = Libs().load(FIT_PROBE_LIBS[name])
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(THREADS)
    except Exception:  # noqa: BLE001
        pass
    out["rss_after_import"] = proc_status("VmRSS")
    x = make_blobs(n, d, seed)
    run = whole_fit_runner(libs, name, x, k, init, iters, seed)
    gc.collect()
    rss_data = proc_status("VmRSS")
    out.update({"rss_after_data": rss_data, "ru_maxrss_after_data": ru_maxrss_bytes()})
    out["hwm_resettable"] = reset_peak_rss()
    out["x_bytes"] = int(x.nbytes)
    for tag in ("first", "second"):
        before = proc_status("VmRSS")
        reset_peak_rss()
        r = run()
        hwm = proc_status("VmHWM")
        if tag == "second" and out["hwm_resettable"] and None not in (hwm, before):
            # The call's own working memory, above what the first call left resident
            # (compiled programs, caches): what a repeated fit needs on top.
            out["second_call_extra"] = hwm - before
            out["second_call_extra_x"] = (hwm - before) / x.nbytes
        out[f"{tag}_s"] = r["t"]
        out[f"{tag}_n_iter"] = r["n_iter"]
        if tag == "first":
            out["ru_maxrss_after_first"] = ru_maxrss_bytes()
            out["peak_extra_ru_maxrss"] = out["ru_maxrss_after_first"] - rss_data
            out["ru_maxrss_valid"] = out["ru_maxrss_after_data"] <= rss_data + (64 << 20)
        if out["hwm_resettable"] and hwm is not None:
            out[f"{tag}_peak_extra"] = hwm - rss_data
        elif tag == "first" and out["ru_maxrss_valid"]:
            out[f"{tag}_peak_extra"] = out["peak_extra_ru_maxrss"]
        if out.get(f"{tag}_peak_extra") is not None:
            out[f"{tag}_peak_extra_x"] = out[f"{tag}_peak_extra"] / x.nbytes
        del r
        gc.collect()
        out[f"rss_after_{tag}"] = proc_status("VmRSS")
    return out


def _fit_row(shape, iters) -> dict[str, Any]:
    n, d, k, init = shape
    names = (*FIT_CONTESTANTS, *FIT_PAIR)
    return {
        "N": n,
        "D": d,
        "K": k,
        "init": init,
        "iters": iters,
        "contestants": {c: {} for c in names},
    }


def bench_fit_memory(args, shapes, rows, save) -> None:
    """Peak extra memory of every whole-fit contestant, a fresh subprocess each."""
    which = shapes if args.fit_memory == "all" else shapes[:1]
    if args.fit_memory == "none":
        which = []
    for shape in which:
        row = rows[shape]
        for name in FIT_CONTESTANTS:
            log(f"  fit memory {fit_shape_text(shape)} {name} (subprocess)")
            probe = ["--fit-probe", fit_shape_text(shape), "--fit-probe-contestant", name]
            probe += ["--seed", str(args.seed), "--fit-iters", str(args.fit_iters)]
            mem = run_probe(probe, "FITPROBE_JSON", args.memory_timeout)
            row["contestants"][name]["memory"] = mem
            log("    " + report.fit_memory_line(mem))
            save()


def bench_fit(libs: Libs, args, shapes, rows, save) -> None:
    iters = args.fit_iters
    for shape in shapes:
        n, d, k, init = shape
        log(f"  fit N={n} D={d} K={k} init={init} iters={iters} reps={args.reps}")
        row = rows[shape]
        x = make_blobs(n, d, args.seed)
        runners: dict[str, Runner] = {}
        for name in FIT_CONTESTANTS:
            try:
                runners[name] = whole_fit_runner(libs, name, x, k, init, iters, args.seed)
            except Exception as exc:  # noqa: BLE001
                row["contestants"][name]["error"] = _err(exc)
        try:
            pair, notes = _fit_pair_runners(libs, x, k, iters, args.seed)
            runners.update(pair)
            row["notes"] = notes
        except Exception as exc:  # noqa: BLE001
            for name in FIT_PAIR:
                row["contestants"][name]["error"] = _err(exc)
        timings = interleave(runners, args.reps, f"fit N={n} D={d} K={k} {init}")
        for name, tm in timings.items():
            entry = row["contestants"][name]
            entry.update({"error": tm["error"], "warmup_s": tm.get("warmup_s")})
            if tm["runs"]:
                ts = [r["t"] for r in tm["runs"]]
                entry.update(
                    {
                        "seconds": _median(ts),
                        "seconds_all": ts,
                        "n_iter_all": [r["n_iter"] for r in tm["runs"]],
                        "inertia_f64": inertia64(x, tm["last"]["centers"]),
                    }
                )
        _summarize_fit(row)
        log("    " + report.fit_line(row))
        save()
        del x, runners, timings
        gc.collect()


def _summarize_fit(row: dict[str, Any]) -> None:
    cs = row["contestants"]
    sk = cs.get("sklearn", {})
    peers = [(cs[p]["seconds"], p) for p in PEERS if cs.get(p, {}).get("seconds")]
    best = min(peers) if peers else None
    if best:
        row["best_peer"] = best[1]
    for entry in cs.values():
        if best and entry.get("seconds"):
            entry["time_vs_best_peer"] = entry["seconds"] / best[0]
        if sk.get("inertia_f64") and entry.get("inertia_f64"):
            entry["inertia_vs_sklearn"] = entry["inertia_f64"] / sk["inertia_f64"]
    a, b = (cs.get(name, {}) for name in FIT_PAIR)
    if a.get("seconds") and b.get("seconds"):
        row["fit_vs_steps_assign"] = a["seconds"] / b["seconds"]
    if a.get("inertia_f64") and b.get("inertia_f64"):
        row["fit_vs_steps_assign_inertia_rel_diff"] = (a["inertia_f64"] - b["inertia_f64"]) / b[
            "inertia_f64"
        ]


# --------------------------------------------------------------------------- compile time

# Entry points timed in a fresh process each: first call (compile), second call (same
# shape), a new size in the same row bucket and a new size in another bucket.
COMPILE_ENTRIES = {
    "fit_kmeans_plus_plus": "jaxkmeans.fit(key, x, k, init='kmeans_plus_plus', n_init=1)",
    "fit_given_centers": "jaxkmeans.fit(key, x, k, init=centers)",
    "assign": "jaxkmeans.assign(x, centers)",
    "inertia": "jaxkmeans.inertia(x, centers)",
    "lloyd_step": "jaxkmeans.lloyd_step(x, centers)",
    "init_centers_kmeans_plus_plus": "jaxkmeans.init_centers(key, x, k, 'kmeans_plus_plus')",
    "minibatch_step": "jaxkmeans.minibatch_step(KMeansState.create(centers), x)",
    "train_full_batch": "KMeans(k, use_mini_batch=False).train(lambda: x, steps=10)",
    "sklearn_dropin": "jaxkmeans.sklearn.KMeans(k, n_init=1).fit(x)",
    "sklearn": "sklearn.cluster.KMeans(k, n_init=1).fit(x)",
    # As users run them a second time: the same entry in a process after one that filled
    # the persistent compilation cache (the drop-in's is on by default; a library user
    # turns it on with jaxkmeans.enable_compilation_cache()).
    "sklearn_dropin_cached": "jaxkmeans.sklearn.KMeans(k, n_init=1).fit(x), cache filled",
    "fit_kmeans_plus_plus_cached": (
        "jaxkmeans.enable_compilation_cache(); jaxkmeans.fit(key, x, k, "
        "init='kmeans_plus_plus'), cache filled"
    ),
}
CACHED_SUFFIX = "_cached"
COMPILE_CALLS = ("first", "second", "same_bucket", "other_bucket")


def compile_sizes(n: int, bucket_rows: Callable[[int], int] | None) -> dict[str, int]:
    """Rows of the four calls: n, n, a size != n in n's bucket, a size in another bucket."""
    if bucket_rows is None:  # jaxkmeans unavailable: sizes only
        return {
            "first": n,
            "second": n,
            "same_bucket": n + max(1, n // 80),
            "other_bucket": n * 5 // 4,
        }
    b = bucket_rows(n)
    same = (n + b + 1) // 2 if b > n else n - 1
    if same < 1 or bucket_rows(same) != b:
        same = n  # no other size shares n's bucket (tiny n)
    other = max(round(n * 1.2345), b + 1)
    while bucket_rows(other) == b:
        other += 1
    return {"first": n, "second": n, "same_bucket": same, "other_bucket": other}


def _jax_compile_listener():
    """Counts JAX's compile events and sums their durations (None if unavailable)."""
    try:
        import jax.monitoring
    except Exception:  # noqa: BLE001
        return None
    acc = {"backend_compiles": 0, "backend_compile_s": 0.0, "trace_lower_s": 0.0}

    def listener(event: str, duration: float, **_kw: Any) -> None:
        if event.endswith("/backend_compile_duration"):
            acc["backend_compiles"] += 1
            acc["backend_compile_s"] += duration
        elif event.endswith(("/jaxpr_trace_duration", "/jaxpr_to_mlir_module_duration")):
            acc["trace_lower_s"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    return acc


def compile_probe(entry: str, shape: tuple[int, int, int], sizes: dict[str, int], seed: int):
    """Runs in a fresh subprocess without a compilation cache: import seconds, then the
    seconds of the four calls of ``COMPILE_ENTRIES[entry]`` (numpy input)."""
    n, d, k = shape
    out: dict[str, Any] = {"entry": entry, "sizes": sizes, "calls": {}}
    cached = entry.endswith(CACHED_SUFFIX)
    entry = entry.removesuffix(CACHED_SUFFIX)
    out["env"] = {
        v: os.environ.get(v) for v in ("JAXKMEANS_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")
    }
    t0 = time.perf_counter()
    if entry == "sklearn":
        from sklearn.cluster import KMeans as SkKMeans

        out["import"] = "from sklearn.cluster import KMeans"
    elif entry == "sklearn_dropin":
        import jaxkmeans.sklearn

        out["import"] = "import jaxkmeans.sklearn"
    elif entry == "warmup":
        import jax  # noqa: F401
        import sklearn.cluster  # noqa: F401

        import jaxkmeans
        import jaxkmeans.sklearn  # noqa: F401

        out["import"] = "import jaxkmeans, jaxkmeans.sklearn, sklearn.cluster"
    else:
        import jaxkmeans

        out["import"] = "import jaxkmeans"
    if cached and entry != "sklearn_dropin":  # the drop-in turns its cache on itself
        jaxkmeans.enable_compilation_cache()
    out["import_s"] = time.perf_counter() - t0
    if entry == "warmup":
        return out
    acc = None if entry == "sklearn" else _jax_compile_listener()
    # One data set; the other sizes are its first rows (or all of it plus more rows of the
    # same blobs), so a new size is the same problem and converges alike.
    x_all = make_blobs(max(sizes.values()), d, seed)
    centers = initial_centers(x_all[:n], k, seed)
    data = {m: (np.ascontiguousarray(x_all[:m]), centers) for m in set(sizes.values())}
    if entry != "sklearn":
        import jax

        jkm = jaxkmeans

    def block(value):
        if entry != "sklearn":
            jax.block_until_ready(value)

    def call(x, centers) -> int | None:
        """The call; returns the fit's iteration count where there is one."""
        if entry == "fit_kmeans_plus_plus":
            r = jkm.fit(jax.random.key(seed), x, k, init="kmeans_plus_plus", n_init=1)
            block((r.centers, r.labels))
            return int(r.n_iter)
        elif entry == "fit_given_centers":
            r = jkm.fit(jax.random.key(seed), x, k, init=centers)
            block((r.centers, r.labels))
            return int(r.n_iter)
        elif entry == "assign":
            block(jkm.assign(x, centers))
        elif entry == "inertia":
            block(jkm.inertia(x, centers))
        elif entry == "lloyd_step":
            block(jkm.lloyd_step(x, centers))
        elif entry == "init_centers_kmeans_plus_plus":
            block(jkm.init_centers(jax.random.key(seed), x, k, method="kmeans_plus_plus"))
        elif entry == "minibatch_step":
            block(jkm.minibatch_step(jkm.KMeansState.create(centers), x))
        elif entry == "train_full_batch":
            import shutil
            import tempfile

            model_dir = tempfile.mkdtemp(prefix="jaxkmeans-bench-")
            try:
                est = jkm.KMeans(k, model_dir=model_dir, seed=seed, use_mini_batch=False)
                est.train(lambda: x, steps=10)
                np.asarray(est.cluster_centers())
            finally:
                shutil.rmtree(model_dir, ignore_errors=True)
        elif entry == "sklearn_dropin":
            km = jaxkmeans.sklearn.KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
            np.asarray(km.labels_)
            return int(km.n_iter_)
        elif entry == "sklearn":
            return int(SkKMeans(n_clusters=k, n_init=1, random_state=seed).fit(x).n_iter_)
        else:
            raise ValueError(f"unknown entry point {entry!r}")
        return None

    for tag in COMPILE_CALLS:
        x, centers = data[sizes[tag]]
        rec: dict[str, Any] = {"rows": sizes[tag]}
        before = dict(acc) if acc is not None else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                n_iter = call(x, centers)
                rec["s"] = time.perf_counter() - t0
            if n_iter is not None:
                rec["n_iter"] = n_iter
        except Exception as exc:  # noqa: BLE001
            rec["error"] = _err(exc)
        if acc is not None:
            rec.update({key: acc[key] - before[key] for key in acc})
        out["calls"][tag] = rec
    return out


def bench_compile(libs: Libs, args, shape, result, save) -> None:
    """Every entry point in ``args.compile_entries``, a fresh process per entry and rep,
    entries interleaved (the first rotating), after one untimed warm-up process."""
    n, d, k = shape
    bucket = None
    if libs.jkm is not None:
        try:
            from jaxkmeans._validation import bucket_rows as bucket
        except Exception as exc:  # noqa: BLE001
            log(f"  note: no jaxkmeans._validation.bucket_rows ({_err(exc)}); sizes unbucketed")
    sizes = compile_sizes(n, bucket)
    entries = list(args.compile_entries)
    env = {k_: v for k_, v in os.environ.items() if k_ != "JAX_COMPILATION_CACHE_DIR"}
    env["JAXKMEANS_COMPILATION_CACHE"] = "0"
    sec: dict[str, Any] = {
        "N": n,
        "D": d,
        "K": k,
        "sizes": sizes,
        "reps": args.compile_reps,
        "entries": {e: {"what": COMPILE_ENTRIES[e], "runs": []} for e in entries},
        "child_env": {"JAXKMEANS_COMPILATION_CACHE": "0", "JAX_COMPILATION_CACHE_DIR": None},
    }
    result["compile"] = sec
    base = ["--compile-shape", f"{n}x{d}x{k}", "--seed", str(args.seed)]
    base += ["--compile-sizes", ",".join(str(sizes[t]) for t in COMPILE_CALLS)]
    log(f"  compile {n}x{d}x{k} sizes {sizes} (warm-up process)")
    warm = run_probe(
        ["--compile-probe", "warmup", *base], "COMPILEPROBE_JSON", args.memory_timeout, env
    )
    sec["warmup"] = warm
    # The "_cached" entries: a cache of their own (a fresh temporary directory), filled
    # by one untimed process of the same entry first.
    cache_home = tempfile.mkdtemp(prefix="jaxkmeans-bench-cache-")
    cached_env = dict(env, JAXKMEANS_COMPILATION_CACHE="1", XDG_CACHE_HOME=cache_home)
    sec["cached_child_env"] = {"JAXKMEANS_COMPILATION_CACHE": "1", "XDG_CACHE_HOME": "(temp)"}

    def env_of(entry: str) -> dict[str, str]:
        return cached_env if entry.endswith(CACHED_SUFFIX) else env

    try:
        for entry in entries:
            if entry.endswith(CACHED_SUFFIX):
                log(f"    {entry}: filling its cache (untimed process)")
                fill = ["--compile-probe", entry, *base]
                sec["entries"][entry]["fill"] = run_probe(
                    fill, "COMPILEPROBE_JSON", args.memory_timeout, cached_env
                )
        _compile_reps(args, entries, base, sec, env_of, save)
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)
    _summarize_compile(sec)
    save()


def _compile_reps(args, entries, base, sec, env_of, save) -> None:
    for rep in range(args.compile_reps):
        shift = rep % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            probe = ["--compile-probe", entry, *base]
            r = run_probe(probe, "COMPILEPROBE_JSON", args.memory_timeout, env_of(entry))
            sec["entries"][entry]["runs"].append(r)
            log(f"    rep {rep} {entry}: " + report.compile_run_line(r))
            save()


def _summarize_compile(sec: dict[str, Any]) -> None:
    for entry in sec["entries"].values():
        runs = [r for r in entry["runs"] if not r.get("error")]
        errors = [r["error"] for r in entry["runs"] if r.get("error")]
        errors += [c["error"] for r in runs for c in r.get("calls", {}).values() if c.get("error")]
        if errors:
            entry["error"] = errors[0]
        entry["import_s"] = _median([r["import_s"] for r in runs if "import_s" in r])
        for tag in COMPILE_CALLS:
            its = [r["calls"][tag]["n_iter"] for r in runs if "n_iter" in r["calls"].get(tag, {})]
            if its:
                entry[f"{tag}_n_iter"] = its[-1]  # deterministic: same data and seed
            ts = [r["calls"][tag]["s"] for r in runs if r.get("calls", {}).get(tag, {}).get("s")]
            entry[f"{tag}_s"] = _median(ts)
            comp = [
                r["calls"][tag]["backend_compiles"]
                for r in runs
                if "backend_compiles" in r.get("calls", {}).get(tag, {})
            ]
            if comp:
                entry[f"{tag}_compiles"] = max(comp)
                entry[f"{tag}_compile_s"] = _median(
                    [
                        r["calls"][tag]["backend_compile_s"] + r["calls"][tag]["trace_lower_s"]
                        for r in runs
                        if "backend_compile_s" in r.get("calls", {}).get(tag, {})
                    ]
                )
        first, second = entry.get("first_s"), entry.get("second_s")
        if first is not None and second is not None:
            entry["compile_s"] = first - second
            for tag in ("same_bucket", "other_bucket"):
                if entry.get(f"{tag}_s") is not None and second > 0:
                    entry[f"{tag}_vs_second"] = entry[f"{tag}_s"] / second
        if None not in (entry.get("import_s"), first, entry.get("same_bucket_s")):
            entry["session_same_bucket_s"] = entry["import_s"] + first + entry["same_bucket_s"]
        if None not in (entry.get("import_s"), first, entry.get("other_bucket_s")):
            entry["session_other_bucket_s"] = entry["import_s"] + first + entry["other_bucket_s"]
    sk = sec["entries"].get("sklearn", {})
    for name, entry in sec["entries"].items():
        if name == "sklearn":
            continue
        for tag in ("same_bucket", "other_bucket"):
            key = f"session_{tag}_s"
            if entry.get(key) and sk.get(key):
                entry[f"session_{tag}_vs_sklearn"] = entry[key] / sk[key]


# --------------------------------------------------------------------------- main


def default_out(args) -> Path:
    date = _dt.date.today().isoformat()
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.tag)
    suffix = "" if args.mode == "full" else f"-{args.mode}"
    return RESULTS_DIR / f"{date}-{tag}{suffix}.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few small shapes, fewer reps (< 2 min)")
    p.add_argument(
        "--shapes", type=parse_shapes, help="Lloyd shapes NxDxK[,NxDxK...], e.g. 2e5x128x256"
    )
    p.add_argument("--reps", type=int, help="timed repetitions (median reported; default 5/3)")
    p.add_argument("--iters", type=int, help="Lloyd iterations per timed run (default 10/3)")
    p.add_argument(
        "--contestants",
        default=",".join(LLOYD_CONTESTANTS),
        help=f"Lloyd contestants, comma separated (default: {','.join(LLOYD_CONTESTANTS)})",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"what to run, comma separated (default: {','.join(SECTIONS)})",
    )
    p.add_argument("--init-shapes", type=parse_shapes, help="init benchmark shapes NxDxK")
    p.add_argument("--mb-shapes", type=parse_shapes, help="mini-batch shapes DxKxBATCH")
    p.add_argument("--memory-shapes", type=parse_shapes, help="memory probe shapes NxDxK")
    p.add_argument("--mb-steps", type=int, help="timed mini-batch steps per run")
    p.add_argument(
        "--fit-shapes",
        type=parse_fit_shapes,
        help="whole-fit shapes NxDxK[:random|:kmeans_plus_plus], e.g. 1e6x32x64,25e4x32x64:kpp",
    )
    p.add_argument("--fit-iters", type=int, default=10, help="whole-fit iterations (default 10)")
    p.add_argument(
        "--fit-memory",
        choices=("all", "first", "none"),
        help="whole-fit memory probes: every shape, the first, none (default all/first)",
    )
    p.add_argument(
        "--compile-shape", type=parse_shapes, help="compile-time shape NxDxK (default 1e4x10x8)"
    )
    p.add_argument(
        "--compile-entries",
        help="compile-time entry points, comma separated, or 'all' (default: all; quick: 4)",
    )
    p.add_argument("--compile-reps", type=int, help="fresh processes per entry point (3/1)")
    p.add_argument("--out", type=Path, help="result JSON path (default bench/results/<date>-<tag>)")
    p.add_argument("--tag", default=socket.gethostname(), help="machine tag for the file name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=THREADS, help="threads for every contestant")
    p.add_argument("--no-reference", action="store_true", help="skip the float64 reference")
    p.add_argument("--inertia-rtol", type=float, default=1e-4, help="inertia check tolerance")
    p.add_argument("--memory-timeout", type=int, default=900)
    p.add_argument("--no-report", action="store_true", help="do not write RESULTS.md / PNG")
    p.add_argument(
        "--report-only",
        nargs="?",
        const="",
        metavar="JSON",
        help="only regenerate RESULTS.md + PNG from JSON (default: newest in bench/results)",
    )
    p.add_argument("--memory-probe", type=parse_shapes, help=argparse.SUPPRESS)
    p.add_argument("--fit-probe", type=parse_fit_shapes, help=argparse.SUPPRESS)
    p.add_argument("--fit-probe-contestant", help=argparse.SUPPRESS)
    p.add_argument("--compile-probe", help=argparse.SUPPRESS)
    p.add_argument("--compile-sizes", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only is not None:
        return report.main([args.report_only] if args.report_only else [])
    if args.memory_probe:
        (n, d, k) = args.memory_probe[0]
        print("MEMPROBE_JSON " + json.dumps(memory_probe(n, d, k, args.seed)), flush=True)
        return 0
    if args.fit_probe:
        out = fit_memory_probe(
            args.fit_probe[0], args.fit_probe_contestant, args.fit_iters, args.seed
        )
        print("FITPROBE_JSON " + json.dumps(out, default=_json_default), flush=True)
        return 0
    if args.compile_probe:
        sizes = dict(zip(COMPILE_CALLS, map(int, args.compile_sizes.split(",")), strict=True))
        out = compile_probe(args.compile_probe, args.compile_shape[0], sizes, args.seed)
        print("COMPILEPROBE_JSON " + json.dumps(out, default=_json_default), flush=True)
        return 0

    preset = QUICK if args.quick else FULL
    custom = any(
        v is not None
        for v in (
            args.shapes,
            args.init_shapes,
            args.mb_shapes,
            args.memory_shapes,
            args.fit_shapes,
            args.compile_shape,
            args.compile_entries,
        )
    )
    args.mode = "quick" if args.quick else ("custom" if custom else "full")
    args.reps = args.reps or preset["reps"]
    args.iters = args.iters or preset["iters"]
    args.mb_steps = args.mb_steps or preset["mb_steps"]
    args.mb_pool = preset["mb_pool"]
    args.contestants = [c.strip() for c in args.contestants.split(",") if c.strip()]
    unknown = set(args.contestants) - set(LLOYD_CONTESTANTS)
    if unknown:
        raise SystemExit(f"unknown --contestants {sorted(unknown)}; known: {LLOYD_CONTESTANTS}")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(sections) - set(SECTIONS):
        raise SystemExit(f"unknown --sections {sorted(set(sections) - set(SECTIONS))}")
    args.fit_memory = args.fit_memory or preset["fit_memory"]
    args.compile_reps = args.compile_reps or preset["compile_reps"]
    entries = args.compile_entries or preset["compile_entries"]
    if isinstance(entries, str):
        entries = [e.strip() for e in entries.split(",") if e.strip()]
    args.compile_entries = list(COMPILE_ENTRIES) if entries == ["all"] else entries
    if set(args.compile_entries) - set(COMPILE_ENTRIES):
        raise SystemExit(
            f"unknown --compile-entries {sorted(set(args.compile_entries) - set(COMPILE_ENTRIES))}"
            f"; known: {', '.join(COMPILE_ENTRIES)}"
        )
    shapes = {
        "lloyd": args.shapes or preset["lloyd"],
        "init": args.init_shapes or preset["init"],
        "minibatch": args.mb_shapes or preset["minibatch"],
        "memory": args.memory_shapes or preset["memory"],
        "fit": args.fit_shapes or preset["fit"],
        "compile": (args.compile_shape or [preset["compile"]])[0],
    }
    out_path = args.out or default_out(args)
    t_start = time.perf_counter()

    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": args.mode,
        "argv": sys.argv[1:] if argv is None else argv,
        "config": {
            "reps": args.reps,
            "iters": args.iters,
            "seed": args.seed,
            "data": "float32 Gaussian blobs: 100 centers uniform in [-5,5]^D, unit std",
            "init": "K distinct data rows (same for every contestant)",
            "contestants": args.contestants,
            "sections": sections,
            "shapes": shapes,
            "mb_steps": args.mb_steps,
            "mb_pool": args.mb_pool,
            "fit_iters": args.fit_iters,
            "fit_memory": args.fit_memory,
            "compile_entries": args.compile_entries,
            "compile_reps": args.compile_reps,
            "inertia_rtol": args.inertia_rtol,
            "nice": os.nice(0),
        },
        "load_avg_start": os.getloadavg(),
        "lloyd": [],
        "init": [],
        "minibatch": [],
        "memory": [],
        "fit": [],
    }
    fit_rows = {shape: _fit_row(shape, args.fit_iters) for shape in shapes["fit"]}
    if "fit" in sections:
        result["fit"] = list(fit_rows.values())

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - t_start
        write_json(out_path, result)

    log(f"jaxkmeans bench ({args.mode}), threads={THREADS}, writing {out_path}")
    # The memory probe goes first: a child's ru_maxrss starts at the parent's peak RSS.
    if "memory" in sections:
        bench_memory(args, shapes["memory"], result, save)
    if "fit" in sections:
        bench_fit_memory(args, shapes["fit"], fit_rows, save)

    libs = Libs().load()
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(THREADS)
    except Exception as exc:  # noqa: BLE001
        libs.errors["threadpoolctl"] = _err(exc)
    result["machine"] = machine_info(libs)
    result["versions"] = versions(libs)
    result["threads"] = thread_info(libs)
    result["import_errors"] = libs.errors
    for name, msg in libs.errors.items():
        log(f"  note: {name}: {msg}")
    save()

    if "lloyd" in sections:
        bench_lloyd(libs, args, shapes["lloyd"], result, save)
    if "init" in sections:
        bench_init(libs, args, shapes["init"], result, save)
    if "minibatch" in sections:
        bench_minibatch(libs, args, shapes["minibatch"], result, save)
    if "fit" in sections:
        bench_fit(libs, args, shapes["fit"], fit_rows, save)
    if "compile" in sections:
        bench_compile(libs, args, shapes["compile"], result, save)

    result["load_avg_end"] = os.getloadavg()
    save()
    log(f"wrote {out_path} in {result['elapsed_s']:.1f} s")
    if not args.no_report:
        report.write_report(out_path)
        log(f"wrote {report.RESULTS_MD} and {out_path.with_suffix('.png')}")
        log("")
        log(report.lloyd_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
