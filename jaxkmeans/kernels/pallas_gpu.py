"""Fused nearest-center kernel for GPU in Pallas (Triton backend).

Each program owns a tile of ``BLOCK_ROWS`` rows. It loads the rows once (shifted by the
frame origin, or normalised for cosine, inside the kernel), then loops over tiles of
``BLOCK_CENTERS`` prepared centers: one matmul at the requested precision plus the bias
gives a (rows, centers) score tile in registers, which is folded at once into a running
``(min score, first index)`` per row. Only ``(n,)`` labels and ``(n,)`` minimum scores
reach device memory; no (rows, k) block ever does.

Backend: Triton (``compiler_params=plgpu.CompilerParams``), not Mosaic GPU. The kernel
is a plain tiled matmul with a register-level reduction, which Triton expresses directly
(masked loads for ragged rows/features, ``tl.dot`` with an explicit input precision,
including 3xTF32); Mosaic GPU needs warpgroup/TMA-level code for the same and is
Hopper/Blackwell only.

Precision (``spec.precision``) of the score matmul on GPU:

- ``"float32"``: 3xTF32 (``lax.DotAlgorithmPreset.TF32_TF32_F32_X3``, Triton
  ``inputPrecision = tf32x3``): tensor cores, about float32 accuracy (see
  ``GPU_FLOAT32_ALGORITHM`` to switch to exact IEEE float32 FMA instead);
- ``"tf32"``: one TF32 pass;
- ``"bfloat16"``: bfloat16 inputs, float32 accumulation.

In interpret mode (``platform="cpu"``) the same kernel body runs with the XLA
precisions of :func:`jaxkmeans.metrics.dot` (HIGHEST / HIGH / bfloat16 inputs), so it
matches the XLA reference on CPU.

Padding: centers are padded (outside the kernel; k * d is small) to a multiple of
``BLOCK_CENTERS`` with zero rows and bias NaN, and features to a multiple of ``bd`` (a
power of two in [16, BLOCK_FEATURES]) with zeros; rows and features of ``x`` are never
copied: loads are masked (``other=0``) and stores are masked. A NaN score never wins
(so NaN-bias padding never wins either); a row whose scores are all NaN gets label 0, as
in :func:`jaxkmeans.kernels.xla.block_argmin`.
Ties go to the lowest index: within a tile the first index attaining the tile minimum,
across tiles a later tile replaces the running minimum only when strictly smaller.

Distances: the squared Euclidean distance is recomputed after the kernel as
``||x' + cp[label] / 2||^2`` (accurate, exactly as the XLA kernel does it); cosine is
``max(1 + min score, 0)``.

Per-center sums (:func:`statistics`): deterministic and without scatter-add or an (n, k)
one-hot: rows are sorted by label (stable ``argsort``), the weighted prepared rows are
gathered in that order (one XLA fusion), and a second Pallas kernel gives each program a
tile of centers (and a slice of features) and loops only over the contiguous run of
sorted rows whose labels fall in that tile, adding ``onehot(tile, rows) @ rows`` at full
float32 precision. Total work is O(n * BLOCK_CENTERS * d), not O(n * k * d).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxkmeans import metrics
from jaxkmeans._validation import COSINE_DISTANCE
from jaxkmeans.kernels import xla

__all__ = [
    "BLOCK_ROWS",
    "BLOCK_CENTERS",
    "BLOCK_FEATURES",
    "GPU_FLOAT32_ALGORITHM",
    "supported",
    "nearest",
    "statistics",
]

BLOCK_ROWS = 64  # rows per program (``spec.chunk`` is ignored: the grid covers all rows)
BLOCK_CENTERS = 64  # centers per step of the sequential loop
BLOCK_FEATURES = 128  # features per matmul step when d is larger (x reloaded from L1/L2)
NUM_WARPS = 4
NUM_STAGES = 3
SUM_BLOCK_ROWS = 64  # sorted rows per step of the sums kernel
SUM_BLOCK_CENTERS = 32  # centers per program of the sums kernel
GPU_FLOAT32_ALGORITHM = lax.DotAlgorithmPreset.TF32_TF32_F32_X3


def _pow2(v: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, int(v) - 1).bit_length())


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _feature_blocks(d: int) -> tuple[int, int]:
    """``(bd, dp)``: features per matmul step (a power of two >= 16, at most
    BLOCK_FEATURES) and the padded feature count (a multiple of bd)."""
    bd = min(_pow2(d), BLOCK_FEATURES)
    return bd, round_up(d, bd)


def supported(x: jax.Array) -> bool:
    """The Pallas kernels run float32 rows; anything else goes to the XLA kernel."""
    return x.ndim == 2 and x.dtype == jnp.float32 and x.shape[0] > 0


def _dot_nt(a: jax.Array, b: jax.Array, precision: str, interpret: bool) -> jax.Array:
    """``a @ b.T`` in float32 (a (m, c), b (t, c)) at `precision`."""
    dims = (((1,), (1,)), ((), ()))
    if precision == "bfloat16":
        return lax.dot_general(
            a.astype(jnp.bfloat16),
            b.astype(jnp.bfloat16),
            dims,
            preferred_element_type=jnp.float32,
        )
    prec: lax.Precision | lax.DotAlgorithmPreset
    if interpret:
        prec = lax.Precision.HIGHEST if precision == "float32" else lax.Precision.HIGH
    elif precision == "float32":
        prec = GPU_FLOAT32_ALGORITHM
    else:
        prec = lax.DotAlgorithmPreset.TF32_TF32_F32
    return lax.dot_general(a, b, dims, precision=prec, preferred_element_type=jnp.float32)


def fold_tile(
    score: jax.Array, base: jax.Array, m: jax.Array, idx: jax.Array, big: int
) -> tuple[jax.Array, jax.Array]:
    """Folds a (rows, t) score tile whose column 0 is center `base` into the running
    ``(min, first index)`` ``(m, idx)``; ``idx == big`` means nothing found yet.

    NaN never wins; within the tile the lowest index attaining the minimum, across tiles
    (visited in increasing order) only a strictly smaller minimum replaces the running
    one, so ties go to the lowest index overall.
    """
    nan = score != score
    tmin = jnp.min(jnp.where(nan, jnp.inf, score), axis=1)
    cols = base + lax.broadcasted_iota(jnp.int32, score.shape, 1)
    tidx = jnp.min(jnp.where(score == tmin[:, None], cols, big), axis=1)
    take = (tidx != big) & ((tmin < m) | (idx == big))
    return jnp.where(take, tmin, m), jnp.where(take, tidx, idx)


def _nearest_kernel(
    x_ref, origin_ref, cp_ref, bias_ref, lab_ref, score_ref, *, n, d, kp, bm, bk, bd, dp,
    cosine, precision, interpret,
):  # fmt: skip
    i = pl.program_id(0)
    rows = i * bm + jnp.arange(bm, dtype=jnp.int32)
    row_ok = rows < n
    nd = dp // bd

    def load_x(c):
        """Prepared rows, features [c * bd, (c + 1) * bd), zero outside (n, d)."""
        cols = c * bd + jnp.arange(bd, dtype=jnp.int32)
        mask = row_ok[:, None] & (cols < d)[None, :]
        xs = plgpu.load(x_ref.at[:, pl.ds(c * bd, bd)], mask=mask, other=0.0)
        if not cosine:
            o = plgpu.load(origin_ref.at[pl.ds(c * bd, bd)], mask=cols < d, other=0.0)
            xs = jnp.where(mask, xs - o[None, :], 0.0)
        return xs

    inv = None
    if cosine:  # 1 / ||x|| (0 for zero rows), as metrics.normalize_rows
        if nd == 1:
            x0 = load_x(0)
            sq = jnp.sum(x0 * x0, axis=1)
        else:
            sq = lax.fori_loop(
                0,
                nd,
                lambda c, s: s + jnp.sum(load_x(c) ** 2, axis=1),
                jnp.zeros((bm,), jnp.float32),
            )
        inv = jnp.where(sq > 0, lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)

    def prepared(c):
        xs = load_x(c)
        return xs if inv is None else jnp.where(inv[:, None] > 0, xs * inv[:, None], 0.0)

    x_res = prepared(0) if nd == 1 else None

    def tile(j, carry):
        m, idx = carry
        start = pl.multiple_of(j * bk, bk)
        if nd == 1:
            c = cp_ref[pl.ds(start, bk), :]
            assert x_res is not None  # prepared above when nd == 1
            s = _dot_nt(x_res, c, precision, interpret)
        else:

            def part(f, acc):
                c = cp_ref[pl.ds(start, bk), pl.ds(pl.multiple_of(f * bd, bd), bd)]
                return acc + _dot_nt(prepared(f), c, precision, interpret)

            s = lax.fori_loop(0, nd, part, jnp.zeros((bm, bk), jnp.float32))
        s = s + bias_ref[pl.ds(start, bk)][None, :]
        return fold_tile(s, start, m, idx, kp)

    init = (jnp.full((bm,), jnp.inf, jnp.float32), jnp.full((bm,), kp, jnp.int32))
    m, idx = lax.fori_loop(0, kp // bk, tile, init)
    plgpu.store(lab_ref, idx, mask=row_ok)
    plgpu.store(score_ref, m, mask=row_ok)


def _pad_centers(cp: jax.Array, bias: jax.Array, kp: int, dp: int, dtype: Any):
    k, d = cp.shape
    cpp = jnp.pad(cp.astype(dtype), ((0, kp - k), (0, dp - d)))
    biasp = jnp.pad(bias.astype(jnp.float32), (0, kp - k), constant_values=jnp.nan)
    return cpp, biasp


def _kernel_argmin(spec: Any, x: jax.Array, frame: Any, interpret: bool):
    """``(idx (n,) int32 with k_pad meaning none, min score (n,) float32)``."""
    origin, cp, bias = frame
    n, d = x.shape
    k = cp.shape[0]
    cosine = spec.metric == COSINE_DISTANCE
    bd, dp = _feature_blocks(d)
    bm = BLOCK_ROWS
    bk = BLOCK_CENTERS
    kp = round_up(k, bk)
    cdtype = jnp.bfloat16 if spec.precision == "bfloat16" else jnp.float32
    cpp, biasp = _pad_centers(cp, bias, kp, dp, cdtype)
    if origin is None:
        origin = jnp.zeros((d,), jnp.float32)
    kernel = functools.partial(
        _nearest_kernel, n=n, d=d, kp=kp, bm=bm, bk=bk, bd=bd, dp=dp, cosine=cosine,
        precision=spec.precision, interpret=interpret,
    )  # fmt: skip
    grid = (pl.cdiv(n, bm),)
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec((bm, dp), lambda i: (i, 0)),
            pl.BlockSpec((dp,), lambda i: (0,)),
            pl.BlockSpec((kp, dp), lambda i: (0, 0)),
            pl.BlockSpec((kp,), lambda i: (0,)),
        ],
        out_specs=[pl.BlockSpec((bm,), lambda i: (i,)), pl.BlockSpec((bm,), lambda i: (i,))],
        out_shape=[
            jax.ShapeDtypeStruct((n,), jnp.int32),
            jax.ShapeDtypeStruct((n,), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        interpret=interpret,
        name="jaxkmeans_nearest_gpu",
    )(x, origin.astype(jnp.float32), cpp, biasp)


def finish(spec: Any, x: jax.Array, frame: Any, idx: jax.Array, smin: jax.Array, kp: int):
    """Labels and distances from a kernel's ``(index or kp, min score)``, and the
    prepared rows ``x'`` (what :func:`jaxkmeans.kernels.xla.nearest_block` returns)."""
    origin, cp, _ = frame
    none = idx >= kp
    labels = jnp.where(none, 0, idx).astype(jnp.int32)
    xp, base = metrics.prepare_rows(x, spec.metric, origin)
    if spec.metric == COSINE_DISTANCE:
        smin = jnp.where(none, jnp.nan, smin).astype(x.dtype)
        return labels, metrics.to_distance(base, smin), xp
    diff = xp + 0.5 * cp[labels]
    return labels, jnp.sum(diff * diff, axis=1), xp


def interpret_mode(platform: str, interpret: bool | None) -> bool:
    """Pallas interpret mode: on CPU unless `interpret` says otherwise."""
    return platform == "cpu" if interpret is None else interpret


def nearest(
    spec: Any, platform: str, x: jax.Array, frame: Any, *, interpret: bool | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,) int32, min_dist (n,))``, as :func:`jaxkmeans.kernels.xla.nearest`.

    `platform` ``"cpu"`` (or ``interpret=True``) runs the kernel in Pallas interpret mode.
    Non-float32 rows go to the XLA kernel.
    """
    if not supported(x):
        return xla.nearest(spec, "cpu" if platform == "cpu" else "gpu", x, frame)
    kp = round_up(frame[1].shape[0], BLOCK_CENTERS)
    idx, smin = _kernel_argmin(spec, x, frame, interpret_mode(platform, interpret))
    labels, dist, _ = finish(spec, x, frame, idx, smin, kp)
    return labels, dist.astype(x.dtype)


# ------------------------------------------------------------------------------ sums


def _sums_kernel(bounds_ref, lab_ref, xs_ref, w_ref, sums_ref, counts_ref, *, bt, br, bd):
    t = pl.program_id(0)
    lo = bounds_ref[t]
    hi = bounds_ref[t + 1]
    ids = t * bt + jnp.arange(bt, dtype=jnp.int32)

    def body(c, carry):
        acc, cnt = carry
        start = pl.multiple_of(c * br, br)
        lab = lab_ref[pl.ds(start, br)]
        rows = xs_ref[pl.ds(start, br), :]
        wb = w_ref[pl.ds(start, br)]
        hit = ids[:, None] == lab[None, :]
        onehot = jnp.where(hit, 1.0, 0.0).astype(jnp.float32)
        acc = acc + lax.dot_general(
            onehot,
            rows,
            (((1,), (0,)), ((), ())),
            precision=lax.Precision.HIGHEST,
            preferred_element_type=jnp.float32,
        )
        return acc, cnt + jnp.sum(jnp.where(hit, wb[None, :], 0.0), axis=1)

    init = (jnp.zeros((bt, bd), jnp.float32), jnp.zeros((bt,), jnp.float32))
    acc, cnt = lax.fori_loop(lo // br, (hi + br - 1) // br, body, init)
    sums_ref[...] = acc
    counts_ref[...] = cnt


def sorted_sums(
    xp: jax.Array, w: jax.Array, labels: jax.Array, k: int, interpret: bool
) -> tuple[jax.Array, jax.Array]:
    """Per-label sums of ``w * xp`` (k, d) and of ``w`` (k,): rows sorted by label, then
    each program sums the contiguous run of rows of its tile of labels (deterministic)."""
    n, d = xp.shape
    br, bt = SUM_BLOCK_ROWS, SUM_BLOCK_CENTERS
    bd, dp = _feature_blocks(d)
    np_ = round_up(n, br)
    kp = round_up(k, bt)
    order = jnp.argsort(labels, stable=True)
    lab_s = jnp.pad(labels[order], (0, np_ - n), constant_values=-1)
    w_s = jnp.pad(w[order].astype(jnp.float32), (0, np_ - n))
    xs = jnp.pad((xp * w[:, None])[order].astype(jnp.float32), ((0, np_ - n), (0, dp - d)))
    edges = jnp.arange(0, kp + 1, bt, dtype=jnp.int32)
    bounds = jnp.searchsorted(lab_s[:n], edges, side="left").astype(jnp.int32)
    kernel = functools.partial(_sums_kernel, bt=bt, br=br, bd=bd)
    sums, counts = pl.pallas_call(
        kernel,
        grid=(kp // bt, dp // bd),
        in_specs=[
            pl.BlockSpec((kp // bt + 1,), lambda t, f: (0,)),
            pl.BlockSpec((np_,), lambda t, f: (0,)),
            pl.BlockSpec((np_, bd), lambda t, f: (0, f)),
            pl.BlockSpec((np_,), lambda t, f: (0,)),
        ],
        out_specs=[
            pl.BlockSpec((bt, bd), lambda t, f: (t, f)),
            pl.BlockSpec((None, bt), lambda t, f: (f, t)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((kp, dp), jnp.float32),
            jax.ShapeDtypeStruct((dp // bd, kp), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=2),
        interpret=interpret,
        name="jaxkmeans_sorted_sums_gpu",
    )(bounds, lab_s, xs, w_s)
    return sums[:k, :d].astype(xp.dtype), counts[0, :k].astype(xp.dtype)


def statistics(
    spec: Any,
    platform: str,
    x: jax.Array,
    w: jax.Array | None,
    frame: Any,
    *,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))``, as
    :func:`jaxkmeans.kernels.xla.statistics`."""
    if not supported(x):
        return xla.statistics(spec, "cpu" if platform == "cpu" else "gpu", x, w, frame)
    interp = interpret_mode(platform, interpret)
    k = frame[1].shape[0]
    kp = round_up(k, BLOCK_CENTERS)
    idx, smin = _kernel_argmin(spec, x, frame, interp)
    labels, dist, xp = finish(spec, x, frame, idx, smin, kp)
    wv = jnp.ones_like(dist) if w is None else w.astype(x.dtype)
    sums, counts = sorted_sums(xp, wv, labels, k, interp)
    loss = jnp.sum(wv * dist)
    return sums, counts, loss, labels, dist.astype(x.dtype)
