"""Distance metrics: squared Euclidean and cosine (1 - cos).

Both metrics are written as one kernel. For a block of rows ``x`` and centers ``c`` the
quantity minimised over centers is

    score[i, j] = <x'_i, c'_j> + bias_j,        distance = max(base_i + score, 0)

with ``x' = x - offset``, ``c' = -2 (c - offset)``, ``bias = ||c - offset||^2`` and
``base = ||x - offset||^2`` for squared Euclidean, and ``x' = x / ||x||``,
``c' = -c / ||c||``, ``bias = 0``, ``base = 1`` for cosine. Subtracting ``offset`` (a
point near the data's mean on the data's grid, see :func:`frame_origin`) before the
expansion keeps float32 distances accurate for data far from the origin, even when some
center is far from all the data, and keeps exact ties exact for integer data; the final
clamp keeps them >= 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    InPlaceRows,
    as_centers,
    as_data,
    bucket_rows,
    check_metric,
    check_precision,
    row_block,
    take_rows,
)

__all__ = [
    "SQUARED_EUCLIDEAN_DISTANCE",
    "COSINE_DISTANCE",
    "pairwise_distances",
    "normalize_rows",
    "frame_origin",
]


def normalize_rows(x: jax.Array) -> jax.Array:
    """Divides each row by its L2 norm; all-zero rows stay zero (never NaN).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.metrics import normalize_rows
      >>> normalize_rows(jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
      [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    safe = jnp.where(sq > 0, sq, jnp.ones_like(sq))
    return jnp.where(sq > 0, x * lax.rsqrt(safe), jnp.zeros_like(x))


def dot(a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
    """``a @ b.T`` with an explicit precision; the result is in ``a``'s dtype (>= float32).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.metrics import dot
      >>> dot(jnp.ones((2, 3)), jnp.ones((4, 3)), "bfloat16").tolist()[0]
      [3.0, 3.0, 3.0, 3.0]
    """
    out_dtype = jnp.promote_types(a.dtype, jnp.float32)
    dims = (((a.ndim - 1,), (b.ndim - 1,)), ((), ()))
    if precision == "bfloat16":
        return lax.dot_general(
            a.astype(jnp.bfloat16),
            b.astype(jnp.bfloat16),
            dims,
            preferred_element_type=out_dtype,
        )
    prec = lax.Precision.HIGHEST if precision == "float32" else lax.Precision.HIGH
    return lax.dot_general(a, b, dims, precision=prec, preferred_element_type=out_dtype)


def prepare_centers(
    centers: jax.Array, metric: str, offset: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Returns ``(c', bias)`` of the kernel above for `centers` of shape (k, d).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.metrics import prepare_centers
      >>> c, bias = prepare_centers(jnp.array([[1.0, 2.0]]), "squared_euclidean", None)
      >>> c.tolist(), bias.tolist()  # -2c and ||c||^2
      ([[-2.0, -4.0]], [5.0])
    """
    if metric == COSINE_DISTANCE:
        return -normalize_rows(centers), jnp.zeros(centers.shape[:1], centers.dtype)
    c = centers if offset is None else centers - offset[None, :]
    return -2.0 * c, jnp.sum(c * c, axis=1)


def prepare_rows(
    x: jax.Array, metric: str, offset: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Returns ``(x', base)`` of the kernel above for rows `x` of shape (m, d).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.metrics import prepare_rows
      >>> xp, base = prepare_rows(jnp.array([[3.0, 4.0]]), "squared_euclidean", None)
      >>> xp.tolist(), base.tolist()  # x and ||x||^2
      ([[3.0, 4.0]], [25.0])
    """
    if metric == COSINE_DISTANCE:
        return normalize_rows(x), jnp.ones(x.shape[:1], x.dtype)
    xs = x if offset is None else x - offset[None, :]
    return xs, jnp.sum(xs * xs, axis=1)


def score_block(xp: jax.Array, cp: jax.Array, bias: jax.Array, precision: str) -> jax.Array:
    """The (m, k) block ``<x', c'> + bias`` (distance minus the per-row ``base``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans import metrics
      >>> x, c = jnp.array([[0.0], [3.0]]), jnp.array([[1.0], [4.0]])
      >>> xp, base = metrics.prepare_rows(x, "squared_euclidean", None)
      >>> cp, bias = metrics.prepare_centers(c, "squared_euclidean", None)
      >>> score = metrics.score_block(xp, cp, bias, "float32")
      >>> metrics.to_distance(base[:, None], score).tolist()  # (x - c)^2
      [[1.0, 16.0], [4.0, 1.0]]
    """
    return dot(xp, cp, precision) + bias[None, :]


def to_distance(base: jax.Array, score: jax.Array) -> jax.Array:
    """Distance from ``base + score``, clamped to be non-negative (cosine also <= 2).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.metrics import to_distance
      >>> to_distance(jnp.array([1.0, 1.0]), jnp.array([-1.5, 2.0])).tolist()  # never < 0
      [0.0, 3.0]
    """
    return jnp.maximum(base + score, 0.0)


# Rows the spread of the data is estimated from (a strided sample).
_SPREAD_SAMPLE = 4096
# Rows per block of the blocked weighted sum (:func:`_weighted_rows_sum`).
_SUM_BLOCK = 4096


def _weighted_rows_sum(x: Any, weights: jax.Array, in_blocks: bool) -> jax.Array:
    """``sum_i weights[i] x[i]`` (d,): one matrix-vector product, or with `in_blocks`
    (and always for :class:`~jaxkmeans._validation.InPlaceRows`) one per block of
    ``_SUM_BLOCK`` rows, added in row order, then the remaining rows: the same
    arithmetic for an (n, d) array and for rows read in place, whose whole (n, d) array
    XLA would copy (on CPU the blocked form is no slower than the one product). A
    symbolic row count takes the one product."""
    n = x.shape[0]
    hi = lax.Precision.HIGHEST
    in_place = isinstance(x, InPlaceRows)
    if not (in_place or (in_blocks and isinstance(n, int) and n > _SUM_BLOCK)):
        return lax.dot(weights, x, precision=hi)

    blocks, rest = divmod(n, _SUM_BLOCK)

    def body(i: Any, acc: jax.Array) -> jax.Array:
        start = i * _SUM_BLOCK
        wb = lax.dynamic_slice_in_dim(weights, start, _SUM_BLOCK)
        return acc + lax.dot(wb, row_block(x, start, _SUM_BLOCK), precision=hi)

    if not blocks:  # rows read in place, at most one block of them
        return lax.dot(weights, row_block(x, 0, n), precision=hi)
    acc = lax.fori_loop(0, blocks, body, jnp.zeros((x.shape[1],), x.dtype))
    if rest:
        acc = acc + lax.dot(weights[n - rest :], row_block(x, n - rest, rest), precision=hi)
    return acc


def frame_origin(
    x: Any, metric: str, w: jax.Array | None = None, *, in_blocks: bool = False
) -> jax.Array | None:
    """The point subtracted from the rows `x` (n, d) before the Euclidean expansion
    (None for cosine): the (weighted) mean, rounded per feature to a multiple of the
    power of two ``g`` in (s / 2, s], s that feature's standard deviation.

    - Accuracy far from the origin: the shifted rows are small whatever the centers
      are (the origin is within half a standard deviation of the mean).
    - Exact ties: for data on a grid (pixels, counts, ids near 1e5) the origin is on
      that grid or on a dyadic refinement of it with few bits (g >= 1/4 for a spread
      >= 1/4), so subtracting it is exact and the shifted rows have few significant
      bits: the expansion's products and sums stay exact, equal distances stay equal,
      and ties go to the lowest index as in scikit-learn and TF.
    - Stability: batches whose means differ only by float rounding (a batch and the
      same batch padded with zero-weight rows) get the same origin.

    Cost: one matrix-vector product for the mean (multithreaded, unlike a column
    reduction; with `in_blocks`, one per block of 4096 rows, which the engine uses
    where rows are not split over a mesh, and always for rows read in place) and a
    strided sample of at most 4096 rows for the spread (the grid only needs its scale).

    Examples:
      Integer ids near 1e5: the origin stays on the integer grid, so subtracting it is
      exact.

      >>> import jax.numpy as jnp
      >>> from jaxkmeans.metrics import frame_origin
      >>> x = jnp.array([[100001.0, 7.0], [100003.0, 9.0], [100004.0, 8.0]])
      >>> frame_origin(x, "squared_euclidean").tolist()
      [100003.0, 8.0]
      >>> frame_origin(x, "cosine") is None
      True
    """
    if metric == COSINE_DISTANCE:
        return None
    n = x.shape[0]
    weights = jnp.ones((n,), x.dtype) if w is None else w.astype(x.dtype)
    total = jnp.sum(weights)
    safe = jnp.where(total > 0, total, jnp.ones_like(total))
    mean = _weighted_rows_sum(x, weights, in_blocks) / safe
    # The stride follows the size bucket of n, so that the same rows padded to their
    # bucket (zero-weight rows at the end) give the same sample. A symbolic row count
    # (jax.export with a polymorphic batch) takes every row.
    stride = max(1, bucket_rows(n) // _SPREAD_SAMPLE) if isinstance(n, int) else 1
    if isinstance(x, InPlaceRows):
        xs = take_rows(x, jnp.arange(0, n, stride, dtype=jnp.int32))
    else:
        xs = x[::stride]
    ws = weights[::stride]
    ws = jnp.where(jnp.sum(ws) > 0, ws, jnp.ones_like(ws))  # a sample of zero weights only
    dev = xs - mean[None, :]
    var = jnp.sum(dev * dev * ws[:, None], axis=0) / jnp.sum(ws)
    tiny = jnp.finfo(x.dtype).tiny
    grid = jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(jnp.sqrt(var), tiny))))
    return jnp.where(var > 0, jnp.round(mean / grid) * grid, mean).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("metric", "precision"))
def _pairwise_impl(x: jax.Array, centers: jax.Array, metric: str, precision: str) -> jax.Array:
    offset = frame_origin(x, metric)
    cp, bias = prepare_centers(centers, metric, offset)
    xp, base = prepare_rows(x, metric, offset)
    d = to_distance(base[:, None], score_block(xp, cp, bias, precision))
    if metric == COSINE_DISTANCE:
        d = jnp.minimum(d, 2.0)
    return d


def pairwise_distances(
    x: Any,
    centers: Any,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    *,
    precision: str = "float32",
) -> jax.Array:
    """All distances between rows of `x` and `centers`.

    This materializes the full (n, k) matrix; use :func:`jaxkmeans.assign` for the
    nearest center of many points.

    Args:
      x: (n, d) float array.
      centers: (k, d) float array.
      metric: ``"squared_euclidean"`` (squared L2 distance) or ``"cosine"`` (1 - cos;
        all-zero rows have cosine 0 with everything).
      precision: ``"float32"`` (default, exact float32 products), ``"tf32"`` or
        ``"bfloat16"`` (faster on accelerators, less accurate).

    Returns:
      (n, k) array of non-negative distances.

    Examples:
      >>> import jaxkmeans, jax.numpy as jnp
      >>> jaxkmeans.pairwise_distances(jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0]]))
      Array([[25.]], dtype=float32)
    """
    metric = check_metric(metric)
    precision = check_precision(precision)
    x = as_data(x, "x")
    centers = as_centers(centers, x.shape[1], x.dtype)
    return _pairwise_impl(x, centers, metric, precision)
