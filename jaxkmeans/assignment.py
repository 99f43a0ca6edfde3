"""Public nearest-center search and inertia over the engine's kernels.

Nothing here builds the (n, k) distance matrix: the kernels fold each block of scores at
once into a running minimum and first index (see :mod:`jaxkmeans.kernels`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxkmeans import engine, kernels
from jaxkmeans._validation import (
    SQUARED_EUCLIDEAN_DISTANCE,
    as_bucketed,
    as_centers,
    real_rows,
    releases_host_copies,
)
from jaxkmeans.kernels import sparse, xla

__all__ = ["assign", "inertia", "auto_chunk_size"]


def auto_chunk_size(
    n: int, k: int, d: int, dtype: Any = jnp.float32, backend: str | None = None
) -> int:
    """Rows per chunk that the XLA kernel uses when ``chunk_size=None``: the (chunk, k)
    score block fits a per-platform budget.

    Args:
      n: number of rows; the chunk never exceeds it.
      k: number of centers.
      d: number of features.
      dtype: data dtype (wider types get proportionally fewer rows).
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default :func:`jax.default_backend`.
        (Inside a program the platform it is lowered for decides.)

    Returns:
      An int in ``[1, n]``, independent of n once n exceeds it.

    Examples:
      >>> import jaxkmeans
      >>> jaxkmeans.auto_chunk_size(10, 4, 3)  # small n: the whole input is one chunk
      10
      >>> jaxkmeans.auto_chunk_size(10**7, 1024, 128, backend="gpu")
      32768
    """
    return xla.chunk_rows(n, k, d, dtype, backend or jax.default_backend())


@functools.partial(jax.jit, static_argnames=("spec",))
def nearest_impl(x: jax.Array, centers: jax.Array, w: jax.Array | None, spec: engine.Pass):
    """Labels and distances of checked rows `x` to `centers` (frame from the rows with
    positive weight `w`)."""
    origin = engine.origin(spec, x, w)
    frame = engine.frame_of(centers, origin, spec.metric)
    return engine.nearest(spec, x, frame)


@functools.partial(jax.jit, static_argnames=("spec",))
def inertia_impl(x: jax.Array, centers: jax.Array, w: jax.Array | None, spec: engine.Pass):
    """Weighted summed distance of checked rows `x` to their nearest center."""
    origin = engine.origin(spec, x, w)
    frame = engine.frame_of(centers, origin, spec.metric)
    _, dist = engine.nearest(spec, x, frame)
    return jnp.sum(dist) if w is None else jnp.sum(w * dist)


def _checked(x: Any, centers: Any, metric: Any, w: Any, pad_rows: Any, options: dict[str, Any]):
    if sparse.is_sparse(x):
        x, w, n = sparse.bucketed(x, w, pad_rows)
    else:
        # Host rows the CPU device would copy are read in place (InPlaceRows) where the
        # native kernels can; otherwise they are copied once, as before.
        x, w, n = as_bucketed(x, w, pad_rows, in_place=True)
    centers = as_centers(centers, x.shape[1], x.dtype)
    spec = engine.make_pass(metric, dtype=x.dtype, **options)
    x = kernels.readable_rows(spec, x)
    return x, w, n, centers, engine.on_platform(spec, x, w)  # for x's platform only


@releases_host_copies
def assign(
    x: Any,
    centers: Any,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    *,
    chunk_size: int | None = None,
    precision: str = "float32",
    kernel: str = "auto",
    pad_rows: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Nearest center of every row, computed in chunks (never an (n, k) matrix).

    Args:
      x: (n, d) float array, or sparse: ``jax.experimental.sparse.BCOO`` or a scipy
        sparse matrix (computed from its nonzeros, never densified).
      centers: (k, d) float array.
      metric: ``"squared_euclidean"`` or ``"cosine"``.
      chunk_size: rows per chunk; ``None`` picks one for the platform.
      precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"``.
      kernel: ``"auto"`` (native on CPU where it applies, else XLA), ``"xla"`` or
        ``"native"``.
      pad_rows: as in :func:`jaxkmeans.lloyd_step` (size buckets; results unchanged).

    Returns:
      ``(labels, min_dist)``: (n,) int32 indices of the nearest center (ties go to the
      lowest index) and (n,) distances to it (>= 0).

    Examples:
      >>> import jaxkmeans, jax.numpy as jnp
      >>> labels, d = jaxkmeans.assign(jnp.array([[0.0], [9.0]]), jnp.array([[1.0], [10.0]]))
      >>> labels.tolist(), d.tolist()
      ([0, 1], [1.0, 1.0])
    """
    options = dict(chunk_size=chunk_size, precision=precision, kernel=kernel)
    x, w, n, centers, spec = _checked(x, centers, metric, None, pad_rows, options)
    labels, dist = nearest_impl(x, centers, w, spec)
    return real_rows(labels, n), real_rows(dist, n)


@releases_host_copies
def inertia(
    x: Any,
    centers: Any,
    metric: str = SQUARED_EUCLIDEAN_DISTANCE,
    *,
    sample_weight: Any = None,
    chunk_size: int | None = None,
    precision: str = "float32",
    kernel: str = "auto",
    pad_rows: bool | None = None,
) -> jax.Array:
    """Weighted sum over rows of the distance to the nearest center.

    Args:
      x: (n, d) float array, or sparse (BCOO or scipy sparse, as in :func:`assign`).
      centers: (k, d) float array.
      metric: ``"squared_euclidean"`` or ``"cosine"``.
      sample_weight: optional (n,) non-negative weights.
      chunk_size: rows per chunk; ``None`` picks one for the platform.
      precision: ``"float32"`` (default), ``"tf32"`` or ``"bfloat16"``.
      kernel: ``"auto"``, ``"xla"`` or ``"native"`` (as in :func:`assign`).
      pad_rows: as in :func:`assign`.

    Returns:
      Scalar ``sum_i w_i * min_j dist(x_i, c_j)``.

    Examples:
      >>> import jaxkmeans, jax.numpy as jnp
      >>> float(jaxkmeans.inertia(jnp.array([[0.0], [9.0]]), jnp.array([[1.0], [10.0]])))
      2.0
    """
    options = dict(chunk_size=chunk_size, precision=precision, kernel=kernel)
    x, w, _, centers, spec = _checked(x, centers, metric, sample_weight, pad_rows, options)
    return inertia_impl(x, centers, w, spec)
