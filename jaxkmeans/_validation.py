"""Host-side argument checks shared by the public functions.

Every check runs in Python before anything is compiled. Checks on *values* (NaN, the
number of distinct points) need concrete arrays; under a user's ``jax.jit`` the arrays
are tracers and only the shape/dtype checks apply.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SQUARED_EUCLIDEAN_DISTANCE = "squared_euclidean"
COSINE_DISTANCE = "cosine"
METRICS = (SQUARED_EUCLIDEAN_DISTANCE, COSINE_DISTANCE)

PRECISIONS = ("float32", "tf32", "bfloat16")


def is_traced(*xs: Any) -> bool:
    """True when any argument is a tracer (we are inside a user's jit/vmap)."""
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def check_metric(metric: Any, name: str = "metric") -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"`{name}` must be one of {list(METRICS)}; got {metric!r}.")
    return metric


def check_precision(precision: Any) -> str:
    if precision is None:
        return "float32"
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}; got {precision!r}.")
    return precision


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value}.")
    return value


def check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    return check_positive_int(chunk_size, "chunk_size")


def _float_dtype(dtype: Any, name: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        # float64 without jax_enable_x64 becomes float32 (no truncation warning).
        return np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    if jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
        return np.dtype(jnp.zeros((), dtype=float).dtype)  # default float (x64 aware)
    raise TypeError(f"`{name}` must be a real numeric array; got dtype {dtype}.")


def as_data(x: Any, name: str = "x", *, check_values: bool = True) -> jax.Array:
    """Converts `x` to a floating 2-D array, checking rank, size, dtype and finiteness."""
    if x is None:
        raise TypeError(f"`{name}` must be a 2-D array of shape (n_samples, n_features); got None.")
    if isinstance(x, str | bytes | dict):
        raise TypeError(
            f"`{name}` must be a 2-D array of shape (n_samples, n_features); "
            f"got {type(x).__name__}."
        )
    if not hasattr(x, "dtype"):
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
    dtype = _float_dtype(x.dtype, name)
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
        finite = is_traced(x) or not check_values or bool(jnp.isfinite(x).all())
    else:  # host data: check on the host (no device round trip, nothing to compile)
        xh = np.asarray(x, dtype=dtype)
        finite = not check_values or bool(np.isfinite(xh).all())
        x = jnp.asarray(xh)
    if not finite:
        raise ValueError(f"`{name}` must contain only finite values; it has NaN or inf.")
    return x


def as_centers(centers: Any, n_features: int, dtype: Any, name: str = "centers") -> jax.Array:
    c = as_data(centers, name)
    if c.shape[1] != n_features:
        raise ValueError(
            f"`{name}` must have {n_features} columns to match the data; "
            f"got shape {tuple(c.shape)}."
        )
    return c.astype(dtype)


def as_weights(sample_weight: Any, n: int, dtype: Any) -> jax.Array | None:
    if sample_weight is None:
        return None
    traced = is_traced(sample_weight)
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
    return jnp.asarray(wh)


def _row_keys(x: np.ndarray) -> np.ndarray:
    """A void view of each row's bytes (with -0.0 turned into 0.0)."""
    x = np.ascontiguousarray(x + np.zeros((), dtype=x.dtype))
    return x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()


def count_distinct_at_least(x: np.ndarray, k: int) -> int:
    """Number of distinct rows of `x`, exact when it is below `k` (else any value >= k)."""
    n = x.shape[0]
    head = min(n, 4 * k + 64)
    distinct = len(np.unique(_row_keys(x[:head])))
    if distinct >= k or head == n:
        return distinct
    return len(np.unique(_row_keys(x)))


def check_enough_distinct(
    x: jax.Array, k: int, metric: str, sample_weight: jax.Array | None = None, name: str = "x"
) -> None:
    """ValueError when `x` (rows with positive weight) has fewer than k distinct points."""
    if is_traced(x, sample_weight):
        return
    n = x.shape[0]
    if n < k:
        raise ValueError(
            f"`num_clusters` must be <= the number of samples in `{name}`; "
            f"got num_clusters={k} with {n} samples."
        )
    xh = np.asarray(x)
    if sample_weight is not None:
        xh = xh[np.asarray(sample_weight) > 0]
    if metric == COSINE_DISTANCE:
        # Same key as the initializers: exact positive multiples are one direction.
        m = np.abs(xh).max(axis=1, keepdims=True)
        keep = m[:, 0] > 0
        xh = (xh[keep] / m[keep]).astype(xh.dtype)
    distinct = count_distinct_at_least(xh, k)
    if distinct < k:
        what = "distinct non-zero directions" if metric == COSINE_DISTANCE else "distinct points"
        raise ValueError(
            f"`{name}` must have at least num_clusters={k} {what} (with positive weight); "
            f"got {distinct}."
        )
