"""Nearest-center (+ per-center sums) kernels behind one seam.

Every kernel family computes the same two things for raw rows ``x`` (n, d) and a frame
``(origin (d,) or None for cosine, cp (k, d), bias (k,))`` of prepared centers (see
:class:`jaxkmeans.engine.Frame` and :mod:`jaxkmeans.metrics`):

- :func:`nearest`: ``(labels (n,), min_dist (n,))``, ties to the lowest index;
- :func:`statistics`: ``(sums (k, d), counts (k,), loss (), labels, min_dist)`` with
  weighted sums of the prepared rows.

Which family runs is chosen per platform with ``lax.platform_dependent``, so one traced
program lowers anywhere: ``xla`` (:mod:`jaxkmeans.kernels.xla`, the reference, any
platform) and ``native`` (:mod:`jaxkmeans.kernels.native`, C++ through ``jax.ffi``, CPU
only). The choice is part of the engine's pass description (``spec.kernel``: what runs
where the program runs on CPU; other platforms run the XLA kernel with their own block
sizes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax import lax

from jaxkmeans.kernels import native, xla

__all__ = ["KERNELS", "nearest", "statistics", "native", "xla"]

KERNELS = ("auto", "xla", "native")


def _dispatch(spec: Any, name: str, *args: Any) -> Any:
    """Runs kernel `name` with the family `spec` chooses for each platform."""
    ref = getattr(xla, name)
    cpu: Callable[..., Any] = functools.partial(ref, spec, "cpu")
    if spec.kernel == "native" and native.available():
        cpu = getattr(native, name)
    branches = {"cpu": cpu, "default": functools.partial(ref, spec, "gpu")}
    if xla.BLOCK_ELEMENTS["tpu"] != xla.BLOCK_ELEMENTS["gpu"]:
        branches["tpu"] = functools.partial(ref, spec, "tpu")
    return lax.platform_dependent(*args, **branches)


def nearest(spec: Any, x: jax.Array, frame: Any) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,) int32, min_dist (n,))`` of the rows `x` (see the module docstring)."""
    return _dispatch(spec, "nearest", x, frame)


def statistics(
    spec: Any, x: jax.Array, w: jax.Array | None, frame: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))``."""
    return _dispatch(spec, "statistics", x, w, frame)
