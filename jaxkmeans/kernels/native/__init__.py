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

Loading never breaks JAX: the library records the XLA FFI API version (and jaxlib
version) it was compiled against; the loader starts JAX's CPU backend, compares those
with the running jaxlib and only then registers the kernels. On any problem it leaves
the pure-JAX kernels in use, says why in :func:`load_error`, and warns once
(``RuntimeWarning``). :func:`build_info` reports what was built, loaded, or why not.
``JAXKMEANS_NATIVE_LIBRARY=<path>`` loads another build of ``kmeans_cpu.cc`` instead of
the packaged one.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import pathlib
import re
import shutil
import threading
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "available",
    "enabled",
    "set_enabled",
    "load_error",
    "build_info",
    "usable",
    "pp_round_available",
    "pp_round",
    "sparse_available",
    "sparse_nearest",
    "sparse_statistics",
    "flat_available",
    "flat_nearest",
    "flat_statistics",
]

_ASSIGN = "jaxkmeans_assign_f32"
_LLOYD = "jaxkmeans_lloyd_f32"
_PP_ROUND = "jaxkmeans_pp_round_f32"
_SPARSE_ASSIGN = "jaxkmeans_sparse_assign_f32"
_SPARSE_LLOYD = "jaxkmeans_sparse_lloyd_f32"
_FLAT_ASSIGN = "jaxkmeans_assign_flat_indexed_f32"
_FLAT_LLOYD = "jaxkmeans_lloyd_flat_indexed_f32"
# Loads this library instead of the packaged one (tests; a locally built kernel).
_LIBRARY_ENV = "JAXKMEANS_NATIVE_LIBRARY"

_lock = threading.Lock()
_loaded: bool | None = None
_error: str | None = None
_info: dict[str, Any] = {}
_enabled = os.environ.get("JAXKMEANS_NATIVE", "1").strip().lower() not in ("0", "false", "no")


def _library_path() -> pathlib.Path | None:
    env = os.environ.get(_LIBRARY_ENV, "").strip()
    if env:
        return pathlib.Path(env)
    here = pathlib.Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_kmeans_cpu{suffix}"
        if path.is_file():
            return path
    return None


def _jaxlib_version() -> str | None:
    try:
        from jaxlib.version import __version__
    except Exception:
        return None
    return str(__version__)


def _runtime_ffi_api() -> tuple[int, int] | None:
    """The XLA FFI API version of the running jaxlib, from the headers it ships."""
    try:
        header = pathlib.Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api" / "c_api.h"
        text = header.read_text()
    except Exception:
        return None
    major = re.search(r"^#define XLA_FFI_API_MAJOR (\d+)", text, re.M)
    minor = re.search(r"^#define XLA_FFI_API_MINOR (\d+)", text, re.M)
    return (int(major.group(1)), int(minor.group(1))) if major and minor else None


def _built_with(lib: ctypes.CDLL) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """(FFI API version, jaxlib version, micro-kernel family) compiled into `lib`; None
    for what it does not report (a library built before these were recorded)."""
    api = version = isa = None
    try:
        major, minor = lib.JaxkmeansFfiApiMajor, lib.JaxkmeansFfiApiMinor
        major.restype = minor.restype = ctypes.c_int
        api = (int(major()), int(minor()))
    except AttributeError:
        pass
    for name in ("JaxkmeansBuiltJaxlib", "JaxkmeansKernelIsa"):
        try:
            fn = getattr(lib, name)
        except AttributeError:
            continue
        fn.restype = ctypes.c_char_p
        value = (fn() or b"").decode("ascii", "replace") or None
        if name == "JaxkmeansBuiltJaxlib":
            version = value
        else:
            isa = value
    return api, version, isa


def _mismatch(info: dict[str, Any]) -> str | None:
    """Why the library cannot serve the running jaxlib, or None. XLA accepts handlers of
    its own FFI major version up to its own minor (an older minor is supported; a newer
    one is refused); without the running version, the jaxlib versions must agree."""
    built, running = info["built_ffi_api"], info["runtime_ffi_api"]
    if built is not None and running is not None:
        if built[0] != running[0] or built[1] > running[1]:
            return (
                f"it was built against XLA FFI API {built[0]}.{built[1]} but the running "
                f"jaxlib {info['runtime_jaxlib']} provides {running[0]}.{running[1]}"
            )
        return None
    bj, rj = info["built_jaxlib"], info["runtime_jaxlib"]
    if bj is not None and rj is not None and bj != rj:
        return f"it was built for jaxlib {bj} but jaxlib {rj} is running"
    return None


def _not_built_reason() -> str:
    """Why there is no library here, and what builds one: a source checkout that was
    never built (``pip install -e .``), an install made without a C++ compiler, or one
    made when the build failed although a compiler is found now."""
    here = pathlib.Path(__file__).resolve().parent
    root = here.parents[2]
    if (root / "setup.py").is_file() and (here / "kmeans_cpu.cc").is_file():
        return (
            f"the native extension was not built in this source checkout ({root}); run "
            "`pip install -e .` there to build it (add --no-build-isolation to build "
            "against the installed jaxlib)"
        )
    compilers = [os.environ.get("CXX", "").split(" ")[0], "c++", "g++", "clang++"]
    found = next((c for c in compilers if c and shutil.which(c)), None)
    if found is None:
        return (
            "the native extension was not built (no C++ compiler was found); reinstall "
            "jaxkmeans with a C++ compiler available"
        )
    return (
        f"the native extension was not built at install, though a C++ compiler ({found}) "
        "is found now; reinstall to build it (`pip install --no-build-isolation "
        "--force-reinstall jaxkmeans`; its build log says why it was skipped)"
    )


def _fail(reason: str, warn: bool) -> bool:
    global _loaded, _error
    _loaded, _error = False, reason
    _info["error"] = reason
    if warn:
        warnings.warn(
            f"jaxkmeans: the native CPU kernels are not used ({reason}); jaxkmeans runs "
            "its pure-JAX kernels instead (same results, slower on CPU). Rebuild against "
            "the installed jaxlib (`pip install --no-build-isolation --force-reinstall "
            "jaxkmeans`) or set JAXKMEANS_NATIVE=0 to silence this.",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


def _register_optional(
    lib: ctypes.CDLL, feature: str, targets: tuple[tuple[str, str], ...]
) -> None:
    """Registers the handlers `targets` ((name, symbol), ...) of a kernel family that
    older builds lack; ``build_info()[feature]`` says whether it is used."""
    _info[feature] = False
    try:
        symbols = [(name, getattr(lib, symbol)) for name, symbol in targets]
    except AttributeError:
        return
    try:
        for name, symbol in symbols:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    except Exception:  # a broken handler must not break the package
        return
    _info[feature] = True


def _load() -> bool:
    """Loads and registers the library once. Never breaks JAX: the CPU backend is started
    first (a handler registered before it starts is validated only when it starts, and a
    rejected one makes every later JAX call fail), the recorded FFI API version is
    checked before registering, and any failure leaves the pure-JAX path in use, with
    one RuntimeWarning when a built library could not be used."""
    global _loaded, _error
    with _lock:
        if _loaded is not None:
            return _loaded
        path = _library_path()
        _info.update(
            library=None if path is None else str(path),
            source="env " + _LIBRARY_ENV if os.environ.get(_LIBRARY_ENV, "").strip() else None,
            built=path is not None,
            built_ffi_api=None,
            built_jaxlib=None,
            kernel_isa=None,
            runtime_ffi_api=_runtime_ffi_api(),
            runtime_jaxlib=_jaxlib_version(),
            loaded=False,
            error=None,
        )
        if path is None:
            return _fail(_not_built_reason(), warn=False)
        if _info["source"] is None:
            _info["source"] = "package"
        try:
            jax.devices("cpu")
        except Exception as e:
            # No CPU backend (e.g. JAX_PLATFORMS without cpu): nothing would run the
            # kernels, and registering now could break a CPU backend started later.
            return _fail(f"JAX's CPU backend is not available: {e}", warn=False)
        try:
            lib = ctypes.CDLL(str(path))
            api, version, isa = _built_with(lib)
            _info.update(built_ffi_api=api, built_jaxlib=version, kernel_isa=isa)
        except Exception as e:
            return _fail(f"could not load {path.name}: {e}", warn=True)
        why = _mismatch(_info)
        if why is not None:
            return _fail(f"{path.name}: {why}", warn=True)
        try:
            for name, symbol_name in (
                (_ASSIGN, "JaxkmeansAssignF32"),
                (_LLOYD, "JaxkmeansLloydF32"),
            ):
                jax.ffi.register_ffi_target(
                    name, jax.ffi.pycapsule(getattr(lib, symbol_name)), platform="cpu"
                )
        except Exception as e:  # a broken build must not break the package
            return _fail(f"could not register {path.name}: {e}", warn=True)
        # Newer kernel families: a build without one keeps the others.
        _register_optional(lib, "pp_round", ((_PP_ROUND, "JaxkmeansPpRoundF32"),))
        _register_optional(
            lib,
            "sparse",
            (
                (_SPARSE_ASSIGN, "JaxkmeansSparseAssignF32"),
                (_SPARSE_LLOYD, "JaxkmeansSparseLloydF32"),
            ),
        )
        # The kernels over rows read in place (a flat buffer, a start, a row index).
        _register_optional(
            lib,
            "flat",
            (
                (_FLAT_ASSIGN, "JaxkmeansAssignFlatIndexedF32"),
                (_FLAT_LLOYD, "JaxkmeansLloydFlatIndexedF32"),
            ),
        )
        _loaded = True
        _info["loaded"] = True
        return True


def available() -> bool:
    """Whether the native CPU kernels are built and registered."""
    return _load()


def load_error() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    _load()
    return _error


def build_info() -> dict[str, Any]:
    """What the native library is and whether it is in use (for ``show_config``):
    ``library`` (path or None), ``source`` ("package" or the environment variable that
    chose it), ``built``, ``built_ffi_api`` ((major, minor) of the XLA FFI headers it was
    compiled with) and ``built_jaxlib``, ``runtime_ffi_api`` and ``runtime_jaxlib`` (the
    running jaxlib's), ``kernel_isa`` ("avx2+fma" or "portable"), ``loaded``, ``enabled``
    and ``error`` (why it is not loaded)."""
    _load()
    return dict(_info, enabled=enabled())


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


def pp_round_available() -> bool:
    """Whether the k-means++ round kernel (:func:`pp_round`) is used: the loaded library
    has it, unless ``JAXKMEANS_NATIVE_PP=0`` turns it off (read when a k-means++ program
    is traced)."""
    if os.environ.get("JAXKMEANS_NATIVE_PP", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return available() and bool(_info.get("pp_round"))


def _sds(shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _assign(
    target: str, x: tuple[jax.Array, ...], shape: tuple[int, ...], frame: Any, **attrs: Any
) -> tuple[jax.Array, jax.Array]:
    """The assign handler `target` over rows of `shape` (n, d), given by its leading
    operands `x`."""
    offset, cp, bias = frame
    n = shape[0]
    call = jax.ffi.ffi_call(target, (_sds((n,), jnp.int32), _sds((n,))), vmap_method="sequential")
    labels, dist = call(*x, offset, cp, bias, **attrs)
    return labels, dist


def _lloyd(
    target: str,
    x: tuple[jax.Array, ...],
    shape: tuple[int, ...],
    w: jax.Array | None,
    frame: Any,
    **attrs: Any,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """The Lloyd statistics handler `target` over rows of `shape` (n, d), given by its
    leading operands `x`."""
    offset, cp, bias = frame
    n, d = shape
    k = cp.shape[0]
    call = jax.ffi.ffi_call(
        target,
        (_sds((n,), jnp.int32), _sds((n,)), _sds((k, d)), _sds((k,)), _sds(())),
        vmap_method="sequential",
    )
    wv = jnp.zeros((0,), jnp.float32) if w is None else w
    labels, dist, sums, counts, loss = call(
        *x, wv, offset, cp, bias, weighted=w is not None, **attrs
    )
    return sums, counts, loss, labels, dist


def nearest(x: jax.Array, frame: Any) -> tuple[jax.Array, jax.Array]:
    """``(labels, min_dist)`` of rows `x` (n, d) for prepared centers ``frame = (offset,
    cp = -2 (c - offset), bias = ||c - offset||^2)``. Call only where the program runs on CPU
    (:mod:`jaxkmeans.kernels` wraps it in ``lax.platform_dependent``)."""
    return _assign(_ASSIGN, (x,), x.shape, frame)


def statistics(
    x: jax.Array, w: jax.Array | None, frame: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))``: the nearest
    centers as :func:`nearest`, plus per-center sums of ``w * (x - offset)``, summed
    weights and the weighted loss (accumulated in float64, independent of threading)."""
    return _lloyd(_LLOYD, (x,), x.shape, w, frame)


def pp_round(
    xp: jax.Array,
    xsq: jax.Array,
    w: jax.Array,
    d2: jax.Array,
    c: jax.Array,
    csq: jax.Array,
    cand: jax.Array,
    block: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One greedy k-means++ round in one pass over the prepared float32 rows `xp` (n, d).

    ``c`` (1 + t, d) holds the previous pick p (row ``cand[0]``) and then the t candidates
    (rows ``cand[1:]``), ``csq`` their squared norms. With ``D(x, c) = max(xsq - 2 x.c +
    csq, 0)`` (the pure-JAX round's expansion) it returns ``(d2' (n,), pot (t,), bsum (t,
    nb))``: ``d2' = min(d2, D(x, p))`` (0 at p's row; the lazy update of the previous
    pick), ``pot[j] = sum(w * dc_j)`` with ``dc_j = min(d2', D(x, c_j))`` (0 at the
    candidate's row), and ``bsum[j, b]`` the same sum over the `block` rows of block b.
    Sums are float64 in a fixed order (deterministic, independent of threading). Call
    only where the program runs on CPU (inside ``lax.platform_dependent``)."""
    n = xp.shape[0]
    t = c.shape[0] - 1
    nb = -(-n // block)
    call = jax.ffi.ffi_call(
        _PP_ROUND, (_sds((n,)), _sds((t,)), _sds((t, nb))), vmap_method="sequential"
    )
    return tuple(call(xp, xsq, w, d2, c, csq, cand.astype(jnp.int32), block=block))  # type: ignore[return-value]  # fixed arity


def flat_available() -> bool:
    """Whether the kernels over rows read in place (:func:`flat_nearest`,
    :func:`flat_statistics`) are used: loaded, enabled and the library has them."""
    return enabled() and bool(_info.get("flat"))


def _flat_rows(rows: Any) -> tuple[tuple[jax.Array, jax.Array], dict[str, Any]]:
    """The flat handlers' leading operands (the flat buffer and the row index, empty
    when rows are in order) and attributes of
    :class:`~jaxkmeans._validation.InPlaceRows`."""
    n, d = rows.shape
    index = jnp.zeros((0,), jnp.int32) if rows.index is None else rows.index
    attrs = {"start": np.int64(rows.off), "rows": np.int64(n), "cols": np.int64(d)}
    return (rows.flat, index), attrs


def flat_nearest(rows: Any, frame: Any) -> tuple[jax.Array, jax.Array]:
    """:func:`nearest` of :class:`~jaxkmeans._validation.InPlaceRows` (the caller's
    host rows in place: a flat buffer, the element its first row starts at, and
    optionally the caller's row of each row)."""
    operands, attrs = _flat_rows(rows)
    return _assign(_FLAT_ASSIGN, operands, rows.shape, frame, **attrs)


def flat_statistics(
    rows: Any, w: jax.Array | None, frame: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`statistics` of :class:`~jaxkmeans._validation.InPlaceRows`."""
    operands, attrs = _flat_rows(rows)
    return _lloyd(_FLAT_LLOYD, operands, rows.shape, w, frame, **attrs)


def sparse_available() -> bool:
    """Whether the sparse (CSR) kernels of the loaded library are used: loaded, enabled
    and the library has them."""
    return enabled() and bool(_info.get("sparse"))


def sparse_nearest(
    indptr: jax.Array,
    cols: jax.Array,
    vals: jax.Array,
    base: jax.Array,
    cp: jax.Array,
    bias: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,), min_dist (n,))`` of CSR rows (``indptr`` (n + 1,), ``cols`` and
    ``vals`` their stored entries, ``base`` (n,) the per-row base, or (0,): each row's
    squared norm, summed by the kernel) for prepared centers
    ``cp`` (k, d) and ``bias`` (k,): ``dist = max(base + <x, cp_j> + bias_j, 0)``,
    ties to the lowest index. Call only where the program runs on CPU."""
    n = indptr.shape[0] - 1
    if base.shape[0] not in (0, n):
        raise ValueError(f"`base` must have shape ({n},) or (0,); got {base.shape}.")
    call = jax.ffi.ffi_call(
        _SPARSE_ASSIGN, (_sds((n,), jnp.int32), _sds((n,))), vmap_method="sequential"
    )
    return tuple(call(indptr, cols, vals, base, cp, bias))  # type: ignore[return-value]  # fixed arity


def sparse_statistics(
    indptr: jax.Array,
    cols: jax.Array,
    vals: jax.Array,
    base: jax.Array,
    w: jax.Array,
    cp: jax.Array,
    bias: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`sparse_nearest` plus the per-center sums of ``w * x`` (k, d), summed
    weights (k,) and the weighted loss (), accumulated in float64 in an order that does
    not depend on threading. Returns ``(labels, dist, sums, counts, loss)``."""
    n = indptr.shape[0] - 1
    k, d = cp.shape
    call = jax.ffi.ffi_call(
        _SPARSE_LLOYD,
        (_sds((n,), jnp.int32), _sds((n,)), _sds((k, d)), _sds((k,)), _sds(())),
        vmap_method="sequential",
    )
    return tuple(call(indptr, cols, vals, base, w, cp, bias))  # type: ignore[return-value]  # fixed arity
