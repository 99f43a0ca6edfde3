"""Turns what users pass as input into host numpy batches.

Accepted (directly or returned by a callable ``input_fn``):

* an array ``(n, d)`` (numpy, JAX, or anything ``np.asarray`` reads as 2-D numbers);
* a dict of feature name -> array ``(n,)`` or ``(n, d_i)``; columns are concatenated in
  sorted key order, or in the order of ``feature_columns`` (which also selects);
* a pair ``(features, None)`` (TensorFlow's ``(features, labels)`` with no labels);
* an iterable of any of those (one batch each, one pass).

A callable is called again for every further pass; an iterator passed directly gives one
pass only. As in TensorFlow, a callable may take the arguments ``params``, ``mode`` and
``config`` (by those names): the estimator passes its ``params``, the mode (``"train"``,
``"eval"`` or ``"infer"``) and its ``RunConfig``.
"""

from __future__ import annotations

import collections.abc
import inspect
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["InputReader", "feature_layout", "feature_names", "to_matrix"]

# Elements per block of the finiteness check (a bounded temporary, however big the batch).
_CHECK_BLOCK = 1 << 20

ACCEPTED = (
    "an array (n, d), a dict of feature name -> array (n,) or (n, d_i), a pair "
    "(features, None), an iterable of those, or a callable returning one of them"
)


def feature_names(feature_columns: Any) -> list[str] | None:
    """Names from ``feature_columns``: strings, or objects with a ``key``/``name``
    attribute (TensorFlow feature columns)."""
    if feature_columns is None:
        return None
    if isinstance(feature_columns, str) or not isinstance(feature_columns, Iterable):
        raise TypeError(
            "`feature_columns` must be a list of feature names; "
            f"got {type(feature_columns).__name__}."
        )
    names = []
    for col in feature_columns:
        name = col if isinstance(col, str) else getattr(col, "key", getattr(col, "name", None))
        if not isinstance(name, str):
            raise TypeError(f"`feature_columns` entries must be feature names (str); got {col!r}.")
        names.append(name)
    if not names:
        raise ValueError("`feature_columns` must name at least one feature; got an empty list.")
    if len(set(names)) != len(names):
        raise ValueError(f"`feature_columns` must not repeat names; got {names}.")
    return names


def _unpair(obj: Any) -> Any:
    if isinstance(obj, tuple) and len(obj) == 2 and not _is_array_like(obj) and obj[1] is None:
        return obj[0]
    return obj


def feature_layout(obj: Any, names: Sequence[str] | None = None) -> list[list[Any]] | None:
    """``[[name, width], ...]`` of the columns of one dict batch (in column order), or
    None when the batch is not a dict. Call it on a batch that ``to_matrix`` accepted."""
    obj = _unpair(obj)
    if not isinstance(obj, collections.abc.Mapping):
        return None
    keys = list(names) if names is not None else sorted(obj, key=str)
    return [[str(key), int(np.prod(np.shape(obj[key])[1:], dtype=int))] for key in keys]


def _passable_args(fn: Any, available: collections.abc.Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `available` that `fn` takes by name (TF's input_fn(params, ...))."""
    if not available:
        return {}
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return {}
    return {name: value for name, value in available.items() if name in parameters}


def _is_array_like(obj: Any) -> bool:
    return hasattr(obj, "__array__") or hasattr(obj, "__jax_array__")


def _as_2d(value: Any, what: str) -> np.ndarray:
    if isinstance(value, str | bytes):
        raise TypeError(f"{what} must be numeric; got a string {value!r:.40}.")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what} must be a numeric array; could not convert it ({e}).") from None
    if arr.dtype == object:
        raise ValueError(
            f"{what} must be a numeric array with equal-length rows; got ragged or mixed data."
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be numeric; got dtype {arr.dtype}.")
    if arr.ndim == 1:
        raise ValueError(
            f"{what} must be 2-D (n_samples, n_features); got shape {arr.shape} "
            "(use x.reshape(-1, 1) for one feature)."
        )
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_samples, n_features); got shape {arr.shape}.")
    return arr


def _dict_to_matrix(features: collections.abc.Mapping, names: Sequence[str] | None) -> np.ndarray:
    if not features:
        raise ValueError("the features dict is empty; it needs at least one feature.")
    keys = list(names) if names is not None else sorted(features, key=str)
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(
            f"features {missing} named in `feature_columns` are missing from the input; "
            f"it has {sorted(map(str, features))}."
        )
    cols = []
    n = None
    for key in keys:
        value = features[key]
        if isinstance(value, str | bytes):
            raise TypeError(f"feature {key!r} must be numeric; got a string.")
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"feature {key!r} must be a numeric array; got dtype {arr.dtype}.")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"feature {key!r} must have shape (n,) or (n, d); got {arr.shape}.")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(
                f"all features must have the same number of rows; feature {key!r} has "
                f"{arr.shape[0]}, the first has {n}."
            )
        cols.append(arr)
    return np.concatenate(cols, axis=1)


def to_matrix(obj: Any, names: Sequence[str] | None = None) -> np.ndarray:
    """One batch (array, dict or ``(features, None)``) as a numeric 2-D numpy array."""
    if obj is None:
        raise TypeError(f"input must be {ACCEPTED}; got None.")
    if isinstance(obj, tuple) and len(obj) == 2 and not _is_array_like(obj):
        features, labels = obj
        if labels is not None:
            raise ValueError(
                "input pairs must be (features, None): k-means does not use labels; "
                f"got labels of type {type(labels).__name__}."
            )
        obj = features
    if isinstance(obj, collections.abc.Mapping):
        return _dict_to_matrix(obj, names)
    if names is not None:
        raise ValueError("`feature_columns` selects features by name, so the input must be a dict.")
    if isinstance(obj, str | bytes):
        raise TypeError(f"input must be {ACCEPTED}; got a string.")
    return _as_2d(obj, "input features")


def _looks_like_labels(obj: Any) -> bool:
    """True for what can only be the labels of a ``(features, labels)`` pair: a scalar or
    a 1-D sequence of numbers, never a valid batch itself."""
    if isinstance(obj, collections.abc.Mapping | str | bytes):
        return False
    if _is_array_like(obj) or isinstance(obj, int | float | np.generic):
        return np.ndim(obj) < 2
    if isinstance(obj, list | tuple):
        return all(isinstance(e, int | float | np.generic) for e in obj)
    return False


def _looks_like_labeled_pair(pair: tuple) -> bool:
    """True for ``(features, labels)``: a dict or 2-D features and 1-D (or scalar) labels."""
    features, labels = pair
    if not _looks_like_labels(labels):
        return False
    if isinstance(features, collections.abc.Mapping):
        return True
    try:
        return np.ndim(features) == 2
    except (TypeError, ValueError):  # ragged nested lists
        return False


def _is_batch(obj: Any) -> bool:
    """True for one batch (array, dict or pair), False for an iterable of batches."""
    if isinstance(obj, collections.abc.Mapping) or _is_array_like(obj):
        return True
    if isinstance(obj, tuple) and len(obj) == 2 and obj[1] is None:
        return True
    if isinstance(obj, tuple) and len(obj) == 2 and _looks_like_labeled_pair(obj):
        # (features, labels): one pair, which to_matrix rejects with a message about labels.
        return True
    if isinstance(obj, list | tuple):
        # A list of numbers / lists of numbers is one 2-D array; a list of arrays,
        # dicts or pairs is a sequence of batches.
        return not any(
            isinstance(e, collections.abc.Mapping | tuple)
            or (_is_array_like(e) and np.ndim(e) == 2)
            for e in obj
        )
    return False


_WARNED_FLOAT64 = False


def _warn_float64_once() -> None:
    """KMeans (its state and checkpoints are float32) computes in float32: say so once
    per process when float64 input is converted."""
    global _WARNED_FLOAT64
    _WARNED_FLOAT64 = True
    warnings.warn(
        "jaxkmeans.KMeans computes in float32 (its state and checkpoints are float32): "
        "float64 input is converted. (This warning is shown once per process.)",
        UserWarning,
        stacklevel=4,
    )


def resident(obj: Any) -> bool:
    """True for a numpy array held in memory (not a memmap)."""
    return isinstance(obj, np.ndarray) and not isinstance(obj, np.memmap)


class InputReader:
    """Reads batches from an input, pass after pass.

    Args:
      input_fn: the input or a callable returning it.
      feature_columns: optional feature names (dict inputs).
      dims: expected number of columns (None: taken from the first batch).
      fn_args: arguments a callable `input_fn` may take by name (``params``, ``mode``,
        ``config``): only those its signature names are passed.

    Attributes:
      features: ``[[name, width], ...]`` of the first dict batch read (None until one
        is read, and for array inputs).
    """

    def __init__(
        self,
        input_fn: Any,
        feature_columns: Any = None,
        dims: int | None = None,
        fn_args: collections.abc.Mapping[str, Any] | None = None,
    ):
        if input_fn is None or isinstance(input_fn, str | bytes):
            raise TypeError(f"`input_fn` must be {ACCEPTED}; got {input_fn!r:.60}.")
        self._source = input_fn
        self._names = feature_names(feature_columns)
        self.dims = dims
        self._one_shot_used = False
        self._fn_args = dict(fn_args or {})
        self.features: list[list[Any]] | None = None
        self.passes = 0
        # An iterator passed directly (not returned by a callable): one pass only, and
        # a later reader of the same iterator continues where this one stopped.
        self.one_shot = isinstance(input_fn, collections.abc.Iterator)
        # The input holds all its batches in memory (an array, or a list or tuple of
        # them): every pass yields the same batch objects, so what was made of a batch
        # in one pass (its finiteness check, its placement on the device) holds for the
        # next (see :meth:`seen_before`).
        # A numpy.memmap is not in memory: its pages are read on use, and keeping what
        # is made of it would hold the whole file (data larger than memory streams).
        self.in_memory = resident(input_fn) or (
            isinstance(input_fn, list | tuple) and all(resident(item) for item in input_fn)
        )
        # position in the pass -> (a weak reference to) the input's own batch object
        # checked there, when it is held in memory (not a memmap) and the batch is that
        # object (no converted copy): an input that yields the same object again at the
        # same position, such as ``lambda: x``, is not checked again while it lives.
        self._checked: dict[int, weakref.ref] = {}

    def _obtain(self) -> Any:
        src = self._source
        if callable(src) and not _is_array_like(src) and not isinstance(src, Iterable):
            kwargs = _passable_args(src, self._fn_args)
            try:
                return src(**kwargs)
            except TypeError as e:
                if "argument" in str(e):
                    raise TypeError(
                        "`input_fn` must be callable with no arguments or with some of "
                        f"{sorted(self._fn_args) or ['params']} by name; calling it with "
                        f"{sorted(kwargs)} failed: {e}"
                    ) from None
                raise
        return src

    def seen_before(self, position: int, batch: np.ndarray) -> bool:
        """True when `batch` is the very object (held in memory) this input yielded at
        `position` of an earlier pass, and was checked then."""
        ref = self._checked.get(position)
        return ref is not None and ref() is batch

    def _check(self, batch: np.ndarray, position: int, item: Any) -> np.ndarray:
        if self.dims is None:
            self.dims = batch.shape[1]
        elif batch.shape[1] != self.dims:
            raise ValueError(
                f"input batches must have {self.dims} features (columns); got a batch of shape "
                f"{batch.shape}."
            )
        if np.asarray(batch).dtype == np.float64 and not _WARNED_FLOAT64:
            _warn_float64_once()
        batch = np.asarray(batch, dtype=np.float32)
        if self.seen_before(position, batch):
            return batch
        # Checked in blocks of rows: no temporary the size of the batch.
        step = max(1, _CHECK_BLOCK // max(1, batch.shape[1]))
        for start in range(0, batch.shape[0], step):
            if not np.isfinite(batch[start : start + step]).all():
                raise ValueError("input features must be finite; a batch has NaN or inf.")
        if batch is item and resident(batch):
            self._checked[position] = weakref.ref(batch)
        return batch

    def batches(self) -> Iterator[np.ndarray]:
        """One pass over the input: float32 (b, d) batches (empty batches skipped)."""
        obj = self._obtain()
        if _is_batch(obj):
            items: Iterable[Any] = [obj]
        elif isinstance(obj, Iterable):
            if iter(obj) is obj:  # a one-shot iterator
                if self._one_shot_used and obj is self._source:
                    raise ValueError(
                        "the input is a one-shot iterator and allows one pass only; pass a "
                        "callable that returns a fresh iterator to read it again."
                    )
                self._one_shot_used = True
            items = obj
        else:
            raise TypeError(f"`input_fn` must be {ACCEPTED}; got {type(obj).__name__}.")
        self.passes += 1
        batch: np.ndarray | None
        for position, item in enumerate(items):
            batch = self._check(to_matrix(item, self._names), position, item)
            if self.features is None:
                self.features = feature_layout(item, self._names)
            # Hold no batch while the input reads the next one: a consumer that lets
            # go of each batch keeps one alive, not two, whatever the input's size.
            item = None
            if batch.shape[0]:
                yield batch
            batch = None
