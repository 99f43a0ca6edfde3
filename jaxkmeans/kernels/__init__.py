"""Nearest-center (+ per-center sums) kernels behind one seam.

Every kernel family computes the same two things for raw rows ``x`` (n, d) and a frame
``(origin (d,) or None for cosine, cp (k, d), bias (k,))`` of prepared centers (see
:class:`jaxkmeans.engine.Frame` and :mod:`jaxkmeans.metrics`):

- :func:`nearest`: ``(labels (n,), min_dist (n,))``, ties to the lowest index;
- :func:`statistics`: ``(sums (k, d), counts (k,), loss (), labels, min_dist)`` with
  weighted sums of the prepared rows.

Both are differentiable (``jax.custom_jvp``): distances, loss and sums with respect to the
rows and the prepared centers, labels not (they are piecewise constant). The tangents are
plain JAX on the labels the kernel found, so the native kernel, which XLA cannot
differentiate, differentiates like the others.

Which family runs is chosen per platform with ``lax.platform_dependent``, so one traced
program lowers anywhere: ``xla`` (:mod:`jaxkmeans.kernels.xla`, the reference, any
platform), ``native`` (:mod:`jaxkmeans.kernels.native`, C++ through ``jax.ffi``, CPU
only) and ``pallas`` (:mod:`jaxkmeans.kernels.pallas_gpu`, Triton, and
:mod:`jaxkmeans.kernels.pallas_tpu`, Mosaic TPU: fused distance tile + running (min,
first index), no (rows, k) block in device memory; on CPU they run in Pallas' interpret
mode, for tests). The choice is part of the engine's pass description (``spec.kernel``):
``"native"`` is the CPU branch only (XLA elsewhere), ``"pallas"`` is the GPU and TPU
branches (interpret mode on CPU), ``"xla"`` everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxkmeans._validation import COSINE_DISTANCE, InPlaceRows, to_device
from jaxkmeans.kernels import native, xla
from jaxkmeans.metrics import normalize_rows

# The Pallas modules (which import Pallas' Triton and Mosaic front ends) load on first
# use: ``import jaxkmeans`` does not pay for them.

__all__ = [
    "KERNELS",
    "by_platform",
    "reads_in_place",
    "readable_rows",
    "nearest",
    "statistics",
    "native",
    "pallas_gpu",
    "pallas_tpu",
    "xla",
]

KERNELS = ("auto", "xla", "native", "pallas")


def _dispatch(spec: Any, name: str, *args: Any) -> Any:
    """Runs kernel `name` with the family `spec` chooses for each platform."""
    ref = getattr(xla, name)
    cpu: Callable[..., Any] = functools.partial(ref, spec, "cpu")
    branches = {"default": functools.partial(ref, spec, "gpu")}
    if spec.kernel == "native" and native.available():
        cpu = getattr(native, name)
    if spec.kernel == "pallas":
        from jaxkmeans.kernels import pallas_gpu, pallas_tpu

        cpu = functools.partial(getattr(pallas_gpu, name), spec, "cpu")  # interpret mode
        branches["cuda"] = functools.partial(getattr(pallas_gpu, name), spec, "gpu")
        branches["tpu"] = functools.partial(getattr(pallas_tpu, name), spec, "tpu")
    elif xla.BLOCK_ELEMENTS["tpu"] != xla.BLOCK_ELEMENTS["gpu"]:
        branches["tpu"] = functools.partial(ref, spec, "tpu")
    return by_platform(getattr(spec, "platform", None), *args, cpu=cpu, **branches)


def by_platform(platform: str | None, *args: Any, cpu: Callable[..., Any], **branches: Any) -> Any:
    """``lax.platform_dependent(*args, cpu=cpu, **branches)``, or only ``cpu(*args)``
    when `platform` is ``"cpu"``: the program is then lowered for CPU only (see
    :attr:`jaxkmeans.engine.Pass.platform`), and the other branches are not traced."""
    if platform == "cpu":
        return cpu(*args)
    return lax.platform_dependent(*args, cpu=cpu, **branches)


def __getattr__(name: str) -> Any:
    if name in ("pallas_gpu", "pallas_tpu"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rows_tangent(metric: str, x: jax.Array, frame: Any, dframe: Any, dx: jax.Array) -> tuple:
    """``(x', dx')``: the rows as the kernels use them (``x - origin``, or unit rows for
    cosine) and their tangent."""
    origin, _, _ = frame
    if metric == COSINE_DISTANCE:
        xp = normalize_rows(x)
        sq = jnp.sum(x * x, axis=1, keepdims=True)
        inv = jnp.where(sq > 0, lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
        return xp, (dx - xp * jnp.sum(xp * dx, axis=1, keepdims=True)) * inv
    return x - origin[None, :], dx - dframe[0][None, :]


def _dist_tangent(metric, x, frame, dframe, labels, dx) -> tuple[jax.Array, jax.Array]:
    """``(x', d dist)`` along ``(dx, dframe)`` at fixed labels."""
    _, cp, _ = frame
    _, dcp, dbias = dframe
    xp, dxp = _rows_tangent(metric, x, frame, dframe, dx)
    c, dc = cp[labels], dcp[labels]
    if metric == COSINE_DISTANCE:  # dist = 1 + <x', cp>
        return xp, jnp.sum(dxp * c + xp * dc, axis=1)
    # dist = ||x' + cp / 2||^2 (what the kernels report; bias is ||cp / 2||^2)
    diff = xp + 0.5 * c
    del dbias
    return xp, jnp.sum(2.0 * diff * (dxp + 0.5 * dc), axis=1)


def _labels_tangent(labels: jax.Array) -> np.ndarray:
    return np.zeros(labels.shape, dtype=jax.dtypes.float0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _nearest(spec: Any, x: jax.Array, frame: Any) -> tuple[jax.Array, jax.Array]:
    return _dispatch(spec, "nearest", x, frame)


@_nearest.defjvp
def _nearest_jvp(spec, primals, tangents):
    x, frame = primals
    dx, dframe = tangents
    labels, dist = _nearest(spec, x, frame)
    _, ddist = _dist_tangent(spec.metric, x, frame, dframe, labels, dx)
    return (labels, dist), (_labels_tangent(labels), ddist)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _statistics(spec: Any, x: jax.Array, w: jax.Array | None, frame: Any):
    return _dispatch(spec, "statistics", x, w, frame)


@_statistics.defjvp
def _statistics_jvp(spec, primals, tangents):
    x, w, frame = primals
    dx, dw, dframe = tangents
    out = _statistics(spec, x, w, frame)
    _, _, _, labels, dist = out
    k = frame[1].shape[0]
    xp, ddist = _dist_tangent(spec.metric, x, frame, dframe, labels, dx)
    _, dxp = _rows_tangent(spec.metric, x, frame, dframe, dx)
    if w is None:  # unweighted: w = 1, dw = 0
        w, dw = jnp.ones_like(dist), jnp.zeros_like(dist)
    dsums = jax.ops.segment_sum(w[:, None] * dxp + dw[:, None] * xp, labels, num_segments=k)
    dcounts = jax.ops.segment_sum(dw, labels, num_segments=k)
    dloss = jnp.sum(w * ddist + dw * dist)
    return out, (dsums, dcounts, dloss, _labels_tangent(labels), ddist)


def reads_in_place(spec: Any) -> bool:
    """Whether passes of `spec` (an :class:`~jaxkmeans.engine.Pass`) can read rows in
    place (:class:`InPlaceRows`) where they run on CPU: the native flat kernels, no
    mesh. The one test of ``fit``, ``KMeans.train`` and the kernels' dispatch."""
    return spec.mesh is None and spec.kernel == "native" and native.flat_available()


def readable_rows(spec: Any, x: Any, in_place: bool = True) -> Any:
    """`x` as the passes of `spec` read it: :class:`InPlaceRows` stay in place where
    they can (:func:`reads_in_place`, and `in_place`), else become one aligned copy
    (XLA's own kernels read them); anything else as it is."""
    if isinstance(x, InPlaceRows) and not (in_place and reads_in_place(spec)):
        return to_device(x.host())
    return x


def _in_place(spec: Any, x: Any) -> tuple[InPlaceRows | None, Any]:
    """``(rows, None)`` for rows read in place (:class:`InPlaceRows`) that the native
    flat kernels read (a program lowered for CPU only, ``spec.kernel`` native, the
    library has them); else ``(None, x)`` with `x` as an (n, d) array (rows read in
    place then copied inside the program)."""
    if not isinstance(x, InPlaceRows):
        return None, x
    reads = spec.platform == "cpu" and reads_in_place(spec)
    return (x, None) if reads else (None, x.dense())


def nearest(spec: Any, x: Any, frame: Any) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,) int32, min_dist (n,))`` of the rows `x` (see the module docstring;
    :class:`~jaxkmeans._validation.InPlaceRows` too, not differentiable)."""
    flat, x = _in_place(spec, x)
    if flat is not None:
        return native.flat_nearest(flat, frame)
    return _nearest(spec, x, frame)


def statistics(
    spec: Any, x: Any, w: jax.Array | None, frame: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))``."""
    flat, x = _in_place(spec, x)
    if flat is not None:
        return native.flat_statistics(flat, w, frame)
    return _statistics(spec, x, w, frame)
