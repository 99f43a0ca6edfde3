"""Pure drivers: one Lloyd step, the whole Lloyd loop (with restarts) in one compiled
program, the mini-batch step, and the full-batch pass over batches the estimator runs.

Every Lloyd iteration in every mode is :func:`jaxkmeans.engine.lloyd_update` (or the
engine's batch statistics, merged, then :func:`jaxkmeans.engine.finish`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxkmeans import engine, kernels, metrics, sharding
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    SizeAwareJit,
    as_bucketed,
    as_centers,
    as_data,
    as_weights,
    check_enough_distinct,
    check_key,
    check_non_negative,
    check_positive_int,
    is_traced,
    real_rows,
    releases_host_copies,
)
from jaxkmeans.initializers import (
    KMC2_INIT,
    KMEANS_PLUS_PLUS_INIT,
    InitSpec,
    init_impl,
    make_init,
    sparse_check_enough_distinct,
)
from jaxkmeans.kernels import sparse
from jaxkmeans.state import FitResult, KMeansState, StepStats
from jaxkmeans.updates import minibatch_optimizer

__all__ = [
    "lloyd_step",
    "fit",
    "minibatch_step",
    "relative_change",
    "FitSpec",
    "fit_impl",
    "lloyd_run",
    "minibatch_impl",
    "pass_add",
    "pass_end",
]

STOP_RULES = ("loss", "shift")


def relative_change(prev: jax.Array, loss: jax.Array) -> jax.Array:
    """TensorFlow's convergence measure ``|prev - loss| / (1 + |prev|)``."""
    return jnp.abs(prev - loss) / (1.0 + jnp.abs(prev))


# ------------------------------------------------------------------------ lloyd_step


@functools.partial(jax.jit, static_argnames=("spec",))
def _lloyd_step_impl(x, centers, w, spec: engine.Pass):
    origin = engine.origin(spec, x, w)
    return engine.lloyd_update(spec, x, w, centers, origin)


@releases_host_copies
def lloyd_step(
    x: Any,
    centers: Any,
    *,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    sample_weight: Any = None,
    chunk_size: int | None = None,
    precision: str = "float32",
    kernel: str = "auto",
    update_method: str | None = None,
    pad_rows: bool | None = None,
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
      kernel: ``"auto"`` (the native kernel where the program runs on CPU and it
        applies, else XLA), ``"xla"`` or ``"native"``: what computes nearest centers
        and per-center sums.
      update_method: deprecated alias: ``"segment_sum"`` / ``"onehot"`` mean the XLA
        kernel forming sums that way, ``"native"``/``"auto"`` as `kernel`.
      pad_rows: pad the rows to a size bucket with zero-weight rows so that nearby
        sizes share one compiled program (results unchanged): None (default) when the
        padded copy is at most 2^24 elements, True always, False never.

    Returns:
      ``(new_centers, StepStats(loss, counts, shift))`` where ``loss`` is the weighted
      sum of distances before the update.

    Examples:
      >>> import jax.numpy as jnp, jaxkmeans
      >>> x = jnp.array([[0.0], [1.0], [10.0], [12.0]])
      >>> centers, stats = jaxkmeans.lloyd_step(x, jnp.array([[0.0], [10.0]]))
      >>> centers.tolist(), float(stats.loss), stats.counts.tolist()
      ([[0.5], [11.0]], 5.0, [2.0, 2.0])
    """
    if sparse.is_sparse(x):
        x, w, _ = sparse.bucketed(x, sample_weight, pad_rows)
    else:
        x, w, _ = as_bucketed(x, sample_weight, pad_rows)
    spec = engine.make_pass(
        metric,
        precision=precision,
        chunk_size=chunk_size,
        kernel=kernel,
        update_method=update_method,
        dtype=x.dtype,
    )
    spec = engine.on_platform(spec, x, w)  # compiled for x's platform only
    centers = as_centers(centers, x.shape[1], x.dtype)
    return _lloyd_step_impl(x, centers, w, spec)


# ------------------------------------------------------------------------------- fit


@dataclasses.dataclass(frozen=True)
class FitSpec:
    """The static description of a whole fit (one compiled program).

    Attributes:
      k: number of clusters.
      init: an :class:`~jaxkmeans.initializers.InitSpec`, or None when starting centers
        are given.
      n_init: restarts (different keys); the lowest final loss wins.
      vectorize: run the restarts with ``vmap`` (else one after another).
      stop: ``"loss"`` (TF's relative loss change ``< tol``, or a fixed point) or
        ``"shift"`` (scikit-learn's: total squared center shift ``<= tol``).
      passes: the :class:`~jaxkmeans.engine.Pass` every Lloyd pass runs with.
    """

    k: int
    init: InitSpec | None
    n_init: int
    vectorize: bool
    stop: str
    passes: engine.Pass


def _converged(stop: str, it, prev, stats: StepStats, tol) -> jax.Array:
    if stop == "shift":
        return stats.shift <= tol
    return ((it > 0) & (relative_change(prev, stats.loss) < tol)) | (stats.shift == 0)


def _fit_one(key, x, w, init, tol, max_iter, spec: FitSpec) -> FitResult:
    """One k-means run from one key: initialization, Lloyd loop, final assignment.

    With a mesh, `x` and `w` are row-sharded: the initializers run on the sharded arrays
    as they are (the compiler partitions them; only per-row scalars such as weights and
    distances cross devices), and each Lloyd pass reduces per-device statistics.
    """
    passes = spec.passes
    c = init if spec.init is None else init_impl(key, x, w, spec.init)
    if passes.metric == COSINE_DISTANCE:
        c = metrics.normalize_rows(c)
    origin = engine.origin(passes, x, w)

    def cond(carry):
        _, it, _, converged = carry
        return (it < max_iter) & ~converged

    def body(carry):
        c, it, prev, _ = carry
        new, stats = engine.lloyd_update(passes, x, w, c, origin)
        return new, it + 1, stats.loss, _converged(spec.stop, it, prev, stats, tol)

    inf = jnp.array(jnp.inf, x.dtype)
    carry = (c, jnp.int32(0), inf, jnp.array(False))
    c, n_iter, _, converged = lax.while_loop(cond, body, carry)
    labels, dist = engine.nearest(passes, x, engine.frame_of(c, origin, passes.metric))
    loss = jnp.sum(dist) if w is None else jnp.sum(w * dist)
    return FitResult(c, labels, loss, n_iter, converged)


@functools.partial(jax.jit, static_argnames=("spec",))
def fit_impl(key, x, w, init, tol, max_iter, spec: FitSpec) -> FitResult:
    """Jittable core of :func:`fit` (no argument checks). `init` is the (k, d) starting
    centers when ``spec.init`` is None (else ignored); with a mesh in ``spec.passes``
    (Auto axes), `x` and `w` are row-sharded over all its devices."""
    run = functools.partial(_fit_one, x=x, w=w, init=init, tol=tol, max_iter=max_iter, spec=spec)
    if spec.n_init == 1:
        return run(key)
    keys = jax.random.split(key, spec.n_init)
    results = jax.vmap(run)(keys) if spec.vectorize else lax.map(run, keys)
    best = jnp.argmin(jnp.where(jnp.isnan(results.loss), jnp.inf, results.loss))
    return jax.tree_util.tree_map(lambda a: a[best], results)


# ------------------------------------------------------------ host-stepped Lloyd loop
#
# The same iterations as fit_impl, in programs that leave out the empty-cluster
# relocation (most of a Lloyd program's compile time) until a pass actually leaves a
# cluster empty: only then is the relocating finish compiled and run, from the host,
# on that pass's statistics (the pass is not run again).


def _run_start(key, x, w, init, spec: FitSpec):
    """Starting centers and the frame origin of one run."""
    c = init if spec.init is None else init_impl(key, x, w, spec.init)
    if spec.passes.metric == COSINE_DISTANCE:
        c = metrics.normalize_rows(c)
    return c, engine.origin(spec.passes, x, w)


@functools.partial(jax.jit, static_argnames=("spec",))
def _run_until_empty(x, w, c, origin, it, prev, tol, max_iter, spec: FitSpec):
    """Lloyd iterations (as in :func:`_fit_one`) until `max_iter`, convergence, or a
    pass that leaves a cluster empty: that pass's update is not made (``needs``), and
    its statistics, labels and distances are returned for
    :func:`_run_relocating_finish` (so that the pass is not run twice)."""
    passes = spec.passes
    n = x.shape[0]
    k, d = c.shape

    def cond(carry):
        _, it, _, converged, needs, _ = carry
        return (it < max_iter) & ~converged & ~needs

    def body(carry):
        c, it, prev, converged, _, _ = carry
        frame = engine.frame_of(c, origin, passes.metric)
        st, labels, dist = engine.lloyd_pass(passes, x, w, frame, relocate=False)
        empty = jnp.any(st.counts <= 0)
        new, stats = engine.finish(passes.metric, c, origin, st, relocate=False)
        done = _converged(spec.stop, it, prev, stats, tol)
        old, now = (c, it, prev, converged), (new, it + 1, stats.loss, done)
        kept = jax.tree_util.tree_map(lambda a, b: jnp.where(empty, a, b), old, now)
        return (*kept, empty, (st.sums, st.counts, st.loss, labels, dist))

    last = (
        jnp.zeros((k, d), c.dtype),
        jnp.zeros((k,), c.dtype),
        jnp.zeros((), c.dtype),
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), c.dtype),
    )
    carry = (c, it, prev, jnp.array(False), jnp.array(False), last)
    return lax.while_loop(cond, body, carry)


@functools.partial(jax.jit, static_argnames=("spec",))
def _run_relocating_finish(x, w, c, origin, it, prev, tol, last, spec: FitSpec):
    """The update of the pass that left a cluster empty (`last`: its sums, counts,
    loss, labels and distances from :func:`_run_until_empty`), with empty clusters
    relocated: the rest of the body of :func:`_fit_one` for that pass (its candidates
    and finish), the same arithmetic as ``engine.lloyd_update``."""
    passes = spec.passes
    sums, counts, loss, labels, dist = last
    far, rows = engine.candidates(passes, x, w, labels, dist, origin, spec.k)
    st = engine.PassStats(sums, counts, loss, far, rows)
    new, stats = engine.finish(passes.metric, c, origin, st)
    return new, it + 1, stats.loss, _converged(spec.stop, it, prev, stats, tol)


@functools.partial(jax.jit, static_argnames=("spec",))
def _run_end(x, w, c, origin, spec: FitSpec):
    """Labels, distances and loss of the final centers."""
    passes = spec.passes
    labels, dist = engine.nearest(passes, x, engine.frame_of(c, origin, passes.metric))
    return labels, dist, jnp.sum(dist) if w is None else jnp.sum(w * dist)


# For small data the start (the initializer: most of a first fit's compile time) is
# compiled quickly (:func:`jaxkmeans._validation.fast_compile`). The Lloyd programs are
# not: XLA's unoptimized code rounds some float operations differently, and the
# iterations must stay bit-identical to :func:`fit_impl`'s (a fit under jit).
_run_start_programs = SizeAwareJit(_run_start, static_argnames=("spec",))


def _run_one(key, x, w, init, tol, max_iter: int, spec: FitSpec) -> tuple[FitResult, Any]:
    """One run of :func:`lloyd_run`; returns its result and the rows' distances."""
    c, origin = _run_start_programs.for_data(x)(key, x, w, init, spec)
    # Host scalars: a device scalar made by jnp compiles a program of its own.
    it, prev = np.int32(0), np.asarray(np.inf, x.dtype)
    converged = np.bool_(False)
    while True:
        c, it, prev, converged, needs, last = _run_until_empty(
            x, w, c, origin, it, prev, tol, np.int32(max_iter), spec
        )
        if not bool(needs):
            break
        c, it, prev, converged = _run_relocating_finish(x, w, c, origin, it, prev, tol, last, spec)
        del last
        if bool(converged) or int(it) >= max_iter:
            break
    labels, dist, loss = _run_end(x, w, c, origin, spec)
    return FitResult(c, labels, loss, it, converged), dist


def lloyd_run(key, x, w, init, tol, max_iter: int, spec: FitSpec, distances: bool = False) -> Any:
    """:func:`fit_impl` driven from the host (not under jit): the same iterations and
    result, compiled as a few smaller programs (initialization, Lloyd iterations without
    the empty-cluster relocation, the final assignment); the step that relocates empty
    clusters is compiled only when some pass needs it. Restarts run one after another
    (the keys :func:`fit_impl` uses; the lowest final loss wins, the first on ties).

    With `distances`, returns ``(result, distances)``: also each row's distance to its
    center (from the final assignment; no pass of its own)."""
    spec = engine.on_platform(spec, x, w)  # compiled here: for x's platform only
    if spec.n_init == 1:
        best = _run_one(key, x, w, init, tol, max_iter, spec)
    else:
        keys = jax.random.split(key, spec.n_init)
        runs = [_run_one(k, x, w, init, tol, max_iter, spec) for k in keys]
        losses = np.array([float(r.loss) for r, _ in runs])
        best = runs[int(np.argmin(np.where(np.isnan(losses), np.inf, losses)))]
    return best if distances else best[0]


@releases_host_copies
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
    kernel: str = "auto",
    update_method: str | None = None,
    pad_rows: bool | None = None,
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
      kernel, update_method, pad_rows: as in :func:`lloyd_step` (no padding with a
        mesh).

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
    check_key(key)
    k = check_positive_int(num_clusters, "num_clusters")
    max_iter = check_positive_int(max_iter, "max_iter", minimum=0)
    n_init = check_positive_int(n_init, "n_init")
    tol = check_non_negative(tol, "tol")
    is_sparse = sparse.is_sparse(x)
    if is_sparse:
        if mesh is not None:
            raise ValueError("`mesh` is not supported with sparse `x`; got a mesh.")
        x, w, n = sparse.bucketed(x, sample_weight, pad_rows)
    else:
        # Without a mesh, host rows the CPU device would copy are read in place
        # (InPlaceRows) where the passes' native kernels can (see below).
        x, w, n = as_bucketed(
            x, sample_weight, False if mesh is not None else pad_rows, in_place=mesh is None
        )
    d = x.shape[1]
    passes = engine.make_pass(
        metric,
        precision=precision,
        chunk_size=chunk_size,
        kernel=kernel,
        update_method=update_method,
        mesh=mesh,
        dtype=x.dtype,
    )
    if isinstance(init, str):
        kernel = passes.kernel if passes.mesh is None else "xla"  # native would gather rows
        # On a mesh the initializer works on each device's rows (see InitSpec.mesh):
        # no row is gathered to every device (tests/test_sharding.py checks the program).
        init_spec = make_init(
            init, k, passes.metric, num_retries, init_options, "init", kernel, passes.mesh
        )
        if is_sparse and init_spec.method == KMC2_INIT:
            raise ValueError(
                f"`init`={KMC2_INIT!r} does not support sparse `x`; use 'random', "
                "'kmeans_plus_plus' or 'kmeans_parallel'."
            )
        init_array = None
    else:
        init_spec, init_array, n_init = None, as_centers(init, d, x.dtype, "init"), 1
        if init_array.shape[0] != k:
            raise ValueError(
                f"`init` must have num_clusters={k} rows; got shape {tuple(init_array.shape)}."
            )
    if passes.mesh is None or jax.process_count() == 1:
        # One process holds all rows: the distinct-point check (skipped under jit).
        if is_sparse:
            sparse_check_enough_distinct(x, k, passes.metric, w, rows=n)
        else:
            check_enough_distinct(x, k, passes.metric, w, rows=n)
    vectorize = (
        passes.mesh is None
        and jax.default_backend() != "cpu"
        and n_init * x.shape[0] * max(d, k) <= 1 << 26
    )
    spec = FitSpec(k, init_spec, n_init, vectorize, "loss", passes)
    tol_array = np.asarray(tol, x.dtype)  # a host scalar: jnp would compile a program
    max_iter = min(max_iter, 2**31 - 1)
    # Driven from the host (smaller programs) unless traced (under the user's jit or
    # vmap), with vectorized restarts, or over several processes.
    stepped = not (vectorize or is_traced(key, x, w, init_array)) and jax.process_count() == 1
    x = kernels.readable_rows(passes, x, in_place=stepped)

    def run(x, w):
        if stepped:
            # Driven from the host anyway: waiting for the last program too lets the
            # copy of host data go as fit returns (see release_host_copies).
            return jax.block_until_ready(
                lloyd_run(key, x, w, init_array, tol_array, max_iter, spec)
            )
        return fit_impl(key, x, w, init_array, tol_array, np.int32(max_iter), spec)

    if passes.mesh is None:
        result = run(x, w)
        return result._replace(labels=real_rows(result.labels, n))
    xs, ws, n_total = sharding.shard_rows(x, w, passes.mesh)
    if n_total < k:
        raise ValueError(f"`num_clusters` must be <= the number of samples; got {k} > {n_total}.")
    result = run(xs, ws)
    return result._replace(labels=sharding.local_rows(result.labels, n))


# ------------------------------------------------------------------------ mini-batch


def _apply_updates(params: jax.Array, updates: jax.Array) -> jax.Array:
    import optax  # imported on first use (see updates.minibatch_optimizer)

    return optax.apply_updates(params, updates)


@functools.partial(jax.jit, static_argnames=("spec", "steps_per_iteration"))
def minibatch_impl(state, x, w, smoothing, spec: engine.Pass, steps_per_iteration: int):
    """Jittable core of :func:`minibatch_step` (no argument checks). With a mesh in
    `spec`, `x` and `w` are row-sharded over it and the state is replicated."""
    origin = engine.origin(spec, x, w)
    frame = engine.frame_of(state.centers, origin, spec.metric)
    sums, counts, loss, _, _ = engine.statistics(spec, x, w, frame)
    has = counts > 0
    means = engine.from_frame(sums / jnp.where(has, counts, 1.0)[:, None], origin)
    grads = jnp.where(has[:, None], state.working - means, 0.0)
    opt = minibatch_optimizer()
    updates, opt_state = opt.update(grads, state.opt_state, state.working, batch_counts=counts)
    working = _apply_updates(state.working, updates)
    if spec.metric == COSINE_DISTANCE:
        working = jnp.where(has[:, None], metrics.normalize_rows(working), state.working)
    step = state.step + 1
    centers = working
    if steps_per_iteration > 1:
        sync = step % steps_per_iteration == 0
        centers = jnp.where(sync, working, state.centers)
        opt_state = jax.tree_util.tree_map(
            lambda fresh, kept: jnp.where(sync, fresh, kept), opt.init(working), opt_state
        )
    total_w = jnp.asarray(x.shape[0], x.dtype) if w is None else jnp.sum(w)
    per_point = loss / total_w
    old = state.smoothed_loss
    alpha = jnp.asarray(1.0 if smoothing is None else smoothing, x.dtype)
    smoothed = jnp.where(jnp.isnan(old), per_point, old * (1 - alpha) + per_point * alpha)
    new_state = state.replace(
        centers=centers,
        opt_state=opt_state,
        step=step,
        loss=loss,
        working=working,
        prev_loss=old,
        smoothed_loss=smoothed,
    )
    return new_state, loss


@releases_host_copies
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
    kernel: str = "auto",
    update_method: str | None = None,
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
      chunk_size, precision, kernel, update_method: as in :func:`lloyd_step`.

    Returns:
      ``(new_state, loss)``: the batch's weighted sum of distances before the update.

    Examples:
      >>> import jax.numpy as jnp, jaxkmeans
      >>> state = jaxkmeans.KMeansState.create(jnp.array([[0.0], [10.0]]))
      >>> state, loss = jaxkmeans.minibatch_step(state, jnp.array([[1.0], [12.0]]))
      >>> state.centers.tolist(), float(loss)  # counts were 0: centers jump to the rows
      ([[1.0], [12.0]], 5.0)
      >>> state, loss = jaxkmeans.minibatch_step(state, jnp.array([[3.0], [9.0]]))
      >>> state.centers.tolist(), state.counts.tolist()  # learning rate 1/2 now
      ([[2.0], [10.5]], [2.0, 2.0])
    """
    if not isinstance(state, KMeansState):
        raise TypeError(f"`state` must be a KMeansState; got {type(state).__name__}.")
    steps_per_iteration = check_positive_int(steps_per_iteration, "steps_per_iteration")
    k, d = state.centers.shape
    x = as_data(batch, "batch")
    if x.shape[1] != d:
        raise ValueError(
            f"`batch` must have {d} columns to match the centers; got shape {tuple(x.shape)}."
        )
    x = x.astype(state.centers.dtype)
    spec = engine.make_pass(
        metric,
        precision=precision,
        chunk_size=chunk_size,
        kernel=kernel,
        update_method=update_method,
        dtype=x.dtype,
    )
    w = as_weights(sample_weight, x.shape[0], x.dtype)
    if not is_traced(smoothing):
        spec = engine.on_platform(spec, x, w, state.centers)  # for their platform only
    if smoothing is not None and not is_traced(smoothing):
        if not 0 < float(smoothing) <= 1:
            raise ValueError(f"`smoothing` must be in (0, 1]; got {smoothing!r}.")
    return minibatch_impl(state, x, w, smoothing, spec, steps_per_iteration)


# ------------------------------------------------------------- full batch over batches


@functools.partial(jax.jit, static_argnames=("spec",))
def pass_add(acc, centers, origin, x, w, spec: engine.Pass) -> engine.PassStats:
    """Adds one (checked) batch to a full-batch pass at `centers`; `origin` (d,) is the
    frame the sums are taken in (``KMeansState.origin``); `acc` None starts the pass.

    Summing the statistics of every batch of a pass and then calling :func:`pass_end`
    gives exactly one Lloyd iteration over all the batches (the candidates for empty
    clusters are merged across batches and stay distinct), so data larger than device
    memory streams through. With a mesh in `spec`, `x` and `w` are row-sharded.
    """
    origin = None if spec.metric == COSINE_DISTANCE else origin
    return engine.merge(
        acc, engine.batch_pass(spec, x, w, engine.frame_of(centers, origin, spec.metric))
    )


@functools.partial(jax.jit, static_argnames=("metric",))
def pass_end(acc: engine.PassStats, centers, origin, metric: str):
    """Finishes a pass: new centers (empty clusters relocated) and the pass's stats."""
    origin = None if metric == COSINE_DISTANCE else origin
    return engine.finish(metric, centers, origin, acc)
