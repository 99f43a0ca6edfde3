"""Every argument check of the package, in one place, and the one row-identity helper.

Every check runs in Python before anything is compiled. Checks on *values* (NaN, the
number of distinct points) need concrete arrays; under a user's ``jax.jit`` the arrays
are tracers and only the shape/dtype checks apply.

Row identity (:func:`row_identity`): two 32-bit hashes of each row's bits, or of its
direction key for cosine (exact positive multiples of a row are one direction). Every
place that asks "are these the same point?" uses it: the distinct-point check, the
initializers' duplicate merge, and the empty-cluster candidates.
"""

from __future__ import annotations

import functools
import gc
import math
import operator
import os
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SQUARED_EUCLIDEAN_DISTANCE = "squared_euclidean"
COSINE_DISTANCE = "cosine"
METRICS = (SQUARED_EUCLIDEAN_DISTANCE, COSINE_DISTANCE)

PRECISIONS = ("float32", "tf32", "bfloat16")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def is_traced(*xs: Any) -> bool:
    """True when any argument is a tracer (we are inside a user's jit/vmap)."""
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def check_metric(metric: Any, name: str = "metric") -> str:
    return check_choice(metric, name, METRICS)


def check_precision(precision: Any) -> str:
    return "float32" if precision is None else check_choice(precision, "precision", PRECISIONS)


def check_key(key: Any, name: str = "key") -> Any:
    """`key` if it is a JAX PRNG key: a typed key array (``jax.random.key``) or a raw
    uint32 key (``jax.random.PRNGKey``), concrete or traced; else a TypeError."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (
        jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        or (dtype == np.uint32 and getattr(key, "ndim", 0) >= 1)
    ):
        return key
    raise TypeError(
        f"`{name}` must be a JAX PRNG key, e.g. jax.random.key(0) or jax.random.PRNGKey(0); "
        f"got {type(key).__name__} {key!r:.60}."
    )


@overload
def check_positive_int(
    value: Any, name: str, *, minimum: int = 1, allow_none: Literal[False] = False
) -> int: ...


@overload
def check_positive_int(
    value: Any, name: str, *, minimum: int = 1, allow_none: bool
) -> int | None: ...


def check_positive_int(
    value: Any, name: str, *, minimum: int = 1, allow_none: bool = False
) -> int | None:
    """`value` as an int >= `minimum` (None passes when `allow_none`)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value}.")
    return value


def check_int(value: Any, name: str, what: str = "an int") -> int:
    """Any int (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be {what}; got {value!r}.")
    return int(value)


def check_non_negative(value: Any, name: str, *, allow_none: bool = False) -> Any:
    """A real number >= 0 as a float (tracers pass through; None when `allow_none`)."""
    if value is None and allow_none:
        return None
    if is_traced(value):
        return value
    what = "None or a float >= 0" if allow_none else "a float >= 0"
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"`{name}` must be {what}; got {value!r}.")
    if not value >= 0:
        raise ValueError(f"`{name}` must be {what}; got {value!r}.")
    return float(value)


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be a bool; got {value!r}.")
    return bool(value)


def check_mesh(mesh: Any) -> Any:
    """None or a ``jax.sharding.Mesh``."""
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"`mesh` must be None or a jax.sharding.Mesh; got {type(mesh).__name__}.")
    return mesh


def check_choice(value: Any, name: str, choices: tuple[str, ...], extra: str = "") -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}{extra}; got {value!r}.")
    return value


_FLOAT64_WARNED = False

FLOAT64_WARNING = (
    "float64 data is computed in float32 because jax_enable_x64 is off; for float64 "
    'computation call jax.config.update("jax_enable_x64", True) before using JAX. '
    "(This warning is shown once per process.)"
)


def _warn_float64_once() -> None:
    """The UserWarning that float64 data runs in float32 (once per process)."""
    global _FLOAT64_WARNED
    if _FLOAT64_WARNED:
        return
    _FLOAT64_WARNED = True
    # Point at the first frame outside the package (the user's call).
    package = __name__.rpartition(".")[0] + "."
    frame: types.FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(FLOAT64_WARNING, UserWarning, stacklevel=level)


def _float_dtype(dtype: Any, name: str, *, warn_float64: bool = False) -> np.dtype:
    """The dtype the package computes `dtype` data in.

    float32 for float16/bfloat16 (and narrower: their rounding of the frame origin and
    of squared distances overflows or loses everything) and for integers and bools
    without jax_enable_x64; float64 data in float64 with jax_enable_x64, else in float32
    (with a once-per-process UserWarning when `warn_float64`).
    """
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        if dtype.itemsize < 4:
            return np.dtype(np.float32)
        out = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
        if warn_float64 and out.itemsize < dtype.itemsize:
            _warn_float64_once()
        return out
    if jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
        return np.dtype(jnp.zeros((), dtype=float).dtype)  # default float (x64 aware)
    raise TypeError(f"`{name}` must be a real numeric array; got dtype {dtype}.")


def as_data(
    x: Any, name: str = "x", *, check_values: bool = True, warn_float64: bool = True
) -> jax.Array:
    """Converts `x` to a floating 2-D array, checking rank, size, dtype and finiteness.

    The array is in the compute dtype (:func:`_float_dtype`): float16/bfloat16 become
    float32; a float64 array stays float64 with jax_enable_x64, else becomes float32 with
    a once-per-process UserWarning (when `warn_float64`; nested lists, which have no
    dtype of their own, take JAX's default float dtype silently).
    """
    return to_device(_checked_array(x, name, check_values, warn_float64, place=True))


def all_finite(a: np.ndarray, block_bytes: int = 1 << 22) -> bool:
    """Whether a host array has no NaN/inf, checked in row blocks of about
    `block_bytes` (no temporary the size of the data)."""
    if a.ndim < 2 or a.nbytes <= block_bytes:
        return bool(np.isfinite(a).all())
    rows = max(1, block_bytes // max(1, a[0].nbytes))
    return all(bool(np.isfinite(a[i : i + rows]).all()) for i in range(0, a.shape[0], rows))


# XLA's CPU client uses a host buffer in place (no copy) when it is aligned to this.
_CPU_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized C-contiguous host array whose data is 64-byte aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    release_host_copies(wait=False)  # earlier copies already dropped and done go first
    raw = np.empty(nbytes + _CPU_ALIGNMENT, np.uint8)
    key = id(raw)
    _OWN_BUFFERS[key] = weakref.ref(raw, lambda _: _OWN_BUFFERS.pop(key, None))
    start = (-raw.ctypes.data) % _CPU_ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


# aligned_copy works in row blocks of about this many bytes (they stay in cache between
# the copy and the finiteness check), with up to _COPY_THREADS threads for arrays of at
# least _PARALLEL_COPY_BYTES.
_COPY_BLOCK_BYTES = 1 << 20
_PARALLEL_COPY_BYTES = 1 << 24
_COPY_THREADS = 4


def _copy_threads(nbytes: int) -> int:
    if nbytes < _PARALLEL_COPY_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_COPY_THREADS, cores))


def needs_copy(a: np.ndarray, dtype: Any = None) -> bool:
    """Whether the CPU device can not use host array `a` in place as an array of
    `dtype` (default its own): another dtype, not C-contiguous, or not 64-byte aligned
    (numpy's large arrays are 16-byte aligned)."""
    return (
        (dtype is not None and np.dtype(dtype) != a.dtype)
        or not a.flags.c_contiguous
        or a.ctypes.data % _CPU_ALIGNMENT != 0
    )


def in_row_blocks(n: int, row_bytes: int, work: Callable[[int, int], bool]) -> bool:
    """Runs ``work(i, j)`` over the row blocks ``[i, j)`` of `n` rows of `row_bytes`
    bytes each, blocks of about 1 MiB (they stay in cache between the steps of `work`),
    split in contiguous parts over up to 4 threads when the rows hold at least 16 MiB
    (numpy releases the GIL in copies, gathers and ufuncs).

    A part stops at its first block for which `work` returns False. Returns whether
    every block returned True; an exception in any thread is raised here.
    """
    rows = max(1, _COPY_BLOCK_BYTES // max(1, row_bytes))
    threads = max(1, min(_copy_threads(n * row_bytes), -(-n // rows)))
    bounds = [n * i // threads for i in range(threads + 1)]
    ok = [True] * threads
    errors: list[BaseException] = []

    def run(part: int) -> None:
        try:
            for i in range(bounds[part], bounds[part + 1], rows):
                if not work(i, min(i + rows, bounds[part + 1])):
                    ok[part] = False
                    return
        except BaseException as e:  # re-raised by the caller's thread
            errors.append(e)

    workers = [threading.Thread(target=run, args=(p,), daemon=True) for p in range(1, threads)]
    for t in workers:
        t.start()
    run(0)
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return all(ok)


def aligned_copy(a: np.ndarray, dtype: Any = None, check_finite: bool = False) -> tuple[Any, bool]:
    """A copy of host array `a` cast to `dtype` (default its own) in a buffer the CPU
    device uses in place (:func:`aligned_empty`).

    The copy runs in row blocks (:func:`in_row_blocks`: about 1 MiB each, over up to 4
    threads for large arrays), and with `check_finite` each block is checked for NaN/inf
    right after it is copied, while it is still in cache: one read of the data for
    both. At 2M x 128 float32 this takes about a third of the time of a whole-array
    ``np.copyto`` followed by a check, which first-touches the new memory from one
    thread.

    Returns:
      ``(copy, finite)``; `finite` is True when not checked. Values beyond the range
      of `dtype` become inf (and are reported as not finite), without a warning.
    """
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    out = aligned_empty(a.shape, dtype)
    if a.ndim == 0 or a.size == 0:
        out[...] = a
        return out, not check_finite or bool(np.isfinite(out).all())

    def copy(i: int, j: int) -> bool:
        with np.errstate(over="ignore", invalid="ignore"):  # numpy's state is per thread
            np.copyto(out[i:j], a[i:j], casting="unsafe")
        return not check_finite or bool(np.isfinite(out[i:j]).all())

    return out, in_row_blocks(a.shape[0], out[0].nbytes, copy)


def to_device(a: Any) -> Any:
    """A checked host array on the default device; device and traced arrays as they
    are. On CPU the device array is a 64-byte aligned host buffer used in place: an
    aligned C-contiguous array goes as it is (no copy), another one is first copied
    into such a buffer (:func:`aligned_copy`: one copy, several times faster than
    ``device_put``'s own copy of an unaligned array; ``jnp.asarray`` even makes two on
    its first use)."""
    if isinstance(a, jax.Array):
        return a
    a = np.asarray(a)
    if jax.default_backend() == "cpu" and needs_copy(a):
        a, _ = aligned_copy(a)
    placed = jax.device_put(a)
    root = _root(a)
    own = _OWN_BUFFERS.get(id(root))
    if own is not None and own() is root:  # freed late: see release_host_copies
        _PLACED.append((weakref.ref(placed), own))
    return placed


class _HostView:
    """`size` elements of `dtype` at address `addr`, read-only, keeping `owner` (the
    array whose memory they are) alive: numpy's ``__array_interface__`` protocol."""

    def __init__(self, owner: np.ndarray, addr: int, size: int) -> None:
        self.owner = owner
        self.__array_interface__ = {
            "data": (addr, True),
            "shape": (size,),
            "typestr": owner.dtype.str,
            "version": 3,
        }


@jax.tree_util.register_pytree_node_class
class InPlaceRows:
    """Rows (n, d) that the CPU device reads in place from the caller's host array.

    XLA's CPU client uses a host buffer without a copy only when it is 64-byte aligned,
    and numpy's large arrays start 16 bytes past a page boundary. So the device array
    `flat` is the caller's memory viewed from the 64-byte boundary at or below its first
    row (the bytes in between lie in the same cache line, hence the same page), and the
    caller's rows start `off` elements in: caller row r is ``flat[off + r d : off + (r +
    1) d]``. Row i is caller row i, or with an `index` ((n,) int32 device array) caller
    row ``index[i]``: rows in an order (and with repeats) of our choosing, still read
    in place.

    The native kernels read it as it is; :meth:`take` (a gather), :meth:`block` (a
    block of rows) and :meth:`dense` (the whole (n, d) array, which XLA materializes:
    a copy inside that program) serve the rest. `off`, `n` and `d` are static (part of
    the compiled program); `flat` and `index` are the array leaves.
    """

    def __init__(self, flat: Any, off: int, n: int, d: int, index: Any = None) -> None:
        self.flat, self.off, self.n, self.d, self.index = flat, off, n, d, index

    def tree_flatten(self) -> tuple[tuple[Any, Any], tuple[int, int, int]]:
        return (self.flat, self.index), (self.off, self.n, self.d)

    @classmethod
    def tree_unflatten(cls, aux: tuple[int, int, int], leaves: Any) -> InPlaceRows:
        return cls(leaves[0], *aux, index=leaves[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    @property
    def dtype(self) -> Any:
        return self.flat.dtype

    @property
    def size(self) -> int:
        return self.n * self.d

    ndim = 2

    def _gather(self, rows: jax.Array) -> jax.Array:
        """Caller rows `rows` (m,) as an (m, d) array: one gather of d-element slices
        (no (m, d) index array)."""
        starts = (self.off + rows.astype(jnp.int32) * self.d)[:, None]
        dims = lax.GatherDimensionNumbers(
            offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
        )
        return lax.gather(self.flat, starts, dims, (self.d,), mode=lax.GatherScatterMode.CLIP)

    def dense(self) -> jax.Array:
        """The rows as an (n, d) array (a copy, inside a program)."""
        if self.index is not None:
            return self._gather(self.index)
        start = self.off
        return lax.slice(self.flat, (start,), (start + self.size,)).reshape(self.n, self.d)

    def take(self, idx: jax.Array) -> jax.Array:
        """Rows `idx` (m,) as an (m, d) array: one gather from the flat buffer."""
        idx = jnp.clip(idx.astype(jnp.int32), 0, self.n - 1)
        return self._gather(idx if self.index is None else self.index[idx])

    def block(self, start: Any, rows: int) -> jax.Array:
        """`rows` rows from row `start` as a (rows, d) array (a start past ``n - rows``
        is clamped to it, as ``lax.dynamic_slice`` clamps)."""
        if self.index is not None:
            return self._gather(lax.dynamic_slice(self.index, (start,), (rows,)))
        begin = self.off + start * self.d
        return lax.dynamic_slice(self.flat, (begin,), (rows * self.d,)).reshape(rows, self.d)

    def host(self) -> np.ndarray:
        """The rows as a numpy array (concrete rows only): read-only and without a copy,
        or with an `index` a gathered copy."""
        flat = np.asarray(self.flat)
        if self.index is None:
            return flat[self.off : self.off + self.size].reshape(self.n, self.d)
        index = np.asarray(self.index)
        caller = flat[self.off :][: (flat.size - self.off) // self.d * self.d]
        return np.take(caller.reshape(-1, self.d), index, axis=0)


def take_rows(x: Any, idx: jax.Array) -> jax.Array:
    """Rows `idx` (m,) of `x` (an (n, d) array or :class:`InPlaceRows`) as one gather
    (one collective when `x` is row-sharded)."""
    if isinstance(x, InPlaceRows):
        return x.take(idx)
    return jnp.take(x, idx, axis=0)


def row_block(x: Any, start: Any, size: int) -> jax.Array:
    """Rows ``[start, start + size)`` of `x` (an (n, d) array or :class:`InPlaceRows`);
    a start past ``n - size`` is clamped to it (as ``lax.dynamic_slice``)."""
    if isinstance(x, InPlaceRows):
        return x.block(start, size)
    return lax.dynamic_slice_in_dim(x, start, size)


def dense_rows(x: Any) -> Any:
    """`x` as an (n, d) array: :class:`InPlaceRows` copied (inside a program; for a
    step that reads every row as XLA's own operands), anything else as it is."""
    return x.dense() if isinstance(x, InPlaceRows) else x


def _readable_in_place(a: np.ndarray, dtype: Any) -> bool:
    """Whether host rows `a` in the compute `dtype` can be read in place (see
    :func:`in_place_rows`) as they are: 2-D, C-contiguous, float32 already."""
    return a.ndim == 2 and a.flags.c_contiguous and a.dtype == dtype == np.float32


def in_place_rows(
    a: np.ndarray, index: np.ndarray | None = None, *, aligned: bool = False
) -> InPlaceRows | None:
    """Checked host rows `a` (n, d) as :class:`InPlaceRows` on the CPU device, without
    a copy, when the device would otherwise copy them and the native flat kernels can
    read them: float32, C-contiguous, not 64-byte aligned, aligned to their element
    size, fewer than 2^31 elements (the flat buffer is indexed with int32). None
    otherwise (an aligned array is used in place by ``device_put`` as it is), and when
    this jaxlib copies anyway.

    With `index` ((m,) host array of rows of `a`), the rows are ``a[index]``, read
    through the index. With `index` or `aligned`, aligned arrays are viewed too (for
    callers that need :class:`InPlaceRows`)."""
    if jax.default_backend() != "cpu" or not _readable_in_place(a, a.dtype) or a.size == 0:
        return None
    if a.size + _CPU_ALIGNMENT >= 2**31:
        return None
    misaligned = a.ctypes.data % _CPU_ALIGNMENT
    if (misaligned == 0 and index is None and not aligned) or misaligned % a.itemsize:
        return None
    off = misaligned // a.itemsize
    view = np.asarray(_HostView(a, a.ctypes.data - misaligned, a.size + off))
    flat = jax.device_put(view)
    if flat.unsafe_buffer_pointer() != view.ctypes.data:  # copied after all
        return None
    if index is None:
        return InPlaceRows(flat, off, a.shape[0], a.shape[1])
    index = np.asarray(index, np.int32)
    return InPlaceRows(flat, off, index.shape[0], a.shape[1], jax.device_put(index))


# XLA's backend optimizations off, and XLA:CPU's older (non-MLIR) fusion emitters: a
# third of the compile time of a program (the k-means++ start of a fit at 10,240 x 10
# -> 8: 1.1-1.6 s at the default options, 1.1-1.3 s with optimizations off alone,
# 0.42-0.51 s with both), which then runs up to about 1.5-3x slower where XLA's own code
# does the work (the native kernels are compiled already; at 65,536 x 32 -> 64 its
# k-means++ runs 0.20 s against 0.12 s). Chosen for data of at most
# FAST_COMPILE_ELEMENTS values on CPU, where a run takes milliseconds and compiling is
# most of a first fit. A jaxlib that no longer knows an option compiles without it
# (:meth:`SizeAwareJit.for_data`).
FAST_COMPILE_ELEMENTS = 1 << 21
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
# Options of FAST_COMPILE_OPTIONS that this jaxlib rejected (left out from then on).
_REJECTED_OPTIONS: set[str] = set()


def fast_compile(x: Any) -> bool:
    """Whether programs over the data `x` are compiled with
    :data:`FAST_COMPILE_OPTIONS` (dense data of at most :data:`FAST_COMPILE_ELEMENTS`
    values, on CPU)."""
    size = getattr(x, "size", None)
    return (
        isinstance(size, int) and size <= FAST_COMPILE_ELEMENTS and jax.default_backend() == "cpu"
    )


def _rejected_option(error: Exception, options: dict[str, Any]) -> str | None:
    """The option of `options` that `error` (XLA's "No such compile option: 'name'")
    says this jaxlib does not know."""
    if "No such compile option" not in str(error):
        return None
    return next((k for k in options if f"'{k}'" in str(error)), None)


class SizeAwareJit:
    """`fn` jitted twice with the same jit arguments: as usual (:attr:`usual`), and with
    :data:`FAST_COMPILE_OPTIONS` (:attr:`quick`); :meth:`for_data` picks the one for
    the data `x` (:func:`fast_compile`)."""

    def __init__(self, fn: Callable[..., Any], **jit_kwargs: Any):
        self._fn, self._jit_kwargs = fn, jit_kwargs
        self.usual = jax.jit(fn, **jit_kwargs)
        self.quick = self._quick_jit()

    def _quick_jit(self) -> Any:
        self._options = {
            k: v for k, v in FAST_COMPILE_OPTIONS.items() if k not in _REJECTED_OPTIONS
        }
        return jax.jit(self._fn, compiler_options=self._options, **self._jit_kwargs)

    def for_data(self, x: Any) -> Callable[..., Any]:
        return self._quick_call if fast_compile(x) else self.usual

    def _quick_call(self, *args: Any, **kwargs: Any) -> Any:
        # The options are checked before anything is compiled or run: one this jaxlib
        # does not know (a later XLA may drop one) is left out, process-wide.
        while True:
            try:
                return self.quick(*args, **kwargs)
            except jax.errors.JaxRuntimeError as e:
                name = _rejected_option(e, self._options)
                if name is None:
                    raise
                _REJECTED_OPTIONS.add(name)
                self.quick = self._quick_jit()


# Host buffers made by aligned_empty (their base arrays), and the device arrays using one
# of them in place (to_device): (weak ref to the device array, weak ref to the buffer).
_OWN_BUFFERS: dict[int, weakref.ref] = {}
_PLACED: list[tuple[weakref.ref, weakref.ref]] = []
_RELEASE_WAIT_SECONDS = 0.25


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def release_host_copies(wait: bool = True) -> None:
    """Frees the host buffers of :func:`aligned_empty` behind device arrays that died.

    On CPU a device array made by :func:`to_device` uses its aligned host buffer in
    place, and jaxlib does not free that buffer when the array dies: the release is
    queued from XLA's threads once the array's last computation is done, and carried
    out at Python's next garbage collection, which can be long after. A dropped copy
    of the data then stays alive, and the next copy (the next fit, or a pass after the
    initializer's sample) doubles the peak memory. This runs the collection of the
    youngest generation (which runs jaxlib's hook); with `wait`, until every buffer
    whose device array died is freed, waiting at most a quarter of a second for
    releases still queued (a computation may still be using the buffer: a streaming
    loop that overlaps reading with computing passes ``wait=False``).
    """
    deadline = None
    while True:
        gc.collect(0)
        _PLACED[:] = [(arr, buf) for arr, buf in _PLACED if buf() is not None]
        if not wait or not any(arr() is None for arr, _ in _PLACED):
            return
        now = time.monotonic()
        deadline = deadline or now + _RELEASE_WAIT_SECONDS
        if now >= deadline:
            return
        time.sleep(0.001)


def releases_host_copies(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorates an entry point that places host data: once it returns (its copies of
    the data dropped with its frame), :func:`release_host_copies` frees them."""

    @functools.wraps(f)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return f(*args, **kwargs)
        finally:
            release_host_copies()

    return wrapper


@jax.jit
def _device_all_finite(x: jax.Array) -> jax.Array:
    """Whether a device array is all finite, in one fused reduction: ``x * 0`` is NaN
    exactly at NaN and inf, and a sum with a NaN is NaN. (``isfinite(x).all()`` made an
    n x d boolean temporary, a quarter of float32 data: XLA's CPU backend does not fuse
    a boolean mask into its reduction.)"""
    return jnp.isfinite(jnp.sum(x * jnp.zeros((), x.dtype)))


def _checked_array(
    x: Any,
    name: str,
    check_values: bool,
    warn_float64: bool,
    place: bool = False,
    in_place: bool = False,
) -> Any:
    """:func:`as_data`'s checks; host data stays a numpy array (in the compute dtype).

    With `place` (the caller puts the result on the device as it is) and a CPU device,
    host data that the device could not use in place comes back as its
    :func:`aligned_copy`, checked while copied: one pass over the data, not two, and
    no second copy of data cast to the compute dtype. With `in_place` too (the caller
    reads it as :class:`InPlaceRows`), host data already in the compute dtype and
    C-contiguous is not copied: only checked, in parallel row blocks."""
    if x is None:
        raise TypeError(f"`{name}` must be a 2-D array of shape (n_samples, n_features); got None.")
    if isinstance(x, str | bytes | dict):
        raise TypeError(
            f"`{name}` must be a 2-D array of shape (n_samples, n_features); "
            f"got {type(x).__name__}."
        )
    has_dtype = hasattr(x, "dtype")
    if not has_dtype:
        try:
            x = np.asarray(x)
        except ValueError as e:  # ragged lists
            raise ValueError(
                f"`{name}` must be a 2-D array of shape (n_samples, n_features); "
                f"could not convert it: {e}"
            ) from None
        if x.dtype == object:
            raise TypeError(
                f"`{name}` must be a 2-D numeric array; got an object array "
                f"(ragged rows or non-numbers)."
            )
    dtype = _float_dtype(x.dtype, name, warn_float64=warn_float64 and has_dtype)
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array of shape (n_samples, n_features); "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"`{name}` must have at least one row and one column; got shape {tuple(x.shape)}."
        )
    if isinstance(x, jax.Array):
        x = jnp.asarray(x, dtype=dtype)
        finite = is_traced(x) or not check_values or bool(_device_all_finite(x))
    else:  # host data: check on the host (no device round trip, nothing to compile)
        xh = np.asarray(x)
        if place and in_place and _readable_in_place(xh, dtype) and jax.default_backend() == "cpu":
            finite = not check_values or in_row_blocks(
                xh.shape[0], xh[0].nbytes, lambda i, j: bool(np.isfinite(xh[i:j]).all())
            )
        elif place and jax.default_backend() == "cpu" and needs_copy(xh, dtype):
            xh, finite = aligned_copy(xh, dtype, check_values)
        else:
            with np.errstate(over="ignore"):  # float64 beyond float32's range: said below
                xh = np.asarray(xh, dtype=dtype)
            finite = not check_values or all_finite(xh)
        if not finite and np.dtype(x.dtype).itemsize > dtype.itemsize:
            if bool(np.isfinite(np.asarray(x)).all()):
                raise ValueError(
                    f"`{name}` must contain only finite values in the compute dtype; it has "
                    f"{x.dtype} values beyond the {dtype} range (float64 data is computed "
                    f'in float32 unless jax.config.update("jax_enable_x64", True)).'
                )
        x = xh
    if not finite:
        raise ValueError(f"`{name}` must contain only finite values; it has NaN or inf.")
    return x


def as_centers(centers: Any, n_features: int, dtype: Any, name: str = "centers") -> jax.Array:
    """`centers` checked like data and cast to the data's compute `dtype` (no float64
    warning: the data's dtype decides the computation)."""
    c = as_data(centers, name, warn_float64=False)
    if c.shape[1] != n_features:
        raise ValueError(
            f"`{name}` must have {n_features} columns to match the data; "
            f"got shape {tuple(c.shape)}."
        )
    return c.astype(dtype)


def as_weights(sample_weight: Any, n: int, dtype: Any) -> jax.Array | None:
    """`sample_weight` checked ((n,), finite, non-negative, some positive) in `dtype`;
    None stays None."""
    w = _checked_weights(sample_weight, n, dtype)
    return None if w is None else to_device(w)


def _checked_weights(sample_weight: Any, n: int, dtype: Any) -> Any:
    """:func:`as_weights`'s checks; host weights stay a numpy array."""
    if sample_weight is None:
        return None
    traced = is_traced(sample_weight)
    w: Any
    if isinstance(sample_weight, jax.Array):
        w = sample_weight
    else:
        try:
            w = np.asarray(sample_weight)
        except ValueError as e:  # ragged lists
            raise ValueError(
                f"`sample_weight` must be a 1-D array; could not convert it: {e}"
            ) from None
    if not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)):
        raise TypeError(f"`sample_weight` must be a real numeric array; got dtype {w.dtype}.")
    if w.ndim == 0:
        w = jnp.full((n,), w, dtype=dtype) if traced else np.full((n,), w, dtype=dtype)
    if w.shape != (n,):
        raise ValueError(
            f"`sample_weight` must have shape ({n},) to match the data; got shape {w.shape}."
        )
    if traced:
        return w.astype(dtype)
    wh = np.asarray(w, dtype=dtype)  # checked on the host
    if not bool(np.isfinite(wh).all()):
        raise ValueError("`sample_weight` must contain only finite values; it has NaN or inf.")
    if bool((wh < 0).any()):
        raise ValueError("`sample_weight` must be non-negative; it has negative values.")
    if not bool((wh > 0).any()):
        raise ValueError("`sample_weight` must have at least one positive weight; all are 0.")
    return wh


# ---------------------------------------------------------------------- size buckets

# Row counts up to this share one bucket; above, 8 buckets per doubling (padding adds
# at most 1/8 of the rows).
_MIN_BUCKET = 256
# Automatic padding only while the padded copy is small (at most this many elements):
# beyond, a fit runs long enough that compiling once per size costs little, and a copy
# of the data would cost memory.
PAD_LIMIT_ELEMENTS = 1 << 24


def bucket_rows(n: int) -> int:
    """The size bucket of `n` rows: 256 up to 256 rows, else `n` rounded up to a
    multiple of 2^(e - 4) where 2^(e-1) < n <= 2^e (eight buckets per doubling).
    ``bucket_rows(bucket_rows(n)) == bucket_rows(n)``."""
    if n <= _MIN_BUCKET:
        return _MIN_BUCKET
    step = 1 << max(0, (n - 1).bit_length() - 4)
    return -(-n // step) * step


def auto_bucket_rows(n: int, d: int) -> int:
    """Rows that `n` rows of `d` columns are padded to when padding is automatic
    (``pad_rows=None``): their size bucket while it holds at most
    ``PAD_LIMIT_ELEMENTS`` values, else `n` (no padding)."""
    size = bucket_rows(n)
    return size if size * d <= PAD_LIMIT_ELEMENTS else n


def check_pad_rows(pad_rows: Any) -> bool | None:
    if pad_rows is None or isinstance(pad_rows, bool | np.bool_):
        return None if pad_rows is None else bool(pad_rows)
    raise TypeError(f"`pad_rows` must be None (automatic), True or False; got {pad_rows!r}.")


def pad_host_rows(
    x: np.ndarray, rows: int, cols: int | None = None, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Host rows `x` (n, d) padded to (rows, cols) (`cols` default d) in a buffer the
    CPU device uses in place (:func:`aligned_empty`): the extra rows copy row 0 (zeros
    when n == 0) and get weight 0, the extra columns are 0; `x` itself when there is
    nothing to pad. Returns ``(x_pad, w_pad)``: the weights `w` (default ones, in x's
    dtype) followed by zeros.

    The one row padder of the host paths (:func:`as_bucketed`, the estimator's
    batches, the scikit-learn drop-in).
    """
    n, d = x.shape
    cols = d if cols is None else cols
    wp = np.zeros((rows,), x.dtype if w is None else w.dtype)
    wp[:n] = 1 if w is None else w
    if (n, d) == (rows, cols):
        return x, wp
    out = aligned_empty((rows, cols), x.dtype)

    def fill(i: int, j: int) -> bool:
        out[i:j, :d] = x[i:j]
        out[i:j, d:] = 0
        return True

    in_row_blocks(n, out[0].nbytes, fill)
    out[n:, :d] = x[0] if n else 0
    out[n:, d:] = 0
    return out, wp


def as_bucketed(
    x: Any, sample_weight: Any, pad_rows: bool | None, name: str = "x", in_place: bool = False
) -> tuple[Any, jax.Array | None, int]:
    """:func:`as_data` and :func:`as_weights`, with the rows padded to their size bucket
    (:func:`bucket_rows`) by copies of row 0 with weight 0, so that nearby sizes share
    one compiled program. Padded rows change nothing: every pass weighs rows, and
    zero-weight rows are never drawn, counted or relocated to.

    `pad_rows`: None pads when the padded array has at most ``PAD_LIMIT_ELEMENTS``
    elements, True always, False never; arrays traced under a user's jit are not padded.
    Host data is padded on the host (no per-size device program). With `in_place`, host
    rows that are not padded and that the CPU device would copy come back as
    :class:`InPlaceRows` (read in place: no copy), for a caller whose passes read them so.

    Returns:
      ``(x, w, n)``: the (padded) data and weights (None when no weights and no
      padding) and the number of real rows.
    """
    pad_rows = check_pad_rows(pad_rows)

    def pads(n: int, d: int) -> bool:
        size = bucket_rows(n) if pad_rows else auto_bucket_rows(n, d)
        return pad_rows is not False and size != n

    # Host data placed as it is (not padded) is copied, when it must be, and checked in
    # one pass (see _checked_array).
    shape = getattr(x, "shape", None)
    place = (
        not isinstance(x, jax.Array)
        and isinstance(shape, tuple)
        and len(shape) == 2
        and all(isinstance(s, int) for s in shape)
        and not pads(*shape)
    )
    xa = _checked_array(x, name, True, True, place=place, in_place=in_place)
    n, d = xa.shape
    w = _checked_weights(sample_weight, n, xa.dtype)
    size = bucket_rows(n)
    if not pads(n, d) or is_traced(xa, w):
        rows = in_place_rows(xa) if in_place and isinstance(xa, np.ndarray) else None
        return rows or to_device(xa), (None if w is None else to_device(w)), n
    host_w = w if w is None or isinstance(w, np.ndarray) else None
    xp: Any
    wp: Any
    if isinstance(xa, np.ndarray):
        host_x, wp = pad_host_rows(xa, size, w=host_w)
        xp = to_device(host_x)
    else:
        xp = jnp.concatenate([xa, jnp.broadcast_to(xa[:1], (size - n, d))])
        wp = np.zeros((size,), xa.dtype)
        wp[:n] = 1 if host_w is None else host_w
    if w is None or isinstance(w, np.ndarray):
        wp = to_device(wp)
    else:  # weights already on the device
        wp = jnp.concatenate([w, jnp.zeros((size - n,), w.dtype)])
    return xp, wp, n


def real_rows(a: jax.Array, n: int) -> jax.Array:
    """The first `n` rows of a per-row result of a padded call (cut on the host: a
    device slice would compile one small program per size)."""
    if a.shape[0] == n:
        return a
    if is_traced(a):  # e.g. the centers are traced (vmap over centers), the rows not
        return lax.slice_in_dim(a, 0, n)
    return jax.device_put(np.asarray(a)[:n])


# ------------------------------------------------------------------- row identity


def direction_key(x: jax.Array) -> jax.Array:
    """Each row divided by its largest absolute entry (zero rows stay zero).

    Rows that are exact positive multiples of each other get bit-identical keys (IEEE
    division is correctly rounded, and ``(l a) / (l b) = a / b``), unlike their
    normalized versions, which can differ in the last bit.
    """
    m = jnp.max(jnp.abs(x), axis=1, keepdims=True)
    m = jnp.broadcast_to(jnp.where(m > 0, m, jnp.ones_like(m)), x.shape)
    # XLA rewrites ``a / broadcast(b)`` as ``a * broadcast(1 / b)``, which is not exact;
    # the barrier keeps a true (correctly rounded) division.
    return x / lax.optimization_barrier(m)


def row_identity(x: jax.Array, metric: str = SQUARED_EUCLIDEAN_DISTANCE) -> jax.Array:
    """(n, 2) uint32: two hashes of each row's bit pattern (-0.0 counts as 0.0); for
    cosine, of its direction key, so exact positive multiples are one row.

    Integer addition wraps modulo 2**32 and is associative, so equal rows always get
    equal hashes, whatever order the reduction runs in.
    """
    if metric == COSINE_DISTANCE:
        x = direction_key(x)
    n = x.shape[0]
    # -0.0 -> 0.0 (not ``x + 0``: XLA simplifies that away and keeps the sign bit).
    x = jnp.where(x == 0, jnp.zeros((), x.dtype), x)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        bits = lax.bitcast_convert_type(x, jnp.uint32).reshape(n, -1)
    elif size == 4:
        bits = lax.bitcast_convert_type(x, jnp.uint32)
    else:
        bits = lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    m = bits.shape[1]
    # Fixed odd multipliers (trace-time constants: no PRNG in the compiled program).
    consts = jnp.asarray(
        np.random.default_rng(0x5EED).integers(0, 2**32, size=(2, m), dtype=np.uint32) | 1
    )
    # One round of a murmur-style finalizer per word before the weighted sum.
    b = bits ^ (bits >> 16)
    b = b * jnp.uint32(0x85EBCA6B)
    b = b ^ (b >> 13)
    # Both sums in one (variadic) reduction: the compiler fuses the per-word mixing into
    # it, where two separate sums would materialize the (n, d) words (2x the data).
    h1, h2 = lax.reduce(
        (b * consts[0][None, :], (b ^ (b >> 7)) * consts[1][None, :]),
        (jnp.uint32(0), jnp.uint32(0)),
        lambda u, v: (u[0] + v[0], u[1] + v[1]),
        (1,),
    )
    return jnp.stack([h1, h2], axis=1)


def _has_identity(x: jax.Array, metric: str) -> jax.Array:
    """Rows that are points of the metric's space (cosine: non-zero rows)."""
    if metric == COSINE_DISTANCE:
        return jnp.any(x != 0, axis=1)
    return jnp.ones(x.shape[:1], bool)


@functools.partial(jax.jit, static_argnames=("metric", "size"))
def _count_distinct(
    x: jax.Array, w: jax.Array | None, head: jax.Array, metric: str, size: int
) -> jax.Array:
    """Distinct points among the first `head` of the first `size` rows of `x` with
    positive weight (one program for every `head`)."""
    x = x[:size]
    keep = jnp.arange(size) < head
    if w is not None:
        keep &= w[:size] > 0
    ident = row_identity(x, metric)
    keep = keep & _has_identity(x, metric)
    # Kept rows first, sorted by identity; count where the identity changes.
    h1, h2, kept = lax.sort((ident[:, 0], ident[:, 1], (~keep).astype(jnp.int32)), num_keys=3)
    kept = kept == 0
    new = jnp.concatenate([jnp.ones((1,), bool), (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])])
    # A kept row after an unkept one of the same identity still starts a new point only
    # if no kept row of that identity came before: unkept rows sort after kept ones.
    return jnp.sum(new & kept)


# A count over at most this many values of host data (or data on the CPU device) is
# made on the host with numpy: nothing to compile for the first rows' check of a fit.
_HOST_COUNT_ELEMENTS = 1 << 16


def _on_host(a: Any) -> np.ndarray | None:
    """`a` as a numpy array without a copy when it is host data or a (not traced) array
    on the CPU device; None otherwise (and for None)."""
    if isinstance(a, np.ndarray):
        return a
    if isinstance(a, InPlaceRows) and not is_traced(a.flat):
        return a.host()
    if isinstance(a, jax.Array) and not is_traced(a):
        if all(d.platform == "cpu" for d in a.devices()) and a.is_fully_addressable:
            if len(a.devices()) == 1:
                return np.asarray(a)
    return None


def _host_count_distinct(x: np.ndarray, w: np.ndarray | None) -> int:
    """Distinct rows of `x` with positive weight (-0.0 counting as 0.0), exactly, on the
    host (:func:`count_distinct` of a few rows)."""
    if w is not None:
        x = x[np.asarray(w) > 0]
    if x.shape[0] == 0:
        return 0
    rows = np.ascontiguousarray(x) + np.zeros((), x.dtype)  # -0.0 -> 0.0
    return int(np.unique(rows.view(np.dtype((np.void, rows.strides[0]))).ravel()).size)


def count_distinct(
    x: Any, metric: str = SQUARED_EUCLIDEAN_DISTANCE, w: Any = None, at_least: int | None = None
) -> int:
    """Number of distinct points among the rows of `x` with positive weight (cosine:
    distinct non-zero directions), computed on the device. With `at_least`, exact when
    below it (else any value >= it): the first ``4 at_least + 64`` rows are tried
    first, which usually settles it without a pass over all rows."""
    n = x.shape[0]
    if isinstance(x, InPlaceRows):
        x = x.host()  # cut on the host below

    def count(size: int, head: int) -> int:
        if metric != COSINE_DISTANCE and size * x.shape[1] <= _HOST_COUNT_ELEMENTS:
            xh, wh = _on_host(x), _on_host(w)
            if xh is not None and (w is None or wh is not None):
                return _host_count_distinct(xh[:head], None if wh is None else wh[:head])
        # Host arrays are cut on the host (only `size` rows go to the device).
        xs = x[:size] if isinstance(x, np.ndarray) else x
        ws = w[:size] if isinstance(w, np.ndarray) else w
        return int(_count_distinct(xs, ws, np.int32(head), metric, size))

    if at_least is not None:
        head = min(n, 4 * at_least + 64)
        # Rounded up to a power of two (few distinct programs); extra rows are unkept.
        size = min(n, 1 << max(6, math.ceil(math.log2(head))))
        got = count(size, head)
        if got >= at_least or head == n:
            return got
    return count(n, n)


def check_enough_distinct(
    x: jax.Array,
    k: int,
    metric: str,
    sample_weight: jax.Array | None = None,
    name: str = "x",
    rows: int | None = None,
) -> None:
    """ValueError when `x` (rows with positive weight) has fewer than k distinct points
    (cosine: distinct non-zero directions). Skipped for traced arrays. `rows`: the
    number of real rows when `x` is padded (:func:`as_bucketed`)."""
    if is_traced(x, sample_weight):
        return
    n = x.shape[0] if rows is None else rows
    if n < k:
        raise ValueError(
            f"`num_clusters` must be <= the number of samples in `{name}`; "
            f"got num_clusters={k} with {n} samples."
        )
    distinct = count_distinct(x, metric, sample_weight, at_least=k)
    if distinct < k:
        what = "distinct non-zero directions" if metric == COSINE_DISTANCE else "distinct points"
        raise ValueError(
            f"`{name}` must have at least num_clusters={k} {what} (with positive weight); "
            f"got {distinct}."
        )
