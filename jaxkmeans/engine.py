"""The engine: one description of a compiled pass, its statistics and the one Lloyd finish.

A :class:`Pass` (metric, precision, chunk size, kernel, mesh) is made once on the host
by :func:`make_pass` from the user's arguments; it is frozen and hashable, so it is the
static part of every jitted program. The block size is not part of it: each kernel picks
its block for the platform the program is lowered for.

Every mode runs the same pieces:

- :func:`statistics`: nearest centers and per-center sums of one set of rows (the one
  place that branches on the mesh: without one the kernels run on all rows; with one
  they run per device inside ``shard_map`` and ``psum`` combines the sums);
- :func:`candidates`: the distinct points farthest from their centers, which empty
  clusters move to (per device, then gathered and merged with a mesh);
- :func:`finish`: the one Lloyd finish (empty clusters -> distinct farthest points, new
  centers, shift) called by ``lloyd_step``, ``fit``, ``fit(mesh=...)``, the estimator's
  full-batch pass over batches and the scikit-learn drop-in.

Centers inside the engine live in the *frame* of the data: ``c - origin`` for squared
Euclidean (the origin from :func:`jaxkmeans.metrics.frame_origin`) and unit rows for
cosine.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxkmeans import kernels, metrics, updates
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    InPlaceRows,
    check_choice,
    check_mesh,
    check_metric,
    check_positive_int,
    check_precision,
)
from jaxkmeans.kernels import sparse as sparse_kernels
from jaxkmeans.kernels.sparse import SparseRows
from jaxkmeans.state import StepStats
from jaxkmeans.updates import Far

__all__ = [
    "Pass",
    "make_pass",
    "Frame",
    "prepare",
    "to_frame",
    "from_frame",
    "PassStats",
    "statistics",
    "nearest",
    "candidates",
    "lloyd_pass",
    "batch_pass",
    "merge",
    "finish",
    "frame_of",
    "lloyd_update",
    "origin",
]

# Deprecated `update_method` values -> (kernel, how the XLA kernel forms sums).
_UPDATE_METHODS = {
    "auto": ("auto", "auto"),
    "native": ("native", "auto"),
    "segment_sum": ("xla", "segment_sum"),
    "onehot": ("xla", "onehot"),
}


@dataclasses.dataclass(frozen=True)
class Pass:
    """What a compiled pass over rows needs to know, besides the arrays.

    Attributes:
      metric: ``"squared_euclidean"`` or ``"cosine"``.
      precision: ``"float32"``, ``"tf32"`` or ``"bfloat16"`` distance products.
      chunk: rows per block (per device), or None: chosen by each kernel for the
        platform the program is lowered for.
      kernel: ``"native"`` (the C++ kernel where the program runs on CPU, XLA
        elsewhere), ``"pallas"`` (the fused Pallas kernels on GPU and TPU, interpret
        mode on CPU) or ``"xla"`` (the XLA kernel everywhere).
      sums: how the XLA kernel forms per-center sums: ``"auto"`` (scatter-add on CPU, a
        one-hot matmul on GPU/TPU), ``"segment_sum"`` or ``"onehot"``.
      mesh: a ``jax.sharding.Mesh`` with Auto axes to run data-parallel over (rows split
        over all its devices), or None.
      platform: ``"cpu"`` when the caller knows that the program is lowered for CPU
        only (:func:`on_platform`): only the CPU branch of each kernel is traced,
        which saves a first call the tracing of every other platform's branch; None:
        every branch, chosen by ``lax.platform_dependent`` when lowered. The program
        computes the same either way where it runs on CPU.
    """

    metric: str = SQUARED_EUCLIDEAN_DISTANCE
    precision: str = "float32"
    chunk: int | None = None
    kernel: str = "xla"
    sums: str = "auto"
    mesh: Mesh | None = None
    platform: str | None = None

    @property
    def axes(self) -> tuple[str, ...]:
        """The mesh axes rows are split over (all of them)."""
        return () if self.mesh is None else tuple(self.mesh.axis_names)


def on_platform(spec: Any, *arrays: Any) -> Any:
    """`spec` (a :class:`Pass`, or a dataclass with :class:`Pass` and
    :class:`~jaxkmeans.initializers.InitSpec` fields, such as ``FitSpec``) with
    ``platform="cpu"`` where every array of `arrays` is a concrete device array on CPU
    devices only: the caller then compiles the program for CPU, and only the CPU
    branches are traced. Unchanged otherwise (under a trace, a host array, another
    platform)."""
    present = [a.flat if isinstance(a, InPlaceRows) else a for a in arrays if a is not None]
    on_cpu = all(
        isinstance(a, jax.Array)
        and not isinstance(a, jax.core.Tracer)
        and all(getattr(dev, "platform", None) == "cpu" for dev in a.sharding.device_set)
        for a in present
    )
    return _with_platform(spec, "cpu") if on_cpu and present else spec


def _with_platform(spec: Any, platform: str) -> Any:
    if not dataclasses.is_dataclass(spec) or isinstance(spec, type):
        return spec
    changes: dict[str, Any] = {
        f.name: _with_platform(getattr(spec, f.name), platform)
        for f in dataclasses.fields(spec)
        if dataclasses.is_dataclass(getattr(spec, f.name))
    }
    if "platform" in {f.name for f in dataclasses.fields(spec)}:
        changes["platform"] = platform
    return dataclasses.replace(spec, **changes)


def _auto_mesh(mesh: Mesh) -> Mesh:
    """The same devices and axis names with every axis of type Auto, so that the
    compiler may partition the (non-shard_map) parts of a program over it."""
    auto = jax.sharding.AxisType.Auto
    if all(t == auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(mesh.axis_names))


def make_pass(
    metric: Any = SQUARED_EUCLIDEAN_DISTANCE,
    *,
    precision: Any = "float32",
    chunk_size: Any = None,
    kernel: Any = "auto",
    update_method: Any = None,
    mesh: Any = None,
    dtype: Any = jnp.float32,
) -> Pass:
    """Checks the user's arguments and resolves them into a :class:`Pass`.

    ``kernel="auto"`` becomes ``"native"`` where the native CPU kernel serves this work
    (float32, squared Euclidean, float32/tf32 precision, built and enabled), else
    ``"xla"``; an explicit ``"native"`` that cannot serve it is a ValueError. The Pallas
    GPU/TPU kernels are opt-in (``kernel="pallas"``) until they are measured on a
    device; ``"auto"`` does not choose them yet.
    `update_method` is the deprecated spelling (``"segment_sum"``/``"onehot"`` mean
    the XLA kernel with that way of forming sums).
    """
    metric = check_metric(metric)
    precision = check_precision(precision)
    chunk = check_positive_int(chunk_size, "chunk_size", allow_none=True)
    sums = "auto"
    if update_method is not None:
        update_method = check_choice(update_method, "update_method", tuple(_UPDATE_METHODS))
        warnings.warn(
            "`update_method` is deprecated; use `kernel` ('auto', 'xla' or 'native').",
            DeprecationWarning,
            stacklevel=3,
        )
        kernel, sums = _UPDATE_METHODS[update_method]
        name = "update_method"
    else:
        kernel = check_choice(kernel, "kernel", kernels.KERNELS)
        name = "kernel"
    usable = kernels.native.usable(dtype, metric, precision)
    if kernel == "auto":
        kernel = "native" if usable else "xla"
    elif kernel == "native" and not usable:
        why = kernels.native.load_error() or (
            "it needs float32 data, metric 'squared_euclidean' and precision 'float32' or "
            "'tf32', and JAXKMEANS_NATIVE not set to 0"
        )
        raise ValueError(
            f"`{name}`='native' is not usable here (dtype {jnp.dtype(dtype).name}, "
            f"metric {metric!r}, precision {precision!r}): {why}."
        )
    mesh = check_mesh(mesh)
    return Pass(metric, precision, chunk, kernel, sums, None if mesh is None else _auto_mesh(mesh))


# ---------------------------------------------------------------------------- frame


class Frame(NamedTuple):
    """Centers prepared for the kernels, with the origin rows are shifted by.

    ``distance(x, c) = max(base(x - origin) + <x', cp> + bias, 0)`` (see
    :mod:`jaxkmeans.metrics`).
    """

    origin: jax.Array | None  # (d,), None for cosine
    cp: jax.Array  # (k, d)
    bias: jax.Array  # (k,)


def prepare(c: jax.Array, origin: jax.Array | None, metric: str) -> Frame:
    """The :class:`Frame` of centers `c` (k, d) already in the frame of `origin`."""
    cp, bias = metrics.prepare_centers(c, metric, None)
    return Frame(origin, cp, bias)


def to_frame(centers: jax.Array, origin: jax.Array | None, metric: str) -> jax.Array:
    """Centers in the frame: ``centers - origin``, or unit rows for cosine."""
    if metric == COSINE_DISTANCE:
        return metrics.normalize_rows(centers)
    assert origin is not None  # squared Euclidean frames always have an origin
    return centers - origin[None, :]


def from_frame(c: jax.Array, origin: jax.Array | None) -> jax.Array:
    return c if origin is None else c + origin[None, :]


# ------------------------------------------------------------------- per device


def origin(spec: Pass, x: Any, w: jax.Array | None = None) -> jax.Array | None:
    """The frame origin of rows `x` (:func:`jaxkmeans.metrics.frame_origin`, its mean
    in row blocks unless the rows are split over a mesh); 0 for sparse rows
    (:class:`~jaxkmeans.kernels.sparse.SparseRows`), which are never shifted (None for
    cosine)."""
    if isinstance(x, SparseRows):
        return None if spec.metric == COSINE_DISTANCE else jnp.zeros((x.d,), x.dtype)
    return metrics.frame_origin(x, spec.metric, w, in_blocks=spec.mesh is None)


def _no_mesh(spec: Pass) -> None:
    if spec.mesh is not None:
        raise ValueError("`mesh` is not supported with sparse `x`; got a mesh.")


def _sparse_candidates(
    spec: Pass, x: SparseRows, w: jax.Array | None, labels: jax.Array, dist: jax.Array, k: int
) -> tuple[Far, jax.Array]:
    """:func:`candidates` of sparse rows: the `k` distinct points (by their sparse row
    identity) with positive weight farthest from their centers, each at its farthest
    copy with the summed weight and number of its copies; only these rows are
    densified."""
    n = x.n
    m = min(n, k)
    ident = sparse_kernels.identity(x, spec.metric)
    live = jnp.ones((n,), bool) if w is None else w > 0
    d = jnp.where(live, dist, -1.0)
    first, group = updates.identity_groups(ident, -d)
    top_d, idx = lax.top_k(jnp.where(first, d, -1.0), m)
    wv = jnp.ones((n,), x.dtype) if w is None else w
    total = jax.ops.segment_sum(jnp.where(live, wv, 0.0), group, num_segments=n)
    copies = jax.ops.segment_sum(live.astype(jnp.int32), group, num_segments=n)
    vals, _ = sparse_kernels.prepared_values(x, spec.metric)
    rows = sparse_kernels.take_rows(x, idx, vals)
    g = group[idx]
    far = Far(rows, top_d, labels[idx], total[g], ident[idx], copies[g])
    if m < k:
        none = updates.no_candidates(k - m, x.d, x.dtype)
        far = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), far, none)
    return updates.distinct_top(far, k), updates.members(labels, w, k)


def _per_device(spec: Pass, fn: Callable[..., Any], args: tuple, specs: tuple, out: Any) -> Any:
    """``fn(*args)``: directly without a mesh; with one, per device inside ``shard_map``
    (``specs``/``out`` give each argument's / result's partitioning; None arguments
    are passed through as None). The one mesh / no-mesh branch of the engine."""
    if spec.mesh is None:
        return fn(*args)
    present = [a is not None for a in args]

    def local(*real):
        it = iter(real)
        return fn(*(next(it) if p else None for p in present))

    return jax.shard_map(
        local,
        mesh=spec.mesh,
        in_specs=tuple(s for s, p in zip(specs, present, strict=True) if p),
        out_specs=out,
        check_vma=False,
    )(*(a for a in args if a is not None))


def _psum(spec: Pass, tree: Any) -> Any:
    return tree if spec.mesh is None else lax.psum(tree, spec.axes)


def _specs(spec: Pass) -> tuple[P, P, P]:
    """Partitioning of (rows (n, d), per-row (n,), replicated) arguments."""
    return P(spec.axes, None), P(spec.axes), P()


# ------------------------------------------------------------------- statistics


class PassStats(NamedTuple):
    """The statistics of one Lloyd pass (over one array, or summed over batches)."""

    sums: jax.Array  # (k, d) weighted sums of the rows in the frame
    counts: jax.Array  # (k,) summed weights
    loss: jax.Array  # () weighted sum of distances to the nearest center
    far: Far  # distinct candidate points for empty clusters, farthest first
    rows: jax.Array  # (k,) int32 rows with positive weight per cluster (with `far` only)


def statistics(
    spec: Pass, x: jax.Array, w: jax.Array | None, frame: Frame
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))`` of rows `x`
    (row-sharded with a mesh; sums, counts and loss are then over all devices)."""
    if isinstance(x, SparseRows):
        _no_mesh(spec)
        return sparse_kernels.statistics(spec, x, w, frame)
    rows, per_row, rep = _specs(spec)

    def local(x, w, frame):
        sums, counts, loss, labels, dist = kernels.statistics(spec, x, w, frame)
        sums, counts, loss = _psum(spec, (sums, counts, loss))
        return sums, counts, loss, labels, dist

    return _per_device(
        spec, local, (x, w, frame), (rows, per_row, rep), (rep, rep, rep, per_row, per_row)
    )


def nearest(spec: Pass, x: jax.Array, frame: Frame) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,), min_dist (n,))`` of rows `x` (row-sharded with a mesh)."""
    if isinstance(x, SparseRows):
        _no_mesh(spec)
        return sparse_kernels.nearest(spec, x, frame)
    rows, per_row, rep = _specs(spec)
    return _per_device(
        spec,
        lambda x, frame: kernels.nearest(spec, x, frame),
        (x, frame),
        (rows, rep),
        (per_row, per_row),
    )


def candidates(
    spec: Pass,
    x: jax.Array,
    w: jax.Array | None,
    labels: jax.Array,
    dist: jax.Array,
    origin: jax.Array | None,
    k: int,
) -> tuple[Far, jax.Array]:
    """The `k` distinct points with positive weight farthest from their nearest center
    (over all devices with a mesh: each device's `k`, gathered and merged), and the
    number of rows with positive weight per cluster."""
    if isinstance(x, SparseRows):
        _no_mesh(spec)
        return _sparse_candidates(spec, x, w, labels, dist, k)
    rows, per_row, rep = _specs(spec)

    def local(x, w, labels, dist, origin):
        far = updates.farthest(x, w, labels, dist, k, spec.metric, origin)
        count = _psum(spec, updates.members(labels, w, k))
        if spec.mesh is None:
            return far, count
        gathered = jax.tree_util.tree_map(lambda a: lax.all_gather(a, spec.axes, tiled=True), far)
        return updates.distinct_top(gathered, k), count

    return _per_device(
        spec,
        local,
        (x, w, labels, dist, origin),
        (rows, per_row, per_row, per_row, rep),
        (Far(*(rep,) * len(Far._fields)), rep),  # type: ignore[arg-type]  # specs, not arrays
    )


def lloyd_pass(
    spec: Pass, x: jax.Array, w: jax.Array | None, frame: Frame, *, relocate: bool = True
) -> tuple[PassStats, jax.Array, jax.Array]:
    """The statistics of one Lloyd pass over all of `x` (candidates for empty clusters
    only when a cluster is empty; never with ``relocate=False``, for a caller that does
    not finish a pass with an empty cluster). Returns ``(stats, labels, min_dist)``."""
    k, d = frame.cp.shape
    sums, counts, loss, labels, dist = statistics(spec, x, w, frame)
    none = (updates.no_candidates(k, d, x.dtype), jnp.zeros((k,), jnp.int32))
    if not relocate:
        return PassStats(sums, counts, loss, *none), labels, dist
    # Candidates matter only if a cluster is empty; a cluster that has rows here has
    # rows over any larger set (a pass over many batches) too.
    far, rows = lax.cond(
        jnp.any(counts <= 0),
        lambda: candidates(spec, x, w, labels, dist, frame.origin, k),
        lambda: none,
    )
    return PassStats(sums, counts, loss, far, rows), labels, dist


def batch_pass(spec: Pass, x: jax.Array, w: jax.Array | None, frame: Frame) -> PassStats:
    """The statistics of one batch of a pass over many batches, to :func:`merge`."""
    return lloyd_pass(spec, x, w, frame)[0]


def merge(a: PassStats | None, b: PassStats) -> PassStats:
    """The statistics of two sets of rows together (a None `a`: none yet)."""
    if a is None:
        return b
    far = jax.tree_util.tree_map(lambda u, v: jnp.concatenate([u, v]), a.far, b.far)
    return PassStats(
        a.sums + b.sums,
        a.counts + b.counts,
        a.loss + b.loss,
        updates.distinct_top(far, a.far.dist.shape[0]),
        a.rows + b.rows,
    )


def finish(
    metric: str,
    centers: jax.Array,
    origin: jax.Array | None,
    st: PassStats,
    *,
    relocate: bool = True,
) -> tuple[jax.Array, StepStats]:
    """The one Lloyd finish: empty clusters move to distinct farthest points, then each
    center moves to the mean of its rows (cosine: the normalized sum).

    Args:
      metric: the metric.
      centers: (k, d) the pass's centers (in data coordinates).
      origin: the frame origin the pass's sums were taken in (None for cosine).
      st: the pass's statistics.
      relocate: False leaves out the relocation (a smaller program) for a caller that
        never finishes a pass with an empty cluster this way (see
        :func:`jaxkmeans.fitting.lloyd_run`).

    Returns:
      ``(new_centers, StepStats(loss, counts, shift))``, the shift measured in data
      coordinates (so a converged model is an exact fixed point whatever the frame).
    """
    c = to_frame(centers, origin, metric)
    sums, counts = st.sums, st.counts
    if relocate:
        sums, counts = lax.cond(
            jnp.any(st.counts <= 0),
            lambda a: updates.relocate_empty(a[0], a[1], st.far, st.rows),
            lambda a: a,
            (st.sums, st.counts),
        )
    new = from_frame(updates.centers_from_stats(sums, counts, c, metric), origin)
    old = c if metric == COSINE_DISTANCE else centers  # cosine: from the unit centers
    shift = jnp.sum((new - old) ** 2)
    return new, StepStats(loss=st.loss, counts=st.counts, shift=shift)


def frame_of(centers: jax.Array, origin: jax.Array | None, metric: str) -> Frame:
    """The :class:`Frame` of `centers` (data coordinates) for rows shifted by `origin`."""
    return prepare(to_frame(centers, origin, metric), origin, metric)


def lloyd_update(
    spec: Pass, x: jax.Array, w: jax.Array | None, centers: jax.Array, origin: jax.Array | None
) -> tuple[jax.Array, StepStats]:
    """One exact Lloyd iteration over `x` from `centers`, sums taken in the frame of
    `origin` (:func:`jaxkmeans.metrics.frame_origin`)."""
    st, _, _ = lloyd_pass(spec, x, w, frame_of(centers, origin, spec.metric))
    return finish(spec.metric, centers, origin, st)
