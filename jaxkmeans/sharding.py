"""Data-parallel k-means over a ``jax.sharding.Mesh``, on one or many processes.

Rows are split over every device of the mesh (all its axes together form the data
axis); centers are replicated. Each device reduces its own rows to per-center sums,
weights and loss inside ``shard_map``, and ``psum`` combines them, so every device gets
the same new centers. Ragged row counts are padded with zero-weight rows. The result
does not depend on the number of devices beyond float reduction order.

Multi-process (``jax.distributed.initialize``): each process passes its own rows
(``jax.make_array_from_process_local_data``); the processes may hold different numbers
of rows.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxkmeans import metrics
from jaxkmeans.assignment import assign_prepared, auto_chunk_size
from jaxkmeans.state import StepStats
from jaxkmeans.updates import (
    Far,
    centers_from_stats,
    chunk_statistics,
    farthest,
    relocate_empty,
    top_far,
)

__all__ = [
    "auto_mesh",
    "local_rows",
    "data_axes",
    "row_sharding",
    "replicated",
    "local_device_count",
    "shard_rows",
    "replicate",
    "any_process",
    "broadcast_from_first",
    "sharded_statistics",
    "sharded_lloyd_core",
    "sharded_assign",
    "check_mesh",
]


def check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`mesh` must be None or a jax.sharding.Mesh; got {type(mesh).__name__}.")
    return mesh


def auto_mesh(mesh: Mesh) -> Mesh:
    """The same devices and axis names with every axis of type Auto, so that the
    compiler may partition the (non-shard_map) parts of a program over it."""
    auto = jax.sharding.AxisType.Auto
    if all(t == auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(mesh.axis_names))


def local_rows(a: jax.Array, n: int) -> jax.Array:
    """This process's first `n` rows of a row-sharded global array (padding dropped)."""
    if jax.process_count() == 1:
        return a[:n]
    shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
    return jnp.concatenate([jnp.asarray(s.data) for s in shards])[:n]


def data_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the rows are split over: all of them."""
    return tuple(mesh.axis_names)


def row_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split over the data axes, other dimensions whole."""
    return NamedSharding(mesh, P(data_axes(mesh), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_device_count(mesh: Mesh) -> int:
    """Devices of `mesh` that belong to this process."""
    me = jax.process_index()
    return sum(1 for d in mesh.devices.flat if d.process_index == me)


def shard_rows(
    x: Any, w: Any, mesh: Mesh, valid: int | None = None
) -> tuple[jax.Array, jax.Array, int]:
    """Places this process's rows `x` (n, d) and weights `w` (n,) (None: ones) on `mesh`.

    Every process pads its rows with zero-weight rows to the same multiple of its local
    device count (the largest over processes), so all shards have equal size.

    Args:
      x, w: this process's rows and weights (numpy or array-like).
      mesh: the mesh; rows are split over all of its devices.
      valid: how many of the rows are real (default n), for the returned count.

    Returns:
      ``(x_global, w_global, n_valid_total)``: row-sharded global arrays and the number
      of real rows over all processes.
    """
    x = np.asarray(x)
    n, d = x.shape
    w = np.ones((n,), x.dtype) if w is None else np.asarray(w, x.dtype)
    valid = n if valid is None else valid
    local = local_device_count(mesh)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        sizes = np.asarray(
            multihost_utils.process_allgather(np.array([n, valid], np.int64))
        ).reshape(-1, 2)
    else:
        sizes = np.array([[n, valid]])
    per = max(1, math.ceil(int(sizes[:, 0].max()) / local)) * local
    if per != n:
        x = np.concatenate([x, np.zeros((per - n, d), x.dtype)])
        w = np.concatenate([w, np.zeros((per - n,), x.dtype)])
    if jax.process_count() > 1:
        xs = jax.make_array_from_process_local_data(row_sharding(mesh, 2), x)
        ws = jax.make_array_from_process_local_data(row_sharding(mesh, 1), w)
    else:
        xs = jax.device_put(x, row_sharding(mesh, 2))
        ws = jax.device_put(w, row_sharding(mesh, 1))
    return xs, ws, int(sizes[:, 1].sum())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` as a copy replicated on all devices of `mesh` (each
    process holds the same values)."""
    rep = replicated(mesh)

    def put(a):
        a = np.asarray(a)
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(rep, a, a.shape)
        return jax.device_put(a, rep)

    return jax.tree_util.tree_map(put, tree)


def any_process(flag: bool) -> bool:
    """True when `flag` is True on at least one process (a collective when several)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(flag)], np.int32))
    return bool(np.asarray(flags).any())


def broadcast_from_first(a: Any) -> np.ndarray:
    """Process 0's value of `a`, on every process."""
    if jax.process_count() == 1:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(a)))


def _local_chunk(x: jax.Array, mesh: Mesh, k: int, chunk: int | None) -> int:
    n_local = x.shape[0] // mesh.size
    if chunk is None:
        return auto_chunk_size(n_local, k, x.shape[1], x.dtype)
    return min(chunk, n_local)


def sharded_statistics(x, w, cp, bias, metric, offset, precision, update_method, mesh, chunk=None):
    """Per-center sums, weights and loss over row-sharded `x` (psum over devices), plus
    the row-sharded labels and distances. Call inside ``jit``."""
    axes = data_axes(mesh)
    k = cp.shape[0]
    chunk = _local_chunk(x, mesh, k, chunk)

    def local(xl, wl, cp, bias, offset):
        st = chunk_statistics(xl, wl, cp, bias, metric, offset, chunk, precision, update_method)
        sums = lax.psum(st.sums, axes)
        counts = lax.psum(st.counts, axes)
        loss = lax.psum(st.loss, axes)
        return sums, counts, loss, st.labels, st.min_dist

    rows, rep = P(axes), P()
    offset_arg = jnp.zeros((x.shape[1],), x.dtype) if offset is None else offset
    fn = jax.shard_map(
        lambda xl, wl, cp, bias, off: local(xl, wl, cp, bias, None if offset is None else off),
        mesh=mesh,
        in_specs=(P(axes, None), rows, rep, rep, rep),
        out_specs=(rep, rep, rep, rows, rows),
        check_vma=False,
    )
    return fn(x, w, cp, bias, offset_arg)


def sharded_farthest(x, w, labels, min_dist, k, metric, offset, mesh) -> Far:
    """The k farthest rows over all devices (each device's top k, gathered, merged)."""
    axes = data_axes(mesh)
    rows, rep = P(axes), P()
    offset_arg = jnp.zeros((x.shape[1],), x.dtype) if offset is None else offset

    def local(xl, wl, ll, dl, off):
        far = farthest(xl, wl, ll, dl, k, metric, None if offset is None else off)
        gathered = jax.tree_util.tree_map(lambda a: lax.all_gather(a, axes, tiled=True), far)
        return top_far(gathered, k)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(axes, None), rows, rows, rows, rep),
        out_specs=Far(rep, rep, rep, rep),
        check_vma=False,
    )(x, w, labels, min_dist, offset_arg)


def sharded_lloyd_core(x, w, c, offset, metric, precision, update_method, mesh, chunk=None):
    """One Lloyd iteration over row-sharded data, centers `c` in the frame (x - offset)."""
    k = c.shape[0]
    cp, bias = metrics.prepare_centers(c, metric, None)
    sums, counts, loss, labels, dist = sharded_statistics(
        x, w, cp, bias, metric, offset, precision, update_method, mesh, chunk
    )

    def move(args):
        far = sharded_farthest(x, w, labels, dist, k, metric, offset, mesh)
        return relocate_empty(*args, far)

    new_sums, new_counts = lax.cond(jnp.any(counts <= 0), move, lambda a: a, (sums, counts))
    new = centers_from_stats(new_sums, new_counts, c, metric)
    shift = jnp.sum((new - c) ** 2)
    return new, StepStats(loss=loss, counts=counts, shift=shift)


def sharded_assign(x, c, offset, metric, precision, mesh, chunk=None, native=False):
    """Labels and distances of row-sharded `x` to centers `c` (in the frame)."""
    axes = data_axes(mesh)
    k = c.shape[0]
    chunk = _local_chunk(x, mesh, k, chunk)
    cp, bias = metrics.prepare_centers(c, metric, None)
    offset_arg = jnp.zeros((x.shape[1],), x.dtype) if offset is None else offset

    def local(xl, cp, bias, off):
        return assign_prepared(
            xl, cp, bias, metric, None if offset is None else off, chunk, precision, native
        )

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(axes, None), P(), P(), P()),
        out_specs=(P(axes), P(axes)),
        check_vma=False,
    )(x, cp, bias, offset_arg)
