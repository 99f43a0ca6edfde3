"""Sparse rows: the layout the sparse kernels read, and the kernels themselves.

Sparse input (``jax.experimental.sparse.BCOO`` or a scipy sparse matrix) is turned once,
on the host, into :class:`SparseRows`: a CSR layout (row pointers, and per stored entry
its row, column and value, sorted by row then column, duplicates summed, explicit zeros
dropped) with its sizes padded to buckets, so that data sets of nearby sizes and
numbers of nonzeros share one compiled program.

The kernels never densify the data. For prepared centers ``(cp (k, d), bias (k,))`` in
the frame of the origin 0 (sparse rows are never shifted: a shift would fill them) the
score of row i and center j is ``<x_i, cp_j> + bias_j``, a sparse-dense product
computed per block of rows from the block's stored entries: the entries gather their
column of ``cp`` and are summed per row (segment sums over the nonzeros). Per-center
sums are segment sums of the entries by (label of their row, column). Peak extra memory
is one block's entries times a block of centers, plus the (k, d) sums; nothing grows
like n x d.

Two implementations: ``xla`` (any platform; blocks of rows in a ``lax.map``/``scan``)
and a native CPU kernel (``jaxkmeans_sparse_lloyd_f32`` in ``native/kmeans_cpu.cc``,
multithreaded over rows) used, like the dense one, where the program runs on CPU and
the engine's pass chose ``kernel="native"``.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxkmeans._validation import (
    COSINE_DISTANCE,
    _float_dtype,
    bucket_rows,
    is_traced,
    to_device,
)
from jaxkmeans.kernels import by_platform, native

__all__ = [
    "SparseRows",
    "is_sparse",
    "from_host",
    "bucketed",
    "nearest",
    "statistics",
    "matmul",
    "take_rows",
    "identity",
    "dense_identity",
    "prepared_values",
]

# Entries of one block's gathered (entries, centers) product in the XLA kernel.
_BLOCK_ELEMENTS = 1 << 22
# Stored entries per block of rows the block size aims at.
_BLOCK_ENTRIES = 1 << 16


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["indptr", "rows", "cols", "vals"],
    meta_fields=["n", "d", "block", "block_nnz", "row_nnz"],
)
@dataclasses.dataclass(frozen=True)
class SparseRows:
    """Rows of a sparse (n, d) matrix in the kernels' CSR layout (a pytree).

    Attributes:
      indptr: (nb * block + 1,) int32 row pointers (rows past `n` are empty).
      rows, cols: (nnz_pad,) int32 row and column of each stored entry, sorted by row;
        entries past ``indptr[-1]`` are padding (value 0, last row).
      vals: (nnz_pad,) float values.
      n: rows (padded to their size bucket by the public functions).
      d: columns.
      block: rows per block of the kernels (a power of two).
      block_nnz: an upper bound of the stored entries of any block (bucketed); at
        least that many padding entries follow the real ones.
      row_nnz: an upper bound of the stored entries of any row (bucketed).
    """

    indptr: jax.Array
    rows: jax.Array
    cols: jax.Array
    vals: jax.Array
    n: int
    d: int
    block: int
    block_nnz: int
    row_nnz: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    @property
    def dtype(self) -> Any:
        return self.vals.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.block)


def is_sparse(x: Any) -> bool:
    """Whether `x` is sparse input: :class:`SparseRows`, a BCOO array or a scipy sparse
    matrix/array."""
    if isinstance(x, SparseRows):
        return True
    mod = type(x).__module__ or ""
    if mod.startswith("scipy.sparse"):
        return True
    # A JAX sparse array exists only once its module is imported (which takes 0.4 s:
    # not for every dense input).
    jsparse = sys.modules.get("jax.experimental.sparse")
    return jsparse is not None and isinstance(x, jsparse.JAXSparse)


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _to_csr(x: Any, name: str) -> Any:
    """A canonical scipy CSR matrix (sorted, duplicates summed, zeros dropped) of `x`."""
    import scipy.sparse as sp
    from jax.experimental import sparse as jsparse

    if isinstance(x, jsparse.JAXSparse):
        if not isinstance(x, jsparse.BCOO):
            x = x.to_bcoo() if hasattr(x, "to_bcoo") else jsparse.BCOO.fromdense(x.todense())
        if is_traced(x.data, x.indices):
            raise TypeError(
                f"`{name}`: a sparse BCOO array traced under jit is not supported; pass "
                "a concrete BCOO (or scipy sparse matrix) to the public functions, "
                "outside jit."
            )
        if x.n_batch != 0 or x.n_dense != 0 or x.ndim != 2:
            raise ValueError(
                f"`{name}` must be a 2-D BCOO with no batch or dense dimensions; got "
                f"shape {x.shape} with n_batch={x.n_batch}, n_dense={x.n_dense}."
            )
        idx = np.asarray(x.indices)
        data = np.asarray(x.data)
        # Out-of-range indices mark padding in BCOO: drop them.
        ok = (idx[:, 0] < x.shape[0]) & (idx[:, 1] < x.shape[1])
        csr = sp.csr_matrix((data[ok], (idx[ok, 0], idx[ok, 1])), shape=x.shape)
    else:
        if x.ndim != 2:
            raise ValueError(f"`{name}` must be 2-D; got shape {x.shape}.")
        csr = sp.csr_matrix(x)
        if csr is x:
            csr = csr.copy()
    csr.sum_duplicates()
    csr.sort_indices()
    csr.eliminate_zeros()
    return csr


def from_host(
    x: Any,
    name: str = "x",
    *,
    rows: int | None = None,
    dtype: Any = None,
    check_values: bool = True,
) -> SparseRows:
    """:class:`SparseRows` of sparse `x` (BCOO or scipy), on the default device.

    Args:
      x: (n, d) sparse matrix (concrete).
      name: the argument's name, for errors.
      rows: pad to this many rows (>= n; empty rows) instead of n.
      dtype: the value dtype (default: the compute dtype of `x`'s dtype).
      check_values: check that the values are finite.
    """
    csr = _to_csr(x, name)
    n, d = csr.shape
    if n < 1 or d < 1:
        raise ValueError(f"`{name}` must have at least one row and one column; got shape {(n, d)}.")
    dtype = _float_dtype(csr.dtype, name) if dtype is None else np.dtype(dtype)
    vals = np.asarray(csr.data, dtype)
    if check_values and not bool(np.isfinite(vals).all()):
        raise ValueError(f"`{name}` must contain only finite values; it has NaN or inf.")
    n_rows = n if rows is None else int(rows)
    counts = np.diff(csr.indptr).astype(np.int64)
    nnz = int(counts.sum())
    avg = max(1.0, nnz / max(n, 1))
    block = int(min(4096, max(8, _pow2_at_least(int(_BLOCK_ENTRIES / avg)))))
    block = min(block, _pow2_at_least(n_rows))
    nb = -(-n_rows // block)
    ptr = np.full((nb * block + 1,), nnz, np.int64)
    ptr[: n + 1] = csr.indptr
    per_block = ptr[block::block] - ptr[:-1:block]
    block_nnz = bucket_rows(max(1, int(per_block.max(initial=0))))
    row_nnz = bucket_rows(max(1, int(counts.max(initial=0)))) if n else 1
    row_nnz = min(row_nnz, _pow2_at_least(d))
    total = bucket_rows(nnz + block_nnz)
    if nnz + block_nnz > total:  # pragma: no cover - bucket_rows rounds up
        total = nnz + block_nnz
    r = np.full((total,), nb * block - 1, np.int32)
    r[:nnz] = np.repeat(np.arange(n, dtype=np.int32), counts)
    c = np.zeros((total,), np.int32)
    c[:nnz] = csr.indices
    v = np.zeros((total,), dtype)
    v[:nnz] = vals
    if nnz and int(ptr.max()) >= 2**31:
        raise ValueError(f"`{name}` has too many stored entries ({nnz}); at most 2^31 - 1.")
    return SparseRows(
        to_device(ptr.astype(np.int32)),
        to_device(r),
        to_device(c),
        to_device(v),
        n_rows,
        d,
        block,
        block_nnz,
        row_nnz,
    )


def bucketed(
    x: Any, sample_weight: Any, pad_rows: bool | None, name: str = "x"
) -> tuple[SparseRows, Any, int]:
    """The sparse counterpart of :func:`jaxkmeans._validation.as_bucketed`: checked
    sparse rows padded to their size bucket (empty rows of weight 0) unless `pad_rows`
    is False, the checked weights, and the number of real rows."""
    from jaxkmeans._validation import _checked_weights, check_pad_rows

    pad_rows = check_pad_rows(pad_rows)
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(f"`{name}` must be 2-D; got shape {shape}.")
    n = shape[0]
    size = n if pad_rows is False else bucket_rows(n)
    if isinstance(x, SparseRows):
        sp = x
        size = n
    else:
        sp = from_host(x, name, rows=size)
    w = _checked_weights(sample_weight, n, sp.dtype)
    if size == n:
        return sp, (None if w is None else to_device(w)), n
    wp = np.zeros((size,), sp.dtype)
    wp[:n] = 1.0 if w is None else np.asarray(w)
    return sp, to_device(wp), n


# ----------------------------------------------------------------- row quantities


def prepared_values(sp: SparseRows, metric: str) -> tuple[jax.Array, jax.Array]:
    """``(vals', base (n,))``: the stored values as the kernels use them (unit rows for
    cosine) and the per-row ``base`` of :mod:`jaxkmeans.metrics` (``||x||^2``; 1 for
    cosine)."""
    nb = sp.num_blocks * sp.block
    sq = jax.ops.segment_sum(sp.vals * sp.vals, sp.rows, num_segments=nb, indices_are_sorted=True)
    if metric == COSINE_DISTANCE:
        inv = jnp.where(sq > 0, lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
        return sp.vals * inv[sp.rows], jnp.ones((sp.n,), sp.dtype)
    return sp.vals, sq[: sp.n]


def _mix(h: jax.Array) -> jax.Array:
    """A 32-bit avalanche finalizer (murmur3's)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _entry_hashes(cols: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two 32-bit hashes of each entry (column, value bits); 0 where the value is 0."""
    v = v + jnp.zeros((), v.dtype)  # -0.0 -> 0.0
    if v.dtype == jnp.float64:
        bits = lax.bitcast_convert_type(v, jnp.uint32)  # (..., 2)
        bits = bits[..., 0] ^ _mix(bits[..., 1] + jnp.uint32(0x9E3779B9))
    else:
        bits = lax.bitcast_convert_type(v.astype(jnp.float32), jnp.uint32)
    col = cols.astype(jnp.uint32)
    live = v != 0
    h1 = _mix(_mix(col * jnp.uint32(0x9E3779B1) + jnp.uint32(1)) ^ bits)
    h2 = _mix(_mix(col ^ jnp.uint32(0x7F4A7C15)) + bits * jnp.uint32(0x27D4EB2F))
    zero = jnp.zeros((), jnp.uint32)
    return jnp.where(live, h1, zero), jnp.where(live, h2, zero)


def identity(sp: SparseRows, metric: str) -> jax.Array:
    """(n, 2) uint32: a hash of each row's nonzero entries (column and value bits;
    cosine: of its direction, the row divided by its largest absolute entry). Equal
    rows get equal identities, and a dense row gets the same identity from
    :func:`dense_identity` (squared Euclidean)."""
    nb = sp.num_blocks * sp.block
    v = sp.vals
    if metric == COSINE_DISTANCE:
        big = jax.ops.segment_max(jnp.abs(v), sp.rows, num_segments=nb, indices_are_sorted=True)
        v = v / jnp.where(big > 0, big, 1.0)[sp.rows]
    h1, h2 = _entry_hashes(sp.cols, v)
    s1 = jax.ops.segment_sum(h1, sp.rows, num_segments=nb, indices_are_sorted=True)
    s2 = jax.ops.segment_sum(h2, sp.rows, num_segments=nb, indices_are_sorted=True)
    return jnp.stack([s1[: sp.n], s2[: sp.n]], axis=1)


def dense_identity(x: jax.Array) -> jax.Array:
    """(n, 2) uint32: :func:`identity` of dense rows `x` (n, d): the same hash of the
    nonzero entries (zero columns add nothing)."""
    cols = jnp.arange(x.shape[1], dtype=jnp.uint32)[None, :]
    h1, h2 = _entry_hashes(cols, x)
    u32 = jnp.uint32
    return jnp.stack([jnp.sum(h1, axis=1, dtype=u32), jnp.sum(h2, axis=1, dtype=u32)], axis=1)


def take_rows(sp: SparseRows, idx: jax.Array, vals: jax.Array | None = None) -> jax.Array:
    """Rows `idx` (t,) of the matrix, dense (t, d) (values `vals`, default the stored
    ones): only these rows are ever densified."""
    vals = sp.vals if vals is None else vals
    t = idx.shape[0]
    length = sp.row_nnz
    total = sp.vals.shape[0]
    if t * length <= total:
        # Each row's entries by its pointers (at most row_nnz of them).
        start = sp.indptr[idx]
        end = sp.indptr[idx + 1]
        pos = start[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
        ok = pos < end[:, None]
        pos = jnp.where(ok, pos, 0)
        v = jnp.where(ok, vals[pos], 0.0)
        c = sp.cols[pos]
        out = jnp.zeros((t, sp.d), vals.dtype)
        return out.at[jnp.arange(t)[:, None], c].add(v)
    # Many rows: one pass over all entries.
    slot = (
        jnp.full((sp.num_blocks * sp.block,), t, jnp.int32)
        .at[idx]
        .set(jnp.arange(t, dtype=jnp.int32))
    )
    dense = jnp.zeros((t + 1, sp.d), vals.dtype).at[slot[sp.rows], sp.cols].add(vals)
    return dense[slot[idx]]


# ------------------------------------------------------------------- XLA kernels


def _block_entries(sp: SparseRows, vals: jax.Array, b: jax.Array):
    """(local rows, cols, values) of block b's entries (padded with value 0)."""
    r0 = b * sp.block
    e0 = sp.indptr[r0]
    e1 = sp.indptr[r0 + sp.block]
    m = sp.block_nnz
    ok = jnp.arange(m, dtype=jnp.int32) < e1 - e0
    rows = jnp.where(ok, lax.dynamic_slice_in_dim(sp.rows, e0, m) - r0, sp.block - 1)
    cols = jnp.where(ok, lax.dynamic_slice_in_dim(sp.cols, e0, m), 0)
    v = jnp.where(ok, lax.dynamic_slice_in_dim(vals, e0, m), 0.0)
    return rows, cols, v


def _center_chunk(sp: SparseRows, k: int) -> int:
    return int(max(1, min(k, _BLOCK_ELEMENTS // max(sp.block_nnz, sp.block))))


def _block_product(sp, rows, cols, v, cpt):
    """(block, t) products of one block's rows with the columns of `cpt` (d, t)."""
    g = v[:, None] * cpt[cols]
    return jax.ops.segment_sum(g, rows, num_segments=sp.block, indices_are_sorted=True)


def matmul(sp: SparseRows, c: jax.Array, vals: jax.Array | None = None) -> jax.Array:
    """(n, t) ``x @ c.T`` for dense `c` (t, d), computed per block of rows (no
    densified rows; each block gathers its entries' columns of `c`)."""
    vals = sp.vals if vals is None else vals
    ct = c.T.astype(vals.dtype)

    def one(b):
        rows, cols, v = _block_entries(sp, vals, b)
        return _block_product(sp, rows, cols, v, ct)

    out = lax.map(one, jnp.arange(sp.num_blocks, dtype=jnp.int32))
    return out.reshape(-1, c.shape[0])[: sp.n]


def _block_nearest(sp, rows, cols, v, base, cpt, bias, kc):
    """(labels, dist) of one block: running min / first index of the scores ``<x, cp> +
    bias`` over chunks of kc centers; the row's base is added to the minimum only (added
    first, it would round away differences between centers: rows orthogonal to every
    center, common in sparse data, are decided by ``bias`` alone)."""
    k = bias.shape[0]
    best = jnp.full((sp.block,), jnp.inf, v.dtype)
    lab = jnp.zeros((sp.block,), jnp.int32)
    for j0 in range(0, k, kc):
        j1 = min(k, j0 + kc)
        s = _block_product(sp, rows, cols, v, cpt[:, j0:j1]) + bias[None, j0:j1]
        m = jnp.min(s, axis=1)
        a = jnp.argmin(s, axis=1).astype(jnp.int32) + j0
        better = m < best
        lab = jnp.where(better, a, lab)
        best = jnp.where(better, m, best)
    return lab, jnp.maximum(base + best, 0.0)


def _blocked(sp: SparseRows, a: jax.Array) -> jax.Array:
    """Per-row `a` (n,) padded to whole blocks, (num_blocks, block)."""
    pad = sp.num_blocks * sp.block - sp.n
    return jnp.pad(a, (0, pad)).reshape(sp.num_blocks, sp.block)


def _xla_nearest(spec: Any, sp: SparseRows, frame: Any) -> tuple[jax.Array, jax.Array]:
    _, cp, bias = frame
    vals, base = prepared_values(sp, spec.metric)
    cpt = cp.T
    kc = _center_chunk(sp, cp.shape[0])
    bases = _blocked(sp, base)

    def one(b):
        rows, cols, v = _block_entries(sp, vals, b)
        return _block_nearest(sp, rows, cols, v, bases[b], cpt, bias, kc)

    labels, dist = lax.map(one, jnp.arange(sp.num_blocks, dtype=jnp.int32))
    return labels.reshape(-1)[: sp.n], dist.reshape(-1)[: sp.n]


def _xla_statistics(spec: Any, sp: SparseRows, w: jax.Array | None, frame: Any):
    _, cp, bias = frame
    k, d = cp.shape
    vals, base = prepared_values(sp, spec.metric)
    cpt = cp.T
    kc = _center_chunk(sp, k)
    bases = _blocked(sp, base)
    ws = _blocked(sp, jnp.ones((sp.n,), vals.dtype) if w is None else w.astype(vals.dtype))

    def one(carry, b):
        sums, counts, loss = carry
        rows, cols, v = _block_entries(sp, vals, b)
        lab, dist = _block_nearest(sp, rows, cols, v, bases[b], cpt, bias, kc)
        wb = ws[b]
        sums = sums.at[lab[rows], cols].add(v * wb[rows])
        counts = counts + jax.ops.segment_sum(wb, lab, num_segments=k)
        loss = loss + jnp.sum(wb * dist)
        return (sums, counts, loss), (lab, dist)

    init = (jnp.zeros((k, d), vals.dtype), jnp.zeros((k,), vals.dtype), jnp.zeros((), vals.dtype))
    (sums, counts, loss), (labels, dist) = lax.scan(
        one, init, jnp.arange(sp.num_blocks, dtype=jnp.int32)
    )
    return sums, counts, loss, labels.reshape(-1)[: sp.n], dist.reshape(-1)[: sp.n]


# ---------------------------------------------------------------- native kernel


def _native_usable(spec: Any, sp: SparseRows) -> bool:
    return (
        spec.kernel == "native"
        and sp.dtype == jnp.float32
        and native.sparse_available()
        and spec.precision in ("float32", "tf32")
    )


def _native_values(spec: Any, sp: SparseRows) -> tuple[jax.Array, jax.Array]:
    """Values and base for the native kernel: squared Euclidean passes an empty base
    (the kernel sums each row's squares as it reads the row)."""
    if spec.metric == COSINE_DISTANCE:
        return prepared_values(sp, spec.metric)
    return sp.vals, jnp.zeros((0,), sp.dtype)


def _native_statistics(spec: Any, sp: SparseRows, w: jax.Array | None, frame: Any):
    _, cp, bias = frame
    vals, base = _native_values(spec, sp)
    wv = jnp.ones((sp.n,), jnp.float32) if w is None else w.astype(jnp.float32)
    labels, dist, sums, counts, loss = native.sparse_statistics(
        sp.indptr[: sp.n + 1], sp.cols, vals, base, wv, cp, bias
    )
    return sums, counts, loss, labels, dist


def _native_nearest(spec: Any, sp: SparseRows, frame: Any):
    _, cp, bias = frame
    vals, base = _native_values(spec, sp)
    return native.sparse_nearest(sp.indptr[: sp.n + 1], sp.cols, vals, base, cp, bias)


# --------------------------------------------------------------------- dispatch


def nearest(spec: Any, sp: SparseRows, frame: Any) -> tuple[jax.Array, jax.Array]:
    """``(labels (n,) int32, min_dist (n,))`` of sparse rows (frame origin 0)."""
    xla = functools.partial(_xla_nearest, spec)
    if not _native_usable(spec, sp):
        return xla(sp, frame)
    native_nearest = functools.partial(_native_nearest, spec)
    return by_platform(getattr(spec, "platform", None), sp, frame, cpu=native_nearest, default=xla)


def statistics(spec: Any, sp: SparseRows, w: jax.Array | None, frame: Any):
    """``(sums (k, d), counts (k,), loss (), labels (n,), min_dist (n,))`` of sparse
    rows: sums of the prepared rows (unit rows for cosine) by nearest center."""
    xla = functools.partial(_xla_statistics, spec)
    if not _native_usable(spec, sp):
        return xla(sp, w, frame)
    native_statistics = functools.partial(_native_statistics, spec)
    return by_platform(
        getattr(spec, "platform", None), sp, w, frame, cpu=native_statistics, default=xla
    )
