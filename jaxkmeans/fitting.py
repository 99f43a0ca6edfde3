"""Pure drivers: one Lloyd step, the whole Lloyd loop (with restarts) in one compiled
program, and the mini-batch step."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxkmeans import _native, metrics, sharding
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    as_centers,
    as_data,
    as_weights,
    check_chunk_size,
    check_enough_distinct,
    check_metric,
    check_positive_int,
    check_precision,
    is_traced,
)
from jaxkmeans.assignment import assign_prepared, inertia_impl, resolve_chunk_size
from jaxkmeans.initializers import (
    INIT_METHODS,
    KMEANS_PLUS_PLUS_INIT,
    check_method_options,
    check_num_retries,
    init_impl,
)
from jaxkmeans.state import FitResult, KMeansState, StepStats
from jaxkmeans.updates import (
    UPDATE_METHODS,
    Far,
    Stats,
    centers_from_stats,
    chunk_statistics,
    default_update_method,
    empty_far,
    farthest,
    merge_far,
    minibatch_optimizer,
    relocate_empty,
)

__all__ = [
    "lloyd_step",
    "fit",
    "minibatch_step",
    "relative_change",
    "PassStats",
    "pass_add",
    "pass_end",
    "weighted_inertia",
]


def relative_change(prev: jax.Array, loss: jax.Array) -> jax.Array:
    """TensorFlow's convergence measure ``|prev - loss| / (1 + |prev|)``."""
    return jnp.abs(prev - loss) / (1.0 + jnp.abs(prev))


def _check_update_method(
    update_method: Any,
    dtype: Any = jnp.float32,
    metric: str = "squared_euclidean",
    precision: str = "float32",
) -> str:
    """Validates `update_method` and resolves ``"auto"`` (so that ``"auto"`` and the
    method it stands for share one compiled program). ``"native"`` needs the native CPU
    kernels, float32 data, squared Euclidean and float32/tf32 precision."""
    if not isinstance(update_method, str) or update_method not in UPDATE_METHODS:
        raise ValueError(
            f"`update_method` must be one of {list(UPDATE_METHODS)}; got {update_method!r}."
        )
    if update_method == "auto":
        return default_update_method(dtype, metric, precision)
    if update_method == "native" and not _native.usable(dtype, metric, precision):
        why = _native.load_error() or (
            "it needs the CPU backend, float32 data, metric 'squared_euclidean' and "
            "precision 'float32' or 'tf32', and JAXKMEANS_NATIVE not set to 0"
        )
        raise ValueError(
            f"`update_method`='native' is not usable here (dtype {jnp.dtype(dtype).name}, "
            f"metric {metric!r}, precision {precision!r}): {why}."
        )
    return update_method


def _frame_offset(x: jax.Array, w: jax.Array | None, metric: str) -> jax.Array | None:
    """The point subtracted from the data before the Euclidean expansion (weighted mean)."""
    return metrics.data_offset(x, metric, w)


def _to_frame(centers: jax.Array, offset: jax.Array | None, metric: str) -> jax.Array:
    if metric == COSINE_DISTANCE:
        return metrics.normalize_rows(centers)
    return centers - offset[None, :]


def _from_frame(c: jax.Array, offset: jax.Array | None) -> jax.Array:
    return c if offset is None else c + offset[None, :]


def lloyd_core(x, w, c, offset, metric, chunk, precision, update_method):
    """One Lloyd iteration with centers `c` already in the data frame (x - offset)."""
    cp, bias = metrics.prepare_centers(c, metric, None)
    st = chunk_statistics(x, w, cp, bias, metric, offset, chunk, precision, update_method)
    k = c.shape[0]

    def move(args):
        far = farthest(x, w, st.labels, st.min_dist, k, metric, offset, distinct=True)
        return relocate_empty(*args, far)

    sums, counts = lax.cond(jnp.any(st.counts <= 0), move, lambda a: a, (st.sums, st.counts))
    new = centers_from_stats(sums, counts, c, metric)
    shift = jnp.sum((new - c) ** 2)
    return new, StepStats(loss=st.loss, counts=st.counts, shift=shift)


@functools.partial(jax.jit, static_argnames=("metric", "chunk", "precision", "update_method"))
def _lloyd_step_impl(x, centers, w, metric, chunk, precision, update_method):
    offset = _frame_offset(x, w, metric)
    c = _to_frame(centers, offset, metric)
    new, stats = lloyd_core(x, w, c, offset, metric, chunk, precision, update_method)
    return _from_frame(new, offset), stats


def lloyd_step(
    x: Any,
    centers: Any,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    sample_weight: Any = None,
    chunk_size: int | None = None,
    precision: str = "float32",
    update_method: str = "auto",
) -> tuple[jax.Array, StepStats]:
    """One exact Lloyd iteration: assign every row, then move each center to the
    (weighted) mean of its rows.

    Empty clusters move to the points farthest from their centers (distinct points;
    never the origin, never NaN). Cosine: rows are normalized and centers are the
    normalized means (spherical k-means).

    Args:
      x: (n, d) float array.
      centers: (k, d) float array.
      metric: ``"squared_euclidean"`` or ``"cosine"``.
      sample_weight: optional (n,) non-negative weights.
      chunk_size: rows per chunk; ``None`` picks one automatically.
      precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"`` for the distances;
        sums are always accumulated in the data dtype.
      update_method: ``"auto"``, ``"segment_sum"`` or ``"onehot"`` (how per-center sums
        are formed; ``auto`` picks by backend).

    Returns:
      ``(new_centers, StepStats(loss, counts, shift))`` where ``loss`` is the weighted
      sum of distances before the update.
    """
    metric = check_metric(metric)
    precision = check_precision(precision)
    x = as_data(x, "x")
    update_method = _check_update_method(update_method, x.dtype, metric, precision)
    centers = as_centers(centers, x.shape[1], x.dtype)
    n, d = x.shape
    w = as_weights(sample_weight, n, x.dtype)
    chunk = resolve_chunk_size(chunk_size, n, centers.shape[0], d, x.dtype)
    return _lloyd_step_impl(x, centers, w, metric, chunk, precision, update_method)


def _fit_one(
    key, x, w, init, k, metric, max_iter, tol, chunk, precision, update_method, init_opts, mesh
):
    """One k-means run from one key: initialization, Lloyd loop, final assignment.

    With a `mesh`, `x` and `w` are row-sharded: the initializers run on the sharded
    arrays as they are (the compiler partitions them; only per-row scalars such as
    weights and distances cross devices), and each Lloyd pass reduces per-device
    statistics with ``psum``.
    """
    if isinstance(init, str):
        c0 = init_impl(key, x, w, k, init, metric, **dict(init_opts))
    else:
        c0 = init
    offset = _frame_offset(x, w, metric)
    c = _to_frame(c0.astype(x.dtype), offset, metric)
    inf = jnp.array(jnp.inf, x.dtype)
    if mesh is None:
        core = functools.partial(
            lloyd_core,
            x,
            w,
            offset=offset,
            metric=metric,
            chunk=chunk,
            precision=precision,
            update_method=update_method,
        )
    else:
        core = functools.partial(
            sharding.sharded_lloyd_core,
            x,
            w,
            offset=offset,
            metric=metric,
            precision=precision,
            update_method=update_method,
            mesh=mesh,
            chunk=chunk,
        )

    def cond(carry):
        _, it, _, converged = carry
        return (it < max_iter) & ~converged

    def body(carry):
        c, it, prev, _ = carry
        new, stats = core(c)
        converged = ((it > 0) & (relative_change(prev, stats.loss) < tol)) | (stats.shift == 0)
        return new, it + 1, stats.loss, converged

    c, n_iter, _, converged = lax.while_loop(cond, body, (c, jnp.int32(0), inf, jnp.array(False)))
    if mesh is None:
        cp, bias = metrics.prepare_centers(c, metric, None)
        labels, dist = assign_prepared(
            x, cp, bias, metric, offset, chunk, precision, update_method == "native"
        )
    else:
        labels, dist = sharding.sharded_assign(
            x, c, offset, metric, precision, mesh, chunk, update_method == "native"
        )
    loss = jnp.sum(dist) if w is None else jnp.sum(w * dist)
    return FitResult(_from_frame(c, offset), labels, loss, n_iter, converged)


@functools.partial(
    jax.jit,
    static_argnames=(
        "k",
        "init_method",
        "metric",
        "n_init",
        "chunk",
        "precision",
        "update_method",
        "init_opts",
        "vectorize",
        "mesh",
    ),
)
def fit_impl(
    key,
    x,
    w,
    init_array,
    tol,
    *,
    k,
    init_method,
    metric,
    max_iter,
    n_init,
    chunk,
    precision,
    update_method,
    init_opts,
    vectorize,
    mesh=None,
):
    """Jittable core of :func:`fit` (no argument checks). With a `mesh` (whose axes are
    of type Auto), `x` and `w` are row-sharded over all its devices."""
    init = init_method if init_array is None else init_array
    run = functools.partial(
        _fit_one,
        x=x,
        w=w,
        init=init,
        k=k,
        metric=metric,
        max_iter=max_iter,
        tol=tol,
        chunk=chunk,
        precision=precision,
        update_method=update_method,
        init_opts=init_opts,
        mesh=mesh,
    )
    if n_init == 1:
        return run(key)
    keys = jax.random.split(key, n_init)
    results = jax.vmap(run)(keys) if vectorize else lax.map(run, keys)
    best = jnp.argmin(jnp.where(jnp.isnan(results.loss), jnp.inf, results.loss))
    return jax.tree_util.tree_map(lambda a: a[best], results)


def _check_tol(tol: Any, name: str = "tol") -> Any:
    if is_traced(tol):
        return tol
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating | np.integer):
        raise TypeError(f"`{name}` must be a float >= 0; got {tol!r}.")
    if not (tol >= 0):
        raise ValueError(f"`{name}` must be a float >= 0; got {tol!r}.")
    return float(tol)


def fit(
    key: Any,
    x: Any,
    num_clusters: int,
    *,
    init: str | Any = KMEANS_PLUS_PLUS_INIT,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    max_iter: int = 300,
    tol: float = 1e-4,
    n_init: int = 1,
    sample_weight: Any = None,
    chunk_size: int | None = None,
    mesh: Any = None,
    num_retries: int = -1,
    init_options: dict[str, Any] | None = None,
    precision: str = "float32",
    update_method: str = "auto",
) -> FitResult:
    """k-means by Lloyd's algorithm, entirely inside one compiled program.

    Works under ``jax.jit`` (with ``num_clusters, max_iter, n_init, metric, chunk_size``
    and a method-name ``init`` static) and under ``jax.vmap`` over keys.

    Args:
      key: a JAX PRNG key (initialization and restarts).
      x: (n, d) float array.
      num_clusters: k >= 1, at most the number of distinct rows.
      init: an init method name (``"random"``, ``"kmeans_plus_plus"``, ``"kmc2"``,
        ``"kmeans_parallel"``) or a (k, d) array of starting centers.
      metric: ``"squared_euclidean"`` or ``"cosine"`` (spherical k-means).
      max_iter: maximum number of Lloyd updates per run.
      tol: stop once ``|prev - loss| / (1 + |prev|) < tol`` (TensorFlow's rule; loss is
        measured before each update) or once the centers stop moving.
      n_init: number of restarts (different keys); the lowest final loss wins. Ignored
        (one run) when `init` is an array.
      sample_weight: optional (n,) non-negative weights.
      chunk_size: rows per chunk; ``None`` picks one automatically.
      mesh: a ``jax.sharding.Mesh``: run data-parallel over all its devices (rows
        sharded, per-device statistics psum'd, centers replicated). With several
        processes (``jax.distributed``), `x` (and `sample_weight`) are this process's
        rows, the processes may hold different numbers of rows, and ``labels`` are
        those of this process's rows; ``loss`` covers all rows.
      num_retries: k-means++ extra candidates per pick (negative: 2 + ln k).
      init_options: options of the init method (e.g. ``{"chain_length": 100}``).
      precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"`` distances.
      update_method: ``"auto"``, ``"segment_sum"`` or ``"onehot"``.

    Returns:
      ``FitResult(centers (k, d), labels (n,), loss (), n_iter (), converged ())``; the
      labels and loss are those of the returned centers.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxkmeans
      >>> x = jnp.array([[0.0], [1.0], [10.0], [11.0]])
      >>> r = jaxkmeans.fit(jax.random.PRNGKey(0), x, 2)
      >>> sorted(r.centers.ravel().tolist()), float(r.loss)
      ([0.5, 10.5], 1.0)
    """
    metric = check_metric(metric)
    precision = check_precision(precision)
    k = check_positive_int(num_clusters, "num_clusters")
    max_iter = check_positive_int(max_iter, "max_iter", minimum=0)
    n_init = check_positive_int(n_init, "n_init")
    tol = _check_tol(tol)
    if mesh is not None:
        mesh = sharding.auto_mesh(sharding.check_mesh(mesh))
    x = as_data(x, "x")
    update_method = _check_update_method(update_method, x.dtype, metric, precision)
    n, d = x.shape
    w = as_weights(sample_weight, n, x.dtype)
    init_array = None
    init_method = None
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(
                f"`init` must be one of {list(INIT_METHODS)} or a (k, d) array; got {init!r}."
            )
        init_method = init
        opts = check_method_options(init, dict(init_options or {}))
        opts["num_retries"] = check_num_retries(num_retries)
        init_opts = tuple(sorted(opts.items()))
    else:
        init_array = as_centers(init, d, x.dtype, "init")
        if init_array.shape[0] != k:
            raise ValueError(
                f"`init` must have num_clusters={k} rows; got shape {tuple(init_array.shape)}."
            )
        init_opts = ()
        n_init = 1
    multi = mesh is not None and jax.process_count() > 1
    if mesh is not None:
        xs, ws, n_total = sharding.shard_rows(x, w, mesh)
        if n_total < k:
            raise ValueError(
                f"`num_clusters` must be <= the number of samples; got {k} > {n_total}."
            )
        if not multi:  # one process holds all rows: the same checks as without a mesh
            check_enough_distinct(x, k, metric, w)
        result = fit_impl(
            key,
            xs,
            ws,
            init_array,
            jnp.asarray(tol, x.dtype),
            k=k,
            init_method=init_method,
            metric=metric,
            max_iter=np.int32(min(max_iter, 2**31 - 1)),
            n_init=n_init,
            chunk=check_chunk_size(chunk_size),
            precision=precision,
            update_method=update_method,
            init_opts=init_opts,
            vectorize=False,
            mesh=mesh,
        )
        return result._replace(labels=sharding.local_rows(result.labels, n))
    if n < k:
        raise ValueError(f"`num_clusters` must be <= the number of samples; got {k} > {n}.")
    check_enough_distinct(x, k, metric, w)
    chunk = resolve_chunk_size(chunk_size, n, k, d, x.dtype)
    vectorize = jax.default_backend() != "cpu" and n_init * n * max(d, k) <= (1 << 26)
    return fit_impl(
        key,
        x,
        w,
        init_array,
        jnp.asarray(tol, x.dtype),
        k=k,
        init_method=init_method,
        metric=metric,
        max_iter=np.int32(min(max_iter, 2**31 - 1)),  # traced: one program for all values
        n_init=n_init,
        chunk=chunk,
        precision=precision,
        update_method=update_method,
        init_opts=init_opts,
        vectorize=vectorize,
    )


def _statistics(x, w, cp, bias, metric, offset, chunk, precision, update_method, mesh):
    """One pass of per-center statistics over `x`, on one device or row-sharded over
    `mesh` (psum'd)."""
    if mesh is None:
        return chunk_statistics(x, w, cp, bias, metric, offset, chunk, precision, update_method)
    return Stats(
        *sharding.sharded_statistics(
            x, w, cp, bias, metric, offset, precision, update_method, mesh, chunk
        )
    )


def _farthest(x, w, st, k, metric, offset, mesh):
    if mesh is None:
        return farthest(x, w, st.labels, st.min_dist, k, metric, offset)
    return sharding.sharded_farthest(x, w, st.labels, st.min_dist, k, metric, offset, mesh)


@functools.partial(
    jax.jit,
    static_argnames=(
        "metric",
        "chunk",
        "precision",
        "update_method",
        "steps_per_iteration",
        "mesh",
    ),
)
def minibatch_impl(
    state,
    x,
    w,
    smoothing,
    metric,
    chunk,
    precision,
    update_method,
    steps_per_iteration,
    mesh=None,
):
    """Jittable core of :func:`minibatch_step` (no argument checks). With a `mesh`, `x`
    and `w` are row-sharded over it and the state is replicated."""
    centers = state.centers
    offset = _frame_offset(x, w, metric)
    cp, bias = metrics.prepare_centers(centers, metric, offset)
    st = _statistics(x, w, cp, bias, metric, offset, chunk, precision, update_method, mesh)
    has = st.counts > 0
    means = st.sums / jnp.where(has, st.counts, 1.0)[:, None]
    means = _from_frame(means, offset)
    grads = jnp.where(has[:, None], state.working - means, 0.0)
    opt = minibatch_optimizer()
    opt_state = opt.init(state.working)._replace(counts=state.counts)
    updates, opt_state = opt.update(grads, opt_state, state.working, batch_counts=st.counts)
    working = optax.apply_updates(state.working, updates)
    if metric == COSINE_DISTANCE:
        working = jnp.where(has[:, None], metrics.normalize_rows(working), state.working)
    counts = opt_state.counts
    step = state.step + 1
    if steps_per_iteration > 1:
        sync = step % steps_per_iteration == 0
        centers = jnp.where(sync, working, centers)
        counts = jnp.where(sync, jnp.zeros_like(counts), counts)
    else:
        centers = working
    total_w = jnp.asarray(x.shape[0], x.dtype) if w is None else jnp.sum(w)
    per_point = st.loss / total_w
    old = state.smoothed_loss
    alpha = jnp.asarray(1.0 if smoothing is None else smoothing, x.dtype)
    smoothed = jnp.where(jnp.isnan(old), per_point, old * (1 - alpha) + per_point * alpha)
    new_state = state.replace(
        centers=centers,
        counts=counts,
        step=step,
        loss=st.loss,
        working=working,
        prev_loss=old,
        smoothed_loss=smoothed,
    )
    return new_state, st.loss


def minibatch_step(
    state: KMeansState,
    batch: Any,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    sample_weight: Any = None,
    steps_per_iteration: int = 1,
    smoothing: float | None = None,
    chunk_size: int | None = None,
    precision: str = "float32",
    update_method: str = "auto",
) -> tuple[KMeansState, jax.Array]:
    """One mini-batch k-means update (scikit-learn's MiniBatchKMeans rule).

    The batch is assigned to ``state.centers``; each center the batch touches moves to
    ``(c * counts + batch_sums) / (counts + batch_counts)`` (per-center learning rate
    batch_count / cumulative_count, counts starting at 0), via
    :func:`jaxkmeans.minibatch_optimizer`. Cosine: rows are normalized and updated
    centers renormalized.

    Args:
      state: a :class:`KMeansState`.
      batch: (b, d) float array.
      metric: ``"squared_euclidean"`` or ``"cosine"``.
      sample_weight: optional (b,) non-negative weights.
      steps_per_iteration: s >= 1. With s > 1 the updates go to ``state.working`` and at
        the end of every s-th step it becomes ``state.centers`` and the counts restart
        from 0.
      smoothing: weight alpha of the new per-point batch loss in ``state.smoothed_loss``
        (exponential average); None means no smoothing (alpha = 1).
      chunk_size, precision, update_method: as in :func:`lloyd_step`.

    Returns:
      ``(new_state, loss)``: the batch's weighted sum of distances before the update.
    """
    if not isinstance(state, KMeansState):
        raise TypeError(f"`state` must be a KMeansState; got {type(state).__name__}.")
    metric = check_metric(metric)
    precision = check_precision(precision)
    steps_per_iteration = check_positive_int(steps_per_iteration, "steps_per_iteration")
    k, d = state.centers.shape
    x = as_data(batch, "batch")
    if x.shape[1] != d:
        raise ValueError(
            f"`batch` must have {d} columns to match the centers; got shape {tuple(x.shape)}."
        )
    x = x.astype(state.centers.dtype)
    update_method = _check_update_method(update_method, x.dtype, metric, precision)
    w = as_weights(sample_weight, x.shape[0], x.dtype)
    if smoothing is not None and not is_traced(smoothing):
        if not 0 < float(smoothing) <= 1:
            raise ValueError(f"`smoothing` must be in (0, 1]; got {smoothing!r}.")
    chunk = resolve_chunk_size(chunk_size, x.shape[0], k, d, x.dtype)
    return minibatch_impl(
        state, x, w, smoothing, metric, chunk, precision, update_method, steps_per_iteration
    )


# --------------------------------------------------------------------------- streaming


class PassStats(NamedTuple):
    """Statistics of a full-batch pass accumulated over host batches."""

    sums: jax.Array  # (k, d) in the frame of the pass's centers (x - offset)
    counts: jax.Array  # (k,)
    loss: jax.Array  # ()
    far: Far  # farthest points so far, for empty clusters


@functools.partial(
    jax.jit, static_argnames=("metric", "chunk", "precision", "update_method", "mesh")
)
def _pass_add_impl(acc, centers, origin, x, w, metric, chunk, precision, update_method, mesh):
    k, d = centers.shape
    offset = None if metric == COSINE_DISTANCE else origin
    cp, bias = metrics.prepare_centers(centers, metric, offset)
    st = _statistics(x, w, cp, bias, metric, offset, chunk, precision, update_method, mesh)
    far = _farthest(x, w, st, k, metric, offset, mesh)
    if acc is None:
        acc = PassStats(
            jnp.zeros((k, d), x.dtype),
            jnp.zeros((k,), x.dtype),
            jnp.zeros((), x.dtype),
            empty_far(k, d, x.dtype),
        )
    return PassStats(
        acc.sums + st.sums, acc.counts + st.counts, acc.loss + st.loss, merge_far(acc.far, far, k)
    )


def pass_add(
    acc: PassStats | None,
    centers: jax.Array,
    origin: jax.Array,
    x: jax.Array,
    w: jax.Array | None = None,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    chunk: int,
    precision: str = "float32",
    update_method: str = "auto",
    mesh: Any = None,
) -> PassStats:
    """Adds one batch (already checked) to a full-batch pass at `centers`; `origin`
    (d,) is the frame the sums are taken in (``KMeansState.origin``).

    Summing the statistics of every batch of a pass and then calling :func:`pass_end`
    gives exactly one Lloyd iteration over all the batches, so data larger than device
    memory streams through. With a `mesh` (Auto axes), `x` and `w` are row-sharded
    over it (see :func:`jaxkmeans.sharding.shard_rows`).
    """
    update_method = _check_update_method(update_method, x.dtype, metric, precision)
    return _pass_add_impl(acc, centers, origin, x, w, metric, chunk, precision, update_method, mesh)


@functools.partial(jax.jit, static_argnames=("metric",))
def _pass_end_impl(acc, centers, origin, metric):
    offset = None if metric == COSINE_DISTANCE else origin
    c = _to_frame(centers, offset, metric)
    sums, counts = lax.cond(
        jnp.any(acc.counts <= 0),
        lambda a: relocate_empty(*a, acc.far),
        lambda a: a,
        (acc.sums, acc.counts),
    )
    new = centers_from_stats(sums, counts, c, metric)
    shift = jnp.sum((new - c) ** 2)
    return _from_frame(new, offset), StepStats(loss=acc.loss, counts=acc.counts, shift=shift)


def pass_end(
    acc: PassStats,
    centers: jax.Array,
    origin: jax.Array,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
) -> tuple[jax.Array, StepStats]:
    """Finishes a pass: new centers (empty clusters relocated) and the pass's stats."""
    return _pass_end_impl(acc, centers, origin, metric)


def weighted_inertia(
    x: jax.Array,
    centers: jax.Array,
    w: jax.Array | None = None,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    chunk: int,
    precision: str = "float32",
) -> jax.Array:
    """Summed (weighted) distance of already-checked rows to their nearest center
    (:func:`jaxkmeans.inertia` without the argument checks)."""
    native = _native.usable(x.dtype, metric, precision)
    return inertia_impl(x, centers, w, metric, chunk, precision, native)
