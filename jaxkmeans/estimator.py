"""KMeans: TensorFlow's ``tf.compat.v1.estimator.experimental.KMeans`` surface on the
functional core, with Orbax checkpoints in ``model_dir``.

TF's intent is kept (one full-batch step = one Lloyd iteration over a whole pass of the
input; mini-batch steps = one batch each; ``score``/``transform``/``predict`` outputs),
and TF's known bugs are not copied (see the project README).

:class:`KMeans` is a thin front over four parts:

* ``_Settings``: the checked hyperparameters (what defines and trains the model);
* ``_Run``: what training changes (state, loss history, position in the pass), saved in
  every checkpoint and rolled back when a ``train()`` fails;
* :class:`jaxkmeans.checkpoint.CheckpointStore`: the model directory, its newest
  checkpoint read once at construction, and the last saved ``_Run`` snapshot;
* ``_Trainer``: one ``train()`` call (initial state, full-batch and mini-batch passes,
  the tolerance rule and periodic saves); inference is a few module functions.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import json
import math
import os
import pathlib
import secrets
import signal
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkmeans import engine, fitting, initializers, kernels, metrics, sharding
from jaxkmeans import export as export_lib
from jaxkmeans._validation import (
    COSINE_DISTANCE,
    SQUARED_EUCLIDEAN_DISTANCE,
    InPlaceRows,
    auto_bucket_rows,
    bucket_rows,
    check_bool,
    check_int,
    check_mesh,
    check_metric,
    check_non_negative,
    check_positive_int,
    count_distinct,
    in_place_rows,
    pad_host_rows,
    release_host_copies,
    releases_host_copies,
    to_device,
)
from jaxkmeans.assignment import inertia_impl
from jaxkmeans.checkpoint import CheckpointStore, read_checkpoint
from jaxkmeans.checkpoint import latest_checkpoint as _latest_checkpoint_path
from jaxkmeans.initializers import (
    INIT_METHODS,
    KMC2_INIT,
    KMEANS_PARALLEL_INIT,
    KMEANS_PLUS_PLUS_INIT,
    RANDOM_INIT,
)
from jaxkmeans.inputs import InputReader, feature_names, resident
from jaxkmeans.state import KMeansState
from jaxkmeans.updates import MiniBatchOptState

__all__ = [
    "KMeans",
    "RunConfig",
    "NotFittedError",
    "load_variable",
    "list_variables",
    "latest_checkpoint",
    "load_exported",
]

CLUSTER_CENTERS_VAR_NAME = "clusters"
SCORE = "score"
CLUSTER_INDEX = "cluster_index"
ALL_DISTANCES = "all_distances"

# KMeansState field -> checkpoint variable name.
VARIABLES = {
    "centers": CLUSTER_CENTERS_VAR_NAME,
    "counts": "cluster_counts",
    "step": "global_step",
    "loss": "loss",
    "key": "rng_key",
    "working": "working_clusters",
    "prev_loss": "prev_loss",
    "smoothed_loss": "smoothed_loss",
    "origin": "origin",
}
# Steps of loss history kept (in memory and in every checkpoint's config): bounded, so
# that saves do not grow with the length of the run.
_HISTORY_KEPT = 1000
_clock = time.monotonic  # seconds, for save_checkpoints_secs (replaceable in tests)
_FORMAT = "jaxkmeans-estimator"
_EMPTY_INPUT = "the input is empty: a pass over it gave no rows."


class NotFittedError(ValueError, AttributeError):
    """Raised when predicting, scoring or reading variables before any training.

    A subclass of both ``ValueError`` and ``AttributeError`` (as scikit-learn's).

    Examples:
      >>> import tempfile, numpy as np, jaxkmeans
      >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp())
      >>> try:
      ...     km.cluster_centers()
      ... except jaxkmeans.NotFittedError as e:
      ...     print(type(e).__name__, isinstance(e, ValueError))
      NotFittedError True
    """


class _DefaultSecs(int):
    """TF's default ``save_checkpoints_secs=600``, told apart from an explicit 600 (a
    given ``save_checkpoints_steps`` turns the default off, an explicit value is an
    error)."""

    def __repr__(self) -> str:
        return "600"


_DEFAULT_SECS = _DefaultSecs(600)

# TF RunConfig arguments with no meaning here: accepted with a warning.
IGNORED_RUN_CONFIG_ARGS = (
    "save_summary_steps",
    "log_step_count_steps",
    "session_config",
    "keep_checkpoint_every_n_hours",
    "train_distribute",
    "device_fn",
    "protocol",
    "eval_distribute",
    "experimental_distribute",
    "experimental_max_worker_delay_secs",
    "session_creation_timeout_secs",
    "checkpoint_save_graph_def",
)


class RunConfig:
    """Run-time settings of :class:`KMeans` (not part of the model), with TF's names.

    Args:
      model_dir: the model directory, used when ``KMeans(model_dir=None)`` (both given
        and different: ValueError, as in TF).
      save_checkpoints_steps: also save every this many steps during ``train()``.
      save_checkpoints_secs: also save once this many seconds have passed since the
        last save (checked after every step). Default 600, as TF's, unless
        ``save_checkpoints_steps`` is given; giving both is a ValueError. A checkpoint
        is always written when ``train()`` ends (and when it is interrupted).
      keep_checkpoint_max: how many checkpoints to keep (None: all).
      tf_random_seed: the seed used when ``KMeans(seed=None)``.
      chunk_size: rows per chunk for distance computations (None: automatic).
      mesh: a ``jax.sharding.Mesh`` to shard batches over (data parallel).
      **tf_kwargs: TF's arguments with no meaning here (``save_summary_steps``,
        ``log_step_count_steps``, ``session_config``, ``keep_checkpoint_every_n_hours``,
        ``train_distribute``, ``device_fn``, ``protocol``, ``eval_distribute``,
        ``experimental_distribute``, ``experimental_max_worker_delay_secs``,
        ``session_creation_timeout_secs``, ``checkpoint_save_graph_def``) are accepted
        with a warning naming them; any other name is a TypeError.

    Examples:
      >>> import jaxkmeans
      >>> config = jaxkmeans.RunConfig(save_checkpoints_steps=10, keep_checkpoint_max=2)
      >>> config.save_checkpoints_steps, config.save_checkpoints_secs  # 600 s default off
      (10, None)
      >>> jaxkmeans.RunConfig().save_checkpoints_secs
      600
      >>> km = jaxkmeans.KMeans(3, config=config)
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        save_checkpoints_steps: int | None = None,
        save_checkpoints_secs: float | None = _DEFAULT_SECS,
        keep_checkpoint_max: int | None = 5,
        tf_random_seed: int | None = None,
        chunk_size: int | None = None,
        mesh: Any = None,
        **tf_kwargs: Any,
    ):
        unknown = sorted(set(tf_kwargs) - set(IGNORED_RUN_CONFIG_ARGS))
        if unknown:
            raise TypeError(
                f"RunConfig() got an unexpected argument {unknown[0]!r}; it takes model_dir, "
                "save_checkpoints_steps, save_checkpoints_secs, keep_checkpoint_max, "
                "tf_random_seed, chunk_size, mesh, and TF's "
                f"{', '.join(IGNORED_RUN_CONFIG_ARGS)} (ignored with a warning)."
            )
        if tf_kwargs:
            warnings.warn(
                f"RunConfig: {', '.join(sorted(tf_kwargs))} ha"
                f"{'s' if len(tf_kwargs) == 1 else 've'} no meaning in jaxkmeans and "
                f"{'is' if len(tf_kwargs) == 1 else 'are'} ignored.",
                UserWarning,
                stacklevel=2,
            )
        if model_dir is not None and not isinstance(model_dir, str | os.PathLike):
            raise TypeError(
                "`model_dir` must be None, a str or an os.PathLike; got "
                f"{type(model_dir).__name__}."
            )
        # A ValueError for any bad value (bools and non-ints included), as TF's RunConfig.
        for name, value in (
            ("save_checkpoints_steps", save_checkpoints_steps),
            ("keep_checkpoint_max", keep_checkpoint_max),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{name}` must be None or an int >= 1; got {value!r}.")
        if save_checkpoints_secs is _DEFAULT_SECS:
            save_checkpoints_secs = None if save_checkpoints_steps is not None else 600
        elif save_checkpoints_secs is not None:
            if (
                isinstance(save_checkpoints_secs, bool)
                or not isinstance(save_checkpoints_secs, int | float)
                or not save_checkpoints_secs > 0
                or not math.isfinite(save_checkpoints_secs)
            ):
                raise ValueError(
                    "`save_checkpoints_secs` must be None or a number of seconds > 0; got "
                    f"{save_checkpoints_secs!r}."
                )
            if save_checkpoints_steps is not None:
                raise ValueError(
                    "give `save_checkpoints_steps` or `save_checkpoints_secs`, not both; got "
                    f"save_checkpoints_steps={save_checkpoints_steps}, "
                    f"save_checkpoints_secs={save_checkpoints_secs}."
                )
        if tf_random_seed is not None:
            tf_random_seed = check_positive_int(tf_random_seed, "tf_random_seed", minimum=0)
        self.model_dir = None if model_dir is None else os.fspath(model_dir)
        self.save_checkpoints_steps = save_checkpoints_steps
        self.save_checkpoints_secs = save_checkpoints_secs
        self.keep_checkpoint_max = keep_checkpoint_max
        self.tf_random_seed = tf_random_seed
        self.chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
        self.mesh = check_mesh(mesh)
        self.ignored = dict(tf_kwargs)

    _FIELDS = (
        "model_dir",
        "save_checkpoints_steps",
        "save_checkpoints_secs",
        "keep_checkpoint_max",
        "tf_random_seed",
        "chunk_size",
        "mesh",
    )

    def replace(self, **kwargs: Any) -> RunConfig:
        """A copy with some arguments changed (as TF's ``RunConfig.replace``).

        Examples:
          >>> import jaxkmeans
          >>> config = jaxkmeans.RunConfig(keep_checkpoint_max=3)
          >>> steps = config.replace(save_checkpoints_steps=100)
          >>> steps.save_checkpoints_steps, steps.save_checkpoints_secs, steps.keep_checkpoint_max
          (100, None, 3)
        """
        values = {name: getattr(self, name) for name in self._FIELDS}
        if "save_checkpoints_steps" in kwargs and "save_checkpoints_secs" not in kwargs:
            values["save_checkpoints_secs"] = _DEFAULT_SECS
        if "save_checkpoints_secs" in kwargs and "save_checkpoints_steps" not in kwargs:
            values["save_checkpoints_steps"] = None
        values.update(kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already warned about when first given
            return RunConfig(**values, **{k: v for k, v in self.ignored.items() if k not in values})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunConfig):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]  # unhashable: mutable, like a dataclass

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS)
        return f"RunConfig({args})"


# ---------------------------------------------------------------------- state <-> disk


def _state_to_dict(state: KMeansState) -> dict[str, np.ndarray]:
    return {VARIABLES[f]: np.asarray(getattr(state, f)) for f in VARIABLES}


def _state_from_dict(values: dict[str, Any]) -> KMeansState:
    fields = {f: jnp.asarray(values[v]) for f, v in VARIABLES.items()}
    counts = fields.pop("counts")
    return KMeansState(**fields, opt_state=MiniBatchOptState(counts))


def _state_template(k: int, d: int) -> dict[str, np.ndarray]:
    f32 = np.float32
    return {
        "clusters": np.zeros((k, d), f32),
        "cluster_counts": np.zeros((k,), f32),
        "global_step": np.zeros((), np.int32),
        "loss": np.zeros((), f32),
        "rng_key": np.zeros((2,), np.uint32),
        "working_clusters": np.zeros((k, d), f32),
        "prev_loss": np.zeros((), f32),
        "smoothed_loss": np.zeros((), f32),
        "origin": np.zeros((d,), f32),
    }


def _replicated(tree: Any, mesh: Any) -> Any:
    return tree if mesh is None else sharding.replicate(tree, mesh)


# ---------------------------------------------------------------------- settings


def _check_initial_clusters(init: Any, k: int, metric: str) -> tuple[Any, np.ndarray | None]:
    """``(method name | callable | "array", the (k, d) float32 array or None)``."""
    if isinstance(init, str):
        if init not in INIT_METHODS:
            raise ValueError(
                f"`initial_clusters` must be one of {list(INIT_METHODS)}, a (k, d) array "
                f"or a callable; got {init!r}."
            )
        return init, None
    if callable(init):
        return init, None
    try:
        arr = np.asarray(init)
    except (TypeError, ValueError):
        arr = np.asarray(None)
    if arr.dtype.kind not in "biuf" or arr.ndim != 2:
        raise TypeError(
            "`initial_clusters` must be an init method name, a (k, d) numeric array or a "
            f"callable; got {type(init).__name__}"
            + (f" of shape {arr.shape}" if arr.dtype.kind in "biuf" else "")
            + "."
        )
    if arr.shape[0] != k:
        raise ValueError(
            f"`initial_clusters` has {arr.shape[0]} rows but num_clusters is {k}; they must match."
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("`initial_clusters` must be finite; it has NaN or inf.")
    if count_distinct(arr, metric) < k:
        raise ValueError("`initial_clusters` must have distinct rows; some rows repeat.")
    return "array", arr


@dataclasses.dataclass(frozen=True, eq=False)
class _Settings:
    """The checked hyperparameters of a KMeans (fixed for its life)."""

    num_clusters: int
    metric: str
    init: Any  # an init method name, "array" or a callable
    init_array: np.ndarray | None
    use_mini_batch: bool
    steps_per_iteration: int
    num_retries: int
    relative_tolerance: float | None
    feature_names: list[str] | None
    run_config: RunConfig
    spec: engine.Pass  # the compiled pass, mesh included
    local_spec: engine.Pass  # the same without the mesh: inference is per process

    @property
    def mesh(self) -> Any:
        return self.spec.mesh

    def params(self, seed: int | None) -> dict[str, Any]:
        """The constructor's hyperparameters (``KMeans.params``)."""
        return {
            "num_clusters": self.num_clusters,
            "initial_clusters": self.init_array if self.init_array is not None else self.init,
            "distance_metric": self.metric,
            "seed": seed,
            "use_mini_batch": self.use_mini_batch,
            "mini_batch_steps_per_iteration": self.steps_per_iteration,
            "kmeans_plus_plus_num_retries": self.num_retries,
            "relative_tolerance": self.relative_tolerance,
            "feature_columns": self.feature_names,
        }

    def as_json(self) -> dict[str, Any]:
        """The hyperparameters as saved in every checkpoint's config."""
        return {
            "num_clusters": self.num_clusters,
            "distance_metric": self.metric,
            "initial_clusters": self.init if isinstance(self.init, str) else "callable",
            "use_mini_batch": self.use_mini_batch,
            "mini_batch_steps_per_iteration": self.steps_per_iteration,
            "kmeans_plus_plus_num_retries": self.num_retries,
            "relative_tolerance": self.relative_tolerance,
            "feature_columns": self.feature_names,
        }


@dataclasses.dataclass(eq=False)
class _Run:
    """What training changes: saved in every checkpoint, rolled back on failure."""

    state: KMeansState | None = None
    dims: int | None = None
    history: list[list[Any]] = dataclasses.field(default_factory=list)
    rows_per_pass: int | None = None
    # Mini-batch: batches of the current pass already trained on, so that a later
    # train() (or a run resumed from a checkpoint) continues where this one stopped.
    pass_position: int = 0
    # The dict features trained on: [[name, width], ...] in column order (None: arrays).
    features: list[list[Any]] | None = None

    @property
    def global_step(self) -> int:
        return 0 if self.state is None else int(self.state.step)

    def copy(self) -> _Run:
        """A copy that shares no mutable part (the history) with this one."""
        return dataclasses.replace(self, history=copy.deepcopy(self.history))

    def settled_history(self) -> list[list[Any]]:
        """The kept history with device scalars read back (each only once)."""
        del self.history[:-_HISTORY_KEPT]
        for entry in self.history:
            if not isinstance(entry[1], float):
                entry[0], entry[1] = int(entry[0]), float(entry[1])
        return self.history

    def config_json(self, settings: _Settings, seed: int | None) -> dict[str, Any]:
        """The config saved with a checkpoint of this run."""
        return {
            "format": _FORMAT,
            "version": 1,
            **settings.as_json(),
            "dims": self.dims,
            "seed": seed,
            "rows_per_pass": self.rows_per_pass,
            "pass_position": self.pass_position,
            "features": self.features,
            "loss_history": self.settled_history(),
        }

    @classmethod
    def from_checkpoint(cls, values: dict[str, Any], config: dict[str, Any], mesh: Any) -> _Run:
        return cls(
            state=_replicated(_state_from_dict(values), mesh),
            dims=int(config["dims"]),
            history=[list(h) for h in config.get("loss_history", [])],
            rows_per_pass=config.get("rows_per_pass"),
            pass_position=int(config.get("pass_position", 0)),
            features=config.get("features"),
        )


# ---------------------------------------------------------------------- batches


@functools.cache
def _jitted_predict(metric: str) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
    """One jitted predict function per metric, shared by every KMeans (a new jit per
    instance would recompile for every model created or restored)."""
    return jax.jit(export_lib.predict_fn(metric))


def _pad_batch(batch: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads a float32 batch to `size` rows with zero-weight copies of its first row (one
    compiled shape per size), into a buffer the CPU device uses in place."""
    return pad_host_rows(batch, size)


def _bucket(b: int, standard: int | None) -> int:
    """Rows a batch of `b` is padded to: the pass's first batch size when it fits, else
    its size bucket (:func:`jaxkmeans._validation.bucket_rows`)."""
    if standard is not None and b <= standard:
        return standard
    return bucket_rows(b)


def _synced(batches: Iterator[np.ndarray], mesh: Any, dims: int) -> Iterator[np.ndarray]:
    """The batches, in lock step with the other processes: every process takes part
    in every step (a process out of batches contributes an empty one) until all
    are out."""
    if mesh is None or jax.process_count() == 1:
        yield from batches
        return
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not sharding.any_process(batch is not None):
            return
        yield batch if batch is not None else np.zeros((0, dims), np.float32)
        batch = None  # not held while the next batch is read


def _place(
    batch: np.ndarray, standard: int | None, mesh: Any, dims: int, in_place: bool = False
) -> tuple[Any, Any, int]:
    """Pads a batch to its bucket size with zero-weight rows and puts it on the
    device(s); returns ``(x, w, real rows over all processes)``. With `in_place`, a
    batch that needs no padding may come back as rows read in place (no copy)."""
    b = batch.shape[0]
    if b == 0:
        padded, w = np.zeros((1, dims), np.float32), np.zeros((1,), np.float32)
    else:
        size = _bucket(b, standard)
        rows = in_place_rows(batch) if in_place and mesh is None and size == b else None
        if rows is not None:
            return rows, to_device(np.ones((b,), np.float32)), b
        padded, w = _pad_batch(batch, size)
    if mesh is None:
        return to_device(padded), to_device(w), b
    return sharding.shard_rows(padded, w, mesh, valid=b)


class _Placements:
    """The batches of one train() call as placed on the device(s) (:func:`_place`).

    A batch held in memory (a numpy array, not a memmap) keeps its placement while the
    batch object itself lives: when the next pass yields that very object at the same
    position (an array, a list of arrays, or a callable returning the same ones, such
    as ``lambda: x``) the placement is reused, so a pass costs no copy of the data (the
    placements are the one copy). Batches that die after their step (new objects every
    pass) drop their placement with them (a weak reference's callback), and memmaps
    (data larger than memory) are placed when they come and let go of after their step.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._items: dict[int, tuple[weakref.ref, int | None, tuple[Any, Any, int]]] = {}

    def get(
        self,
        position: int,
        batch: np.ndarray,
        standard: int | None,
        mesh: Any,
        dims: int,
        made: tuple[Any, Any, int] | None = None,
        in_place: bool = False,
    ) -> tuple[Any, Any, int]:
        """`batch`, the `position`-th of its pass, placed (see :func:`_place`; `made`:
        already placed so). Rows read in place are not kept: they cost no copy, and
        they hold the batch itself, which must die with its step."""
        if not self.enabled or not resident(batch):
            return made or _place(batch, standard, mesh, dims, in_place)
        hit = self._items.pop(position, None)
        if hit is not None and hit[0]() is batch and hit[1] == standard:
            placed = hit[2]
        else:
            del hit  # let go of a stale placement before making its replacement
            placed = made or _place(batch, standard, mesh, dims, in_place)
        if isinstance(placed[0], InPlaceRows):
            return placed

        owner = weakref.ref(self)  # the callback holds no strong reference: no cycle

        def forget(ref: weakref.ref) -> None:
            items = getattr(owner(), "_items", {})
            if position in items and items[position][0] is ref:
                del items[position]

        self._items[position] = (weakref.ref(batch, forget), standard, placed)
        return placed

    def hand_over(
        self, position: int, batch: np.ndarray, standard: int, placed: tuple[Any, Any, int]
    ) -> None:
        """Keeps `placed`, a placement of `batch` made as :func:`_place` would make it
        with `standard`, for the next :meth:`get` of `position` (the initializer's
        sample, when it is the first batch as it is)."""
        if self.enabled and resident(batch):
            self._items.pop(position, None)
            self.get(position, batch, standard, None, 0, placed)


def _bounded(pending: list[Any], value: Any, depth: int = 2) -> None:
    """Bounds the work in flight (JAX dispatches asynchronously): at most `depth`
    dispatched computations are unfinished once this returns, so the next batch is
    read while this one computes, but no further ahead."""
    pending.append(value)
    while len(pending) > depth:
        jax.block_until_ready(pending.pop(0))


def _replay(seen: list[np.ndarray], it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The batches in `seen`, then the rest of `it`; each batch of `seen` is let go of
    once it is handed out (so the first pass does not keep them to its end)."""
    while seen:
        yield seen.pop(0)
    yield from it


# ---------------------------------------------------------------------- initial state


def _centers_from_array(
    centers: np.ndarray, it: Iterator, seen: list, reader: InputReader
) -> np.ndarray:
    first = next(it, None)  # one batch read (not used up) for the frame origin
    if first is None:
        raise ValueError("the input is empty: train() needs at least one row.")
    seen.append(first)
    if reader.dims != centers.shape[1]:
        raise ValueError(
            f"`initial_clusters` has {centers.shape[1]} columns but the input has "
            f"{reader.dims} features."
        )
    return centers


def _centers_from_callable(init: Callable, k: int, it: Iterator, seen: list) -> np.ndarray:
    rows: list[np.ndarray] = []
    got = 0
    for batch in it:
        seen.append(batch)
        out = init(batch, k - got)
        out = np.asarray(out if out is not None else np.zeros((0, batch.shape[1])))
        if out.size == 0:
            continue
        if out.ndim != 2 or out.shape[1] != batch.shape[1] or out.shape[0] > k - got:
            raise ValueError(
                f"the `initial_clusters` callable must return at most {k - got} rows of "
                f"{batch.shape[1]} columns; got shape {out.shape}."
            )
        rows.append(out.astype(np.float32))
        got += out.shape[0]
        if got == k:
            break
    if got < k:
        raise ValueError(
            f"the `initial_clusters` callable returned {got} rows over the whole input; "
            f"num_clusters={k} are needed."
        )
    centers = np.concatenate(rows)
    if not np.isfinite(centers).all():
        raise ValueError("the `initial_clusters` callable returned NaN or inf.")
    return centers


def _centers_from_method(
    settings: _Settings,
    it: Iterator,
    seen: list,
    key: jax.Array,
    placed: _Placements | None = None,
):
    """Centers by an init method from the first batches, and the frame origin. When one
    batch was enough and is not padded, its placement is handed to `placed` as the
    first pass's batch 0 (one copy of it, not two)."""
    k, metric = settings.num_clusters, settings.metric
    sample = w = None
    distinct = 0
    for batch in it:
        seen.append(batch)
        sample = np.concatenate(seen) if len(seen) > 1 else batch
        # Padded to its size bucket (one compiled program for nearby sizes) while the
        # padded copy is small (as pad_rows=None in the functional core).
        sample, w = _pad_batch(sample, auto_bucket_rows(*sample.shape))
        if int(np.sum(w)) >= k:
            distinct = count_distinct(sample, metric, w, at_least=k)
            if distinct >= k:
                break
    if sample is None:
        raise ValueError("the input is empty: train() needs at least one row.")
    if distinct < k:
        what = "distinct non-zero directions" if metric == COSINE_DISTANCE else "distinct points"
        raise ValueError(
            f"num_clusters={k} is more than the input's {distinct} {what}; "
            "k-means needs at least num_clusters of them."
        )
    spec = initializers.make_init(settings.init, k, metric, settings.num_retries)
    # One unpadded batch that the passes read in place is read so here too (no copy).
    alone = placed is not None and len(seen) == 1 and seen[0] is sample
    reads = alone and kernels.reads_in_place(settings.spec)
    rows_in_place = in_place_rows(sample) if reads else None
    xs, ws = rows_in_place or to_device(sample), to_device(w)
    rows = sample.shape[0]
    if placed is not None and settings.mesh is None and len(seen) == 1 and seen[0] is sample:
        placed.hand_over(0, seen[0], rows, (xs, ws, rows))
    del sample, w
    # The frame origin from the same placed rows (the padding has weight 0 and the
    # origin's sample follows the size bucket): no second copy of the first batches.
    return initializers.init_program(xs)(key, xs, ws, spec), _sample_origin(xs, ws)


@jax.jit
def _sample_origin(sample: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """The frame origin of the first rows (weights `w`: 0 for padding), in one fused
    pass (run op by op it made temporaries the size of the sample, a peak of memory on
    big first batches)."""
    origin = metrics.frame_origin(sample, SQUARED_EUCLIDEAN_DISTANCE, w, in_blocks=True)
    assert origin is not None  # only the cosine metric has no frame origin
    return origin


def _initial_state(
    settings: _Settings, reader: InputReader, seed: int, placed: _Placements | None = None
) -> tuple[KMeansState, Iterator[np.ndarray]]:
    """The state made from the first batches; returns it and the first pass's batches
    (the ones used for initialization included: they are not used up). `placed`: the
    first pass's placements, which may receive the initializer's (see
    :func:`_centers_from_method`)."""
    it = reader.batches()
    seen: list[np.ndarray] = []
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    centers: np.ndarray | jax.Array
    origin = None
    if settings.init_array is not None:
        centers = _centers_from_array(settings.init_array, it, seen, reader)
    elif callable(settings.init):
        centers = _centers_from_callable(settings.init, settings.num_clusters, it, seen)
    else:
        centers, origin = _centers_from_method(settings, it, seen, init_key, placed)
    centers = jnp.asarray(centers, jnp.float32)
    if settings.metric == COSINE_DISTANCE:
        centers = metrics.normalize_rows(centers)
    mesh = settings.mesh
    if mesh is not None:  # every process starts from process 0's centers
        centers = jnp.asarray(sharding.broadcast_from_first(centers))
    # The frame origin (fixed for the life of the model) comes from the rows seen so
    # far (as fit's from all rows), so distances stay accurate even if a center is
    # far from the data, and exact ties stay exact on integer data.
    if origin is None:
        sample = (seen[0] if len(seen) == 1 else np.concatenate(seen)) if seen else centers
        origin = _sample_origin(to_device(sample))
        del sample
    origin = np.asarray(origin)
    if mesh is not None:
        origin = sharding.broadcast_from_first(origin)
    state = _replicated(KMeansState.create(centers, key=key, origin=origin), mesh)
    # The initializer's placed sample is dropped by now: free it before the first pass
    # places its batches (else both can be alive at once, twice the first batches).
    release_host_copies()
    return state, _replay(seen, it)


# ---------------------------------------------------------------------- training


def _tolerance_reached(tol: float | None, loss: Any, prev: Any) -> bool:
    """``|prev - loss| / (1 + |prev|) < tol`` (never before a previous loss exists)."""
    if tol is None:
        return False
    prev, loss = float(prev), float(loss)
    if math.isnan(prev):
        return False
    return abs(prev - loss) / (1.0 + abs(prev)) < tol


class _Interrupts:
    """SIGINT and SIGTERM during one ``train()``: raise KeyboardInterrupt (SIGTERM's
    default would end the process without a save), but never inside a :attr:`deferred`
    block (a step's bookkeeping, a save), where they wait for the end of the block.

    Handlers are installed only in the main thread (the only one Python delivers
    signals to) and only over a handler that is not ``SIG_IGN``; the previous handlers
    are restored on exit. A previous Python handler (not the default one) is called
    instead of raising KeyboardInterrupt, so an application's own handler keeps working.
    """

    _SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[tuple[int, Any]] = []
        # The signal whose KeyboardInterrupt was raised and has not reached train()'s
        # handler yet. A raise can be lost: Python ignores exceptions raised inside a
        # finalizer or a weakref callback, which the handler can interrupt like any
        # other code. The next deferred block raises it again (see _Deferred).
        self.raised: int | None = None
        self._previous: dict[int, Any] = {}
        self.deferred = _Deferred(self)

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self._SIGNALS:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN or previous is None:
                    continue
                try:
                    signal.signal(sig, self._handler)
                except (ValueError, OSError):  # e.g. an embedded interpreter
                    continue
                self._previous[sig] = previous
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handler(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending.append((signum, frame))
        elif _in_gc_callback(frame) and not self._has_own_handler(signum):
            # Raised inside a garbage-collection callback (e.g. jaxlib's, run by every
            # collection), the KeyboardInterrupt would be lost and Python would print an
            # "Exception ignored" traceback: marked instead, it is raised at the next
            # step boundary (see _Deferred), as one lost on the way would be.
            self.raised = signum
        else:
            self._dispatch(signum, frame)

    def _has_own_handler(self, signum: int) -> bool:
        """Whether the handler replaced for `signum` is an application's own."""
        previous = self._previous.get(signum)
        return callable(previous) and previous is not signal.default_int_handler

    def _dispatch(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        if callable(previous) and self._has_own_handler(signum):
            previous(signum, frame)
            return
        self.raised = signum
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def flush(self) -> None:
        """Acts on the signals received inside deferred blocks."""
        while self.pending:
            self._dispatch(*self.pending.pop(0))


def _in_gc_callback(frame: Any) -> bool:
    """Whether `frame` is the frame of a function in ``gc.callbacks``."""
    code = getattr(frame, "f_code", None)
    return code is not None and any(getattr(cb, "__code__", None) is code for cb in gc.callbacks)


class _Deferred:
    """``with interrupts.deferred:``: signals wait for the end of the block (re-entrant)."""

    def __init__(self, owner: _Interrupts):
        self._owner = owner

    def __enter__(self) -> None:
        owner = self._owner
        if owner.raised is not None and not owner.depth:
            # A KeyboardInterrupt raised for a signal was lost on the way (see
            # _Interrupts.raised): raise it again before this block changes anything.
            raise KeyboardInterrupt(f"signal {signal.Signals(owner.raised).name}")
        owner.depth += 1

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        owner = self._owner
        owner.depth -= 1
        if not owner.depth and exc_type is None:
            owner.flush()


def _check_hooks(hooks: Any, what: str) -> list[Callable]:
    if hooks is None:
        return []
    items = [hooks] if callable(hooks) else hooks
    try:
        items = list(items)
    except TypeError:
        items = [hooks]
    bad = [h for h in items if not callable(h)]
    if bad:
        raise TypeError(
            f"`hooks` must be callables {what}, or a list of them (TensorFlow SessionRunHook "
            f"objects have no meaning here); got {type(bad[0]).__name__}."
        )
    return items


def _check_listeners(listeners: Any) -> list[Any]:
    if listeners is None:
        return []
    items = [listeners] if not isinstance(listeners, list | tuple) else list(listeners)
    for item in items:
        if not (callable(item) or hasattr(item, "after_save") or hasattr(item, "before_save")):
            raise TypeError(
                "`saving_listeners` must be callables listener(global_step, checkpoint_path) "
                "or objects with TensorFlow's before_save/after_save(session, global_step) "
                f"methods; got {type(item).__name__}."
            )
    return items


class _Trainer:
    """One ``train()`` call: the steps over `reader`, updating `run` in place.

    `save` writes a checkpoint of `run` (at the end, every save_checkpoints_steps and
    every save_checkpoints_secs). Every update of `run` happens inside
    ``interrupts.deferred``, so that a KeyboardInterrupt (or SIGTERM) finds `run` at the
    end of a step, never halfway through one.
    """

    def __init__(
        self,
        settings: _Settings,
        run: _Run,
        reader: InputReader,
        save: Callable[[], None],
        interrupts: _Interrupts,
        hooks: Sequence[Callable] = (),
    ):
        self.settings = settings
        self.run = run
        self.reader = reader
        self._save_fn = save
        self.interrupts = interrupts
        self.hooks = list(hooks)
        self.step = run.global_step  # a host int: no device read per step
        self._last_save = _clock()
        # Placements are kept only within one process: over several, placing a batch is
        # a collective step that every process must take together, pass after pass.
        self._placed = _Placements(settings.mesh is None or jax.process_count() == 1)

    def _dims(self) -> int:
        """The run's feature count (train() sets it with the state, before any step)."""
        dims = self.run.dims
        assert dims is not None
        return dims

    def _save(self) -> None:
        with self.interrupts.deferred:
            self._save_fn()
            self._last_save = _clock()

    def train(self, steps: int | None, max_steps: int | None, seed: int) -> None:
        start = self.step
        first_pass = None
        if self.run.state is None:
            placed = None if self.settings.use_mini_batch else self._placed
            state, first_pass = _initial_state(self.settings, self.reader, seed, placed)
            with self.interrupts.deferred:
                self.run.state, self.run.dims = state, self.reader.dims
                self.run.features = self.reader.features
            del state
        # Neither steps nor max_steps: one pass (the tolerance can only stop it earlier).
        target = start + steps if steps is not None else max_steps
        if self.settings.use_mini_batch:
            self._train_minibatch(first_pass, target)
        else:
            self._train_full(first_pass, target)
        self._save()

    def _after_step(self, loss: Any, prev: Any, reported: Any) -> bool:
        """Bookkeeping after one update (called inside ``interrupts.deferred``); True
        when the tolerance rule says stop.

        The losses may be device scalars: they are only read back when the tolerance
        rule or a hook needs them (or at the next save), so the host does not wait on
        every step.
        """
        history = self.run.history
        history.append([self.step, reported])
        if len(history) > 2 * _HISTORY_KEPT:
            del history[:-_HISTORY_KEPT]
        config = self.settings.run_config
        every, secs = config.save_checkpoints_steps, config.save_checkpoints_secs
        if (every is not None and self.step % every == 0) or (
            secs is not None and _clock() - self._last_save >= secs
        ):
            self._save()
        return _tolerance_reached(self.settings.relative_tolerance, loss, prev)

    def _call_hooks(self, reported: Any) -> bool:
        """Calls every hook with ``(step, loss)`` (outside the deferred block: a hook may
        raise KeyboardInterrupt); True when one asks to stop."""
        if not self.hooks:
            return False
        step, loss = self.step, float(reported)
        stop = False
        for hook in self.hooks:
            stop = bool(hook(step, loss)) or stop
        return stop

    # -------------------------------------------------------------- full batch

    def _train_full(self, first_pass: Iterator | None, target: int | None) -> bool:
        one_pass = target is None
        while target is None or self.step < target:
            batches = first_pass if first_pass is not None else self.reader.batches()
            first_pass = None
            stop = self._lloyd_pass(batches)
            if self._call_hooks(self.run.history[-1][1]) or stop or one_pass:
                return stop
        return False

    def _lloyd_pass(self, batches: Iterator[np.ndarray]) -> bool:
        """One exact Lloyd iteration over one pass; True when the tolerance says stop."""
        settings, run = self.settings, self.run
        state = run.state
        assert state is not None  # train() made the state before any step
        dims = self._dims()
        acc = None
        standard = None
        rows = 0
        pending: list[Any] = []
        in_place = kernels.reads_in_place(settings.spec)
        for position, batch in enumerate(_synced(batches, settings.mesh, dims)):
            standard = standard or batch.shape[0] or None
            x, w, b = self._placed.get(
                position, batch, standard, settings.mesh, dims, in_place=in_place
            )
            # What is alive stays a few batches whatever the input's size: the host
            # batch is let go of before the next one is read, and (each pass_add
            # needing the previous one's result, so they run one after another) the
            # previous computation is waited for once this one is dispatched: this one
            # computes while the next batch is read, and only its batch and the one
            # being read are held.
            del batch
            rows += b
            # The pass is compiled for the rows' platform only (engine.on_platform).
            spec = engine.on_platform(settings.spec, x, w)
            acc = fitting.pass_add(acc, state.centers, state.origin, x, w, spec)
            del x, w
            _bounded(pending, acc.loss, depth=1)
            release_host_copies(wait=False)  # finished steps' batches, unless kept
        if acc is None or rows == 0:
            raise ValueError(_EMPTY_INPUT)
        new_centers, stats = fitting.pass_end(acc, state.centers, state.origin, settings.metric)
        loss = float(stats.loss)
        prev = float(state.loss)
        new_state = state.replace(
            centers=new_centers,
            working=new_centers,
            counts=stats.counts,
            step=state.step + 1,
            loss=jnp.asarray(loss, jnp.float32),
            prev_loss=state.loss,
        )
        new_state = _replicated(new_state, settings.mesh)
        with self.interrupts.deferred:
            run.rows_per_pass = rows
            run.state = new_state
            self.step += 1
            return self._after_step(loss, prev, loss)

    # -------------------------------------------------------------- mini-batch

    def _train_minibatch(self, first_pass: Iterator | None, target: int | None) -> bool:
        run, reader = self.run, self.reader
        batches = first_pass if first_pass is not None else reader.batches()
        # Continue the pass an earlier train() (or the run a checkpoint came from) left
        # unfinished: skip the batches it already used. A one-shot iterator passed
        # directly is already past them.
        skip = 0 if reader.one_shot else run.pass_position
        if reader.one_shot:
            with self.interrupts.deferred:
                run.pass_position = 0
        pending: list[Any] = []
        while True:
            stopped, trained = self._minibatch_pass(batches, skip, target, pending)
            if stopped is not None:
                return stopped
            skip = 0
            if target is None and trained:
                return False
            batches = reader.batches()

    def _minibatch_pass(
        self, batches: Iterator[np.ndarray], skip: int, target: int | None, pending: list
    ) -> tuple[bool | None, bool]:
        """One pass (its first `skip` batches already used). Returns ``(stopped,
        trained)``: stopped is True (tolerance) or False (target reached) when training
        ends within the pass, None when the pass ends; trained: any update made."""
        run = self.run
        standard = None
        rows = 0
        got_any = trained = False
        for position, batch in enumerate(_synced(batches, self.settings.mesh, self._dims())):
            got_any = True
            standard = standard or batch.shape[0] or None
            if skip:
                skip -= 1
                rows += batch.shape[0]
                continue
            trained = True
            placed = self._placed.get(position, batch, standard, self.settings.mesh, self._dims())
            del batch
            b, stop = self._minibatch_step(placed, rows, pending)
            del placed
            release_host_copies(wait=False)  # finished steps' batches, unless kept
            rows += b
            if stop:
                return True, trained
            if target is not None and self.step >= target:
                return False, trained
        if not got_any:
            raise ValueError(_EMPTY_INPUT)
        with self.interrupts.deferred:
            run.rows_per_pass = rows
            run.pass_position = 0
        return None, trained

    def _minibatch_step(
        self, placed: tuple[Any, Any, int], rows_before: int, pending: list
    ) -> tuple[int, bool]:
        """One update on one placed batch; returns (its real rows, whether to stop)."""
        settings, run = self.settings, self.run
        x, w, b = placed
        n_pass = run.rows_per_pass or (rows_before + b)
        alpha = min(1.0, 2.0 * b / (n_pass + 1))
        state, loss = fitting.minibatch_impl(
            run.state, x, w, alpha, settings.spec, settings.steps_per_iteration
        )
        with self.interrupts.deferred:
            run.state = state
            self.step += 1
            run.pass_position += 1
            stop = self._after_step(state.smoothed_loss, state.prev_loss, loss / b)
        _bounded(pending, state.step)
        stop = self._call_hooks(loss / b) or stop
        return b, stop


# ---------------------------------------------------------------------- inference


def _predict_batches(
    reader: InputReader, centers: np.ndarray, predict: Callable
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    for batch in reader.batches():
        b = batch.shape[0]
        padded, w = _pad_batch(batch, _bucket(b, None))
        out = predict(centers, padded, w)
        del padded, w
        result = {k: np.asarray(v)[:b] for k, v in out.items()}
        del out
        release_host_copies(wait=False)
        yield batch, result


def _check_predict_keys(predict_keys: Any) -> list[str]:
    keys = [CLUSTER_INDEX, ALL_DISTANCES]
    if predict_keys is None:
        return keys
    wanted = [predict_keys] if isinstance(predict_keys, str) else list(predict_keys)
    bad = [k for k in wanted if k not in keys]
    if bad or not wanted:
        raise ValueError(f"`predict_keys` must be a subset of {keys}; got {predict_keys!r}.")
    return wanted


def _predictions(batches: Iterator, keys: list[str], single: bool) -> Iterator[dict[str, Any]]:
    for _, out in batches:
        if single:
            for i in range(out[CLUSTER_INDEX].shape[0]):
                yield {k: (int(out[k][i]) if k == CLUSTER_INDEX else out[k][i]) for k in keys}
        else:
            yield {k: out[k] for k in keys}


def _distances(batches: Iterator, cosine: bool) -> Iterator[np.ndarray]:
    for _, out in batches:
        d = out[ALL_DISTANCES]
        d = d if cosine else np.sqrt(np.maximum(d, 0.0))
        yield from d


def _with_hooks(batches: Iterator, hooks: Sequence[Callable]) -> Iterator:
    """The batches, calling ``hook(batches_done, rows_done)`` after each; stops when a
    hook returns True."""
    rows = 0
    for i, item in enumerate(batches, 1):
        yield item
        rows += item[0].shape[0]
        stop = False
        for hook in hooks:
            stop = bool(hook(i, rows)) or stop
        if stop:
            return


def _total_distance(
    reader: InputReader,
    centers: np.ndarray,
    spec: engine.Pass,
    steps: int | None,
    hooks: Sequence[Callable] = (),
) -> float:
    total = 0.0
    rows = 0
    for i, batch in enumerate(reader.batches()):
        if steps is not None and i >= steps:
            break
        rows += batch.shape[0]
        padded, w = _pad_batch(batch, _bucket(batch.shape[0], None))
        total += float(inertia_impl(padded, centers, w, spec))
        stop = False
        for hook in hooks:
            stop = bool(hook(i + 1, total)) or stop
        if stop:
            break
    if not rows:
        # An exhausted iterator must not read as a perfect score of 0.
        raise ValueError(
            "the input is empty: a pass over it gave no rows (a one-shot iterator "
            "allows one pass only)."
        )
    return total


# ---------------------------------------------------------------------- the front


class _DefaultInit(str):
    """The default ``initial_clusters`` ("random"), told apart from an explicit one (only an
    explicit one that differs from a resumed model's is worth a warning)."""

    __slots__ = ()


_DEFAULT_INIT = _DefaultInit(RANDOM_INIT)
_TRAIN, _EVAL, _INFER = "train", "eval", "infer"  # TF's ModeKeys, passed to input_fn(mode)


def _describe_init(init: Any) -> str:
    if init == "array":
        return "an array"
    if not isinstance(init, str) or init == "callable":
        return "a callable"
    return repr(str(init))


class KMeans:
    """k-means clustering with TensorFlow's estimator interface.

    Args:
      num_clusters: k, the number of clusters (int >= 1).
      model_dir: directory of checkpoints (None: ``config.model_dir``, else a temporary
        directory, made at the first save with a warning naming it, as TF did; the
        :attr:`model_dir` property gives its path from the start). If it holds
        checkpoints, the newest is restored: a saved model that differs in what defines
        it (num_clusters, dimensions, distance_metric, use_mini_batch) is a ValueError;
        settings that only matter at the start (initial_clusters, seed) are ignored then,
        with one warning when they were given and differ from the saved ones.
      initial_clusters: ``"random"``, ``"kmeans_plus_plus"``, ``"kmc2"``,
        ``"kmeans_parallel"``, a (k, d) array, or a callable ``f(batch, k_remaining)``
        returning 0..k_remaining rows, called on successive batches.
      distance_metric: ``"squared_euclidean"`` or ``"cosine"`` (spherical k-means).
      seed: int seed; the same seed, data and config give bit-identical centers. None:
        ``config.tf_random_seed``, else one is drawn (stored in the checkpoint).
      use_mini_batch: True for mini-batch steps (one batch each), False for full-batch
        Lloyd steps (one pass each).
      mini_batch_steps_per_iteration: s >= 1; with s > 1 the mini-batch updates go to a
        working copy that becomes the model every s steps (counts restart then).
      kmeans_plus_plus_num_retries: extra candidates per k-means++ pick (negative:
        2 + ln k).
      relative_tolerance: stop a ``train()`` call early once ``|prev - loss| / (1 +
        |prev|)`` falls below it (full batch: the pass loss; mini-batch: the smoothed
        per-point batch loss). It only ever stops a run earlier than ``steps`` /
        ``max_steps`` / one pass would; to train until converged, give ``max_steps`` and
        a tolerance. The previous loss is saved, so a resumed run stops where an
        uninterrupted one would.
      config: a :class:`RunConfig`.
      feature_columns: names of the dict features to use, in order (default: all,
        sorted by name).

    Examples:
      Full batch: each step is one exact Lloyd iteration over the whole input.

      >>> import tempfile, numpy as np, jaxkmeans
      >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
      >>> model_dir = tempfile.mkdtemp()
      >>> km = jaxkmeans.KMeans(2, model_dir=model_dir, use_mini_batch=False,
      ...                       initial_clusters=x[[0, 2]])
      >>> km = km.train(lambda: x, steps=2)
      >>> km.global_step, km.cluster_centers().tolist()
      (2, [[0.0, 0.5], [10.0, 10.5]])
      >>> list(km.predict_cluster_index(x)), km.score(x)
      ([0, 0, 1, 1], 1.0)

      A new object on the same ``model_dir`` resumes from the newest checkpoint:

      >>> jaxkmeans.KMeans(2, model_dir=model_dir, use_mini_batch=False).global_step
      2
    """

    SQUARED_EUCLIDEAN_DISTANCE = SQUARED_EUCLIDEAN_DISTANCE
    COSINE_DISTANCE = COSINE_DISTANCE
    RANDOM_INIT = RANDOM_INIT
    KMEANS_PLUS_PLUS_INIT = KMEANS_PLUS_PLUS_INIT
    KMC2_INIT = KMC2_INIT
    KMEANS_PARALLEL_INIT = KMEANS_PARALLEL_INIT
    CLUSTER_CENTERS_VAR_NAME = CLUSTER_CENTERS_VAR_NAME
    SCORE = SCORE
    CLUSTER_INDEX = CLUSTER_INDEX
    ALL_DISTANCES = ALL_DISTANCES

    def __init__(
        self,
        num_clusters: int,
        model_dir: str | os.PathLike | None = None,
        initial_clusters: Any = _DEFAULT_INIT,
        distance_metric: str = SQUARED_EUCLIDEAN_DISTANCE,
        seed: int | None = None,
        use_mini_batch: bool = True,
        mini_batch_steps_per_iteration: int = 1,
        kmeans_plus_plus_num_retries: int = 2,
        relative_tolerance: float | None = None,
        config: RunConfig | None = None,
        feature_columns: Any = None,
    ):
        k = check_positive_int(num_clusters, "num_clusters")
        metric = check_metric(distance_metric, "distance_metric")
        init_given = initial_clusters is not _DEFAULT_INIT
        if isinstance(initial_clusters, str):
            initial_clusters = str(initial_clusters)
        init, init_array = _check_initial_clusters(initial_clusters, k, metric)
        seed = check_positive_int(seed, "seed", minimum=0, allow_none=True)
        use_mini_batch = check_bool(use_mini_batch, "use_mini_batch")
        steps_per_iteration = check_positive_int(
            mini_batch_steps_per_iteration, "mini_batch_steps_per_iteration"
        )
        num_retries = check_int(kmeans_plus_plus_num_retries, "kmeans_plus_plus_num_retries")
        tol = check_non_negative(relative_tolerance, "relative_tolerance", allow_none=True)
        if config is None:
            config = RunConfig()
        if not isinstance(config, RunConfig):
            raise TypeError(f"`config` must be a jaxkmeans.RunConfig; got {type(config).__name__}.")
        if model_dir is not None and not isinstance(model_dir, str | os.PathLike):
            raise TypeError(
                "`model_dir` must be None, a str or an os.PathLike; got "
                f"{type(model_dir).__name__}."
            )
        if model_dir is not None and config.model_dir is not None:
            if _resolved(model_dir) != _resolved(config.model_dir):
                raise ValueError(
                    "`model_dir` is given both to KMeans and to its RunConfig, with different "
                    f"values: KMeans(model_dir={os.fspath(model_dir)!r}), "
                    f"RunConfig(model_dir={config.model_dir!r}); give one, or the same."
                )
        if model_dir is None:
            model_dir = config.model_dir
        if seed is None:
            seed = config.tf_random_seed
        self._temporary = model_dir is None
        if model_dir is None:
            model_dir = _temporary_dir_name()
        spec = engine.make_pass(metric, chunk_size=config.chunk_size, mesh=config.mesh)
        self._settings = _Settings(
            num_clusters=k,
            metric=metric,
            init=init,
            init_array=init_array,
            use_mini_batch=use_mini_batch,
            steps_per_iteration=steps_per_iteration,
            num_retries=num_retries,
            relative_tolerance=tol,
            feature_names=feature_names(feature_columns),
            run_config=config,
            spec=spec,
            local_spec=dataclasses.replace(spec, mesh=None),
        )
        self._store = CheckpointStore(model_dir, max_to_keep=config.keep_checkpoint_max)
        self._seed = seed
        self._run = _Run(dims=None if init_array is None else int(init_array.shape[1]))
        self._restore(init_given)
        if self._seed is None:
            self._seed = secrets.randbits(31)
        self._store.remember(self._run.copy())

    def _restore(self, init_given: bool) -> None:
        """Takes the newest checkpoint of model_dir, if any (checked against self)."""
        s, dims = self._settings, self._run.dims
        values = self._store.load(
            _FORMAT,
            "KMeans",
            {
                "num_clusters": (s.num_clusters, f"asked {s.num_clusters}"),
                "distance_metric": (s.metric, f"asked {s.metric!r}"),
                "dims": (dims, f"initial_clusters has {dims}"),
                "use_mini_batch": (
                    s.use_mini_batch,
                    f"asked use_mini_batch={s.use_mini_batch}: a model trained "
                    f"{'in mini-batch' if not s.use_mini_batch else 'in full batch'} mode "
                    "continues in that mode only",
                ),
            },
            lambda cfg: _state_template(cfg["num_clusters"], cfg["dims"]),
        )
        if values is None:
            return
        cfg = self._store.config
        assert cfg is not None  # a state was loaded, so was its config
        self._run = _Run.from_checkpoint(values, cfg, s.mesh)
        ignored = []
        saved_init = cfg.get("initial_clusters")
        mine = s.init if isinstance(s.init, str) else "callable"
        if init_given and saved_init is not None and mine != saved_init:
            ignored.append(
                f"initial_clusters={_describe_init(mine)} (the model was started with "
                f"{_describe_init(saved_init)})"
            )
        saved_seed = cfg.get("seed")
        if self._seed is not None and saved_seed is not None and self._seed != saved_seed:
            ignored.append(f"seed={self._seed} (the model was started with seed={saved_seed})")
        if ignored:
            warnings.warn(
                f"model_dir {self.model_dir!r} holds a model at step {self._run.global_step}, "
                f"which resumes: {' and '.join(ignored)} only matter"
                f"{'s' if len(ignored) == 1 else ''} at the start and "
                f"{'is' if len(ignored) == 1 else 'are'} ignored.",
                UserWarning,
                stacklevel=3,
            )
        if saved_seed is not None:
            self._seed = saved_seed

    def _ensure_model_dir(self) -> None:
        """Makes the temporary model directory (once, at the first write), with a warning
        naming it."""
        if not self._temporary:
            return
        while True:
            try:
                os.makedirs(os.path.dirname(self.model_dir), exist_ok=True)
                os.mkdir(self.model_dir, 0o700)
                break
            except FileExistsError:  # taken meanwhile: another name
                saved = self._store.saved
                self._store = CheckpointStore(
                    _temporary_dir_name(), max_to_keep=self.config.keep_checkpoint_max
                )
                self._store.remember(saved)
        self._temporary = False
        warnings.warn(
            f"KMeans: no model_dir was given; using the temporary directory {self.model_dir!r} "
            "as model directory (it is not deleted).",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )

    def _save(self, listeners: Sequence[Any] = ()) -> None:
        run = self._run
        state = run.state
        assert state is not None  # saved only once train() made a state
        step = int(state.step)
        for listener in listeners:
            if hasattr(listener, "before_save"):
                listener.before_save(None, step)
        self._ensure_model_dir()
        config = run.config_json(self._settings, self._seed)
        self._store.save(step, _state_to_dict(state), config, run.copy())
        for listener in listeners:
            if hasattr(listener, "after_save"):
                listener.after_save(None, step)
            elif callable(listener):
                listener(step, os.path.join(self.model_dir, str(step)))

    # ------------------------------------------------------------------ properties

    @property
    def model_dir(self) -> str:
        """Absolute path of the checkpoint directory. Without a model_dir, the temporary
        directory's path is chosen at construction but the directory is only made at
        the first save (until then the path does not exist).

        Examples:
          >>> import os, tempfile, jaxkmeans
          >>> d = tempfile.mkdtemp()
          >>> jaxkmeans.KMeans(2, model_dir=d).model_dir == os.path.abspath(d)
          True
        """
        return self._store.directory

    @property
    def config(self) -> RunConfig:
        """The :class:`RunConfig` given (or the default one); the directory in use is
        :attr:`model_dir`.

        Examples:
          >>> import jaxkmeans
          >>> jaxkmeans.KMeans(2).config.keep_checkpoint_max
          5
        """
        return self._settings.run_config

    @property
    def params(self) -> dict[str, Any]:
        """The constructor's hyperparameters.

        Examples:
          >>> import jaxkmeans
          >>> params = jaxkmeans.KMeans(2, distance_metric="cosine", seed=1).params
          >>> params["num_clusters"], params["distance_metric"], params["seed"]
          (2, 'cosine', 1)
        """
        return self._settings.params(self._seed)

    @property
    def model_fn(self) -> Callable[[jax.Array, jax.Array], dict[str, jax.Array]]:
        """The pure, jittable ``(centers, x) -> {"cluster_index", "all_distances"}``.

        Examples:
          >>> import jax, jax.numpy as jnp, jaxkmeans
          >>> model_fn = jax.jit(jaxkmeans.KMeans(2).model_fn)
          >>> out = model_fn(jnp.array([[0.0], [10.0]]), jnp.array([[1.0], [8.0]]))
          >>> out["cluster_index"].tolist(), out["all_distances"].tolist()
          ([0, 1], [[1.0, 81.0], [64.0, 4.0]])
        """
        return export_lib.predict_fn(self._settings.metric)

    @property
    def global_step(self) -> int:
        """Number of updates applied so far (0 before training).

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.global_step
          2
        """
        return self._run.global_step

    @property
    def loss_history(self) -> list[tuple[int, float]]:
        """``(global_step, loss)`` of the last (up to 1000) training steps (full batch: the
        pass loss; mini-batch: the batch loss per point).

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.loss_history  # each step's loss is measured before its update
          [(1, 2.0), (2, 1.0)]
        """
        return [(s, v) for s, v in self._run.settled_history()]

    def eval_dir(self, name: str | None = None) -> str:
        """``model_dir/eval`` or ``model_dir/eval_<name>``: where evaluate() logs.

        Examples:
          >>> import os, jaxkmeans
          >>> km = jaxkmeans.KMeans(2)
          >>> km.eval_dir("test") == os.path.join(km.model_dir, "eval_test")
          True
        """
        return os.path.join(self.model_dir, "eval" if not name else f"eval_{name}")

    # ------------------------------------------------------------------ training

    def _reader(self, input_fn: Any, mode: str) -> InputReader:
        fn_args = {"params": self.params, "mode": mode, "config": self.config}
        return InputReader(input_fn, self._settings.feature_names, self._run.dims, fn_args)

    @releases_host_copies
    def train(
        self,
        input_fn: Any,
        steps: int | None = None,
        hooks: Any = None,
        max_steps: int | None = None,
        saving_listeners: Any = None,
    ) -> KMeans:
        """Trains the model.

        Args:
          input_fn: the input (see :mod:`jaxkmeans.inputs`) or a callable returning it
            (it may take ``params``, ``mode`` and ``config`` by name, as in TF).
          steps: run this many more steps.
          hooks: callables (or one) called after every step as ``hook(step, loss)``
            (step: the global step after the update; loss: as in :attr:`loss_history`);
            one returning True stops training (then the usual end-of-train save).
          max_steps: run until ``global_step == max_steps`` (nothing if already there).
            With neither: one pass over the input (one step in full batch, one epoch of
            batches in mini-batch). ``relative_tolerance`` may only stop it earlier.
          saving_listeners: callables ``listener(global_step, checkpoint_path)`` called
            after every save, or objects with TF's ``before_save(session, global_step)``
            / ``after_save(session, global_step)`` (session is None).

        A checkpoint is written at the end, every ``config.save_checkpoints_steps`` steps
        and every ``config.save_checkpoints_secs`` seconds. On KeyboardInterrupt (or
        SIGTERM, which raises KeyboardInterrupt while train() runs in the main thread),
        the last completed step is saved and the KeyboardInterrupt re-raised; on any other
        error the model goes back to its last checkpoint.

        Returns:
          self.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km.train(x, max_steps=3).global_step
          3
          >>> km.train(x, steps=1, hooks=[lambda step, loss: print(step, loss)]).global_step
          4 1.0
          4
        """
        steps = check_positive_int(steps, "steps", allow_none=True)
        max_steps = check_positive_int(max_steps, "max_steps", allow_none=True)
        if steps is not None and max_steps is not None:
            raise ValueError(
                f"give `steps` or `max_steps`, not both; got steps={steps}, max_steps={max_steps}."
            )
        hooks = _check_hooks(hooks, "hook(step, loss)")
        listeners = _check_listeners(saving_listeners)
        if max_steps is not None and self.global_step >= max_steps:
            return self
        reader = self._reader(input_fn, _TRAIN)
        save = functools.partial(self._save, listeners)
        seed = self._seed
        assert seed is not None  # __init__ chose one
        with _Interrupts() as interrupts:
            try:
                _Trainer(self._settings, self._run, reader, save, interrupts, hooks).train(
                    steps, max_steps, seed
                )
            except KeyboardInterrupt:
                interrupts.raised = None  # it arrived: the save below must not raise it again
                self._save_interrupted(interrupts, save)
                raise
            except BaseException:
                self._run = self._store.saved.copy()
                raise
        return self

    def _save_interrupted(self, interrupts: _Interrupts, save: Callable[[], None]) -> None:
        """After a KeyboardInterrupt: saves the last completed step (if any since the last
        save); on a failed save, goes back to the last checkpoint with a warning."""
        run, saved = self._run, self._store.saved
        if run.state is None or run.global_step <= saved.global_step:
            self._run = saved.copy()
            return
        try:
            with interrupts.deferred:
                save()
        except Exception as e:
            self._run = saved.copy()
            warnings.warn(
                f"train() was interrupted and step {run.global_step} could not be saved "
                f"({e}); the model is back at its last checkpoint (step {saved.global_step}).",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ inference

    def _require_fitted(self) -> KMeansState:
        if self._run.state is None:
            raise NotFittedError(
                "this KMeans is not trained yet (no checkpoint in model_dir "
                f"{self.model_dir!r}); call train() first."
            )
        return self._run.state

    def _checkpoint(self, checkpoint_path: Any) -> tuple[np.ndarray, int, list | None]:
        """``(centers, global step, features)`` of the model (checkpoint_path None) or of
        the checkpoint at `checkpoint_path`, checked against this KMeans."""
        if checkpoint_path is None:
            state = self._require_fitted()
            return np.asarray(state.centers), self.global_step, self._run.features
        if not isinstance(checkpoint_path, str | os.PathLike):
            raise TypeError(
                "`checkpoint_path` must be None or a path (str or os.PathLike); got "
                f"{type(checkpoint_path).__name__}."
            )
        step, values, cfg = read_checkpoint(checkpoint_path)
        s = self._settings
        if cfg.get("format") != _FORMAT:
            raise ValueError(
                f"`checkpoint_path` {os.fspath(checkpoint_path)!r} was not written by "
                "jaxkmeans.KMeans."
            )
        problems = [
            f"{key}={cfg.get(key)!r} (this KMeans has {mine!r})"
            for key, mine in (
                ("num_clusters", s.num_clusters),
                ("distance_metric", s.metric),
                ("dims", self._run.dims),
            )
            if mine is not None and cfg.get(key) != mine
        ]
        if problems:
            raise ValueError(
                f"`checkpoint_path` {os.fspath(checkpoint_path)!r} does not fit this KMeans: it "
                f"has {', '.join(problems)}."
            )
        centers = np.asarray(values[CLUSTER_CENTERS_VAR_NAME], np.float32)
        return centers, step, cfg.get("features")

    def _predict_batches(
        self, input_fn: Any, checkpoint_path: Any = None, hooks: Sequence[Callable] = ()
    ) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        centers, _, _ = self._checkpoint(checkpoint_path)  # inference is per process
        reader = self._reader(input_fn, _INFER)
        batches = _predict_batches(reader, centers, _jitted_predict(self._settings.metric))
        return _with_hooks(batches, hooks) if hooks else batches

    def predict(
        self,
        input_fn: Any,
        predict_keys: str | list[str] | None = None,
        hooks: Any = None,
        checkpoint_path: str | os.PathLike | None = None,
        yield_single_examples: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Yields ``{"cluster_index": int, "all_distances": float32[k]}`` per example
        (or per batch with ``yield_single_examples=False``); ``all_distances`` are squared
        Euclidean distances (or 1 - cos).

        `hooks`: callables called after each batch as ``hook(batches_done, rows_done)``;
        one returning True ends the predictions. `checkpoint_path`: predict with that
        checkpoint's centers (a path returned by :meth:`latest_checkpoint`, or a step
        directory ``model_dir/<step>``) instead of the current model's.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> first = next(km.predict(x))
          >>> first["cluster_index"], first["all_distances"].tolist()
          (0, [0.25, 210.25])
        """
        keys = _check_predict_keys(predict_keys)
        hooks = _check_hooks(hooks, "hook(batches_done, rows_done)")
        batches = self._predict_batches(input_fn, checkpoint_path, hooks)
        return _predictions(batches, keys, yield_single_examples)

    def predict_cluster_index(self, input_fn: Any) -> Iterator[int]:
        """Yields the nearest center's index for every example.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> list(km.predict_cluster_index(x))
          [0, 0, 1, 1]
        """
        batches = self._predict_batches(input_fn)
        return (int(i) for _, out in batches for i in out[CLUSTER_INDEX])

    def transform(self, input_fn: Any) -> Iterator[np.ndarray]:
        """Yields every example's distances to all centers: Euclidean (square root of the
        squared distance, clamped at 0) or 1 - cos for cosine.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> next(km.transform(x)).tolist()
          [0.5, 14.5]
        """
        cosine = self._settings.metric == COSINE_DISTANCE
        return _distances(self._predict_batches(input_fn), cosine)

    @releases_host_copies
    def score(self, input_fn: Any) -> float:
        """Sum over ALL the input of the distance to the nearest center (squared
        Euclidean, or 1 - cos).

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.score(x)
          1.0
        """
        centers, _, _ = self._checkpoint(None)
        reader = self._reader(input_fn, _EVAL)
        return _total_distance(reader, centers, self._settings.local_spec, None)

    @releases_host_copies
    def evaluate(
        self,
        input_fn: Any,
        steps: int | None = None,
        hooks: Any = None,
        checkpoint_path: str | os.PathLike | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """``{"loss", "score", "global_step"}``: loss = score = the summed distance over
        the input (its first `steps` batches if given). Appends the result as a JSON
        line to ``eval_dir(name)/metrics.jsonl``.

        `hooks`: callables called after each batch as ``hook(batches_done, loss_so_far)``;
        one returning True ends the evaluation there. `checkpoint_path`: evaluate that
        checkpoint (a path returned by :meth:`latest_checkpoint`, or ``model_dir/<step>``);
        ``global_step`` is then its step.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.evaluate(x, name="test")
          {'loss': 1.0, 'score': 1.0, 'global_step': 2}
        """
        steps = check_positive_int(steps, "steps", allow_none=True)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"`name` must be None or a non-empty str without '/'; got {name!r}.")
        hooks = _check_hooks(hooks, "hook(batches_done, loss_so_far)")
        centers, step, _ = self._checkpoint(checkpoint_path)
        reader = self._reader(input_fn, _EVAL)
        total = _total_distance(reader, centers, self._settings.local_spec, steps, hooks)
        result = {"loss": total, "score": total, "global_step": step}
        self._ensure_model_dir()
        out = pathlib.Path(self.eval_dir(name))
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        return result

    # ------------------------------------------------------------------ variables

    def cluster_centers(self) -> np.ndarray:
        """The (k, d) centers.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.cluster_centers().tolist()
          [[0.0, 0.5], [10.0, 10.5]]
        """
        return np.asarray(self._require_fitted().centers)

    def get_variable_names(self) -> list[str]:
        """Names of the model's variables (TF's ``"clusters"``, ``"global_step"``, ...).

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.get_variable_names()[:4]
          ['cluster_counts', 'clusters', 'global_step', 'loss']
        """
        self._require_fitted()
        return sorted(VARIABLES.values())

    def get_variable_value(self, name: str) -> np.ndarray:
        """The value of variable `name` (one of :meth:`get_variable_names`).

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> km.get_variable_value("clusters").tolist(), km.get_variable_value("global_step")
          ([[0.0, 0.5], [10.0, 10.5]], array(2, dtype=int32))
        """
        state = self._require_fitted()
        inverse = {v: f for f, v in VARIABLES.items()}
        if name not in inverse:
            raise ValueError(f"`name` must be one of {sorted(inverse)}; got {name!r}.")
        return np.asarray(getattr(state, inverse[name]))

    def latest_checkpoint(self) -> str | None:
        """Path of the newest checkpoint in model_dir (None before the first save).

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km.latest_checkpoint() is None
          True
          >>> km = km.train(x, steps=2)
          >>> os.path.basename(km.latest_checkpoint())
          '2'
        """
        return _latest_checkpoint_path(self.model_dir)

    def export_saved_model(
        self,
        export_dir_base: str | os.PathLike,
        serving_input_receiver_fn: Any = None,
        assets_extra: dict[str, Any] | None = None,
        as_text: bool = False,
        checkpoint_path: str | os.PathLike | None = None,
    ) -> str:
        """Writes a self-contained serving artifact under `export_dir_base`; returns its
        path. Load it with :func:`jaxkmeans.load_exported`; it takes an (n, d) array, or
        the dict of features the model was trained on.

        Args:
          export_dir_base: the parent directory; the export is ``<it>/<timestamp>``.
          serving_input_receiver_fn: accepted for TF compatibility and ignored (the
            exported predictor takes the array or the training dict directly).
          assets_extra: ``{destination: source file}`` copied under ``assets.extra/``.
          as_text: no meaning here (the program is serialized by ``jax.export``): True
            warns and is ignored.
          checkpoint_path: export that checkpoint (``latest_checkpoint()`` or
            ``model_dir/<step>``) instead of the current model.

        Examples:
          >>> import tempfile, numpy as np, jaxkmeans
          >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
          >>> km = jaxkmeans.KMeans(2, model_dir=tempfile.mkdtemp(), use_mini_batch=False,
          ...                       initial_clusters=x[[0, 2]])
          >>> km = km.train(x, steps=2)
          >>> path = km.export_saved_model(tempfile.mkdtemp())
          >>> predict = jaxkmeans.load_exported(path)
          >>> predict(x)["cluster_index"].tolist()
          [0, 0, 1, 1]
        """
        del serving_input_receiver_fn  # see the docstring
        if as_text:
            warnings.warn(
                "export_saved_model(as_text=True) has no meaning in jaxkmeans (the export is a "
                "serialized jax.export program, not a SavedModel protobuf); ignored.",
                UserWarning,
                stacklevel=2,
            )
        centers, step, features = self._checkpoint(checkpoint_path)
        return export_lib.export_model(
            export_dir_base,
            centers,
            self._settings.metric,
            {"global_step": step, "model_dir": self.model_dir, "features": features},
            assets_extra=assets_extra,
        )

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"KMeans(num_clusters={s.num_clusters}, distance_metric={s.metric!r}, "
            f"use_mini_batch={s.use_mini_batch}, model_dir={self.model_dir!r}, "
            f"global_step={self.global_step})"
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside jaxkmeans (for warnings raised
    deep inside a call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame: FrameType | None
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == (
        package
    ):
        frame, level = frame.f_back, level + 1
    return level


def _resolved(path: str | os.PathLike) -> str:
    return str(pathlib.Path(path).expanduser().resolve())


def _temporary_dir_name() -> str:
    """A fresh path in the temporary directory (not created)."""
    return os.path.join(tempfile.gettempdir(), f"jaxkmeans-{secrets.token_hex(6)}")


def _open(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    store = CheckpointStore(model_dir)
    try:
        if store.config is None:
            raise ValueError(f"`model_dir` {store.directory!r} holds no checkpoint.")
        state = store.state()
        assert state is not None  # read together with store.config
        return state, store.config
    finally:
        store.close()


def list_variables(model_dir: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """``(name, shape)`` of every variable in the newest checkpoint of `model_dir`.

    Examples:
      >>> import tempfile, numpy as np, jaxkmeans
      >>> d = tempfile.mkdtemp()
      >>> km = jaxkmeans.KMeans(2, model_dir=d, seed=0).train(np.eye(3, dtype=np.float32))
      >>> jaxkmeans.list_variables(d)[:3]
      [('cluster_counts', [2]), ('clusters', [2, 3]), ('global_step', [])]
    """
    values, _ = _open(model_dir)
    return sorted((name, list(np.shape(v))) for name, v in values.items())


def load_variable(model_dir: str | os.PathLike, name: str) -> np.ndarray:
    """The value of variable `name` (e.g. ``"clusters"``) in the newest checkpoint.

    Examples:
      >>> import tempfile, numpy as np, jaxkmeans
      >>> d = tempfile.mkdtemp()
      >>> km = jaxkmeans.KMeans(2, model_dir=d, seed=0).train(np.eye(3, dtype=np.float32))
      >>> np.array_equal(jaxkmeans.load_variable(d, "clusters"), km.cluster_centers())
      True
    """
    values, _ = _open(model_dir)
    if name not in values:
        raise ValueError(f"`name` must be one of {sorted(values)}; got {name!r}.")
    return np.asarray(values[name])


def latest_checkpoint(model_dir: str | os.PathLike) -> str | None:
    """Path of the newest checkpoint in `model_dir`, or None.

    Examples:
      >>> import os, tempfile, numpy as np, jaxkmeans
      >>> d = tempfile.mkdtemp()
      >>> jaxkmeans.latest_checkpoint(d) is None
      True
      >>> km = jaxkmeans.KMeans(2, model_dir=d, seed=0).train(np.eye(3, dtype=np.float32))
      >>> jaxkmeans.latest_checkpoint(d) == os.path.join(km.model_dir, "1")
      True
    """
    return _latest_checkpoint_path(model_dir)


load_exported = export_lib.load_exported
