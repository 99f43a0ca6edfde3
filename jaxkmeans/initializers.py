"""Initial centers: random, greedy k-means++, k-MC2 and k-means|| (plus user arrays and
callables).

Every method is a jittable function of ``(key, x, weights)`` that returns k rows of the
data (cosine: unit rows). Duplicate data points are merged first (an exact integer hash
of each row's bits, so the merge does not depend on float rounding): one copy carries
the total weight, the others weigh 0. Since a chosen point is never chosen again and
weight-0 points never are, the k rows are distinct whenever the data has at least k
distinct points.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxkmeans import engine, kernels, metrics, updates
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    SizeAwareJit,
    as_centers,
    as_data,
    as_weights,
    bucket_rows,
    check_choice,
    check_enough_distinct,
    check_int,
    check_key,
    check_metric,
    check_positive_int,
    dense_rows,
    is_traced,
    releases_host_copies,
    row_identity,
    take_rows,
)
from jaxkmeans.kernels import sparse
from jaxkmeans.kernels.sparse import SparseRows

__all__ = [
    "RANDOM_INIT",
    "KMEANS_PLUS_PLUS_INIT",
    "KMC2_INIT",
    "KMEANS_PARALLEL_INIT",
    "INIT_METHODS",
    "InitSpec",
    "make_init",
    "init_impl",
    "init_centers",
    "sparse_check_enough_distinct",
]

RANDOM_INIT = "random"
KMEANS_PLUS_PLUS_INIT = "kmeans_plus_plus"
KMC2_INIT = "kmc2"
KMEANS_PARALLEL_INIT = "kmeans_parallel"
INIT_METHODS = (RANDOM_INIT, KMEANS_PLUS_PLUS_INIT, KMC2_INIT, KMEANS_PARALLEL_INIT)

# Options each method accepts through ``**method_options``, with defaults.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    RANDOM_INIT: {},
    KMEANS_PLUS_PLUS_INIT: {},
    KMC2_INIT: {"chain_length": 200},
    KMEANS_PARALLEL_INIT: {"rounds": 5, "oversampling_factor": 2.0, "chunk_size": None},
}


# ----------------------------------------------------------------------------- helpers


def merge_duplicates(x: jax.Array, w: jax.Array, metric: str) -> jax.Array:
    """Weights with every group of identical rows' total weight on its first row.

    Args:
      x: (n, d) rows; w: (n,) non-negative weights; metric: rows are identical by
        :func:`jaxkmeans._validation.row_identity` (cosine: same direction).

    Returns:
      (n,) weights: the first copy (lowest index) of each distinct row carries the
      group's total, the other copies 0.
    """
    n = x.shape[0]
    first, group = updates.identity_groups(row_identity(x, metric))
    total = jax.ops.segment_sum(w, group, num_segments=n)
    return jnp.where(first, total[group], 0.0)


def _gumbel_scores(key: jax.Array, w: jax.Array) -> jax.Array:
    """log(w) + Gumbel noise: top-k of these samples k rows without replacement,
    proportionally to w (weight 0 gives -inf)."""
    # Drawn in float32 whatever the data's dtype: float32 and float64 data (64-bit mode)
    # with the same key make the same draws.
    g = jax.random.gumbel(key, w.shape, jnp.float32).astype(w.dtype)
    return _weighted_scores(g, w)


def _weighted_scores(g: jax.Array, w: jax.Array) -> jax.Array:
    safe = jnp.where(w > 0, w, 1.0)
    return jnp.where(w > 0, jnp.log(safe) + g, -jnp.inf)


def _unit_floats(bits: jax.Array) -> jax.Array:
    """float32 in [0, 1) from uint32 bits (their 23 high bits, as jax.random.uniform)."""
    one = lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return one - 1.0


def _first_and_uniforms(key: jax.Array, w: jax.Array, shape: tuple[int, ...]):
    """The first center (a row drawn proportionally to `w`, as the top Gumbel score) and
    uniforms in [0, 1) of `shape` (float32) for the later picks, from ONE call of the
    PRNG: each call is a threefry block of its own in the compiled program, and a small
    one is slow to compile on CPU (0.6-0.8 s for a (k, candidates, 2) draw, a quarter of
    a k-means++ program's compile time). The uniforms come first in the bits, so a row's
    score does not depend on the rows after it (padding rows draw nothing different)."""
    m = math.prod(shape)
    bits = jax.random.bits(key, (m + w.shape[0],), jnp.uint32)
    u = _unit_floats(bits[:m]).reshape(shape)
    tiny = jnp.finfo(jnp.float32).tiny
    g = -jnp.log(-jnp.log(jnp.maximum(_unit_floats(bits[m:]), tiny)))
    first = jnp.argmax(_weighted_scores(g.astype(w.dtype), w)).astype(jnp.int32)
    return first, u


def _mass_blocks(n: int) -> tuple[int, int]:
    """(block size B, number of blocks) for sampling among n masses: B =
    2^ceil(log2(m)/2) ~ sqrt(n) with m = ``bucket_rows(n)``, so that both prefix sums
    (over the blocks, and within a block) run over at most ~sqrt(n) terms. B depends on
    the size bucket, not on n: the same rows padded with zero-weight rows to their
    bucket (as fit and assign pad them) get the same blocks, hence the same draws."""
    m = bucket_rows(n)
    size = 1 << (((m - 1).bit_length() + 1) // 2)
    return size, -(-n // size)


def _mass_table(mass: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What :func:`_sample_by_mass` searches: the prefix sums within each block
    (flattened), the block totals and their prefix sum. O(n); build it once when the
    same masses are sampled again and again."""
    n = mass.shape[0]
    size, num_blocks = _mass_blocks(n)
    m = jnp.pad(mass, (0, num_blocks * size - n))
    local = jnp.cumsum(m.reshape(num_blocks, size), axis=1)
    sums = local[:, -1]
    return local.reshape(-1), sums, jnp.cumsum(sums)


def _draw(
    u: jax.Array, mass: jax.Array, table: tuple[jax.Array, jax.Array, jax.Array] | None = None
) -> jax.Array:
    """The two-level draws of :func:`_sample_by_mass`, before the zero-mass check (an
    index may have mass 0 through rounding, or when every mass is 0).

    Without `table`, and when the draws are few (``num * B <= n``), only the block
    totals are formed (one O(n) reduction) and the prefix sums of the ~sqrt(n) rows of
    the num blocks drawn: the same two-level distribution as the full table, at one
    cheap pass instead of a prefix sum over all n masses per call.
    """
    n = mass.shape[0]
    size, num_blocks = _mass_blocks(n)
    num = u.shape[0]
    u = u.astype(mass.dtype)
    # By the size bucket (as the blocks): padded rows take the same path.
    few = table is None and num * size <= max(bucket_rows(n), size)
    if few:
        blocks = jnp.pad(mass, (0, num_blocks * size - n)).reshape(num_blocks, size)
        sums = jnp.sum(blocks, axis=1)
        starts = jnp.cumsum(sums)
    else:
        local, sums, starts = _mass_table(mass) if table is None else table
    total = starts[-1]
    # Clamped below the top so that rounding never picks past the last positive mass;
    # the first prefix sum above t then ends on a positive mass (block and row alike).
    t = jnp.minimum(u[:, 0] * total, jnp.nextafter(total, -jnp.inf))
    b = jnp.clip(jnp.searchsorted(starts, t, side="right"), 0, num_blocks - 1).astype(jnp.int32)
    base = b * size
    if few:
        # The drawn blocks' own prefix sums; the row scale is their last entry, so
        # that r stays below it whatever the rounding of the block totals above.
        local_b = jnp.cumsum(blocks[b], axis=1)
        s = local_b[:, -1]
        r = jnp.minimum(u[:, 1] * s, jnp.nextafter(s, -jnp.inf))
        pos = jnp.sum(local_b <= r[:, None], axis=1, dtype=jnp.int32)
        return jnp.minimum(base + pos, n - 1)
    s = sums[b]
    r = jnp.minimum(u[:, 1] * s, jnp.nextafter(s, -jnp.inf))
    # Binary search of r in block b's prefix sums (gathers: no (num, B) copy of the
    # blocks): pos = how many of them are <= r.
    pos = jnp.zeros_like(b)
    step = size // 2
    while step:
        pos = jnp.where(local[base + pos + step - 1] <= r, pos + step, pos)
        step //= 2
    return jnp.minimum(base + pos, n - 1)


def _sample_by_mass(
    u: jax.Array,
    mass: jax.Array,
    fallback: jax.Array,
    table: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Indices drawn with replacement with probability proportional to `mass`, one per
    row of uniform numbers in `u` (num, 2) (drawn by the caller, outside any loop).

    Exact up to ~sqrt(n) float rounding at any n: one prefix sum over all n masses would
    lose the small increments once the running total is large (float32 at n in the
    millions: some rows are never drawn, others too often).
    Instead the masses are cut into ~sqrt(n) blocks of ~sqrt(n) rows: ``u[:, 0]`` picks a
    block by the prefix sum of the block totals, ``u[:, 1]`` a row of that block by the
    block's own prefix sum (one uniform number alone has too few bits for millions of
    rows). O(n + num log n); O(num log n) given `table` = ``_mass_table(mass)``.

    Indices whose mass is 0 are never returned (a draw that lands on one through
    rounding, or when every mass is 0, returns `fallback` instead).
    """
    idx = _draw(u, mass, table)
    return jnp.where(mass[idx] > 0, idx, fallback)


def _row(a: jax.Array, i: jax.Array) -> jax.Array:
    """Row `i` of `a` as a gather (not a dynamic slice), which the compiler can
    partition when `a` is row-sharded instead of gathering all of `a` first."""
    return jnp.take(a, jnp.reshape(i, (1,)), axis=0)[0]


def _sq_dists(xp: jax.Array, xsq: jax.Array, cp: jax.Array) -> jax.Array:
    """(n, m) squared distances between prepared rows and m prepared points."""
    csq = jnp.sum(cp * cp, axis=1)
    prod = metrics.dot(xp, cp, "float32")
    return jnp.maximum(xsq[:, None] - 2.0 * prod + csq[None, :], 0.0)


def _prepare(x: jax.Array, w: jax.Array, metric: str) -> jax.Array:
    """Rows in the frame the samplers measure distances in: unit rows for cosine (so
    squared Euclidean = 2 (1 - cos)), rows minus the weighted mean otherwise (accuracy
    far from the origin)."""
    if metric == COSINE_DISTANCE:
        return metrics.normalize_rows(x)
    mean = jnp.sum(x * w[:, None], axis=0) / jnp.sum(w)
    return x - mean[None, :]


def _num_candidates(num_retries: int, k: int) -> int:
    retries = 2 + int(math.log(k)) if num_retries < 0 else num_retries
    return 1 + retries


# ----------------------------------------------------------------------------- methods


def _random_merged(key, x, w, k, metric):
    """k distinct rows by weight: duplicates merged first (a hash and a sort of all n
    rows), then Gumbel top-k. The general path of :func:`_random`."""
    x = dense_rows(x)  # every row is hashed: rows read in place are copied (here only)
    if metric == COSINE_DISTANCE:
        w = jnp.where(jnp.any(x != 0, axis=1), w, 0.0)
    _, idx = lax.top_k(_gumbel_scores(key, merge_duplicates(x, w, metric)), k)
    return idx


def _random(key, x, w, k, metric):
    """k distinct rows of `x`, drawn without replacement with probability proportional
    to the weight of each distinct point (the total of its copies).

    The Gumbel top-m order of the rows (m = min(n, 2k + 16)) is the order of successive
    draws without replacement by row weight; skipping the rows identical to an earlier
    one in that order (cosine: also all-zero rows) leaves the successive draws of
    distinct points by their total weight. So the first k rows kept among the top m are
    exactly a draw of the merged sampler, at the cost of one pass over the weights and a
    hash of m rows (not all n). When fewer than k survive (many copies at the top) the
    merged sampler runs instead.
    """
    n = x.shape[0]
    m = min(n, 2 * k + 16)
    scores, top = lax.top_k(_gumbel_scores(key, w), m)
    rows = take_rows(x, top)
    keep = updates.first_copies(row_identity(rows, metric), jnp.arange(m, dtype=jnp.int32))
    keep &= jnp.isfinite(scores)
    if metric == COSINE_DISTANCE:
        keep &= jnp.any(rows != 0, axis=1)
    # The first k kept, in score order (a stable sort of the dropped rows to the end).
    order = jnp.argsort(~keep, stable=True)[:k]
    return lax.cond(
        jnp.sum(keep) >= k,
        lambda: top[order].astype(jnp.int32),
        lambda: _random_merged(key, x, w, k, metric).astype(jnp.int32),
    )


def _candidate_potentials(
    xp: jax.Array, xsq: jax.Array, w: jax.Array, d2: jax.Array, cand: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(pot (t,), dc (n, t))`` for t candidate rows: ``dc = min(d2, D(x, x[cand]))`` and
    each candidate's potential ``sum_i w_i dc[i, j]``, with every candidate at distance
    exactly 0 from itself.

    One (n, d) x (d, t) product for all t candidates, and the min, the clamp and the
    weighted sum fused over it; the self distance (which the expansion may round away
    from 0) is corrected on the t potentials instead of masking an (n, t) block. Only
    the min is new: ``dc[:, best]`` is the next ``d2`` (set 0 at the chosen row).
    """
    c = take_rows(xp, cand)
    csq = jnp.sum(c * c, axis=1)
    prod = metrics.dot(xp, c, "float32")
    dc = jnp.minimum(d2[:, None], jnp.maximum(xsq[:, None] - 2.0 * prod + csq[None, :], 0.0))
    self_d = dc[cand, jnp.arange(cand.shape[0])]
    pot = jnp.sum(w[:, None] * dc, axis=0) - w[cand] * self_d
    return pot, dc


def _round_xla(xp, xsq, w, d2, cand):
    """``(best, next d2)`` of one greedy round in pure JAX (:func:`_candidate_potentials`)."""
    pot, dc = _candidate_potentials(xp, xsq, w, d2, cand)
    best = jnp.argmin(pot)
    return best.astype(jnp.int32), lax.dynamic_index_in_dim(dc, best, axis=1, keepdims=False)


def _draw_lazy(u, xp, xsq, w, d2, p_idx, totals):
    """The two-level draws of :func:`_draw` (few-draws form) from block `totals` of the
    masses ``w D^2`` where ``D^2 = min(d2, D(x, x[p_idx]))`` is known only lazily: the
    rows of the drawn blocks get their D^2 here (the native round folds the pick into
    every row during its next pass). Returns (indices, their masses)."""
    n = xp.shape[0]
    size, num_blocks = _mass_blocks(n)
    u = u.astype(w.dtype)
    starts = jnp.cumsum(totals)
    total = starts[-1]
    t = jnp.minimum(u[:, 0] * total, jnp.nextafter(total, -jnp.inf))
    b = jnp.clip(jnp.searchsorted(starts, t, side="right"), 0, num_blocks - 1).astype(jnp.int32)
    rows = b[:, None] * size + jnp.arange(size, dtype=jnp.int32)[None, :]
    valid = rows < n
    rows = jnp.minimum(rows, n - 1)
    p = _row(xp, p_idx)
    dist = jnp.maximum(xsq[rows] - 2.0 * metrics.dot(xp[rows], p, "float32") + jnp.sum(p * p), 0.0)
    d2r = jnp.where(rows == p_idx, 0.0, jnp.minimum(d2[rows], dist))
    mass = jnp.where(valid, w[rows] * d2r, 0.0)
    local = jnp.cumsum(mass, axis=1)
    s = local[:, -1]
    r = jnp.minimum(u[:, 1] * s, jnp.nextafter(s, -jnp.inf))
    pos = jnp.minimum(jnp.sum(local <= r[:, None], axis=1, dtype=jnp.int32), size - 1)
    drawn_mass = jnp.take_along_axis(mass, pos[:, None], axis=1)[:, 0]
    return jnp.minimum(b * size + pos, n - 1), drawn_mass


def _kmeans_pp_native(key, xp, w, k, num_retries):
    """:func:`_kmeans_pp` with the native CPU round (:func:`kernels.native.pp_round`):
    ONE pass over the rows per pick. The pick's D^2 update is lazy: the next round's
    pass folds it in while it measures the next candidates, and returns the block
    totals of every candidate's masses, so that the sampler's first level needs no pass
    of its own and its second level measures only the drawn blocks' rows. The same
    draws, expansion and greedy choice as the pure-JAX rounds (up to float rounding of
    the dot products and of the float64 block totals)."""
    n = xp.shape[0]
    num_cand = _num_candidates(num_retries, k)
    size, num_blocks = _mass_blocks(n)
    xsq = jnp.sum(xp * xp, axis=1)
    first, u_all = _first_and_uniforms(key, w, (k, num_cand, 2))
    d2 = _sq_dists(xp, xsq, _row(xp, first)[None, :])[:, 0].at[first].set(0.0)
    totals = jnp.sum(jnp.pad(w * d2, (0, num_blocks * size - n)).reshape(num_blocks, size), 1)
    chosen = jnp.zeros((n,), bool).at[first].set(True)
    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def pick(i, carry):
        d2, last, totals, chosen, idx = carry
        drawn, drawn_mass = _draw_lazy(u_all[i], xp, xsq, w, d2, last, totals)
        fallback = _unchosen_fallback(drawn_mass, chosen, w)
        cand = jnp.where(drawn_mass > 0, drawn, fallback)
        rows = jnp.concatenate([last[None], cand])
        c = take_rows(xp, rows)
        d2, pot, bsum = kernels.native.pp_round(
            xp, xsq, w, d2, c, jnp.sum(c * c, axis=1), rows, size
        )
        best = jnp.argmin(pot)
        new = cand[best]
        return d2, new, bsum[best], chosen.at[new].set(True), idx.at[i].set(new)

    _, _, _, _, idx = lax.fori_loop(1, k, pick, (d2, first, totals, chosen, idx))
    return idx


def _use_native_round(xp: jax.Array, kernel: str) -> bool:
    """Whether k-means++ rounds run the native kernel where the program runs on CPU."""
    return (
        kernel == "native"
        and kernels.native.usable(xp.dtype, SQUARED_EUCLIDEAN_DISTANCE, "float32")
        and kernels.native.pp_round_available()
    )


def _unchosen_fallback(mass_at_draws, chosen, w):
    """The heaviest unchosen row, computed only when a draw landed on a zero mass
    (rounding, or every mass 0): an O(n) pass that ordinary rounds skip."""
    return lax.cond(
        jnp.any(mass_at_draws <= 0),
        lambda: jnp.argmax(jnp.where(chosen, 0.0, w)).astype(jnp.int32),
        lambda: jnp.int32(0),
    )


def _kmeans_pp(key, xp, w, k, num_retries, kernel="xla", platform=None):
    """Greedy k-means++: `1 + num_retries` D^2-sampled candidates per pick, keep the one
    that lowers the potential most. Returns indices (k,).

    Per pick: one cheap pass over the masses ``w D^2`` (block totals; only the drawn
    blocks get prefix sums), one pass over the rows for all candidates' distances and
    potentials (:func:`_candidate_potentials`). With ``kernel="native"`` (and the native
    round usable) the program runs :func:`_kmeans_pp_native` where it runs on CPU, and
    these pure-JAX rounds on every other platform (:func:`kernels.by_platform`: only the
    native rounds with ``platform="cpu"``, see :class:`InitSpec`)."""
    if _use_native_round(xp, kernel) and k > 1:
        return kernels.by_platform(
            platform,
            key,
            xp,
            w,
            cpu=lambda key, xp, w: _kmeans_pp_native(key, xp, w, k, num_retries),
            default=lambda key, xp, w: _kmeans_pp(key, xp, w, k, num_retries),
        )
    n = xp.shape[0]
    num_cand = _num_candidates(num_retries, k)
    xsq = jnp.sum(xp * xp, axis=1)
    # All the randomness up front: one PRNG call instead of two per pick (faster to
    # compile and to run).
    first, u_all = _first_and_uniforms(key, w, (k, num_cand, 2))
    d2 = _sq_dists(xp, xsq, _row(xp, first)[None, :])[:, 0].at[first].set(0.0)
    chosen = jnp.zeros((n,), bool).at[first].set(True)
    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def pick(i, carry):
        d2, chosen, idx = carry
        mass = w * d2
        drawn = _draw(u_all[i], mass)
        drawn_mass = mass[drawn]
        fallback = _unchosen_fallback(drawn_mass, chosen, w)
        cand = jnp.where(drawn_mass > 0, drawn, fallback)
        best, d2 = _round_xla(xp, xsq, w, d2, cand)
        new = cand[best]
        d2 = d2.at[new].set(0.0)
        return d2, chosen.at[new].set(True), idx.at[i].set(new)

    _, _, idx = lax.fori_loop(1, k, pick, (d2, chosen, idx))
    return idx


def _kmc2(key, xp, w, k, chain_length):
    """Assumption-free k-MC^2 (Bachem et al. 2016), weighted: each new center is the end
    of a Metropolis-Hastings chain of `chain_length` proposals drawn from
    ``q = (w d1 / sum w d1 + w / sum w) / 2`` targeting ``w D^2``."""
    n = xp.shape[0]
    xsq = jnp.sum(xp * xp, axis=1)
    # All the randomness up front (proposal draws and acceptance tests for every pick).
    first, u_all = _first_and_uniforms(key, w, (k, chain_length, 3))
    d1 = _sq_dists(xp, xsq, _row(xp, first)[None, :])[:, 0].at[first].set(0.0)
    wd = w * d1
    q = 0.5 * wd / jnp.maximum(jnp.sum(wd), 1e-30) + 0.5 * w / jnp.sum(w)
    table = _mass_table(q)  # q is the same for every pick
    centers = jnp.zeros((k, xp.shape[1]), xp.dtype).at[0].set(_row(xp, first))
    chosen = jnp.zeros((n,), bool).at[first].set(True)
    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)
    slots = jnp.arange(k)

    def pick(i, carry):
        key, centers, chosen, idx = carry
        fallback = jnp.argmax(jnp.where(chosen, 0.0, w)).astype(jnp.int32)
        prop = _sample_by_mass(u_all[i, :, :2], q, fallback, table)
        dp = _sq_dists(xp[prop], xsq[prop], centers)
        dp = jnp.min(jnp.where((slots < i)[None, :], dp, jnp.inf), axis=1)
        target = jnp.where(chosen[prop], 0.0, w[prop] * dp)
        qp = q[prop]
        u = u_all[i, :, 2].astype(xp.dtype)

        def step(state, j):
            cur = state
            accept = (target[cur] <= 0) | (u[j] * target[cur] * qp[j] < target[j] * qp[cur])
            return jnp.where(accept, j, cur), None

        last, _ = lax.scan(step, jnp.int32(0), jnp.arange(1, chain_length, dtype=jnp.int32))
        new = jnp.where(target[last] > 0, prop[last], fallback)
        return key, centers.at[i].set(_row(xp, new)), chosen.at[new].set(True), idx.at[i].set(new)

    _, _, _, idx = lax.fori_loop(1, k, pick, (key, centers, chosen, idx))
    return idx


def _kmeans_parallel(key, xp, w, spec: InitSpec):
    """k-means|| (Bahmani et al. 2012): `rounds` rounds each adding ``l =
    oversampling_factor * k`` points sampled without replacement proportionally to
    ``w D^2``; the candidates, weighted by the points nearest to them, are then
    reduced to k with weighted greedy k-means++. The distances to each round's
    candidates are a nearest-center pass of the engine's kernels (native on CPU, the
    platform's blocks elsewhere)."""
    opts = dict(spec.options)
    kernel = spec.kernel if xp.dtype == jnp.float32 else "xla"  # native: float32 only
    passes = engine.Pass(
        chunk=opts["chunk_size"], kernel=kernel, mesh=spec.mesh, platform=spec.platform
    )
    k, num_retries = spec.k, spec.num_retries
    rounds, oversampling_factor = opts["rounds"], opts["oversampling_factor"]
    n, d = xp.shape
    # At least k - 1 candidates after the first one, whatever the options.
    per_round = max(1, min(n, max(math.ceil(oversampling_factor * k), math.ceil((k - 1) / rounds))))
    m = 1 + rounds * per_round
    key, sub = jax.random.split(key)
    first = jnp.argmax(_gumbel_scores(sub, w)).astype(jnp.int32)
    cand_idx = jnp.zeros((m,), jnp.int32).at[0].set(first)
    cand_ok = jnp.zeros((m,), bool).at[0].set(True)
    xsq = jnp.sum(xp * xp, axis=1)
    d2 = _sq_dists(xp, xsq, _row(xp, first)[None, :])[:, 0].at[first].set(0.0)
    near = jnp.zeros((n,), jnp.int32)  # nearest candidate so far

    def add_candidates(d2, near, new_idx, new_ok, offset):
        cp = -2.0 * xp[new_idx]
        bias = jnp.where(new_ok, jnp.sum(xp[new_idx] ** 2, axis=1), jnp.inf)
        frame = engine.Frame(jnp.zeros((d,), xp.dtype), cp, bias)  # rows already centred
        j, dnew = engine.nearest(passes, xp, frame)  # on each device's rows with a mesh
        better = dnew < d2
        d2 = jnp.where(better, dnew, d2)
        near = jnp.where(better, offset + j, near)
        # Candidates are at distance exactly 0 from themselves.
        d2 = d2.at[new_idx].set(jnp.where(new_ok, 0.0, d2[new_idx]))
        near = near.at[new_idx].set(
            jnp.where(new_ok, offset + jnp.arange(per_round, dtype=jnp.int32), near[new_idx])
        )
        return d2, near

    def round_(r, carry):
        key, d2, near, cand_idx, cand_ok = carry
        key, sub = jax.random.split(key)
        scores, new_idx = lax.top_k(_gumbel_scores(sub, w * d2), per_round)
        new_ok = jnp.isfinite(scores)
        offset = 1 + r * per_round
        d2, near = add_candidates(d2, near, new_idx, new_ok, offset)
        cand_idx = lax.dynamic_update_slice_in_dim(cand_idx, new_idx.astype(jnp.int32), offset, 0)
        cand_ok = lax.dynamic_update_slice_in_dim(cand_ok, new_ok, offset, 0)
        return key, d2, near, cand_idx, cand_ok

    key, d2, near, cand_idx, cand_ok = lax.fori_loop(
        0, rounds, round_, (key, d2, near, cand_idx, cand_ok)
    )
    cw = jax.ops.segment_sum(w, near, num_segments=m)
    cw = jnp.where(cand_ok, cw, 0.0)
    sub_idx = _kmeans_pp(key, xp[cand_idx], cw, k, num_retries, kernel, spec.platform)
    return cand_idx[sub_idx]


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """The static description of an initialization: k, the method and its options.

    Attributes:
      k: number of centers.
      method: one of :data:`INIT_METHODS`.
      metric: the metric (cosine compares rows by direction and returns unit rows).
      num_retries: k-means++ extra candidates per pick (negative: 2 + ln k).
      options: the method's options (``METHOD_OPTIONS``) as sorted ``(name, value)``.
      kernel: the engine kernel k-means|| measures candidate distances with.
      mesh: the mesh the rows are sharded over (None: not sharded). k-means|| then
        measures candidate distances on each device's rows; k-means++ runs its
        pure-JAX rounds, which the compiler partitions (a native round would gather
        every row to each device).
      platform: ``"cpu"`` when the caller knows that the program is lowered for CPU
        only (as :attr:`jaxkmeans.engine.Pass.platform`): only the CPU branches are
        traced.
    """

    k: int
    method: str
    metric: str
    num_retries: int = -1
    options: tuple[tuple[str, Any], ...] = ()
    kernel: str = "xla"
    mesh: Any = None
    platform: str | None = None


# ------------------------------------------------------------------ sparse rows
#
# The same methods on sparse rows (:class:`~jaxkmeans.kernels.sparse.SparseRows`):
# distances from ``||x||^2 - 2 x.c + ||c||^2`` with the kernels' sparse-dense product
# (rows are not shifted to their mean: that would fill them), duplicates merged by the
# sparse row identity, and only the chosen and candidate rows densified.


def _sparse_weights(sp: SparseRows, w: jax.Array, metric: str) -> tuple[jax.Array, jax.Array]:
    """``(merged weights (n,), ||x'||^2 (n,))`` of sparse rows: each group of identical
    rows' total weight on its first row (cosine: all-zero rows weigh 0)."""
    vals, _ = sparse.prepared_values(sp, metric)
    nb = sp.num_blocks * sp.block
    xsq = jax.ops.segment_sum(vals * vals, sp.rows, num_segments=nb, indices_are_sorted=True)
    xsq = xsq[: sp.n]
    if metric == COSINE_DISTANCE:
        w = jnp.where(xsq > 0, w, 0.0)
    first, group = updates.identity_groups(sparse.identity(sp, metric))
    total = jax.ops.segment_sum(w, group, num_segments=sp.n)
    return jnp.where(first, total[group], 0.0), xsq


@functools.partial(jax.jit, static_argnames=("metric",))
def _sparse_distinct(sp: SparseRows, w: jax.Array | None, metric: str) -> jax.Array:
    w = jnp.ones((sp.n,), sp.dtype) if w is None else w
    merged, _ = _sparse_weights(sp, w, metric)
    return jnp.sum(merged > 0)


def sparse_check_enough_distinct(
    sp: SparseRows,
    k: int,
    metric: str,
    sample_weight: jax.Array | None = None,
    name: str = "x",
    rows: int | None = None,
) -> None:
    """:func:`jaxkmeans._validation.check_enough_distinct` for sparse rows."""
    n = sp.n if rows is None else rows
    if n < k:
        raise ValueError(
            f"`num_clusters` must be <= the number of samples in `{name}`; "
            f"got num_clusters={k} with {n} samples."
        )
    distinct = int(_sparse_distinct(sp, sample_weight, metric))
    if distinct < k:
        what = "distinct non-zero directions" if metric == COSINE_DISTANCE else "distinct points"
        raise ValueError(
            f"`{name}` must have at least num_clusters={k} {what} (with positive weight); "
            f"got {distinct}."
        )


def _sparse_sq_dists(sp, vals, xsq, c):
    """(n, t) squared distances of the (prepared) sparse rows to dense points c (t, d)."""
    prod = sparse.matmul(sp, c, vals)
    csq = jnp.sum(c * c, axis=1)
    return jnp.maximum(xsq[:, None] - 2.0 * prod + csq[None, :], 0.0)


def _sparse_kmeans_pp(key, sp, vals, xsq, w, k, num_retries):
    """Greedy k-means++ on sparse rows (the rounds of :func:`_kmeans_pp`)."""
    n = sp.n
    num_cand = _num_candidates(num_retries, k)
    first, u_all = _first_and_uniforms(key, w, (k, num_cand, 2))
    c0 = sparse.take_rows(sp, first[None], vals)
    d2 = _sparse_sq_dists(sp, vals, xsq, c0)[:, 0].at[first].set(0.0)
    chosen = jnp.zeros((n,), bool).at[first].set(True)
    idx = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def pick(i, carry):
        d2, chosen, idx = carry
        mass = w * d2
        drawn = _draw(u_all[i], mass)
        drawn_mass = mass[drawn]
        fallback = _unchosen_fallback(drawn_mass, chosen, w)
        cand = jnp.where(drawn_mass > 0, drawn, fallback)
        c = sparse.take_rows(sp, cand, vals)
        dc = jnp.minimum(d2[:, None], _sparse_sq_dists(sp, vals, xsq, c))
        self_d = dc[cand, jnp.arange(num_cand)]
        pot = jnp.sum(w[:, None] * dc, axis=0) - w[cand] * self_d
        best = jnp.argmin(pot)
        new = cand[best]
        d2 = lax.dynamic_index_in_dim(dc, best, axis=1, keepdims=False).at[new].set(0.0)
        return d2, chosen.at[new].set(True), idx.at[i].set(new)

    _, _, idx = lax.fori_loop(1, k, pick, (d2, chosen, idx))
    return idx


def _sparse_kmeans_parallel(key, sp, vals, xsq, w, spec: InitSpec):
    """k-means|| on sparse rows (as :func:`_kmeans_parallel`): each round's candidates
    are densified (l rows) and measured with the sparse nearest-center kernel; the
    weighted candidates are reduced to k by dense greedy k-means++."""
    opts = dict(spec.options)
    k, num_retries = spec.k, spec.num_retries
    rounds, oversampling_factor = opts["rounds"], opts["oversampling_factor"]
    n, d = sp.shape
    kernel = spec.kernel if sp.dtype == jnp.float32 else "xla"
    passes = engine.Pass(kernel=kernel, platform=spec.platform)
    per_round = max(1, min(n, max(math.ceil(oversampling_factor * k), math.ceil((k - 1) / rounds))))
    m = 1 + rounds * per_round
    key, sub = jax.random.split(key)
    first = jnp.argmax(_gumbel_scores(sub, w)).astype(jnp.int32)
    cand_idx = jnp.zeros((m,), jnp.int32).at[0].set(first)
    cand_ok = jnp.zeros((m,), bool).at[0].set(True)
    c0 = sparse.take_rows(sp, first[None], vals)
    d2 = _sparse_sq_dists(sp, vals, xsq, c0)[:, 0].at[first].set(0.0)
    near = jnp.zeros((n,), jnp.int32)

    def round_(r, carry):
        key, d2, near, cand_idx, cand_ok = carry
        key, sub = jax.random.split(key)
        scores, new_idx = lax.top_k(_gumbel_scores(sub, w * d2), per_round)
        new_ok = jnp.isfinite(scores)
        offset = 1 + r * per_round
        c = sparse.take_rows(sp, new_idx, vals)
        bias = jnp.where(new_ok, jnp.sum(c * c, axis=1), jnp.inf)
        frame = engine.Frame(jnp.zeros((d,), sp.dtype), -2.0 * c, bias)
        j, dnew = sparse.nearest(passes, sp, frame)
        better = dnew < d2
        d2 = jnp.where(better, dnew, d2)
        near = jnp.where(better, offset + j, near)
        d2 = d2.at[new_idx].set(jnp.where(new_ok, 0.0, d2[new_idx]))
        near = near.at[new_idx].set(
            jnp.where(new_ok, offset + jnp.arange(per_round, dtype=jnp.int32), near[new_idx])
        )
        cand_idx = lax.dynamic_update_slice_in_dim(cand_idx, new_idx.astype(jnp.int32), offset, 0)
        cand_ok = lax.dynamic_update_slice_in_dim(cand_ok, new_ok, offset, 0)
        return key, d2, near, cand_idx, cand_ok

    key, d2, near, cand_idx, cand_ok = lax.fori_loop(
        0, rounds, round_, (key, d2, near, cand_idx, cand_ok)
    )
    cw = jax.ops.segment_sum(w, near, num_segments=m)
    cw = jnp.where(cand_ok, cw, 0.0)
    cx = sparse.take_rows(sp, cand_idx, vals)
    sub_idx = _kmeans_pp(key, _prepare(cx, cw, SQUARED_EUCLIDEAN_DISTANCE), cw, k, num_retries)
    return cand_idx[sub_idx]


def _sparse_init(key: jax.Array, sp: SparseRows, w: jax.Array | None, spec: InitSpec) -> jax.Array:
    """:func:`init_impl` for sparse rows. Returns dense (k, d) centers."""
    k, metric = spec.k, spec.metric
    if spec.method == KMC2_INIT:
        raise ValueError(f"`method`={KMC2_INIT!r} does not support sparse `x`.")
    w = jnp.ones((sp.n,), sp.dtype) if w is None else w.astype(sp.dtype)
    w, xsq = _sparse_weights(sp, w, metric)
    vals, _ = sparse.prepared_values(sp, metric)
    if spec.method == RANDOM_INIT:
        _, idx = lax.top_k(_gumbel_scores(key, w), k)
    elif spec.method == KMEANS_PLUS_PLUS_INIT:
        idx = _sparse_kmeans_pp(key, sp, vals, xsq, w, k, spec.num_retries)
    else:
        idx = _sparse_kmeans_parallel(key, sp, vals, xsq, w, spec)
    centers = sparse.take_rows(sp, idx.astype(jnp.int32))
    if metric == COSINE_DISTANCE:
        centers = metrics.normalize_rows(centers)
    return centers


def check_method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validates ``**method_options`` for `method`, returning them with defaults filled."""
    allowed = METHOD_OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"init method {method!r} accepts options {sorted(allowed) or 'none'}; "
            f"got unexpected {unknown}."
        )
    out = {**allowed, **options}
    if method == KMC2_INIT:
        out["chain_length"] = check_positive_int(out["chain_length"], "chain_length", minimum=2)
    if method == KMEANS_PARALLEL_INIT:
        out["rounds"] = check_positive_int(out["rounds"], "rounds")
        f = out["oversampling_factor"]
        if isinstance(f, bool) or not isinstance(f, int | float) or not f > 0:
            raise ValueError(f"`oversampling_factor` must be a number > 0; got {f!r}.")
        out["oversampling_factor"] = float(f)
        out["chunk_size"] = check_positive_int(out["chunk_size"], "chunk_size", allow_none=True)
    return out


def make_init(
    method: Any,
    k: int,
    metric: str,
    num_retries: Any = -1,
    options: dict[str, Any] | None = None,
    name: str = "method",
    kernel: str = "auto",
    mesh: Any = None,
) -> InitSpec:
    """Checks an init method name, `num_retries` and the method's options. `kernel` is
    what k-means|| measures candidate distances with (``"auto"``: as
    :func:`engine.make_pass` resolves it for float32 data); `mesh`: the (engine's) mesh
    the rows are sharded over, if any (see :class:`InitSpec`)."""
    method = check_choice(method, name, INIT_METHODS, " or a (k, d) array")
    opts = check_method_options(method, dict(options or {}))
    retries = check_int(num_retries, "num_retries", "an int (negative: 2 + ln k)")
    kernel = engine.make_pass(kernel=kernel).kernel
    return InitSpec(k, method, metric, retries, tuple(sorted(opts.items())), kernel, mesh)


def _init_impl(key: jax.Array, x: jax.Array, w: jax.Array | None, spec: InitSpec) -> jax.Array:
    """Jittable core of :func:`init_centers` (no argument checks). Returns (k, d)."""
    if isinstance(x, SparseRows):
        return _sparse_init(key, x, w, spec)
    n, d = x.shape
    k, metric, opts = spec.k, spec.metric, dict(spec.options)
    if w is None:
        w = jnp.ones((n,), x.dtype)
    if spec.method == RANDOM_INIT:
        idx = _random(key, x, w, k, metric)
    else:
        # These read every row many times: rows read in place are copied here (the
        # prepared rows below are a copy anyway).
        x = dense_rows(x)
        if metric == COSINE_DISTANCE:
            # Rows are compared by direction; an all-zero row has none, never chosen.
            w = jnp.where(jnp.any(x != 0, axis=1), w, 0.0)
        w = merge_duplicates(x, w, metric)
        xp = _prepare(x, w, metric)
        if spec.method == KMEANS_PLUS_PLUS_INIT:
            native_ok = xp.dtype == jnp.float32 and spec.mesh is None
            kernel = spec.kernel if native_ok else "xla"
            idx = _kmeans_pp(key, xp, w, k, spec.num_retries, kernel, spec.platform)
        elif spec.method == KMC2_INIT:
            idx = _kmc2(key, xp, w, k, opts["chain_length"])
        else:
            idx = _kmeans_parallel(key, xp, w, spec)
    centers = take_rows(x, idx)
    if metric == COSINE_DISTANCE:
        centers = metrics.normalize_rows(centers)
    return centers


# init_impl, and for small data on CPU its quickly compiled twin (init_program(x)).
_init_programs = SizeAwareJit(_init_impl, static_argnames=("spec",))
init_impl = _init_programs.usual
init_program = _init_programs.for_data


@releases_host_copies
def init_centers(
    key: Any,
    x: Any,
    num_clusters: int,
    method: str | Any | Callable[..., Any] = KMEANS_PLUS_PLUS_INIT,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    sample_weight: Any = None,
    num_retries: int = -1,
    **method_options: Any,
) -> jax.Array:
    """Chooses `num_clusters` initial centers from the rows of `x`.

    Args:
      key: a JAX PRNG key.
      x: (n, d) float array.
      num_clusters: k, at most the number of distinct rows of `x`.
      method: ``"random"`` (k distinct rows, sampled without replacement proportionally
        to weight), ``"kmeans_plus_plus"`` (greedy k-means++), ``"kmc2"`` (k-MC^2,
        option ``chain_length=200``), ``"kmeans_parallel"`` (k-means||, options
        ``rounds=5``, ``oversampling_factor=2.0``, ``chunk_size=None``); or a (k, d)
        array (returned as is); or a callable ``f(key, x, num_clusters) -> (k, d)``.
      metric: ``"squared_euclidean"`` or ``"cosine"`` (rows are compared by direction and
        the centers returned are unit vectors).
      sample_weight: optional (n,) non-negative weights.
      num_retries: extra D^2-sampled candidates per k-means++ pick (the best is kept);
        negative means ``2 + ln k``.
      **method_options: the method's options above.

    Returns:
      (k, d) array of distinct rows of `x` (normalized for cosine).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxkmeans
      >>> x = jnp.array([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0], [10.0, 11.0]])
      >>> jaxkmeans.init_centers(jax.random.PRNGKey(0), x, 2).shape
      (2, 2)
    """
    check_key(key)
    metric = check_metric(metric)
    k = check_positive_int(num_clusters, "num_clusters")
    if sparse.is_sparse(x):
        return _sparse_init_centers(
            key, x, k, method, metric, sample_weight, num_retries, method_options
        )
    x = as_data(x, "x")
    n, d = x.shape
    if callable(method) and not isinstance(method, str):
        out = method(key, x, k)
        return _check_user_centers(out, k, d, x.dtype, metric, "the init callable's result")
    if not isinstance(method, str):
        return _check_user_centers(method, k, d, x.dtype, metric, "method")
    spec = make_init(method, k, metric, num_retries, method_options)
    w = as_weights(sample_weight, n, x.dtype)
    if not is_traced(x):
        check_enough_distinct(x, k, metric, w)
    elif n < k:
        raise ValueError(f"`num_clusters` must be <= the number of samples; got {k} > {n}.")
    if is_traced(key, x, w):
        return init_impl(key, x, w, spec)
    return init_program(x)(key, x, w, engine.on_platform(spec, x, w))  # for x's platform


def _check_user_centers(c: Any, k: int, d: int, dtype: Any, metric: str, name: str) -> jax.Array:
    c = as_centers(c, d, dtype, name)
    if c.shape[0] != k:
        raise ValueError(f"`{name}` must have num_clusters={k} rows; got shape {tuple(c.shape)}.")
    if metric == COSINE_DISTANCE:
        c = metrics.normalize_rows(c)
    return c


def _sparse_init_centers(key, x, k, method, metric, sample_weight, num_retries, options):
    """:func:`init_centers` for sparse `x` (BCOO or scipy sparse)."""
    if callable(method) and not isinstance(method, str):
        raise TypeError(
            "`method`: a callable is not supported with sparse `x`; pass a method name or an array."
        )
    sp, w, n = sparse.bucketed(x, sample_weight, None)
    if not isinstance(method, str):
        return _check_user_centers(method, k, sp.d, sp.dtype, metric, "method")
    spec = make_init(method, k, metric, num_retries, options)
    if spec.method == KMC2_INIT:
        raise ValueError(
            f"`method`={KMC2_INIT!r} does not support sparse `x`; use 'random', "
            "'kmeans_plus_plus' or 'kmeans_parallel'."
        )
    sparse_check_enough_distinct(sp, k, metric, w, rows=n)
    return init_impl(key, sp, w, spec)
