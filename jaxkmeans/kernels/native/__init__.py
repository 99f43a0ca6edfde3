"""Optional native CPU kernels, called from jitted code through ``jax.ffi``.

``kmeans_cpu.cc`` is compiled when the package is installed (an optional extension:
without a C++ compiler the install still succeeds and everything runs in pure JAX).
Where a program runs on CPU, for float32 squared-Euclidean work, the nearest-center search and
the per-center sums then run in one fused, multithreaded kernel (a register-blocked
distance tile folded at once into a running min / first index per row) instead of
XLA's GEMM plus separate reductions; see ``bench/RESULTS.md`` for the measured gain.

:mod:`jaxkmeans.kernels` wraps every native call in ``lax.platform_dependent`` with the
XLA kernel for the other platforms, so a program traced here still lowers for GPU/TPU. Set the
environment variable ``JAXKMEANS_NATIVE=0`` (before use) or call
:func:`set_enabled` to force the pure-JAX path.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import pathlib
import threading
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["available", "enabled", "set_enabled", "load_error", "usable"]

_ASSIGN = "jaxkmeans_assign_f32"
_LLOYD = "jaxkmeans_lloyd_f32"

_lock = threading.Lock()
_loaded: bool | None = None
_error: str | None = None
_enabled = os.environ.get("JAXKMEANS_NATIVE", "1").strip().lower() not in ("0", "false", "no")


def _library_path() -> pathlib.Path | None:
    here = pathlib.Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_kmeans_cpu{suffix}"
        if path.is_file():
            return path
    return None


def _load() -> bool:
    global _loaded, _error
    with _lock:
        if _loaded is not None:
            return _loaded
        path = _library_path()
        if path is None:
            _loaded, _error = False, "the native extension was not built (no C++ compiler?)"
            return False
        try:
            lib = ctypes.CDLL(str(path))
            for name, symbol in ((_ASSIGN, "JaxkmeansAssignF32"), (_LLOYD, "JaxkmeansLloydF32")):
                jax.ffi.register_ffi_target(
                    name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
                )
        except Exception as e:  # a broken build must not break the package
            _loaded, _error = False, f"could not load {path.name}: {e}"
            return False
        _loaded = True
        return True


def available() -> bool:
    """Whether the native CPU kernels are built and registered."""
    return _load()


def load_error() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    _load()
    return _error


def enabled() -> bool:
    """Whether new programs use the native kernels (available and not switched off)."""
    return _enabled and available()


def set_enabled(flag: bool) -> bool:
    """Switches the native kernels on or off for calls made from now on. The public
    functions resolve the choice before their jitted core (as a static argument), so
    switching never reuses a program compiled with the other choice; code that calls
    them inside its own ``jit`` keeps what it traced. Returns the previous setting."""
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f"`flag` must be a bool; got {type(flag).__name__}.")
    old, _enabled = _enabled, flag
    return old


def usable(dtype: Any, metric: str, precision: str) -> bool:
    """Whether the native kernels serve this work where a program runs on CPU: enabled,
    float32 data, squared Euclidean, and ``precision`` float32 or tf32 (which XLA runs
    as float32 on CPU anyway). Programs lowered for other platforms never call them."""
    return (
        enabled()
        and jnp.dtype(dtype) == jnp.float32
        and metric == "squared_euclidean"
        and precision in ("float32", "tf32")
    )


def _sds(shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def nearest(x: jax.Array, frame: Any) -> tuple[jax.Array, jax.Array]:
    """``(labels, min_dist)`` of rows `x` (n, d) for prepared centers ``frame = (offset,
    cp = -2 (c - offset), bias = ||c - offset||^2)``. Call only where the program runs on CPU
    (:mod:`jaxkmeans.kernels` wraps it in ``lax.platform_dependent``)."""
    offset, cp, bias = frame
    n = x.shape[0]
    call = jax.ffi.ffi_call(_ASSIGN, (_sds((n,), jnp.int32), _sds((n,))), vmap_method="sequential")
    labels, dist = call(x, offset, cp, bias)
    return labels, dist


def statistics(
    x: jax.Array, w: jax.Array | None, frame: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))``: the nearest
    centers as :func:`nearest`, plus per-center sums of ``w * (x - offset)``, summed
    weights and the weighted loss (accumulated in float64, independent of threading)."""
    offset, cp, bias = frame
    n, d = x.shape
    k = cp.shape[0]
    call = jax.ffi.ffi_call(
        _LLOYD,
        (_sds((n,), jnp.int32), _sds((n,)), _sds((k, d)), _sds((k,)), _sds(())),
        vmap_method="sequential",
    )
    wv = jnp.zeros((0,), jnp.float32) if w is None else w
    labels, dist, sums, counts, loss = call(x, wv, offset, cp, bias, weighted=w is not None)
    return sums, counts, loss, labels, dist
