"""Center updates, the empty-cluster policy and the mini-batch optax transformation.

All functions work on rows in the engine's frame: ``x - origin`` for squared Euclidean
(centers live in the same shifted frame) and unit rows for cosine.

Examples:
  One Lloyd finish by hand: per-center sums, an empty cluster relocated to the farthest
  point, new centers.

  >>> import jax.numpy as jnp
  >>> from jaxkmeans import updates
  >>> x = jnp.array([[0.0], [1.0], [5.0], [5.0], [10.0]])
  >>> labels, dist = jnp.array([0, 0, 0, 0, 1]), jnp.array([0.0, 1.0, 25.0, 25.0, 0.0])
  >>> sums, counts = jnp.array([[11.0], [10.0], [0.0]]), jnp.array([4.0, 1.0, 0.0])
  >>> far = updates.farthest(x, None, labels, dist, 1, "squared_euclidean", None)
  >>> sums, counts = updates.relocate_empty(sums, counts, far, updates.members(labels, None, 3))
  >>> old = jnp.zeros((3, 1))
  >>> updates.centers_from_stats(sums, counts, old, "squared_euclidean").ravel().tolist()
  [0.5, 10.0, 5.0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

if TYPE_CHECKING:
    import optax

from jaxkmeans import metrics
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    dense_rows,
    row_block,
    row_identity,
    take_rows,
)
from jaxkmeans.kernels.xla import fold_chunks

__all__ = [
    "centers_from_stats",
    "Far",
    "farthest",
    "distinct_top",
    "no_candidates",
    "identity_groups",
    "first_copies",
    "members",
    "relocate_empty",
    "MiniBatchOptState",
    "minibatch_optimizer",
]


def centers_from_stats(
    sums: jax.Array, counts: jax.Array, old: jax.Array, metric: str
) -> jax.Array:
    """Means (squared Euclidean) or normalized sums (cosine); clusters with no weight
    keep their old center.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.updates import centers_from_stats
      >>> sums, counts = jnp.array([[4.0], [0.0]]), jnp.array([2.0, 0.0])
      >>> centers_from_stats(sums, counts, jnp.array([[1.0], [7.0]]), "squared_euclidean")
      Array([[2.],
             [7.]], dtype=float32)
    """
    has = counts > 0
    if metric == COSINE_DISTANCE:
        new = metrics.normalize_rows(sums)
        has = has & (jnp.sum(sums * sums, axis=1) > 0)
    else:
        safe = jnp.where(has, counts, jnp.ones_like(counts))
        new = sums / safe[:, None]
    return jnp.where(has[:, None], new, old)


class Far(NamedTuple):
    """Distinct candidate points for empty clusters, farthest first.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.updates import no_candidates
      >>> no_candidates(2, 3, jnp.float32)._fields
      ('rows', 'dist', 'labels', 'weights', 'ident', 'copies')
    """

    rows: jax.Array  # (m, d) rows in the frame
    dist: jax.Array  # (m,) distance to their nearest center (-1: no candidate)
    labels: jax.Array  # (m,) their nearest center
    weights: jax.Array  # (m,) summed weight of all the copies of each point
    ident: jax.Array  # (m, 2) uint32 row identity (see _validation.row_identity)
    copies: jax.Array  # (m,) int32 number of rows (with positive weight) of each point


def no_candidates(m: int, d: int, dtype: Any) -> Far:
    """A candidate set with no candidates.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.updates import no_candidates
      >>> far = no_candidates(2, 3, jnp.float32)
      >>> far.rows.shape, far.dist.tolist()  # distance -1: no candidate
      ((2, 3), [-1.0, -1.0])
    """
    return Far(
        jnp.zeros((m, d), dtype),
        jnp.full((m,), -1.0, dtype),
        jnp.zeros((m,), jnp.int32),
        jnp.zeros((m,), dtype),
        jnp.zeros((m, 2), jnp.uint32),
        jnp.zeros((m,), jnp.int32),
    )


def identity_groups(
    ident: jax.Array, priority: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Groups rows of equal identity (m, 2).

    Returns:
      ``(first, group)``: (m,) bool, True for one row of each group (the one with the
      smallest `priority`, default none, then the lowest index), and (m,) int32 group ids
      in ``[0, m)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans._validation import row_identity
      >>> from jaxkmeans.updates import identity_groups
      >>> x = jnp.array([[0.0], [1.0], [1.0], [9.0]])
      >>> first, group = identity_groups(row_identity(x, "squared_euclidean"))
      >>> first.tolist(), int(group[1]) == int(group[2]), len(set(group.tolist()))
      ([True, True, False, True], True, 3)
    """
    m = ident.shape[0]
    idx = jnp.arange(m, dtype=jnp.int32)
    keys = (ident[:, 0], ident[:, 1]) + (() if priority is None else (priority,))
    *sorted_keys, perm = lax.sort(keys + (idx,), num_keys=len(keys) + 1)
    s1, s2 = sorted_keys[0], sorted_keys[1]
    first = jnp.concatenate([jnp.ones((1,), bool), (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])])
    run = jnp.cumsum(first.astype(jnp.int32)) - 1
    empty = jnp.zeros((m,), jnp.int32)
    return empty.astype(bool).at[perm].set(first), empty.at[perm].set(run)


def first_copies(ident: jax.Array, priority: jax.Array | None = None) -> jax.Array:
    """(m,) bool: True for one row of each set of rows with equal identity (m, 2): the
    one with the smallest `priority` (default: none), then the lowest index.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans._validation import row_identity
      >>> from jaxkmeans.updates import first_copies
      >>> x = jnp.array([[0.0], [1.0], [1.0], [9.0]])
      >>> first_copies(row_identity(x, "squared_euclidean")).tolist()
      [True, True, False, True]
    """
    return identity_groups(ident, priority)[0]


def _farthest_first(far: Far) -> Far:
    """The candidates by decreasing distance, equal distances by identity: the order
    depends on the points only, not on where the rows were (batch, device, index)."""
    idx = jnp.arange(far.dist.shape[0], dtype=jnp.int32)
    *_, perm = lax.sort((-far.dist, far.ident[:, 0], far.ident[:, 1], idx), num_keys=4)
    return jax.tree_util.tree_map(lambda a: a[perm], far)


def distinct_top(far: Far, m: int) -> Far:
    """The `m` farthest distinct points of a candidate set in which one point may appear
    several times (from different batches or devices): each point once, at its largest
    distance, carrying the summed weight of its copies.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxkmeans.updates import distinct_top, farthest
      >>> x = jnp.array([[0.0], [1.0], [5.0], [5.0], [10.0]])
      >>> labels, dist = jnp.array([0, 0, 0, 0, 1]), jnp.array([0.0, 1.0, 25.0, 25.0, 0.0])
      >>> far = farthest(x, None, labels, dist, 2, "squared_euclidean", None)
      >>> both = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a]), far)  # 2 devices
      >>> top = distinct_top(both, 2)
      >>> top.rows.ravel().tolist(), top.weights.tolist()  # copies' weights summed
      ([5.0, 1.0], [4.0, 2.0])
    """
    first, group = identity_groups(far.ident, -far.dist)
    size = far.dist.shape[0]
    real = far.dist >= 0
    total = jax.ops.segment_sum(jnp.where(real, far.weights, 0.0), group, size)[group]
    copies = jax.ops.segment_sum(jnp.where(real, far.copies, 0), group, size)[group]
    dist, idx = lax.top_k(jnp.where(first, far.dist, -1.0), min(m, size))
    top = Far(far.rows[idx], dist, far.labels[idx], total[idx], far.ident[idx], copies[idx])
    return _farthest_first(top)


# Elements of the (rows, candidates) block that finds the copies of the candidates (only
# when a cluster is empty; the same on every platform).
_COPY_BLOCK = 1 << 20


def _copy_weights(
    x: Any, w: jax.Array | None, ident: jax.Array, metric: str
) -> tuple[jax.Array, jax.Array]:
    """``(weights (m,), rows (m,) int32)``: the summed weight and the number of rows with
    positive weight of the rows of `x` whose identity is each of `ident` (m, 2), in
    blocks of rows (never an (n, m) array)."""
    n = x.shape[0]
    m = ident.shape[0]
    chunk = min(n, max(8, _COPY_BLOCK // max(m, 1)))

    def step(carry, start, valid):
        total, count = carry
        rows = row_block(x, start, chunk)
        wv = valid.astype(x.dtype)
        if w is not None:
            wv = wv * lax.dynamic_slice_in_dim(w, start, chunk)
        ri = row_identity(rows, metric)
        eq = (ri[:, None, 0] == ident[None, :, 0]) & (ri[:, None, 1] == ident[None, :, 1])
        # The candidates are distinct points: a row is a copy of at most one of them.
        hit = jnp.any(eq, axis=1) & (wv > 0)
        which = jnp.argmax(eq, axis=1)
        total = total + jax.ops.segment_sum(jnp.where(hit, wv, 0.0), which, num_segments=m)
        return total, count + jax.ops.segment_sum(hit.astype(jnp.int32), which, num_segments=m)

    init = (jnp.zeros((m,), x.dtype), jnp.zeros((m,), jnp.int32))
    return fold_chunks(n, chunk, step, init)


def farthest(
    x: Any,
    w: jax.Array | None,
    labels: jax.Array,
    min_dist: jax.Array,
    m: int,
    metric: str,
    origin: jax.Array | None,
) -> Far:
    """The (up to) `m` distinct points among the rows of `x` with positive weight that
    are farthest from their centers. A point is all the rows with its identity
    (:func:`jaxkmeans._validation.row_identity`): it is found at its farthest copy
    (lowest index on ties) and carries the summed weight of all its copies, so that
    repeated rows and one row with their total weight are the same point.

    Usually exact from a pool of the ``2 m`` farthest rows: walking down that pool, the
    first copy of each point is that point's farthest copy, so once the pool holds `m`
    distinct points they are the answer. Only when it does not (heavily duplicated
    data) are all n rows hashed and sorted.

    `x` may be :class:`~jaxkmeans._validation.InPlaceRows`: rows are gathered from it
    and read in blocks; only that full hash makes a copy of it.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.updates import farthest
      >>> x = jnp.array([[0.0], [1.0], [5.0], [5.0], [10.0]])
      >>> labels, dist = jnp.array([0, 0, 0, 0, 1]), jnp.array([0.0, 1.0, 25.0, 25.0, 0.0])
      >>> far = farthest(x, None, labels, dist, 2, "squared_euclidean", None)
      >>> far.rows.ravel().tolist(), far.dist.tolist(), far.weights.tolist()
      ([5.0, 1.0], [25.0, 1.0], [2.0, 1.0])
    """
    n, d = x.shape
    if n < m:  # fewer rows than candidates asked for: the rest are "no candidate"
        far = farthest(x, w, labels, min_dist, n, metric, origin)
        none = no_candidates(m - n, d, x.dtype)
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), far, none)
    dist = min_dist if w is None else jnp.where(w > 0, min_dist, -1.0)
    pool = min(n, 2 * m)
    pool_d, pool_i = lax.top_k(dist, pool)  # ties: lower index first
    keep = first_copies(row_identity(take_rows(x, pool_i), metric))

    def from_pool(_):
        d, j = lax.top_k(jnp.where(keep, pool_d, -1.0), m)
        return d, pool_i[j]

    def from_all(_):
        firsts = first_copies(row_identity(dense_rows(x), metric), -dist)
        d, i = lax.top_k(jnp.where(firsts, dist, -1.0), m)
        return d, i

    if pool == n:
        far_d, far_i = from_pool(None)
    else:
        far_d, far_i = lax.cond(jnp.sum(keep) >= m, from_pool, from_all, None)
    raw = take_rows(x, far_i)
    rows, _ = metrics.prepare_rows(raw, metric, origin)
    ident = row_identity(raw, metric)
    weights, copies = _copy_weights(x, w, ident, metric)
    return _farthest_first(Far(rows, far_d, labels[far_i], weights, ident, copies))


def members(labels: jax.Array, w: jax.Array | None, k: int) -> jax.Array:
    """(k,) int32: the number of rows with positive weight nearest to each center.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxkmeans.updates import members
      >>> members(jnp.array([0, 0, 1, 0]), jnp.array([1.0, 0.0, 2.0, 1.0]), 3).tolist()
      [2, 1, 0]
    """
    ones = jnp.ones(labels.shape, jnp.int32) if w is None else (w > 0).astype(jnp.int32)
    return jax.ops.segment_sum(ones, labels, num_segments=k)


def relocate_empty(
    sums: jax.Array, counts: jax.Array, far: Far, rows_in: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Moves every empty cluster to a distinct point far from its center.

    The i-th empty cluster (by index) takes the i-th farthest candidate point (by
    distance to its nearest center, equal distances in identity order, among points with
    positive weight; all the copies of that point, see :func:`farthest`) as its only
    member; that point leaves the cluster it was in (as in scikit-learn, where a point
    is one row). Points at distance 0 and
    copies of a farther candidate are never taken, so a center never lands on a copy
    of another (clusters left without a candidate stay empty this step).

    Args:
      sums, counts: (k, d) and (k,) statistics of the pass.
      far: the candidates (:func:`farthest`, :func:`distinct_top`).
      rows_in: (k,) int32 rows with positive weight per cluster (:func:`members`): a
        donor left with no row is empty (its float residue is dropped), one left with a
        row keeps it, whatever the weights' ratio.

    Returns:
      ``(sums, counts)`` with the relocated statistics.

    Examples:
      Cluster 2 is empty: it takes the point 5 (both of its rows) from cluster 0.

      >>> import jax.numpy as jnp
      >>> from jaxkmeans.updates import farthest, members, relocate_empty
      >>> x = jnp.array([[0.0], [1.0], [5.0], [5.0], [10.0]])
      >>> labels, dist = jnp.array([0, 0, 0, 0, 1]), jnp.array([0.0, 1.0, 25.0, 25.0, 0.0])
      >>> far = farthest(x, None, labels, dist, 1, "squared_euclidean", None)
      >>> sums, counts = jnp.array([[11.0], [10.0], [0.0]]), jnp.array([4.0, 1.0, 0.0])
      >>> sums, counts = relocate_empty(sums, counts, far, members(labels, None, 3))
      >>> sums.ravel().tolist(), counts.tolist()
      ([1.0, 10.0, 10.0], [2.0, 1.0, 2.0])
    """
    k = counts.shape[0]
    m = far.dist.shape[0]
    empty = counts <= 0
    # Usable candidates, farthest first: positive distance, one per point.
    idx = jnp.arange(m, dtype=jnp.int32)
    usable = first_copies(far.ident, -far.dist) & (far.dist > 0)
    slot = jnp.where(usable, jnp.cumsum(usable.astype(jnp.int32)) - 1, m)
    order = jnp.zeros((m,), jnp.int32).at[slot].set(idx, mode="drop")
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1  # rank of each empty cluster
    ok = empty & (rank < jnp.sum(usable.astype(jnp.int32)))
    pick = order[jnp.clip(rank, 0, m - 1)]
    rows = far.rows[pick]
    pw = jnp.where(ok, far.weights[pick], 0.0)
    donor = far.labels[pick]
    moved = jnp.where(ok, far.copies[pick], 0)
    sums = sums - jax.ops.segment_sum(rows * pw[:, None], donor, num_segments=k)
    counts = counts - jax.ops.segment_sum(pw, donor, num_segments=k)
    # A donor left with no row is empty (not a center at float residue / eps).
    gone = rows_in - jax.ops.segment_sum(moved, donor, num_segments=k) <= 0
    sums = jnp.where(gone[:, None], 0.0, sums)
    counts = jnp.where(gone, 0.0, counts)
    sums = jnp.where(ok[:, None], rows * pw[:, None], sums)
    counts = jnp.where(ok, pw, counts)
    return sums, counts


class MiniBatchOptState(NamedTuple):
    """State of :func:`minibatch_optimizer`: the cumulative weight seen by each center.

    Examples:
      >>> import jax.numpy as jnp, jaxkmeans
      >>> jaxkmeans.minibatch_optimizer().init(jnp.zeros((3, 2)))
      MiniBatchOptState(counts=Array([0., 0., 0.], dtype=float32))
    """

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

    import optax  # on first use: about 0.2 s of import that a Lloyd fit never needs

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
