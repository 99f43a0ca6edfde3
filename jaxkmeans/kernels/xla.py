"""The reference nearest-center kernel: plain XLA, any platform.

Rows are processed ``chunk`` at a time in a ``lax.fori_loop``; only a (chunk, k) block of
scores exists at any moment, so the extra memory does not grow with n. The last chunk is
aligned to the end of the data (it overlaps the previous one instead of padding, so the
data is never copied); reductions mask the overlapping rows. Each block is reduced at
once to a row minimum and the first index attaining it (ties go to the lowest index).

The chunk size follows the platform the program is lowered for (``platform`` below is
the branch of ``lax.platform_dependent`` being traced), not the host's default backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxkmeans import metrics
from jaxkmeans._validation import COSINE_DISTANCE

__all__ = [
    "BLOCK_ELEMENTS",
    "chunk_rows",
    "fold_chunks",
    "block_argmin",
    "nearest_block",
    "accumulate",
    "nearest",
    "statistics",
]

# Elements of the (chunk, k) score block per platform: small enough to stay in cache on
# CPU, large enough to fill an accelerator. CPU: 2**19 measured best on a 2-core EPYC
# (lloyd_step at N=2e5: D=128/K=256 0.19 s vs 0.24 s at 2**18 and 0.25 s at 2**20;
# D=32/K=64 0.046 s vs 0.075 s at 2**18; D=2/K=16 0.022 s vs 0.032 s at 2**18).
BLOCK_ELEMENTS = {"cpu": 1 << 19, "gpu": 1 << 25, "tpu": 1 << 25}
_MIN_CHUNK = 8


def chunk_rows(n: int, k: int, d: int, dtype: Any, platform: str) -> int:
    """Rows per chunk so that the (chunk, k) score block fits `platform`'s budget; never
    more than `n`, and independent of `n` once `n` exceeds it."""
    budget = BLOCK_ELEMENTS.get(platform, BLOCK_ELEMENTS["gpu"])
    budget = budget * 4 // max(jnp.dtype(dtype).itemsize, 4)
    # The row block (chunk, d) should not dominate either.
    rows = budget // max(k, d, 1)
    rows = max(_MIN_CHUNK, rows - rows % _MIN_CHUNK)
    return int(min(n, rows))


def _chunk(spec: Any, x: jax.Array, k: int, platform: str) -> int:
    n, d = x.shape
    if spec.chunk is not None:
        return min(spec.chunk, n)
    return chunk_rows(n, k, d, x.dtype, platform)


def fold_chunks(
    n: int, chunk: int, fn: Callable[[Any, jax.Array, jax.Array], Any], carry: Any
) -> Any:
    """Runs ``carry = fn(carry, start, valid)`` over row chunks ``[start, start + chunk)``.

    ``valid`` (chunk,) is False for rows that an earlier chunk already covered (only the
    last, end-aligned chunk has such rows).
    """
    num = math.ceil(n / chunk)
    if num == 1:
        return fn(carry, jnp.int32(0), jnp.ones((chunk,), bool))

    def body(i, carry):
        first = i * chunk
        start = jnp.minimum(first, n - chunk)
        valid = start + jnp.arange(chunk, dtype=jnp.int32) >= first
        return fn(carry, start, valid)

    return lax.fori_loop(0, num, body, carry)


def block_argmin(score: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row minimum and the lowest column index attaining it, for a (m, k) block.

    Written as min, then the first index equal to it: on CPU this is much faster than
    ``jnp.argmin`` and gives the same result (ties go to the lowest index).

    NaN rule (every kernel follows it): a NaN score never wins while the row has any
    non-NaN score; a row of NaN scores gets index 0 and minimum NaN. (NaN is masked
    explicitly: XLA's CPU min reduction does not reliably propagate NaN, so gating on a
    NaN minimum would miss rows.)
    """
    k = score.shape[1]
    smin = jnp.min(jnp.where(jnp.isnan(score), jnp.inf, score), axis=1)
    iota = lax.broadcasted_iota(jnp.int32, score.shape, 1)
    # NaN == smin is False: only non-NaN scores are found (+inf ones included).
    idx = jnp.min(jnp.where(score == smin[:, None], iota, k), axis=1)
    none = idx == k  # every score of the row is NaN
    return jnp.where(none, jnp.nan, smin).astype(score.dtype), jnp.where(none, 0, idx)


def nearest_block(
    rows: jax.Array, cp: jax.Array, bias: jax.Array, spec: Any, offset: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Labels, min distances and prepared rows ``x'`` for one block of raw rows.

    The expansion picks the nearest center; for squared Euclidean its distance is then
    recomputed directly as ``||x' - (c - offset)||^2`` (with ``c - offset = -cp / 2``
    exactly), which is accurate to float rounding of the distance itself, whatever the
    magnitude of ``x'`` and the other centers.
    """
    xp, base = metrics.prepare_rows(rows, spec.metric, offset)
    smin, idx = block_argmin(metrics.score_block(xp, cp, bias, spec.precision))
    if spec.metric == COSINE_DISTANCE:
        return idx, metrics.to_distance(base, smin), xp
    diff = xp + 0.5 * cp[idx]
    return idx, jnp.sum(diff * diff, axis=1), xp


def accumulate(
    xp: jax.Array, labels: jax.Array, w: jax.Array, k: int, method: str
) -> tuple[jax.Array, jax.Array]:
    """Weighted per-label sums (k, d) and weights (k,) of the rows `xp` (m, d):
    ``"segment_sum"`` (a scatter-add) or ``"onehot"`` (a matmul; on GPU/TPU float32
    scatter-add with many rows per target is very slow)."""
    if method == "onehot":
        onehot = (labels[:, None] == jnp.arange(k, dtype=labels.dtype)[None, :]).astype(xp.dtype)
        onehot = onehot * w[:, None]
        sums = lax.dot_general(
            onehot, xp, (((0,), (0,)), ((), ())), precision=lax.Precision.HIGHEST
        )
        return sums, jnp.sum(onehot, axis=0)
    sums = jax.ops.segment_sum(xp * w[:, None], labels, num_segments=k)
    counts = jax.ops.segment_sum(w, labels, num_segments=k)
    return sums, counts


def _sums_method(spec: Any, platform: str) -> str:
    if spec.sums != "auto":
        return spec.sums
    return "segment_sum" if platform == "cpu" else "onehot"


def nearest(spec: Any, platform: str, x: jax.Array, frame: Any) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,), min_dist (n,))`` of raw rows `x` for prepared centers."""
    offset, cp, bias = frame
    n = x.shape[0]
    chunk = _chunk(spec, x, cp.shape[0], platform)

    def step(carry, start, valid):
        labels, dist = carry
        rows = lax.dynamic_slice_in_dim(x, start, chunk)
        idx, dmin, _ = nearest_block(rows, cp, bias, spec, offset)
        labels = lax.dynamic_update_slice_in_dim(labels, idx, start, 0)
        dist = lax.dynamic_update_slice_in_dim(dist, dmin.astype(dist.dtype), start, 0)
        return labels, dist

    init = (jnp.zeros((n,), jnp.int32), jnp.zeros((n,), x.dtype))
    labels, dist = fold_chunks(n, chunk, step, init)
    return labels, dist


def statistics(
    spec: Any, platform: str, x: jax.Array, w: jax.Array | None, frame: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """One fused pass: ``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))``,
    sums of the prepared rows (``x - offset``, or unit rows for cosine)."""
    offset, cp, bias = frame
    n, d = x.shape
    k = cp.shape[0]
    dtype = x.dtype
    chunk = _chunk(spec, x, k, platform)
    method = _sums_method(spec, platform)

    def step(carry, start, valid):
        sums, counts, loss, labels, dist = carry
        rows = lax.dynamic_slice_in_dim(x, start, chunk)
        idx, dmin, xp = nearest_block(rows, cp, bias, spec, offset)
        wv = valid.astype(dtype)
        if w is not None:
            wv = wv * lax.dynamic_slice_in_dim(w, start, chunk)
        s, c = accumulate(xp, idx, wv, k, method)
        labels = lax.dynamic_update_slice_in_dim(labels, idx, start, 0)
        dist = lax.dynamic_update_slice_in_dim(dist, dmin.astype(dtype), start, 0)
        return sums + s, counts + c, loss + jnp.sum(wv * dmin), labels, dist

    init = (
        jnp.zeros((k, d), dtype),
        jnp.zeros((k,), dtype),
        jnp.zeros((), dtype),
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), dtype),
    )
    return tuple(fold_chunks(n, chunk, step, init))
