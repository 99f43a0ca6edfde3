"""Fused nearest-center kernel for TPU in Pallas (Mosaic TPU).

Grid ``(row tiles, center tiles)``, the center axis last and sequential
(``dimension_semantics=("parallel", "arbitrary")``). Each step multiplies a
(``bm``, ``dp``) tile of prepared rows by a (``bk``, ``dp``) tile of prepared centers on the
MXU, adds the bias and folds the (``bm``, ``bk``) score tile (in VMEM/vregs only) into a
running ``(min score, first index)`` kept in the row tile's output blocks, which stay
resident in VMEM across the center axis. The prepared rows (``x - origin``, or unit rows
for cosine; cast to bfloat16 for that precision) are formed once per row tile at the
first center step and cached in a VMEM scratch. Only ``(n, 1)`` labels and minimum scores
reach HBM.

Blocks: ``bm`` a multiple of 8 (rows), ``bk`` a multiple of 128 (centers), features padded
to ``dp``, a multiple of 128. Centers are padded (outside the kernel; k * d is small) with
zero rows and bias NaN: a NaN score never wins, so padding never does. Rows are padded
only when features must be (d not a multiple of 128: the rows are copied once, padded in
both dimensions); otherwise the last row tile is a partial block (its extra rows are
garbage in, clipped out).

Precision of the score matmul: ``"float32"``: ``Precision.HIGHEST`` (6 bf16 passes);
``"tf32"``: the nearest TPU equivalent, 3 bf16 passes (``hi*hi + hi*lo + lo*hi``, what
XLA's ``Precision.HIGH`` does on TPU; Mosaic only takes DEFAULT/HIGHEST); ``"bfloat16"``:
bfloat16 inputs, float32 accumulation. In interpret mode the same code runs on CPU.

Ties, NaN and distances exactly as in :mod:`jaxkmeans.kernels.pallas_gpu` (same
:func:`~jaxkmeans.kernels.pallas_gpu.finish`). Per-center sums in :func:`statistics`:
``jax.ops.segment_sum`` of ``w * x'`` on the labels (a scatter-add, deterministic on
TPU; no (n, k) one-hot).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxkmeans._validation import COSINE_DISTANCE
from jaxkmeans.kernels import xla
from jaxkmeans.kernels.pallas_gpu import finish, interpret_mode, round_up, supported

__all__ = ["BLOCK_ROWS", "BLOCK_CENTERS", "blocks", "nearest", "statistics"]

BLOCK_ROWS = 512
BLOCK_CENTERS = 256
_VMEM_TILE_BYTES = 4 << 20  # one f32 (rows or centers) tile; 2 buffers each + scratch


def blocks(n: int, k: int, d: int) -> tuple[int, int, int]:
    """``(bm, bk, dp)``: row tile (multiple of 8), center tile (multiple of 128) and
    padded feature count (multiple of 128), small enough for VMEM at large d."""
    dp = round_up(max(d, 1), 128)
    cap = max(8, (_VMEM_TILE_BYTES // (4 * dp)) // 8 * 8)
    bm = min(BLOCK_ROWS, cap, round_up(n, 8))
    bk = min(BLOCK_CENTERS, max(128, cap // 128 * 128), round_up(k, 128))
    return bm, bk, dp


def _dot_nt(a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
    """``a @ b.T`` in float32 at `precision` (a, b already bfloat16 for "bfloat16")."""
    dims = (((1,), (1,)), ((), ()))
    if precision == "bfloat16":
        return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
    if precision == "float32":
        return lax.dot_general(
            a, b, dims, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32
        )
    # bf16_3x: a = a_hi + a_lo, b = b_hi + b_lo; drop a_lo * b_lo.
    a_hi = a.astype(jnp.bfloat16)
    b_hi = b.astype(jnp.bfloat16)
    a_lo = (a - a_hi.astype(jnp.float32)).astype(jnp.bfloat16)
    b_lo = (b - b_hi.astype(jnp.float32)).astype(jnp.bfloat16)

    def mm(p, q):
        return lax.dot_general(p, q, dims, preferred_element_type=jnp.float32)

    return mm(a_lo, b_hi) + mm(a_hi, b_lo) + mm(a_hi, b_hi)


def _kernel(
    x_ref, origin_ref, cp_ref, bias_ref, lab_ref, score_ref, xs_ref, *, bk, kp, cosine,
    precision,
):  # fmt: skip
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
        xs = x_ref[...]
        if cosine:
            sq = jnp.sum(xs * xs, axis=1, keepdims=True)
            safe = jnp.where(sq > 0, sq, 1.0)
            xs = jnp.where(sq > 0, xs * lax.rsqrt(safe), 0.0)
        else:
            xs = xs - origin_ref[...]
        xs_ref[...] = xs.astype(xs_ref.dtype)
        score_ref[...] = jnp.full(score_ref.shape, jnp.inf, jnp.float32)
        lab_ref[...] = jnp.full(lab_ref.shape, kp, jnp.int32)

    s = _dot_nt(xs_ref[...], cp_ref[...], precision) + bias_ref[...]
    nan = s != s
    tmin = jnp.min(jnp.where(nan, jnp.inf, s), axis=1, keepdims=True)
    cols = j * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    tidx = jnp.min(jnp.where(s == tmin, cols, kp), axis=1, keepdims=True)
    m = score_ref[...]
    idx = lab_ref[...]
    take = (tidx != kp) & ((tmin < m) | (idx == kp))
    score_ref[...] = jnp.where(take, tmin, m)
    lab_ref[...] = jnp.where(take, tidx, idx)


def _kernel_argmin(spec: Any, x: jax.Array, frame: Any, interpret: bool):
    """``(idx (n,) int32 with k_pad meaning none, min score (n,) float32)``."""
    origin, cp, bias = frame
    n, d = x.shape
    k = cp.shape[0]
    bm, bk, dp = blocks(n, k, d)
    kp = round_up(k, bk)
    cosine = spec.metric == COSINE_DISTANCE
    dtype = jnp.bfloat16 if spec.precision == "bfloat16" else jnp.float32
    cpp = jnp.pad(cp.astype(dtype), ((0, kp - k), (0, dp - d)))
    biasp = jnp.pad(bias.astype(jnp.float32), (0, kp - k), constant_values=jnp.nan)[None, :]
    if origin is None:
        origin = jnp.zeros((d,), jnp.float32)
    originp = jnp.pad(origin.astype(jnp.float32), (0, dp - d))[None, :]
    rows = n
    if dp != d:  # features must be padded: pad rows to whole tiles in the same copy
        rows = round_up(n, bm)
        x = jnp.pad(x, ((0, rows - n), (0, dp - d)))
    kernel = functools.partial(_kernel, bk=bk, kp=kp, cosine=cosine, precision=spec.precision)
    labels, score = pl.pallas_call(
        kernel,
        grid=(pl.cdiv(rows, bm), kp // bk),
        in_specs=[
            pl.BlockSpec((bm, dp), lambda i, j: (i, 0)),
            pl.BlockSpec((1, dp), lambda i, j: (0, 0)),
            pl.BlockSpec((bk, dp), lambda i, j: (j, 0)),
            pl.BlockSpec((1, bk), lambda i, j: (0, j)),
        ],
        out_specs=[
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((rows, 1), jnp.int32),
            jax.ShapeDtypeStruct((rows, 1), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((bm, dp), dtype)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name="jaxkmeans_nearest_tpu",
    )(x, originp, cpp, biasp)
    return labels[:n, 0], score[:n, 0], kp


def nearest(
    spec: Any, platform: str, x: jax.Array, frame: Any, *, interpret: bool | None = None
) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,) int32, min_dist (n,))``, as :func:`jaxkmeans.kernels.xla.nearest`.

    `platform` ``"cpu"`` (or ``interpret=True``) runs the kernel in Pallas interpret mode.
    Non-float32 rows go to the XLA kernel.
    """
    if not supported(x):
        return xla.nearest(spec, "cpu" if platform == "cpu" else "tpu", x, frame)
    idx, smin, kp = _kernel_argmin(spec, x, frame, interpret_mode(platform, interpret))
    labels, dist, _ = finish(spec, x, frame, idx, smin, kp)
    return labels, dist.astype(x.dtype)


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
        return xla.statistics(spec, "cpu" if platform == "cpu" else "tpu", x, w, frame)
    k = frame[1].shape[0]
    idx, smin, kp = _kernel_argmin(spec, x, frame, interpret_mode(platform, interpret))
    labels, dist, xp = finish(spec, x, frame, idx, smin, kp)
    wv = jnp.ones_like(dist) if w is None else w.astype(x.dtype)
    sums = jax.ops.segment_sum(xp * wv[:, None], labels, num_segments=k)
    counts = jax.ops.segment_sum(wv, labels, num_segments=k)
    return sums, counts, jnp.sum(wv * dist), labels, dist.astype(x.dtype)
