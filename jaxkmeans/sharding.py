"""Host-side placement for data-parallel k-means over a ``jax.sharding.Mesh``, on one or
many processes.

Rows are split over every device of the mesh (all its axes together form the data
axis); centers are replicated. (The per-device statistics and their ``psum`` are the
engine's: :mod:`jaxkmeans.engine`.) Ragged row counts are padded with zero-weight rows.

Multi-process (``jax.distributed.initialize``): each process passes its own rows
(``jax.make_array_from_process_local_data``); the processes may hold different numbers
of rows.

Examples:
  Place 10 rows on every device of a one-axis mesh, fit there:

  >>> import jax, numpy as np, jaxkmeans
  >>> from jaxkmeans import sharding
  >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
  >>> x = np.arange(20, dtype=np.float32).reshape(10, 2)
  >>> xs, ws, n = sharding.shard_rows(x, None, mesh)
  >>> n, xs.sharding == sharding.row_sharding(mesh), float(ws.sum())
  (10, True, 10.0)
  >>> result = jaxkmeans.fit(jax.random.PRNGKey(0), x, 2, mesh=mesh)
  >>> result.labels.shape
  (10,)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "local_rows",
    "data_axes",
    "row_sharding",
    "replicated",
    "local_device_count",
    "shard_rows",
    "replicate",
    "any_process",
    "broadcast_from_first",
]


def local_rows(a: jax.Array, n: int) -> jax.Array:
    """This process's first `n` rows of a row-sharded global array (padding dropped).

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> n = 2 * jax.device_count()
      >>> xs, _, _ = sharding.shard_rows(np.ones((n, 2), np.float32), None, mesh)
      >>> sharding.local_rows(xs, n).shape == (n, 2)
      True
    """
    if jax.process_count() == 1:
        sh = getattr(a, "sharding", None)
        if isinstance(sh, NamedSharding) and jax.sharding.AxisType.Explicit in tuple(
            getattr(sh.mesh, "axis_types", ())
        ):
            # Explicit mesh axes: slicing a sharded dimension unevenly is refused.
            a = jax.sharding.reshard(a, NamedSharding(sh.mesh, P()))
        return a[:n]
    shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
    return jnp.concatenate([jnp.asarray(s.data) for s in shards])[:n]


def data_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the rows are split over: all of them.

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> sharding.data_axes(mesh)
      ('data',)
    """
    return tuple(mesh.axis_names)


def row_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split over the data axes, other dimensions whole.

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> sharding.row_sharding(mesh).spec == jax.sharding.PartitionSpec(("data",), None)
      True
    """
    return NamedSharding(mesh, P(data_axes(mesh), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device of `mesh` (how centers are placed).

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> sharding.replicated(mesh).is_fully_replicated
      True
    """
    return NamedSharding(mesh, P())


def local_device_count(mesh: Mesh) -> int:
    """Devices of `mesh` that belong to this process.

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> sharding.local_device_count(mesh) == jax.local_device_count()
      True
    """
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

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> x = np.ones((5, 3), np.float32)
      >>> xs, ws, n = sharding.shard_rows(x, None, mesh)
      >>> n, xs.shape[0] % jax.device_count(), float(ws.sum())  # padding weighs 0
      (5, 0, 5.0)
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
    process holds the same values).

    Examples:
      >>> import jax, numpy as np
      >>> from jaxkmeans import sharding
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> tree = sharding.replicate({"centers": np.zeros((4, 2), np.float32)}, mesh)
      >>> tree["centers"].sharding.is_fully_replicated
      True
    """
    rep = replicated(mesh)

    def put(a):
        a = np.asarray(a)
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(rep, a, a.shape)
        return jax.device_put(a, rep)

    return jax.tree_util.tree_map(put, tree)


def any_process(flag: bool) -> bool:
    """True when `flag` is True on at least one process (a collective when several).

    Examples:
      >>> from jaxkmeans import sharding
      >>> sharding.any_process(False), sharding.any_process(True)  # one process
      (False, True)
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([int(flag)], np.int32))
    return bool(np.asarray(flags).any())


def broadcast_from_first(a: Any) -> np.ndarray:
    """Process 0's value of `a`, on every process.

    Examples:
      >>> from jaxkmeans import sharding
      >>> sharding.broadcast_from_first([1, 2, 3])  # one process: its own value
      array([1, 2, 3])
    """
    if jax.process_count() == 1:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(a)))
