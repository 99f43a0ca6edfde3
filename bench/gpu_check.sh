#!/usr/bin/env bash
# GPU check for jaxkmeans: Lloyd throughput per precision against the card's peak.
#
#   bash bench/gpu_check.sh                      # on a machine with an NVIDIA GPU
#   GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh    # tiny shapes; runs on CPU too (tests the script)
#
# Prints nvidia-smi, device and versions, then times jaxkmeans at N=1e6, D=128,
# K in {256, 4096, 65536} with precision float32 / tf32 / bfloat16: a jitted loop of
# lloyd_step, fit (per iteration) and assign, achieved TFLOP/s (2*N*K*D / s per
# iteration) and the fraction of the card's dense peak for that precision; the inertia of
# each run's final centers (evaluated in float32) against the float32 run.
# Then the fused Pallas (Triton) kernels (jaxkmeans.kernels.pallas_gpu: nearest and
# statistics) against the XLA kernel per precision (GPU_CHECK_PALLAS=0 skips them).
# Optional peers, only if importable: faiss-gpu, fastkmeans, flash-kmeans.
# Writes JSON to $OUT/gpu_check.json when $OUT is set, else bench/results/.
# The whole script runs under `timeout 480`; results are saved after every measurement.
#
# Knobs (env): GPU_CHECK_N, GPU_CHECK_D, GPU_CHECK_KS (comma list), GPU_CHECK_ITERS,
# GPU_CHECK_REPS, GPU_CHECK_BUDGET_S (python-side soft budget, default 420),
# GPU_CHECK_PEERS=0 to skip the optional peers.
set -u
if [[ -z "${JKM_GPU_CHECK_INNER:-}" ]]; then
  export JKM_GPU_CHECK_INNER=1
  exec timeout --kill-after=10 480 bash "$0" "$@"
fi
cd "$(dirname "$0")/.." || exit 1

echo "== nvidia-smi"
nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
echo "== python: $(command -v python) $(python --version 2>&1)"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"  # room for peers
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

python - <<'PY'
import datetime
import functools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

T0 = time.time()
SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET_S", "420"))
N = int(float(os.environ.get("GPU_CHECK_N", "2e4" if SMOKE else "1e6")))
D = int(os.environ.get("GPU_CHECK_D", "16" if SMOKE else "128"))
KS = [int(float(k)) for k in os.environ.get("GPU_CHECK_KS", "16,64" if SMOKE else "256,4096,65536").split(",")]
ITERS = int(os.environ.get("GPU_CHECK_ITERS", "5"))
REPS = int(os.environ.get("GPU_CHECK_REPS", "2" if SMOKE else "3"))
PEERS = os.environ.get("GPU_CHECK_PEERS", "1") != "0"
PRECISIONS = ("float32", "tf32", "bfloat16")
# Dense peak TFLOP/s (NVIDIA datasheets; TF32/BF16 without sparsity).
PEAKS = {
    "H100 SXM": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
    "H100 PCIe": {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0},
    "H100 NVL": {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.0},
    "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
}


def err(exc):
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


def left():
    return BUDGET - (time.time() - T0)


def card_peaks(kind):
    kind_u = kind.upper()
    if "H200" in kind_u:
        return "H200", PEAKS["H200"]
    if "H100" in kind_u:
        if "PCIE" in kind_u:
            return "H100 PCIe", PEAKS["H100 PCIe"]
        if "NVL" in kind_u:
            return "H100 NVL", PEAKS["H100 NVL"]
        return "H100 SXM", PEAKS["H100 SXM"]
    return None, None


result = {
    "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "smoke": SMOKE,
    "config": {"N": N, "D": D, "Ks": KS, "iters": ITERS, "reps": REPS, "budget_s": BUDGET},
    "host": socket.gethostname(),
    "python": sys.version.split()[0],
    "platform": platform.platform(),
    "jaxkmeans": [],
    "peers": [],
    "notes": [],
}
try:
    result["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
except Exception as exc:  # noqa: BLE001
    result["nvidia_smi"] = f"unavailable: {err(exc)}"

if os.environ.get("OUT"):
    OUT_PATH = Path(os.environ["OUT"]) / "gpu_check.json"
else:
    OUT_PATH = Path("bench/results") / f"{datetime.date.today().isoformat()}-gpu-{socket.gethostname()}.json"


def save():
    result["elapsed_s"] = time.time() - T0
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT_PATH.with_name(OUT_PATH.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, OUT_PATH)


import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

dev = jax.devices()[0]
kind = getattr(dev, "device_kind", str(dev))
card, peaks = card_peaks(kind)
result.update({
    "jax": jax.__version__,
    "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": kind,
    "card": card,
    "peak_tflops": peaks,
})
try:
    from importlib import metadata
    result["jax_plugins"] = {d.metadata["Name"]: d.version for d in metadata.distributions()
                             if "jax" in (d.metadata["Name"] or "").lower() and "cuda" in d.metadata["Name"].lower()}
except Exception:  # noqa: BLE001
    pass
try:
    result["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                          text=True).stdout.strip()
except OSError:
    result["git_commit"] = None
print(f"== jax {result['jax']} jaxlib {result['jaxlib']} backend {result['backend']} devices {result['devices']}")
print(f"== device kind {kind!r} -> peaks {card}: {peaks}")
if result["backend"] != "gpu" and not SMOKE:
    result["notes"].append("no GPU backend; nothing measured (set GPU_CHECK_SMOKE=1 to test on CPU)")
    save()
    print("no GPU backend: stop")
    sys.exit(2)

try:
    import jaxkmeans
    result["jaxkmeans_version"] = getattr(jaxkmeans, "__version__", "?")
except Exception as exc:  # noqa: BLE001
    jaxkmeans = None
    result["notes"].append(f"jaxkmeans import failed: {err(exc)}")
    print("jaxkmeans import failed:", err(exc))
save()

# ------------------------------------------------------------------ data (on device)
kx = jax.random.key(0)
k1, k2, k3 = jax.random.split(kx, 3)
blob_centers = jax.random.uniform(k1, (100, D), jnp.float32, -5.0, 5.0)
x = blob_centers[jax.random.randint(k2, (N,), 0, 100)] + jax.random.normal(k3, (N, D), jnp.float32)
x = jax.block_until_ready(x)
x_np = None


def host_x():
    global x_np
    if x_np is None:
        x_np = np.asarray(x)
    return x_np


def init_for(k):
    idx = jax.random.choice(jax.random.fold_in(kx, k), N, (k,), replace=False)
    return jax.block_until_ready(x[idx])


def timed(fn, reps):
    """Warm-up (compile) once, then `reps` timed calls; returns (compile_s, [seconds], last)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return first, ts, out


@jax.jit
def inertia_f32(x, c):
    """Reference inertia in float32 at HIGHEST precision, chunked over rows."""
    cc = jnp.sum(c * c, axis=1)
    rows = max(1, min(x.shape[0], (1 << 27) // (4 * c.shape[0])))
    nb = -(-x.shape[0] // rows)
    xp = jnp.pad(x, ((0, nb * rows - x.shape[0]), (0, 0))).reshape(nb, rows, -1)
    valid = (jnp.arange(nb * rows) < x.shape[0]).reshape(nb, rows)

    def body(tot, inp):
        xb, vb = inp
        d = jnp.sum(xb * xb, 1)[:, None] - 2 * jnp.dot(xb, c.T, precision=lax.Precision.HIGHEST) + cc
        return tot + jnp.sum(jnp.where(vb, jnp.maximum(jnp.min(d, 1), 0.0), 0.0)), None

    return lax.scan(body, jnp.zeros((), jnp.float32), (xp, valid))[0]


def tflops(k, s):
    return 2.0 * N * k * D / s / 1e12 if s else None


# ------------------------------------------------------------------ jaxkmeans
f32_inertia = {}
if jaxkmeans is not None:
    for k in KS:
        c0 = init_for(k)
        for prec in PRECISIONS:
            if left() < 30:
                result["notes"].append(f"budget: skipped K={k} {prec} and later")
                break
            row = {"K": k, "precision": prec, "N": N, "D": D, "iters": ITERS}
            kw = {"precision": prec}
            try:
                jax.eval_shape(functools.partial(jaxkmeans.lloyd_step, **kw), x, c0)
            except TypeError as exc:
                if prec != "float32":
                    row["error"] = f"precision keyword not supported: {err(exc)}"
                    result["jaxkmeans"].append(row)
                    save()
                    continue
                kw = {}
                row["precision"] = "default (no precision keyword)"
            # 1) jitted fori_loop of lloyd_step
            try:
                def loop(x, c, kw=kw):
                    return lax.fori_loop(0, ITERS, lambda _, c: jaxkmeans.lloyd_step(x, c, **kw)[0].astype(c.dtype), c)

                loop_j = jax.jit(loop)
                comp, ts, cfin = timed(lambda: loop_j(x, c0), REPS)
                s = statistics.median(ts) / ITERS
                row.update({"step_s_per_iter": s, "step_s_all": ts, "step_compile_s": comp,
                            "step_tflops": tflops(k, s)})
                if peaks and prec in peaks:
                    row["step_pct_peak"] = 100.0 * tflops(k, s) / peaks[prec]
                inert = float(inertia_f32(x, cfin))
                row["inertia_f32"] = inert
                if prec == "float32" or not kw:
                    f32_inertia[k] = inert
                if k in f32_inertia:
                    row["inertia_rel_diff_vs_float32"] = (inert - f32_inertia[k]) / f32_inertia[k]
            except Exception as exc:  # noqa: BLE001
                row["step_error"] = err(exc)
            save()
            # 2) fit (time / n_iter)
            if left() > 20:
                try:
                    key = jax.random.key(1)
                    comp, ts, res = timed(
                        lambda: jaxkmeans.fit(key, x, k, init=c0, max_iter=ITERS, tol=0.0, **kw), REPS)
                    n_it = max(int(res.n_iter), 1)
                    s = statistics.median(ts) / n_it
                    row.update({"fit_s_per_iter": s, "fit_n_iter": n_it, "fit_compile_s": comp,
                                "fit_tflops": tflops(k, s)})
                except Exception as exc:  # noqa: BLE001
                    row["fit_error"] = err(exc)
                save()
            # 3) assign
            if left() > 15:
                try:
                    comp, ts, _ = timed(lambda: jaxkmeans.assign(x, c0, **kw), REPS)
                    s = statistics.median(ts)
                    row.update({"assign_s": s, "assign_tflops": tflops(k, s)})
                except Exception as exc:  # noqa: BLE001
                    row["assign_error"] = err(exc)
            result["jaxkmeans"].append(row)
            save()
            print(f"  jaxkmeans K={k:6d} {row['precision']:>9s}: step {row.get('step_s_per_iter', float('nan')):.4g} s/it "
                  f"{row.get('step_tflops') or float('nan'):.1f} TFLOP/s ({row.get('step_pct_peak', float('nan')):.0f}% peak), "
                  f"fit {row.get('fit_s_per_iter', float('nan')):.4g} s/it, assign {row.get('assign_s', float('nan')):.4g} s, "
                  f"inertia vs f32 {row.get('inertia_rel_diff_vs_float32', float('nan')):+.1e}"
                  + (f"  ERR {row.get('step_error') or row.get('fit_error') or row.get('error')}"
                     if any(e in row for e in ('step_error', 'fit_error', 'error')) else ""), flush=True)


# ------------------------------------------------------------------ Pallas kernels
# The fused Pallas (Triton) nearest-center kernel and statistics vs the XLA kernel, per
# precision: one call each on all N rows (after a compile call), labels agreement vs XLA.
result["pallas"] = []
try:
    from jaxkmeans.engine import Pass, frame_of
    from jaxkmeans.kernels import pallas_gpu, xla as xla_kernel
    from jaxkmeans.metrics import frame_origin
except Exception as exc:  # noqa: BLE001
    pallas_gpu = None
    result["notes"].append(f"pallas kernels unavailable: {err(exc)}")
if pallas_gpu is not None and os.environ.get("GPU_CHECK_PALLAS", "1") != "0":
    plat = "gpu" if result["backend"] == "gpu" else "cpu"  # cpu: interpret (smoke only)
    for k in KS:
        c0 = init_for(k)
        for prec in PRECISIONS:
            if left() < 40:
                result["notes"].append(f"budget: skipped pallas K={k} {prec} and later")
                break
            row = {"K": k, "precision": prec, "N": N, "D": D}
            try:
                spec = Pass(precision=prec, kernel="xla")
                frame = jax.jit(lambda x, c: frame_of(c, frame_origin(x, "squared_euclidean"),
                                                      "squared_euclidean"))(x, c0)
                fns = {
                    "pallas_nearest": jax.jit(lambda x, f, s=spec: pallas_gpu.nearest(s, plat, x, f)),
                    "xla_nearest": jax.jit(lambda x, f, s=spec: xla_kernel.nearest(s, plat, x, f)),
                    "pallas_stats": jax.jit(lambda x, f, s=spec: pallas_gpu.statistics(s, plat, x, None, f)),
                    "xla_stats": jax.jit(lambda x, f, s=spec: xla_kernel.statistics(s, plat, x, None, f)),
                }
                outs = {}
                for name, fn in fns.items():
                    if left() < 25:
                        break
                    try:
                        comp, ts, outs[name] = timed(lambda fn=fn: fn(x, frame), REPS)
                        s = statistics.median(ts)
                        row.update({f"{name}_s": s, f"{name}_compile_s": comp,
                                    f"{name}_tflops": tflops(k, s)})
                        if peaks and prec in peaks:
                            row[f"{name}_pct_peak"] = 100.0 * tflops(k, s) / peaks[prec]
                    except Exception as exc:  # noqa: BLE001
                        row[f"{name}_error"] = err(exc)
                if "pallas_nearest" in outs and "xla_nearest" in outs:
                    a, b = outs["pallas_nearest"], outs["xla_nearest"]
                    row["labels_agree_vs_xla"] = float(jnp.mean(a[0] == b[0]))
                    row["dist_max_rel_diff_vs_xla"] = float(
                        jnp.max(jnp.abs(a[1] - b[1]) / jnp.maximum(jnp.abs(b[1]), 1e-6)))
                if "pallas_stats" in outs and "xla_stats" in outs:
                    a, b = outs["pallas_stats"], outs["xla_stats"]
                    row["sums_max_abs_diff_vs_xla"] = float(jnp.max(jnp.abs(a[0] - b[0])))
                    row["loss_rel_diff_vs_xla"] = float((a[2] - b[2]) / b[2])
            except Exception as exc:  # noqa: BLE001
                row["error"] = err(exc)
            result["pallas"].append(row)
            save()

            def g(key, fmt=".4g"):
                v = row.get(key)
                return format(v, fmt) if isinstance(v, (int, float)) else "-"

            errs = {kk: v for kk, v in row.items() if kk.endswith("error")}
            print(f"  pallas K={k:6d} {prec:>9s}: nearest {g('pallas_nearest_s')} s "
                  f"({g('pallas_nearest_tflops', '.1f')} TFLOP/s) vs xla {g('xla_nearest_s')} s; "
                  f"stats {g('pallas_stats_s')} s vs xla {g('xla_stats_s')} s; "
                  f"labels agree {g('labels_agree_vs_xla', '.6f')}" + (f"  ERR {errs}" if errs else ""),
                  flush=True)
save()


# ------------------------------------------------------------------ optional peers
def peer(name, fn):
    for k in KS:
        if left() < 40:
            result["notes"].append(f"budget: skipped {name} K={k} and later")
            return
        row = {"peer": name, "K": k, "N": N, "D": D, "iters": ITERS}
        try:
            extra = fn(k, row)
            s = row["s_per_iter"]
            row["tflops"] = tflops(k, s)
            row.update(extra or {})
            if row.get("centers") is not None:
                c = jnp.asarray(row.pop("centers"), jnp.float32)
                inert = float(inertia_f32(x, c))
                row["inertia_f32"] = inert
                if k in f32_inertia:
                    row["inertia_rel_diff_vs_jaxkmeans_float32"] = (inert - f32_inertia[k]) / f32_inertia[k]
            print(f"  {name} K={k}: {s:.4g} s/it {row['tflops']:.1f} TFLOP/s", flush=True)
        except Exception as exc:  # noqa: BLE001
            row.pop("centers", None)
            row["error"] = err(exc)
            print(f"  {name} K={k}: error {row['error']}", flush=True)
        result["peers"].append(row)
        save()


def faiss_gpu(k, row):
    import faiss
    c0 = np.asarray(init_for(k))
    xs = host_x()
    ts = []
    for _ in range(1 + REPS):
        km = faiss.Kmeans(D, k, niter=ITERS, gpu=True, seed=1234, max_points_per_centroid=10**9,
                          min_points_per_centroid=1, verbose=False)
        t0 = time.perf_counter()
        km.train(xs, init_centroids=c0)
        ts.append(time.perf_counter() - t0)
    row["s_per_iter"] = statistics.median(ts[1:]) / ITERS
    row["note"] = "host numpy input (includes host->device copy), fixed init"
    return {"centers": km.centroids}


def fastkmeans_peer(k, row):
    import inspect
    from fastkmeans import FastKMeans
    params = inspect.signature(FastKMeans.__init__).parameters
    want = {"d": D, "k": k, "niter": ITERS, "tol": -1.0, "gpu": True, "seed": 0,
            "max_points_per_centroid": 10**9, "verbose": False}
    kwargs = {a: v for a, v in want.items() if a in params}
    xs = host_x()
    ts = []
    for _ in range(1 + REPS):
        km = FastKMeans(**kwargs)
        t0 = time.perf_counter()
        km.train(xs)
        ts.append(time.perf_counter() - t0)
    row["s_per_iter"] = statistics.median(ts[1:]) / ITERS
    row["note"] = f"own random init, host numpy input; kwargs {sorted(kwargs)}"
    return {"centers": getattr(km, "centroids", None)}


def flash_kmeans_peer(k, row):
    import torch
    from flash_kmeans import batch_kmeans_Euclid
    xt = torch.from_numpy(host_x()).cuda().to(torch.float16)[None]
    c0 = torch.from_numpy(np.asarray(init_for(k))).cuda().to(torch.float16)[None]
    ts = []
    for _ in range(1 + REPS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = batch_kmeans_Euclid(xt, k, max_iters=ITERS, tol=-1.0, init_centroids=c0.clone())
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    n_it = out[2] if len(out) > 2 and isinstance(out[2], int) and out[2] > 0 else ITERS
    row["s_per_iter"] = statistics.median(ts[1:]) / n_it
    row["note"] = "float16 input (its README's setting), fixed init, batch of 1"
    return {"centers": out[1][0].float().cpu().numpy()}


if PEERS and result["backend"] == "gpu":
    for name, mod, fn in (("faiss-gpu", "faiss", faiss_gpu), ("fastkmeans", "fastkmeans", fastkmeans_peer),
                          ("flash-kmeans", "flash_kmeans", flash_kmeans_peer)):
        try:
            m = __import__(mod)
            if name == "faiss-gpu" and not (hasattr(m, "StandardGpuResources") and m.get_num_gpus() > 0):
                raise ImportError("faiss has no GPU support here (faiss-cpu build)")
        except Exception as exc:  # noqa: BLE001
            result["notes"].append(f"{name} skipped: not installed / not usable ({err(exc)})")
            print(f"  {name}: skipped ({err(exc)})")
            continue
        peer(name, fn)
else:
    result["notes"].append("optional peers skipped (GPU_CHECK_PEERS=0 or no GPU backend)")
save()

# ------------------------------------------------------------------ summary
print()
print(f"N={N} D={D} iters={ITERS} reps={REPS}, device {kind} (peaks: {card or 'unknown card'})")
print(f"{'K':>6} {'precision':>10} {'step s/it':>10} {'TFLOP/s':>8} {'% peak':>7} {'fit s/it':>9} "
      f"{'assign s':>9} {'inertia vs f32':>15}")
for r in result["jaxkmeans"]:
    def f(key, fmt):
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    print(f"{r['K']:>6} {r['precision'][:10]:>10} {f('step_s_per_iter', '.4g'):>10} {f('step_tflops', '.1f'):>8} "
          f"{f('step_pct_peak', '.0f'):>7} {f('fit_s_per_iter', '.4g'):>9} {f('assign_s', '.4g'):>9} "
          f"{f('inertia_rel_diff_vs_float32', '+.1e'):>15}")
for r in result["peers"]:
    print(f"{r['K']:>6} {r['peer'][:10]:>10} {r.get('s_per_iter', float('nan')):>10.4g} "
          f"{r.get('tflops') or float('nan'):>8.1f}   {r.get('error', r.get('note', ''))}")
for n in result["notes"]:
    print("note:", n)
print(f"wrote {OUT_PATH} ({time.time() - T0:.0f} s)")
PY
rc=$?
echo "== gpu_check exit $rc"
exit $rc
