"""Sufficient statistics, center updates, the empty-cluster policy and the mini-batch
optax transformation.

All functions work on *prepared* rows: ``x - offset`` for squared Euclidean (centers
live in the same shifted frame) and unit rows for cosine.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxkmeans import _native, metrics
from jaxkmeans._validation import COSINE_DISTANCE, SQUARED_EUCLIDEAN_DISTANCE
from jaxkmeans.assignment import fold_chunks, nearest_block

__all__ = [
    "UPDATE_METHODS",
    "Stats",
    "default_update_method",
    "chunk_statistics",
    "accumulate",
    "centers_from_stats",
    "Far",
    "farthest",
    "top_far",
    "merge_far",
    "empty_far",
    "relocate_empty",
    "row_hashes",
    "MiniBatchOptState",
    "minibatch_optimizer",
]

UPDATE_METHODS = ("auto", "segment_sum", "onehot", "native")


class Stats(NamedTuple):
    """Per-center sums over one pass, plus what the empty-cluster policy needs."""

    sums: jax.Array  # (k, d) weighted sums of prepared rows
    counts: jax.Array  # (k,) summed weights
    loss: jax.Array  # () weighted sum of distances to the nearest center
    labels: jax.Array  # (n,) nearest center
    min_dist: jax.Array  # (n,) distance to it


def default_update_method(
    dtype: Any = jnp.float32, metric: str = SQUARED_EUCLIDEAN_DISTANCE, precision: str = "float32"
) -> str:
    """What ``update_method="auto"`` means for this work: the fused native CPU kernel
    where it applies (see :mod:`jaxkmeans._native`), else ``segment_sum`` on CPU and a
    one-hot matmul on GPU/TPU, where float32 scatter-add with many rows per target is
    very slow."""
    if _native.usable(dtype, metric, precision):
        return "native"
    return _xla_update_method()


def _xla_update_method() -> str:
    return "segment_sum" if jax.default_backend() == "cpu" else "onehot"


def accumulate(
    xp: jax.Array, labels: jax.Array, w: jax.Array, k: int, method: str
) -> tuple[jax.Array, jax.Array]:
    """Weighted per-label sums (k, d) and weights (k,) of the rows `xp` (m, d)."""
    if method in ("auto", "native"):  # "native" here: its pure-JAX fallback
        method = _xla_update_method()
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


def chunk_statistics(
    x: jax.Array,
    w: jax.Array | None,
    cp: jax.Array,
    bias: jax.Array,
    metric: str,
    offset: jax.Array | None,
    chunk: int,
    precision: str,
    update_method: str,
) -> Stats:
    """One fused pass: nearest centers and per-center sums, chunk by chunk.

    Args:
      x: (n, d) raw rows; w: (n,) weights or None; cp, bias: prepared centers (k, d), (k,).
    """
    n, d = x.shape
    k = cp.shape[0]
    dtype = x.dtype

    def step(carry, start, valid):
        sums, counts, loss, labels, dist = carry
        rows = lax.dynamic_slice_in_dim(x, start, chunk)
        idx, dmin, xp = nearest_block(rows, cp, bias, metric, offset, precision)
        wv = valid.astype(dtype)
        if w is not None:
            wv = wv * lax.dynamic_slice_in_dim(w, start, chunk)
        s, c = accumulate(xp, idx, wv, k, update_method)
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

    def pure():
        return tuple(fold_chunks(n, chunk, step, init))

    if update_method == "native":
        return Stats(*_native.statistics(x, w, offset, cp, bias, pure))
    return Stats(*pure())


def centers_from_stats(
    sums: jax.Array, counts: jax.Array, old: jax.Array, metric: str
) -> jax.Array:
    """Means (squared Euclidean) or normalized sums (cosine); clusters with no weight
    keep their old center."""
    has = counts > 0
    if metric == COSINE_DISTANCE:
        new = metrics.normalize_rows(sums)
        has = has & (jnp.sum(sums * sums, axis=1) > 0)
    else:
        safe = jnp.where(has, counts, jnp.ones_like(counts))
        new = sums / safe[:, None]
    return jnp.where(has[:, None], new, old)


def row_hashes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two 32-bit hashes of each row's bit pattern (-0.0 counts as 0.0).

    Integer addition wraps modulo 2**32 and is associative, so equal rows always get
    equal hashes, whatever order the reduction runs in.
    """
    n = x.shape[0]
    # -0.0 -> 0.0 (not ``x + 0``: XLA simplifies that away and keeps the sign bit).
    x = jnp.where(x == 0, jnp.zeros((), x.dtype), x)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        bits = lax.bitcast_convert_type(x, jnp.uint32).reshape(n, -1)
    elif size == 4:
        bits = lax.bitcast_convert_type(x, jnp.uint32)
    else:
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    m = bits.shape[1]
    # Fixed odd multipliers (trace-time constants: no PRNG in the compiled program).
    consts = jnp.asarray(
        np.random.default_rng(0x5EED).integers(0, 2**32, size=(2, m), dtype=np.uint32) | 1
    )
    # One round of a murmur-style finalizer per word before the weighted sum.
    b = bits ^ (bits >> 16)
    b = b * jnp.uint32(0x85EBCA6B)
    b = b ^ (b >> 13)
    h1 = jnp.sum(b * consts[0][None, :], axis=1, dtype=jnp.uint32)
    h2 = jnp.sum((b ^ (b >> 7)) * consts[1][None, :], axis=1, dtype=jnp.uint32)
    return h1, h2


class Far(NamedTuple):
    """Candidate points for empty clusters, farthest first."""

    rows: jax.Array  # (m, d) prepared rows
    dist: jax.Array  # (m,) distance to their nearest center (-1: no candidate)
    labels: jax.Array  # (m,) their nearest center
    weights: jax.Array  # (m,) their weights


def farthest(
    x: jax.Array,
    w: jax.Array | None,
    labels: jax.Array,
    min_dist: jax.Array,
    m: int,
    metric: str,
    offset: jax.Array | None,
    distinct: bool = False,
) -> Far:
    """The (up to) `m` rows of `x` with positive weight farthest from their centers.

    With ``distinct=True`` copies of one point count once, so with duplicated data the
    candidates still are `m` different points.
    """
    n = x.shape[0]
    dist = min_dist if w is None else jnp.where(w > 0, min_dist, -1.0)
    m = min(m, n)
    if distinct:
        far_d, far_i = _farthest_distinct(x, dist, m)
    else:
        far_d, far_i = lax.top_k(dist, m)
    rows, _ = metrics.prepare_rows(x[far_i], metric, offset)
    pw = jnp.ones((m,), x.dtype) if w is None else w[far_i]
    return Far(rows, far_d, labels[far_i], pw)


def first_copies(rows: jax.Array, priority: jax.Array | None = None) -> jax.Array:
    """(m,) bool: True for one row of each set of identical rows (by row hash): the one
    with the smallest `priority` (default: none), then the lowest index."""
    m = rows.shape[0]
    h1, h2 = row_hashes(rows)
    idx = jnp.arange(m, dtype=jnp.int32)
    if priority is None:
        s1, s2, perm = lax.sort((h1, h2, idx), num_keys=3)
    else:
        s1, s2, _, perm = lax.sort((h1, h2, priority, idx), num_keys=4)
    first = jnp.concatenate([jnp.ones((1,), bool), (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])])
    return jnp.zeros((m,), bool).at[perm].set(first)


def _farthest_distinct(x: jax.Array, dist: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """Top `m` of `dist` where copies of one point count once (the farthest copy, lowest
    index on ties); other copies get -1.

    Usually exact from a pool of the ``2 m`` farthest rows: walking down that pool, the
    first copy of each point is that point's farthest copy, so once the pool holds `m`
    distinct points they are the answer. Only when it does not (heavily duplicated
    data) are all n rows hashed and sorted.
    """
    n = x.shape[0]
    pool = min(n, 2 * m)
    pool_d, pool_i = lax.top_k(dist, pool)  # ties: lower index first
    keep = first_copies(x[pool_i])

    def from_pool(_):
        d, j = lax.top_k(jnp.where(keep, pool_d, -1.0), m)
        return d, pool_i[j]

    def from_all(_):
        d, i = lax.top_k(jnp.where(first_copies(x, -dist), dist, -1.0), m)
        return d, i

    if pool == n:
        return from_pool(None)
    return lax.cond(jnp.sum(keep) >= m, from_pool, from_all, None)


def top_far(far: Far, m: int) -> Far:
    """The `m` farthest candidates of one candidate set, farthest first."""
    far_d, idx = lax.top_k(far.dist, min(m, far.dist.shape[0]))
    return Far(far.rows[idx], far_d, far.labels[idx], far.weights[idx])


def merge_far(a: Far, b: Far, m: int) -> Far:
    """The `m` farthest of two candidate sets."""
    return top_far(jax.tree_util.tree_map(lambda u, v: jnp.concatenate([u, v]), a, b), m)


def empty_far(m: int, d: int, dtype: Any) -> Far:
    """A candidate set with no candidates (for streaming accumulation)."""
    return Far(
        jnp.zeros((m, d), dtype),
        jnp.full((m,), -1.0, dtype),
        jnp.zeros((m,), jnp.int32),
        jnp.zeros((m,), dtype),
    )


def relocate_empty(sums: jax.Array, counts: jax.Array, far: Far) -> tuple[jax.Array, jax.Array]:
    """Moves every empty cluster to a distinct point far from its center.

    The i-th empty cluster (by index) takes the i-th farthest candidate (by distance to
    its nearest center, among points with positive weight) as its only member; that
    point leaves the cluster it was in (as in scikit-learn). Points at distance 0 and
    copies of a farther candidate are never taken, so a center never lands on a copy
    of another (clusters left without a candidate stay empty this step).

    Returns:
      ``(sums, counts)`` with the relocated statistics.
    """
    k = counts.shape[0]
    m = far.dist.shape[0]
    empty = counts <= 0
    # Usable candidates, farthest first: positive distance and not a copy of a farther
    # candidate (with duplicated data the farthest points can be copies of one point;
    # two empty clusters must not land on the same spot).
    idx = jnp.arange(m, dtype=jnp.int32)
    usable = first_copies(far.rows) & (far.dist > 0)
    slot = jnp.where(usable, jnp.cumsum(usable.astype(jnp.int32)) - 1, m)
    order = jnp.zeros((m,), jnp.int32).at[slot].set(idx, mode="drop")
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1  # rank of each empty cluster
    ok = empty & (rank < jnp.sum(usable.astype(jnp.int32)))
    pick = order[jnp.clip(rank, 0, m - 1)]
    rows = far.rows[pick]
    pw = jnp.where(ok, far.weights[pick], 0.0)
    donor = far.labels[pick]
    before = counts
    sums = sums - jax.ops.segment_sum(rows * pw[:, None], donor, num_segments=k)
    counts = counts - jax.ops.segment_sum(pw, donor, num_segments=k)
    # A donor left with (float) residue only is empty, not a center at residue / eps.
    gone = counts <= 1e-6 * before
    sums = jnp.where(gone[:, None], 0.0, sums)
    counts = jnp.where(gone, 0.0, counts)
    sums = jnp.where(ok[:, None], rows * pw[:, None], sums)
    counts = jnp.where(ok, pw, counts)
    return sums, counts


class MiniBatchOptState(NamedTuple):
    """State of :func:`minibatch_optimizer`: the cumulative weight seen by each center."""

    counts: jax.Array  # (k,)


def minibatch_optimizer() -> optax.GradientTransformationExtraArgs:
    """The mini-batch k-means center update as an optax transformation.

    ``update(grads, state, params, *, batch_counts)`` takes ``grads = centers -
    batch_means`` (zero rows for centers no point of the batch chose) and the batch's
    per-center weights, and returns ``-lr * grads`` with the per-center learning rate
    ``lr = batch_counts / (counts + batch_counts)``; the cumulative counts start at 0.
    ``optax.apply_updates(centers, updates)`` then equals scikit-learn's
    ``MiniBatchKMeans`` update ``(c * counts + batch_sums) / (counts + batch_counts)``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxkmeans
      >>> opt = jaxkmeans.minibatch_optimizer()
      >>> c = jnp.zeros((2, 1)); state = opt.init(c)
      >>> u, state = opt.update(c - jnp.array([[4.0], [0.0]]), state, c,
      ...                       batch_counts=jnp.array([2.0, 0.0]))
      >>> optax.apply_updates(c, u).ravel().tolist(), state.counts.tolist()
      ([4.0, 0.0], [2.0, 0.0])
    """

    def init_fn(params: jax.Array) -> MiniBatchOptState:
        return MiniBatchOptState(counts=jnp.zeros(params.shape[:1], params.dtype))

    def update_fn(
        updates: jax.Array,
        state: MiniBatchOptState,
        params: jax.Array | None = None,
        *,
        batch_counts: jax.Array,
        **extra_args: Any,
    ) -> tuple[jax.Array, MiniBatchOptState]:
        del params, extra_args
        batch_counts = batch_counts.astype(state.counts.dtype)
        total = state.counts + batch_counts
        lr = jnp.where(total > 0, batch_counts / jnp.where(total > 0, total, 1.0), 0.0)
        return -lr[:, None] * updates, MiniBatchOptState(counts=total)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
