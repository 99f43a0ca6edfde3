"""scikit-learn drop-in estimators: ``KMeans`` and ``MiniBatchKMeans``.

Needs the ``sklearn`` extra (``pip install "jaxkmeans[sklearn]"``); ``import jaxkmeans``
never imports this module. The estimators take scikit-learn's parameters, methods and
fitted attributes, pass ``sklearn.utils.estimator_checks.check_estimator``, and work in
``Pipeline``, ``GridSearchCV``, ``clone`` and pickle. The numerical work is done by the
functional core: :func:`jaxkmeans.init_centers` (k-means++ / random),
:func:`jaxkmeans.lloyd_step` (inside one compiled loop), :func:`jaxkmeans.minibatch_step`
and :func:`jaxkmeans.assign`.

How scikit-learn's semantics map onto the core (the differences are documented here, in
one place):

- ``tol`` (``KMeans``): scikit-learn's rule, not the core's. The tolerance is scaled by
  the mean per-feature variance of ``X`` (weighted by ``sample_weight``) and a run stops
  once the total squared movement of the centers in one Lloyd iteration,
  ``sum_j ||new_j - old_j||^2``, is ``<= tol * mean(var(X))``. With ``tol=0`` a run stops
  at a fixed point (labels unchanged), like scikit-learn's "strict convergence". The loop
  is a ``lax.while_loop`` over :func:`jaxkmeans.lloyd_step` (one compiled program per
  run); :func:`jaxkmeans.fit` is not used because its ``tol`` is TensorFlow's relative
  loss change. ``MiniBatchKMeans`` uses the same scaling for its ``tol`` and
  scikit-learn's ``max_no_improvement`` rule on the exponentially weighted batch inertia.
- ``sample_weight`` means repetition, exactly: before fitting, identical rows are merged
  (their weights summed) and rows of weight 0 dropped. Up to 2^24 values of distinct
  rows (``PAD_LIMIT_ELEMENTS``: the data the drop-in copies into a size bucket), the
  distinct rows are put in a fixed order (by a hash of their bits): fitting with
  integer weights gives the same model, bit for bit, as fitting with the rows repeated,
  and the model does not depend on the order of the rows (given ``random_state``).
  Larger data keeps the order of each distinct row's first occurrence, so that
  ``KMeans.fit`` can read float32 rows where they are, without a copy (on CPU, through
  an index of the distinct rows when some were merged): the model then depends on the
  row order, as scikit-learn's does, and integer weights still give the model of the
  rows repeated in place (``np.repeat(X, w, axis=0)``). "Number of samples" in the
  mini-batch rules (batch size cap, number of steps, smoothing) counts distinct rows.
- ``MiniBatchKMeans.fit`` draws batches with probability proportional to the weights
  (then with unit weight), the same distribution as drawing from the repeated rows;
  scikit-learn draws uniformly and weights the batch. Per-center learning rates are
  batch_count / cumulative_count as in scikit-learn. ``reassignment_ratio`` (default
  0.0 here, scikit-learn's is 0.01) reassigns low-count centers to random batch rows
  with scikit-learn's rule.
- Fewer distinct points than ``n_clusters``: every distinct point becomes a center, the
  remaining centers repeat the first one (they get no points) and a
  ``ConvergenceWarning`` is issued, as scikit-learn does.
- float64 input (and integers, which become float64) is computed in float64: the
  methods run with JAX's 64-bit mode on for the call (``jax.enable_x64``; the user's
  global setting is not changed), on the XLA kernels (the native CPU kernels are
  float32 only). float32 input is computed in float32. ``cluster_centers_`` and
  ``transform`` are returned in ``X``'s float dtype, as scikit-learn's ``KMeans`` does.
  ``transform`` (Euclidean distances) is computed on the host in float64, so that it is accurate and
  each row's distances do not depend on the other rows passed with it.
- ``algorithm="elkan"`` is accepted and runs Lloyd iterations (Elkan's algorithm gives
  the same iterates). ``copy_x`` has no effect: ``X`` is never modified.
- Sparse input: scipy CSR/CSC (other formats are converted to CSR by scikit-learn's
  validation). Distinct rows are merged by a hash of their nonzero entries (the same
  key a dense row gets, so dense and sparse input give the same model), and the
  functional core runs on the sparse rows (:mod:`jaxkmeans.kernels.sparse`: sparse-dense
  products and segment sums over the nonzeros, never a densified copy of the data).
  Only a few rows are ever densified: centers chosen by the initialization, candidates
  for empty clusters, and each mini-batch (``MiniBatchKMeans`` steps on dense batches of
  ``batch_size`` rows; ``partial_fit`` densifies the batch it is given). ``transform``
  of sparse rows uses scipy's sparse-dense product in float64.
- Compiling dominates small fits (seconds per program on a CPU). Small problems are
  therefore padded to a few fixed shapes (up to 256 rows: 256; up to 4096: the next
  power of two; up to 32 columns: 32) with weight-0 rows and zero columns, so that a
  session fitting many small data sets (grid searches, ``check_estimator``) compiles one
  set of programs per ``n_clusters`` instead of one per shape. Padding changes nothing
  but float rounding.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpy.typing import ArrayLike

try:
    from sklearn.base import (
        BaseEstimator,
        ClassNamePrefixFeaturesOutMixin,
        ClusterMixin,
        TransformerMixin,
    )
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import _check_sample_weight, check_array, check_is_fitted
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "jaxkmeans.sklearn needs scikit-learn; install it with `pip install 'jaxkmeans[sklearn]'`."
    ) from e

import scipy.sparse as _sp

try:
    from sklearn.utils.validation import validate_data as _sk_validate_data
except ImportError:  # pragma: no cover - scikit-learn < 1.6

    def _sk_validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)


import jaxkmeans
from jaxkmeans import _validation, engine, fitting, initializers, kernels
from jaxkmeans._validation import InPlaceRows, check_non_negative, check_positive_int
from jaxkmeans.kernels import sparse
from jaxkmeans.kernels.sparse import SparseRows
from jaxkmeans.state import KMeansState

__all__ = ["KMeans", "MiniBatchKMeans"]

# Types of the public methods' arguments: scikit-learn's "array-like or sparse matrix"
# (lists, numpy arrays, pandas frames, scipy sparse CSR/CSC).
_MatrixLike: TypeAlias = "ArrayLike | _sp.spmatrix | _sp.sparray"

_KMEANS_PLUS_PLUS = "k-means++"
_RANDOM = "random"
_CORE_INIT = {_KMEANS_PLUS_PLUS: jaxkmeans.KMEANS_PLUS_PLUS_INIT, _RANDOM: jaxkmeans.RANDOM_INIT}
_ALGORITHMS = ("lloyd", "elkan")

# Columns up to this are padded to it (one compiled program for all small problems);
# rows are padded to their size bucket (:func:`jaxkmeans._validation.bucket_rows`).
_SMALL_COLS = 32
_NO_LIMIT = 2**31 - 1
_HASH_BLOCK_ELEMENTS = 1 << 21  # rows hashed per program call: about this many elements
# Dense data of at most this many values is hashed and its variance taken on the host
# (numpy, microseconds to milliseconds): nothing compiled for them in a small first fit.
_HOST_ELEMENTS = 1 << 18
_VARIANCE_BLOCK_ROWS = 4096  # rows reduced at a time by _column_variance_sum
# Wider rows are first told apart by the keys of their first this many columns (one
# cache line of float32): when those are all different, so are the rows.
_PREFIX_COLS = 16


# ------------------------------------------------------------------------ host helpers


def _compute_dtype(dtype: Any) -> np.dtype:
    """float32, or float64 when jax_enable_x64 is on and `dtype` is float64."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


_bucket_rows = _validation.bucket_rows


def _data_rows(n: int, d_pad: int) -> int:
    """Rows the drop-in pads `n` rows of `d_pad` columns to: their size bucket (one
    compiled program for nearby sizes) while the padded rows are at most
    ``PAD_LIMIT_ELEMENTS`` values, as ``pad_rows=None`` does in the functional core;
    beyond, `n` (compiling once per size costs little next to the fit, and padding
    would add up to 1/8 more rows to every pass)."""
    return _validation.auto_bucket_rows(n, d_pad)


def _bucket_cols(d: int) -> int:
    return _SMALL_COLS if d <= _SMALL_COLS else d


def _pad(x: np.ndarray, n_pad: int, d_pad: int) -> np.ndarray:
    """`x` (n, d) padded to (n_pad, d_pad) (:func:`jaxkmeans._validation.pad_host_rows`:
    extra rows copy row 0, extra columns are 0)."""
    return _validation.pad_host_rows(x, n_pad, d_pad)[0]


def _pad_cols(c: np.ndarray, d_pad: int) -> np.ndarray:
    if c.shape[1] == d_pad:
        return c
    out = np.zeros((c.shape[0], d_pad), c.dtype)
    out[:, : c.shape[1]] = c
    return out


_dense_identity = jax.jit(sparse.dense_identity)


@jax.jit
def _sparse_identity(x: SparseRows) -> jax.Array:
    return sparse.identity(x, _validation.SQUARED_EUCLIDEAN_DISTANCE)


def _row_keys(x: Any) -> np.ndarray:
    """A 64-bit key of each row's bits (n,) uint64: a hash of the row's nonzero entries
    (column, value bits; two 32-bit hashes, :func:`jaxkmeans.kernels.sparse.identity`)
    as one number. Equal rows (-0.0 counting as 0.0) get equal keys; the key depends on
    the row's values only, and a row has the same key dense or sparse (so dense and
    sparse input give the same distinct rows in the same order)."""
    n, d = x.shape
    # Hashed in float32 whatever the dtype, so that float32 and float64 copies of the data
    # put their distinct rows in the same order (and draw the same initial centers);
    # float64 rows equal in float32 share a key, and the caller groups them exactly.
    with np.errstate(over="ignore"):
        if _sp.issparse(x):
            sp = sparse.from_host(x, rows=_bucket_rows(n), dtype=np.float32, check_values=False)
            ident = _sparse_identity(sp)
        elif x.size <= _HOST_ELEMENTS:
            ident = _host_dense_identity(np.asarray(x, np.float32))
        else:
            # In blocks of a fixed number of rows (of a few shapes for small problems):
            # one compiled program per column count, and no copy or temporary of the
            # whole data. A row's key does not depend on the other rows, and zero columns
            # add nothing to it.
            d_pad = _bucket_cols(d)
            block = _bucket_rows(max(256, _HASH_BLOCK_ELEMENTS // d_pad))
            block = min(block, _bucket_rows(n))
            parts = []
            for start in range(0, n, block):
                xb = x[start : start + block].astype(np.float32, copy=False)
                xb = _pad(xb, block, d_pad)
                parts.append(_dense_identity(_validation.to_device(xb)))
                if len(parts) > 2:  # bound what is alive: blocks in flight
                    parts[-3] = np.asarray(parts[-3])
            ident = np.concatenate([np.asarray(p) for p in parts])
    ident = np.asarray(ident)[:n].astype(np.uint64)
    return (ident[:, 0] << np.uint64(32)) | ident[:, 1]


def _host_mix(h: np.ndarray) -> np.ndarray:
    """:func:`jaxkmeans.kernels.sparse._mix` on the host (uint32, wrapping)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _host_dense_identity(x: np.ndarray) -> np.ndarray:
    """:func:`jaxkmeans.kernels.sparse.dense_identity` of float32 rows, on the host:
    the same bits (tested), nothing to compile."""
    v = x + np.zeros((), np.float32)  # -0.0 -> 0.0
    bits = v.view(np.uint32)
    col = np.arange(x.shape[1], dtype=np.uint32)[None, :]
    h1 = _host_mix(_host_mix(col * np.uint32(0x9E3779B1) + np.uint32(1)) ^ bits)
    h2 = _host_mix(_host_mix(col ^ np.uint32(0x7F4A7C15)) + bits * np.uint32(0x27D4EB2F))
    live = v != 0
    zero = np.uint32(0)
    h1, h2 = np.where(live, h1, zero), np.where(live, h2, zero)
    return np.stack([h1.sum(axis=1, dtype=np.uint32), h2.sum(axis=1, dtype=np.uint32)], axis=1)


def _canonical_csr(x: Any, dtype: Any) -> Any:
    """A CSR copy of sparse `x` in `dtype`: sorted, duplicates summed, no stored zeros."""
    x = _sp.csr_matrix(x, dtype=dtype, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.sort_indices()
    return x


def _distinct_sparse_rows(x: Any, w: np.ndarray) -> tuple[Any, np.ndarray]:
    """:func:`_distinct_rows` of a sparse matrix (CSR in, CSR out)."""
    keep = w > 0
    x = _canonical_csr(x, x.dtype)
    if not keep.all():
        x, w = x[np.flatnonzero(keep)], w[keep]
    if x.shape[0] == 0:
        return x, w
    h = _row_keys(x)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    new = np.concatenate([[True], hs[1:] != hs[:-1]])
    same = np.flatnonzero(~new[1:])
    if same.size and (x[order[same]] != x[order[same + 1]]).nnz:
        # a hash collision between different rows (practically never): exact grouping
        dense_keys = [x[i].toarray().tobytes() for i in range(x.shape[0])]
        _, first, group = np.unique(dense_keys, return_index=True, return_inverse=True)
        wu = np.bincount(group.ravel(), weights=w, minlength=len(first))
    else:
        starts = np.flatnonzero(new)
        first = order[starts]  # the stable sort puts each group's first row first
        wu = np.add.reduceat(w[order].astype(np.float64), starts)
    if not _in_value_order(first.size, x.shape[1]):  # as dense rows (_group_rows)
        by_row = np.argsort(first)
        first, wu = first[by_row], wu[by_row]
    return x[first], wu.astype(w.dtype)


def _distinct(x: Any, w: np.ndarray, *, padded: bool = False, in_place: bool = False) -> _Distinct:
    """Distinct weighted rows of dense or sparse `x` (see :func:`_distinct_rows`);
    `padded`: dense rows gathered into their padded device layout; `in_place`: dense
    rows read where they are when the passes can (see :func:`_distinct_dense`)."""
    if _sp.issparse(x):
        return _Distinct(*_distinct_sparse_rows(x, w))
    return _distinct_dense(np.asarray(x), w, padded=padded, in_place=in_place)


def _placed(
    x: Any, w: np.ndarray, dtype: Any, padded: np.ndarray | None = None
) -> tuple[Any, jax.Array, int]:
    """Distinct rows `x` and weights `w` on the device, padded: dense rows to their row
    bucket and small column counts (:func:`_pad`; `padded`, when given, already holds
    them so), sparse rows to :class:`SparseRows` with empty rows of weight 0 (columns as
    they are); rows read in place as they are (never padded: see :func:`_in_place`).
    Returns ``(x, w, d_pad)``."""
    m, d = x.shape
    if isinstance(x, InPlaceRows):
        return x, _validation.to_device(w), d
    d_pad = _bucket_cols(d)
    n_pad = _bucket_rows(m) if _sp.issparse(x) else _data_rows(m, d_pad)
    wp = np.zeros((n_pad,), w.dtype)
    wp[:m] = w
    if _sp.issparse(x):
        xs = sparse.from_host(x, rows=n_pad, dtype=dtype, check_values=False)
        return xs, _validation.to_device(wp), d
    xp = padded if padded is not None else _pad(x, n_pad, d_pad)
    return _validation.to_device(xp), _validation.to_device(wp), d_pad


def _dense_rows(x: Any) -> np.ndarray:
    """`x` as a dense array (for a few rows: centers, a user's mini-batch)."""
    if isinstance(x, InPlaceRows):
        return x.host()
    return x.toarray() if _sp.issparse(x) else np.asarray(x)


class _Distinct(NamedTuple):
    """The distinct weighted rows of the data (see :func:`_distinct_rows`).

    Attributes:
      xu: (m, d) rows: dense (a view of `padded` when there is one), CSR, or the
        caller's rows read in place on the device
        (:class:`~jaxkmeans._validation.InPlaceRows`).
      wu: (m,) their total weights (> 0).
      inverse: (n,) the row of `xu` equal to each input row; None when rows of weight 0
        were dropped (or for sparse rows).
      padded: None, or an aligned (bucket_rows(m), d_pad) host buffer holding `xu` in
        its first rows and columns, padded as :func:`_pad` does: what :func:`_placed`
        puts on the device without another copy.
    """

    xu: Any
    wu: np.ndarray
    inverse: np.ndarray | None = None
    padded: np.ndarray | None = None


def _in_value_order(m: int, d: int) -> bool:
    """Whether `m` distinct rows of `d` columns are put in an order of their values
    (their row keys): data the drop-in pads to its size bucket (at most
    ``PAD_LIMIT_ELEMENTS`` values), which it copies anyway. Larger data keeps the
    order of the rows' first occurrences, so that it can be read where it is
    (:func:`_in_place`)."""
    return _validation.bucket_rows(m) * d <= _validation.PAD_LIMIT_ELEMENTS


def _first_occurrence_order(
    first: np.ndarray, wu: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups ``(first row, total weight, group of each row)`` renumbered in the order
    of their first rows."""
    by_row = np.argsort(first)
    rank = np.empty(by_row.shape, group.dtype)
    rank[by_row] = np.arange(by_row.size, dtype=group.dtype)
    return first[by_row], wu[by_row], rank[group]


def _all_different(keys: np.ndarray) -> bool:
    """Whether the row keys `keys` are all different (then so are their rows)."""
    keys = np.sort(keys)
    return bool(np.all(keys[1:] != keys[:-1]))


def _group_rows(
    x: np.ndarray, w: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups equal rows of `x` (-0.0 counting as 0.0; only `rows` of them when given,
    with their weights `w`). Returns ``(first, wu, inverse)``: the first row of each
    group (an index into `x`), groups in key order (:func:`_in_value_order`) or else
    in the order of their first rows; their total weights (summed in float64); the
    group of each row."""
    n, d = len(w), x.shape[1]
    index = np.int32 if n < 2**31 else np.intp  # half the memory of intp
    if (
        rows is None
        and not _in_value_order(n, d)
        and d > _PREFIX_COLS
        and _all_different(_row_keys(x[:, :_PREFIX_COLS]))
    ):
        # Every row different (the usual case for float data), known from the keys of
        # an eighth or less of the data: each row is its own group, in its place.
        every = np.arange(n, dtype=index)
        return every, w.astype(np.float64), every
    h = _row_keys(x)
    if rows is not None:
        h = h[rows]
    at = (lambda i: i) if rows is None else (lambda i: rows[i])  # noqa: E731
    # Not a stable sort (about 1.5x faster): each group's first row is found below.
    order = np.argsort(h)
    hs = h[order]
    new = np.concatenate([[True], hs[1:] != hs[:-1]])
    same = np.flatnonzero(~new[1:])  # neighbours with equal keys
    if same.size and not np.array_equal(x[at(order[same])], x[at(order[same + 1])]):
        # a hash collision between different rows (practically never): exact grouping
        # (groups in the order of their rows' bytes)
        xs = x if rows is None else x[rows]
        canonical = xs + np.zeros((), x.dtype)  # -0.0 -> 0.0, so that equal rows have equal bits
        keys = canonical.view(np.dtype((np.void, x.dtype.itemsize * d))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        wu = np.bincount(inverse.ravel(), weights=w, minlength=len(first))
        inverse = inverse.ravel().astype(index)
    else:
        starts = np.flatnonzero(new)
        wu = np.add.reduceat(w[order].astype(np.float64), starts)
        first = np.minimum.reduceat(order, starts)
        inverse = np.empty(order.shape, index)
        inverse[order] = np.cumsum(new, dtype=index) - 1
    if not _in_value_order(first.size, d):
        first, wu, inverse = _first_occurrence_order(first, wu, inverse)
    return at(first), wu, inverse


def _distinct_dense(
    x: np.ndarray, w: np.ndarray, *, padded: bool = False, in_place: bool = False
) -> _Distinct:
    """:func:`_distinct_rows` with the inverse map, and with `padded` the rows gathered
    straight into their padded device layout (one copy of the distinct rows in all).
    With `in_place`, rows that the passes can read where they are (:func:`_in_place`)
    are not gathered at all: `xu` is then the caller's rows read in place
    (:class:`~jaxkmeans._validation.InPlaceRows`, through the index of the distinct
    rows when some rows were merged or dropped)."""
    keep = w > 0
    all_kept = bool(keep.all())
    kept = None if all_kept else np.flatnonzero(keep)
    if not all_kept:
        w = w[keep]
    if w.shape[0] == 0:
        return _Distinct(x[:0], w)
    x = np.ascontiguousarray(x)
    first, wu, groups = _group_rows(x, w, kept)
    m, d = first.size, x.shape[1]
    wu = wu.astype(w.dtype)
    inverse = groups if all_kept else None
    if in_place:
        rows = _in_place(x, first, m)
        if rows is not None:
            return _Distinct(rows, wu, inverse)
    buf = None
    if padded:
        d_pad = _bucket_cols(d)
        buf = _validation.aligned_empty((_data_rows(m, d_pad), d_pad), x.dtype)
        xu = buf[:m, :d]
    else:
        xu = np.empty((m, d), x.dtype)
    zero = np.zeros((), x.dtype)

    def gather(i: int, j: int) -> bool:
        """Rows i..j of `xu`, with -0.0 made 0.0 while in cache (a test for zeros
        first made an (m, d) boolean temporary)."""
        part = xu[i:j]
        if part.flags.c_contiguous:
            np.take(x, first[i:j], axis=0, out=part, mode="clip")
        else:
            part[...] = x[first[i:j]]
        np.add(part, zero, out=part)
        if buf is not None:
            buf[i:j, d:] = 0
        return True

    _validation.in_row_blocks(m, x[0].nbytes, gather)
    if buf is not None:
        buf[m:, :d] = xu[0]
        buf[m:, d:] = 0
    return _Distinct(xu, wu, inverse, buf)


def _in_place(x: np.ndarray, first: np.ndarray, m: int) -> InPlaceRows | None:
    """The distinct rows ``x[first]`` read where they are, without a copy, when the
    drop-in's passes can (:class:`~jaxkmeans._validation.InPlaceRows`; through the
    index `first` unless it is every row in order): data the drop-in does not pad to a
    size bucket (beyond a bucket's limit, :func:`_data_rows`: a size compiles its own
    programs anyway), float32 on the CPU device, read by the native flat kernels.
    None otherwise (the rows are then gathered)."""
    d = x.shape[1]
    if _in_value_order(m, d):
        return None  # padded to its size bucket, in an order of the rows' values
    if not kernels.reads_in_place(engine.make_pass(dtype=x.dtype)):
        return None
    index = None if m == x.shape[0] else first  # ascending: every row once when m == n
    return _validation.in_place_rows(x, index, aligned=True)


def _distinct_rows(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of `x` with positive total weight, in an order that depends only on
    the rows' values (their row keys) up to ``PAD_LIMIT_ELEMENTS`` values, else in the
    order of their first occurrences (:func:`_in_value_order`), and their total weights.

    Args:
      x: (n, d) float array; w: (n,) non-negative weights.

    Returns:
      ``(xu (m, d), wu (m,))`` with ``wu > 0``.
    """
    rows = _distinct_dense(x, w)
    return rows.xu, rows.wu


def _scaled_tol(tol: float, x: Any, w: Any, d: int | None = None) -> float:
    """`tol` times the mean over features of the weighted per-feature variance of `x`
    (scikit-learn's scaling; weights count as repetitions). Rows on the device (dense,
    padded: zero columns and rows of weight 0 add nothing) are reduced there, in their
    dtype, without a temporary copy; `d` is then the number of real columns."""
    if tol == 0:
        return 0.0
    if isinstance(x, jax.Array | InPlaceRows):
        assert d is not None
        return tol * float(_column_variance_sum(x, w)) / d
    return tol * _weighted_mean_variance(x, w)


def _tol_rows(xu: Any, wu: np.ndarray, xp: Any, wp: jax.Array) -> tuple[Any, Any]:
    """The rows :func:`_scaled_tol` reduces: dense ones on the device, sparse ones and
    a few dense ones (at most ``_HOST_ELEMENTS`` values) on the host."""
    if _sp.issparse(xu):
        return xu, wu
    if xu.size <= _HOST_ELEMENTS:
        return (xu.host() if isinstance(xu, InPlaceRows) else xu), wu
    return xp, wp


@jax.jit
def _column_variance_sum(x: Any, w: jax.Array) -> jax.Array:
    """Sum over columns of the weighted variance of the rows of `x` (an array or
    :class:`~jaxkmeans._validation.InPlaceRows`): two passes over blocks of rows, so
    that no temporary grows with the number of rows."""
    n = x.shape[0]
    size = min(n, _VARIANCE_BLOCK_ROWS)
    count = -(-n // size)

    def block(i):
        # The last block is shifted back to fit; rows already counted get weight 0.
        start = jnp.minimum(i * size, n - size)
        xb = _validation.row_block(x, start, size)
        wb = jax.lax.dynamic_slice_in_dim(w, start, size)
        return xb, jnp.where(start + jnp.arange(size) >= i * size, wb, 0)

    def add_sum(i, acc):
        xb, wb = block(i)
        return acc + jnp.dot(wb, xb, precision=jax.lax.Precision.HIGHEST)

    total = jnp.sum(w)
    zeros = jnp.zeros(x.shape[1], x.dtype)
    mean = jax.lax.fori_loop(0, count, add_sum, zeros) / total

    def add_square(i, acc):
        xb, wb = block(i)
        return acc + jnp.sum(wb[:, None] * jnp.square(xb - mean[None, :]), axis=0)

    return jnp.sum(jax.lax.fori_loop(0, count, add_square, zeros)) / total


def _weighted_mean_variance(x: Any, w: np.ndarray) -> float:
    """Mean over features of the weighted per-feature variance (float64)."""
    if _sp.issparse(x):
        x = _sp.csr_matrix(x, dtype=np.float64)
        w = w.astype(np.float64)
        total = w.sum()
        mean = np.asarray(x.T @ w).ravel() / total
        sq = np.asarray(x.multiply(x).T @ w).ravel() / total
        return float(np.mean(np.maximum(sq - mean * mean, 0.0)))
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    mean = w @ x / w.sum()
    return float(np.mean(w @ (x - mean[None, :]) ** 2 / w.sum()))


def _sparse_euclidean_distances(x: Any, centers: np.ndarray) -> np.ndarray:
    """(n, k) Euclidean distances in float64 of sparse rows: ``||x||^2 - 2 x.c +
    ||c||^2`` with scipy's sparse-dense product (no densified rows); entries where the
    expansion cancels (a row at or near a center) are recomputed from the densified
    row and center (so a row equal to a center is exactly 0)."""
    x = _sp.csr_matrix(x, dtype=np.float64)
    c = centers.astype(np.float64)
    xsq = np.asarray(x.multiply(x).sum(axis=1)).ravel()
    csq = np.sum(c * c, axis=1)
    d2 = xsq[:, None] - 2.0 * np.asarray(x @ c.T) + csq[None, :]
    rows, cols = np.nonzero(d2 <= 1e-8 * (xsq[:, None] + csq[None, :]))
    for start in range(0, rows.size, 256):
        r, q = rows[start : start + 256], cols[start : start + 256]
        diff = x[r].toarray() - c[q]
        d2[r, q] = np.sum(diff * diff, axis=1)
    return np.sqrt(np.maximum(d2, 0.0))


def _euclidean_distances(x: Any, centers: np.ndarray) -> np.ndarray:
    """(n, k) Euclidean distances in float64, each row independent of the others."""
    if _sp.issparse(x):
        return _sparse_euclidean_distances(x, centers)
    c = centers.astype(np.float64)
    origin = c.mean(axis=0)
    c = c - origin[None, :]
    csq = np.sum(c * c, axis=1)
    n = x.shape[0]
    out = np.empty((n, c.shape[0]), np.float64)
    step = max(1, (1 << 20) // max(1, x.shape[1] + c.shape[0]))
    for start in range(0, n, step):
        xs = x[start : start + step].astype(np.float64) - origin[None, :]
        xsq = np.sum(xs * xs, axis=1)
        d2 = xsq[:, None] - 2.0 * (xs @ c.T) + csq[None, :]
        # Where the expansion cancels (a row at or near a center) its rounding error is
        # not small relative to the distance: recompute those entries directly, so that
        # a row equal to a center is exactly 0 (``transform(cluster_centers_)``).
        rows, cols = np.nonzero(d2 <= 1e-8 * (xsq[:, None] + csq[None, :]))
        if rows.size:
            diff = xs[rows] - c[cols]
            d2[rows, cols] = np.sum(diff * diff, axis=1)
        out[start : start + step] = np.sqrt(np.maximum(d2, 0.0))
    return out


def _nearest(x: Any, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int32) and squared distances of the rows of `x` to `centers`
    (``jaxkmeans.assign`` on padded rows, in the compute dtype; sparse rows as they
    are, never densified)."""
    dtype = _compute_dtype(x.dtype)
    if _sp.issparse(x):
        labels, dist = jaxkmeans.assign(_sp.csr_matrix(x, dtype=dtype), np.asarray(centers, dtype))
        return np.asarray(labels), np.asarray(dist)
    x = np.asarray(x, dtype)
    n, d = x.shape
    d_pad = _bucket_cols(d)
    xp = _pad(x, _data_rows(n, d_pad), d_pad)
    labels, dist = jaxkmeans.assign(xp, _pad_cols(np.asarray(centers, dtype), d_pad))
    return np.asarray(labels)[:n], np.asarray(dist)[:n]


def _input_dtype(X: Any) -> np.dtype | None:
    """The float dtype the drop-in's validation will give `X` (integers and nested lists
    become float64), or None when it cannot tell (validation then reports the error)."""
    dtype = getattr(X, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(X).dtype
        except Exception:
            return None
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # e.g. pandas extension dtypes
        return None
    if dtype == np.float32:
        return dtype
    if dtype.kind in "fiub":
        return np.dtype(np.float64)
    return None


def _keeps_float64(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs `method` with JAX's 64-bit mode on when `X` is float64 (or integer), so that
    float64 input is computed in float64 (as scikit-learn does) without changing the
    user's global JAX configuration; float32 input stays float32."""

    @functools.wraps(method)
    def wrapper(self, X, *args, **kwargs):
        scope = contextlib.nullcontext()
        if _input_dtype(X) == np.float64 and not jaxkmeans._config._jax_option("jax_enable_x64"):
            scope = jax.enable_x64(True)
        with scope:
            return method(self, X, *args, **kwargs)

    return wrapper


def _as_key(random_state: np.random.RandomState, num: int | None = None) -> Any:
    """A JAX key drawn from a numpy RandomState (deterministic for an int seed):
    ``jax.random.PRNGKey`` of a drawn int, or (`num`) its split into `num` keys, made on
    the host (:func:`_split_keys`)."""
    return _split_keys(int(random_state.randint(np.iinfo(np.int32).max)), num)


def _threefry2x32(key: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> list[np.ndarray]:
    """JAX's threefry2x32 hash (20 rounds) of the counters (x1, x2) under the key, on
    the host."""
    k1, k2 = np.uint32(key[0]), np.uint32(key[1])
    ks = [k1, k2, np.uint32(k1 ^ k2 ^ np.uint32(0x1BD11BDA))]
    x = [x1 + ks[0], x2 + ks[1]]
    for i in range(5):
        for r in ((13, 15, 26, 6), (17, 29, 16, 24))[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = (x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))
            x[1] = x[1] ^ x[0]
        x[0] = x[0] + ks[(i + 1) % 3]
        x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x


def _split_keys(seed: int, num: int | None) -> Any:
    """``jax.random.PRNGKey(seed)`` (`num` None) or ``jax.random.split`` of it into
    `num` keys, as raw uint32 keys computed on the host when JAX uses its default
    generator (threefry2x32, partitionable: the same bits, checked by the tests), so a
    first fit compiles no program for its keys; else by JAX."""
    if (
        getattr(jax.config, "jax_default_prng_impl", None) != "threefry2x32"
        or not getattr(jax.config, "jax_threefry_partitionable", False)
        or not 0 <= seed < 2**32
    ):
        key = jax.random.PRNGKey(seed)
        return key if num is None else jax.random.split(key, num)
    raw = np.array([0, seed], np.uint32)
    if num is None:
        return raw
    counts = np.arange(num, dtype=np.uint32)
    with np.errstate(over="ignore"):
        bits = _threefry2x32(raw, np.zeros_like(counts), counts)
    return np.stack(bits, axis=1)


# ------------------------------------------------------------------- compiled programs


def _init(key, x, w, *, k, method):
    if isinstance(x, SparseRows):
        spec = initializers.make_init(method, k, _validation.SQUARED_EUCLIDEAN_DISTANCE)
        return initializers.init_impl(key, x, w, spec)
    return jaxkmeans.init_centers(key, x, k, method, sample_weight=w)


# Small data: compiled quickly (most of a small first fit's time is this compile).
_init_programs = _validation.SizeAwareJit(_init, static_argnames=("k", "method"))


def _init_program(key, x, w, *, k, method):
    """The initial centers by the core's `method` (one compiled program)."""
    return _init_programs.for_data(x)(key, x, w, k=k, method=method)


def _take(x: Any, idx: jax.Array) -> jax.Array:
    """Rows `idx` of the device data, dense (sparse rows: only these are densified)."""
    return sparse.take_rows(x, idx) if isinstance(x, SparseRows) else x[idx]


def _lloyd_program(x, w, centers, tol, max_iter, key=None, k=None, method=None):
    """Lloyd iterations (the core's fit loop, :func:`jaxkmeans.fitting.lloyd_run`)
    until the total squared center shift is <= `tol` (scikit-learn's rule) or
    `max_iter`, from the given centers, or (`centers` None) from the `k` centers of the
    core's init `method` drawn with `key`, in the loop's first program (as
    :func:`_init_program` draws them: one compiled program less). Returns (centers,
    n_iter, inertia, labels, distances)."""
    passes = engine.make_pass(dtype=x.dtype)
    init = None
    if centers is None:
        init = initializers.make_init(method, k, _validation.SQUARED_EUCLIDEAN_DISTANCE)
    else:
        k = centers.shape[0]
    spec = fitting.FitSpec(k, init, 1, False, "shift", passes)
    result, dist = fitting.lloyd_run(key, x, w, centers, tol, int(max_iter), spec, True)
    return result.centers, result.n_iter, result.loss, result.labels, dist


def _reassign(state: KMeansState, xb: jax.Array, n_real: jax.Array, ratio: jax.Array):
    """scikit-learn's reassignment of low-count centers to random distinct batch rows
    (the first `n_real` rows of `xb` are the batch)."""
    counts = state.counts
    k = counts.shape[0]
    b = xb.shape[0]
    half = 0.5 * n_real.astype(counts.dtype)
    low = counts < ratio * jnp.max(counts)
    rank = (
        jnp.zeros((k,), jnp.int32)
        .at[jnp.argsort(counts, stable=True)]
        .set(jnp.arange(k, dtype=jnp.int32))
    )
    low = jnp.where(jnp.sum(low) > half, low & (rank < jnp.floor(half).astype(jnp.int32)), low)
    key, sub = jax.random.split(state.key)
    scores = jnp.where(jnp.arange(b) < n_real, jax.random.uniform(sub, (b,), jnp.float32), -1.0)
    order = jnp.argsort(-scores)
    slot = jnp.clip(jnp.cumsum(low.astype(jnp.int32)) - 1, 0, b - 1)
    centers = jnp.where(low[:, None], xb[order[slot]], state.centers)
    floor = jnp.min(jnp.where(low, jnp.inf, counts))
    counts = jnp.where(low & jnp.isfinite(floor), floor, counts).astype(state.counts.dtype)
    return state.replace(centers=centers, working=centers, counts=counts, key=key)


_reassign_program = jax.jit(_reassign)


@functools.partial(jax.jit, static_argnames=("batch", "reassign"))
def _minibatch_program(
    state,
    key,
    x,
    cdf,
    n_real,
    n_steps,
    n_samples,
    tol,
    max_no_improvement,
    ratio,
    *,
    batch,
    reassign,
):
    """scikit-learn's MiniBatchKMeans loop over ``jaxkmeans.minibatch_step``.

    Each step draws `n_real` rows of `x` with probability proportional to the weights
    (cumulative weights `cdf`), padded with weight-0 rows to `batch`. Stops after
    `n_steps`, when the squared center change is <= `tol` (if `tol` > 0), or when the
    exponentially weighted batch inertia has not improved for `max_no_improvement` steps.
    """
    dtype = x.dtype
    k = state.centers.shape[0]
    wb = (jnp.arange(batch) < n_real).astype(dtype)
    n_real_f = n_real.astype(dtype)
    alpha = jnp.minimum(2.0 * n_real_f / (n_samples.astype(dtype) + 1.0), 1.0)
    nan = jnp.full((), jnp.nan, dtype)

    def cond(c):
        return (c["step"] < n_steps) & ~c["done"]

    def body(c):
        st = c["state"]
        key, sub = jax.random.split(c["key"])
        # float32 draws whatever the dtype: float32 and float64 input draw the same rows.
        u = jax.random.uniform(sub, (batch,), jnp.float32).astype(dtype) * cdf[-1]
        idx = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, x.shape[0] - 1)
        xb = _take(x, idx)
        since = c["since"] + n_real
        trigger = jnp.any(st.counts == 0) | (since >= 10 * k)
        new, loss = jaxkmeans.minibatch_step(st, xb, sample_weight=wb)
        if reassign:
            new = lax.cond(trigger, lambda s: _reassign(s, xb, n_real, ratio), lambda s: s, new)
            since = jnp.where(trigger, 0, since)
        step = c["step"] + 1
        per_point = loss / n_real_f
        first = step == 1  # scikit-learn ignores the first step (inertia of the init)
        ewa = jnp.where(jnp.isnan(c["ewa"]), per_point, c["ewa"] * (1 - alpha) + per_point * alpha)
        ewa = jnp.where(first, c["ewa"], ewa)
        diff = jnp.sum((new.centers - st.centers) ** 2)
        tol_stop = ~first & (tol > 0) & (diff <= tol)
        improved = jnp.isnan(c["ewa_min"]) | (ewa < c["ewa_min"])
        count = ~first & ~tol_stop
        ewa_min = jnp.where(count & improved, ewa, c["ewa_min"])
        no_imp = jnp.where(count, jnp.where(improved, 0, c["no_imp"] + 1), c["no_imp"])
        done = tol_stop | (count & (no_imp >= max_no_improvement))
        return dict(
            state=new, key=key, step=step, since=since, ewa=ewa, ewa_min=ewa_min,
            no_imp=no_imp, done=done, last=per_point,
        )  # fmt: skip

    carry = dict(
        state=state, key=key, step=jnp.zeros((), jnp.int32), since=jnp.zeros((), jnp.int32),
        ewa=nan, ewa_min=nan, no_imp=jnp.zeros((), jnp.int32), done=jnp.zeros((), bool),
        last=nan,
    )  # fmt: skip
    out = lax.while_loop(cond, body, carry)
    ewa = jnp.where(jnp.isnan(out["ewa"]), out["last"], out["ewa"])
    return out["state"], out["step"], ewa


# ------------------------------------------------------------------------- validation


def _is_array_like(init: Any) -> bool:
    return hasattr(init, "__array__") or (
        hasattr(init, "__len__") and not isinstance(init, str | bytes)
    )


# --------------------------------------------------------------------------- estimators


class _BaseKMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """What KMeans and MiniBatchKMeans share: validation, prediction, transform."""

    _default_n_init = 10

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.sparse = True
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float64, np.float32], "X_types": ["2darray", "sparse"]}

    # -- validation

    def _check_common_params(self) -> None:
        check_positive_int(self.n_clusters, "n_clusters", minimum=1)
        check_positive_int(self.max_iter, "max_iter", minimum=1)
        check_non_negative(self.tol, "tol")
        if not isinstance(self.verbose, bool):
            check_positive_int(self.verbose, "verbose", minimum=0)
        init = self.init
        if isinstance(init, str):
            if init not in _CORE_INIT:
                raise ValueError(
                    f"`init` must be 'k-means++', 'random', a callable or an array of shape "
                    f"(n_clusters, n_features); got {init!r}."
                )
        elif not callable(init) and not _is_array_like(init):
            raise TypeError(
                f"`init` must be 'k-means++', 'random', a callable or an array of shape "
                f"(n_clusters, n_features); got {type(init).__name__}."
            )
        if not (isinstance(self.n_init, str) and self.n_init == "auto"):
            check_positive_int(self.n_init, "n_init", minimum=1)

    def _resolve_n_init(self) -> int:
        init = self.init
        if isinstance(self.n_init, str):  # "auto", as in scikit-learn >= 1.4
            if isinstance(init, str):
                n_init = 1 if init == _KMEANS_PLUS_PLUS else self._default_n_init
            else:
                n_init = self._default_n_init if callable(init) else 1
        else:
            n_init = int(self.n_init)
        if not isinstance(init, str) and not callable(init) and n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=3,
            )
            n_init = 1
        self._n_init = n_init  # scikit-learn's fitted attribute: the runs actually done
        return n_init

    def _validate_X(self, X, *, reset: bool):
        return _sk_validate_data(
            self,
            X,
            reset=reset,
            accept_sparse=["csr", "csc"],
            dtype=[np.float64, np.float32],
            order="C",
        )

    def _sample_weight(self, sample_weight, X) -> np.ndarray:
        sw = _check_sample_weight(sample_weight, X, dtype=X.dtype, ensure_non_negative=True)
        return sw

    def _check_init_array(self, centers: Any, X: np.ndarray, what: str) -> np.ndarray:
        centers = check_array(centers, dtype=X.dtype, copy=True, order="C")
        k = self.n_clusters
        if centers.shape[0] != k:
            raise ValueError(
                f"The shape of the initial centers {centers.shape} does not match the "
                f"number of clusters {k} ({what})."
            )
        if centers.shape[1] != X.shape[1]:
            raise ValueError(
                f"The shape of the initial centers {centers.shape} does not match the "
                f"number of features of the data {X.shape[1]} ({what})."
            )
        return centers

    def _check_enough_samples(self, X: np.ndarray) -> None:
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}.")

    def _prepare(
        self, X: np.ndarray, sample_weight, *, padded: bool = False, in_place: bool = False
    ) -> tuple[np.ndarray, _Distinct, np.dtype]:
        """Validated weights and the distinct weighted rows in the compute dtype (dense
        rows gathered into their padded device layout with `padded`, or read in place
        where the passes can with `in_place`)."""
        sw = self._sample_weight(sample_weight, X)
        dtype = _compute_dtype(X.dtype)
        x = X.astype(dtype, copy=False)
        rows = _distinct(x, np.asarray(sw, dtype), padded=padded, in_place=in_place)
        if rows.xu.shape[0] == 0:
            raise ValueError("`sample_weight` must have at least one positive weight; all are 0.")
        return sw, rows, dtype

    def _few_distinct(self, xu: np.ndarray) -> np.ndarray:
        """Centers when there are at most n_clusters distinct points: all of them, the
        rest repeating the first (scikit-learn warns in that case too)."""
        xu = _dense_rows(xu)
        m, k = xu.shape[0], self.n_clusters
        if m < k:
            warnings.warn(
                f"Number of distinct clusters ({m}) found smaller than n_clusters ({k}). "
                "Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return np.concatenate([xu, np.repeat(xu[:1], k - m, axis=0)])

    def _init_run(
        self, key, xp, wp, init, X: np.ndarray, d_pad: int, random_state, dtype
    ) -> jax.Array:
        """Initial centers (k, d_pad) for one run on the padded distinct rows."""
        if isinstance(init, str):
            return _init_program(key, xp, wp, k=self.n_clusters, method=_CORE_INIT[init])
        if callable(init):
            c = init(X, self.n_clusters, random_state=random_state)
            c = self._check_init_array(c, X, "returned by the init callable")
        else:
            c = init
        return jnp.asarray(_pad_cols(np.asarray(c, dtype), d_pad))

    @_keeps_float64
    def _init_centroids(
        self,
        X,
        x_squared_norms=None,
        init=None,
        random_state=None,
        sample_weight=None,
        init_size=None,
        n_centroids=None,
    ) -> np.ndarray:
        """scikit-learn's private initialization hook (its tests call it): `n_centroids`
        (default n_clusters) initial centers for `X`, weighted by `sample_weight`, from
        `init_size` random rows if given; zero-weight rows are never chosen.
        `x_squared_norms` is accepted and unused."""
        X = X if _sp.issparse(X) else np.asarray(X)
        init = self.init if init is None else init
        k = self.n_clusters if n_centroids is None else int(n_centroids)
        random_state = check_random_state(random_state)
        sw = np.ones(X.shape[0]) if sample_weight is None else np.asarray(sample_weight)
        if init_size is not None and init_size < X.shape[0]:
            idx = random_state.randint(0, X.shape[0], int(init_size))
            X, sw = X[idx], sw[idx]
        if not isinstance(init, str):
            c = init(X, k, random_state=random_state) if callable(init) else init
            return np.asarray(c, X.dtype)
        dtype = _compute_dtype(X.dtype)
        xu, wu, *_ = _distinct(X.astype(dtype, copy=False), np.asarray(sw, dtype))
        if xu.shape[0] <= k:
            xu = _dense_rows(xu)
            return np.concatenate([xu, np.repeat(xu[:1], k - xu.shape[0], axis=0)]).astype(X.dtype)
        d = xu.shape[1]
        xp, wp, _ = _placed(xu, wu, dtype)
        c = _init_program(_as_key(random_state), xp, wp, k=k, method=_CORE_INIT[init])
        return np.asarray(c)[:, :d].astype(X.dtype)

    def _set_fitted(self, X: np.ndarray, centers: np.ndarray) -> None:
        self.cluster_centers_ = np.asarray(centers, X.dtype)
        self._n_features_out = self.cluster_centers_.shape[0]

    # -- prediction

    def _labels_inertia(self, X: np.ndarray, sw: np.ndarray) -> tuple[np.ndarray, float]:
        labels, dist = _nearest(X, self.cluster_centers_)
        return labels, float(np.dot(np.asarray(sw, np.float64), dist.astype(np.float64)))

    def _check_test_data(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self._validate_X(X, reset=False)

    @_keeps_float64
    @_validation.releases_host_copies
    def predict(self, X: _MatrixLike) -> np.ndarray:
        """Index of the nearest center of each row.

        Args:
          X: (n_samples, n_features) array-like.

        Returns:
          (n_samples,) int32 labels.
        """
        X = self._check_test_data(X)
        return _nearest(X, self.cluster_centers_)[0]

    @_keeps_float64
    def fit_predict(
        self, X: _MatrixLike, y: Any = None, sample_weight: ArrayLike | None = None
    ) -> np.ndarray:
        """``fit(X, sample_weight=sample_weight).labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    @_keeps_float64
    @_validation.releases_host_copies
    def transform(self, X: _MatrixLike) -> np.ndarray:
        """Euclidean distance of each row to every center, in `X`'s float dtype.

        Args:
          X: (n_samples, n_features) array-like or sparse matrix.

        Returns:
          (n_samples, n_clusters) array.

        Examples:
          >>> import numpy as np
          >>> from jaxkmeans.sklearn import KMeans
          >>> X = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)
          >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
          >>> d = km.transform(np.array([[0, 1]], np.float32))
          >>> d.shape, d.dtype, sorted(np.round(d[0], 3).tolist())
          ((1, 2), dtype('float32'), [0.0, 10.0])
        """
        X = self._check_test_data(X)
        return self._transform(X)

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return _euclidean_distances(X, self.cluster_centers_).astype(X.dtype, copy=False)

    @_keeps_float64
    def fit_transform(
        self, X: _MatrixLike, y: Any = None, sample_weight: ArrayLike | None = None
    ) -> np.ndarray:
        """``fit(X, sample_weight=sample_weight).transform(X)``."""
        self.fit(X, sample_weight=sample_weight)
        return self._transform(self._validate_X(X, reset=False))

    @_keeps_float64
    @_validation.releases_host_copies
    def score(self, X: _MatrixLike, y: Any = None, sample_weight: ArrayLike | None = None) -> float:
        """Opposite of the (weighted) inertia of `X` on the fitted centers.

        Args:
          X: (n_samples, n_features) array-like or sparse matrix.
          y: ignored.
          sample_weight: optional (n_samples,) non-negative weights.

        Returns:
          ``-sum_i w_i * min_j ||x_i - c_j||^2`` (higher is better).

        Examples:
          >>> import numpy as np
          >>> from jaxkmeans.sklearn import KMeans
          >>> X = np.array([[0, 0], [0, 2], [10, 0], [10, 2]], np.float32)
          >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
          >>> float(km.score(X))  # each row is 1 from its center
          -4.0
          >>> float(km.score(X, sample_weight=[1, 1, 1, 0]))
          -3.0
        """
        X = self._check_test_data(X)
        sw = self._sample_weight(sample_weight, X)
        return -self._labels_inertia(X, sw)[1]


class KMeans(_BaseKMeans):
    """K-means (Lloyd) with scikit-learn's ``KMeans`` interface, computed by jaxkmeans.

    Args:
      n_clusters: number of clusters k.
      init: ``"k-means++"`` (greedy, ``2 + ln k`` candidates per pick, as scikit-learn),
        ``"random"`` (k distinct rows, weighted), a (k, d) array, or a callable
        ``init(X, n_clusters, random_state) -> (k, d)``.
      n_init: number of runs, best inertia kept; ``"auto"`` is 1 for ``"k-means++"`` and
        arrays, 10 for ``"random"`` and callables.
      max_iter: maximum Lloyd iterations per run.
      tol: a run stops once the total squared center shift of an iteration is <=
        ``tol * mean(var(X, axis=0))`` (scikit-learn's rule; see the module docstring).
      verbose: > 0 prints each run's inertia and iteration count.
      random_state: None, an int or a ``numpy.random.RandomState``; seeds the JAX key of
        the initialization and is passed to a callable `init`.
      copy_x: accepted for compatibility; `X` is never modified.
      algorithm: ``"lloyd"`` or ``"elkan"`` (both run Lloyd iterations).

    Attributes:
      cluster_centers_: (k, n_features) centers in `X`'s float dtype.
      labels_: (n_samples,) int32 label of each training row.
      inertia_: weighted sum of squared distances of the training rows to their center.
      n_iter_: Lloyd iterations of the best run.
      n_features_in_, feature_names_in_: as in scikit-learn.

    Examples:
      >>> import numpy as np
      >>> from jaxkmeans.sklearn import KMeans
      >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
      >>> km = KMeans(n_clusters=2, random_state=0).fit(X)
      >>> sorted(np.round(km.cluster_centers_, 3).tolist())
      [[1.0, 2.0], [10.0, 2.0]]
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: str | Callable[..., Any] | Any = "k-means++",
        n_init: str | int = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        verbose: int = 0,
        random_state: Any = None,
        copy_x: bool = True,
        algorithm: str = "lloyd",
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm

    @_keeps_float64
    @_validation.releases_host_copies
    def fit(self, X: _MatrixLike, y: Any = None, sample_weight: ArrayLike | None = None) -> KMeans:
        """Computes k-means clustering.

        Args:
          X: (n_samples, n_features) array-like (not sparse).
          y: ignored.
          sample_weight: optional (n_samples,) non-negative weights (a weight of 2 is the
            same as the row twice).

        Returns:
          self.
        """
        jaxkmeans._config.use_default_compilation_cache()
        self._check_common_params()
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(
                f"`algorithm` must be one of {list(_ALGORITHMS)}; got {self.algorithm!r}."
            )
        if self.algorithm == "elkan" and self.n_clusters == 1:
            warnings.warn(
                "algorithm='elkan' doesn't make sense for a single cluster. Using 'lloyd' instead.",
                RuntimeWarning,
                stacklevel=2,
            )
        X = self._validate_X(X, reset=True)
        self._check_enough_samples(X)
        n_init = self._resolve_n_init()
        init = self.init
        if not isinstance(init, str) and not callable(init):
            init = self._check_init_array(init, X, "init")
        random_state = check_random_state(self.random_state)
        sw, rows, dtype = self._prepare(X, sample_weight, padded=True, in_place=True)
        k = self.n_clusters
        if rows.xu.shape[0] < k:
            self._set_fitted(X, self._few_distinct(rows.xu))
            self.n_iter_ = 1
            self.labels_, self.inertia_ = self._labels_inertia(X, sw)
            return self
        centers, self.n_iter_, labels, dist = self._lloyd(
            X, rows, init, n_init, random_state, dtype
        )
        self._set_fitted(X, centers)
        if rows.inverse is None or labels is None:  # rows of weight 0 were dropped
            self.labels_, self.inertia_ = self._labels_inertia(X, sw)
        else:
            # Equal rows have equal labels and distances: those of the distinct rows,
            # computed on the rows already on the device (no second copy of X).
            self.labels_ = labels[rows.inverse]
            self.inertia_ = float(np.dot(rows.wu.astype(np.float64), dist.astype(np.float64)))
        return self

    def _lloyd(self, X, rows: _Distinct, init, n_init, random_state, dtype):
        """The best of `n_init` runs: ``(centers (k, d), n_iter, labels (m,), distances
        (m,))`` (labels and squared distances of the distinct rows to the centers)."""
        xu, wu = rows.xu, rows.wu
        m, d = xu.shape
        xp, wp, d_pad = _placed(xu, wu, dtype, rows.padded)
        del rows
        # Host scalars and keys: nothing compiled for them.
        tol = np.asarray(_scaled_tol(self.tol, *_tol_rows(xu, wu, xp, wp), d), dtype)
        max_iter = min(self.max_iter, _NO_LIMIT)
        keys = _as_key(random_state, n_init)
        best = None
        for run in range(n_init):
            if isinstance(init, str) and not isinstance(xp, SparseRows):
                # The init method runs in the Lloyd loop's first program.
                method = dict(key=keys[run], k=self.n_clusters, method=_CORE_INIT[init])
                c0 = None
            else:
                c0 = self._init_run(keys[run], xp, wp, init, X, d_pad, random_state, dtype)
                method = {}
            if self.verbose:
                print("Initialization complete")
            c, n_iter, loss, labels, dist = _lloyd_program(xp, wp, c0, tol, max_iter, **method)
            loss = float(loss)
            if self.verbose:
                # The iterations run inside one compiled program: the last one is reported
                # (scikit-learn's wording, 0-based iteration numbers).
                last = int(n_iter) - 1
                print(f"Iteration {last}, inertia {loss}.")
                if int(n_iter) < self.max_iter:
                    if self.tol == 0:
                        print(f"Converged at iteration {last}: strict convergence.")
                    else:
                        print(
                            f"Converged at iteration {last}: center shift of the last "
                            f"iteration within tolerance {float(tol)}."
                        )
                print(f"[KMeans] run {run + 1}/{n_init}: {int(n_iter)} iterations, inertia {loss}.")
            if best is None or loss < best[2]:
                best = (c, int(n_iter), loss, labels, dist)
        assert best is not None  # n_init >= 1
        labels = dist = None
        if not isinstance(xp, SparseRows):  # the labels of the best run's last pass
            labels, dist = np.asarray(best[3])[:m], np.asarray(best[4])[:m]
        return np.asarray(best[0])[:, :d], best[1], labels, dist


class MiniBatchKMeans(_BaseKMeans):
    """Mini-batch k-means with scikit-learn's ``MiniBatchKMeans`` interface, computed by
    :func:`jaxkmeans.minibatch_step`.

    Args:
      n_clusters: number of clusters k.
      init: as in :class:`KMeans`.
      max_iter: passes over the data: ``max_iter * n_samples // batch_size`` steps at most.
      batch_size: rows per step (capped at the number of distinct rows).
      verbose: > 0 prints a summary of the run.
      compute_labels: compute ``labels_`` and ``inertia_`` on the whole data after
        fitting (otherwise ``inertia_`` is the smoothed batch estimate).
      random_state: None, an int or a ``numpy.random.RandomState``.
      tol: stop once the squared change of the centers in one step is <=
        ``tol * mean(var(X, axis=0))`` (0 disables it).
      max_no_improvement: stop after this many steps without improvement of the
        exponentially weighted batch inertia (None disables it).
      init_size: rows used for initialization (default ``3 * batch_size``, at least
        ``3 * n_clusters``).
      n_init: initializations tried (on `init_size` rows, best inertia on another sample
        of `init_size` rows kept); ``"auto"``: 1 for ``"k-means++"`` and arrays, 3
        otherwise.
      reassignment_ratio: centers whose count is below this fraction of the largest count
        are moved to random batch rows (scikit-learn's schedule); 0 disables it.

    Attributes:
      cluster_centers_, labels_, inertia_, n_iter_ (passes over the data), n_steps_
      (mini-batch steps), n_features_in_, feature_names_in_.

    Examples:
      >>> import numpy as np
      >>> from jaxkmeans.sklearn import MiniBatchKMeans
      >>> X = np.array([[0, 0], [0, 1], [10, 10], [10, 11], [0, 0.5], [10, 10.5]], np.float32)
      >>> km = MiniBatchKMeans(2, batch_size=4, random_state=0, n_init=1).fit(X)
      >>> labels = km.predict(np.array([[0, 0.2], [9, 9]], np.float32))
      >>> bool(labels[0] != labels[1]), km.cluster_centers_.shape
      (True, (2, 2))
    """

    _default_n_init = 3

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: str | Callable[..., Any] | Any = "k-means++",
        max_iter: int = 100,
        batch_size: int = 1024,
        verbose: int = 0,
        compute_labels: bool = True,
        random_state: Any = None,
        tol: float = 0.0,
        max_no_improvement: int | None = 10,
        init_size: int | None = None,
        n_init: str | int = "auto",
        reassignment_ratio: float = 0.0,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.verbose = verbose
        self.compute_labels = compute_labels
        self.random_state = random_state
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init = n_init
        self.reassignment_ratio = reassignment_ratio

    def _check_minibatch_params(self) -> None:
        self._check_common_params()
        check_positive_int(self.batch_size, "batch_size", minimum=1)
        check_positive_int(
            self.max_no_improvement, "max_no_improvement", minimum=0, allow_none=True
        )
        check_positive_int(self.init_size, "init_size", minimum=1, allow_none=True)
        check_non_negative(self.reassignment_ratio, "reassignment_ratio")

    def _resolve_init_size(self, batch: int, m: int) -> int:
        k = self.n_clusters
        size = self.init_size
        if size is None:
            size = 3 * batch
            if size < k:
                size = 3 * k
        elif size < k:
            warnings.warn(
                f"init_size={size} should be larger than n_clusters={k}. Setting it to "
                "min(3*n_clusters, n_samples)",
                RuntimeWarning,
                stacklevel=3,
            )
            size = 3 * k
        self._init_size = min(size, m)  # scikit-learn's fitted attribute
        return self._init_size

    def _initial_centers(self, X, xu, wu, init, n_init, init_size, random_state, key, dtype):
        """Best of `n_init` initializations, each on `init_size` random distinct rows,
        judged on another `init_size` random rows. Returns (k, d) in the compute dtype."""
        m, d = xu.shape
        d_pad = d if _sp.issparse(xu) else _bucket_cols(d)
        full = init_size >= m

        def sample(size):
            idx = np.sort(random_state.choice(m, size=size, replace=False))
            return xu[idx], wu[idx]

        valid = None
        if n_init > 1:
            xv, wv = (xu, wu) if full else sample(init_size)
            valid = (xv, wv)
        keys = jax.random.split(key, n_init)
        best = None
        for run in range(n_init):
            xs, ws = (xu, wu) if full else sample(init_size)
            if xs.shape[0] <= self.n_clusters:
                c = jnp.asarray(_pad_cols(self._few_distinct(xs), d_pad))
            else:
                xp, wp, _ = _placed(xs, ws, dtype)
                c = self._init_run(keys[run], xp, wp, init, X, d_pad, random_state, dtype)
            host_c = np.asarray(c)[:, :d]
            if valid is None:
                return host_c
            loss = float(np.dot(valid[1].astype(np.float64), _nearest(valid[0], host_c)[1]))
            if best is None or loss < best[1]:
                best = (host_c, loss)
        assert best is not None  # n_init >= 1
        return best[0]

    @_keeps_float64
    @_validation.releases_host_copies
    def fit(
        self, X: _MatrixLike, y: Any = None, sample_weight: ArrayLike | None = None
    ) -> MiniBatchKMeans:
        """Computes mini-batch k-means on `X`.

        Args:
          X: (n_samples, n_features) array-like (not sparse).
          y: ignored.
          sample_weight: optional (n_samples,) non-negative weights.

        Returns:
          self.
        """
        jaxkmeans._config.use_default_compilation_cache()
        self._check_minibatch_params()
        X = self._validate_X(X, reset=True)
        self._check_enough_samples(X)
        n_init = self._resolve_n_init()
        init = self.init
        if not isinstance(init, str) and not callable(init):
            init = self._check_init_array(init, X, "init")
        random_state = check_random_state(self.random_state)
        sw, rows, dtype = self._prepare(X, sample_weight, padded=True)
        xu, wu = rows.xu, rows.wu
        m, d = xu.shape
        k = self.n_clusters
        key = _as_key(random_state)
        init_key, loop_key, state_key = jax.random.split(key, 3)
        if m <= k:
            centers = self._few_distinct(xu)
            state = KMeansState.create(jnp.asarray(centers), key=state_key)
            self.n_steps_ = 0
            self.n_iter_ = 1
            ewa = 0.0
        else:
            batch = min(self.batch_size, m)
            init_size = self._resolve_init_size(batch, m)
            centers = self._initial_centers(
                X, xu, wu, init, n_init, init_size, random_state, init_key, dtype
            )
            xp, wp, d_pad = _placed(xu, wu, dtype, rows.padded)
            cdf = np.cumsum(np.asarray(wp, np.float64)).astype(dtype)
            state = KMeansState.create(jnp.asarray(_pad_cols(centers, d_pad)), key=state_key)
            n_steps = (self.max_iter * m) // batch
            no_imp = self.max_no_improvement
            state, steps, ewa = _minibatch_program(
                state,
                loop_key,
                xp,
                jnp.asarray(cdf),
                jnp.asarray(batch, jnp.int32),
                jnp.asarray(min(n_steps, _NO_LIMIT), jnp.int32),
                jnp.asarray(m, jnp.int32),
                jnp.asarray(_scaled_tol(self.tol, *_tol_rows(xu, wu, xp, wp), d), dtype),
                jnp.asarray(_NO_LIMIT if no_imp is None else no_imp, jnp.int32),
                jnp.asarray(self.reassignment_ratio, dtype),
                batch=_bucket_rows(batch),
                reassign=self.reassignment_ratio > 0,
            )
            state = _unpad_state(state, d)
            self.n_steps_ = int(steps)
            self.n_iter_ = int(math.ceil(self.n_steps_ * batch / m))
            ewa = float(ewa)
            if self.verbose:
                if self.n_steps_ < n_steps:  # stopped early; say why where it is known
                    if no_imp is None:
                        why = "small centers change"
                    elif self.tol == 0:
                        why = "lack of improvement in inertia"
                    else:
                        why = "small centers change or lack of improvement in inertia"
                    print(f"Converged ({why}) at step {self.n_steps_}/{n_steps}")
                print(
                    f"[MiniBatchKMeans] {self.n_steps_} steps of {batch} rows "
                    f"({self.n_iter_} passes), smoothed batch inertia {ewa}."
                )
        self._state = _host_state(state)
        self._n_since_last_reassign = 0
        self._set_fitted(X, np.asarray(state.centers))
        if self.compute_labels:
            self.labels_, self.inertia_ = self._labels_inertia(X, sw)
        else:
            self.inertia_ = ewa * float(np.sum(wu, dtype=np.float64))
        return self

    @_keeps_float64
    @_validation.releases_host_copies
    def partial_fit(
        self, X: _MatrixLike, y: Any = None, sample_weight: ArrayLike | None = None
    ) -> MiniBatchKMeans:
        """One mini-batch step on `X` (``jaxkmeans.minibatch_step``); the first call
        also initializes the centers from `X`.

        Args:
          X: (n_samples, n_features) array-like, the batch.
          y: ignored.
          sample_weight: optional (n_samples,) non-negative weights.

        Returns:
          self.

        Examples:
          >>> import numpy as np
          >>> from jaxkmeans.sklearn import MiniBatchKMeans
          >>> rng = np.random.default_rng(0)
          >>> km = MiniBatchKMeans(n_clusters=2, random_state=0)
          >>> for _ in range(3):  # batches arriving one at a time
          ...     batch = np.concatenate([rng.normal(0, 1, (8, 2)), rng.normal(20, 1, (8, 2))])
          ...     km = km.partial_fit(batch.astype(np.float32))
          >>> km.n_steps_, sorted(np.round(km.cluster_centers_[:, 0] / 20).tolist())
          (3, [0.0, 1.0])
        """
        jaxkmeans._config.use_default_compilation_cache()
        has_centers = hasattr(self, "cluster_centers_")
        if not has_centers:
            self._check_minibatch_params()
        X = self._validate_X(X, reset=not has_centers)
        sw = self._sample_weight(sample_weight, X)
        dtype = _compute_dtype(X.dtype)
        if not has_centers:
            self._check_enough_samples(X)
            init = self.init
            if not isinstance(init, str) and not callable(init):
                init = self._check_init_array(init, X, "init")
            random_state = check_random_state(self.random_state)
            self._random_state = random_state
            _, (xu, wu, *_), _ = self._prepare(X, sw)
            key = _as_key(random_state)
            init_key, state_key = jax.random.split(key)
            m = xu.shape[0]
            if m <= self.n_clusters:
                centers = self._few_distinct(xu)
            else:
                init_size = self._resolve_init_size(min(self.batch_size, m), m)
                centers = self._initial_centers(
                    X, xu, wu, init, 1, init_size, random_state, init_key, dtype
                )
            self._state = _host_state(KMeansState.create(jnp.asarray(centers), key=state_key))
            self._n_since_last_reassign = 0
            self.n_steps_ = 0
        # scikit-learn decides on a reassignment from the counts before the step.
        self._n_since_last_reassign += X.shape[0]
        reassign = self.reassignment_ratio > 0 and (
            bool(np.any(self._state.counts == 0))
            or self._n_since_last_reassign >= 10 * self.n_clusters
        )
        # The batch itself is one chunk: sparse batches are densified here.
        xb = np.asarray(_dense_rows(X), dtype)
        state, _ = jaxkmeans.minibatch_step(self._state, xb, sample_weight=np.asarray(sw, dtype))
        if reassign:
            self._n_since_last_reassign = 0
            state = _reassign_program(
                state,
                jnp.asarray(xb),
                jnp.asarray(X.shape[0], jnp.int32),
                jnp.asarray(self.reassignment_ratio, dtype),
            )
        self._state = _host_state(state)
        self.n_steps_ += 1
        self._set_fitted(X, np.asarray(self._state.centers))
        if self.compute_labels:
            self.labels_, self.inertia_ = self._labels_inertia(X, sw)
        return self


def _unpad_state(state: KMeansState, d: int) -> KMeansState:
    return state.replace(
        centers=state.centers[:, :d], working=state.working[:, :d], origin=state.origin[:d]
    )


def _host_state(state: KMeansState) -> KMeansState:
    """The state with numpy leaves (picklable, no device buffers held)."""
    return jax.tree_util.tree_map(np.asarray, state)
